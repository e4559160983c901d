"""The free-GPU ledger: free counts, eligibility, tolerations, best fit, gangs."""

from __future__ import annotations

import pytest

from gpuadmit.core.inventory import Inventory, hard_taints, tolerates
from gpuadmit.core.model import GpuNode, PlacementEntry, Taint, Toleration

from .strategies import make_holding, make_node, make_workload

NO_SCHEDULE = Taint("dedicated", "inference", "NoSchedule")


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        (Toleration("dedicated", "Equal", "inference", "NoSchedule"), NO_SCHEDULE, True),
        (Toleration("dedicated", "Equal", "training", "NoSchedule"), NO_SCHEDULE, False),
        (Toleration("dedicated", "Exists", None, "NoSchedule"), NO_SCHEDULE, True),
        (Toleration("dedicated", "Exists", "ignored-value"), NO_SCHEDULE, True),
        (Toleration("other", "Exists"), NO_SCHEDULE, False),
        (Toleration(None, "Exists"), NO_SCHEDULE, True),  # empty key + Exists tolerates everything
        (Toleration("", "Exists", None, "NoExecute"), NO_SCHEDULE, False),  # ...but only its effect
        (Toleration(None, "Equal", "inference"), NO_SCHEDULE, False),  # empty key needs Exists
        (Toleration("dedicated", "Equal", "inference", None), NO_SCHEDULE, True),  # no effect: all effects
        (Toleration("dedicated", "Equal", "inference", ""), NO_SCHEDULE, True),
        (Toleration("dedicated", "Equal", "inference", "NoExecute"), NO_SCHEDULE, False),
        (Toleration("gpu", "Equal", None), Taint("gpu", None, "NoSchedule"), True),  # both values empty
    ],
)
def test_toleration_semantics_follow_kubernetes(toleration: Toleration, taint: Taint, expected: bool) -> None:
    assert tolerates([toleration], taint) is expected


def test_tolerates_an_iterable_of_taints_only_when_every_one_is_tolerated() -> None:
    maintenance = Taint("maintenance", None, "NoExecute")
    assert tolerates([Toleration("dedicated", "Exists"), Toleration("maintenance", "Exists")], [NO_SCHEDULE, maintenance])
    assert not tolerates([Toleration("dedicated", "Exists")], [NO_SCHEDULE, maintenance])
    assert tolerates([], [])


def test_prefer_no_schedule_is_not_a_hard_taint() -> None:
    assert hard_taints([Taint("spot", "true", "PreferNoSchedule"), NO_SCHEDULE]) == (NO_SCHEDULE,)


def test_free_gpus_subtract_pods_and_the_unstarted_part_of_reservations() -> None:
    nodes = [make_node("a", 8, gpus_used_by_pods=3), make_node("b", 8)]
    # 4 GPUs reserved on a, 2 of them already requested by its own pods (counted in the 3 above).
    holding = [make_holding("job", {"a": 4, "b": 1})]
    inventory = Inventory(nodes, holding, {("team-b/job", "a"): 2})
    assert inventory.free == [8 - 3 - (4 - 2), 8 - 1]


def test_free_gpus_are_clamped_at_zero_and_at_allocatable() -> None:
    nodes = [make_node("over", 4, gpus_used_by_pods=9), make_node("odd", 2, gpus_used_by_pods=-5)]
    inventory = Inventory(nodes, [make_holding("ghost", {"missing-node": 3})])
    assert inventory.free == [2, 0]  # nodes in name order: odd, over


def test_releasing_a_reservation_on_an_overbooked_node_never_creates_phantom_gpus() -> None:
    # 8 allocatable, 8 requested by other pods, and a 4-GPU reservation on top: -4 raw, 0 usable.
    inventory = Inventory([make_node("a", 8, gpus_used_by_pods=8)], [make_holding("job", {"a": 4})])
    inventory.release((PlacementEntry("a", 4),))
    assert inventory.free == [0]


