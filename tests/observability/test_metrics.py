"""The exporter on its own: what each metric says after a cycle, bounded labels, and a clean real scrape."""

from __future__ import annotations

import logging
import subprocess
import urllib.request
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gpuadmit
from gpuadmit.core.model import Action, CycleResult, GpuNode, PlacementEntry, Reason, Snapshot
from gpuadmit.metrics import (
    ADMISSION_WAIT_BUCKETS,
    CYCLE_DURATION_BUCKETS,
    DECISION_LATENCY_BUCKETS,
    Metrics,
    gauges_after_cycle,
    start_metrics_server,
)

from .scenarios import (
    A100,
    INFERENCE_MARGIN_ON_A100,
    NOW,
    POLICY,
    TRAINING_MARGIN_ON_A100,
    cluster_after_a_busy_cycle,
    decision,
    workload,
)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def total(metrics: Metrics, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(metrics).items() if n == name and wanted <= ls)


# --- state after a cycle -------------------------------------------------------------


def test_gpus_by_product_and_state_reflect_the_cycle_decisions() -> None:
    gauges = gauges_after_cycle(*cluster_after_a_busy_cycle())
    # prod/serve keeps a1:3, prod/new-serve takes a2:4; the preempted research/old-train holds nothing.
    assert gauges.gpus[(A100, "reserved")] == 3 + 4
    assert gauges.gpus[(A100, "used_by_others")] == 5 - 3
    assert gauges.gpus[(A100, "free")] == (8 - 3 - 2) + (8 - 4)
    assert gauges.gpus[(A100, "allocatable")] == 16
    assert gauges.gpus[("H100", "unavailable")] == 4 and gauges.gpus[("H100", "free")] == 0
    assert gauges.gpus[("unknown", "free")] == 2


def test_workloads_queue_and_waits_reflect_the_cycle_decisions() -> None:
    gauges = gauges_after_cycle(*cluster_after_a_busy_cycle())
    assert gauges.workloads[("Running", "inference")] == 1
    assert gauges.workloads[("Admitted", "inference")] == 1
    assert gauges.workloads[("Admitted", "training")] == 0
    assert gauges.workloads[("Preempted", "training")] == 1
    assert gauges.workloads[("Queued", "training")] == 2
    assert gauges.queue_depth == {"training": 3, "inference": 0}  # two queued and the victim
    assert gauges.oldest_queued_age_seconds == {"training": 7200.0, "inference": 0.0}
    assert gauges.smallest_capacity_blocked_request == 8  # train-small waits for the reserve, not for capacity
    assert gauges.pending_considered == 6


def test_margin_per_hour_earned_and_held_in_the_queue() -> None:
    gauges = gauges_after_cycle(*cluster_after_a_busy_cycle())
    assert gauges.margin_earned_per_hour["inference"] == pytest.approx((3 + 4) * INFERENCE_MARGIN_ON_A100)
    assert gauges.margin_earned_per_hour["training"] == 0.0
    assert gauges.margin_queued_per_hour["InsufficientCapacity"] == pytest.approx(8 * TRAINING_MARGIN_ON_A100)
    assert gauges.margin_queued_per_hour["InferenceReserve"] == pytest.approx(2 * TRAINING_MARGIN_ON_A100)
    assert gauges.margin_queued_per_hour["PreemptedByHigherMargin"] == pytest.approx(4 * TRAINING_MARGIN_ON_A100)
    assert gauges.margin_queued_per_hour["QueueFull"] == 0.0


def test_a_victim_waits_from_its_preemption() -> None:
    snapshot, result = cluster_after_a_busy_cycle()
    only_preemption = CycleResult(
        decisions=tuple(d for d in result.decisions if d.key == "prod/new-serve"), preemptions=result.preemptions)
    snapshot = Snapshot(nodes=snapshot.nodes, holding=snapshot.holding, pending=snapshot.pending[:1],
                        policy=snapshot.policy, now=snapshot.now, gpus_of_own_pods=snapshot.gpus_of_own_pods)
    gauges = gauges_after_cycle(snapshot, only_preemption)
    assert gauges.queue_depth["training"] == 1
    assert gauges.oldest_queued_age_seconds["training"] == 0.0  # not the hour since it was created
    assert gauges.smallest_capacity_blocked_request is None


