"""The emulator's kube-scheduler stand-in and the ``pods/binding`` subresource (kubeapi_emulator.scheduler)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from kubeapi_emulator import EmulatedApiServer, write_kubeconfig
from kubeapi_emulator.__main__ import build_parser
from kubeapi_emulator.scheduler import affinity_matches, pod_requests, unschedulable_message
from tests.emulator.conftest import requires_emulator
from tests.emulator.test_kubectl import needs_kubectl

pytestmark = requires_emulator
PODS = "/api/v1/namespaces/default/pods"


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def node(name: str, cpu: str = "8", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    amounts = {"cpu": cpu, "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": spec,
            "status": {"allocatable": amounts, "capacity": amounts,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(name: str, cpu: str = "1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}], **spec}}


def scheduled_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == "PodScheduled"), None)


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def scheduled() -> Iterator[str]:
    with EmulatedApiServer() as url:
        yield url


@pytest.fixture()
def unscheduled() -> Iterator[str]:
    with EmulatedApiServer(scheduler=False) as url:
        yield url


# -- pure parts --------------------------------------------------------------------------------------

def test_requests_are_counted_as_kube_scheduler_counts_them() -> None:
    spec = {
        "containers": [{"resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}},
                       {"resources": {"limits": {"cpu": "1", "rdma/hca": "1"}}}],
        "initContainers": [{"resources": {"requests": {"cpu": "4"}}},  # runs alone, before the others
                           {"restartPolicy": "Always", "resources": {"requests": {"cpu": "250m"}}}],  # a sidecar
        "overhead": {"cpu": "100m"},
    }
    assert pod_requests({"spec": spec}) == {
        "cpu": Fraction(4) + Fraction(1, 10),  # the init container's 4 beats 1.5 + 0.25 of the rest, plus overhead
        "memory": Fraction(2**30), "rdma/hca": Fraction(1)}


def test_required_affinity_terms_are_ored_and_their_requirements_anded() -> None:
    gpu_node = node("n1", labels={"zone": "a", "size": "8"})
    pin = {"key": "metadata.name", "operator": "In", "values": ["n1"]}
    def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
        return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}}
    assert affinity_matches(affinity({"matchFields": [pin], "matchExpressions": [{"key": "size", "operator": "Gt", "values": ["4"]}]}), gpu_node)
    assert not affinity_matches(affinity({"matchFields": [pin], "matchExpressions": [{"key": "size", "operator": "Lt", "values": ["4"]}]}), gpu_node)
    assert affinity_matches(affinity({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                                     {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}), gpu_node)
    assert not affinity_matches(affinity({"matchFields": [{**pin, "values": ["n2"]}]}), gpu_node)
    assert not affinity_matches({**affinity({"matchFields": [pin]}), "nodeSelector": {"zone": "b"}}, gpu_node)
    assert affinity_matches({"nodeSelector": {"zone": "a"}}, gpu_node)


def test_the_message_counts_nodes_per_reason_in_sorted_order() -> None:
    failures = ["node(s) didn't match Pod's node affinity/selector", "Insufficient cpu",
                "node(s) didn't match Pod's node affinity/selector"]
    assert unschedulable_message(failures, 3) == \
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
    assert unschedulable_message([], 0) == "no nodes available to schedule pods"


def test_no_scheduler_flag() -> None:
    assert build_parser().parse_args([]).scheduler is True
    assert build_parser().parse_args(["--no-scheduler"]).scheduler is False


# -- the stand-in, over HTTP ---------------------------------------------------------------------------

def test_a_pending_pod_is_bound_to_a_node_that_satisfies_it(scheduled: str) -> None:
    for obj in (node("small", cpu="2", labels={"zone": "a"}), node("big", cpu="16", labels={"zone": "a"}),
                node("elsewhere", cpu="64", labels={"zone": "b"})):
        assert call(scheduled, "POST", "/api/v1/nodes", obj)[0] == 201
    assert call(scheduled, "POST", PODS, pod("p", cpu="4", nodeSelector={"zone": "a"}))[0] == 201
    bound = wait_for(lambda: (p := call(scheduled, "GET", f"{PODS}/p")[1])["spec"].get("nodeName") and p, "the pod to be bound")
    assert bound["spec"]["nodeName"] == "big"
    assert scheduled_condition(bound)["status"] == "True"
    # Another scheduler's pod is left alone.
    assert call(scheduled, "POST", PODS, pod("theirs", schedulerName="volcano"))[0] == 201
    time.sleep(0.3)
    assert not call(scheduled, "GET", f"{PODS}/theirs")[1]["spec"].get("nodeName")


def test_an_unschedulable_pod_is_told_why_in_kube_schedulers_words_and_bound_once_a_node_fits(scheduled: str) -> None:
    for obj in (node("a-small", cpu="2", labels={"zone": "a"}), node("b-1", labels={"zone": "b"}),
                node("b-2", labels={"zone": "b"})):
        call(scheduled, "POST", "/api/v1/nodes", obj)
    call(scheduled, "POST", PODS, pod("p", cpu="4", nodeSelector={"zone": "a"}))
    condition = wait_for(lambda: scheduled_condition(call(scheduled, "GET", f"{PODS}/p")[1]), "PodScheduled")
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False", "Unschedulable",
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.")
    # Taints, a cordon and the pinning affinity, as kube-scheduler words them.
    call(scheduled, "POST", "/api/v1/nodes", node("tainted", labels={"zone": "a"},
                                                    taints=[{"key": "gpu", "value": "x", "effect": "NoSchedule"}]))
    call(scheduled, "POST", "/api/v1/nodes", node("cordoned", labels={"zone": "a"}, unschedulable=True))
    pinned = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a-small"]}]}]}}}
    call(scheduled, "POST", PODS, pod("q", cpu="1", affinity=pinned, nodeSelector={"zone": "a"}))
    wait_for(lambda: (c := scheduled_condition(call(scheduled, "GET", f"{PODS}/p")[1])) and "5 nodes" in c["message"] and c,
             "the message to follow the new nodes")
    message = scheduled_condition(call(scheduled, "GET", f"{PODS}/p")[1])["message"]
    assert message == ("0/5 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {gpu: x}, "
                       "1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."), message
    bound = wait_for(lambda: (p := call(scheduled, "GET", f"{PODS}/q")[1])["spec"].get("nodeName") and p, "q to be bound")
    assert bound["spec"]["nodeName"] == "a-small"
    # A node that fits arrives: the pod is bound there, the condition turns True.
    call(scheduled, "POST", "/api/v1/nodes", node("a-big", cpu="32", labels={"zone": "a"}))
    bound = wait_for(lambda: (p := call(scheduled, "GET", f"{PODS}/p")[1])["spec"].get("nodeName") and p, "p to be bound")
    assert bound["spec"]["nodeName"] == "a-big" and scheduled_condition(bound)["status"] == "True"


def test_bound_requests_use_up_a_node(scheduled: str) -> None:
    call(scheduled, "POST", "/api/v1/nodes", node("only", cpu="3"))
    for name in ("p1", "p2", "p3"):
        call(scheduled, "POST", PODS, pod(name, cpu="1500m"))
    def settled() -> list[dict[str, Any]] | None:
        pods = call(scheduled, "GET", PODS)[1]["items"]
        return pods if all(scheduled_condition(p) for p in pods) else None
    pods = {p["metadata"]["name"]: p for p in wait_for(settled, "every pod to be decided")}
    assert [pods[n]["spec"].get("nodeName") for n in ("p1", "p2", "p3")] == ["only", "only", None]
    assert scheduled_condition(pods["p3"])["message"] == "0/1 nodes are available: 1 Insufficient cpu."



def test_a_node_that_changes_is_seen_anew_by_the_next_pass(scheduled: str) -> None:
    """Each node is parsed once per version (kept between passes): a new version must replace it."""
    call(scheduled, "POST", "/api/v1/nodes", node("grows", cpu="2"))
    call(scheduled, "POST", PODS, pod("p", cpu="4"))
    condition = wait_for(lambda: scheduled_condition(call(scheduled, "GET", f"{PODS}/p")[1]), "PodScheduled")
    assert condition["message"] == "0/1 nodes are available: 1 Insufficient cpu."
    amounts = {"cpu": "8", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8"}
    status, _ = call(scheduled, "PUT", "/api/v1/nodes/grows/status",
                     {**call(scheduled, "GET", "/api/v1/nodes/grows")[1],
                      "status": {"allocatable": amounts, "capacity": amounts,
                                 "conditions": [{"type": "Ready", "status": "True"}]}})
    assert status == 200
    bound = wait_for(lambda: (p := call(scheduled, "GET", f"{PODS}/p")[1])["spec"].get("nodeName") and p, "p to be bound")
    assert bound["spec"]["nodeName"] == "grows"

# -- the binding subresource, with the stand-in off (a test plays the scheduler) --------------------

def test_binding_sets_the_node_and_the_condition_once(unscheduled: str, tmp_path: Path) -> None:
    call(unscheduled, "POST", "/api/v1/nodes", node("n1"))
    call(unscheduled, "POST", PODS, pod("p"))
    time.sleep(0.3)
    unbound = call(unscheduled, "GET", f"{PODS}/p")[1]
    assert not unbound["spec"].get("nodeName") and scheduled_condition(unbound) is None  # nobody schedules

    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "annotations": {"why": "test"}},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    status, answer = call(unscheduled, "POST", f"{PODS}/p/binding", binding)
    assert (status, answer["kind"], answer["status"]) == (201, "Status", "Success")
    bound = call(unscheduled, "GET", f"{PODS}/p")[1]
    assert bound["spec"]["nodeName"] == "n1" and bound["metadata"]["annotations"] == {"why": "test"}
    assert scheduled_condition(bound)["status"] == "True"
    assert [r["name"] for r in call(unscheduled, "GET", "/api/v1")[1]["resources"] if r["name"] == "pods/binding"]

    status, answer = call(unscheduled, "POST", f"{PODS}/p/binding", binding)
    assert status == 409 and answer["reason"] == "Conflict" and 'already assigned to node "n1"' in answer["message"]
    call(unscheduled, "POST", PODS, pod("r"))
    status, answer = call(unscheduled, "POST", f"{PODS}/r/binding", {"metadata": {"name": "r"}, "target": {}})
    assert status == 422 and "target.name: Required value" in answer["message"]
    assert call(unscheduled, "POST", f"{PODS}/missing/binding", {**binding, "metadata": {"name": "missing"}})[0] == 404


@needs_kubectl
def test_kubectl_shows_the_node_once_the_stand_in_bound_the_pod(scheduled: str, tmp_path: Path) -> None:
    from tests.emulator.test_kubectl import kubectl
    kubeconfig = write_kubeconfig(scheduled, tmp_path / "kubeconfig")
    call(scheduled, "POST", "/api/v1/nodes", node("gpu-node-1"))
    call(scheduled, "POST", PODS, pod("p"))
    wait_for(lambda: call(scheduled, "GET", f"{PODS}/p")[1]["spec"].get("nodeName"), "the pod to be bound")
    wide = kubectl(kubeconfig, "get", "pods", "-o", "wide").stdout
    row = next(line for line in wide.splitlines() if line.startswith("p "))
    assert "gpu-node-1" in row.split(), wide


@needs_kubectl
def test_kubectl_binds_a_pod_through_the_subresource_when_a_person_plays_the_scheduler(unscheduled: str, tmp_path: Path) -> None:
    from tests.emulator.test_kubectl import kubectl
    kubeconfig = write_kubeconfig(unscheduled, tmp_path / "kubeconfig")
    call(unscheduled, "POST", "/api/v1/nodes", node("gpu-node-2"))
    call(unscheduled, "POST", PODS, pod("p"))
    before = next(line for line in kubectl(kubeconfig, "get", "pods", "-o", "wide").stdout.splitlines() if line.startswith("p "))
    assert "gpu-node-2" not in before and "<none>" in before.split(), before
    binding = tmp_path / "binding.json"
    binding.write_text(json.dumps({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                                   "target": {"apiVersion": "v1", "kind": "Node", "name": "gpu-node-2"}}))
    kubectl(kubeconfig, "create", "--raw", f"{PODS}/p/binding", "-f", str(binding))
    after = next(line for line in kubectl(kubeconfig, "get", "pods", "-o", "wide").stdout.splitlines() if line.startswith("p "))
    assert "gpu-node-2" in after.split(), after
    condition = kubectl(kubeconfig, "get", "pod", "p", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}")
    assert condition.stdout == "True"
    again = kubectl(kubeconfig, "create", "--raw", f"{PODS}/p/binding", "-f", str(binding), check=False)
    assert again.returncode != 0 and "already assigned" in again.stderr, again.stderr


def test_a_pass_with_no_pod_waiting_reads_no_pod() -> None:
    """The stand-in keeps which pods wait from the store's events: a change to a bound pod (its
    status, say) brings a pass that lists nothing, as kube-scheduler's queue holds only the
    pods waiting; a new pod is still bound."""
    server = EmulatedApiServer()
    with server as url:
        assert call(url, "POST", "/api/v1/nodes", node("n1", cpu="64"))[0] == 201
        for index in range(5):
            assert call(url, "POST", PODS, pod(f"p{index}"))[0] == 201
        wait_for(lambda: all(call(url, "GET", f"{PODS}/p{i}")[1]["spec"].get("nodeName") for i in range(5)),
                 "every pod bound")
        store = server.handler.store
        listed: list[str] = []
        real_list = store.list

        def counting_list(spec: Any, namespace: Any, matches: Any) -> Any:
            listed.append(spec.plural)
            return real_list(spec, namespace, matches)

        store.list = counting_list  # type: ignore[method-assign]
        assert call(url, "PATCH", f"{PODS}/p0/status", {"status": {"phase": "Running"}})[0] == 200
        time.sleep(0.3)  # the pass it brought has run
        assert "pods" not in listed
        assert call(url, "POST", PODS, pod("late"))[0] == 201
        wait_for(lambda: call(url, "GET", f"{PODS}/late")[1]["spec"].get("nodeName"), "the new pod bound")
