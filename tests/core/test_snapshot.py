"""Raw objects -> Snapshot: flattening dumps, sorting workloads by phase, GPUs in use, speed."""

from __future__ import annotations

import copy
import random
import time
from typing import Any

import pytest

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import PlacementEntry, Policy
from gpuadmit.core.policy import DEFAULT_POLICY
from gpuadmit.core.snapshot import build_snapshot, gpus_of_own_pods, objects_by_kind, tiers_by_namespace

NOW = 1_795_700_000.0
TEMPLATE = {"spec": {"containers": [{"name": "t", "image": "pytorch", "command": ["torchrun", "train.py"]}]}}


def node(name: str, gpus: int = 8, product: str = "NVIDIA-A100") -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(name: str, node_name: str | None, gpus: int, workload: str | None = None, namespace: str = "team-a", phase: str = "Running") -> dict[str, Any]:
    labels = {"gpuadmit.io/workload": workload} if workload else {}
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if node_name:
        spec["nodeName"] = node_name
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if workload:
        metadata["ownerReferences"] = [{"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": workload,
                                        "uid": f"uid-{workload}", "controller": True}]
    return {"kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": phase}}


def namespace(name: str, tier: str | None = None) -> dict[str, Any]:
    labels = {"gpuadmit.io/tier": tier} if tier else {}
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def workload(name: str, phase: str | None = None, gpus: Any = 2, namespace: str = "team-a", **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "GPUWorkload",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-11-26T09:00:00Z"},
        "spec": {"gpus": gpus, "template": TEMPLATE},
    }
    if phase is not None or status:
        obj["status"] = {"phase": phase, **status}
    return obj


