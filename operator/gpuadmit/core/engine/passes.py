"""Step 2 of a cycle, placement passes: the greedy in one order of the candidates (best
product first, best fit inside it, a gang all at once or not at all, training never into
the inference reserve), with preemption of cheaper, long-enough-running work for what does
not fit, and the orders worth trying."""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Sequence

from ..inventory import Inventory
from ..model import PlacementEntry, Reason
from .cycle import (
    EPSILON,
    Admission,
    Candidate,
    Cycle,
    Option,
    PassResult,
    Victim,
    new_pass,
    number_or,
)

# Bounds on the preemption search, so 100k pending stay linear: victims per attempt,
# and attempts per placement pass (in placement order, so the best-ranked try first).
MAX_VICTIMS_PER_PREEMPTION = 64
MAX_PREEMPTION_ATTEMPTS_PER_PASS = 5_000
# The alternative placement orders cost one pass each; past this many candidates only
# rank order and total-margin order run (large cycles stay in seconds).
ALL_ORDERS_UP_TO = 5_000


# The orders the passes run in, as sort keys: rank order first (the policy's own), then orders
# that pack more margin per hour; the first two always, all when the queue is small. Within
# workloads of one kind (same size, options) every order is rank order: the incremental engine
# relies on it to walk each order kind by kind. Each key ends with the rank, which the incremental
# engine leaves out to compare candidates it has not ranked (their rank orders are in rank order).
ORDER_KEYS: tuple[Callable[[Candidate], tuple], ...] = (
    lambda c: (c.rank,),
    lambda c: (-c.effective_margin * c.workload.total_gpus, c.rank),
    lambda c: (-c.workload.total_gpus, c.rank),
    lambda c: (-c.effective_margin, -c.workload.total_gpus, c.rank),
    # Workloads with fewer products first, so flexible ones do not take what picky ones need.
    lambda c: (len(c.options), -c.effective_margin * c.workload.total_gpus, c.rank),
)


def order_keys(count: int, all_orders: bool | None = None) -> tuple[Callable[[Candidate], tuple], ...]:
    """The keys of the orders to run for ``count`` candidates (``all_orders`` None: judged by it)."""
    everything = all_orders if all_orders is not None else count <= ALL_ORDERS_UP_TO
    return ORDER_KEYS if everything else ORDER_KEYS[:2]


def placement_orders(candidates: Sequence[Candidate], all_orders: bool | None = None) -> Iterable[list[Candidate]]:
    """The candidates (in rank order) in each order of ``order_keys``."""
    yield list(candidates)
    for key in order_keys(len(candidates), all_orders)[1:]:
        yield sorted(candidates, key=key)


def is_unbeatable(result: PassResult, candidates: Sequence[Candidate]) -> bool:
    """Everyone admitted on its best product, without preemption: no other order can earn more."""
    return len(result.admitted) == len(candidates) and all(
        a.option is c.options[0] and not a.victims for c in candidates for a in (result.admitted[c.rank],)
    )


