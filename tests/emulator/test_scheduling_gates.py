"""Pod scheduling gates as the real API server enforces them (KEP-3521, KEP-3838): set only at
create, removed one by one, never added; a gated pod is never bound; while gated its node
selector and node affinity may narrow, never widen. Refusals are 422 Invalid naming the field.

The conformance tests use the official client (they hold on a real cluster: the pods name a
scheduler that does not exist, so nothing there binds them); the scheduler stand-in's part and
kubectl's column are emulator-only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from kubeapi_emulator import EmulatedApiServer, write_kubeconfig

from .conftest import api_error, call, requires_emulator
from .test_kubectl import kubectl, needs_kubectl
from .test_scheduler import call as http
from .test_scheduler import node, scheduled_condition, wait_for

pytestmark = pytest.mark.emulator
GATE = "example.com/quota"
OTHER_GATE = "example.com/arch"
TERM_A = {"key": "gpu", "operator": "In", "values": ["h100"]}
TERM_B = {"key": "zone", "operator": "Exists"}


def gated_pod(name: str, *gates: str, **spec: Any) -> dict[str, Any]:
    """An unbound pod with the given gates, for a scheduler no cluster runs (nothing binds it by surprise)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox"}], "schedulerName": "nobody",
                     **({"schedulingGates": [{"name": gate} for gate in gates]} if gates else {}), **spec}}


def required(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": list(expressions)} for expressions in terms]}}}


@pytest.fixture()
def pods(cluster: kubernetes.client.ApiClient, namespace: str) -> Any:
    """``pods.create(body)``, ``pods.patch(name, merge_patch)`` and ``pods.refused(name, patch)``
    (the code and Status of a refused patch) in the test's namespace."""
    base = f"/api/v1/namespaces/{namespace}/pods"

    class Pods:
        def create(self, body: dict[str, Any]) -> dict[str, Any]:
            return call(cluster, "POST", base, body)

        def patch(self, name: str, patch: Any, content_type: str = "application/merge-patch+json") -> dict[str, Any]:
            return call(cluster, "PATCH", f"{base}/{name}", patch, content_type)

        def refused(self, name: str, patch: Any,
                    content_type: str = "application/merge-patch+json") -> tuple[int, dict[str, Any]]:
            return api_error(lambda: self.patch(name, patch, content_type))

        def bind(self, name: str, node_name: str) -> dict[str, Any]:
            return call(cluster, "POST", f"{base}/{name}/binding", {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}})

    return Pods()


def test_a_pod_created_with_gates_is_scheduling_gated(pods: Any) -> None:
    created = pods.create(gated_pod("gated", GATE, OTHER_GATE))
    assert [g["name"] for g in created["spec"]["schedulingGates"]] == [GATE, OTHER_GATE]
    condition = scheduled_condition(created)
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("False", "SchedulingGated")
    assert scheduled_condition(pods.create(gated_pod("free"))) is None


def test_gates_cannot_come_with_a_node_name_or_twice(pods: Any) -> None:
    code, status = api_error(lambda: pods.create(gated_pod("named", GATE, nodeName="node-a")))
    assert code == 422 and status["reason"] == "Invalid"
    assert "spec.nodeName: Forbidden: cannot be set until all schedulingGates have been removed" in status["message"]
    code, status = api_error(lambda: pods.create(gated_pod("twice", GATE, GATE)))
    assert code == 422 and f'spec.schedulingGates[1]: Duplicate value: "{GATE}"' in status["message"]


def test_an_update_may_remove_gates_but_never_add_one(pods: Any) -> None:
    pods.create(gated_pod("gated", GATE))
    code, status = pods.refused("gated", {"spec": {"schedulingGates": [{"name": GATE}, {"name": OTHER_GATE}]}})
    assert code == 422
    assert f"spec.schedulingGates[1].name: Forbidden: only deletion is allowed, but found new scheduling gate " \
           f"'{OTHER_GATE}'" in status["message"]
    assert status["details"]["causes"][0]["field"] == "spec.schedulingGates[1].name"

    pods.create(gated_pod("free"))
    code, status = pods.refused("free", [{"op": "add", "path": "/spec/schedulingGates",
                                          "value": [{"name": GATE}]}], "application/json-patch+json")
    assert code == 422 and "only deletion is allowed" in status["message"]

    pods.create(gated_pod("two", GATE, OTHER_GATE))
    assert [g["name"] for g in pods.patch("two", {"spec": {"schedulingGates": [{"name": OTHER_GATE}]}})
            ["spec"]["schedulingGates"]] == [OTHER_GATE]
    ungated = pods.patch("two", [{"op": "remove", "path": "/spec/schedulingGates"}], "application/json-patch+json")
    assert not ungated["spec"].get("schedulingGates")


