"""The pure decisions of the Job and pod webhooks: which objects are held, and the JSONPatch that holds them."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from gpuadmit.core.holds import (
    SUSPENDED_BY_ANNOTATION,
    SUSPENDED_BY_WEBHOOK,
    asks_for_gpus,
    job_hold,
    pod_hold,
)
from gpuadmit.core.native import ADMISSION_GATE
from gpuadmit.core.validation import apply_json_patch


def container(gpus: Any = None, *, section: str = "limits", name: str = "main") -> dict[str, Any]:
    resources = {section: {"nvidia.com/gpu": gpus, "cpu": "1"}} if gpus is not None else {"requests": {"cpu": "1"}}
    return {"name": name, "image": "pytorch/pytorch:2.4.0", "resources": resources}


def pod(gpus: Any = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer", "namespace": "team-a"},
        "spec": {"containers": [container(gpus)], **spec},
    }


def job(gpus: Any = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "finetune", "namespace": "team-a"},
        "spec": {
            "parallelism": 2,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container(gpus)]}},
            **spec,
        },
    }


# -- which objects ask for GPUs -------------------------------------------------------------------


@pytest.mark.parametrize("section", ["limits", "requests"])
def test_a_gpu_limit_or_request_asks_for_gpus(section: str) -> None:
    assert asks_for_gpus({"spec": {"containers": [container(1, section=section)]}})


def test_no_gpus_or_zero_gpus_do_not_ask() -> None:
    assert not asks_for_gpus({"spec": {"containers": [container()]}})
    assert not asks_for_gpus({"spec": {"containers": [container(0)]}})
    assert not asks_for_gpus({"spec": {"containers": [container("0")]}})


def test_an_init_container_or_sidecar_with_gpus_asks() -> None:
    assert asks_for_gpus({"spec": {"containers": [container()], "initContainers": [container(1, name="warmup")]}})
    sidecar = {**container(1, name="proxy"), "restartPolicy": "Always"}
    assert asks_for_gpus({"spec": {"containers": [container()], "initContainers": [sidecar]}})


@pytest.mark.parametrize("quantity", ["0.5", "1e999", "lots", True, [1]])
def test_a_gpu_quantity_that_cannot_be_read_counts_as_asking(quantity: Any) -> None:
    """Holding costs nothing (the API server refuses such a quantity anyway); letting it run could."""
    assert asks_for_gpus({"spec": {"containers": [container(quantity)]}})


def test_the_count_is_the_one_the_snapshot_uses() -> None:
    from gpuadmit.core.nodes import pod_gpu_request

    template = {"spec": {"containers": [container(2), container(1, name="b")], "initContainers": [container(4, name="i")]}}
    assert pod_gpu_request(template) == 4 and asks_for_gpus(template)


# -- Jobs ------------------------------------------------------------------------------------------


def test_a_gpu_job_is_suspended_and_annotated() -> None:
    obj = job()
    hold = job_hold(obj)
    assert hold.allowed
    patched = apply_json_patch(obj, hold.patch)
    assert patched["spec"]["suspend"] is True
    assert patched["metadata"]["annotations"] == {SUSPENDED_BY_ANNOTATION: SUSPENDED_BY_WEBHOOK}
    assert patched["spec"]["template"] == obj["spec"]["template"]


def test_an_explicit_suspend_false_is_overridden_and_other_annotations_kept() -> None:
    obj = job(suspend=False)
    obj["metadata"]["annotations"] = {"team": "nlp", "a/b~c": "x"}
    patched = apply_json_patch(obj, job_hold(obj).patch)
    assert patched["spec"]["suspend"] is True
    assert patched["metadata"]["annotations"] == {"team": "nlp", "a/b~c": "x", SUSPENDED_BY_ANNOTATION: SUSPENDED_BY_WEBHOOK}


def test_a_job_its_creator_suspended_gets_no_patch() -> None:
    assert job_hold(job(suspend=True)).patch == []


def test_a_job_without_gpus_gets_no_patch() -> None:
    assert job_hold(job(gpus=None)).patch == []
    assert job_hold(job(gpus=0)).patch == []


@pytest.mark.parametrize("obj", [
    None, [], "job", {}, {"spec": None}, {"spec": []}, {"spec": {"template": None}},
    {"spec": {"template": {"spec": {"containers": "x"}}}},
    {"spec": {"template": {"spec": {"containers": [None, 3, {"resources": []}]}}}},
])
def test_a_job_the_api_server_would_refuse_gets_no_patch_and_no_refusal(obj: Any) -> None:
    hold = job_hold(obj)
    assert hold.allowed and hold.patch == []


def test_a_gpu_job_whose_metadata_cannot_take_the_annotation_is_still_suspended() -> None:
    obj = job()
    obj["metadata"]["annotations"] = ["not", "a", "map"]
    assert job_hold(obj).patch == [{"op": "add", "path": "/spec/suspend", "value": True}]


# -- pods ------------------------------------------------------------------------------------------


def test_a_gpu_pod_is_gated() -> None:
    obj = pod()
    hold = pod_hold(obj)
    assert hold.allowed
    assert apply_json_patch(obj, hold.patch)["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}]


def test_other_gates_are_kept_and_ours_appended() -> None:
    obj = pod(schedulingGates=[{"name": "example.com/quota"}])
    patched = apply_json_patch(obj, pod_hold(obj).patch)
    assert patched["spec"]["schedulingGates"] == [{"name": "example.com/quota"}, {"name": ADMISSION_GATE}]


def test_a_pod_already_gated_by_gpuadmit_gets_no_patch() -> None:
    assert pod_hold(pod(schedulingGates=[{"name": ADMISSION_GATE}])).patch == []


def test_a_pod_without_gpus_is_untouched() -> None:
    assert pod_hold(pod(gpus=None)).patch == []


def test_gpuadmits_own_pods_are_exempt() -> None:
    obj = pod()
    obj["metadata"]["ownerReferences"] = [{
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": "chat", "uid": "u1", "controller": True,
    }]
    assert pod_hold(obj).patch == []


@pytest.mark.parametrize("ref", [
    {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": "chat", "uid": "u1"},  # not the controller
    {"apiVersion": "example.com/v1", "kind": "GPUWorkload", "name": "chat", "uid": "u1", "controller": True},
    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8", "uid": "u1", "controller": True},
    {"apiVersion": "batch/v1", "kind": "Job", "name": "finetune", "uid": "u1", "controller": True},
])
def test_pods_of_other_owners_are_gated(ref: dict[str, Any]) -> None:
    obj = pod()
    obj["metadata"]["ownerReferences"] = [ref]
    assert pod_hold(obj).patch == [{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": ADMISSION_GATE}]}]


def test_a_gpu_pod_naming_its_node_is_refused_with_the_field() -> None:
    hold = pod_hold(pod(nodeName="gpu-node-1"))
    assert not hold.allowed
    assert (hold.reason, hold.field) == ("NodeNameNotAllowed", "spec.nodeName")
    assert "gpuadmit chooses the node" in hold.message


def test_a_mirror_pod_is_left_alone() -> None:
    obj = pod(nodeName="gpu-node-1")
    obj["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "abc"}
    hold = pod_hold(obj)
    assert hold.allowed and hold.patch == []


@pytest.mark.parametrize("obj", [
    None, 7, {}, {"spec": None}, {"spec": {"containers": {"a": 1}}},
    {"spec": {"containers": [container(1)], "schedulingGates": "gate"}},
    {"metadata": "x", "spec": {"containers": [container()]}},
])
def test_a_pod_the_api_server_would_refuse_gets_no_patch_and_no_refusal(obj: Any) -> None:
    hold = pod_hold(obj)
    assert hold.allowed and hold.patch == []


def _mangle(value: Any, rng: random.Random) -> Any:
    """``value`` with one randomly chosen node replaced by a value of another JSON type."""
    junk = [None, 0, -1, 1.5, "", "x", True, [], {}, [None], {"": None}]
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        return {**value, key: _mangle(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        return [*value[:index], _mangle(value[index], rng), *value[index + 1:]]
    return rng.choice(junk)


def test_any_shape_gets_an_answer_never_an_exception_and_a_readable_gpu_request_is_always_held() -> None:
    rng = random.Random(12)
    bases = [pod(), pod(schedulingGates=[{"name": "other"}]), job(), job(suspend=False)]
    for _ in range(3000):
        base = copy.deepcopy(rng.choice(bases))
        obj = _mangle(base, rng)
        hold = pod_hold(obj) if base["kind"] == "Pod" else job_hold(obj)
        json.dumps(hold.patch)  # plain JSON
        if hold.patch:
            apply_json_patch(obj, hold.patch)  # the patch applies to the object it was made for
        if base["kind"] == "Pod" and hold.allowed and not hold.patch and isinstance(obj, dict):
            spec = obj.get("spec")
            gates = spec.get("schedulingGates") if isinstance(spec, dict) else None
            gated = isinstance(gates, list) and {"name": ADMISSION_GATE} in gates
            # Not held: it asks for no GPUs, or it cannot be stored (gates not a list), or it is gated already.
            assert not asks_for_gpus(obj) or not isinstance(gates, (list, type(None))) or gated, obj
