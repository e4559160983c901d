"""`make bench` part: how long a full replay of the shared Alibaba trace takes, per policy.

Full replay: every node (1,213) and every GPU pod that ran, at real speed, through the real
engine and the three peers. A benchmark, not a test: it prints figures and asserts nothing.

``margin`` is the engine as the operator runs it (``IncrementalEngine``: each cycle decides what
the events since the last one can affect); ``margin, whole`` is the same policy decided by a
whole ``decide`` cycle each time, as before issue 16, for the comparison. Their decisions are the
same where the rules decide them (tests/core/test_incremental.py), so their margins match.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from gpuadmit.core.engine import LayoutMemo, decide
from gpuadmit.sim.cli import load_policy
from gpuadmit.sim.replay import POLICY_NAMES, Contender, contender_for, replay
from gpuadmit.sim.scenario import DEFAULT_SHAPE
from gpuadmit.sim.trace import LoadShape, find_trace_dir, read_alibaba


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.simulate", description=__doc__.split("\n")[0]).parse_args(argv if argv is not None else [])  # --help; no sizes to choose
    directory = find_trace_dir()
    if directory is None:
        print("skipped: the Alibaba 2023 trace is not here (set GPUADMIT_TRACE_DIR to its directory)")
        return
    policy = load_policy(None)
    for title, shape in (
        ("full trace, real speed, all nodes", LoadShape()),
        (
            f"default scenario (x{DEFAULT_SHAPE.time_compression:g}, {DEFAULT_SHAPE.node_count} nodes)",
            DEFAULT_SHAPE,
        ),
    ):
        started = time.perf_counter()
        trace = read_alibaba(directory, shape)
        read_seconds = time.perf_counter() - started
        print(f"{title}: {len(trace.workloads)} workloads, {len(trace.nodes)} nodes, read in {read_seconds:.2f} s")
        print(f"  {'policy':<13} {'wall s':>8} {'CPU s':>7} {'cycles':>7} {'CPU ms/cycle':>13} {'margin $':>10}")
        total_wall = total_cpu = 0.0
        margins: dict[str, float] = {}
        cpu: dict[str, float] = {}
        margin = contender_for("margin", policy)
        whole = Contender("margin, whole", functools.partial(decide, layouts=LayoutMemo()), margin.honours_queue_timeouts,
                          margin.min_runtime_before_preemption_s)
        for name, contender in [*((n, contender_for(n, policy)) for n in POLICY_NAMES), ("margin, whole", whole)]:
            result = replay(trace, policy, contender)
            margins[name], cpu[name] = result.margin, result.cpu_seconds
            if name in POLICY_NAMES:
                total_wall += result.wall_seconds
                total_cpu += result.cpu_seconds
            per_cycle = 1000 * result.cpu_seconds / max(result.cycles, 1)
            print(
                f"  {name:<13} {result.wall_seconds:>8.1f} {result.cpu_seconds:>7.1f} {result.cycles:>7} "
                f"{per_cycle:>13.2f} {result.margin:>10,.0f}"
            )
        print(f"  all four: {total_wall:.1f} s wall, {total_cpu:.1f} s CPU")
        print(f"  margin's CPU: {cpu['margin'] / cpu['fifo']:.2f}x fifo's (decided by whole cycles: "
              f"{cpu['margin, whole'] / cpu['fifo']:.2f}x)")
        first, *peers = POLICY_NAMES
        gains = ", ".join(f"{margins[first] / margins[peer] - 1:+.1%} over {peer}" for peer in peers if margins[peer])
        print(f"  {first} earns {gains}")


if __name__ == "__main__":
    main(sys.argv[1:])