def test_unschedulable_and_untolerated_nodes_are_not_eligible() -> None:
    nodes = [
        make_node("cordoned", 8, schedulable=False, unschedulable_reason="cordoned"),
        make_node("tainted", 8, taints=(NO_SCHEDULE,)),
        make_node("soft", 8, taints=(Taint("spot", "true", "PreferNoSchedule"),)),
    ]
    inventory = Inventory(nodes)
    plain = make_workload("plain")
    tolerant = make_workload("tolerant", tolerations=(Toleration("dedicated", "Exists"),))
    names = lambda w: sorted(inventory.nodes[i].name for p in inventory.eligible_pools(w) for i in inventory.pools[p].node_indices)  # noqa: E731
    assert names(plain) == ["soft"]
    assert names(tolerant) == ["soft", "tainted"]
    exclusions = inventory.exclusions(plain)
    assert (exclusions.untolerated_taint, exclusions.unschedulable) == (1, 1)
    assert "dedicated=inference:NoSchedule" in exclusions.describe()


def test_product_and_memory_constraints_select_pools() -> None:
    nodes = [make_node("h", 8, "NVIDIA-H100"), make_node("a", 8, "NVIDIA-A100"), make_node("l", 4, "NVIDIA-L4")]
    inventory = Inventory(nodes)
    by_product = lambda w: sorted(inventory.pools_by_product(inventory.eligible_pools(w)))  # noqa: E731
    assert by_product(make_workload("any")) == ["NVIDIA-A100", "NVIDIA-H100", "NVIDIA-L4"]
    assert by_product(make_workload("h", gpu_products=("NVIDIA-H100", "NVIDIA-B200"))) == ["NVIDIA-H100"]
    assert by_product(make_workload("big", min_gpu_memory_mib=40000)) == ["NVIDIA-A100", "NVIDIA-H100"]


def test_alike_nodes_share_a_pool() -> None:
    nodes = [make_node(f"n{i}", 8) for i in range(10)] + [make_node("t", 8, taints=(NO_SCHEDULE,))]
    inventory = Inventory(nodes)
    assert sorted(len(pool.node_indices) for pool in inventory.pools) == [1, 10]


def test_best_fit_takes_the_smallest_free_count_that_holds_the_replica_ties_by_name() -> None:
    nodes = [make_node("a", 8), make_node("b", 4, gpus_used_by_pods=1), make_node("c", 4, gpus_used_by_pods=1), make_node("d", 2)]
    inventory = Inventory(nodes)
    pools = inventory.eligible_pools(make_workload("w"))
    assert inventory.place(pools, 3, 1) == (PlacementEntry("b", 3),)  # b and c have 3 free; b by name
    assert inventory.place(pools, 3, 1) == (PlacementEntry("c", 3),)
    assert inventory.place(pools, 2, 1) == (PlacementEntry("d", 2),)
    assert inventory.place(pools, 5, 1) == (PlacementEntry("a", 5),)
    assert inventory.free == [3, 0, 0, 0]


def test_a_gang_is_placed_whole_or_not_at_all() -> None:
    inventory = Inventory([make_node("a", 8), make_node("b", 4)])
    pools = inventory.eligible_pools(make_workload("w"))
    assert inventory.place(pools, 4, 4) is None
    assert inventory.free == [8, 4]  # nothing half-placed
    assert inventory.place(pools, 4, 3) == (PlacementEntry("a", 8, replicas=2), PlacementEntry("b", 4))
    assert inventory.free == [0, 0]


def test_copies_are_independent() -> None:
    inventory = Inventory([make_node("a", 8)])
    pools = inventory.eligible_pools(make_workload("w"))
    clone = inventory.copy()
    clone.place(pools, 8, 1)
    assert (inventory.free, clone.free) == ([8], [0])
    assert inventory.place(pools, 8, 1) is not None


