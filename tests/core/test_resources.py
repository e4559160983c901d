"""Placement by every resource a pod asks for, and by its node constraints (issue 11)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings

from gpuadmit.core.affinity import node_constraints, node_matches
from gpuadmit.core.engine import bound_by, decide
from gpuadmit.core.model import Action, Reason, Snapshot
from gpuadmit.core.nodes import exact_quantity, pod_requests, resource_amount
from gpuadmit.core.snapshot import build_snapshot

from .strategies import snapshots

NOW = 1_700_000_000.0


def node(name: str, gpus: int = 8, cpu: str | None = "64", memory: str | None = "512Gi", labels: dict | None = None,
         **extra: str) -> dict[str, Any]:
    allocatable: dict[str, Any] = {"nvidia.com/gpu": str(gpus), "pods": "110", **extra}
    if cpu is not None:
        allocatable["cpu"] = cpu
    if memory is not None:
        allocatable["memory"] = memory
    return {"kind": "Node", "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "H100", **(labels or {})}},
            "status": {"allocatable": allocatable}}


def workload(name: str, gpus: int = 1, replicas: int = 1, requests: dict | None = None, pod_spec: dict | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "train:1",
                                            "resources": {"requests": dict(requests or {})}}]}
    spec.update(pod_spec or {})
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "creationTimestamp": "2023-11-14T00:00:00Z"},
            "spec": {"class": "training", "gpus": gpus, "replicas": replicas, "template": {"spec": spec}}}


def other_pod(name: str, node_name: str, cpu: str = "0", gpus: int = 0, phase: str = "Running") -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": cpu}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "other"},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"requests": requests}}]},
            "status": {"phase": phase}}


def snapshot_of(nodes, workloads, pods=(), **kwargs) -> Snapshot:
    return build_snapshot(nodes, pods, [], workloads, [], now=NOW, **kwargs)


def by_name(snapshot: Snapshot) -> dict:
    return {d.name: d for d in decide(snapshot).decisions}


# --- a pod's request, as kube-scheduler computes it --------------------------------------------

def test_a_pod_request_is_the_larger_of_containers_plus_sidecars_and_the_init_peak_plus_overhead() -> None:
    spec = {
        "containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                       {"resources": {"limits": {"cpu": "500m", "rdma/hca": "1"}}}],  # the request defaults to the limit
        "initContainers": [
            {"resources": {"requests": {"cpu": "200m"}}, "restartPolicy": "Always"},  # a sidecar: adds to the sum
            {"resources": {"requests": {"cpu": "3", "memory": "512Mi"}}},  # runs beside the sidecar only: 3.2 CPUs peak
        ],
        "overhead": {"cpu": "100m"},
    }
    assert pod_requests(spec) == {"cpu": 3300, "memory": 2**30, "rdma/hca": 1, "pods": 1}


def test_quantities_are_exact_so_ten_tenths_make_one() -> None:
    assert sum(exact_quantity("0.1") for _ in range(10)) == 1  # type: ignore[misc]
    assert resource_amount("cpu", "0.1") == 100
    assert resource_amount("memory", "1.5Gi") == 3 * 2**29
    assert resource_amount("memory", "1e3") == 1000
    assert resource_amount("cpu", "nonsense") == 0
    assert exact_quantity("1e999999999") is None and resource_amount("cpu", "1e999999999") == 0  # at once, not a hang
    assert exact_quantity("1e-999999999") is None
    assert pod_requests({"containers": [{"resources": {"requests": {"cpu": "100m"}}}] * 10})["cpu"] == 1000


# --- node constraints ---------------------------------------------------------------------------

def test_required_node_affinity_operators_and_node_selector() -> None:
    spec = {
        "nodeSelector": {"zone": "b"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]},
                                  {"key": "spot", "operator": "DoesNotExist"},
                                  {"key": "rack", "operator": "NotIn", "values": ["r1"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["pinned"]}]},
        ]}}},
    }
    constraints = node_constraints(spec)
    assert node_matches(constraints, "n", {"zone": "b", "gen": "4"})
    assert not node_matches(constraints, "n", {"zone": "a", "gen": "4"})  # nodeSelector
    assert not node_matches(constraints, "n", {"zone": "b", "gen": "3"})  # Gt is strict
    assert not node_matches(constraints, "n", {"zone": "b", "gen": "4", "spot": ""})
    assert not node_matches(constraints, "n", {"zone": "b", "gen": "4", "rack": "r1"})
    assert node_matches(constraints, "pinned", {"zone": "b"})  # the second term, ORed
    assert not node_matches(node_constraints({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{}]}}}}), "n", {})  # an empty term matches nothing


def test_a_node_selector_and_required_affinity_decide_where_it_goes() -> None:
    nodes = [node("a", labels={"zone": "a"}), node("b", labels={"zone": "b"})]
    affinity = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}}
    decisions = by_name(snapshot_of(nodes, [
        workload("by-selector", pod_spec={"nodeSelector": {"zone": "b"}}),
        workload("by-affinity", pod_spec=affinity),
        workload("nowhere", pod_spec={"nodeSelector": {"zone": "c"}}),
    ]))
    assert [e.node for e in decisions["by-selector"].placement] == ["b"]
    assert [e.node for e in decisions["by-affinity"].placement] == ["b"]
    assert decisions["nowhere"].reason == Reason.NO_NODE_CAN_FIT
    assert "nodeSelector" in decisions["nowhere"].message


def test_avoided_nodes_are_not_eligible_for_that_workload_only() -> None:
    nodes = [node("a", gpus=12), node("b", gpus=4)]
    snapshot = snapshot_of(nodes, [workload("moved", gpus=4), workload("other", gpus=4)],
                           avoided_nodes={"team/moved": frozenset({"b"})})
    decisions = by_name(snapshot)
    assert [e.node for e in decisions["moved"].placement] == ["a"]  # best fit would be b
    assert [e.node for e in decisions["other"].placement] == ["b"]
    alone = by_name(snapshot_of([node("b", gpus=4)], [workload("moved", gpus=4)], avoided_nodes={"team/moved": frozenset({"b"})}))
    assert alone["moved"].action == Action.REJECT and "avoided" in alone["moved"].message


# --- every resource -------------------------------------------------------------------------------

def test_a_workload_that_fits_no_node_in_cpu_is_rejected_naming_cpu_and_the_largest_offer() -> None:
    decisions = by_name(snapshot_of([node("a", cpu="16"), node("b", cpu="32")], [workload("big", gpus=8, requests={"cpu": "64"})]))
    assert decisions["big"].reason == Reason.NO_NODE_CAN_FIT
    assert "64 CPUs" in decisions["big"].message and "32 CPUs" in decisions["big"].message


def test_cpu_used_by_other_pods_queues_it_naming_what_is_short() -> None:
    pods = [other_pod("p", "a", cpu="50")]
    decisions = by_name(snapshot_of([node("a", cpu="64")], [workload("w", gpus=8, requests={"cpu": "16"})], pods))
    assert decisions["w"].action == Action.QUEUE and decisions["w"].reason == Reason.INSUFFICIENT_CAPACITY
    assert "16 CPUs" in decisions["w"].message and "14 CPUs" in decisions["w"].message
    finished = [other_pod("p", "a", cpu="50", phase="Succeeded")]
    assert by_name(snapshot_of([node("a", cpu="64")], [workload("w", gpus=8, requests={"cpu": "16"})], finished))["w"].action == Action.ADMIT


def test_the_resource_that_binds_is_read_back_from_the_message_and_gpus_or_constraints_name_none() -> None:
    nodes = [node("a", cpu="64", memory="64Gi", labels={"zone": "a"})]
    pods = [other_pod("p", "a", cpu="50")]
    decisions = by_name(snapshot_of(nodes, [
        workload("cpu-now", gpus=1, requests={"cpu": "16"}),  # queued: CPU taken by another pod
        workload("memory-ever", gpus=1, requests={"memory": "128Gi"}),  # rejected: no node has that much
        workload("gpus", gpus=16),  # rejected: GPUs
        workload("selector", gpus=1, pod_spec={"nodeSelector": {"zone": "b"}}),  # rejected: constraints
    ], pods))
    assert {name: bound_by(d.message) for name, d in decisions.items()} == {
        "cpu-now": "cpu", "memory-ever": "memory", "gpus": None, "selector": None}


def test_an_extended_resource_a_node_does_not_list_it_has_none_of() -> None:
    nodes = [node("plain"), node("rdma", **{"rdma/hca": "1"})]
    decisions = by_name(snapshot_of(nodes, [workload("one", requests={"rdma/hca": "1"}), workload("two", requests={"rdma/hca": "1"})]))
    placed = [d for d in decisions.values() if d.action == Action.ADMIT]
    assert [e.node for d in placed for e in d.placement] == ["rdma"]  # one hca, one workload
    assert len(placed) == 1


def test_two_replicas_of_a_gang_on_one_node_add_up() -> None:
    # GPUs would put both 2-GPU replicas on "a"; 2 x 20 CPUs do not fit its 32, so one goes to "b".
    decisions = by_name(snapshot_of([node("a", gpus=4, cpu="32"), node("b", gpus=8, cpu="64")],
                                    [workload("gang", gpus=2, replicas=2, requests={"cpu": "20"})]))
    assert sorted((e.node, e.replicas) for e in decisions["gang"].placement) == [("a", 1), ("b", 1)]
    tight = by_name(snapshot_of([node("a", gpus=8, cpu="32")], [workload("gang", gpus=2, replicas=2, requests={"cpu": "20"})]))
    assert tight["gang"].reason == Reason.NO_NODE_CAN_FIT


def test_reservations_of_holding_workloads_hold_their_cpu_until_their_pods_exist() -> None:
    held = workload("held", gpus=2, requests={"cpu": "40"})
    held["status"] = {"phase": "Admitted", "admittedAt": "2023-11-14T00:00:00Z",
                      "placement": [{"node": "a", "gpus": 2, "replicas": 1}]}
    decisions = by_name(snapshot_of([node("a", gpus=8, cpu="64")], [held, workload("w", gpus=2, requests={"cpu": "40"})]))
    assert decisions["w"].reason == Reason.INSUFFICIENT_CAPACITY
    # Once its pod exists on the node, the pod's request counts instead, not both.
    pod = other_pod("held-0", "a", cpu="40", gpus=2)
    pod["metadata"].update(namespace="team", ownerReferences=[{"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
                                                                "name": "held", "uid": "uid-held", "controller": True}])
    with_pod = by_name(snapshot_of([node("a", gpus=8, cpu="80")], [held, workload("w", gpus=2, requests={"cpu": "40"})], [pod]))
    assert with_pod["w"].action == Action.ADMIT


def test_preempting_a_victim_frees_its_cpu_too() -> None:
    victim = workload("victim", gpus=1, requests={"cpu": "60"})
    victim["spec"]["class"] = "training"
    victim["status"] = {"phase": "Running", "admittedAt": "2023-11-13T00:00:00Z",
                        "placement": [{"node": "a", "gpus": 1, "replicas": 1}]}
    rich = workload("rich", gpus=1, requests={"cpu": "60"})
    rich["spec"]["class"] = "inference"
    rich["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.6"
    policy = {"kind": "MarginPolicy", "metadata": {"name": "default"},
              "spec": {"pricePerGPUHour": {"inference": 10, "training": 1}}}
    snapshot = build_snapshot([node("a", gpus=8, cpu="64")], [], [], [victim, rich], [policy], now=NOW)
    result = decide(snapshot)
    assert [p.name for p in result.preemptions] == ["victim"]
    assert {d.name: d.action for d in result.decisions}["rich"] == Action.ADMIT


# --- GPU-only work decides as by GPUs alone ---------------------------------------------------------

def _roomy(snapshot: Snapshot, rng: random.Random) -> Snapshot:
    """The same snapshot with CPU, memory and pods listed on every node, far more than anything requests,
    and CPU and memory requested by every workload: the engine's every-resource path."""
    nodes = tuple(replace(n, resources=(("cpu", 10**9), ("memory", 10**15), ("pods", 10**6)),
                          resources_used_by_pods=(("cpu", rng.randrange(1000)),)) for n in snapshot.nodes)
    asks = (("cpu", 500), ("memory", 2**30), ("pods", 1))
    pending = tuple(replace(w, requests=asks) for w in snapshot.pending)
    holding = tuple(replace(w, requests=asks, placement=tuple(replace(e, resources=asks) for e in w.placement)) for w in snapshot.holding)
    return replace(snapshot, nodes=nodes, pending=pending, holding=holding)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_resources_that_never_bind_change_no_decision(snapshot: Snapshot) -> None:
    gpu_only = decide(snapshot)
    every_resource = decide(_roomy(snapshot, random.Random(1)))
    assert every_resource.decisions == gpu_only.decisions
    assert every_resource.preemptions == gpu_only.preemptions


