"""Custom objects are checked against their CRD's schema: 422 naming the field, defaults, pruning."""

from __future__ import annotations

import uuid

import kubernetes
import pytest

from tests.emulator.conftest import api_error, eventually, workload

pytestmark = pytest.mark.emulator

GW = ("gpuadmit.io", "v1alpha1")


def create(custom, namespace, body):
    return custom.create_namespaced_custom_object(*GW, namespace, "gpuworkloads", body)


def causes(status: dict) -> dict[str, str]:
    return {cause["field"]: cause["message"] for cause in status["details"]["causes"]}


def test_out_of_range_value_is_invalid_naming_the_field(custom, namespace):
    code, status = api_error(lambda: create(custom, namespace, workload("zero", gpus=0)))
    assert (code, status["reason"]) == (422, "Invalid")
    assert "spec.gpus: Invalid value: 0: spec.gpus in body should be greater than or equal to 1" in status["message"]
    assert '"zero"' in status["message"]
    assert "spec.gpus" in causes(status)


def test_missing_required_field_is_named(custom, namespace):
    body = workload("no-gpus")
    del body["spec"]["gpus"]
    code, status = api_error(lambda: create(custom, namespace, body))
    assert code == 422
    assert causes(status)["spec.gpus"] == "Required value"


def test_wrong_type_and_unsupported_value_are_named(custom, namespace):
    body = workload("bad-types", gpus="two")
    body["spec"]["class"] = "batch"
    code, status = api_error(lambda: create(custom, namespace, body))
    assert code == 422
    found = causes(status)
    assert "must be of type integer" in found["spec.gpus"]
    assert found["spec.class"].startswith('Unsupported value: "batch"')


def test_updates_are_validated_too(custom, namespace):
    create(custom, namespace, workload("later"))
    code, status = api_error(lambda: custom.patch_namespaced_custom_object(
        *GW, namespace, "gpuworkloads", "later", {"spec": {"gpus": -3}}))
    assert (code, status["reason"]) == (422, "Invalid") and "spec.gpus" in causes(status)
    assert custom.get_namespaced_custom_object(*GW, namespace, "gpuworkloads", "later")["spec"]["gpus"] == 1


def test_defaults_are_applied_and_unknown_fields_pruned(custom, namespace):
    body = workload("defaults")
    body["spec"]["unknownField"] = "dropped"
    body["spec"]["template"]["anything"] = {"kept": True}  # x-kubernetes-preserve-unknown-fields
    body["unknownTopLevel"] = 1
    created = create(custom, namespace, body)
    assert created["spec"]["replicas"] == 1 and created["spec"]["class"] == "auto"
    assert "unknownField" not in created["spec"] and "unknownTopLevel" not in created
    assert created["spec"]["template"]["anything"] == {"kept": True}


def test_a_crd_created_through_the_api_is_served(cluster, namespace):
    extensions = kubernetes.client.ApiextensionsV1Api(cluster)
    group = "emulator-test.gpuadmit.io"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object", "properties": {
                    "size": {"type": "integer", "maximum": 10, "default": 3}}}},
            }}}],
        },
    }
    try:
        extensions.create_custom_resource_definition(crd)
    except kubernetes.client.ApiException as e:
        assert e.status == 409  # left by an earlier run against a real cluster
    custom = kubernetes.client.CustomObjectsApi(cluster)

    def served() -> bool:
        try:
            custom.list_namespaced_custom_object(group, "v1", namespace, "widgets")
            return True
        except kubernetes.client.ApiException:
            return False

    eventually(served)
    groups = [g.name for g in kubernetes.client.ApisApi(cluster).get_api_versions().groups]
    assert group in groups
    made = custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", {
        "apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}})
    assert made["spec"]["size"] == 3
    code, status = api_error(lambda: custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", {
        "apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "big"}, "spec": {"size": 11}}))
    assert code == 422 and "spec.size" in causes(status)


def test_a_gpuquota_is_cluster_scoped_and_checked_against_its_schema(custom):
    group, version = GW
    name = f"quota-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": f"{group}/{version}", "kind": "GPUQuota", "metadata": {"name": name},
            "spec": {"namespaceSelector": {"matchLabels": {"team": "research"}}, "guaranteed": {"*": 8}}}  # fmt: skip
    created = custom.create_cluster_custom_object(group, version, "gpuquotas", body)
    try:
        assert created["spec"]["lendIdle"] is True  # the schema's default
        bad = {**body, "metadata": {"name": f"{name}-bad"}, "spec": {**body["spec"], "guaranteed": {"*": -1}}}
        code, status = api_error(lambda: custom.create_cluster_custom_object(group, version, "gpuquotas", bad))
        assert code == 422 and "spec.guaranteed" in status["message"]
    finally:
        custom.delete_cluster_custom_object(group, version, "gpuquotas", name)
