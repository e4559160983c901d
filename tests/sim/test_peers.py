"""Peer policies: ranking, placement strategy, preemption, gangs, and no overcommit."""

from __future__ import annotations

import dataclasses

from gpuadmit.core.model import (
    Action,
    GpuNode,
    PlacementEntry,
    Policy,
    Reason,
    Snapshot,
    Workload,
)
from gpuadmit.sim.peers import BINPACK, FIFO, PEERS, PRIORITY, decide_peer
from hypothesis import given, settings
from hypothesis import strategies as st


def workload(name, gpus=1, replicas=1, cls="training", created=0.0, **extra) -> Workload:
    return Workload(
        namespace="ns", name=name, gpus_per_replica=gpus, replicas=replicas, workload_class=cls,
        preemptible=cls == "training", created_at=created, queued_since=created, **extra,
    )


def running(name, node, gpus, cls="training", admitted_at=0.0) -> Workload:
    return workload(name, gpus=gpus, cls=cls, phase="Running", placement=(PlacementEntry(node, gpus),), admitted_at=admitted_at)


def snapshot(nodes, pending=(), holding=()) -> Snapshot:
    return Snapshot(nodes=tuple(nodes), holding=tuple(holding), pending=tuple(pending), policy=Policy(), now=1000.0)


def by_key(result):
    return {decision.key: decision for decision in result.decisions}


def test_fifo_admits_in_arrival_order_and_backfills_past_a_big_head():
    nodes = [GpuNode("a", 4), GpuNode("b", 4)]
    pending = [workload("big", gpus=8, replicas=1, created=1), workload("early", gpus=3, created=2), workload("late", gpus=3, created=3), workload("small", gpus=1, created=4)]
    decisions = by_key(decide_peer(snapshot(nodes, pending), FIFO))
    assert decisions["ns/big"].reason == Reason.NO_NODE_CAN_FIT  # 8 GPUs per replica, nodes have 4
    assert decisions["ns/early"].action == Action.ADMIT
    assert decisions["ns/late"].action == Action.ADMIT
    assert decisions["ns/small"].action == Action.ADMIT  # 1 left on each node


def test_fifo_ignores_class_and_priority_puts_inference_first():
    nodes = [GpuNode("a", 2)]
    pending = [workload("train", gpus=2, created=1), workload("serve", gpus=2, cls="inference", created=2)]
    fifo = by_key(decide_peer(snapshot(nodes, pending), FIFO))
    priority = by_key(decide_peer(snapshot(nodes, pending), PRIORITY))
    assert fifo["ns/train"].action == Action.ADMIT and fifo["ns/serve"].action == Action.QUEUE
    assert priority["ns/serve"].action == Action.ADMIT and priority["ns/train"].action == Action.QUEUE
    assert priority["ns/train"].queue_position == 1


def test_spread_takes_the_emptiest_node_and_binpack_the_fullest_that_fits():
    nodes = [GpuNode("a", 8, gpus_used_by_pods=6), GpuNode("b", 8, gpus_used_by_pods=2), GpuNode("c", 8)]
    pending = [workload("one", gpus=2)]
    assert by_key(decide_peer(snapshot(nodes, pending), PRIORITY))["ns/one"].placement == (PlacementEntry("c", 2),)
    assert by_key(decide_peer(snapshot(nodes, pending), BINPACK))["ns/one"].placement == (PlacementEntry("a", 2),)


def test_inference_preempts_the_youngest_training_that_frees_enough():
    nodes = [GpuNode("a", 4), GpuNode("b", 4)]
    holding = [running("old", "a", 4, admitted_at=10), running("young", "b", 4, admitted_at=500)]
    pending = [workload("serve", gpus=4, cls="inference", created=900)]
    result = decide_peer(snapshot(nodes, pending, holding), PRIORITY)
    assert [p.key for p in result.preemptions] == ["ns/young"]
    assert result.preemptions[0].preempted_by == "ns/serve"
    assert by_key(result)["ns/serve"].placement == (PlacementEntry("b", 4),)
    assert decide_peer(snapshot(nodes, pending, holding), FIFO).preemptions == ()


def test_inference_never_preempts_inference():
    nodes = [GpuNode("a", 4)]
    holding = [running("served", "a", 4, cls="inference")]
    result = decide_peer(snapshot(nodes, [workload("serve", gpus=4, cls="inference")], holding), BINPACK)
    assert result.preemptions == ()
    assert by_key(result)["ns/serve"].action == Action.QUEUE


def test_gang_is_all_or_nothing():
    nodes = [GpuNode("a", 4), GpuNode("b", 4, gpus_used_by_pods=2)]
    result = by_key(decide_peer(snapshot(nodes, [workload("gang", gpus=4, replicas=2), workload("pair", gpus=2, replicas=2, created=1)]), FIFO))
    assert result["ns/gang"].action == Action.QUEUE
    # Spread: the first replica takes the emptiest node (a: 4 free), the second the emptiest
    # left (a and b: 2 each; the name breaks the tie).
    assert result["ns/pair"].placement == (PlacementEntry("a", 4, replicas=2),)