def test_exported_gauges_match_the_computed_state() -> None:
    metrics = Metrics()
    metrics.observe_cycle(*cluster_after_a_busy_cycle(), duration_s=0.002)
    assert value(metrics, "gpuadmit_gpus", product=A100, state="reserved") == 7
    assert value(metrics, "gpuadmit_queue_depth", **{"class": "training"}) == 3
    assert value(metrics, "gpuadmit_oldest_queued_age_seconds", **{"class": "training"}) == 7200
    assert value(metrics, "gpuadmit_queue_smallest_request_gpus") == 8
    assert value(metrics, "gpuadmit_margin_earned_per_hour", **{"class": "inference"}) == pytest.approx(28.0)
    assert value(metrics, "gpuadmit_cycle_pending_workloads") == 6
    assert value(metrics, "gpuadmit_cycles_total") == 1
    assert value(metrics, "gpuadmit_cycle_duration_seconds_count") == 1
    assert value(metrics, "gpuadmit_last_cycle_timestamp_seconds") > 0


def test_held_work_keeps_earning_the_margin_its_admission_carried() -> None:
    metrics = Metrics()
    newcomer = workload("prod/w", "inference", 2)
    on_a1 = (PlacementEntry("a1", 2),)
    nodes = (GpuNode("a1", 8, A100),)
    admit = decision("prod/w", Action.ADMIT, Reason.ADMITTED, "inference", placement=on_a1, margin_per_gpu_hour=5.0)
    metrics.observe_cycle(Snapshot(nodes=nodes, holding=(), pending=(newcomer,), policy=POLICY, now=NOW),
                          CycleResult((admit,)), 0.001)
    assert value(metrics, "gpuadmit_margin_earned_per_hour", **{"class": "inference"}) == 2 * 5.0

    held = Snapshot(nodes=nodes, holding=(replace(newcomer, phase="Running", placement=on_a1),), pending=(),
                    policy=POLICY, now=NOW + 60)
    metrics.observe_cycle(held, CycleResult(()), 0.001)
    assert value(metrics, "gpuadmit_margin_earned_per_hour", **{"class": "inference"}) == 2 * 5.0  # as written

    restarted = Metrics()  # knows no admission: prices by the policy and the node's product
    restarted.observe_cycle(held, CycleResult(()), 0.001)
    assert value(restarted, "gpuadmit_margin_earned_per_hour", **{"class": "inference"}) == pytest.approx(
        2 * INFERENCE_MARGIN_ON_A100)


# --- events ----------------------------------------------------------------------------


def test_decisions_are_counted_by_action_class_and_reason() -> None:
    metrics = Metrics()
    metrics.observe_cycle(*cluster_after_a_busy_cycle(), duration_s=0.002)
    assert value(metrics, "gpuadmit_decisions_total", action="admit", reason="Admitted", **{"class": "inference"}) == 1
    assert value(metrics, "gpuadmit_decisions_total", action="queue", reason="InsufficientCapacity",
                 **{"class": "training"}) == 1
    assert value(metrics, "gpuadmit_decisions_total", action="reject", reason="InvalidSpec",
                 **{"class": "unknown"}) == 1
    assert total(metrics, "gpuadmit_decisions_total") == 6
    # A rejection turns away its margin; a negative margin is no loss.
    assert value(metrics, "gpuadmit_margin_turned_away_per_hour_total", reason="QueueTimeout") == pytest.approx(
        2 * TRAINING_MARGIN_ON_A100)
    assert value(metrics, "gpuadmit_margin_turned_away_per_hour_total", reason="MarginBelowFloor") == 0


