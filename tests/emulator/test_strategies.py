"""The per-kind rules of kubeapi_emulator.strategies on their own (the HTTP behaviour is in
test_workloads.py and test_scheduling_gates.py): the corners a request-level test would not reach."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeapi_emulator.strategies import STRATEGIES, pod_spec_update_causes

pytestmark = pytest.mark.emulator
CONTAINERS = [{"name": "main", "image": "busybox"}]
GATED = {"containers": CONTAINERS, "schedulingGates": [{"name": "g"}]}


def fields(causes: list[dict[str, str]]) -> list[str]:
    return [cause["field"] for cause in causes]


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def test_an_empty_term_may_not_gain_requirements_since_it_would_widen_the_choice() -> None:
    # An empty term matches no node; with requirements it would match some: wider, so refused.
    old = {**GATED, "affinity": required({})}
    new = {**GATED, "affinity": required({"matchExpressions": [{"key": "a", "operator": "Exists"}]})}
    assert fields(pod_spec_update_causes(old, new)) == [
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"]


def test_match_fields_may_be_added_after_a_terms_own() -> None:
    pin = {"key": "metadata.name", "operator": "In", "values": ["node-1"]}
    old = {**GATED, "affinity": required({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]})}
    new = {**GATED, "affinity": required({"matchExpressions": [{"key": "gpu", "operator": "Exists"}],
                                          "matchFields": [pin]})}
    assert pod_spec_update_causes(old, new) == []
    reordered = {**GATED, "affinity": required({"matchExpressions": [{"key": "zone", "operator": "Exists"},
                                                                     {"key": "gpu", "operator": "Exists"}]})}
    assert pod_spec_update_causes(old, reordered)  # the old requirements must stay first, as they were


def test_absent_and_empty_compare_equal_as_in_kubernetes() -> None:
    assert pod_spec_update_causes({"containers": CONTAINERS}, {"containers": CONTAINERS, "tolerations": [],
                                                               "nodeSelector": {}, "schedulingGates": []}) == []


def test_the_grace_period_may_go_from_negative_to_one_only() -> None:
    old = {"containers": CONTAINERS, "terminationGracePeriodSeconds": -1}
    assert pod_spec_update_causes(old, {**old, "terminationGracePeriodSeconds": 1}) == []
    assert fields(pod_spec_update_causes(old, {**old, "terminationGracePeriodSeconds": 5})) == ["spec"]


def test_an_ungated_pod_may_not_gain_node_affinity() -> None:
    old = {"containers": CONTAINERS}
    assert fields(pod_spec_update_causes(old, {**old, "affinity": required({"matchFields": []})})) == ["spec"]


def job(suspend: bool, start_time: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "j", "uid": "u"}, "status": {"startTime": start_time} if start_time else {},
            "spec": {"suspend": suspend, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                     "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u"}},
                                  "spec": {"containers": CONTAINERS}}}}


@pytest.mark.parametrize(("suspend", "start_time", "allowed"), [
    (True, None, True),                      # suspended, never started (or start forgotten on suspension)
    (True, "2026-01-01T00:00:00Z", False),   # suspended, but its controller has not caught up yet
    (False, None, False),                    # running
])
def test_a_jobs_template_scheduling_may_change_only_while_suspended_and_not_started(
        suspend: bool, start_time: str | None, allowed: bool) -> None:
    old = job(suspend, start_time)
    assert STRATEGIES[("batch", "jobs")].prepare_create(old) == []  # as stored: defaulted
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "gpu"}
    causes = STRATEGIES[("batch", "jobs")].prepare_update(old, new)
    assert (causes == []) is allowed
    if not allowed:
        assert fields(causes) == ["spec.template"]


def test_a_job_with_parallelism_only_keeps_completions_unset() -> None:
    body: dict[str, Any] = {"metadata": {"name": "q", "uid": "u"},
                            "spec": {"parallelism": 3, "template": {"spec": {"containers": CONTAINERS}}}}
    assert STRATEGIES[("batch", "jobs")].prepare_create(body) == []
    assert "completions" not in body["spec"] and body["spec"]["parallelism"] == 3


def test_a_deployments_strategy_is_defaulted_field_by_field() -> None:
    def defaulted(strategy: dict[str, Any]) -> Any:
        body: dict[str, Any] = {"metadata": {"name": "d"}, "spec": {
            "strategy": strategy, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": CONTAINERS}}}}
        assert STRATEGIES[("apps", "deployments")].prepare_create(body) == []
        return body["spec"]["strategy"]
    assert defaulted({"type": "Recreate"}) == {"type": "Recreate"}
    assert defaulted({"rollingUpdate": {"maxSurge": 1}}) == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}}