def test_take_and_release_are_inverse_and_keep_best_fit_consistent() -> None:
    inventory = Inventory([make_node("a", 8), make_node("b", 8)])
    pools = inventory.eligible_pools(make_workload("w"))
    inventory.take((PlacementEntry("a", 6),))
    assert inventory.max_free(pools) == 8
    assert inventory.replicas_that_fit(pools, 2) == 1 + 4
    inventory.release((PlacementEntry("a", 6),))
    assert inventory.free == [8, 8]
    assert inventory.place(pools, 8, 2) == (PlacementEntry("a", 8), PlacementEntry("b", 8))


def test_duplicate_node_names_keep_one_node_whatever_the_order() -> None:
    first = [make_node("a", 8), make_node("a", 4)]
    assert Inventory(first).allocatable == Inventory(list(reversed(first))).allocatable
    assert len(Inventory(first).nodes) == 1


def test_nodes_with_nonsense_names_or_products_are_kept_without_crashing() -> None:
    inventory = Inventory([make_node(None, 4, product=None), make_node("b", 4)])  # type: ignore[arg-type]
    assert [n.name for n in inventory.nodes] == ["None", "b"]
    assert [pool.product for pool in inventory.pools] == ["", "NVIDIA-A100"]


def test_unrelease_undoes_a_release_exactly_even_where_own_pods_hold_more_than_the_reservation() -> None:
    holding = make_holding("job", {"a": 2, "b": 4})
    own_pods = {("team-b/job", "a"): 6}  # its pods on a request more than the reservation says
    inventory = Inventory([make_node("a", 8, gpus_used_by_pods=6), make_node("b", 8, gpus_used_by_pods=1)], [holding], own_pods)
    before = (list(inventory.raw_free), list(inventory.free), [list(c) for c in inventory.count_by_free], list(inventory.top_free))
    given = inventory.release(holding.placement, holding.key, own_pods)
    assert given == ((0, 6), (1, 4))
    assert inventory.free == [8, 7]
    inventory.unrelease(given)
    assert (inventory.raw_free, inventory.free, inventory.count_by_free, inventory.top_free) == before
    assert inventory.best_fit_node(inventory.eligible_pools(make_workload("w", 1)), 1) == 0


def test_the_placement_strategy_decides_where_replicas_go() -> None:
    from gpuadmit.core.inventory import SPREAD

    nodes = [make_node("a", 8, gpus_used_by_pods=5), make_node("b", 8, gpus_used_by_pods=2), make_node("c", 8, gpus_used_by_pods=2),
             make_node("d", 4, "NVIDIA-L4")]
    workload = make_workload("w", 2, gpu_products=("NVIDIA-A100",))
    best_fit, spread = Inventory(nodes), Inventory(nodes, strategy=SPREAD)
    pools = best_fit.eligible_pools(workload)
    # Best fit (most-allocated): the fullest node that holds the replica. Spread: the emptiest, ties by name.
    assert best_fit.place(pools, 2, 1) == (PlacementEntry("a", 2, 1),)
    assert spread.place(pools, 2, 1) == (PlacementEntry("b", 2, 1),)
    # A gang spreads one replica at a time, each where most is free (now c with 6, then b and c with 4 each: b by name, then c).
    assert spread.place(pools, 2, 3) == (PlacementEntry("b", 2, 1), PlacementEntry("c", 4, 2))
    assert spread.copy().strategy == SPREAD
    with pytest.raises(ValueError, match="unknown placement strategy"):
        Inventory(nodes, strategy="random")  # type: ignore[arg-type]


def test_a_layout_memo_reuses_the_pools_of_unchanged_nodes_only() -> None:
    from gpuadmit.core.inventory import LayoutMemo

    memo = LayoutMemo()
    nodes = [make_node("a", 8), make_node("b", 8, gpus_used_by_pods=3)]
    first = Inventory(nodes, layouts=memo)
    again = Inventory([make_node("a", 8, gpus_used_by_pods=8), make_node("b", 8)], layouts=memo)  # only usage changed
    assert again.layout is first.layout and again.free == [0, 8]
    resized = Inventory([make_node("a", 4), make_node("b", 8)], layouts=memo)
    assert resized.layout is not first.layout and resized.allocatable == [4, 8]
    assert Inventory(nodes).layout is not first.layout  # without a memo nothing is shared


