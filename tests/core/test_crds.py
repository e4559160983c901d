"""The CRDs: structural schemas that make the API server itself refuse nonsense.

The openAPIV3Schema is turned into JSON Schema (``nullable`` becomes a ``null``
type, x-kubernetes-* keywords are ignored as the API server's validator ignores
them for values) and example objects are validated with jsonschema.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GPUWORKLOAD_CRD = ROOT / "crds" / "gpuworkloads.gpuadmit.io.yaml"
MARGINPOLICY_CRD = ROOT / "crds" / "marginpolicies.gpuadmit.io.yaml"
GPUQUOTA_CRD = ROOT / "crds" / "gpuquotas.gpuadmit.io.yaml"

# What an apiextensions.k8s.io/v1 structural schema may say about a value.
ALLOWED_KEYWORDS = {
    "type", "format", "description", "default", "enum", "nullable", "required", "properties", "items",
    "additionalProperties", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "maxProperties", "minProperties", "pattern", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-int-or-string", "x-kubernetes-validations", "x-kubernetes-map-type", "example",
}  # fmt: skip


def load_crd(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def openapi_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def to_json_schema(schema: Any) -> Any:
    """OpenAPI v3 (as Kubernetes uses it) -> JSON Schema draft 7."""
    if isinstance(schema, list):
        return [to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: to_json_schema(value) for key, value in schema.items() if key not in ("nullable", "default")}
    if schema.get("nullable") and "type" in schema:
        converted["type"] = [schema["type"], "null"]
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
    return converted


def validator_for(path: Path) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(to_json_schema(openapi_schema(load_crd(path))))


def structural_problems(schema: dict[str, Any], where: str = "", root: bool = True) -> list[str]:
    """The rules of a structural schema that an API server enforces on a CRD."""
    problems = []
    unknown = set(schema) - ALLOWED_KEYWORDS
    if unknown:
        problems.append(f"{where or '<root>'}: keywords not allowed: {sorted(unknown)}")
    preserves = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string")
    if "type" not in schema and not preserves:
        problems.append(f"{where or '<root>'}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: both properties and additionalProperties")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{where}: array without items")
    for name, child in schema.get("properties", {}).items():
        if root and name == "metadata" and set(child) - {"type"}:
            problems.append("metadata: only `type: object` is allowed at the root")
        problems.extend(structural_problems(child, f"{where}.{name}", root=False))
    if isinstance(schema.get("items"), dict):
        problems.extend(structural_problems(schema["items"], f"{where}[]", root=False))
    if isinstance(schema.get("additionalProperties"), dict):
        problems.extend(structural_problems(schema["additionalProperties"], f"{where}.*", root=False))
    return problems


def a_workload(**spec: Any) -> dict[str, Any]:
    base = {
        "class": "auto",
        "gpus": 4,
        "replicas": 2,
        "gpuProducts": ["NVIDIA-H100-80GB-HBM3"],
        "minGpuMemoryMiB": 40000,
        "preemptible": None,
        "maxQueueSeconds": None,
        "template": {"spec": {"containers": [{"name": "main", "image": "vllm/vllm-openai"}]}},
    }
    base.update(spec)
    return {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUWorkload",
        "metadata": {"name": "chat", "namespace": "team-a"},
        "spec": base,
    }


def a_policy(**spec: Any) -> dict[str, Any]:
    example = yaml.safe_load((ROOT / "examples" / "policy.yaml").read_text())
    example["spec"].update(spec)
    return example


@pytest.mark.parametrize("path", [GPUWORKLOAD_CRD, MARGINPOLICY_CRD, GPUQUOTA_CRD], ids=lambda path: path.name)
def test_crd_is_a_valid_structural_v1_crd(path: Path) -> None:
    crd = load_crd(path)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
    assert crd["spec"]["group"] == "gpuadmit.io"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert structural_problems(openapi_schema(crd)) == []
    jsonschema.Draft7Validator.check_schema(to_json_schema(openapi_schema(crd)))
    # The Kubernetes API's own schema for a CustomResourceDefinition, strictly (no unknown fields).
    for kubernetes_version in ("1.29", "1.31"):
        kubernetes_validate.validate(crd, kubernetes_version, strict=True)


def test_the_structural_check_finds_problems() -> None:
    # Guards the test above against a checker that passes anything.
    assert structural_problems({"type": "object", "properties": {"a": {"minimum": 1}, "b": {"type": "array"}}}) == [
        ".a: no type",
        ".b: array without items",
    ]


def test_gpuworkload_names_scope_and_printer_columns() -> None:
    crd = load_crd(GPUWORKLOAD_CRD)
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["shortNames"], names["categories"]) == ("GPUWorkload", ["gw"], ["gpuadmit"])
    columns = {column["name"].upper(): column for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["CLASS"]["jsonPath"] == ".status.class"
    assert columns["PHASE"]["jsonPath"] == ".status.phase"
    assert columns["GPUS"]["jsonPath"] == ".spec.gpus"
    assert columns["REPLICAS"]["jsonPath"] == ".spec.replicas"
    assert columns["MARGIN"]["jsonPath"] == ".status.marginPerGPUHour"
    assert columns["REASON"]["jsonPath"] == ".status.reason"
    assert (columns["AGE"]["jsonPath"], columns["AGE"]["type"]) == (".metadata.creationTimestamp", "date")
    default_columns = [name for name, column in columns.items() if not column.get("priority")]
    assert default_columns == ["CLASS", "PHASE", "GPUS", "REPLICAS", "MARGIN", "REASON", "AGE"]


def test_gpuworkload_schema_has_every_field_of_the_issue() -> None:
    schema = openapi_schema(load_crd(GPUWORKLOAD_CRD))
    spec = schema["properties"]["spec"]["properties"]
    assert set(spec) == {
        "class", "gpus", "replicas", "gpuProducts", "minGpuMemoryMiB", "preemptible", "maxQueueSeconds", "template",
    }  # fmt: skip
    assert spec["class"]["enum"] == ["auto", "training", "inference"] and spec["class"]["default"] == "auto"
    assert (spec["gpus"]["minimum"], spec["gpus"]["maximum"]) == (1, 64)
    assert (spec["replicas"]["minimum"], spec["replicas"]["maximum"], spec["replicas"]["default"]) == (1, 1024, 1)
    assert spec["template"] == {**spec["template"], "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert spec["preemptible"]["nullable"] and spec["maxQueueSeconds"]["nullable"]
    status = schema["properties"]["status"]["properties"]
    assert {
        "phase", "class", "classReason", "reason", "message", "marginPerGPUHour", "queuePosition", "placement",
        "admittedAt", "preemptions", "preemptedBy", "observedGeneration", "conditions",
    } <= set(status)  # fmt: skip
    assert status["phase"]["enum"] == ["Queued", "Admitted", "Running", "Succeeded", "Failed", "Preempted", "Rejected"]
    assert set(status["placement"]["items"]["properties"]) >= {"node", "gpus"}
    assert set(status["conditions"]["items"]["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration",
    }  # fmt: skip


def test_valid_gpuworkloads_pass() -> None:
    validator = validator_for(GPUWORKLOAD_CRD)
    for workload in (
        a_workload(),
        a_workload(**{"class": "inference", "gpus": 1, "replicas": 1, "preemptible": True, "maxQueueSeconds": 0}),
        a_workload(gpus=64, replicas=1024, gpuProducts=[]),
    ):
        assert list(validator.iter_errors(workload)) == []
    with_status = a_workload()
    with_status["status"] = {
        "phase": "Running", "class": "inference", "classReason": "runs vllm serve", "reason": "Admitted",
        "message": "admitted", "marginPerGPUHour": 3.6, "queuePosition": None,
        "placement": [{"node": "gpu-node-7", "gpus": 4}], "admittedAt": "2026-11-26T10:00:00Z",
        "preemptions": 0, "observedGeneration": 1,
        "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted", "message": "",
                        "lastTransitionTime": "2026-11-26T10:00:00Z", "observedGeneration": 1}],
    }  # fmt: skip
    assert list(validator.iter_errors(with_status)) == []


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"gpus": 0}, "gpus"),
        ({"gpus": 65}, "gpus"),
        ({"gpus": 2.5}, "gpus"),
        ({"gpus": "4"}, "gpus"),
        ({"replicas": 0}, "replicas"),
        ({"replicas": 1025}, "replicas"),
        ({"class": "foo"}, "class"),
        ({"minGpuMemoryMiB": -1}, "minGpuMemoryMiB"),
        ({"maxQueueSeconds": -5}, "maxQueueSeconds"),
        ({"preemptible": "yes"}, "preemptible"),
        ({"gpuProducts": "NVIDIA-L4"}, "gpuProducts"),
        ({"gpuProducts": [""]}, "gpuProducts"),
        ({"template": "a pod"}, "template"),
    ],
)
def test_invalid_gpuworkloads_fail_on_the_field(spec: dict[str, Any], field: str) -> None:
    errors = list(validator_for(GPUWORKLOAD_CRD).iter_errors(a_workload(**spec)))
    assert errors, f"{spec} was accepted"
    assert all(list(error.absolute_path)[:2] == ["spec", field] for error in errors)


def test_gpuworkload_without_gpus_or_template_fails() -> None:
    validator = validator_for(GPUWORKLOAD_CRD)
    for missing in ("gpus", "template"):
        workload = a_workload()
        del workload["spec"][missing]
        assert any(missing in error.message for error in validator.iter_errors(workload))


def test_marginpolicy_names_scope_and_columns() -> None:
    crd = load_crd(MARGINPOLICY_CRD)
    assert crd["spec"]["scope"] == "Cluster"
    assert (crd["spec"]["names"]["kind"], crd["spec"]["names"]["shortNames"]) == ("MarginPolicy", ["mp"])
    columns = {column["name"].upper() for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"INFERENCE", "TRAINING", "FLOOR", "ACCEPTED", "AGE"} <= columns
    status = openapi_schema(crd)["properties"]["status"]["properties"]
    assert "conditions" in status


def test_marginpolicy_schema_has_every_field_of_the_issue() -> None:
    spec = openapi_schema(load_crd(MARGINPOLICY_CRD))["properties"]["spec"]["properties"]
    assert set(spec) == {
        "gpuCostPerHour", "pricePerGPUHour", "tierMultipliers", "minMarginPerGPUHour", "inferenceReserveFraction",
        "preemption", "agingPerHour", "defaultMaxQueueSeconds", "maxQueuedPerNamespace",
    }  # fmt: skip
    assert set(spec["preemption"]["properties"]) == {"enabled", "minRuntimeSeconds", "minMarginGainPerGPUHour"}
    assert set(spec["pricePerGPUHour"]["properties"]) == {"inference", "training"}
    assert spec["maxQueuedPerNamespace"] == {**spec["maxQueuedPerNamespace"], "type": "integer", "minimum": 1}


def test_the_example_policy_passes() -> None:
    assert list(validator_for(MARGINPOLICY_CRD).iter_errors(a_policy())) == []


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"gpuCostPerHour": {"default": -1.0}}, ["spec", "gpuCostPerHour", "default"]),
        ({"gpuCostPerHour": {"NVIDIA-L4": "cheap"}}, ["spec", "gpuCostPerHour", "NVIDIA-L4"]),
        ({"pricePerGPUHour": {"inference": -6}}, ["spec", "pricePerGPUHour", "inference"]),
        ({"tierMultipliers": {"gold": -1.5}}, ["spec", "tierMultipliers", "gold"]),
        ({"inferenceReserveFraction": 1.5}, ["spec", "inferenceReserveFraction"]),
        ({"inferenceReserveFraction": -0.1}, ["spec", "inferenceReserveFraction"]),
        ({"minMarginPerGPUHour": -1}, ["spec", "minMarginPerGPUHour"]),
        ({"agingPerHour": -0.1}, ["spec", "agingPerHour"]),
        ({"defaultMaxQueueSeconds": -1}, ["spec", "defaultMaxQueueSeconds"]),
        ({"maxQueuedPerNamespace": 0}, ["spec", "maxQueuedPerNamespace"]),
        ({"maxQueuedPerNamespace": 2.5}, ["spec", "maxQueuedPerNamespace"]),
        ({"preemption": {"enabled": "yes"}}, ["spec", "preemption", "enabled"]),
        ({"preemption": {"minRuntimeSeconds": -600}}, ["spec", "preemption", "minRuntimeSeconds"]),
    ],
)
def test_invalid_policies_fail_on_the_field(spec: dict[str, Any], path: list[str]) -> None:
    errors = list(validator_for(MARGINPOLICY_CRD).iter_errors(a_policy(**spec)))
    assert errors, f"{spec} was accepted"
    assert [list(error.absolute_path) for error in errors] == [path]


def test_every_number_of_the_policy_is_bounded() -> None:
    spec = openapi_schema(load_crd(MARGINPOLICY_CRD))["properties"]["spec"]

    def numbers(schema: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
        found = [(where, schema)] if schema.get("type") in ("number", "integer") else []
        for name, child in schema.get("properties", {}).items():
            found += numbers(child, f"{where}.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            found += numbers(schema["additionalProperties"], f"{where}.*")
        return found

    found = numbers(copy.deepcopy(spec), "spec")
    assert len(found) >= 11
    assert [where for where, schema in found if "minimum" not in schema] == []


def test_the_example_cluster_objects_match_the_schemas() -> None:
    dump = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())
    workload_validator, policy_validator = validator_for(GPUWORKLOAD_CRD), validator_for(MARGINPOLICY_CRD)
    refused = {}
    for item in dump["items"]:
        validator = {"GPUWorkload": workload_validator, "MarginPolicy": policy_validator}.get(item["kind"])
        if validator is not None:
            errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(item)]
            if errors:
                refused[item["metadata"]["name"]] = errors
    # The example carries exactly one object the API server would have refused, on purpose.
    assert list(refused) == ["zero-gpus"] and refused["zero-gpus"][0].startswith("spec.gpus:")


def a_quota(**spec: Any) -> dict[str, Any]:
    base = {"namespaceSelector": {"matchLabels": {"team": "research"}}, "guaranteed": {"NVIDIA-H100-80GB-HBM3": 8, "*": 2},
            "maxGPUs": 24, "lendIdle": True}  # fmt: skip
    base.update(spec)
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUQuota", "metadata": {"name": "research"}, "spec": base}


def test_gpuquota_is_cluster_scoped_with_its_printer_columns() -> None:
    crd = load_crd(GPUQUOTA_CRD)
    assert crd["spec"]["scope"] == "Cluster"  # a tenant must not grant itself capacity
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("GPUQuota", "gpuquotas", ["gq"])
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns == {
        "Guaranteed": ".status.guaranteedGPUs", "Used": ".status.usedGPUs", "Lent": ".status.lentGPUs",
        "Max": ".spec.maxGPUs", "Ready": '.status.conditions[?(@.type=="Ready")].status', "Age": ".metadata.creationTimestamp",
    }  # fmt: skip


def test_the_gpuquota_schema_accepts_what_the_parser_accepts_and_refuses_the_rest() -> None:
    from gpuadmit.core.quota import parse_quota

    validator = validator_for(GPUQUOTA_CRD)
    selector = {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}
    for good in (a_quota(), a_quota(namespaceSelector={}), a_quota(namespaceSelector=selector), a_quota(guaranteed={})):
        assert list(validator.iter_errors(good)) == []
        parse_quota(good)
    for bad in (
        a_quota(guaranteed={"NVIDIA-H100-80GB-HBM3": -1}),
        a_quota(guaranteed={"NVIDIA-H100-80GB-HBM3": 1.5}),
        a_quota(maxGPUs=-1),
        a_quota(lendIdle="yes"),
        a_quota(namespaceSelector={"matchExpressions": [{"key": "team", "operator": "Like"}]}),
    ):
        assert list(validator.iter_errors(bad)), bad
    missing = a_quota()
    del missing["spec"]["namespaceSelector"]
    assert list(validator.iter_errors(missing))
