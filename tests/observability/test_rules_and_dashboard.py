"""The alert rules and the dashboard: promtool checks them, and their structure is what Grafana and the chart expect."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from gpuadmit.core.model import ANY_PRODUCT, Quota
from gpuadmit.metrics import Metrics

from .conftest import ALERTS_FILE, ALERTS_TEST_FILE, DASHBOARD_FILE, METRICS_DOC, promql_of_dashboard
from .scenarios import cluster_after_a_busy_cycle

REQUIRED_ALERTS = {
    "GPUAdmitQueueStarving",
    "GPUAdmitRejectionRateHigh",
    "GPUAdmitGPUsIdleWhileQueued",
    "GPUAdmitOperatorDown",
    "GPUAdmitNotDeciding",
    "GPUAdmitAPIErrorsRising",
    "GPUAdmitGuaranteeUnmet",
}
# What each required panel must show, as a metric its queries use.
REQUIRED_PANEL_METRICS = {
    "decisions per second by action": "gpuadmit_decisions_total",
    "queue depth": "gpuadmit_queue_depth",
    "oldest wait": "gpuadmit_oldest_queued_age_seconds",
    "admission wait": "gpuadmit_admission_wait_seconds_bucket",
    "gpus by product and state": "gpuadmit_gpus",
    "earned vs turned away": "gpuadmit_margin_turned_away_per_hour_total",
    "rejections by reason": "gpuadmit_decisions_total",
    "preemptions": "gpuadmit_preemptions_total",
    "cycle duration": "gpuadmit_cycle_duration_seconds_bucket",
    "api errors": "gpuadmit_api_errors_total",
    "gpuquota $quota": "gpuadmit_quota_gpus",
    "unmet guarantee": "gpuadmit_quota_unmet_guarantee_seconds",
}
METRIC_NAME = re.compile(r"\bgpuadmit_[a-z_]+\b")


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def exported_series_names() -> set[str]:
    metrics = Metrics()
    snapshot, result = cluster_after_a_busy_cycle()
    metrics.observe_cycle(snapshot, result, 0.01)
    metrics.observe_api_error("patch", 409)
    # The same cycle with a GPUQuota covering the pending work's namespaces: the quota series.
    namespaces = {workload.namespace for workload in snapshot.pending}
    quotas = {"q": Quota("q", {ANY_PRODUCT: 4}, max_gpus=64)}
    metrics.observe_cycle(replace(snapshot, quotas=quotas, quota_of_namespace=dict.fromkeys(namespaces, "q")), result, 0.01)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


# --- promtool -------------------------------------------------------------------


@pytest.mark.prometheus
def test_promtool_check_rules_passes(promtool: str) -> None:
    run = subprocess.run([promtool, "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in run.stdout + run.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_of_every_alert_pass(promtool: str) -> None:
    run = subprocess.run(
        [promtool, "test", "rules", str(ALERTS_TEST_FILE)], capture_output=True, text=True, timeout=120,
        cwd=ALERTS_TEST_FILE.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


# --- alert rules ------------------------------------------------------------------


def test_every_required_alert_exists_with_severity_summary_and_description() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_operator_down_and_not_deciding_use_absent_or_up() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "absent(" in expressions["GPUAdmitOperatorDown"]
    assert "gpuadmit_cycles_total" in expressions["GPUAdmitNotDeciding"]


def test_every_alert_has_a_runbook_entry() -> None:
    doc = METRICS_DOC.read_text()
    runbook = doc[doc.index("## Runbook"):]
    for rule in alert_rules():
        assert f"### {rule['alert']}" in runbook, rule["alert"]


# --- dashboard --------------------------------------------------------------------


def test_dashboard_has_a_prometheus_datasource_variable_and_a_recent_schema() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 38
    variables = board["templating"]["list"]
    assert any(v["name"] == "datasource" and v["type"] == "datasource" and v["query"] == "prometheus"
               for v in variables)


def test_every_panel_and_query_uses_the_datasource_variable_and_no_uid_is_hard_coded() -> None:
    board = dashboard()
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    # The only literal uid is the dashboard's own (stable links); every datasource uid is the variable.
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD_FILE.read_text())
    assert set(uids) == {"${datasource}", board["uid"]}


def test_dashboard_has_a_panel_for_everything_the_operator_watches() -> None:
    titles_and_exprs = [(title.lower(), expr) for title, expr in promql_of_dashboard(dashboard())]
    for topic, metric in REQUIRED_PANEL_METRICS.items():
        assert any(topic in title and metric in expr for title, expr in titles_and_exprs), topic


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_metric_the_dashboard_and_alerts_use_is_exported_and_documented() -> None:
    exported = exported_series_names()
    doc = METRICS_DOC.read_text()
    used = set(METRIC_NAME.findall(ALERTS_FILE.read_text()))
    for _, expr in promql_of_dashboard(dashboard()):
        used |= set(METRIC_NAME.findall(expr))
    assert used, "no gpuadmit metric found in the expressions"
    assert used - exported == set()
    for name in used:
        family = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert f"`{family}" in doc, f"{family} undocumented"


def test_every_exported_gpuadmit_metric_is_documented() -> None:
    doc = METRICS_DOC.read_text()
    for name in exported_series_names():
        if name.startswith("gpuadmit_") and not name.endswith("_created"):
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert f"`{family}" in doc, f"{family} undocumented"