def policy(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {"kind": "MarginPolicy", "metadata": {"name": name}, "spec": spec}


def test_objects_by_kind_flattens_lists_and_typed_lists() -> None:
    dump = [
        {"kind": "List", "items": [node("a"), {"kind": "List", "items": [namespace("n")]}]},
        {"kind": "NodeList", "items": [{"metadata": {"name": "b"}}]},  # API lists: items carry no kind
        {"kind": "GPUWorkloadList", "items": []},
        {"kind": "PodList"},
        workload("w"),
        None,  # an empty YAML document
    ]
    grouped = objects_by_kind(dump)
    assert [obj["metadata"]["name"] for obj in grouped["Node"]] == ["a", "b"]
    assert grouped["Node"][1]["kind"] == "Node"
    assert [obj["metadata"]["name"] for obj in grouped["Namespace"]] == ["n"]
    assert [obj["metadata"]["name"] for obj in grouped["GPUWorkload"]] == ["w"]
    assert "" not in grouped and "Pod" not in grouped


def test_objects_by_kind_sets_aside_what_is_not_an_object() -> None:
    grouped = objects_by_kind(["text", 3, {"metadata": {"name": "kindless"}}, {"kind": 7}, {"kind": "List", "items": "x"}])
    assert len(grouped[""]) == 5
    assert set(grouped) == {""}


def test_objects_by_kind_does_not_copy_objects_that_have_a_kind() -> None:
    obj = node("a")
    assert objects_by_kind([{"kind": "List", "items": [obj]}])["Node"][0] is obj


def test_tiers_and_own_pods() -> None:
    assert tiers_by_namespace([namespace("a", "gold"), namespace("b"), {"metadata": None}, "x"]) == {"a": "gold"}  # type: ignore[list-item]
    pods = [
        pod("w-0", "n1", 4, workload="w"),
        pod("w-1", "n1", 4, workload="w"),
        pod("w-2", "n2", 4, workload="w"),
        pod("v-0", "n2", 2, workload="v", namespace="team-b"),
        pod("done-0", "n2", 2, workload="done", phase="Succeeded"),
        pod("pending-0", None, 2, workload="w"),
        pod("foreign", "n1", 1),
    ]
    assert gpus_of_own_pods(pods) == {("team-a/w", "n1"): 8, ("team-a/w", "n2"): 4, ("team-b/v", "n2"): 2}
    # The label alone makes nobody's pod ours (a ReplicaSet's pod may carry it): not hidden in w's reservation.
    squatter = pod("w-9", "n1", 4)
    squatter["metadata"]["labels"] = {"gpuadmit.io/workload": "w"}
    squatter["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "w", "controller": True}]
    assert gpus_of_own_pods([*pods, squatter]) == gpus_of_own_pods(pods)


def test_build_snapshot_sorts_workloads_by_phase() -> None:
    workloads = [
        workload("new"),
        workload("queued", "Queued"),
        workload("preempted", "Preempted"),
        workload("admitted", "Admitted", placement=[{"node": "gpu-1", "gpus": 2}]),
        workload("running", "Running", placement=[{"node": "gpu-2", "gpus": 2}]),
        workload("done", "Succeeded"),
        workload("failed", "Failed"),
        workload("rejected", "Rejected"),
        workload("weird-phase", "Sleeping"),
        workload("bad", gpus=0),
        workload("bad-but-rejected", "Rejected", gpus=0),
        workload("bad-and-queued", "Queued", gpus=99),
    ]
    snapshot = build_snapshot([node("gpu-1"), node("gpu-2")], [], [], workloads, [], NOW)
    assert [w.name for w in snapshot.pending] == ["new", "preempted", "queued", "weird-phase"]
    assert [w.name for w in snapshot.holding] == ["admitted", "running"]
    assert snapshot.holding[1].placement == (PlacementEntry("gpu-2", 2, 1),)
    assert [(w.name, w.field) for w in snapshot.invalid] == [("bad", "spec.gpus"), ("bad-and-queued", "spec.gpus")]
    assert snapshot.now == NOW and snapshot.policy == DEFAULT_POLICY


def test_build_snapshot_counts_gpus_of_every_non_terminal_bound_pod() -> None:
    pods = [pod("ours", "gpu-1", 4, workload="w"), pod("theirs", "gpu-1", 2), pod("old", "gpu-2", 8, phase="Failed")]
    snapshot = build_snapshot([node("gpu-1"), node("gpu-2"), node("cpu", gpus=0)], pods, [], [], [], NOW)
    assert [(n.name, n.gpus_used_by_pods) for n in snapshot.nodes] == [("gpu-1", 6), ("gpu-2", 0)]
    assert snapshot.gpus_of_own_pods == {("team-a/w", "gpu-1"): 4}


def test_build_snapshot_applies_tiers_and_the_named_policy() -> None:
    snapshot = build_snapshot(
        [], [], [namespace("team-a", "gold")], [workload("w")],
        [policy("other", agingPerHour=5), policy("default", agingPerHour=1)], NOW,
    )  # fmt: skip
    assert snapshot.pending[0].tier == "gold"
    assert snapshot.policy.aging_per_hour == 1.0
    other = build_snapshot([], [], [], [], [policy("other", agingPerHour=5)], NOW, policy_name="other")
    assert other.policy.aging_per_hour == 5.0


def test_build_snapshot_takes_a_ready_policy_and_refuses_an_invalid_one() -> None:
    kept = Policy(aging_per_hour=3.0)
    assert build_snapshot([], [], [], [], [kept], NOW).policy is kept
    with pytest.raises(SpecError) as raised:
        build_snapshot([], [], [], [], [policy(inferenceReserveFraction=2)], NOW)
    assert raised.value.field == "spec.inferenceReserveFraction"


def test_build_snapshot_does_not_depend_on_input_order() -> None:
    nodes = [node(f"n{i}") for i in range(20)]
    workloads = [workload(f"w{i}", namespace=f"ns{i % 3}") for i in range(30)]
    first = build_snapshot(nodes, [], [], workloads, [], NOW)
    rng = random.Random(7)
    rng.shuffle(nodes)
    rng.shuffle(workloads)
    assert build_snapshot(nodes, [], [], workloads, [], NOW) == first


def test_build_snapshot_leaves_its_input_untouched() -> None:
    objects = [node("a"), pod("p", "a", 1), namespace("team-a"), workload("w"), workload("x", gpus=0), policy()]
    before = copy.deepcopy(objects)
    build_snapshot([objects[0]], [objects[1]], [objects[2]], objects[3:5], [objects[5]], NOW)
    assert objects == before


def test_nameless_invalid_workloads_are_left_to_the_caller() -> None:
    nameless = workload("x", gpus=0)
    del nameless["metadata"]["name"]
    assert build_snapshot([], [], [], [nameless, "junk"], [], NOW).invalid == ()  # type: ignore[list-item]


def make_cluster(node_count: int, workload_count: int, seed: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Distinct objects (as a parsed dump would hold them), a few template shapes among them."""
    rng = random.Random(seed)
    products = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB", "NVIDIA-L4"]
    nodes = [node(f"gpu-{i:05d}", 8, products[i % 3]) for i in range(node_count)]
    images = [f"registry.example.com/team-{i}/trainer:{i}" for i in range(50)]
    workloads = []
    for i in range(workload_count):
        obj = workload(f"w-{i:06d}", gpus=rng.choice([1, 2, 4, 8]), namespace=f"ns-{i % 100}")
        obj["spec"]["template"] = {"spec": {"containers": [{"name": "main", "image": rng.choice(images), "command": ["python", "train.py"]}]}}
        workloads.append(obj)
    return nodes, workloads


@pytest.mark.slow
def test_a_snapshot_of_10000_nodes_and_100000_workloads_builds_in_seconds() -> None:
    nodes, workloads = make_cluster(10_000, 100_000)
    started = time.perf_counter()
    snapshot = build_snapshot(nodes, [], [], workloads, [], NOW)
    elapsed = time.perf_counter() - started
    print(f"build_snapshot: 10,000 nodes + 100,000 workloads in {elapsed:.2f} s")
    assert len(snapshot.nodes) == 10_000 and len(snapshot.pending) == 100_000
    assert elapsed < 10.0  # about 1.5 s here; generous because the machine is shared


def test_an_object_listed_twice_counts_once_and_the_later_one_wins() -> None:
    snapshot = build_snapshot(
        [node("gpu-1", gpus=8), node("gpu-1", gpus=4)], [], [],
        [workload("w", gpus=2), workload("w", gpus=4), workload("v", gpus=0), workload("v", gpus=1)], [], NOW,
    )  # fmt: skip
    assert [(n.name, n.allocatable) for n in snapshot.nodes] == [("gpu-1", 4)]
    assert [(w.name, w.gpus_per_replica) for w in snapshot.pending] == [("v", 1), ("w", 4)]
    assert snapshot.invalid == ()


def test_parse_memo_reuses_unchanged_workloads_and_reparses_changed_ones() -> None:
    from gpuadmit.core.policy import parse_policy
    from gpuadmit.core.snapshot import ParseMemo

    def versioned(name: str, version: str, **kwargs: Any) -> dict[str, Any]:
        obj = workload(name, **kwargs)
        obj["metadata"].update(uid=f"uid-{name}", resourceVersion=version)
        return obj

    memo = ParseMemo()
    first_policy = parse_policy(policy(minMarginPerGPUHour=0.1))
    objs = [versioned("a", "1"), versioned("b", "1", phase="Queued", queuePosition=1)]
    spaces = [namespace("team-a", "premium")]
    one = build_snapshot([node("n1")], [], spaces, objs, [first_policy], time.time(), memo=memo)
    two = build_snapshot([node("n1")], [], spaces, objs, [first_policy], time.time(), memo=memo)
    assert [w for w in two.pending] == [w for w in one.pending]
    assert all(w2 is w1 for w1, w2 in zip(one.pending, two.pending))  # reused, not parsed again

    changed = [versioned("a", "2", gpus=4), objs[1]]  # a changed (new resourceVersion)
    three = build_snapshot([node("n1")], [], spaces, changed, [first_policy], time.time(), memo=memo)
    by_name = {w.name: w for w in three.pending}
    assert by_name["a"].gpus_per_replica == 4 and by_name["b"] is {w.name: w for w in two.pending}["b"]

    # A new policy object or a new tier for the namespace: parsed again, as without a memo.
    other_policy = parse_policy(policy(minMarginPerGPUHour=0.1))
    for policy_in_force, spaces_now in ((other_policy, spaces), (first_policy, [namespace("team-a", "standard")])):
        with_memo = build_snapshot([node("n1")], [], spaces_now, changed, [policy_in_force], time.time(), memo=memo)
        without = build_snapshot([node("n1")], [], spaces_now, changed, [policy_in_force], time.time())
        assert with_memo.pending == without.pending
        assert all(a is not b for a, b in zip(with_memo.pending, three.pending))
