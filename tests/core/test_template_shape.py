"""Poison templates: every shape that once stopped `build_pods` (and so every decision) is an
InvalidSpec naming its field, in the parser and the webhook alike, and a valid template still
builds its pods."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuadmit.core.engine import decide
from gpuadmit.core.model import (
    Action,
    Decision,
    InvalidWorkload,
    PlacementEntry,
    Reason,
    Workload,
)
from gpuadmit.core.pods import build_pods
from gpuadmit.core.policy import DEFAULT_POLICY
from gpuadmit.core.snapshot import build_snapshot
from gpuadmit.core.template_shape import MAX_TEMPLATE_DEPTH, check_template_shape
from gpuadmit.core.timefmt import parse_rfc3339
from gpuadmit.core.validation import validate_workload
from gpuadmit.core.workload import parse_workload


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "image": "busybox", **fields}


def workload(template: dict[str, Any], name: str = "poison", spec_class: str = "training") -> dict[str, Any]:
    return {
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}", "creationTimestamp": "2026-11-26T09:00:00Z"},
        "spec": {"gpus": 1, "class": spec_class, "template": template},
    }  # fmt: skip


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"a": value}
    return value


POISON = [
    ({"spec": {"containers": [container(resources="junk")]}}, "spec.template.spec.containers[0].resources"),
    ({"spec": {"containers": [container(resources=[{"limits": {}}])]}}, "spec.template.spec.containers[0].resources"),
    ({"spec": {"containers": [container(resources={"limits": "8"})]}}, "spec.template.spec.containers[0].resources.limits"),
    ({"spec": {"containers": [container(resources={"requests": ["cpu"]})]}}, "spec.template.spec.containers[0].resources.requests"),
    ({"spec": {"containers": [container(resources={"limits": {"cpu": "lots"}})]}},
     'spec.template.spec.containers[0].resources.limits["cpu"]'),
    ({"spec": {"containers": [container(resources={"limits": {"memory": "-1Gi"}})]}},
     'spec.template.spec.containers[0].resources.limits["memory"]'),
    ({"spec": {"containers": [container(resources={"limits": {"cpu": "1"}, "requests": {"cpu": "2"}})]}},
     'spec.template.spec.containers[0].resources.requests["cpu"]'),
    ({"spec": {"containers": [container(resources={"limit": {"cpu": "1"}})]}}, "spec.template.spec.containers[0].resources.limit"),
    ({"spec": {"containers": [container(resources={"limits": {"bad key!": "1"}})]}},
     'spec.template.spec.containers[0].resources.limits["bad key!"]'),
    ({"spec": {"containers": [container()], "initContainers": [container(resources="x")]}},
     "spec.template.spec.initContainers[0].resources"),
    ({"spec": {"containers": [container()], "initContainers": "setup"}}, "spec.template.spec.initContainers"),
    ({"spec": {"containers": [container()], "initContainers": ["setup"]}}, "spec.template.spec.initContainers[0]"),
    ({"metadata": {"labels": ["team=a"]}, "spec": {"containers": [container()]}}, "spec.template.metadata.labels"),
    ({"metadata": {"annotations": ["note"]}, "spec": {"containers": [container()]}}, "spec.template.metadata.annotations"),
    ({"metadata": {"labels": {"team": 7}}, "spec": {"containers": [container()]}}, 'spec.template.metadata.labels["team"]'),
    ({"metadata": {"labels": {"team": "x" * 64}}, "spec": {"containers": [container()]}}, 'spec.template.metadata.labels["team"]'),
    ({"metadata": {"labels": {"team": "a b"}}, "spec": {"containers": [container()]}}, 'spec.template.metadata.labels["team"]'),
    ({"metadata": {"labels": {"-bad": "a"}}, "spec": {"containers": [container()]}}, 'spec.template.metadata.labels["-bad"]'),
    ({"metadata": {"labels": {"Bad.Prefix/x": "a"}}, "spec": {"containers": [container()]}},
     'spec.template.metadata.labels["Bad.Prefix/x"]'),
    ({"metadata": {"annotations": {"note": {"a": 1}}}, "spec": {"containers": [container()]}},
     'spec.template.metadata.annotations["note"]'),
    ({"metadata": {"annotations": {"note": "x" * (256 * 1024)}}, "spec": {"containers": [container()]}},
     "spec.template.metadata.annotations"),
    ({"spec": {"containers": [container()], "restartPolicy": "Sometimes"}}, "spec.template.spec.restartPolicy"),
    ({"spec": {"containers": [container()], "affinity": nested(300)}}, "spec.template"),
    ({"spec": {"containers": [container(env=[nested(MAX_TEMPLATE_DEPTH)])]}}, "spec.template"),
    # Found by the hostile-tenant run: a quantity too big for a float ended as "could not be read:
    # OverflowError"; lists the pod-security checks read were skipped unseen when not lists.
    ({"spec": {"containers": [container(resources={"limits": {"cpu": 10**400}})]}},
     'spec.template.spec.containers[0].resources.limits["cpu"]'),
    ({"spec": {"containers": [container(env={"NVIDIA_VISIBLE_DEVICES": "all"})]}}, "spec.template.spec.containers[0].env"),
    ({"spec": {"containers": [container(env=["NVIDIA_VISIBLE_DEVICES=all"])]}}, "spec.template.spec.containers[0].env[0]"),
    ({"spec": {"containers": [container(envFrom={"configMapRef": {"name": "c"}})]}}, "spec.template.spec.containers[0].envFrom"),
    ({"spec": {"containers": [container(ports="80")]}}, "spec.template.spec.containers[0].ports"),
    ({"spec": {"containers": [container(volumeMounts={"name": "v"})]}}, "spec.template.spec.containers[0].volumeMounts"),
    ({"spec": {"containers": [container()], "volumes": {"hostPath": {"path": "/"}}}}, "spec.template.spec.volumes"),
    ({"spec": {"containers": [container()], "volumes": [[{"hostPath": {"path": "/"}}]]}}, "spec.template.spec.volumes[0]"),
    ({"spec": {"containers": [container(securityContext="privileged")]}}, "spec.template.spec.containers[0].securityContext"),
    ({"spec": {"containers": [container(securityContext={"capabilities": {"add": "SYS_ADMIN"}})]}},
     "spec.template.spec.containers[0].securityContext.capabilities.add"),
    ({"spec": {"containers": [container(securityContext={"capabilities": ["SYS_ADMIN"]})]}},
     "spec.template.spec.containers[0].securityContext.capabilities"),
    ({"spec": {"containers": [container()], "securityContext": {"sysctls": {"name": "kernel.msgmax"}}}},
     "spec.template.spec.securityContext.sysctls"),
    ({"spec": {"containers": [container()], "securityContext": [{"runAsUser": 0}]}}, "spec.template.spec.securityContext"),
    ({"spec": {"containers": [container()], "ephemeralContainers": {"name": "e"}}}, "spec.template.spec.ephemeralContainers"),
    # The webhook alone refused a container without an image: the engine admitted it, held its GPUs
    # and the pod's create failed (422 on a real API server). Now both refuse it.
    ({"spec": {"containers": [{"name": "c"}]}}, "spec.template.spec.containers[0].image"),
    ({"spec": {"containers": [container(image="  ")]}}, "spec.template.spec.containers[0].image"),
    ({"spec": {"containers": [container()], "initContainers": [{"name": "i", "image": 7}]}},
     "spec.template.spec.initContainers[0].image"),
]


@pytest.mark.parametrize("spec_class", ["training", "auto"])
@pytest.mark.parametrize(("template", "field"), POISON, ids=[field for _, field in POISON])
def test_a_poison_template_is_invalid_naming_its_field_in_parser_and_webhook(
        template: dict[str, Any], field: str, spec_class: str) -> None:
    obj = workload(copy.deepcopy(template), spec_class=spec_class)
    parsed = parse_workload(obj, DEFAULT_POLICY, {})
    assert isinstance(parsed, InvalidWorkload)
    assert (parsed.field, parsed.message.split(": ", 1)[0]) == (field, field)
    verdict = validate_workload(obj)
    assert (verdict.allowed, verdict.reason, verdict.field) == (False, "InvalidSpec", field)


def test_nesting_far_past_the_recursion_limit_is_refused_too() -> None:
    obj = workload({"spec": {"containers": [container()], "affinity": nested(5000)}}, spec_class="auto")
    parsed = parse_workload(obj, DEFAULT_POLICY, {})
    assert isinstance(parsed, InvalidWorkload) and parsed.field == "spec.template"
    assert not validate_workload(obj).allowed


def test_a_realistic_template_passes_and_builds_its_pods() -> None:
    template = {
        "metadata": {"labels": {"app.kubernetes.io/name": "trainer", "team": "", "v": "1.2_3"},
                     "annotations": {"example.com/owner": "Ana <ana@example.com>", "note": ""}},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [container(name="fetch", resources={"requests": {"cpu": "500m", "memory": "1Gi"}})],
            "containers": [container(resources={"limits": {"nvidia.com/gpu": 1, "cpu": "4", "memory": "64Gi",
                                                           "ephemeral-storage": "10G"},
                                                "requests": {"cpu": 2, "memory": "32Gi"}, "claims": []})],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}},
        },
    }
    obj = workload(template)
    assert isinstance(parse_workload(obj, DEFAULT_POLICY, {}), Workload)
    assert validate_workload(obj).allowed
    decision = Decision(namespace="team-a", name="poison", action=Action.ADMIT, reason=Reason.ADMITTED, message="",
                        workload_class="training", placement=(PlacementEntry("n1", 1, 1),))
    [pod] = build_pods(obj, decision)
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "trainer"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("name", ["x" * 64, "a" * 63 + ".", "w."])
def test_a_name_that_cannot_label_its_pods_is_invalid(name: str) -> None:
    obj = workload({"spec": {"containers": [container()]}}, name=name)
    parsed = parse_workload(obj, DEFAULT_POLICY, {})
    assert isinstance(parsed, InvalidWorkload) and parsed.field == "metadata.name"
    assert "gpuadmit.io/workload" in parsed.message
    assert validate_workload(obj).field == "metadata.name"


def test_a_63_character_name_is_fine_and_generate_name_is_judged_at_its_real_length() -> None:
    assert isinstance(parse_workload(workload({"spec": {"containers": [container()]}}, name="x" * 63), DEFAULT_POLICY, {}), Workload)
    obj = workload({"spec": {"containers": [container()]}})
    obj["metadata"] = {"generateName": "a" * 70 + "-", "namespace": "team-a"}
    assert validate_workload(obj).allowed  # the API server cuts the prefix to 58 characters


def test_the_engine_rejects_the_poison_workload_and_still_admits_the_others() -> None:
    nodes = [{"metadata": {"name": "n1"}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}}]
    good = workload({"spec": {"containers": [container()]}}, name="good")
    poison = workload({"spec": {"containers": [container(resources="junk")]}})
    result = decide(build_snapshot(nodes, [], [], [poison, good], [], parse_rfc3339("2026-11-26T09:00:10Z")))
    actions = {d.name: (d.action, d.reason) for d in result.decisions}
    assert actions == {"good": (Action.ADMIT, Reason.ADMITTED), "poison": (Action.REJECT, Reason.INVALID_SPEC)}


def test_every_real_world_template_of_the_classifier_corpus_passes() -> None:
    """The corpus the classifier is tested on (pod templates from public projects): the shape
    checks refuse what no pod could be, never a template people actually run."""
    templates = [doc["template"] for path in sorted((Path(__file__).parents[1] / "data" / "manifests").glob("*.yaml"))
                 for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict) and isinstance(doc.get("template"), dict)]
    assert len(templates) >= 100
    for template in templates:
        check_template_shape(template)


# -- a property: whatever the parser accepts, build_pods builds -----------------------------------


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.text(max_size=8),
                     st.sampled_from(["1", "500m", "4Gi", "-1", "1e3", "x", "", "nvidia.com/gpu", "team", "a/b"]))
_junk = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=12)
_names = st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "example.com/x", "Bad Name", ""])
_amounts = st.dictionaries(_names, st.one_of(_scalars, st.sampled_from(["2", "64Gi", "100m"])), max_size=3)
_resources = st.one_of(_junk, st.fixed_dictionaries({}, optional={"limits": st.one_of(_amounts, _junk),
                                                                 "requests": st.one_of(_amounts, _junk)}))
_containers = st.lists(st.one_of(st.fixed_dictionaries({"name": st.just("c"), "image": st.just("busybox")},
                                                      optional={"resources": _resources}), _junk), min_size=1, max_size=3)
_label_maps = st.one_of(_junk, st.dictionaries(st.sampled_from(["app", "team", "example.com/x", "-bad", "a b"]),
                                               st.one_of(_scalars, st.sampled_from(["web", "x" * 64])), max_size=3))
_templates = st.fixed_dictionaries(
    {"spec": st.fixed_dictionaries({"containers": _containers},
                                   optional={"initContainers": st.one_of(_containers, _junk), "restartPolicy": _scalars,
                                             "affinity": _junk, "volumes": _junk})},
    optional={"metadata": st.fixed_dictionaries({}, optional={"labels": _label_maps, "annotations": _label_maps})})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(template=_templates)
def test_whatever_the_parser_accepts_build_pods_builds(template: dict[str, Any]) -> None:
    obj = workload(template)
    parsed = parse_workload(obj, DEFAULT_POLICY, {})
    if isinstance(parsed, InvalidWorkload):
        assert parsed.field.startswith("spec.template") and parsed.message.startswith(parsed.field)
        return
    decision = Decision(namespace="team-a", name="poison", action=Action.ADMIT, reason=Reason.ADMITTED, message="",
                        workload_class="training", placement=(PlacementEntry("n1", 2, 2),))
    pods = build_pods(obj, decision)
    assert len(pods) == 2
    for pod in pods:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in pod["metadata"]["labels"].items())
        assert all(isinstance(c.get("resources", {}), dict) for c in pod["spec"]["containers"])
