"""The live snapshot (core.livesnapshot) against a snapshot built from scratch on random changes."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from gpuadmit.core.livesnapshot import ChangedKeys, LiveSnapshot
from gpuadmit.core.policy import DEFAULT_POLICY, parse_policy
from gpuadmit.core.snapshot import build_snapshot

from tests.core.test_snapshot import NOW, namespace, node, pod, workload

NODES = 6
WORKLOADS = 14
PODS = 16


class Cluster:
    """Raw objects by cache key, a version counter, and the keys changed since the last build."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.version = 1
        self.nodes = {f"n{i}": self._versioned(node(f"n{i}", gpus=rng.choice([4, 8]))) for i in range(NODES)}
        self.pods: dict[str, dict[str, Any]] = {}
        self.workloads: dict[str, dict[str, Any]] = {}
        self.namespaces = [namespace("team-a"), namespace("team-b", tier="premium")]
        self.changed: dict[str, set[str]] = {"nodes": set(), "pods": set(), "workloads": set()}
        for index in range(WORKLOADS):
            self.change_workload(index)

    def _versioned(self, obj: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["uid"] = uid or f"uid-{obj['metadata']['name']}"
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def change_node(self) -> None:
        name = f"n{self.rng.randrange(NODES + 1)}"  # n6 comes and goes
        self.changed["nodes"].add(name)
        if name in self.nodes and self.rng.random() < 0.3:
            del self.nodes[name]
            return
        fresh = copy.deepcopy(self.nodes.get(name) or node(name))
        fresh["status"]["allocatable"]["nvidia.com/gpu"] = str(self.rng.choice([0, 4, 8]))
        if self.rng.random() < 0.3:
            fresh["spec"] = {"unschedulable": self.rng.random() < 0.5}
        self.nodes[name] = self._versioned(fresh)

    def change_pod(self) -> None:
        name = f"p{self.rng.randrange(PODS)}"
        key = f"team-a/{name}"
        self.changed["pods"].add(key)
        if key in self.pods and self.rng.random() < 0.25:
            del self.pods[key]
            return
        owner = f"w{self.rng.randrange(WORKLOADS)}" if self.rng.random() < 0.7 else None
        fresh = pod(name, f"n{self.rng.randrange(NODES + 1)}" if self.rng.random() < 0.9 else None,
                    self.rng.randrange(0, 3), workload=owner,
                    phase=self.rng.choice(["Running", "Running", "Pending", "Succeeded", "Failed"]))
        fresh["spec"]["containers"][0]["resources"]["requests"] = {"cpu": str(self.rng.randrange(1, 4))}
        self.pods[key] = self._versioned(fresh, uid=f"uid-{name}-{self.version}" if self.rng.random() < 0.2 else None)

    def change_workload(self, index: int | None = None) -> None:
        index = self.rng.randrange(WORKLOADS) if index is None else index
        space = "team-a" if index % 3 else "team-b"
        key = f"{space}/w{index}"
        self.changed["workloads"].add(key)
        if key in self.workloads and self.rng.random() < 0.15:
            del self.workloads[key]
            return
        phase = self.rng.choice([None, "Queued", "Preempted", "Admitted", "Running", "Succeeded", "Rejected"])
        gpus: Any = self.rng.choice([1, 2, 4]) if self.rng.random() < 0.9 else "many"  # some invalid
        obj = workload(f"w{index}", phase=phase, gpus=gpus, namespace=space)
        if phase in ("Admitted", "Running"):
            obj["status"]["placement"] = [{"node": f"n{self.rng.randrange(NODES)}", "gpus": gpus, "replicas": 1}]
        self.workloads[key] = self._versioned(obj)

    def taken(self) -> ChangedKeys:
        changed = ChangedKeys(**{kind: frozenset(keys) for kind, keys in self.changed.items()})
        self.changed = {kind: set() for kind in self.changed}
        return changed


@pytest.mark.parametrize("seed", range(6))
def test_a_live_snapshot_equals_one_built_from_scratch_on_random_changes(seed: int) -> None:
    """Nodes, pods and workloads added, changed and removed, now and then the tiers, the avoided
    nodes, an override (an admission assumed) or the policy: every live snapshot equals the one
    ``build_snapshot`` makes of the same objects, and what did not change is the same object."""
    rng = random.Random(seed)
    cluster = Cluster(rng)
    live = LiveSnapshot()
    policy = DEFAULT_POLICY
    avoided: dict[str, frozenset[str]] = {}
    previous, overridden = None, {}
    for _step in range(60):
        for _ in range(rng.randrange(1, 4)):
            rng.choice([cluster.change_node, cluster.change_pod, cluster.change_pod, cluster.change_workload])()
        namespaces_before = list(cluster.namespaces)
        if rng.random() < 0.1:
            cluster.namespaces[0] = namespace("team-a", tier=rng.choice([None, "premium"]))
        if rng.random() < 0.1:
            policy = parse_policy({"metadata": {"name": "default"}, "spec": {"minMarginPerGPUHour": rng.choice([0.0, 0.5])}})
        if rng.random() < 0.2:
            avoided = {f"team-a/w{rng.randrange(1, WORKLOADS)}": frozenset({"n1"})} if rng.random() < 0.7 else {}
        overrides: dict[str, Any] = {}
        if rng.random() < 0.3 and cluster.workloads:
            key = rng.choice(sorted(cluster.workloads))
            assumed = copy.deepcopy(cluster.workloads[key])
            assumed["metadata"]["resourceVersion"] += "+assumed"
            assumed["status"] = {"phase": "Admitted", "placement": [{"node": "n0", "gpus": 1, "replicas": 1}]}
            overrides[key] = assumed if rng.random() < 0.8 else None
        seen_workloads = {**cluster.workloads, **overrides}
        expected = build_snapshot(
            list(cluster.nodes.values()), list(cluster.pods.values()), cluster.namespaces,
            [obj for obj in seen_workloads.values() if obj is not None], [policy], NOW, avoided_nodes=avoided)
        changed = cluster.taken()
        snapshot = live.build(
            nodes=cluster.nodes, pods=cluster.pods, namespaces=cluster.namespaces, workloads=cluster.workloads,
            policy=policy, now=NOW, changed=changed, overrides=overrides, avoided_nodes=avoided)
        assert snapshot == expected
        if previous is not None and policy is previous.policy and cluster.namespaces == namespaces_before and not changed.pods:
            # What was not read again is the very object (the engine compares by identity first).
            untouched = set(cluster.workloads) - (changed.workloads or set()) - set(overrides) - set(overridden)
            kept = {w.key: w for w in previous.holding}
            assert all(w is kept[w.key] for w in snapshot.holding if w.key in untouched and w.key in kept)
            assert snapshot.gpus_of_own_pods is previous.gpus_of_own_pods
        previous, overridden = snapshot, overrides


def test_unknown_changes_read_everything_again() -> None:
    """A caller that cannot say what changed (a kind listed again) gets a fresh read of it."""
    cluster = Cluster(random.Random(3))
    live = LiveSnapshot()
    args = dict(nodes=cluster.nodes, pods=cluster.pods, namespaces=cluster.namespaces, policy=DEFAULT_POLICY, now=NOW)
    live.build(workloads=cluster.workloads, **args)
    replaced = {key: copy.deepcopy(obj) for key, obj in cluster.workloads.items()}
    for obj in replaced.values():
        obj["spec"]["gpus"] = 3
        obj["metadata"]["resourceVersion"] += "0"
    told_nothing = live.build(workloads=replaced, changed=ChangedKeys(nodes=frozenset(), pods=frozenset(),
                                                                       workloads=frozenset()), **args)
    assert all(w.gpus_per_replica != 3 for w in told_nothing.pending)  # nothing was said to change: nothing read
    listed_again = live.build(workloads=replaced, changed=ChangedKeys(nodes=frozenset(), pods=frozenset(),
                                                                       workloads=None), **args)
    assert listed_again == build_snapshot(list(cluster.nodes.values()), list(cluster.pods.values()), cluster.namespaces,
                                          list(replaced.values()), [DEFAULT_POLICY], NOW)
    assert listed_again.pending and all(w.gpus_per_replica == 3 for w in listed_again.pending)


def test_one_pod_changed_reads_that_pod_its_node_and_nothing_else() -> None:
    """A pod that finishes re-reads its node (the GPUs it frees) and leaves every other node and
    every workload the very object it was."""
    cluster = Cluster(random.Random(5))
    cluster.pods = {}
    for index in range(4):
        fresh = pod(f"p{index}", f"n{index}", 1, workload=f"w{index}")
        cluster.pods[f"team-a/p{index}"] = cluster._versioned(fresh)
    live = LiveSnapshot()
    args = dict(nodes=cluster.nodes, pods=cluster.pods, namespaces=cluster.namespaces, workloads=cluster.workloads,
                policy=DEFAULT_POLICY, now=NOW)
    before = live.build(**args)
    finished = copy.deepcopy(cluster.pods["team-a/p2"])
    finished["status"]["phase"] = "Succeeded"
    cluster.pods["team-a/p2"] = cluster._versioned(finished)
    after = live.build(changed=ChangedKeys(nodes=frozenset(), pods=frozenset({"team-a/p2"}), workloads=frozenset()),
                       **args)
    changed_nodes = {b.name for b, a in zip(before.nodes, after.nodes, strict=True) if b is not a}
    assert changed_nodes == {"n2"}
    assert {n.name: n.gpus_used_by_pods for n in after.nodes}["n2"] == 0
    assert after.pending is before.pending and after.holding is before.holding
    assert after == build_snapshot(list(cluster.nodes.values()), list(cluster.pods.values()), cluster.namespaces,
                                   list(cluster.workloads.values()), [DEFAULT_POLICY], NOW)
