"""GPUWorkload objects -> Workload or InvalidWorkload: schema rules, semantics, defaults, status."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuadmit.core.model import InvalidWorkload, PlacementEntry, Policy, Toleration, Workload
from gpuadmit.core.policy import DEFAULT_POLICY
from gpuadmit.core.timefmt import format_rfc3339, parse_rfc3339, parse_rfc3339_or_none
from gpuadmit.core.workload import parse_workload

SERVING_TEMPLATE = {
    "spec": {
        "containers": [{
            "name": "vllm", "image": "vllm/vllm-openai:v0.6.3", "args": ["--model", "meta-llama/Llama-3.1-8B"],
            "ports": [{"containerPort": 8000}], "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
        }]
    }
}  # fmt: skip
TRAINING_TEMPLATE = {
    "spec": {
        "restartPolicy": "OnFailure",
        "containers": [{"name": "trainer", "image": "nvcr.io/nvidia/pytorch:24.08-py3",
                        "command": ["torchrun", "--nproc-per-node=8", "train.py", "--epochs", "3"]}],
    }
}  # fmt: skip
CREATED = "2026-11-26T09:00:00Z"


def a_workload(status: dict[str, Any] | None = None, name: str = "chat", **spec: Any) -> dict[str, Any]:
    full_spec = {"gpus": 4, "template": copy.deepcopy(TRAINING_TEMPLATE)}
    full_spec.update(spec)
    obj: dict[str, Any] = {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUWorkload",
        "metadata": {"name": name, "namespace": "team-a", "uid": "uid-1", "creationTimestamp": CREATED},
        "spec": full_spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def parse(obj: Any, policy: Policy = DEFAULT_POLICY, tiers: dict[str, str] | None = None, now: float | None = None) -> Any:
    return parse_workload(obj, policy, tiers or {}, now=now)


def test_a_minimal_training_workload_gets_every_default() -> None:
    workload = parse(a_workload())
    assert isinstance(workload, Workload)
    assert (workload.namespace, workload.name, workload.uid) == ("team-a", "chat", "uid-1")
    assert (workload.gpus_per_replica, workload.replicas, workload.total_gpus) == (4, 1, 4)
    assert workload.workload_class == "training" and "torchrun" in workload.class_reason
    assert workload.preemptible is True
    assert workload.max_queue_seconds == DEFAULT_POLICY.default_max_queue_seconds
    assert (workload.gpu_products, workload.min_gpu_memory_mib, workload.tolerations) == ((), 0, ())
    assert workload.tier is None
    assert workload.created_at == workload.queued_since == parse_rfc3339(CREATED)
    assert (workload.phase, workload.placement, workload.admitted_at, workload.preemptions) == (None, (), None, 0)


def test_a_serving_workload_is_inference_and_not_preemptible_by_default() -> None:
    workload = parse(a_workload(template=copy.deepcopy(SERVING_TEMPLATE)))
    assert isinstance(workload, Workload)
    assert (workload.workload_class, workload.preemptible) == ("inference", False)


def test_explicit_class_wins_and_explicit_fields_override_defaults() -> None:
    workload = parse(
        a_workload(**{"class": "training", "preemptible": False, "maxQueueSeconds": 60, "replicas": 3,
                      "gpuProducts": ["NVIDIA-L4"], "minGpuMemoryMiB": 20000}),
        tiers={"team-a": "gold"},
    )  # fmt: skip
    assert isinstance(workload, Workload)
    assert (workload.workload_class, workload.class_reason) == ("training", "spec.class is training")
    assert (workload.preemptible, workload.max_queue_seconds, workload.replicas) == (False, 60.0, 3)
    assert (workload.gpu_products, workload.min_gpu_memory_mib, workload.tier) == (("NVIDIA-L4",), 20000, "gold")


def test_max_queue_seconds_default_comes_from_the_policy() -> None:
    workload = parse(a_workload(maxQueueSeconds=None), policy=Policy(default_max_queue_seconds=120.0))
    assert isinstance(workload, Workload) and workload.max_queue_seconds == 120.0


def test_tolerations_are_read_from_the_template() -> None:
    template = copy.deepcopy(TRAINING_TEMPLATE)
    template["spec"]["tolerations"] = [
        {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
        {"operator": "Exists"},
        {"key": "spot", "value": "true", "tolerationSeconds": 30, "effect": ""},
    ]
    workload = parse(a_workload(template=template))
    assert isinstance(workload, Workload)
    assert workload.tolerations == (
        Toleration("dedicated", "Equal", "batch", "NoSchedule"),
        Toleration("nvidia.com/gpu", "Exists", None, None),
        Toleration(None, "Exists", None, None),
        Toleration("spot", "Equal", "true", None),
    )


def test_status_of_a_running_workload_is_read() -> None:
    workload = parse(a_workload(
        replicas=3,
        status={"phase": "Running", "admittedAt": "2026-11-26T09:05:00Z", "preemptions": 2,
                "placement": [{"node": "a", "gpus": 8}, {"node": "b", "gpus": 4, "replicas": 1}]},
    ))  # fmt: skip
    assert isinstance(workload, Workload)
    assert workload.phase == "Running"
    assert workload.placement == (PlacementEntry("a", 8, 2), PlacementEntry("b", 4, 1))
    assert workload.admitted_at == parse_rfc3339("2026-11-26T09:05:00Z")
    assert workload.preemptions == 2
    assert workload.placement_problem is None


def test_a_holding_workload_whose_placement_does_not_add_up_carries_the_problem() -> None:
    empty = parse(a_workload(status={"phase": "Admitted", "placement": []}))
    assert (empty.placement, empty.placement_problem) == ((), "status.placement is empty")
    partial = parse(a_workload(replicas=2, status={"phase": "Running", "placement": [{"node": "a", "gpus": 4}]}))
    assert partial.placement == (PlacementEntry("a", 4, 1),)  # what it names stays reserved meanwhile
    assert partial.placement_problem == "status.placement places 1 of the 2 replicas"
    # Only a holding phase has a placement to check.
    assert parse(a_workload(status={"phase": "Queued", "placement": []})).placement_problem is None


def test_junk_in_status_counts_as_absent() -> None:
    workload = parse(a_workload(status={"phase": "Sleeping", "admittedAt": 12, "preemptions": "many",
                                        "placement": [{"node": "a", "gpus": "4"}, "x", {"node": "", "gpus": 4}, {"node": "b", "gpus": 4}]}))  # fmt: skip
    assert isinstance(workload, Workload)
    assert (workload.phase, workload.admitted_at, workload.preemptions) == (None, None, 0)
    assert workload.placement == (PlacementEntry("b", 4, 1),)
    assert isinstance(parse(a_workload(status=["not", "a", "mapping"])), Workload)


def test_queued_since_prefers_status_then_the_preempted_condition_then_creation() -> None:
    preempted = {"type": "Preempted", "status": "True", "lastTransitionTime": "2026-11-26T09:30:00Z"}
    with_condition = parse(a_workload(status={"phase": "Preempted", "conditions": [preempted]}))
    assert with_condition.queued_since == parse_rfc3339("2026-11-26T09:30:00Z")
    explicit = parse(a_workload(status={"phase": "Preempted", "queuedSince": "2026-11-26T09:40:00Z", "conditions": [preempted]}))
    assert explicit.queued_since == parse_rfc3339("2026-11-26T09:40:00Z")
    stale_condition = {**preempted, "status": "False"}
    assert parse(a_workload(status={"conditions": [stale_condition]})).queued_since == parse_rfc3339(CREATED)
    # Never before creation, whatever a status says.
    assert parse(a_workload(status={"queuedSince": "2020-01-01T00:00:00Z"})).queued_since == parse_rfc3339(CREATED)


def test_missing_creation_time_falls_back_to_now_and_namespace_to_default() -> None:
    obj = a_workload()
    del obj["metadata"]["creationTimestamp"]
    del obj["metadata"]["namespace"]
    workload = parse(obj, now=1234.0)
    assert isinstance(workload, Workload)
    assert (workload.created_at, workload.queued_since, workload.namespace) == (1234.0, 1234.0, "default")


def test_the_class_written_for_this_generation_is_read_back_instead_of_reclassifying() -> None:
    obj = a_workload(template=copy.deepcopy(TRAINING_TEMPLATE))
    obj["metadata"]["generation"] = 3
    obj["status"] = {"phase": "Queued", "class": "inference", "classReason": "as decided before", "observedGeneration": 3}
    workload = parse(obj)
    assert (workload.workload_class, workload.class_reason) == ("inference", "as decided before")
    assert workload.preemptible is False  # the default follows the class
    obj["status"]["observedGeneration"] = 2  # the spec changed since: classify again
    assert parse(obj).workload_class == "training"
    obj["status"].update(observedGeneration=3, **{"class": "gaming"})  # junk: classify again
    assert parse(obj).workload_class == "training"
    obj["status"]["class"] = "inference"
    obj["spec"]["class"] = "training"  # an explicit class always wins
    assert parse(obj).workload_class == "training"
    obj["spec"]["class"] = "auto"
    obj["spec"]["template"] = {"spec": {"containers": []}}  # the template is still checked
    assert isinstance(parse(obj), InvalidWorkload)


def test_nulls_take_the_schema_defaults_as_the_api_server_would() -> None:
    workload = parse(a_workload(**{"class": None, "replicas": None, "minGpuMemoryMiB": None, "gpuProducts": None}))
    assert isinstance(workload, Workload)
    assert (workload.workload_class, workload.replicas, workload.min_gpu_memory_mib, workload.gpu_products) == ("training", 1, 0, ())


def test_whole_floats_are_accepted_as_integers() -> None:
    workload = parse(a_workload(gpus=4.0, replicas=2.0))
    assert isinstance(workload, Workload) and (workload.gpus_per_replica, workload.replicas) == (4, 2)


def test_the_template_cache_sees_edits() -> None:
    obj = a_workload()
    assert parse(obj).workload_class == "training"
    obj["spec"]["template"] = copy.deepcopy(SERVING_TEMPLATE)
    assert parse(obj).workload_class == "inference"
    obj["spec"]["template"]["spec"]["containers"] = []
    assert isinstance(parse(obj), InvalidWorkload)


NO_TEMPLATE = object()


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"gpus": 0}, "spec.gpus"),
        ({"gpus": 65}, "spec.gpus"),
        ({"gpus": 2.5}, "spec.gpus"),
        ({"gpus": "4"}, "spec.gpus"),
        ({"gpus": True}, "spec.gpus"),
        ({"gpus": None}, "spec.gpus"),
        ({"replicas": 0}, "spec.replicas"),
        ({"replicas": 1025}, "spec.replicas"),
        ({"class": "foo"}, "spec.class"),
        ({"class": 3}, "spec.class"),
        ({"gpuProducts": "NVIDIA-L4"}, "spec.gpuProducts"),
        ({"gpuProducts": ["NVIDIA-L4", 3]}, "spec.gpuProducts[1]"),
        ({"gpuProducts": [""]}, "spec.gpuProducts[0]"),
        ({"gpuProducts": ["x" * 64]}, "spec.gpuProducts[0]"),
        ({"gpuProducts": ["p"] * 33}, "spec.gpuProducts"),
        ({"minGpuMemoryMiB": -1}, "spec.minGpuMemoryMiB"),
        ({"preemptible": "yes"}, "spec.preemptible"),
        ({"maxQueueSeconds": -1}, "spec.maxQueueSeconds"),
        ({"maxQueueSeconds": 1.5}, "spec.maxQueueSeconds"),
        ({"template": None}, "spec.template"),
        ({"template": "pod"}, "spec.template"),
        ({"template": {}}, "spec.template.spec"),
        ({"template": {"metadata": [], "spec": {"containers": [{}]}}}, "spec.template.metadata"),
        ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
        ({"template": {"spec": {"containers": {"name": "x"}}}}, "spec.template.spec.containers"),
        ({"template": {"spec": {"containers": ["x"]}}}, "spec.template.spec.containers[0]"),
        ({"template": {"spec": {"containers": [{"name": "c", "image": "b"}], "tolerations": {}}}}, "spec.template.spec.tolerations"),
        ({"template": {"spec": {"containers": [{"name": "c", "image": "b"}], "tolerations": [{"operator": "Near"}]}}}, "spec.template.spec.tolerations[0].operator"),
        ({"template": {"spec": {"containers": [{"name": "c", "image": "b"}], "tolerations": [{"key": "k", "effect": "Sometimes"}]}}}, "spec.template.spec.tolerations[0].effect"),
        ({"template": {"spec": {"containers": [{"name": "c", "image": "b"}], "tolerations": [{"key": "k", "value": 3}]}}}, "spec.template.spec.tolerations[0].value"),
        ({"template": {"spec": {"containers": [{"name": "c", "image": "b"}], "tolerations": [{"value": "v"}]}}}, "spec.template.spec.tolerations[0].operator"),
        ({"gpuCount": 4}, "spec.gpuCount"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    result = parse(a_workload(**spec))
    assert isinstance(result, InvalidWorkload), result
    assert (result.namespace, result.name, result.field) == ("team-a", "chat", field)
    assert result.message.startswith(f"{field}: ") and len(result.message) > len(field) + 2


def test_rfc3339_round_trip_and_offsets() -> None:
    assert format_rfc3339(parse_rfc3339("2026-11-26T10:00:00Z")) == "2026-11-26T10:00:00Z"
    assert parse_rfc3339("2026-11-26T12:00:00+02:00") == parse_rfc3339("2026-11-26T10:00:00Z")
    assert parse_rfc3339("2026-11-26T10:00:00.5Z") == parse_rfc3339("2026-11-26T10:00:00Z") + 0.5
    for bad in ("yesterday", "", None, 12, "2026-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)
        assert parse_rfc3339_or_none(bad) is None


def test_missing_required_fields() -> None:
    for missing, field in (("gpus", "spec.gpus"), ("template", "spec.template")):
        obj = a_workload()
        del obj["spec"][missing]
        result = parse(obj)
        assert isinstance(result, InvalidWorkload) and result.field == field
        assert "required" in result.message


def test_objects_without_spec_or_name() -> None:
    no_spec = a_workload()
    del no_spec["spec"]
    assert parse(no_spec).field == "spec"
    no_name = a_workload()
    del no_name["metadata"]["name"]
    result = parse(no_name)
    assert isinstance(result, InvalidWorkload) and (result.name, result.field) == ("", "metadata.name")
    assert isinstance(parse("a string"), InvalidWorkload)
    assert parse({"metadata": "x"}).field == "metadata.name"


def test_messages_stay_short_whatever_the_value() -> None:
    result = parse(a_workload(**{"class": "x" * 10000}))
    assert isinstance(result, InvalidWorkload) and len(result.message) < 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
spec_fields = st.sampled_from(
    ["class", "gpus", "replicas", "gpuProducts", "minGpuMemoryMiB", "preemptible", "maxQueueSeconds", "template"]
)


@settings(max_examples=150, deadline=None)
@given(overrides=st.dictionaries(spec_fields, json_values, max_size=3), status=json_values, metadata_junk=json_values)
def test_arbitrary_input_never_raises(overrides: dict[str, Any], status: Any, metadata_junk: Any) -> None:
    obj = a_workload(**overrides)
    obj["status"] = status
    obj["metadata"]["creationTimestamp"] = metadata_junk
    result = parse(obj)
    if isinstance(result, InvalidWorkload):
        assert result.field.startswith("spec") and result.message
    else:
        assert 1 <= result.gpus_per_replica <= 64 and 1 <= result.replicas <= 1024
        assert result.workload_class in ("training", "inference")


def test_held_workload_keeps_the_margin_written_at_admission() -> None:
    from gpuadmit.core.policy import DEFAULT_POLICY
    from gpuadmit.core.workload import parse_workload

    obj = {
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
        "metadata": {"name": "chat", "namespace": "a", "creationTimestamp": "2026-11-26T08:00:00Z"},
        "spec": {"gpus": 1, "class": "inference", "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
        "status": {"phase": "Running", "marginPerGPUHour": 3.6, "placement": [{"node": "n1", "gpus": 1}]},
    }
    assert parse_workload(obj, DEFAULT_POLICY, {}).margin_per_gpu_hour == 3.6
    obj["status"] = {"phase": "Queued", "marginPerGPUHour": 3.6}
    assert parse_workload(obj, DEFAULT_POLICY, {}).margin_per_gpu_hour is None  # only held work earns
    obj["status"] = {"phase": "Running", "marginPerGPUHour": "lots", "placement": [{"node": "n1", "gpus": 1}]}
    assert parse_workload(obj, DEFAULT_POLICY, {}).margin_per_gpu_hour is None


def test_a_parse_cache_changes_no_result() -> None:
    """A snapshot build and the operator's ParseMemo keep a ParseCache (templates, timestamps);
    parsing through it gives what parsing afresh gives, valid or not, and a template found invalid
    is found invalid again."""
    from gpuadmit.core.workload import ParseCache

    cache = ParseCache()
    objects = [
        a_workload(),
        a_workload(name="same-template-other-status", status={"phase": "Preempted", "queuedSince": "2026-11-26T09:40:00Z"}),
        a_workload(name="bad-time", status={"phase": "Running", "admittedAt": "yesterday", "placement": [{"node": "a", "gpus": 4}]}),
        a_workload(name="auto", **{"class": "auto"}),
        a_workload(name="broken", template={"spec": {"containers": "not a list"}}),
    ]
    for _ in range(2):  # the second round is answered from the cache
        for obj in objects:
            assert parse(obj) == parse_workload(obj, DEFAULT_POLICY, {}, cache=cache)
    broken = parse_workload(objects[-1], DEFAULT_POLICY, {}, cache=cache)
    assert isinstance(broken, InvalidWorkload) and broken.field.startswith("spec.template")
