"""A cluster on this machine, as child processes: the emulated API server and `gpuadmit run`.

The one harness that starts them, waits until each is ready, notices when one dies, and stops
them: ``gpuadmit demo`` uses it (so it ships), and so do the end-to-end benchmark and the tests.

- ``EmulatorProcess``: ``python -m kubeapi_emulator`` (run by command line, not imported: the
  emulator is a separate package behind the ``emulator`` extra), ready once it has written its
  kubeconfig and answers ``/healthz``.
- ``OperatorProcess``: ``gpuadmit run`` against a kubeconfig, ready once ``/readyz`` answers 200;
  it can be killed, restarted, and its log read.

Every failure to start raises ``LocalClusterError`` naming the process, what was awaited, and
the end of its log, so the reason is on the screen rather than in a temporary directory.
Readiness can be awaited blocking (tests) or from an event loop (the demo, the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STARTUP_TIMEOUT_S = 60.0   # a cold interpreter importing kopf on a loaded 2-core machine takes seconds
STOP_TIMEOUT_S = 15.0      # SIGTERM, then SIGKILL after this long
POLL_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 2.0
LOG_TAIL_CHARS = 3000


class LocalClusterError(RuntimeError):
    """A child process exited, or did not become ready in time. The message names it and ends
    with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


# -- one child process ----------------------------------------------------------------------------


