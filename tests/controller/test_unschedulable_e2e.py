"""The operator lets the scheduler bind (issue 11), against the emulator started with
``--no-scheduler``: the test plays kube-scheduler. Pods carry the pinning affinity and the
template's nodeSelector and no nodeName; a pod reported Unschedulable for longer than
``--unschedulable-seconds`` gives its reservation back (pods deleted, workload requeued with
reason Unschedulable and the scheduler's message, a Warning Event), and nothing is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuadmit.core.pods import pinned_node
from gpuadmit.core.timefmt import format_rfc3339
from tests.e2e_harness import Cluster, wait_until
from tests.invariants import ClusterState, overcommit_violations

pytestmark = [pytest.mark.e2e, pytest.mark.emulator]

GRACE_SECONDS = 3.0
POLICY = {"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0}}
SCHEDULER_SAYS = "0/2 nodes are available: 2 Insufficient cpu."


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The emulator without its kube-scheduler stand-in: pods stay unbound unless the test binds them."""
    with Cluster.start(tmp_path / "cluster", scheduler=False) as handle:
        if handle.real:
            pytest.skip("plays kube-scheduler: emulator only")
        yield handle


def template() -> dict[str, Any]:
    return {"spec": {"nodeSelector": {"pool": "gpu"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                     "containers": [{"name": "train", "image": "pytorch",
                                     "resources": {"requests": {"cpu": "4"}}}]}}


def bind(cluster: Cluster, namespace: str, pod: str, node: str) -> None:
    cluster.raw("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/binding",
                {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                 "target": {"apiVersion": "v1", "kind": "Node", "name": node}}, content_type="application/json")


def report_unschedulable(cluster: Cluster, namespace: str, pod: str, message: str) -> None:
    """What kube-scheduler writes when no node can take the pod."""
    cluster.raw("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod}/status", {"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": None, "lastTransitionTime": format_rfc3339(time.time())}]}})


def test_pods_are_pinned_not_bound_and_an_unschedulable_one_gives_its_reservation_back(cluster, operator_factory) -> None:
    for name in cluster.add_gpu_nodes(2, gpus=8):
        cluster.raw("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"labels": {"pool": "gpu"}}})
    cluster.apply_policy(POLICY)
    operator_factory("--unschedulable-seconds", str(GRACE_SECONDS))
    cluster.create_workload("team-a", "runs", gpus=8, template=template())
    cluster.create_workload("team-a", "stuck", gpus=4, template=template())
    placed = {name: cluster.wait_for_phase("team-a", name, "Admitted")["placement"] for name in ("runs", "stuck")}

    pods: dict[str, dict[str, Any]] = {}
    for name in ("runs", "stuck"):
        (pod,) = wait_until(lambda n=name: cluster.pods_of("team-a", n) or None, what=f"the pod of {name}")
        pods[name] = pod
        spec = pod["spec"]
        assert not spec.get("nodeName"), spec  # kube-scheduler binds, not gpuadmit
        assert spec["nodeSelector"] == {"pool": "gpu"} and spec["tolerations"] == template()["spec"]["tolerations"]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [placed[name][0]["node"]]}]}]
        assert pinned_node(spec) == placed[name][0]["node"]
    # Unbound pods count on their pinned nodes: nothing is overcommitted meanwhile.
    assert overcommit_violations(ClusterState.from_dump(cluster.dump()), settled=True) == []

    # The test binds one, as kube-scheduler would; the harness's kubelet then runs it.
    bind(cluster, "team-a", pods["runs"]["metadata"]["name"], placed["runs"][0]["node"])
    cluster.set_workload_pods_phase("team-a", "runs", "Running")
    cluster.wait_for_phase("team-a", "runs", "Running")

    # The other is reported Unschedulable: within the grace period nothing happens...
    stuck_pod = pods["stuck"]["metadata"]
    report_unschedulable(cluster, "team-a", stuck_pod["name"], SCHEDULER_SAYS)
    reported_at = time.monotonic()
    time.sleep(GRACE_SECONDS / 2)
    assert cluster.get_workload("team-a", "stuck")["status"]["placement"] == placed["stuck"]
    assert [p["metadata"]["uid"] for p in cluster.pods_of("team-a", "stuck")] == [stuck_pod["uid"]]

    # ... after it, the reservation is given back: the pod deleted, the workload requeued with the
    # scheduler's words, a Warning Event; the workload itself is not lost.
    def warned() -> list[dict[str, Any]] | None:
        return [e for e in cluster.events_for("team-a", "stuck") if e["reason"] == "Unschedulable"] or None
    (event,) = wait_until(warned, 30, what="the Unschedulable Event")
    assert time.monotonic() - reported_at >= GRACE_SECONDS - 1  # lastTransitionTime is to the second
    assert event["type"] == "Warning" and SCHEDULER_SAYS in event["message"], event
    assert f"pod {stuck_pod['name']} could not be scheduled on node {placed['stuck'][0]['node']}" in event["message"]
    wait_until(lambda: stuck_pod["uid"] not in [p["metadata"]["uid"] for p in cluster.pods_of("team-a", "stuck")],
               what="the unschedulable pod deleted")
    status = cluster.get_workload("team-a", "stuck")["status"]
    assert status["phase"] in ("Queued", "Admitted"), status  # requeued, and decided again
    admitted = {c["type"]: c for c in status["conditions"]}["Admitted"]
    # The node it was stuck on is avoided for a while and the other node is full: it waits (or, once
    # the avoidance has passed, is admitted again), never placed back on the avoided node now.
    assert admitted["reason"] in ("Unschedulable", "InsufficientCapacity", "Admitted"), admitted
    if status["phase"] == "Admitted":
        assert [entry["node"] for entry in status["placement"]] != [placed["stuck"][0]["node"]], status
    # The running workload was not touched, and no GPU is promised twice.
    assert cluster.get_workload("team-a", "runs")["status"]["phase"] == "Running"
    assert overcommit_violations(ClusterState.from_dump(cluster.dump())) == []
