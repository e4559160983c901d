"""``make chaos``: the reliability suite at full size, then its figures.

Runs ``tests/reliability`` (from a source checkout) with the ``chaos`` hypothesis profile (five
times the default run's fuzzed objects, freshly randomised) and ``GPUADMIT_CHAOS_SCALE=full`` (a
burst of 2,000 creations under API faults, ten SIGKILLs of the operator while 500 workloads
stream in), and prints what was done and what broke:

    workloads driven, faults injected by kind, restarts survived, malformed inputs tried,
    violations found (must be 0)

The tests gather the figures (``tests/reliability/figures.py``) and write them to the file named
by ``GPUADMIT_CHAOS_FIGURES``; this module only drives pytest and formats the result, so the
figures are always those of checks that really ran. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "tests" / "reliability"
FAULT_PREFIX = "faults injected: "
HEADLINE = ("workloads driven", "restarts survived", "malformed inputs tried", "violations found")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the default test run's sizes (600-workload burst, three SIGKILLs, ~2,000 fuzzed objects)")
    parser.add_argument("--figures-out", metavar="FILE", help="also keep the figures as JSON in FILE")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments after --, e.g. -- -k sigkill")
    return parser


def format_figures(figures: Mapping[str, float], elapsed_s: float, exit_code: int) -> str:
    """The report: headline figures first, then faults by kind, then anything else measured."""
    lines = ["gpuadmit chaos run", ""]
    for name in HEADLINE:
        lines.append(f"  {name + ':':<28}{_number(figures.get(name, 0))}")
    faults = {name[len(FAULT_PREFIX):]: value for name, value in figures.items() if name.startswith(FAULT_PREFIX)}
    lines.append(f"  {'faults injected:':<28}{_number(sum(faults.values()))}")
    for kind, value in sorted(faults.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"    {kind + ':':<44}{_number(value)}")
    others = {k: v for k, v in figures.items() if k not in HEADLINE and not k.startswith(FAULT_PREFIX)}
    for name, value in sorted(others.items()):
        lines.append(f"  {name + ':':<50}{_number(value)}")
    verdict = "PASS" if exit_code == 0 and not figures.get("violations found") else "FAIL"
    lines += ["", f"  {verdict} in {elapsed_s:.0f}s (pytest exit status {exit_code})"]
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:,.2f}" if isinstance(value, float) and not float(value).is_integer() else f"{int(value):,}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not SUITE.is_dir():
        print(f"gpuadmit chaos needs a source checkout: {SUITE} not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpuadmit-chaos-") as scratch:
        figures_path = Path(scratch) / "figures.json"
        env = {**os.environ, "GPUADMIT_CHAOS_FIGURES": str(figures_path)}
        command = [sys.executable, "-m", "pytest", str(SUITE.relative_to(REPO)), "-q", "-p", "no:cacheprovider"]
        if not args.quick:
            env["GPUADMIT_CHAOS_SCALE"] = "full"
            command.append("--hypothesis-profile=chaos")
        command += list(args.pytest_args)
        started = time.monotonic()
        exit_code = subprocess.call(command, cwd=REPO, env=env)
        elapsed = time.monotonic() - started
        figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    print()
    print(format_figures(figures, elapsed, exit_code))
    if args.figures_out:
        Path(args.figures_out).write_text(json.dumps(figures, indent=2, sort_keys=True))
    return exit_code or (1 if figures.get("violations found") else 0)


if __name__ == "__main__":
    sys.exit(main())