def test_an_unchanged_decision_on_a_later_cycle_is_not_counted_again() -> None:
    metrics = Metrics()
    snapshot, result = cluster_after_a_busy_cycle()
    queued = tuple(d for d in result.decisions if d.action is Action.QUEUE)
    pending = tuple(w for w in snapshot.pending if w.key in {d.key for d in queued})
    waiting = Snapshot(nodes=snapshot.nodes, holding=(), pending=pending, policy=POLICY, now=NOW)
    for _ in range(3):
        metrics.observe_cycle(waiting, CycleResult(decisions=queued), 0.001)
    assert total(metrics, "gpuadmit_decisions_total", action="queue") == 2
    assert value(metrics, "gpuadmit_cycles_total") == 3

    # train-small changes reason: a new decision.
    moved = tuple(
        decision(d.key, Action.QUEUE, Reason.INSUFFICIENT_CAPACITY, "training") if d.name == "train-small" else d
        for d in queued
    )
    metrics.observe_cycle(waiting, CycleResult(decisions=moved), 0.001)
    assert total(metrics, "gpuadmit_decisions_total", action="queue") == 3

    # Both leave the pending side (admitted elsewhere), then come back queued: counted again.
    metrics.observe_cycle(Snapshot(nodes=(), holding=(), pending=(), policy=POLICY, now=NOW), CycleResult(()), 0.001)
    metrics.observe_cycle(waiting, CycleResult(decisions=moved), 0.001)
    assert total(metrics, "gpuadmit_decisions_total", action="queue") == 5


def test_status_writes_preemptions_and_api_errors() -> None:
    metrics = Metrics()
    admit = decision("prod/a", Action.ADMIT, Reason.ADMITTED, "inference")
    queue = decision("prod/b", Action.QUEUE, Reason.INSUFFICIENT_CAPACITY, "training")
    metrics.observe_status_written(admit, latency_s=0.03, admission_wait_s=42.0)
    metrics.observe_status_written(queue, latency_s=0.01, admission_wait_s=None)
    metrics.observe_status_written(queue, latency_s=-1.0, admission_wait_s=5.0)  # clock skew; a wait on a queue is ignored
    metrics.observe_preemption("training", "inference")
    metrics.observe_api_error("PATCH", 409)
    metrics.observe_api_error("create", 0)
    assert value(metrics, "gpuadmit_admission_wait_seconds_count", **{"class": "inference"}) == 1
    assert value(metrics, "gpuadmit_admission_wait_seconds_sum", **{"class": "inference"}) == 42.0
    assert value(metrics, "gpuadmit_admission_wait_seconds_count", **{"class": "training"}) == 0
    assert value(metrics, "gpuadmit_decision_latency_seconds_count", action="queue") == 2
    assert value(metrics, "gpuadmit_decision_latency_seconds_sum", action="queue") == pytest.approx(0.01)
    assert value(metrics, "gpuadmit_preemptions_total", victim_class="training", preemptor_class="inference") == 1
    assert value(metrics, "gpuadmit_api_errors_total", verb="patch", code="409") == 1
    assert value(metrics, "gpuadmit_api_errors_total", verb="create", code="0") == 1


def test_bad_input_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.ERROR, logger="gpuadmit.metrics"):
        metrics.observe_cycle(None, None, 0.1)  # type: ignore[arg-type]
        metrics.observe_status_written(None, 0.1, 1.0)  # type: ignore[arg-type]
        metrics.observe_api_error("get", "not-a-code")  # type: ignore[arg-type]
    assert len(caplog.records) == 3
    assert value(metrics, "gpuadmit_cycles_total") == 0  # a failed observation counts nothing