def test_a_gpu_only_dump_builds_the_same_snapshot_and_decisions_as_before() -> None:
    """Nodes that list only GPUs and templates without requests: nothing beyond GPUs is counted."""
    nodes = [node("a", cpu=None, memory=None), node("b", gpus=4, cpu=None, memory=None)]
    for n in nodes:
        del n["status"]["allocatable"]["pods"]
    workloads = [workload("w1", gpus=4), workload("w2", gpus=4, replicas=2), workload("w3", gpus=2, requests={"cpu": "8"}),
                 workload("w4", gpus=8)]
    snapshot = snapshot_of(nodes, workloads)
    assert snapshot.pending[0].requests == (("pods", 1),)
    from gpuadmit.core.inventory import Inventory
    inventory = Inventory.from_snapshot(snapshot)
    assert all(inventory.need_of(w) is None for w in snapshot.pending)
    # As before this change, when a workload carried nothing but GPUs:
    gpus_alone = replace(snapshot, pending=tuple(replace(w, requests=()) for w in snapshot.pending))
    assert decide(snapshot) == decide(gpus_alone)
    assert sum(d.action == Action.ADMIT for d in decide(snapshot).decisions) == 2


def test_the_exact_solver_honours_every_resource() -> None:
    from gpuadmit.core.exact import solve_exact

    # By GPUs both 4-GPU workloads fit node "a"; by CPU only one does, and "b" has no CPU to spare.
    snapshot = snapshot_of([node("a", gpus=8, cpu="32"), node("b", gpus=8, cpu="4")],
                           [workload("w1", gpus=4, requests={"cpu": "20"}), workload("w2", gpus=4, requests={"cpu": "20"})])
    exact = {d.name: d for d in solve_exact(snapshot).decisions}
    greedy = by_name(snapshot)
    assert sorted(d.action for d in exact.values()) == sorted(d.action for d in greedy.values()) == [Action.ADMIT, Action.QUEUE]
    assert [e.node for d in exact.values() for e in d.placement] == ["a"]