@dataclass
class ChildProcess:
    """A started command whose output goes to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def spawn(cls, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
              own_session: bool = False) -> ChildProcess:
        """Start ``command`` with ``env`` added to ours. ``own_session``: Ctrl-C on the terminal
        reaches only us, so we can stop the children in order (the demo)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=own_session)
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def check_running(self) -> None:
        """Raise ``LocalClusterError`` if the process has exited."""
        if self.process.poll() is not None:
            raise LocalClusterError(f"the {self.name} exited with code {self.process.returncode}; "
                                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds: its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when the node dies under it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def _ready_or_raise(child: ChildProcess, probe: Callable[[], bool]) -> bool:
    child.check_running()
    return probe()


def _gave_up(child: ChildProcess, what: str, timeout: float) -> LocalClusterError:
    return LocalClusterError(f"gave up waiting for {what} after {timeout:.0f} s; "
                             f"the {child.name}'s log ({child.log_path}) ends with:\n{child.log_tail()}")


def wait_ready(child: ChildProcess, probe: Callable[[], bool], what: str, timeout: float) -> None:
    """Block until ``probe()`` is true; ``LocalClusterError`` if the child exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not _ready_or_raise(child, probe):
        if time.monotonic() > deadline:
            raise _gave_up(child, what, timeout)
        time.sleep(POLL_INTERVAL_S)


async def wait_ready_async(child: ChildProcess, probe: Callable[[], bool], what: str, timeout: float) -> None:
    """``wait_ready`` from an event loop: the probe (a blocking HTTP GET) runs in a thread."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(_ready_or_raise, child, probe):
        if time.monotonic() > deadline:
            raise _gave_up(child, what, timeout)
        await asyncio.sleep(POLL_INTERVAL_S)


# -- the emulated API server ----------------------------------------------------------------------


@dataclass
class EmulatorProcess:
    """``python -m kubeapi_emulator`` serving ``crds``, with its kubeconfig in ``workdir``.

    It listens on a port of its own choosing (``--port 0``) and writes the URL into the
    kubeconfig, so two servers never race for a port.
    """

    workdir: Path
    crds: Sequence[Path] = ()
    audit_log: Path | None = None
    own_session: bool = False
    scheduler: bool = True  # False: --no-scheduler, pods stay unbound until a client binds them
    child: ChildProcess | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def log_path(self) -> Path:
        return self.workdir / "emulator.log"

    @property
    def url(self) -> str:
        """The server's URL, as its kubeconfig names it ("" before it has written one)."""
        try:
            config = yaml.safe_load(self.kubeconfig.read_text())
            return str(config["clusters"][0]["cluster"]["server"])
        except (OSError, yaml.YAMLError, LookupError, TypeError):
            return ""

    def launch(self) -> ChildProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.unlink(missing_ok=True)  # its appearance is the sign that the server listens
        command = [sys.executable, "-m", "kubeapi_emulator", "--port", "0", "--kubeconfig-out", str(self.kubeconfig)]
        for crd in self.crds:
            command += ["--crds", str(crd)]
        if self.audit_log is not None:
            command += ["--audit-log", str(self.audit_log)]
        if not self.scheduler:
            command.append("--no-scheduler")
        self.child = ChildProcess.spawn("emulated API server", command, self.log_path, own_session=self.own_session)
        return self.child

    def is_ready(self) -> bool:
        url = self.url
        return bool(url) and http_get(url + "/healthz")[0] == 200

    @contextlib.contextmanager
    def running(self, timeout: float = STARTUP_TIMEOUT_S) -> Iterator[EmulatorProcess]:
        """Started and ready inside the block, stopped after it (also when starting fails)."""
        try:
            wait_ready(self.launch(), self.is_ready, f"the emulated API server ({self.kubeconfig})", timeout)
            yield self
        finally:
            self.stop()

    async def start_async(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Started and ready (the caller stops it, also when this raises)."""
        await wait_ready_async(self.launch(), self.is_ready, f"the emulated API server ({self.kubeconfig})", timeout)

    def stop(self) -> int | None:
        return self.child.stop() if self.child is not None else None


# -- the operator ---------------------------------------------------------------------------------


@dataclass
class OperatorProcess:
    """`gpuadmit run` against ``kubeconfig`` (webhooks off unless ``webhook_port`` is set).

    ``extra_args`` are appended to its flags; ``command`` replaces ``python -m gpuadmit run`` (to
    measure another build, say). Each launch logs to ``operator-<n>.log`` in ``workdir``.
    """

    kubeconfig: Path
    workdir: Path
    extra_args: Sequence[str] = ()
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    metrics_port: int = 0   # 0: a free port, chosen at the first launch and kept across restarts
    webhook_port: int = 0   # 0: no webhook server
    own_session: bool = False
    health_port: int = 0
    starts: int = 0
    child: ChildProcess | None = None

    @classmethod
    @contextlib.contextmanager
    def start(cls, kubeconfig: Path, workdir: Path, *extra_args: str,
              timeout: float = STARTUP_TIMEOUT_S) -> Iterator[OperatorProcess]:
        """Started and ready inside the block, stopped after it."""
        operator = cls(kubeconfig, workdir, tuple(extra_args))
        try:
            operator.launch(timeout=timeout)
            yield operator
        finally:
            operator.stop()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.process if self.child is not None else None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def launch(self, timeout: float = STARTUP_TIMEOUT_S, wait_ready: bool = True) -> ChildProcess:
        """Start it (on a new health port); wait for /readyz if asked."""
        self.starts += 1
        self.health_port = free_port()
        self.metrics_port = self.metrics_port or free_port()
        command = [*(self.command or (sys.executable, "-m", "gpuadmit", "run")),
                   "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port),
                   "--webhook-port", str(self.webhook_port), *self.extra_args]
        self.child = ChildProcess.spawn("operator (gpuadmit run)", command, self.log_path,
                                        env={"KUBECONFIG": str(self.kubeconfig), **self.env},
                                        own_session=self.own_session)
        if wait_ready:
            self.wait_ready(timeout)
        return self.child

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def readiness(self) -> dict[str, Any]:
        """/readyz as {"status": HTTP status, **its JSON body}; status 0 when nothing answers."""
        status, body = http_get(f"http://127.0.0.1:{self.health_port}/readyz")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        return {"status": status, **payload} if isinstance(payload, dict) else {"status": status}

    def is_ready(self) -> bool:
        return self.readiness()["status"] == 200

    def _launched(self) -> ChildProcess:
        if self.child is None:
            raise LocalClusterError("the operator was never launched")
        return self.child

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        wait_ready(self._launched(), self.is_ready, "gpuadmit run to be ready (/readyz)", timeout)

    async def wait_ready_async(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        await wait_ready_async(self._launched(), self.is_ready, "gpuadmit run to be ready (/readyz)", timeout)

    def cycles(self) -> int:
        return int(self.readiness().get("cycles", 0))

    def metrics(self) -> str:
        return http_get(self.metrics_url)[1]

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def restart(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        self.stop()
        self.launch(timeout=timeout)

    def stop(self) -> int | None:
        return self.child.stop() if self.child is not None else None

    def log_tail(self, chars: int = 4000) -> str:
        return self.child.log_tail(chars) if self.child is not None else ""
