"""Run a `gpuadmit` command on hostile input as an attacker's file would reach it: in a child
process with a wall-clock timeout and an address-space limit, so a hang or a memory blow-up
fails the test instead of the machine."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from typing import Mapping, Sequence

# Far more than any command needs for a small input (a run takes about 100 MB), far less than
# the gigabytes a billion-laughs file or a per-GPU ledger of a "1G" node would take.
MEMORY_LIMIT_BYTES = 1024**3
TIMEOUT_SECONDS = 60.0


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def run_gpuadmit(
    args: Sequence[str], stdin: bytes | None = None, timeout: float = TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``gpuadmit ARGS`` under the limits (``env`` added to the environment); raises
    ``subprocess.TimeoutExpired`` when it hangs."""
    completed = subprocess.run(
        [sys.executable, "-m", "gpuadmit", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
        env={**os.environ, **env} if env else None,
        check=False,
    )
    return subprocess.CompletedProcess(
        completed.args,
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str], prog: str, *expected: str) -> str:
    """Exit 2, exactly one line on stderr that starts with ``prog:`` and holds each of ``expected``,
    and no traceback. Returns the line."""
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    (line,) = lines
    assert result.returncode == 2, (result.returncode, line)
    assert line.startswith(f"{prog}: "), line
    for fragment in expected:
        assert fragment in line, (fragment, line)
    return line
