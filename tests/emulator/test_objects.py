"""CRUD semantics a real API server guarantees and the operator relies on (official client only)."""

from __future__ import annotations

import kubernetes
import pytest

from tests.emulator.conftest import api_error, call, eventually, pod, workload

pytestmark = pytest.mark.emulator

GW = ("gpuadmit.io", "v1alpha1")


def create_workload(custom, namespace: str, name: str, **spec):
    return custom.create_namespaced_custom_object(*GW, namespace, "gpuworkloads", workload(name, **spec))


def read_workload(custom, namespace: str, name: str):
    return custom.get_namespaced_custom_object(*GW, namespace, "gpuworkloads", name)


def test_namespaces_are_a_real_resource(core):
    name = "ns-crud-" + core.api_client.configuration.host.rsplit(":", 1)[-1]
    created = core.create_namespace({"metadata": {"name": name, "labels": {"gpuadmit.io/tier": "gold"}}})
    assert created.metadata.name == name and created.status.phase == "Active"
    assert core.read_namespace(name).metadata.labels["gpuadmit.io/tier"] == "gold"
    listed = core.list_namespace(label_selector="gpuadmit.io/tier=gold").items
    assert name in [ns.metadata.name for ns in listed]
    assert "default" not in [ns.metadata.name for ns in listed]
    core.patch_namespace(name, {"metadata": {"labels": {"gpuadmit.io/tier": "silver"}}})
    assert core.read_namespace(name).metadata.labels["gpuadmit.io/tier"] == "silver"
    core.delete_namespace(name)
    eventually(lambda: name not in [ns.metadata.name for ns in core.list_namespace().items])


def test_server_sets_uid_timestamp_generation_and_version(custom, namespace):
    first = create_workload(custom, namespace, "meta-a")
    second = create_workload(custom, namespace, "meta-b")
    for obj in (first, second):
        meta = obj["metadata"]
        assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert first["metadata"]["resourceVersion"] != second["metadata"]["resourceVersion"]


def test_resource_version_changes_on_every_write_and_on_lists(custom, namespace):
    created = create_workload(custom, namespace, "rv")
    versions = [created["metadata"]["resourceVersion"]]
    for value in ("a", "b", "c"):
        patched = custom.patch_namespaced_custom_object(
            *GW, namespace, "gpuworkloads", "rv", {"metadata": {"labels": {"step": value}}})
        versions.append(patched["metadata"]["resourceVersion"])
    assert len(set(versions)) == len(versions)
    listed = custom.list_namespaced_custom_object(*GW, namespace, "gpuworkloads")
    assert listed["metadata"]["resourceVersion"]
    assert [item["metadata"]["resourceVersion"] for item in listed["items"]] == [versions[-1]]


def test_generation_counts_spec_changes_only(custom, namespace):
    create_workload(custom, namespace, "gen")
    custom.patch_namespaced_custom_object(*GW, namespace, "gpuworkloads", "gen", {"metadata": {"labels": {"x": "1"}}})
    custom.patch_namespaced_custom_object_status(*GW, namespace, "gpuworkloads", "gen", {"status": {"phase": "Queued"}})
    assert read_workload(custom, namespace, "gen")["metadata"]["generation"] == 1
    custom.patch_namespaced_custom_object(*GW, namespace, "gpuworkloads", "gen", {"spec": {"gpus": 2}})
    assert read_workload(custom, namespace, "gen")["metadata"]["generation"] == 2