def run_pass(cycle: Cycle, order: Iterable[Candidate], allow_preemption: bool, may_preempt: Container[int] | None = None,
             result: PassResult | None = None) -> PassResult:
    """One greedy pass in ``order``. ``may_preempt``: the ranks that may try preemption (None: the
    first ``MAX_PREEMPTION_ATTEMPTS_PER_PASS`` that do not fit, as a whole cycle counts them).
    ``result``: the pass to fill (None: a new one), for an order made lazily from it."""
    result = result if result is not None else new_pass(cycle)
    tenants, ledger = cycle.tenants, result.quota
    inventory = result.inventory
    # (shape, product, GPUs per replica) -> fewest replicas that failed: free GPUs only shrink
    # during a pass (except when preemption frees some, which clears it), so a bigger gang fails too.
    failed: dict[tuple, int] = {}
    # Preemptions that failed (see ``PassResult.preempt_failed``): fewer victims remain as the pass
    # goes, so more replicas or a lower threshold fail too.
    preempt_failed = result.preempt_failed
    preempted: set[str] = set()
    attempts = 0
    for candidate in order:
        workload = candidate.workload
        g, replicas, total = workload.gpus_per_replica, workload.replicas, workload.total_gpus
        admission: Admission | None = None
        options = candidate.options if ledger is None or tenants is None else tenants.options_in_order(ledger, workload, candidate.rank, candidate.options)
        for option in options:
            if candidate.is_training and breaks_reserve(cycle, result.training_used, option.product, total):
                if candidate.rank not in result.reserve_blocked and inventory.fits(option.pools, g, replicas, option.need):
                    result.reserve_blocked[candidate.rank] = option.product
                continue
            failed_key = (candidate.shape, option.product, g)
            if failed.get(failed_key, replicas + 1) <= replicas:
                continue
            if tenants is not None and ledger is not None:
                blocked = tenants.blocks(ledger, inventory, workload, option.product)
                if blocked is not None:
                    if blocked[0] is Reason.OVER_QUOTA or inventory.fits(option.pools, g, replicas):
                        ledger.blocked.setdefault(candidate.rank, blocked)
                    continue
            placement = place_option(inventory, option, g, replicas)
            if placement is None:
                failed[failed_key] = replicas
                continue
            admission = Admission(option, placement)
            break
        if admission is None and allow_preemption and attempts < MAX_PREEMPTION_ATTEMPTS_PER_PASS and (
            may_preempt is None or candidate.rank in may_preempt
        ):
            attempts += 1
            admission = _preempt(cycle, result, candidate, preempted, preempt_failed)
            if admission is None and tenants is not None and candidate.rank in tenants.guaranteed_ranks:
                admission = _preempt(cycle, result, candidate, preempted, preempt_failed, reclaim=True)
            if admission is not None:
                # Victims freed GPUs on this product: earlier failures there may now fit.
                # Preemption failures are kept: the victims left only grow fewer.
                product = admission.option.product
                for key in [k for k in failed if k[1] == product]:
                    del failed[key]
        if admission is None:
            continue
        result.reserve_blocked.pop(candidate.rank, None)
        if tenants is not None and ledger is not None:
            tenants.admit(ledger, workload, admission.option.product, candidate.rank)
        if candidate.is_training:
            result.training_used[admission.option.product] = result.training_used.get(admission.option.product, 0) + total
        result.admitted[candidate.rank] = admission
        bonus = candidate.effective_margin - candidate.best_margin
        result.value += (admission.option.margin + bonus) * total - sum(v.lost_per_hour for v in admission.victims)
    return result


def place_option(inventory: Inventory, option: Option, g: int, replicas: int) -> tuple[PlacementEntry, ...] | None:
    """Place on the option's pools: by GPUs alone when it needs nothing more (the common case,
    exactly the GPU-only placement), else checking its need on every node too."""
    if option.need is None:
        return inventory.place(option.pools, g, replicas)
    return inventory.place_needing(option.pools, g, replicas, option.need)


def breaks_reserve(cycle: Cycle, training_used: dict[str, int], product: str, gpus: int, freed: int = 0) -> bool:
    cap = cycle.training_cap.get(product)
    return cap is not None and training_used.get(product, 0) - freed + gpus > cap


def preemption_key(shape: int, option: Option, g: int, reclaim: bool) -> tuple:
    """What a failed preemption is remembered by, beyond its threshold and replicas (the incremental
    engine asks it too)."""
    return shape, option.product, g, reclaim


def failed_before(failures: list[tuple[int, float]] | None, replicas: int, threshold: float) -> bool:
    """Whether a preemption of as many replicas or fewer, at as high a threshold or higher, failed."""
    return bool(failures) and any(r <= replicas and t >= threshold - EPSILON for r, t in failures)  # type: ignore[union-attr]


