"""`make bench` part "e2e" (benchmarks.e2e): its helpers, and a small real run."""

from __future__ import annotations

import asyncio
import os

import pytest

from benchmarks import e2e as bench_e2e
from tests.e2e_harness import REAL_CLUSTER_ENV


def test_nodes_leave_room_for_every_workload() -> None:
    needed = bench_e2e.gpus_needed(2000)
    assert needed == 3000  # 1 or 2 GPUs, alternately
    namespace, body = bench_e2e.workload_body(7, "w")
    assert namespace.startswith("bench-") and body["spec"]["gpus"] in (1, 2)


def test_cpu_seconds_of_this_process_grow() -> None:
    before = bench_e2e.cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    assert bench_e2e.cpu_seconds(os.getpid()) >= before > 0


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.emulator
@pytest.mark.skipif(bool(os.environ.get(REAL_CLUSTER_ENV)), reason="the benchmark runs on the emulator")
def test_a_small_run_decides_everything_and_reports_every_figure(tmp_path) -> None:
    backlog, run, bare, text = asyncio.run(bench_e2e.run_benchmark(60, keep=tmp_path, audit=True))
    assert len(backlog.decided) == 60 and set(backlog.phases.values()) == {"Admitted"}
    assert backlog.start_to_first_s > 0 and backlog.decisions_per_s > 0
    assert len(run.decided) == 60 and set(run.phases.values()) == {"Admitted"}
    latencies = run.latencies_s
    assert len(latencies) == 60 and 0 < latencies[0] <= latencies[-1] <= run.makespan_s
    assert set(bare.patches_per_s) == set(bench_e2e.BARE_CONCURRENCY_LEVELS)
    assert all(rate > 0 for rate in bare.patches_per_s.values())
    for figure in ("start to first decision", "first to last decision", "all decided after", "decisions per second",
                   "p50", "p99", "ratio operator on the backlog / bare", "ratio operator live / bare",
                   "patch gpuworkloads/status"):
        assert figure in text, text
