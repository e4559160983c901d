"""Step 3 of a cycle, the choice: the greedy passes in several orders, the best ones improved by
ejection chains, and the pass that admits the most margin per hour. Shared by the whole cycle
(``decide``) and by the incremental engine's cycles on part of the queue."""

from __future__ import annotations

from collections.abc import Container

from .chains import IMPROVE_PASSES, SWAP_UP_TO_NODES, improve_by_swaps
from .cycle import EPSILON, Cycle, PassResult, new_pass
from .passes import is_unbeatable, placement_orders, run_pass


def choose_pass(cycle: Cycle, *, all_orders: bool | None = None, may_preempt: Container[int] | None = None) -> PassResult:
    """Step 3 on the cycle's placeable candidates: the greedy in several orders, the best improved
    by ejection chains; the pass admitting the most margin per hour (ties: rank order).

    The incremental engine runs it on a part of the queue: ``all_orders`` says whether the whole
    queue is small enough for every order (None: judge by these candidates), ``may_preempt`` which
    ranks may try preemption (None: the first ``MAX_PREEMPTION_ATTEMPTS_PER_PASS`` that do not fit)."""
    candidates = cycle.placeable
    allow_preemption = bool(cycle.policy.preemption.enabled) and any(cycle.victims_by_product.values())
    results: list[PassResult] = []
    seen_orders: set[tuple[int, ...]] = set()
    guaranteed = cycle.tenants.guaranteed_ranks if cycle.tenants is not None else None
    for order in placement_orders(candidates, all_orders):
        if guaranteed:  # work within guarantee first in every order
            order.sort(key=lambda c: c.rank not in guaranteed)
        signature = tuple(c.rank for c in order)
        if signature in seen_orders:
            continue
        seen_orders.add(signature)
        results.append(run_pass(cycle, order, allow_preemption, may_preempt))
        if is_unbeatable(results[-1], candidates):
            break
    if not results:
        return new_pass(cycle)
    # Best value first; ties keep the earlier order (rank order is first of all).
    results = sorted(results, key=lambda r: -r.value)
    if not allow_preemption and cycle.tenants is None and len(cycle.inventory.nodes) <= SWAP_UP_TO_NODES and not is_unbeatable(results[0], candidates):
        for result in results[:IMPROVE_PASSES]:
            improve_by_swaps(cycle, result)
    best = results[0]
    for result in results[1:]:
        if result.value > best.value + EPSILON:
            best = result
    return best