def test_products_and_taints_are_honoured():
    from gpuadmit.core.model import Taint

    nodes = [GpuNode("a", 4, product="T4"), GpuNode("b", 4, product="A10"), GpuNode("c", 4, product="A10", taints=(Taint("x", None, "NoSchedule"),))]
    result = by_key(decide_peer(snapshot(nodes, [workload("w", gpus=4, replicas=2, gpu_products=("A10",))]), FIFO))
    assert result["ns/w"].reason == Reason.NO_NODE_CAN_FIT  # only one untainted A10 node
    result = by_key(decide_peer(snapshot(nodes, [workload("w", gpus=4, gpu_products=("A10",))]), FIFO))
    assert result["ns/w"].placement == (PlacementEntry("b", 4),)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=6),
    used=st.lists(st.integers(0, 8), min_size=1, max_size=6),
    pending=st.lists(st.tuples(st.sampled_from([1, 2, 4]), st.integers(1, 3), st.sampled_from(["training", "inference"])), max_size=12),
    holding_sizes=st.lists(st.sampled_from([1, 2, 4]), max_size=4),
    peer=st.sampled_from([FIFO, PRIORITY, BINPACK]),
)
def test_no_overcommit_and_one_decision_each(sizes, used, pending, holding_sizes, peer):
    nodes = [GpuNode(f"n{i}", size, gpus_used_by_pods=min(size, used[i % len(used)])) for i, size in enumerate(sizes)]
    free = {node.name: node.allocatable - node.gpus_used_by_pods for node in nodes}
    holding = []
    for index, gpus in enumerate(holding_sizes):
        node = next((name for name in sorted(free) if free[name] >= gpus), None)
        if node is not None:
            free[node] -= gpus
            holding.append(running(f"h{index}", node, gpus))
    workloads = [workload(f"w{i}", gpus=g, replicas=r, cls=c, created=i) for i, (g, r, c) in enumerate(pending)]
    result = decide_peer(snapshot(nodes, workloads, holding), peer)
    assert sorted(d.key for d in result.decisions) == sorted(w.key for w in workloads)
    for preemption in result.preemptions:
        for entry in preemption.freed:
            free[entry.node] += entry.gpus
    sizes_by_key = {w.key: w for w in workloads}
    for decision in result.decisions:
        if decision.action == Action.ADMIT:
            assert sum(e.gpus for e in decision.placement) == sizes_by_key[decision.key].total_gpus
            for entry in decision.placement:
                free[entry.node] -= entry.gpus
    assert all(count >= 0 for count in free.values()), free


def test_peers_model_quotas_as_their_counterparts_do() -> None:
    """fifo (Kueue nominal quota, no reclaim) admits work within quota first; priority (KAI
    deserved quota) also reclaims from borrowers, and never preempts work within its quota."""
    from gpuadmit.core.model import Quota

    node = GpuNode("n1", 8, "T4")
    borrower = Workload(namespace="misc", name="borrow", gpus_per_replica=8, replicas=1, workload_class="training",
                        preemptible=True, phase="Running", placement=(PlacementEntry("n1", 8),), admitted_at=1.0)
    owner = Workload(namespace="lab", name="owned", gpus_per_replica=8, replicas=1, workload_class="training",
                     created_at=50.0, queued_since=50.0)
    early = Workload(namespace="misc", name="early", gpus_per_replica=8, replicas=1, workload_class="training",
                     created_at=10.0, queued_since=10.0)
    quotas = {"lab": Quota("lab", {"*": 8})}
    base = Snapshot(nodes=(node,), holding=(borrower,), pending=(early, owner), policy=Policy(), now=100.0,
                    quotas=quotas, quota_of_namespace={"lab": "lab"})
    fifo = PEERS["fifo"](base)
    assert [d.name for d in fifo.decisions][:1] == ["owned"] and fifo.preemptions == ()  # first in line, no reclaim
    priority = PEERS["priority"](base)
    assert [(p.name, p.reason) for p in priority.preemptions] == [("borrow", Reason.RECLAIMED_BY_GUARANTEE)]
    assert {d.name: d.action for d in priority.decisions}["owned"] == Action.ADMIT
    # Work within its deserved quota is never a victim, not even of inference.
    protected = dataclasses.replace(borrower, namespace="lab")
    chat = Workload(namespace="misc", name="chat", gpus_per_replica=8, replicas=1, workload_class="inference")
    snapshot = dataclasses.replace(base, holding=(protected,), pending=(chat,))
    assert PEERS["priority"](snapshot).preemptions == ()
    assert PEERS["priority"](dataclasses.replace(snapshot, quotas={}, quota_of_namespace={})).preemptions != ()