def test_an_inventory_from_a_memo_equals_one_built_afresh_as_nodes_and_usage_change() -> None:
    """The memo patches the GPUs used on the nodes whose object changed; the ledger it gives must be
    the one built from every node (free counts, buckets' answers, tops), cycle after cycle."""
    import dataclasses
    import random

    from gpuadmit.core.inventory import SPREAD, LayoutMemo

    rng = random.Random(5)
    nodes = [make_node(f"n{i:02d}", rng.choice([2, 4, 8]), rng.choice(["NVIDIA-A100", "NVIDIA-L4"])) for i in range(30)]
    memo = LayoutMemo()
    workload = make_workload("w", 1)
    for cycle in range(60):
        for _ in range(rng.randint(0, 4)):
            i = rng.randrange(len(nodes))
            nodes[i] = dataclasses.replace(nodes[i], gpus_used_by_pods=rng.randint(0, 9))
        if cycle % 17 == 16:  # a node changes shape: the layout is derived again
            nodes[0] = dataclasses.replace(nodes[0], schedulable=not nodes[0].schedulable)
        holding = [make_holding("h", {nodes[rng.randrange(len(nodes))].name: 1})]
        strategy = SPREAD if cycle % 2 else "best-fit"
        fresh = Inventory(list(nodes), holding, strategy=strategy)
        kept = Inventory(tuple(nodes), holding, strategy=strategy, layouts=memo)
        assert (kept.raw_free, kept.free, kept.count_by_free, kept.top_free) == (fresh.raw_free, fresh.free, fresh.count_by_free, fresh.top_free)
        pools = fresh.eligible_pools(workload)
        for size in (1, 2, 4):
            assert kept.copy().place(pools, size, 3) == fresh.copy().place(pools, size, 3)


def test_a_layout_with_nodes_added_equals_one_derived_afresh() -> None:
    """The incremental engine derives the layout of a node added from the last one: it must be the
    layout every whole cycle builds (node order, pools and their histograms, positions); a node
    that would form a new pool is refused."""
    import random

    from gpuadmit.core.inventory import _NodeLayout

    rng = random.Random(16)
    taint = Taint("dedicated", "inference", "NoSchedule")

    def node(name: str) -> GpuNode:
        return make_node(name, rng.choice([1, 2, 4, 8]), rng.choice(["NVIDIA-A100", "NVIDIA-L4"]),
                         taints=(taint,) if rng.random() < 0.2 else (), schedulable=rng.random() > 0.1,
                         resources=(("cpu", 64_000),) if rng.random() < 0.5 else ())

    nodes = [node(f"n{i:03d}") for i in range(40)]
    layout = _NodeLayout(nodes)
    grew = 0
    for step in range(30):
        added = [node(f"n{rng.randrange(1000):03d}x{step}") for _ in range(rng.choice([1, 1, 2]))]
        if step == 7:
            added.append(make_node("odd", 8, "NVIDIA-H100"))  # a product no pool has: a new pool
        rng.shuffle(nodes := nodes + added)
        grown, fresh = layout.with_nodes_added(nodes, added), _NodeLayout(nodes)
        derived = grown[0] if grown is not None else None
        if derived is None:
            assert len(fresh.pools) > len(layout.pools), step
            nodes = [n for n in nodes if n not in added]
            continue
        grew += 1
        for field in ("nodes", "index_by_name", "products_offered", "allocatable", "pool_of", "pools",
                      "resource_allocatable", "listed_resources", "index_of_position"):
            assert getattr(derived, field) == getattr(fresh, field), (step, field)
        layout = derived
    assert grew > 20
