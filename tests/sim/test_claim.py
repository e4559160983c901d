"""The issue's claim: margin earns >= 15% more than fifo and at least as much as priority and
binpack, its inference p95 wait stays within 10% of priority's, and no training workload waits
past its queue limit without a QueueTimeout rejection."""

from __future__ import annotations

import pytest

from gpuadmit.sim.cli import load_policy
from gpuadmit.sim.replay import POLICY_NAMES, contender_for, replay
from gpuadmit.sim.report import check_claim, summarize
from gpuadmit.sim.scenario import DEFAULT_SHAPE
from gpuadmit.sim.trace import find_trace_dir, read_alibaba, read_plain
from tests.sim.synthetic import write_synthetic


def assert_claim(summaries, inference_p95=True):
    """Every part of the claim; ``inference_p95=False`` leaves out the inference p95 part."""
    margin, fifo, priority, binpack = (summaries[name] for name in POLICY_NAMES)
    assert margin["marginRealized"] >= 1.15 * fifo["marginRealized"]
    assert margin["marginRealized"] >= priority["marginRealized"]
    assert margin["marginRealized"] >= binpack["marginRealized"]
    if inference_p95:
        assert_inference_p95(summaries)
    assert margin["byClass"]["training"]["waitedPastMaxQueue"] == 0
    assert margin["waitedPastMaxQueue"] == 0
    claim = check_claim(summaries)
    assert all(value is True for key, value in claim.items()
               if isinstance(value, bool) and (inference_p95 or key != "inferenceP95WithinTenPercentOfPriority")), claim


def assert_inference_p95(summaries):
    ours = summaries["margin"]["byClass"]["inference"]["waitSeconds"]["p95"] or 0.0
    theirs = summaries["priority"]["byClass"]["inference"]["waitSeconds"]["p95"] or 0.0
    assert ours <= 1.10 * theirs + 1e-6


@pytest.mark.parametrize("seed", [7, 3])
def test_claim_on_a_synthetic_overloaded_trace(tmp_path, seed):
    workloads, cluster, policy_file = write_synthetic(tmp_path, seed=seed, arrivals_per_hour=6.0)
    trace = read_plain(workloads, cluster)
    policy = load_policy(str(policy_file))
    results = {name: replay(trace, policy, contender_for(name, policy)) for name in POLICY_NAMES}
    summaries = {name: summarize(result) for name, result in results.items()}
    assert_claim(summaries)
    # Queueing matters here: fifo makes inference wait, and margin turns some training away.
    assert summaries["fifo"]["byClass"]["inference"]["waitSeconds"]["p95"] > 0
    for result in results.values():
        assert max(result.series.busy_gpus) <= trace.total_gpus


@pytest.fixture(scope="module")
def alibaba_summaries():
    """The default scenario (docs/simulate.md): 40 nodes, arrivals 16x faster, CPU and memory counted."""
    directory = find_trace_dir()
    if directory is None:
        pytest.skip("the Alibaba 2023 trace is not here (set GPUADMIT_TRACE_DIR to its directory)")
    trace = read_alibaba(directory, DEFAULT_SHAPE)
    policy = load_policy(None)
    return {name: summarize(replay(trace, policy, contender_for(name, policy))) for name in POLICY_NAMES}


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute and a half alone; the machine may be shared
def test_claim_on_the_shared_alibaba_trace_compressed(alibaba_summaries):
    assert_claim(alibaba_summaries, inference_p95=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.xfail(strict=True, reason=(
    "with CPU and memory counted (issue 11) margin's inference p95 wait is 44 s against priority's 27 s: "
    "inference pods of 11 CPUs and 48 GiB wait for CPU, not GPUs (docs/simulate.md, The default scenario)"))
def test_inference_p95_on_the_shared_alibaba_trace_compressed(alibaba_summaries):
    assert_inference_p95(alibaba_summaries)


@pytest.mark.parametrize("seed", [7, 3])
def test_claim_with_a_guarantee_on_a_synthetic_trace(tmp_path, seed):
    """Issue 13's check: with team-b guaranteed 8 T4s, margin still earns >= 1.15x fifo, and its
    guaranteed workloads are all admitted, 95 % of them within minRuntimeSeconds (the longest a
    reclaim may have to wait for a borrower) and most at once."""
    from gpuadmit.core.model import Quota

    workloads, cluster, policy_file = write_synthetic(tmp_path, seed=seed, hours=36)
    trace = read_plain(workloads, cluster)
    policy = load_policy(str(policy_file))
    quotas = {"team-b": Quota("team-b", {"T4": 8})}
    summaries = {
        name: summarize(replay(trace, policy, contender_for(name, policy), quotas=quotas, quota_of_namespace={"team-b": "team-b"}))
        for name in ("margin", "fifo")
    }
    assert summaries["margin"]["marginRealized"] >= 1.15 * summaries["fifo"]["marginRealized"]
    guaranteed = summaries["margin"]["guaranteed"]["workloads"]
    assert guaranteed["submitted"] > 10 and guaranteed["admitted"] == guaranteed["submitted"]
    assert guaranteed["waitSeconds"]["p50"] == 0.0
    assert guaranteed["waitSeconds"]["p95"] <= policy.preemption.min_runtime_seconds