def test_histogram_buckets_suit_what_they_measure() -> None:
    assert ADMISSION_WAIT_BUCKETS[0] <= 1 and ADMISSION_WAIT_BUCKETS[-1] >= 2 * 86400  # seconds to days
    assert DECISION_LATENCY_BUCKETS[0] <= 0.01 and DECISION_LATENCY_BUCKETS[-1] >= 10  # ms to s
    assert CYCLE_DURATION_BUCKETS[0] <= 0.001 and CYCLE_DURATION_BUCKETS[-1] >= 5
    for buckets in (ADMISSION_WAIT_BUCKETS, DECISION_LATENCY_BUCKETS, CYCLE_DURATION_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


# --- labels -----------------------------------------------------------------------------


def gpuadmit_label_sets(metrics: Metrics) -> list[dict[str, str]]:
    return [dict(labels) for (name, labels) in samples(metrics) if name.startswith("gpuadmit_")]


def test_no_workload_namespace_or_node_name_becomes_a_label_by_default() -> None:
    metrics = Metrics()
    snapshot, result = cluster_after_a_busy_cycle()
    metrics.observe_cycle(snapshot, result, 0.01)
    names = {w.name for w in snapshot.pending + snapshot.holding} | {w.namespace for w in snapshot.pending}
    names |= {node.name for node in snapshot.nodes}
    for labels in gpuadmit_label_sets(metrics):
        assert not {"namespace", "node", "name", "workload"} & set(labels), labels
        assert not names & set(labels.values()), labels


def test_per_namespace_breakdown_is_opt_in() -> None:
    metrics = Metrics(per_namespace=True)
    metrics.observe_cycle(*cluster_after_a_busy_cycle(), duration_s=0.01)
    assert value(metrics, "gpuadmit_namespace_gpus_reserved", namespace="prod") == 7
    assert value(metrics, "gpuadmit_namespace_queue_depth", namespace="research") == 3
    assert value(metrics, "gpuadmit_namespace_decisions_total", namespace="lab", action="reject",
                 reason="InvalidSpec") == 1
    assert not any(name.startswith("gpuadmit_namespace_") for name, _ in samples(Metrics()))


def test_per_namespace_series_of_deleted_namespaces_are_dropped() -> None:
    existing: set[str] | None = None  # not known yet: nothing is dropped
    metrics = Metrics(per_namespace=True, existing_namespaces=lambda: existing)
    metrics.observe_cycle(*cluster_after_a_busy_cycle(), duration_s=0.01)
    assert value(metrics, "gpuadmit_namespace_decisions_total", namespace="lab", action="reject", reason="InvalidSpec") == 1
    existing = {"prod", "research"}  # "lab" was deleted
    metrics.observe_cycle(*cluster_after_a_busy_cycle(), duration_s=0.01)
    namespaces = {dict(labels).get("namespace") for (name, labels) in samples(metrics) if name.startswith("gpuadmit_namespace_")}
    assert "lab" not in namespaces and "research" in namespaces


def test_build_info_names_the_version_and_registries_are_independent() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry)
    build = [labels for (name, labels), v in samples(metrics).items() if name == "gpuadmit_build_info" and v == 1]
    assert len(build) == 1 and ("version", gpuadmit.__version__) in build[0]
    Metrics()  # a second instance with its own registry does not clash
    assert not any(n.startswith("process_") for n, _ in samples(metrics))  # a caller's registry stays as given


# --- the real scrape ---------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_metrics_server_serves_the_registry_on_loopback() -> None:
    metrics = Metrics()
    metrics.observe_cycle(*cluster_after_a_busy_cycle(), duration_s=0.01)
    server = start_metrics_server(metrics, 0, "127.0.0.1")
    try:
        text = scrape(server.port)
    finally:
        server.stop()
    assert f'gpuadmit_gpus{{product="{A100}",state="reserved"}} 7.0' in text
    assert "process_cpu_seconds_total" in text


