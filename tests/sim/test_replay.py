"""The discrete-event replay, driven by the real engine and by the peers."""

from __future__ import annotations

import dataclasses

import pytest

from gpuadmit.core.model import Action, CycleResult, Decision, GpuNode, PlacementEntry, Reason
from gpuadmit.core.policy import parse_policy
from gpuadmit.sim.replay import Contender, SimulationError, contender_for, replay
from gpuadmit.sim.report import summarize
from gpuadmit.sim.trace import Trace, TraceWorkload, read_plain
from tests.sim.synthetic import POLICY, write_synthetic

HOUR = 3600.0


def policy(**spec):
    return parse_policy({"spec": {**POLICY["spec"], **spec}})


def job(name, submit, duration, gpus, cls="training", products=()):
    return TraceWorkload(name=name, submit_time=submit, duration_s=duration, gpus=gpus, replicas=1, workload_class=cls, products=products)


def trace(nodes, workloads, end):
    return Trace(nodes=tuple(nodes), workloads=tuple(sorted(workloads, key=lambda w: (w.submit_time, w.name))), end_time=end, source="test")


def jobs_by_name(result):
    return {record.spec.name: record for record in result.jobs}


@pytest.mark.parametrize("name", ["margin", "fifo", "priority", "binpack"])
def test_margin_is_price_minus_cost_times_gpu_hours(name):
    the_trace = trace([GpuNode("t4", 4, product="T4")], [job("serve", 0, HOUR, 2, "inference")], end=2 * HOUR)
    result = replay(the_trace, policy(), contender_for(name, policy()))
    assert result.margin == pytest.approx((6.0 - 0.35) * 2 * 1.0)
    summary = summarize(result)
    assert summary["gpuHours"] == pytest.approx(2.0)
    assert summary["gpuUtilization"] == pytest.approx(2 * HOUR / (4 * 2 * HOUR))
    assert summary["byClass"]["inference"]["admitted"] == 1
    assert jobs_by_name(result)["serve"].state == "done"


def test_long_lived_work_is_credited_until_the_horizon_and_not_after():
    the_trace = trace([GpuNode("n", 2, product="T4")], [job("forever", 0, None, 1), job("late", 5 * HOUR, HOUR, 1)], end=3 * HOUR)
    result = replay(the_trace, policy(), contender_for("margin", policy()))
    assert result.margin == pytest.approx((2.0 - 0.35) * 3)
    records = jobs_by_name(result)
    assert records["forever"].state == "running"
    assert records["late"].state == "future"  # submitted after the horizon: never seen
    assert summarize(result)["byClass"]["training"]["submitted"] == 1


def test_margin_rejects_past_the_queue_limit_while_fifo_lets_it_wait():
    the_trace = trace(
        [GpuNode("n", 2, product="T4")],
        [job("first", 0, 10 * HOUR, 2), job("second", 60, HOUR, 2)],
        end=12 * HOUR,
    )
    limited = policy(defaultMaxQueueSeconds=HOUR)
    margin = jobs_by_name(replay(the_trace, limited, contender_for("margin", limited)))
    assert margin["second"].state == "rejected" and margin["second"].reject_reason == Reason.QUEUE_TIMEOUT.value
    assert not margin["second"].waited_past_max
    fifo = jobs_by_name(replay(the_trace, limited, contender_for("fifo", limited)))
    assert fifo["second"].first_admitted_at == pytest.approx(10 * HOUR)
    assert fifo["second"].waited_past_max


def test_preempted_training_returns_to_the_queue_and_resumes_with_the_time_left():
    the_trace = trace(
        [GpuNode("n", 4, product="T4")],
        [job("train", 0, 2 * HOUR, 4), job("serve", 100, 1000, 4, "inference")],
        end=10 * HOUR,
    )
    rules = policy()  # minRuntimeSeconds 600
    margin = replay(the_trace, rules, contender_for("margin", rules))
    records = jobs_by_name(margin)
    # The engine waits until the victim has run 600 s; the priority peer preempts at once.
    assert records["serve"].wait_s == pytest.approx(500, abs=1)
    assert records["train"].preemptions == 1 and margin.preemptions == 1
    assert records["train"].state == "done" and records["serve"].state == "done"
    assert margin.gpu_seconds == pytest.approx(4 * (2 * HOUR + 1000), abs=1)  # no work lost or repeated
    assert margin.margin == pytest.approx(4 * ((2 - 0.35) * 2 + (6 - 0.35) * 1000 / HOUR), abs=0.01)
    priority = jobs_by_name(replay(the_trace, rules, contender_for("priority", rules)))
    assert priority["serve"].wait_s == pytest.approx(0)
    assert priority["train"].preemptions == 1
    fifo = jobs_by_name(replay(the_trace, rules, contender_for("fifo", rules)))
    assert fifo["serve"].wait_s == pytest.approx(2 * HOUR - 100)
    assert fifo["train"].preemptions == 0


