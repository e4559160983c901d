"""`make bench`: every benchmark figure gpuadmit reports, printed.

Each part lives beside what it measures; this module only runs them in turn.
Benchmarks, not tests: figures vary with the machine, so nothing here asserts a target.
A part's sizes are options of its own module: ``python -m benchmarks.PART --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

PARTS: dict[str, tuple[str, str]] = {
    "engine": ("benchmarks.engine", "engine: one cycle on 10,000 nodes and up to 100,000 pending workloads"),
    "exact": ("benchmarks.exact", "engine quality: greedy decide() against the exact MILP optimum on 200 seeded random clusters"),
    "decide": ("benchmarks.decide", "gpuadmit decide -o json versus merely parsing its input, by distinct templates"),
    "classifier": ("benchmarks.classifier", "classifier: accuracy on the labelled corpus, CPU per call"),
    "native": ("benchmarks.native", "native workloads: the operator's per-cycle passes over Jobs and pods, 10,000 of each kind"),
    "e2e": ("benchmarks.e2e", "operator end to end: 2,000 GPUWorkloads on the emulated API server"),
    "events": ("benchmarks.events", "operator single events: 2,000 nodes x 20,000 GPUWorkloads settled, a pod finishing, a workload created"),
    "simulate": ("benchmarks.simulate", "trace replay of the shared Alibaba trace"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"which parts, of {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}")
    for name in args.parts or list(PARTS):
        module_name, title = PARTS[name]
        print(f"\n=== {title} ===", flush=True)
        started = time.perf_counter()
        importlib.import_module(module_name).main()
        print(f"({name} took {time.perf_counter() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
