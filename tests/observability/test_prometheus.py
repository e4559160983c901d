"""Proof against the real thing: a real Prometheus scrapes an exporter fed by real engine cycles.

Every PromQL expression of every dashboard panel must return data through the HTTP
API, the alert rules must load and evaluate cleanly in the server, and what
Prometheus reports must equal what the cycles decided.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Iterator

import pytest

from gpuadmit.metrics import Metrics, MetricsServer, start_metrics_server

from .conftest import DASHBOARD_FILE, PrometheusServer, promql_of_dashboard, wait_until
from .simulated_cluster import SimulatedCluster

pytestmark = pytest.mark.prometheus

CYCLES = 36
BATCHES = 3  # the cycles run in batches, a scrape apart, so rate() sees the counters move
SCRAPE_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def driven(start_prometheus: Callable[[list[str]], PrometheusServer]) -> Iterator[tuple[PrometheusServer, SimulatedCluster]]:
    """Prometheus scraping an exporter after CYCLES engine cycles of a simulated cluster."""
    from gpuadmit.core.engine import decide

    metrics = Metrics()
    server: MetricsServer = start_metrics_server(metrics, 0, "127.0.0.1")
    try:
        prometheus = start_prometheus([f"127.0.0.1:{server.port}"])
        cluster = SimulatedCluster(metrics, decide)

        def scraped_cycles() -> float | None:
            return prometheus.query_value('gpuadmit_cycles_total{job="gpuadmit"}')

        wait_until(lambda: scraped_cycles() == 0, SCRAPE_DEADLINE_S, "the first scrape of the exporter")
        cycle = 0
        for batch in range(BATCHES):
            for _ in range(CYCLES // BATCHES):
                cycle += 1
                cluster.run_cycle(cycle)
            wait_until(lambda: scraped_cycles() == cluster.ledger.cycles, SCRAPE_DEADLINE_S,
                       f"a scrape of batch {batch + 1}")
        yield prometheus, cluster
    finally:
        server.stop()


def test_the_scenario_exercises_every_kind_of_decision(driven: tuple[PrometheusServer, SimulatedCluster]) -> None:
    _, cluster = driven
    ledger = cluster.ledger
    assert ledger.admitted_by_class.get("inference", 0) > 0 and ledger.admitted_by_class.get("training", 0) > 0
    assert ledger.queue_decisions > 0
    assert {"NoNodeCanFit", "InvalidSpec"} <= set(ledger.rejected_by_reason), ledger.rejected_by_reason
    assert cluster.reserved_gpus() > 0 and cluster.queued() > 0


def test_every_dashboard_query_returns_data(driven: tuple[PrometheusServer, SimulatedCluster]) -> None:
    prometheus, _ = driven
    queries = promql_of_dashboard(json.loads(DASHBOARD_FILE.read_text()))
    assert len(queries) >= 10
    empty = []
    not_a_number = []
    for title, expr in queries:
        result = prometheus.query(expr)
        if not result:
            empty.append((title, expr))
        elif not all(math.isfinite(float(sample["value"][1])) for sample in result):
            not_a_number.append((title, expr, result))
    assert empty == [], "dashboard queries without data"
    assert not_a_number == [], "dashboard queries answering NaN or Inf"


def test_alert_rules_load_and_evaluate_without_error_and_none_fires(
        driven: tuple[PrometheusServer, SimulatedCluster]) -> None:
    prometheus, _ = driven

    def evaluated_rules() -> list[dict[str, object]]:
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules) else []

    rules = wait_until(evaluated_rules, SCRAPE_DEADLINE_S, "a first evaluation of every rule")
    assert {rule["name"] for rule in rules} >= {"GPUAdmitOperatorDown", "GPUAdmitNotDeciding"}
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []
    # Every alert needs minutes of trouble, so none fires yet. The scraped, deciding exporter is not
    # even suspected of being down; others may be pending (this cluster really does leave its
    # H100s idle, too costly for training, while training queues).
    assert [rule["name"] for rule in rules if rule["state"] == "firing"] == []
    state = {rule["name"]: rule["state"] for rule in rules}
    assert state["GPUAdmitOperatorDown"] == state["GPUAdmitNotDeciding"] == "inactive"


def test_decision_counts_match_what_the_cycles_decided(driven: tuple[PrometheusServer, SimulatedCluster]) -> None:
    prometheus, cluster = driven
    ledger = cluster.ledger
    assert prometheus.query_value('sum(gpuadmit_decisions_total{action="admit"})') == ledger.admitted
    for cls, count in ledger.admitted_by_class.items():
        assert prometheus.query_value(f'sum(gpuadmit_decisions_total{{action="admit",class="{cls}"}})') == count
    for reason, count in ledger.rejected_by_reason.items():
        assert prometheus.query_value(
            f'sum(gpuadmit_decisions_total{{action="reject",reason="{reason}"}})') == count, reason
    assert prometheus.query_value('sum(gpuadmit_decisions_total{action="queue"})') == ledger.queue_decisions
    assert prometheus.query_value("sum(gpuadmit_preemptions_total)") == ledger.preemptions
    assert prometheus.query_value("sum(gpuadmit_api_errors_total)") == ledger.api_errors
    assert prometheus.query_value("gpuadmit_cycles_total") == ledger.cycles
    assert prometheus.query_value("sum(gpuadmit_admission_wait_seconds_count)") == ledger.admitted


def test_state_gauges_match_the_books_after_the_last_cycle(driven: tuple[PrometheusServer, SimulatedCluster]) -> None:
    prometheus, cluster = driven
    assert prometheus.query_value('sum(gpuadmit_gpus{state="reserved"})') == cluster.reserved_gpus()
    assert prometheus.query_value('sum(gpuadmit_gpus{state="allocatable"})') == sum(n.allocatable for n in cluster.nodes)
    assert prometheus.query_value("sum(gpuadmit_queue_depth)") == cluster.queued()
    assert prometheus.query_value('sum(gpuadmit_workloads{phase=~"Admitted|Running"})') == len(cluster.holding)
    earned = prometheus.query_value("sum(gpuadmit_margin_earned_per_hour)")
    assert earned == pytest.approx(cluster.margin_per_hour_written(), rel=1e-9, abs=1e-9)
    # No GPU is counted twice: every product's states add up to what it has.
    for sample in prometheus.query('sum by (product) (gpuadmit_gpus{state="allocatable"})'):
        product = sample["metric"]["product"]
        parts = prometheus.query_value(f'sum(gpuadmit_gpus{{product="{product}",state!="allocatable"}})')
        assert parts == float(sample["value"][1]), product
