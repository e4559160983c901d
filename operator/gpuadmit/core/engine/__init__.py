"""One scheduling cycle: ``decide(snapshot) -> CycleResult``. Pure and deterministic.

The cycle, top to bottom:

1. Static checks per pending workload, from the nodes alone: ``InvalidSpec``
   (nonsense sizes), ``NoNodeCanFit`` (no eligible node could hold a replica
   even when empty, or the gang exceeds every eligible product),
   ``MarginBelowFloor`` (every product that could hold it earns less than the
   floor), then ``QueueTimeout``.
2. Rank the rest by effective margin: the best margin per GPU-hour among the
   products it may use, plus aging; ties by creation time, then key.
3. Place greedily, many per cycle, without head-of-line blocking: each
   workload goes on the product that earns most, best fit inside it, a gang all
   at once or not at all, training never into the inference reserve. One that
   does not fit may preempt cheaper, preemptible, long-enough-running work.
   Greedy in one order can lose margin (a 1-GPU job at 3.1 before an 8-GPU job
   at 3.0 on one 8-GPU node), so the placement runs in a few orders, the best
   ones are improved by ejection chains (move admitted work to make room for
   queued work when that earns more), and the one admitting the most margin
   per hour wins; ties go to rank order.
4. What did not fit is queued (``InsufficientCapacity`` or
   ``InferenceReserve``) with its position; past a namespace's queue limit,
   ``QueueFull``.

Nothing iterates over a dict or set whose order depends on the input order:
nodes are sorted by name, workloads by key, so a shuffled snapshot gives the
same result.

With GPUQuotas (``core/guarantee.py``), work within its tenant's guarantee ranks ahead of the
rest in every order, lending and caps are checked before each placement, a guaranteed workload
that does not fit may reclaim from borrowers, and the ejection chains are skipped.

The package follows the steps: ``prepare`` (1 and 2), ``passes`` (3: the greedy in
several orders, with preemption), ``chains`` (3: the ejection chains that improve the
best passes), ``messages`` (4: one decision per workload, with its words); ``cycle``
holds the data they pass along.
"""

from __future__ import annotations

import gc

from ..inventory import LayoutMemo
from ..model import CycleResult, Snapshot
from .chains import IMPROVE_PASSES, SWAP_UP_TO_NODES, improve_by_swaps
from .cycle import EPSILON, Admission, Cycle, PassResult, new_pass
from .messages import bound_by, finalize
from .passes import is_unbeatable, placement_orders, run_pass
from .prepare import prepare

__all__ = ["Admission", "Cycle", "LayoutMemo", "PassResult", "bound_by", "decide", "finalize", "new_pass", "prepare"]


def decide(snapshot: Snapshot, *, layouts: LayoutMemo | None = None) -> CycleResult:
    """Admit, queue, reject and preempt for one cycle; the same snapshot gives the same result.

    ``layouts``: a caller deciding cycle after cycle on the same nodes (the operator, a replay)
    keeps one, so the node pools and eligibility caches are not derived again each cycle."""
    # A cycle allocates many small objects and frees few: the cyclic collector would rescan
    # the growing heap again and again (a quarter of a 100k cycle) for nothing to collect.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decide(snapshot, layouts)
    finally:
        if collecting:
            gc.enable()


def _decide(snapshot: Snapshot, layouts: LayoutMemo | None) -> CycleResult:
    cycle = prepare(snapshot, layouts)
    candidates = cycle.placeable
    allow_preemption = bool(snapshot.policy.preemption.enabled) and any(cycle.victims_by_product.values())
    results: list[PassResult] = []
    seen_orders: set[tuple[int, ...]] = set()
    guaranteed = cycle.tenants.guaranteed_ranks if cycle.tenants is not None else None
    for order in placement_orders(candidates):
        if guaranteed:  # work within guarantee first in every order
            order.sort(key=lambda c: c.rank not in guaranteed)
        signature = tuple(c.rank for c in order)
        if signature in seen_orders:
            continue
        seen_orders.add(signature)
        results.append(run_pass(cycle, order, allow_preemption))
        if is_unbeatable(results[-1], candidates):
            break
    if not results:
        return finalize(cycle, new_pass(cycle))
    # Best value first; ties keep the earlier order (rank order is first of all).
    results = sorted(results, key=lambda r: -r.value)
    if not allow_preemption and cycle.tenants is None and len(cycle.inventory.nodes) <= SWAP_UP_TO_NODES and not is_unbeatable(results[0], candidates):
        for result in results[:IMPROVE_PASSES]:
            improve_by_swaps(cycle, result)
    best = results[0]
    for result in results[1:]:
        if result.value > best.value + EPSILON:
            best = result
    return finalize(cycle, best)