def test_training_never_lands_where_it_loses_money_under_margin():
    nodes = [GpuNode("dear", 4, product="V100M32"), GpuNode("cheap", 2, product="T4")]
    the_trace = trace(nodes, [job("a", 0, HOUR, 2), job("b", 1, HOUR, 2)], end=4 * HOUR)
    margin = jobs_by_name(replay(the_trace, policy(), contender_for("margin", policy())))
    assert margin["a"].first_admitted_at == 0 and margin["b"].first_admitted_at == pytest.approx(HOUR)  # waits for T4
    fifo = jobs_by_name(replay(the_trace, policy(), contender_for("fifo", policy())))
    assert fifo["a"].wait_s == 0 and fifo["b"].wait_s == 0  # one of them on the V100, at a loss


def test_an_overcommitting_decider_is_caught():
    def greedy(snapshot):
        return CycleResult(
            decisions=tuple(
                Decision(w.namespace, w.name, Action.ADMIT, Reason.ADMITTED, "all on one node", placement=(PlacementEntry("n", w.total_gpus),))
                for w in snapshot.pending
            )
        )

    the_trace = trace([GpuNode("n", 2)], [job("a", 0, HOUR, 2), job("b", 1, HOUR, 2)], end=2 * HOUR)
    with pytest.raises(SimulationError, match="overcommit"):
        replay(the_trace, policy(), Contender("greedy", greedy, False, None))


def test_a_broken_gang_is_caught():
    def half(snapshot):
        return CycleResult(
            decisions=tuple(
                Decision(w.namespace, w.name, Action.ADMIT, Reason.ADMITTED, "half", placement=(PlacementEntry("n", 1),))
                for w in snapshot.pending
            )
        )

    the_trace = trace([GpuNode("n", 4)], [job("a", 0, HOUR, 2)], end=2 * HOUR)
    with pytest.raises(SimulationError, match="gang"):
        replay(the_trace, policy(), Contender("half", half, False, None))


def test_replay_is_deterministic_and_never_overcommits(tmp_path):
    workloads, cluster, _ = write_synthetic(tmp_path, seed=3, hours=12)
    the_trace = read_plain(workloads, cluster)
    rules = policy()
    for name in ("margin", "binpack"):
        first = replay(the_trace, rules, contender_for(name, rules))
        second = replay(the_trace, rules, contender_for(name, rules))
        strip = lambda summary: {k: v for k, v in summary.items() if k not in ("replaySeconds", "replayCpuSeconds")}  # noqa: E731
        assert strip(summarize(first)) == strip(summarize(second))
        assert first.series.time == second.series.time
        assert max(first.series.busy_gpus) <= the_trace.total_gpus
        assert [dataclasses.astuple(r)[:12] for r in first.jobs] == [dataclasses.astuple(r)[:12] for r in second.jobs]


@pytest.mark.parametrize("name", ["margin", "priority"])
def test_folding_running_inference_into_the_nodes_changes_no_decision(tmp_path, name):
    workloads, cluster, _ = write_synthetic(tmp_path, seed=11, hours=12, arrivals_per_hour=8.0)
    the_trace = read_plain(workloads, cluster)
    rules = policy()
    folded = replay(the_trace, rules, contender_for(name, rules))
    listed = replay(the_trace, rules, contender_for(name, rules), fold_non_preemptible=False)
    assert [(r.state, r.first_admitted_at, r.preemptions, r.reject_reason) for r in folded.jobs] == [
        (r.state, r.first_admitted_at, r.preemptions, r.reject_reason) for r in listed.jobs
    ]
    assert folded.margin == pytest.approx(listed.margin)


