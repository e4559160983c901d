"""What the admission webhook refuses, warns about and defaults: pure, no server."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuadmit.core.classifier import classify
from gpuadmit.core.model import CLASS_LABEL, InvalidWorkload
from gpuadmit.core.policy import DEFAULT_POLICY
from gpuadmit.core.validation import (
    IMMUTABLE_WHILE_ADMITTED,
    INVALID_SPEC,
    RESERVED_KEY,
    STATUS_NOT_ALLOWED,
    apply_json_patch,
    is_reserved_key,
    known_products_of_nodes,
    mutate_workload,
    validate_workload,
)
from gpuadmit.core.workload import parse_workload


def serving_template() -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "chat"}},
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "image": "vllm/vllm-openai:v0.6.0",
                    "args": ["--model", "meta-llama/Llama-3-8B"],
                    "ports": [{"containerPort": 8000}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                }
            ]
        },
    }


def training_template() -> dict[str, Any]:
    return {
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [
                {"name": "trainer", "image": "pytorch/pytorch:2.3", "command": ["torchrun", "--nproc-per-node=4", "train.py"]}
            ],
        }
    }


def workload(template: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUWorkload",
        "metadata": {"name": "llm", "namespace": "team-a"},
        "spec": {"gpus": 1, "template": template if template is not None else serving_template(), **spec},
    }


def admitted(obj: dict[str, Any]) -> dict[str, Any]:
    stored = copy.deepcopy(obj)
    stored["status"] = {"phase": "Admitted", "placement": [{"node": "n1", "gpus": obj["spec"]["gpus"]}]}
    return stored


# --- what passes -----------------------------------------------------------------------------


def test_a_plain_serving_workload_is_allowed_without_warnings() -> None:
    result = validate_workload(workload())
    assert result.allowed, result.message
    assert result.warnings == ()


def test_a_template_that_repeats_spec_gpus_is_allowed() -> None:
    template = training_template()
    template["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "4"}, "requests": {"nvidia.com/gpu": 4}}
    assert validate_workload(workload(template, gpus=4)).allowed


def test_generate_name_without_a_name_is_judged_like_a_named_object() -> None:
    obj = workload()
    obj["metadata"] = {"generateName": "llm-", "namespace": "team-a"}
    assert validate_workload(obj).allowed


# --- what the schema cannot express: refused with the field named ---------------------------


def test_a_template_without_containers_is_refused_naming_the_field() -> None:
    template = serving_template()
    template["spec"]["containers"] = []
    result = validate_workload(workload(template))
    assert not result.allowed
    assert result.field == "spec.template.spec.containers"
    assert result.reason == INVALID_SPEC
    assert "spec.template.spec.containers" in result.message


def test_a_container_without_an_image_is_refused() -> None:
    template = serving_template()
    del template["spec"]["containers"][0]["image"]
    result = validate_workload(workload(template))
    assert (result.allowed, result.field) == (False, "spec.template.spec.containers[0].image")


def test_a_template_asking_for_another_gpu_count_is_refused() -> None:
    template = training_template()
    template["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 2}}
    result = validate_workload(workload(template, gpus=4))
    assert not result.allowed
    assert result.field == 'spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"]'
    assert "2 GPU(s)" in result.message and "spec.gpus is 4" in result.message


def test_gpu_requests_across_containers_add_up() -> None:
    template = training_template()
    sidecar = {"name": "sidecar", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    template["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    template["spec"]["containers"].append(sidecar)
    assert validate_workload(workload(template, gpus=2)).allowed
    assert not validate_workload(workload(template, gpus=1)).allowed


def test_fractional_or_unequal_gpu_requests_are_refused() -> None:
    template = training_template()
    template["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "500m"}}
    assert validate_workload(workload(template)).field.endswith('limits["nvidia.com/gpu"]')
    template["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 0}}
    result = validate_workload(workload(template))
    assert not result.allowed and "limits and requests must be equal" in result.message


def test_what_the_engine_would_call_invalid_is_refused_at_the_door() -> None:
    obj = workload()
    obj["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Sometimes"}]
    result = validate_workload(obj)
    assert not result.allowed
    assert result.field == "spec.template.spec.tolerations[0].operator"


def test_status_on_create_is_refused() -> None:
    obj = workload()
    obj["status"] = {"phase": "Admitted"}
    result = validate_workload(obj)
    assert (result.allowed, result.field, result.reason) == (False, "status", STATUS_NOT_ALLOWED)
    obj["status"] = {}
    assert validate_workload(obj).allowed


# --- gpuadmit.io/ keys -------------------------------------------------------------------------


def test_a_forged_class_label_is_refused() -> None:
    obj = workload(training_template())
    obj["metadata"]["labels"] = {CLASS_LABEL: "inference"}
    result = validate_workload(obj)
    assert not result.allowed
    assert result.field == f'metadata.labels["{CLASS_LABEL}"]'
    assert result.reason == RESERVED_KEY
    assert "'training'" in result.message


def test_the_class_label_with_the_classifier_value_is_allowed() -> None:
    obj = workload(training_template())
    obj["metadata"]["labels"] = {CLASS_LABEL: classify("auto", obj["spec"]["template"])[0]}
    assert validate_workload(obj).allowed


def test_an_explicit_spec_class_makes_its_label_legitimate() -> None:
    obj = workload(serving_template(), **{"class": "training"})
    obj["metadata"]["labels"] = {CLASS_LABEL: "training"}
    assert validate_workload(obj).allowed


def test_other_reserved_labels_and_annotations_are_refused_everywhere() -> None:
    places = [
        ("metadata", "labels", "gpuadmit.io/tier"),
        ("metadata", "annotations", "gpuadmit.io/price"),
        ("template", "labels", CLASS_LABEL),
        ("template", "annotations", "billing.gpuadmit.io/free"),
    ]
    for place, section, key in places:
        obj = workload()
        target = obj["metadata"] if place == "metadata" else obj["spec"]["template"].setdefault("metadata", {})
        target.setdefault(section, {})[key] = "x"
        result = validate_workload(obj)
        prefix = "metadata" if place == "metadata" else "spec.template.metadata"
        assert not result.allowed, (place, section, key)
        assert result.field == f'{prefix}.{section}["{key}"]'
        assert result.reason == RESERVED_KEY


def test_reserved_key_detection() -> None:
    assert is_reserved_key("gpuadmit.io/class")
    assert is_reserved_key("x.gpuadmit.io/y")
    assert not is_reserved_key("notgpuadmit.io/y")
    assert not is_reserved_key("gpuadmit.io")
    assert not is_reserved_key(None)


def test_an_update_keeps_reserved_keys_that_were_already_stored() -> None:
    old = workload()
    old["metadata"]["annotations"] = {"gpuadmit.io/legacy": "1"}
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"team": "a"}
    assert validate_workload(new, old).allowed
    new["metadata"]["annotations"]["gpuadmit.io/legacy"] = "2"
    assert not validate_workload(new, old).allowed


# --- updates -------------------------------------------------------------------------------


def test_shape_of_an_admitted_workload_is_immutable() -> None:
    base = workload(training_template(), gpus=2, replicas=2, gpuProducts=["A100"])
    for key, value in (("gpus", 4), ("replicas", 3), ("gpuProducts", ["H100"])):
        new = copy.deepcopy(base)
        new["spec"][key] = value
        result = validate_workload(new, admitted(base))
        assert not result.allowed, key
        assert (result.field, result.reason) == (f"spec.{key}", IMMUTABLE_WHILE_ADMITTED)
        assert "Admitted" in result.message
        # the same change is fine while the workload only waits
        queued = copy.deepcopy(base)
        queued["status"] = {"phase": "Queued"}
        assert validate_workload(new, queued).allowed, key


def test_writing_a_default_explicitly_is_no_change() -> None:
    base = workload(training_template(), gpus=2)
    new = copy.deepcopy(base)
    new["spec"]["replicas"] = 1
    new["spec"]["gpuProducts"] = []
    assert validate_workload(new, admitted(base)).allowed


def test_a_deleting_object_can_always_lose_its_finalizers() -> None:
    old = workload()
    old["spec"]["template"]["spec"]["containers"] = []  # stored before the webhook existed
    old["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    new = copy.deepcopy(old)
    new["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    new["metadata"]["finalizers"] = []
    assert validate_workload(new, old).allowed


def test_a_deleting_object_gets_every_check_on_what_it_changes() -> None:
    base = workload(training_template(), gpus=1)
    base["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    stored = admitted(base)
    stored["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    grown = copy.deepcopy(stored)
    grown["spec"]["gpus"] = 8
    result = validate_workload(grown, stored)
    assert not result.allowed and result.field == "spec.gpus", result
    forged = copy.deepcopy(stored)
    forged["metadata"]["labels"] = {CLASS_LABEL: "inference"}
    result = validate_workload(forged, stored)
    assert not result.allowed and result.reason == "ReservedKey", result
    released = copy.deepcopy(stored)
    released["metadata"]["finalizers"] = []
    assert validate_workload(released, stored).allowed


def test_a_refusal_names_its_field_once_and_abbreviates_huge_numbers() -> None:
    result = validate_workload(workload(training_template(), gpus=1e308))
    assert not result.allowed and result.field == "spec.gpus"
    assert result.message == "spec.gpus: must be between 1 and 64, got 1e+308"


def test_a_label_only_update_of_an_old_object_is_not_judged_on_its_spec() -> None:
    old = workload()
    old["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {CLASS_LABEL: "inference"}  # what the operator writes
    assert validate_workload(new, old).allowed
    assert not validate_workload(new).allowed  # the same object is refused on create


# --- warnings ---------------------------------------------------------------------------------


def test_unknown_products_warn_but_pass() -> None:
    obj = workload(gpuProducts=["NVIDIA-A100-SXM4-80GB", "Tesla-K80"])
    result = validate_workload(obj, known_products={"NVIDIA-A100-SXM4-80GB", "Tesla-T4"})
    assert result.allowed
    assert len(result.warnings) == 1
    assert "spec.gpuProducts[1]" in result.warnings[0] and "Tesla-K80" in result.warnings[0]
    assert validate_workload(obj, known_products=None).warnings == ()


def test_known_products_come_from_node_labels() -> None:
    nodes = [
        {"metadata": {"labels": {"nvidia.com/gpu.product": "Tesla-T4"}}},
        {"metadata": {"labels": {}}},
        {"metadata": None},
        "junk",
    ]
    assert known_products_of_nodes(nodes) == {"Tesla-T4"}


# --- mutation --------------------------------------------------------------------------------


def test_mutation_sets_defaults_and_the_class_label() -> None:
    obj = workload(training_template())
    patched = apply_json_patch(obj, mutate_workload(obj))
    assert patched["spec"]["class"] == "auto"
    assert patched["spec"]["replicas"] == 1
    assert patched["spec"]["gpuProducts"] == []
    assert patched["spec"]["minGpuMemoryMiB"] == 0
    assert patched["metadata"]["labels"] == {CLASS_LABEL: "training"}
    assert validate_workload(patched).allowed


def test_mutation_keeps_what_the_tenant_set_and_overrides_a_wrong_class_label() -> None:
    obj = workload(serving_template(), replicas=3, gpuProducts=["Tesla-T4"])
    obj["metadata"]["labels"] = {"team": "a", CLASS_LABEL: "training"}
    ops = mutate_workload(obj)
    patched = apply_json_patch(obj, ops)
    assert patched["spec"]["replicas"] == 3 and patched["spec"]["gpuProducts"] == ["Tesla-T4"]
    assert patched["metadata"]["labels"] == {"team": "a", CLASS_LABEL: "inference"}
    assert {"op": "add", "path": "/metadata/labels/gpuadmit.io~1class", "value": "inference"} in ops


def test_mutation_of_a_complete_object_is_empty() -> None:
    obj = apply_json_patch(workload(), mutate_workload(workload()))
    assert mutate_workload(obj) == []


def test_mutation_ignores_malformed_objects() -> None:
    assert mutate_workload(None) == []
    assert mutate_workload({"spec": "nonsense"}) == []


# --- never crash, and agree with the engine's parser ------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=12,
)
spec_keys = st.sampled_from(["gpus", "replicas", "class", "gpuProducts", "template", "minGpuMemoryMiB", "status"])


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(spec_keys, json_values, max_size=5),
    st.one_of(st.none(), st.just(serving_template()), st.just(training_template()), json_values),
)
def test_validation_never_raises_and_what_it_allows_the_engine_parses(spec: dict, template: Any) -> None:
    obj: Any = {"metadata": {"name": "w", "namespace": "n"}, "spec": {**spec, "template": template}}
    result = validate_workload(obj)
    assert isinstance(result.allowed, bool)
    if result.allowed:
        assert not isinstance(parse_workload(obj, DEFAULT_POLICY, {}), InvalidWorkload)
    else:
        assert result.field and result.field in result.message and result.reason
    patched = apply_json_patch(obj, mutate_workload(obj))
    if result.allowed:
        assert validate_workload(patched).allowed


@settings(max_examples=60, deadline=None)
@given(json_values, json_values)
def test_validation_of_arbitrary_input_never_raises(obj: Any, old: Any) -> None:
    result = validate_workload(obj, old, known_products=["A"])
    assert result.allowed in (True, False)
    mutate_workload(obj)


def test_an_unchanged_malformed_template_does_not_block_a_label_update() -> None:
    old = workload()
    old["spec"]["template"] = ["stored", "before", "the", "webhook"]
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"team": "a"}
    assert validate_workload(new, old).allowed