def test_stale_resource_version_is_a_conflict(custom, namespace):
    created = create_workload(custom, namespace, "stale")
    stale = created["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(*GW, namespace, "gpuworkloads", "stale", {"spec": {"gpus": 2}})

    code, status = api_error(lambda: custom.patch_namespaced_custom_object(
        *GW, namespace, "gpuworkloads", "stale", {"metadata": {"resourceVersion": stale}, "spec": {"gpus": 3}}))
    assert (code, status["kind"], status["reason"], status["code"]) == (409, "Status", "Conflict", 409)

    replacement = {**created, "spec": {**created["spec"], "gpus": 4}}
    code, status = api_error(lambda: custom.replace_namespaced_custom_object(
        *GW, namespace, "gpuworkloads", "stale", replacement))
    assert (code, status["reason"]) == (409, "Conflict")

    code, status = api_error(lambda: custom.patch_namespaced_custom_object_status(
        *GW, namespace, "gpuworkloads", "stale", {"metadata": {"resourceVersion": stale}, "status": {"phase": "Queued"}}))
    assert (code, status["reason"]) == (409, "Conflict")
    assert read_workload(custom, namespace, "stale")["spec"]["gpus"] == 2


def test_fresh_resource_version_is_accepted(custom, namespace):
    created = create_workload(custom, namespace, "fresh")
    patched = custom.patch_namespaced_custom_object(*GW, namespace, "gpuworkloads", "fresh", {
        "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"gpus": 5}})
    assert patched["spec"]["gpus"] == 5


def test_creating_an_existing_name_is_already_exists(custom, namespace):
    create_workload(custom, namespace, "twice")
    code, status = api_error(lambda: create_workload(custom, namespace, "twice"))
    assert (code, status["reason"], status["details"]["name"]) == (409, "AlreadyExists", "twice")


def test_missing_objects_are_not_found_with_a_status(custom, core, namespace):
    code, status = api_error(lambda: read_workload(custom, namespace, "nobody"))
    assert (code, status["kind"], status["reason"]) == (404, "Status", "NotFound")
    assert '"nobody" not found' in status["message"]
    code, status = api_error(lambda: core.delete_namespaced_pod("nobody", namespace))
    assert (code, status["reason"]) == (404, "NotFound")


def test_main_resource_writes_cannot_change_status(custom, namespace):
    create_workload(custom, namespace, "st")
    custom.patch_namespaced_custom_object_status(*GW, namespace, "gpuworkloads", "st", {"status": {"phase": "Queued"}})
    patched = custom.patch_namespaced_custom_object(
        *GW, namespace, "gpuworkloads", "st", {"spec": {"gpus": 2}, "status": {"phase": "Admitted"}})
    assert patched["spec"]["gpus"] == 2 and patched["status"]["phase"] == "Queued"
    replaced = custom.replace_namespaced_custom_object(
        *GW, namespace, "gpuworkloads", "st", {**patched, "status": {"phase": "Rejected"}})
    assert replaced["status"]["phase"] == "Queued"


def test_status_writes_change_nothing_but_status(custom, namespace):
    create_workload(custom, namespace, "only-status")
    patched = custom.patch_namespaced_custom_object_status(*GW, namespace, "gpuworkloads", "only-status", {
        "metadata": {"labels": {"sneaky": "yes"}}, "spec": {"gpus": 7}, "status": {"phase": "Admitted"}})
    assert patched["status"]["phase"] == "Admitted"
    assert patched["spec"]["gpus"] == 1
    assert "sneaky" not in (patched["metadata"].get("labels") or {})


def test_pod_status_subresource(core, namespace):
    created = core.create_namespaced_pod(namespace, pod("p-status"))
    assert created.status.phase == "Pending"
    core.patch_namespaced_pod("p-status", namespace, {"status": {"phase": "Running"}})
    assert core.read_namespaced_pod("p-status", namespace).status.phase == "Pending"
    core.patch_namespaced_pod_status("p-status", namespace, {"status": {"phase": "Running"}})
    assert core.read_namespaced_pod("p-status", namespace).status.phase == "Running"


def test_put_replaces_the_object(custom, namespace):
    created = create_workload(custom, namespace, "put", replicas=3)
    replacement = {
        "apiVersion": created["apiVersion"], "kind": created["kind"],
        "metadata": {"name": "put", "resourceVersion": created["metadata"]["resourceVersion"]},
        "spec": {"gpus": 2, "template": {}},
    }
    replaced = custom.replace_namespaced_custom_object(*GW, namespace, "gpuworkloads", "put", replacement)
    assert replaced["spec"]["gpus"] == 2 and replaced["spec"]["replicas"] == 1  # defaulted again, not merged
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]


def test_json_patch(custom, namespace, cluster):
    create_workload(custom, namespace, "jp")
    path = f"/apis/gpuadmit.io/v1alpha1/namespaces/{namespace}/gpuworkloads/jp"
    patched = call(cluster, "PATCH", path, [
        {"op": "test", "path": "/spec/gpus", "value": 1},
        {"op": "replace", "path": "/spec/gpus", "value": 4},
        {"op": "add", "path": "/metadata/labels", "value": {"via": "json-patch"}},
    ], content_type="application/json-patch+json")
    assert patched["spec"]["gpus"] == 4 and patched["metadata"]["labels"] == {"via": "json-patch"}


def test_merge_patch_removes_with_null(custom, namespace, cluster):
    create_workload(custom, namespace, "mp")
    path = f"/apis/gpuadmit.io/v1alpha1/namespaces/{namespace}/gpuworkloads/mp"
    call(cluster, "PATCH", path, {"metadata": {"labels": {"a": "1", "b": "2"}}},
         content_type="application/merge-patch+json")
    patched = call(cluster, "PATCH", path, {"metadata": {"labels": {"a": None}}},
                   content_type="application/merge-patch+json")
    assert patched["metadata"]["labels"] == {"b": "2"}


def test_strategic_merge_patch_on_pods(core, namespace, cluster):
    core.create_namespaced_pod(namespace, pod("smp", metadata={"labels": {"keep": "1"}}))
    path = f"/api/v1/namespaces/{namespace}/pods/smp"
    patched = call(cluster, "PATCH", path, {"metadata": {"labels": {"added": "2"}}},
                   content_type="application/strategic-merge-patch+json")
    assert patched["metadata"]["labels"] == {"keep": "1", "added": "2"}


def test_label_selectors_on_list(core, namespace):
    for name, labels in [("a", {"app": "x", "tier": "gold"}), ("b", {"app": "y", "tier": "silver"}),
                         ("c", {"app": "x"})]:
        core.create_namespaced_pod(namespace, pod(name, metadata={"labels": labels}))

    def names(selector: str) -> list[str]:
        return sorted(p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=selector).items)

    assert names("app=x") == ["a", "c"]
    assert names("app==x") == ["a", "c"]
    assert names("app!=x") == ["b"]
    assert names("tier in (gold,silver)") == ["a", "b"]
    assert names("tier notin (gold)") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("app=x,tier") == ["a"]


def test_field_selectors_on_pods(core, namespace):
    core.create_namespaced_pod(namespace, pod("on-n1", spec={"nodeName": "gpu-node-1"}))
    core.create_namespaced_pod(namespace, pod("on-n2", spec={"nodeName": "gpu-node-2"}))
    core.create_namespaced_pod(namespace, pod("unbound", spec={"nodeName": None}))

    def names(selector: str) -> list[str]:
        return sorted(p.metadata.name for p in core.list_namespaced_pod(namespace, field_selector=selector).items)

    assert names("spec.nodeName=gpu-node-1") == ["on-n1"]
    assert names("spec.nodeName!=gpu-node-1") == ["on-n2", "unbound"]
    assert names("spec.nodeName=") == ["unbound"]
    assert names("metadata.name=unbound") == ["unbound"]
    assert {"on-n1", "on-n2"} <= set(names("status.phase=Pending"))
    assert names(f"metadata.namespace={namespace},spec.nodeName=gpu-node-2") == ["on-n2"]


def test_finalizers_hold_deletion_until_removed(custom, namespace):
    body = workload("fin")
    body["metadata"]["finalizers"] = ["gpuadmit.io/test"]
    custom.create_namespaced_custom_object(*GW, namespace, "gpuworkloads", body)
    custom.delete_namespaced_custom_object(*GW, namespace, "gpuworkloads", "fin")
    held = read_workload(custom, namespace, "fin")
    assert held["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(*GW, namespace, "gpuworkloads", "fin", {"metadata": {"finalizers": None}})
    code, _ = api_error(lambda: read_workload(custom, namespace, "fin"))
    assert code == 404


def test_deleting_an_owner_deletes_its_pods(custom, core, namespace):
    owner = create_workload(custom, namespace, "owner")
    reference = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": "owner",
                 "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    core.create_namespaced_pod(namespace, pod("owner-0", metadata={"ownerReferences": [reference]}))
    core.create_namespaced_pod(namespace, pod("bystander"))
    stored = core.read_namespaced_pod("owner-0", namespace)
    assert stored.metadata.owner_references[0].uid == owner["metadata"]["uid"]
    custom.delete_namespaced_custom_object(*GW, namespace, "gpuworkloads", "owner")
    eventually(lambda: [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == ["bystander"])


def test_events_can_be_posted_in_both_apis(cluster, namespace):
    core_event = kubernetes.client.CoreV1Api(cluster).create_namespaced_event(namespace, {
        "metadata": {"name": "decision.1"},
        "involvedObject": {"kind": "GPUWorkload", "name": "w", "namespace": namespace},
        "reason": "Admitted", "message": "placed on gpu-node-1", "type": "Normal",
    })
    assert core_event.reason == "Admitted"
    new_event = kubernetes.client.EventsV1Api(cluster).create_namespaced_event(namespace, {
        "metadata": {"name": "decision.2"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "gpuadmit.io/operator",
        "reportingInstance": "gpuadmit-0", "action": "Admit", "reason": "Admitted", "type": "Normal",
        "regarding": {"kind": "GPUWorkload", "name": "w", "namespace": namespace},
    })
    assert new_event.reason == "Admitted"
    listed = kubernetes.client.CoreV1Api(cluster).list_namespaced_event(namespace).items
    assert "decision.1" in [event.metadata.name for event in listed]


def test_delete_collection_with_a_selector(core, namespace):
    core.create_namespaced_pod(namespace, pod("gone-1", metadata={"labels": {"batch": "old"}}))
    core.create_namespaced_pod(namespace, pod("gone-2", metadata={"labels": {"batch": "old"}}))
    core.create_namespaced_pod(namespace, pod("stays", metadata={"labels": {"batch": "new"}}))
    core.delete_collection_namespaced_pod(namespace, label_selector="batch=old", grace_period_seconds=0)
    eventually(lambda: [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == ["stays"])