def test_progress_is_reported_up_to_done():
    the_trace = trace([GpuNode("n", 2)], [job(f"j{i}", i * 100, 50, 1) for i in range(50)], end=6000)
    seen: list[float] = []
    replay(the_trace, policy(), contender_for("fifo", policy()), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 10


def test_a_guaranteed_tenant_reclaims_its_gpus_in_the_replay():
    """One 4-GPU node: team-a's high-margin training borrows team-b's guarantee while it is idle;
    team-b's work, arriving an hour later, reclaims it (the borrower ran past minRuntimeSeconds)."""
    from gpuadmit.core.model import Quota

    borrower = dataclasses.replace(job("borrow", 0, 10 * HOUR, 4, "training"), namespace="team-a", tier="gold")
    owner = dataclasses.replace(job("owned", HOUR, HOUR, 4, "training"), namespace="team-b")
    the_trace = trace([GpuNode("t4", 4, product="T4")], [borrower, owner], end=12 * HOUR)
    rules = policy(tierMultipliers={"gold": 1.5})
    quotas = {"b": Quota("b", {"T4": 4})}
    with_quota = replay(the_trace, rules, contender_for("margin", rules), quotas=quotas, quota_of_namespace={"team-b": "b"})
    jobs = jobs_by_name(with_quota)
    assert jobs["owned"].wait_s == 0.0  # reclaimed at once: the borrower ran an hour, past 600 s
    assert jobs["borrow"].preemptions == 1 and with_quota.preemptions == 1
    assert jobs["owned"].within_guarantee and not jobs["borrow"].within_guarantee
    assert summarize(with_quota)["guaranteed"]["workloads"]["waitSeconds"]["p95"] == 0.0
    without = jobs_by_name(replay(the_trace, rules, contender_for("margin", rules)))
    # Without the quota it waits behind the borrower until its queue limit (4 h) turns it away.
    assert without["owned"].wait_s is None and without["owned"].reject_reason == "QueueTimeout"
    assert "guaranteed" not in summarize(replay(the_trace, rules, contender_for("margin", rules)))


def test_the_guaranteed_wait_counts_only_work_within_the_guarantee_when_it_arrived():
    """fifo (Kueue: no reclaim) on one 4-GPU T4 node; team-b is guaranteed 2 T4s. Only ``first``
    (b holds nothing) and ``after`` (b's work is over) arrive within the guarantee: ``beyond``
    arrives while ``first`` waits for those 2 GPUs, ``late`` while ``beyond`` runs on them."""
    from gpuadmit.core.model import Quota

    def of_b(name, submit, duration, gpus):
        return dataclasses.replace(job(name, submit, duration, gpus), namespace="team-b")

    the_trace = trace([GpuNode("t4", 4, product="T4")], [
        dataclasses.replace(job("borrow", 0, 100, 4), namespace="team-a"),  # takes the node until 100
        of_b("first", 10, 50, 2),     # within: waits 90 (fifo does not reclaim)
        of_b("beyond", 20, 500, 2),   # not within: first's 2 GPUs are still owed; waits 80
        of_b("late", 200, 50, 2),     # not within: beyond holds b's 2 T4s; 2 are free, waits 0
        of_b("after", 700, 50, 2),    # within: b holds nothing any more; waits 0
    ], end=1000)
    rules = policy()
    result = replay(the_trace, rules, contender_for("fifo", rules), quotas={"b": Quota("b", {"T4": 2})},
                    quota_of_namespace={"team-b": "b"})
    jobs = jobs_by_name(result)
    assert [jobs[name].wait_s for name in ("first", "beyond", "late", "after")] == [90, 80, 0, 0]
    assert sorted(name for name, record in jobs.items() if record.within_guarantee) == ["after", "first"]
    guaranteed = summarize(result)["guaranteed"]
    assert guaranteed["workloads"]["submitted"] == 2 and guaranteed["workloads"]["admitted"] == 2
    assert guaranteed["workloads"]["waitSeconds"] == {"p50": 0.0, "p95": 90.0, "max": 90.0}
    assert guaranteed["tenants"]["submitted"] == 4
    assert guaranteed["tenants"]["waitSeconds"] == {"p50": 0.0, "p95": 90.0, "max": 90.0}


def test_work_the_policy_will_not_put_on_the_guaranteed_product_is_not_guaranteed():
    """team-b is guaranteed a V100, where training earns less than the policy's floor (2.00 - 2.48)
    and inference does not: only the inference workload is owed the guarantee."""
    from gpuadmit.core.model import Quota

    nodes = [GpuNode("t4", 4, product="T4"), GpuNode("v100", 4, product="V100M32")]
    the_trace = trace(nodes, [
        dataclasses.replace(job("train", 0, 100, 1), namespace="team-b"),
        dataclasses.replace(job("serve", 0, 100, 1, "inference"), namespace="team-b"),
        dataclasses.replace(job("pinned", 0, 100, 1, "inference", products=("T4",)), namespace="team-b"),
    ], end=1000)
    rules = policy()
    result = replay(the_trace, rules, contender_for("priority", rules), quotas={"b": Quota("b", {"V100M32": 4})},
                    quota_of_namespace={"team-b": "b"})
    assert sorted(name for name, record in jobs_by_name(result).items() if record.within_guarantee) == ["serve"]
