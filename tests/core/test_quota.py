"""GPUQuota objects -> Quota, LabelSelector, and which quota each namespace belongs to."""

from __future__ import annotations

import pytest
from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import Quota
from gpuadmit.core.quota import (
    LabelSelector,
    Requirement,
    parse_quota,
    parse_selector,
    tenancy,
)


def gpu_quota(name: str = "research", created: str = "2026-11-01T00:00:00Z", **spec) -> dict:
    spec.setdefault("namespaceSelector", {"matchLabels": {"team": name}})
    return {"kind": "GPUQuota", "metadata": {"name": name, "creationTimestamp": created}, "spec": spec}


def ns(name: str, **labels: str) -> dict:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def test_parses_every_field_and_defaults_lend_idle_to_true() -> None:
    quota, selector = parse_quota(gpu_quota(guaranteed={"NVIDIA-H100": 8, "*": 2}, maxGPUs=24))
    assert quota == Quota("research", {"NVIDIA-H100": 8, "*": 2}, 24, True, quota.created_at)
    assert quota.created_at == 1793491200.0
    assert selector == LabelSelector({"team": "research"})
    assert parse_quota(gpu_quota(lendIdle=False))[0].lend_idle is False


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"guaranteed": {"NVIDIA-H100": -1}}, "spec.guaranteed.NVIDIA-H100"),
        ({"guaranteed": {"NVIDIA-H100": 1.5}}, "spec.guaranteed.NVIDIA-H100"),
        ({"guaranteed": {"NVIDIA-H100": True}}, "spec.guaranteed.NVIDIA-H100"),
        ({"guaranteed": [8]}, "spec.guaranteed"),
        ({"maxGPUs": "24"}, "spec.maxGPUs"),
        ({"lendIdle": "yes"}, "spec.lendIdle"),
        ({"borrowing": 1}, "spec.borrowing"),
        ({"namespaceSelector": {"matchLabels": {"team": 1}}}, "spec.namespaceSelector.matchLabels"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Like"}]}}, "spec.namespaceSelector.matchExpressions[0].operator"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}, "spec.namespaceSelector.matchExpressions[0].values"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "Exists", "values": ["a"]}]}}, "spec.namespaceSelector.matchExpressions[0].values"),
        ({"namespaceSelector": {"labels": {}}}, "spec.namespaceSelector.labels"),
    ],
)
def test_an_invalid_field_is_named(spec: dict, field: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_quota(gpu_quota(**spec))
    assert raised.value.field == field


def test_the_selector_is_required_and_a_quota_needs_a_name() -> None:
    with pytest.raises(SpecError, match="spec.namespaceSelector: is required"):
        parse_quota({"metadata": {"name": "q"}, "spec": {"guaranteed": {"*": 1}}})
    with pytest.raises(SpecError, match="metadata.name"):
        parse_quota({"spec": {"namespaceSelector": {}}})
    with pytest.raises(SpecError):
        parse_quota("not a mapping")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "operator, values, labels, expected",
    [
        ("In", ["a", "b"], {"k": "b"}, True),
        ("In", ["a"], {"k": "b"}, False),
        ("In", ["a"], {}, False),
        ("NotIn", ["a"], {"k": "b"}, True),
        ("NotIn", ["a"], {}, True),
        ("NotIn", ["a"], {"k": "a"}, False),
        ("Exists", [], {"k": ""}, True),
        ("Exists", [], {}, False),
        ("DoesNotExist", [], {}, True),
        ("DoesNotExist", [], {"k": "x"}, False),
    ],
)
def test_match_expressions_follow_kubernetes(operator: str, values: list, labels: dict, expected: bool) -> None:
    assert Requirement("k", operator, frozenset(values)).matches(labels) is expected


def test_match_labels_and_expressions_must_all_hold_and_the_empty_selector_matches_all() -> None:
    selector = parse_selector({"matchLabels": {"team": "r"}, "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}, "s")
    assert selector.matches({"team": "r", "env": "prod"})
    assert not selector.matches({"team": "r", "env": "dev"})
    assert not selector.matches({"team": "x"})
    assert parse_selector({}, "s").matches({}) and parse_selector(None, "s").matches({"a": "b"})


def test_namespaces_are_assigned_and_the_name_label_is_implied() -> None:
    by_name = gpu_quota("solo", namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "lab"}}, guaranteed={"*": 1})
    tenants = tenancy([gpu_quota("research", guaranteed={"*": 4}), by_name], [ns("r1", team="research"), ns("r2", team="research"), ns("lab"), ns("other")])
    assert dict(tenants.quota_of_namespace) == {"r1": "research", "r2": "research", "lab": "solo"}
    assert tenants.namespaces_of("research") == ["r1", "r2"] and tenants.conflicts == ()


def test_a_namespace_matched_twice_goes_to_the_older_quota_and_both_hear_of_it() -> None:
    older = gpu_quota("a", created="2026-01-01T00:00:00Z", namespaceSelector={})
    newer = gpu_quota("b", created="2026-02-01T00:00:00Z", namespaceSelector={"matchLabels": {"team": "x"}})
    tenants = tenancy([newer, older], [ns("n1", team="x"), ns("n2")])
    assert dict(tenants.quota_of_namespace) == {"n1": "a", "n2": "a"}
    assert [(c.namespace, c.kept, c.lost) for c in tenants.conflicts] == [("n1", "a", "b")]
    assert tenants.conflicts_of("a") == tenants.conflicts_of("b") == list(tenants.conflicts)
    # Same age: the name decides, so the answer never depends on list order.
    same = tenancy([gpu_quota("z", namespaceSelector={}), gpu_quota("m", namespaceSelector={})], [ns("n")])
    assert same.quota_of_namespace == {"n": "m"}


def test_invalid_quotas_are_reported_and_left_out() -> None:
    tenants = tenancy([gpu_quota("bad", maxGPUs=-3), gpu_quota("good", namespaceSelector={})], [ns("n")])
    assert set(tenants.quotas) == {"good"} and tenants.invalid["bad"].field == "spec.maxGPUs"
    assert tenants.quota_of_namespace == {"n": "good"}