def test_a_gated_pod_may_gain_node_selector_entries_but_not_change_them(pods: Any) -> None:
    pods.create(gated_pod("gated", GATE, nodeSelector={"pool": "gpu"}))
    patched = pods.patch("gated", {"spec": {"nodeSelector": {"zone": "a"}}})
    assert patched["spec"]["nodeSelector"] == {"pool": "gpu", "zone": "a"}
    code, status = pods.refused("gated", {"spec": {"nodeSelector": {"pool": "cpu"}}})
    assert code == 422
    assert "spec.nodeSelector: Invalid value: " in status["message"]
    assert "only additions to spec.nodeSelector are allowed (no mutations or deletions)" in status["message"]
    code, _ = pods.refused("gated", {"spec": {"nodeSelector": {"pool": None}}})
    assert code == 422


def test_a_gated_pod_may_narrow_its_required_node_affinity_only(pods: Any) -> None:
    pods.create(gated_pod("gated", GATE))
    # Set when absent: any affinity narrows a pod that had none.
    assert pods.patch("gated", {"spec": {"affinity": required([TERM_A])}})["spec"]["affinity"] == required([TERM_A])
    # Each existing term may gain requirements after its own: narrower still.
    narrowed = pods.patch("gated", {"spec": {"affinity": required([TERM_A, TERM_B])}})
    assert narrowed["spec"]["affinity"] == required([TERM_A, TERM_B])
    path = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    # Changing or dropping a requirement, or adding a term (ORed: wider), is refused.
    code, status = pods.refused("gated", {"spec": {"affinity": required([TERM_B])}})
    assert code == 422 and f"{path}[0]: Invalid value: " in status["message"]
    assert "only additions are allowed (no mutations or deletions)" in status["message"]
    code, status = pods.refused("gated", {"spec": {"affinity": required([TERM_A, TERM_B], [TERM_A])}})
    assert code == 422
    assert "no additions/deletions to non-empty NodeSelectorTerms list are allowed" in status["message"]
    # The preferred node affinity may change freely.
    preferred = {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [TERM_B]}}]}
    patched = pods.patch("gated", {"spec": {"affinity": {"nodeAffinity": preferred}}})
    assert patched["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]


def test_scheduling_directives_are_fixed_once_the_gates_are_gone(pods: Any) -> None:
    pods.create(gated_pod("released", GATE))
    pods.patch("released", {"spec": {"schedulingGates": None, "affinity": required([TERM_A])}})  # in one write: allowed
    code, status = pods.refused("released", {"spec": {"nodeSelector": {"zone": "a"}}})
    assert code == 422
    assert "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`" in status["message"]
    assert "spec.nodeSelector" in status["message"]
    code, _ = pods.refused("released", {"spec": {"affinity": required([TERM_A, TERM_B])}})
    assert code == 422


def test_the_pod_spec_is_immutable_but_for_the_usual_fields(pods: Any) -> None:
    toleration = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    pods.create(gated_pod("pod", tolerations=[toleration]))
    image = pods.patch("pod", {"spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}})
    assert image["spec"]["containers"][0]["image"] == "busybox:1.36"
    added = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}
    assert len(pods.patch("pod", {"spec": {"tolerations": [toleration, added]}})["spec"]["tolerations"]) == 2
    code, status = pods.refused("pod", {"spec": {"tolerations": [added]}})
    assert code == 422 and status["details"]["causes"][0]["field"] == "spec.tolerations"
    assert pods.patch("pod", {"spec": {"activeDeadlineSeconds": 600}})["spec"]["activeDeadlineSeconds"] == 600
    code, _ = pods.refused("pod", {"spec": {"activeDeadlineSeconds": 900}})  # raising it is refused
    assert code == 422
    code, status = pods.refused("pod", {"spec": {"containers": [{"name": "main", "image": "busybox:1.36",
                                                                 "command": ["sleep", "1"]}]}})
    assert code == 422 and "pod updates may not change fields other than" in status["message"]
    code, _ = pods.refused("pod", {"spec": {"restartPolicy": "Never"}})
    assert code == 422
    # Metadata stays free, gated or not.
    assert pods.patch("pod", {"metadata": {"labels": {"a": "b"}}})["metadata"]["labels"] == {"a": "b"}


def test_binding_a_gated_pod_is_refused_and_allowed_once_ungated(pods: Any) -> None:
    pods.create(gated_pod("gated", GATE))
    code, status = api_error(lambda: pods.bind("gated", "node-a"))
    assert code == 409 and status["reason"] == "Conflict"
    assert status["message"] == 'Operation cannot be fulfilled on pods/binding "gated": pod gated has non-empty ' \
                                '.spec.schedulingGates'
    pods.patch("gated", {"spec": {"schedulingGates": None}})
    pods.bind("gated", "node-a")


# -- emulator-only: the scheduler stand-in, kubectl's STATUS column ------------------------------

@pytest.fixture()
def scheduling_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with EmulatedApiServer() as url:
        yield url, write_kubeconfig(url, tmp_path / "kubeconfig")


@requires_emulator
def test_the_scheduler_stand_in_leaves_gated_pods_pending(scheduling_server: tuple[str, Path]) -> None:
    url, _ = scheduling_server
    http(url, "POST", "/api/v1/nodes", node("node-a"))
    for body in (gated_pod("gated", GATE, schedulerName=None), gated_pod("free", schedulerName=None)):
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        assert http(url, "POST", "/api/v1/namespaces/default/pods", body)[0] == 201
    wait_for(lambda: http(url, "GET", "/api/v1/namespaces/default/pods/free")[1]["spec"].get("nodeName"), "free bound")
    gated = http(url, "GET", "/api/v1/namespaces/default/pods/gated")[1]
    assert not gated["spec"].get("nodeName")
    condition = scheduled_condition(gated)
    assert condition is not None and condition["reason"] == "SchedulingGated"  # not Unschedulable: never tried
    http(url, "PATCH", "/api/v1/namespaces/default/pods/gated", {"spec": {"schedulingGates": None}})
    bound = wait_for(lambda: http(url, "GET", "/api/v1/namespaces/default/pods/gated")[1]["spec"].get("nodeName"),
                     "ungated pod bound")
    assert bound == "node-a"


@requires_emulator
@needs_kubectl
def test_kubectl_shows_a_gated_pod_as_scheduling_gated(scheduling_server: tuple[str, Path]) -> None:
    url, kubeconfig = scheduling_server
    http(url, "POST", "/api/v1/namespaces/default/pods", gated_pod("gated", GATE))
    lines = kubectl(kubeconfig, "get", "pods").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:3] == ["gated", "0/1", "SchedulingGated"]
    refused = kubectl(kubeconfig, "patch", "pod", "gated", "--type", "json", "-p",
                      json.dumps([{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "x"}}]), check=False)
    assert refused.returncode != 0
    assert 'The Pod "gated" is invalid: spec.schedulingGates[1].name: Forbidden: only deletion is allowed, ' \
           "but found new scheduling gate 'x'" in refused.stderr
    kubectl(kubeconfig, "patch", "pod", "gated", "--type", "json", "-p",
            json.dumps([{"op": "remove", "path": "/spec/schedulingGates"}]))
    assert not json.loads(kubectl(kubeconfig, "get", "pod", "gated", "-o", "json").stdout)["spec"].get("schedulingGates")


def test_a_strategic_patch_deletes_a_gate_by_name_and_merges_containers_by_name(pods: Any) -> None:
    pods.create(gated_pod("smp", GATE, OTHER_GATE, containers=[{"name": "main", "image": "busybox",
                                                                "command": ["sleep", "60"]}]))
    smp = "application/strategic-merge-patch+json"
    patched = pods.patch("smp", {"spec": {"schedulingGates": [{"$patch": "delete", "name": GATE}]}}, smp)
    assert patched["spec"]["schedulingGates"] == [{"name": OTHER_GATE}]
    patched = pods.patch("smp", {"spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}}, smp)
    assert patched["spec"]["containers"] == [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "60"]}]
    code, status = pods.refused("smp", {"spec": {"schedulingGates": [{"name": "example.com/new"}]}}, smp)
    assert code == 422 and "only deletion is allowed" in status["message"]  # merged by name: an addition