@pytest.mark.prometheus
def test_promtool_check_metrics_is_clean_on_a_real_scrape(promtool: str) -> None:
    metrics = Metrics(per_namespace=True)
    metrics.observe_cycle(*cluster_after_a_busy_cycle(), duration_s=0.01)
    metrics.observe_status_written(decision("prod/a", Action.ADMIT, Reason.ADMITTED, "inference"), 0.02, 30.0)
    metrics.observe_preemption("training", "inference")
    metrics.observe_api_error("patch", 409)
    server = start_metrics_server(metrics, 0, "127.0.0.1")
    try:
        text = scrape(server.port)
    finally:
        server.stop()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr


# --- invariants over many real engine cycles ------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_state_gauges_stay_consistent_over_real_engine_cycles(seed: int) -> None:
    from gpuadmit.core.engine import decide

    from .simulated_cluster import SimulatedCluster

    metrics = Metrics()
    cluster = SimulatedCluster(metrics, decide, seed=seed)
    for cycle in range(1, 25):
        result = cluster.run_cycle(cycle)
        gauges = metrics.latest_gauges
        assert gauges is not None
        products = {product for product, _ in gauges.gpus}
        for product in products:  # every GPU in exactly one state, none negative
            parts = [gauges.gpus[(product, state)] for state in ("reserved", "used_by_others", "free", "unavailable")]
            assert min(parts) >= 0 and sum(parts) == gauges.gpus[(product, "allocatable")], (cycle, product)
        assert sum(count for (product, state), count in gauges.gpus.items() if state == "reserved") == \
            cluster.reserved_gpus()
        assert sum(gauges.queue_depth.values()) == cluster.queued()
        queued = sum(1 for d in result.decisions if d.action is Action.QUEUE) + len(result.preemptions)
        assert sum(gauges.queue_depth.values()) == queued
        assert sum(gauges.margin_earned_per_hour.values()) == pytest.approx(cluster.margin_per_hour_written())


def test_quota_gauges_show_lent_gpus_and_a_guarantee_waiting_unmet() -> None:
    from gpuadmit.core.engine import decide
    from gpuadmit.core.model import Quota, Workload

    borrower = Workload(namespace="misc", name="borrower", gpus_per_replica=8, replicas=1, workload_class="training",
                        phase="Running", placement=(PlacementEntry("n1", 8),), admitted_at=NOW - 60)  # too young to reclaim
    waiting = Workload(namespace="research", name="train", gpus_per_replica=8, replicas=1, workload_class="training",
                       created_at=NOW - 3600, queued_since=NOW - 3600)
    snapshot = Snapshot(
        nodes=(GpuNode("n1", 8, A100),), holding=(borrower,), pending=(waiting,), policy=POLICY, now=NOW,
        quotas={"research": Quota("research", {A100: 8}), "idle": Quota("idle", {})},
        quota_of_namespace={"research": "research"},
    )  # fmt: skip
    result = decide(snapshot)
    assert [(d.action, d.reason) for d in result.decisions] == [(Action.QUEUE, Reason.INSUFFICIENT_CAPACITY)]
    metrics = Metrics()
    metrics.observe_cycle(snapshot, result, 0.01)
    assert value(metrics, "gpuadmit_quota_gpus", quota="research", product=A100, state="guaranteed") == 8
    assert value(metrics, "gpuadmit_quota_gpus", quota="research", product=A100, state="used") == 0
    assert value(metrics, "gpuadmit_quota_gpus", quota="research", product=A100, state="lent") == 8
    assert value(metrics, "gpuadmit_quota_unmet_guarantee_seconds", quota="research") == 3600
    assert value(metrics, "gpuadmit_quota_unmet_guarantee_seconds", quota="idle") == 0
    # No GPUQuota: no quota series at all.
    plain = Metrics()
    plain.observe_cycle(replace(snapshot, quotas={}, quota_of_namespace={}), result, 0.01)
    assert not [key for key in samples(plain) if key[0].startswith("gpuadmit_quota_")]
