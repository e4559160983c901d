"""The real operator, scraped by a real Prometheus: `gpuadmit run` on the emulated API server.

What Prometheus reports is compared with what the operator wrote to the workloads'
status: admitted counts, GPUs reserved, margin per hour earned.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import kubernetes
import pytest

from tests.e2e_harness import Cluster, OperatorProcess
from tests.invariants import ClusterState, reserved_gpus_by_node

from .conftest import DASHBOARD_FILE, PrometheusServer, promql_of_dashboard, wait_until

pytestmark = [pytest.mark.prometheus, pytest.mark.e2e]

DEADLINE_S = 60.0
H100 = "NVIDIA-H100-80GB-HBM3"
POLICY = {
    "gpuCostPerHour": {H100: 1.00, "default": 1.20},
    "pricePerGPUHour": {"inference": 6.00, "training": 2.00},
    "tierMultipliers": {"discount": 0.5},  # discounted training earns 0 per GPU-hour: below the floor
    "minMarginPerGPUHour": 0.5,
}
# (namespace, name, class, gpus per replica, replicas): on two 8-GPU nodes the first three are
# admitted (team-b's finetune first: within its GPUQuota's guarantee), the fourth waits for
# capacity, the fifth fits no node, the sixth earns below the floor.
QUOTA = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUQuota", "metadata": {"name": "team-b"},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}}, "guaranteed": {H100: 2}}}
WORKLOADS = [
    ("team-a", "chat", "inference", 4, 1),
    ("team-a", "pretrain", "training", 8, 1),
    ("team-b", "finetune", "training", 2, 1),
    ("team-b", "sweep", "training", 4, 2),
    ("team-b", "giant", "training", 16, 1),
    ("cheap", "batch", "training", 1, 1),
]


@pytest.fixture(scope="module")
def operator_scraped(tmp_path_factory: pytest.TempPathFactory,
                     start_prometheus: Callable[[list[str]], PrometheusServer],
                     ) -> Iterator[tuple[PrometheusServer, Cluster, OperatorProcess]]:
    workdir: Path = tmp_path_factory.mktemp("operator")
    with Cluster.start(workdir) as cluster:
        cluster.add_gpu_nodes(2, gpus=8, product=H100)
        cluster.apply_policy(POLICY)
        cluster.ensure_namespace("cheap", tier="discount")
        kubernetes.client.CustomObjectsApi(cluster.api_client).create_cluster_custom_object(
            "gpuadmit.io", "v1alpha1", "gpuquotas", QUOTA)
        with OperatorProcess.start(cluster.kubeconfig, workdir) as operator:
            prometheus = start_prometheus([f"127.0.0.1:{operator.metrics_port}"])
            # A first scrape before any workload: the counters' rise is then inside rate()'s window.
            wait_until(lambda: prometheus.query_value('gpuadmit_cycles_total{job="gpuadmit"}') is not None,
                       DEADLINE_S, "the first scrape of the operator")
            for namespace, name, workload_class, gpus, replicas in WORKLOADS:
                cluster.create_workload(namespace, name, gpus=gpus, replicas=replicas, workload_class=workload_class)
            cluster.wait_all_decided(len(WORKLOADS), timeout=DEADLINE_S)
            yield prometheus, cluster, operator


def statuses(cluster: Cluster) -> list[dict[str, Any]]:
    return [w.get("status") or {} for w in cluster.workloads()]


def scraped_matches(prometheus: PrometheusServer, expr: str, expected: float) -> bool:
    value = prometheus.query_value(expr)
    return value is not None and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9)


def test_status_and_prometheus_agree_on_admissions_reservations_and_margin(
        operator_scraped: tuple[PrometheusServer, Cluster, OperatorProcess]) -> None:
    prometheus, cluster, _ = operator_scraped
    written = statuses(cluster)
    holding = [s for s in written if s.get("phase") in ("Admitted", "Running")]
    assert holding, written
    reserved = sum(reserved_gpus_by_node(ClusterState(nodes=[], pods=[], workloads=cluster.workloads())).values())
    margin = sum(float(s.get("marginPerGPUHour") or 0) * sum(int(e["gpus"]) for e in s.get("placement") or [])
                 for s in holding)
    rejected = sum(1 for s in written if s.get("phase") == "Rejected")
    # Prometheus lags the operator by a scrape or two: poll until the figures meet.
    expectations = {
        'sum(gpuadmit_decisions_total{action="admit"})': len(holding),
        'sum(gpuadmit_decisions_total{action="reject"})': rejected,
        'sum(gpuadmit_gpus{state="reserved"})': reserved,
        "sum(gpuadmit_margin_earned_per_hour)": margin,
        'sum(gpuadmit_workloads{phase=~"Admitted|Running"})': len(holding),
        "sum(gpuadmit_queue_depth)": sum(1 for s in written if s.get("phase") in ("Queued", "Preempted")),
    }
    for expr, expected in expectations.items():
        wait_until(lambda: scraped_matches(prometheus, expr, expected), DEADLINE_S,
                   f"{expr} == {expected} (scraped: {prometheus.query_value(expr)})")


def test_every_dashboard_query_returns_data_from_the_operator(
        operator_scraped: tuple[PrometheusServer, Cluster, OperatorProcess]) -> None:
    prometheus, _, operator = operator_scraped
    wait_until(lambda: (prometheus.query_value("gpuadmit_cycles_total") or 0) >= 2, DEADLINE_S, "cycles scraped")
    empty = [(title, expr) for title, expr in promql_of_dashboard(json.loads(DASHBOARD_FILE.read_text()))
             if not prometheus.query(expr)]
    assert empty == [], f"dashboard queries without data\n{operator.log_tail()}"


def test_the_operators_scrape_is_healthy_and_no_alert_fires(
        operator_scraped: tuple[PrometheusServer, Cluster, OperatorProcess]) -> None:
    prometheus, _, _ = operator_scraped
    assert prometheus.query_value('up{job="gpuadmit"}') == 1
    assert prometheus.query_value("gpuadmit_build_info") == 1

    def rules_all_evaluated() -> list[dict[str, Any]] | None:
        """The loaded rules once each has been evaluated (before that its health is "unknown")."""
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = wait_until(rules_all_evaluated, DEADLINE_S, "every alert rule evaluated at least once")
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []
    assert [rule["name"] for rule in rules if rule.get("state") == "firing"] == []
