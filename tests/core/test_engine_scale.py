"""decide() on the benchmark's kind of cluster, scaled down: the invariants hold with
preemption, reserve, aging, gangs, taints and cordons all at once, and the benchmark's
generator keeps producing valid snapshots."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import benchmarks.engine as bench
from gpuadmit.core.engine import decide
from gpuadmit.core.model import Action

from .strategies import snapshots
from .test_engine_properties import gpus_placed_by_node


@pytest.fixture
def small_bench_cluster(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bench, "NODES", 300)
    return bench.build_snapshot(3000)


def test_a_benchmark_cycle_keeps_every_invariant(small_bench_cluster) -> None:
    snapshot = small_bench_cluster
    result = decide(snapshot)
    assert sorted(d.key for d in result.decisions) == sorted(w.key for w in snapshot.pending)
    nodes = {n.name: n for n in snapshot.nodes}
    own = {}
    for (key, node), gpus in snapshot.gpus_of_own_pods.items():
        own[node] = own.get(node, 0) + gpus
    preempted = {p.key for p in result.preemptions}
    for name, gpus in gpus_placed_by_node(snapshot, result).items():
        # Holding workloads' own pods are counted in gpus_used_by_pods and in their placement.
        held_pods = sum(g for (key, node), g in snapshot.gpus_of_own_pods.items() if node == name and key not in preempted)
        freed_pods = own.get(name, 0) - held_pods
        assert gpus - held_pods <= nodes[name].allocatable - (nodes[name].gpus_used_by_pods - freed_pods), name
    actions = {d.action for d in result.decisions}
    assert actions == {Action.ADMIT, Action.QUEUE, Action.REJECT}
    assert result.preemptions  # the cluster is built so that preemption happens
    assert decide(snapshot) == result


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(max_nodes=12, max_pending=16, max_holding=6))
def test_many_random_cycles_never_overcommit_and_decide_everyone_once(snapshot) -> None:
    result = decide(snapshot)
    assert sorted(d.key for d in result.decisions) == sorted([w.key for w in snapshot.pending] + [i.key for i in snapshot.invalid])
    nodes = {node.name: node for node in snapshot.nodes}
    for name, gpus in gpus_placed_by_node(snapshot, result).items():
        assert gpus <= nodes[name].allocatable - nodes[name].gpus_used_by_pods, name