def _preempt(cycle: Cycle, result: PassResult, candidate: Candidate, preempted: set[str], preempt_failed: dict, reclaim: bool = False) -> Admission | None:
    """Free GPUs from cheaper victims on one product, the least margin lost first, then place.
    ``reclaim``: the candidate is within its tenant's guarantee and takes from borrowers on the
    products of that guarantee whatever they earn (core/guarantee.py)."""
    tenants, ledger = cycle.tenants, result.quota
    inventory = result.inventory
    workload = candidate.workload
    g, replicas = workload.gpus_per_replica, workload.replicas
    gain = number_or(cycle.policy.preemption.min_margin_gain_per_gpu_hour, 0.0)
    for option in candidate.options:
        victims = cycle.victims_by_product.get(option.product)
        if not victims:
            continue
        threshold = option.margin - gain
        if reclaim:
            if tenants is None or ledger is None or not tenants.within(ledger.used, workload, option.product):
                continue
            threshold = math.inf
        if threshold + EPSILON < cycle.cheapest_victim_margin[option.product]:
            continue  # no victim on this product earns little enough
        failed_key = preemption_key(candidate.shape, option, g, reclaim)
        if failed_before(preempt_failed.get(failed_key), replicas, threshold):
            continue
        eligible_pools = set(option.pools)
        base = inventory.replicas_that_fit(option.pools, g)

        # The loop's values are bound as defaults: feasible is called only within this iteration.
        def feasible(chosen: Sequence[Victim], *, pools: set[int] = eligible_pools, base: int = base,
                     product: str = option.product) -> bool:
            delta: dict[int, int] = {}
            training_freed = 0
            for victim in chosen:
                if victim.workload.workload_class != "inference":
                    training_freed += victim.gpus
                for index, gpus in victim.freed:
                    if inventory.pool_of[index] in pools:
                        delta[index] = delta.get(index, 0) + gpus
            fit = base + sum(inventory.usable_after(i, d) // g - inventory.free[i] // g for i, d in delta.items())
            if fit < replicas:
                return False
            return not (candidate.is_training and breaks_reserve(cycle, result.training_used, product, workload.total_gpus, training_freed))

        # Add victims, cheapest loss first, counting incrementally how many replicas then fit.
        chosen: list[Victim] = []
        freed_on_node: dict[int, int] = {}
        fit, training_freed, ok = base, 0, False
        for victim in victims:
            if victim.margin > threshold + EPSILON or victim.key in preempted:
                continue
            useful = [(i, gpus) for i, gpus in victim.freed if inventory.pool_of[i] in eligible_pools]
            if not useful:
                continue
            chosen.append(victim)
            for index, gpus in useful:
                before = freed_on_node.get(index, 0)
                freed_on_node[index] = before + gpus
                fit += inventory.usable_after(index, before + gpus) // g - inventory.usable_after(index, before) // g
            if victim.workload.workload_class != "inference":
                training_freed += victim.gpus
            if fit >= replicas and not (
                candidate.is_training and breaks_reserve(cycle, result.training_used, option.product, workload.total_gpus, training_freed)
            ):
                ok = True
                break
            if len(chosen) >= MAX_VICTIMS_PER_PREEMPTION:
                break
        if not ok:
            preempt_failed.setdefault(failed_key, []).append((replicas, threshold))
            continue
        # Drop victims that turned out unneeded, the costliest first.
        for victim in sorted(chosen, key=lambda v: (-v.lost_per_hour, v.key)):
            rest = [v for v in chosen if v is not victim]
            if rest and feasible(rest):
                chosen = rest
        if tenants is not None and ledger is not None:
            freed_here = sum(gpus for v in chosen for i, gpus in v.freed if inventory.pool_of[i] in eligible_pools)
            if tenants.blocks(ledger, inventory, workload, option.product, freed_here) is not None:
                continue
        given_back = []
        for victim in chosen:
            given_back.append(inventory.release(victim.workload.placement, victim.key, cycle.snapshot.gpus_of_own_pods))
            if victim.workload.workload_class != "inference":
                result.training_used[victim.product] = result.training_used.get(victim.product, 0) - victim.gpus
        placement = place_option(inventory, option, g, replicas)
        # The count above is by GPUs; a need beyond them may still not fit: undo exactly rather than lose victims.
        if placement is None:
            for victim, given in zip(chosen, given_back, strict=True):
                inventory.unrelease(given)
                if victim.workload.workload_class != "inference":
                    result.training_used[victim.product] += victim.gpus
            continue
        preempted.update(v.key for v in chosen)
        if tenants is not None and ledger is not None:
            for victim in chosen:
                tenants.release(ledger, victim)
        return Admission(option, placement, tuple(sorted(chosen, key=lambda v: v.key)), reclaim=reclaim)
    return None
