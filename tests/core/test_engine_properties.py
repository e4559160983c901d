"""decide() invariants on random snapshots (hypothesis)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from gpuadmit.core.engine import decide
from gpuadmit.core.inventory import hard_taints, tolerates
from gpuadmit.core.model import Action, Reason, Snapshot

from .strategies import snapshots

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gpus_placed_by_node(snapshot: Snapshot, result) -> dict[str, int]:
    """GPUs taken per node: what this cycle admits plus what holding workloads keep (victims freed)."""
    preempted = {p.key for p in result.preemptions}
    taken: dict[str, int] = {}
    for decision in result.decisions:
        for entry in decision.placement:
            taken[entry.node] = taken.get(entry.node, 0) + entry.gpus
    for workload in snapshot.holding:
        if workload.key not in preempted:
            for entry in workload.placement:
                taken[entry.node] = taken.get(entry.node, 0) + entry.gpus
    return taken


@FAST
@given(snapshots())
def test_never_overcommits_a_node(snapshot: Snapshot) -> None:
    result = decide(snapshot)
    nodes = {node.name: node for node in snapshot.nodes}
    for name, gpus in gpus_placed_by_node(snapshot, result).items():
        node = nodes[name]
        assert gpus <= node.allocatable - node.gpus_used_by_pods, name


@FAST
@given(snapshots())
def test_every_pending_and_invalid_workload_is_decided_exactly_once(snapshot: Snapshot) -> None:
    result = decide(snapshot)
    keys = [d.key for d in result.decisions]
    assert sorted(keys) == sorted([w.key for w in snapshot.pending] + [i.key for i in snapshot.invalid])
    for decision in result.decisions:
        assert decision.message, decision
        assert (decision.action == Action.ADMIT) == bool(decision.placement)
        assert (decision.action == Action.QUEUE) == (decision.queue_position is not None)
    invalid = {i.key: i.field for i in snapshot.invalid}
    for decision in result.decisions[len(result.decisions) - len(invalid) :]:
        assert decision.reason == Reason.INVALID_SPEC and decision.field == invalid[decision.key]
    positions = [d.queue_position for d in result.decisions if d.queue_position is not None]
    assert positions == list(range(1, len(positions) + 1))


@FAST
@given(snapshots())
def test_admissions_honour_gangs_products_memory_tolerations_and_floor(snapshot: Snapshot) -> None:
    result = decide(snapshot)
    nodes = {node.name: node for node in snapshot.nodes}
    pending = {w.key: w for w in snapshot.pending}
    for decision in result.decisions:
        if decision.action != Action.ADMIT:
            continue
        workload = pending[decision.key]
        assert sum(e.replicas for e in decision.placement) == workload.replicas  # all or nothing
        assert sum(e.gpus for e in decision.placement) == workload.total_gpus
        assert all(e.gpus == e.replicas * workload.gpus_per_replica for e in decision.placement)
        products = {nodes[e.node].product for e in decision.placement}
        assert len(products) == 1  # one product per gang
        for entry in decision.placement:
            node = nodes[entry.node]
            assert node.schedulable
            assert not workload.gpu_products or node.product in workload.gpu_products
            assert node.memory_mib >= workload.min_gpu_memory_mib
            assert all(tolerates(workload.tolerations, taint) for taint in hard_taints(node.taints))
        margin = snapshot.policy.margin_per_gpu_hour(workload.workload_class, workload.tier, products.pop())
        assert decision.margin_per_gpu_hour == round(margin, 4)
        assert margin >= snapshot.policy.min_margin_per_gpu_hour - 1e-9


# Properties that hold "for every preemption" or "whenever the reserve binds" prove nothing on
# examples with no preemption or an idle reserve: on the general strategy, 0 of 200 drawn
# examples preempted and 1 in 200 met the reserve. These tests draw clusters that make the case
# common and count the examples that exercised it: too few fails the test.
RESERVE_EXAMPLES, PREEMPTION_EXAMPLES = 150, 80
MIN_EXERCISED = 5


def test_training_never_eats_the_inference_reserve() -> None:
    exercised = []

    @settings(FAST, max_examples=RESERVE_EXAMPLES)
    @given(snapshots(preemption=False, reserve=True, usable_nodes=True, max_nodes=4, max_pending=24))
    def check(snapshot: Snapshot) -> None:
        result = decide(snapshot)
        product_of = {node.name: node.product for node in snapshot.nodes}
        total: dict[str, int] = {}
        for node in snapshot.nodes:
            total[node.product] = total.get(node.product, 0) + node.allocatable
        training: dict[str, int] = {}
        pending = {w.key: w for w in snapshot.pending}
        held = [(w, w.placement) for w in snapshot.holding if w.workload_class == "training"]
        admitted = [(pending[d.key], d.placement) for d in result.decisions if d.action == Action.ADMIT and pending[d.key].workload_class == "training"]
        for _, placement in admitted:
            for entry in placement:
                training[product_of[entry.node]] = training.get(product_of[entry.node], 0) + entry.gpus
        held_by_product: dict[str, int] = {}
        for _, placement in held:
            for entry in placement:
                held_by_product[product_of[entry.node]] = held_by_product.get(product_of[entry.node], 0) + entry.gpus
        for product, gpus in training.items():
            cap = total[product] - math.ceil(snapshot.policy.inference_reserve_fraction * total[product] - 1e-9)
            assert held_by_product.get(product, 0) + gpus <= max(cap, held_by_product.get(product, 0)), product
        refused_by_reserve = sum(d.reason == Reason.INFERENCE_RESERVE for d in result.decisions)
        target(float(refused_by_reserve))
        if refused_by_reserve:
            event("the reserve refused training work")
            exercised.append(refused_by_reserve)

    check()
    assert len(exercised) >= MIN_EXERCISED, f"only {len(exercised)} examples met the reserve"


def test_preemption_only_takes_eligible_victims_once() -> None:
    exercised = []

    @settings(FAST, max_examples=PREEMPTION_EXAMPLES)
    @given(snapshots(preemption=True, crowded=True))
    def check(snapshot: Snapshot) -> None:
        result = decide(snapshot)
        holding = {w.key: w for w in snapshot.holding}
        rules = snapshot.policy.preemption
        assert len({p.key for p in result.preemptions}) == len(result.preemptions)
        decisions = {d.key: d for d in result.decisions}
        product_of = {node.name: node.product for node in snapshot.nodes}
        for preemption in result.preemptions:
            victim = holding[preemption.key]
            assert victim.preemptible and snapshot.now - victim.admitted_at >= rules.min_runtime_seconds
            preemptor = decisions[preemption.preempted_by]
            assert preemptor.action == Action.ADMIT and preemption.name in preemptor.message
            victim_margin = snapshot.policy.margin_per_gpu_hour(victim.workload_class, victim.tier, product_of[victim.placement[0].node])
            assert preemptor.margin_per_gpu_hour - victim_margin >= rules.min_margin_gain_per_gpu_hour - 1e-3
            assert preemption.freed == victim.placement
        target(float(len(result.preemptions)))
        if result.preemptions:
            event("preempted")
            exercised.append(len(result.preemptions))

    check()
    assert len(exercised) >= MIN_EXERCISED, f"only {len(exercised)} examples preempted anything"


@FAST
@given(snapshots())
def test_deterministic_and_independent_of_input_order(snapshot: Snapshot) -> None:
    first = decide(snapshot)
    assert decide(snapshot) == first
    rng = random.Random(7)
    shuffled = replace(
        snapshot,
        nodes=tuple(rng.sample(snapshot.nodes, len(snapshot.nodes))),
        pending=tuple(rng.sample(snapshot.pending, len(snapshot.pending))),
        holding=tuple(rng.sample(snapshot.holding, len(snapshot.holding))),
        invalid=tuple(rng.sample(snapshot.invalid, len(snapshot.invalid))),
    )
    assert decide(shuffled) == first


@FAST
@given(st.lists(snapshots(), min_size=2, max_size=4))
def test_a_layout_memo_kept_between_cycles_changes_no_decision(cycle_snapshots: list[Snapshot]) -> None:
    """The operator and the replay keep a LayoutMemo between cycles; each cycle must decide as if
    built afresh, whether the nodes stayed, changed usage or changed altogether."""
    from gpuadmit.core.engine import LayoutMemo

    memo = LayoutMemo()
    first = cycle_snapshots[0]
    # The same nodes again with other usage, then the drawn snapshots as they come.
    busier = replace(first, nodes=tuple(replace(n, gpus_used_by_pods=n.gpus_used_by_pods + 1) for n in first.nodes))
    for snapshot in [first, busier, first, *cycle_snapshots[1:]]:
        assert decide(snapshot, layouts=memo) == decide(snapshot)
