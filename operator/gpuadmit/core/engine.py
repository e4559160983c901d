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
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .inventory import Inventory, whole, workload_shape
from .model import (
    Action,
    CycleResult,
    Decision,
    PlacementEntry,
    Policy,
    Preemption,
    Reason,
    Snapshot,
    Workload,
)

EPSILON = 1e-9
# Bounds on the preemption search, so 100k pending stay linear: victims per attempt,
# and attempts per placement pass (in placement order, so the best-ranked try first).
MAX_VICTIMS_PER_PREEMPTION = 64
MAX_PREEMPTION_ATTEMPTS_PER_PASS = 5_000
# The alternative placement orders cost one pass each; past this many candidates only
# rank order and total-margin order run (large cycles stay in seconds).
ALL_ORDERS_UP_TO = 5_000
# The ejection-chain improvement looks at this many queued workloads, on clusters up to this size.
SWAP_CANDIDATES = 300
SWAP_UP_TO_NODES = 1_000
# Nodes tried per chain step (at the root, one level deeper), and queued workloads that
# may fill what a chain leaves free.
CHAIN_NODES = 16
CHAIN_NODES_DEEP = 4
SWAP_FILL = 40
# Work budget of the chains per cycle, in nodes examined (deterministic, unlike a timer).
CHAIN_BUDGET = 60_000
IMPROVE_PASSES = 3


@dataclass(frozen=True, slots=True)
class Option:
    """A product a candidate may land on, what it earns there, and its eligible pools."""

    product: str
    margin: float
    pools: tuple[int, ...]


@dataclass(slots=True)
class Candidate:
    workload: Workload
    rank: int
    options: tuple[Option, ...]  # best margin first, then product name
    best_margin: float
    effective_margin: float
    shape: int  # numbers the workload's shape (products, memory, tolerations) for caches
    kind: int  # numbers (shape, size, class, tier): workloads of one kind have the same options
    is_training: bool
    rejection: Decision | None = None  # QueueTimeout: ranked (for order) but never placed


@dataclass(frozen=True, slots=True)
class Victim:
    workload: Workload
    key: str
    product: str
    margin: float
    gpus: int
    lost_per_hour: float
    freed: tuple[tuple[int, int], ...]  # (node index, GPUs freed), ascending


@dataclass(slots=True)
class Cycle:
    """Everything computed once per snapshot, shared by the placement passes and the exact solver."""

    snapshot: Snapshot
    policy: Policy
    inventory: Inventory
    ranked: list[Candidate]
    static_rejections: list[Decision]
    invalid: list[Decision]
    training_cap: dict[str, int]  # product -> GPUs training may hold in all (absent: no cap)
    reserve_gpus: dict[str, int]
    training_used: dict[str, int]  # product -> GPUs held by training workloads
    victims_by_product: dict[str, list[Victim]]
    cheapest_victim_margin: dict[str, float] = field(default_factory=dict)

    @property
    def placeable(self) -> list[Candidate]:
        return [c for c in self.ranked if c.rejection is None]


@dataclass(slots=True)
class Admission:
    option: Option
    placement: tuple[PlacementEntry, ...]
    victims: tuple[Victim, ...] = ()


@dataclass(slots=True)
class PassResult:
    inventory: Inventory
    admitted: dict[int, Admission] = field(default_factory=dict)  # by candidate rank
    reserve_blocked: dict[int, str] = field(default_factory=dict)  # rank -> product whose reserve stopped it
    training_used: dict[str, int] = field(default_factory=dict)
    value: float = 0.0


def decide(snapshot: Snapshot) -> CycleResult:
    """Admit, queue, reject and preempt for one cycle; the same snapshot gives the same result."""
    # A cycle allocates many small objects and frees few: the cyclic collector would rescan
    # the growing heap again and again (a quarter of a 100k cycle) for nothing to collect.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decide(snapshot)
    finally:
        if collecting:
            gc.enable()


def _decide(snapshot: Snapshot) -> CycleResult:
    cycle = prepare(snapshot)
    candidates = cycle.placeable
    allow_preemption = bool(snapshot.policy.preemption.enabled) and any(cycle.victims_by_product.values())
    results: list[PassResult] = []
    seen_orders: set[tuple[int, ...]] = set()
    for order in placement_orders(candidates):
        signature = tuple(c.rank for c in order)
        if signature in seen_orders:
            continue
        seen_orders.add(signature)
        results.append(run_pass(cycle, order, allow_preemption))
        if is_unbeatable(results[-1], candidates):
            break
    if not results:
        return finalize(cycle, PassResult(inventory=cycle.inventory.copy(), training_used=dict(cycle.training_used)))
    # Best value first; ties keep the earlier order (rank order is first of all).
    results = sorted(results, key=lambda r: -r.value)
    if not allow_preemption and len(cycle.inventory.nodes) <= SWAP_UP_TO_NODES and not is_unbeatable(results[0], candidates):
        for result in results[:IMPROVE_PASSES]:
            improve_by_swaps(cycle, result)
    best = results[0]
    for result in results[1:]:
        if result.value > best.value + EPSILON:
            best = result
    return finalize(cycle, best)


# --- 1. preparation: static checks, ranking -----------------------------------


def prepare(snapshot: Snapshot) -> Cycle:
    policy = snapshot.policy
    inventory = Inventory.from_snapshot(snapshot)
    floor = _number(policy.min_margin_per_gpu_hour, 0.0)
    aging = _number(policy.aging_per_hour, 0.0)
    margin_cache: dict[tuple, float] = {}

    def margin(workload_class: str, tier: str | None, product: str) -> float:
        key = (workload_class, tier, product)
        if key not in margin_cache:
            margin_cache[key] = _number(policy.margin_per_gpu_hour(workload_class, tier, product), -math.inf)
        return margin_cache[key]

    static_cache: dict[tuple, tuple[tuple[Option, ...], Decision | None, int]] = {}
    # Shapes hash slowly (tolerations are dataclasses); number them once and key caches by number.
    shape_ids: dict[tuple, int] = {}
    rankable: list[Candidate] = []
    static_rejections: list[Decision] = []
    # By identity; the position only separates exact duplicates, which decide alike anyway.
    keyed = sorted(((str(w.namespace), str(w.name), _number(w.created_at, 0.0), str(w.uid), i), w) for i, w in enumerate(snapshot.pending))
    for _, workload in keyed:
        malformed = _malformed(workload)
        if malformed is not None:
            static_rejections.append(malformed)
            continue
        shape = workload_shape(workload)
        shape_id = shape_ids.setdefault(shape, len(shape_ids))
        static_key = (shape_id, workload.gpus_per_replica, workload.replicas, workload.workload_class, workload.tier)
        if static_key not in static_cache:
            static_cache[static_key] = _static_options(inventory, workload, shape, floor, margin) + (len(static_cache),)
        options, rejection, kind = static_cache[static_key]
        if rejection is not None:
            static_rejections.append(_for_workload(rejection, workload))
            continue
        best_margin = options[0].margin
        waited = max(0.0, _number(snapshot.now, 0.0) - _number(workload.queued_since, _number(snapshot.now, 0.0)))
        candidate = Candidate(
            workload=workload,
            rank=-1,
            options=options,
            best_margin=best_margin,
            effective_margin=best_margin + aging * waited / 3600.0,
            shape=shape_id,
            kind=kind,
            is_training=workload.workload_class != "inference",
        )
        limit = None if workload.max_queue_seconds is None else _number(workload.max_queue_seconds, math.inf)
        if limit is not None and waited > limit:
            candidate.rejection = _decision(
                workload,
                Action.REJECT,
                Reason.QUEUE_TIMEOUT,
                f"waited {_duration(waited)} in the queue, longer than its limit of {_duration(limit)}",
                margin=best_margin,
            )
        rankable.append(candidate)
    rankable.sort(key=lambda c: (-c.effective_margin, _number(c.workload.created_at, 0.0), c.workload.key, str(c.workload.uid)))
    for rank, candidate in enumerate(rankable):
        candidate.rank = rank
    static_rejections.sort(key=lambda d: d.key)

    training_cap, reserve_gpus, training_used = _reserve_ledger(snapshot, inventory)
    victims_by_product = _victims(snapshot, inventory, margin)
    return Cycle(
        snapshot=snapshot,
        policy=policy,
        inventory=inventory,
        ranked=rankable,
        static_rejections=static_rejections,
        invalid=[Decision.invalid(item) for item in sorted(snapshot.invalid, key=lambda i: (i.key, i.field, i.message))],
        training_cap=training_cap,
        reserve_gpus=reserve_gpus,
        training_used=training_used,
        victims_by_product=victims_by_product,
        cheapest_victim_margin={p: min(v.margin for v in vs) for p, vs in victims_by_product.items()},
    )


def _number(value: object, fallback: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return fallback
    return fallback if math.isnan(number) else number


def _malformed(workload: Workload) -> Decision | None:
    g, replicas = workload.gpus_per_replica, workload.replicas
    if type(g) is int and type(replicas) is int and g >= 1 and replicas >= 1:
        return None
    for field_name, value, lower in (("spec.gpus", workload.gpus_per_replica, 1), ("spec.replicas", workload.replicas, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lower:
            return Decision.about(
                workload, Action.REJECT, Reason.INVALID_SPEC,
                f"{field_name} must be a whole number of at least {lower}, got {value!r}", field=field_name,
            )
    return None


def _static_options(inventory: Inventory, workload: Workload, shape: tuple, floor: float, margin) -> tuple[tuple[Option, ...], Decision | None]:
    """The products the workload could ever use (ignoring current usage), or why none.

    The returned rejection is a template; ``_for_workload`` puts the workload's name on it.
    """
    g, replicas = workload.gpus_per_replica, workload.replicas
    by_product = inventory.pools_by_product(inventory.eligible_pools(workload, shape))
    capable: list[Option] = []
    largest_node = 0
    most_replicas = (0, "")
    for product, pool_indices in by_product.items():
        pools = [inventory.pools[p] for p in pool_indices]
        largest_node = max(largest_node, max(pool.max_allocatable for pool in pools))
        holds = Inventory.replicas_if_empty(pools, g)
        if holds >= replicas:
            capable.append(Option(product, margin(workload.workload_class, workload.tier, product), pool_indices))
        elif holds > most_replicas[0] or not most_replicas[1]:
            most_replicas = (holds, product)
    if not capable:
        return (), _reject(Reason.NO_NODE_CAN_FIT, _no_fit_message(inventory, workload, by_product, largest_node, most_replicas))
    capable.sort(key=lambda o: (-o.margin, o.product))
    above_floor = tuple(o for o in capable if o.margin >= floor - EPSILON)
    if not above_floor:
        best = capable[0]
        shown = "unknown" if not math.isfinite(best.margin) else f"{best.margin:.2f}"
        return (), _reject(
            Reason.MARGIN_BELOW_FLOOR,
            f"earns at most {shown} per GPU-hour (as {workload.workload_class} on {_product_label(best.product)}), "
            f"below the policy floor of {floor:.2f}",
            margin=best.margin,
        )
    return above_floor, None


def _no_fit_message(inventory: Inventory, workload: Workload, by_product: dict, largest_node: int, most_replicas: tuple[int, str]) -> str:
    g, replicas = workload.gpus_per_replica, workload.replicas
    wanted = ", ".join(_product_label(p) for p in sorted(set(workload.gpu_products)))
    if not by_product:
        if not inventory.nodes:
            return "the cluster has no GPU nodes"
        why = inventory.exclusions(workload).describe()
        if workload.gpu_products and not inventory.products_offered & set(workload.gpu_products):
            return f"no node offers product {wanted}"
        return f"no node is eligible: of {len(inventory.nodes)} nodes, {why}"
    if largest_node < g:
        unit = "GPU" if g == 1 else "GPUs"
        return f"needs {g} {unit} per replica; the largest eligible node has {largest_node}"
    holds, product = most_replicas
    return (
        f"a gang of {replicas}x{g} GPUs must run on one product, but the eligible nodes of "
        f"{_product_label(product)} hold at most {holds} such replicas even when empty"
    )


def _reserve_ledger(snapshot: Snapshot, inventory: Inventory) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    fraction = min(1.0, max(0.0, _number(snapshot.policy.inference_reserve_fraction, 0.0)))
    total_by_product: dict[str, int] = {}
    for node, allocatable in zip(inventory.nodes, inventory.allocatable):
        total_by_product[node.product] = total_by_product.get(node.product, 0) + allocatable
    training_cap: dict[str, int] = {}
    reserve_gpus: dict[str, int] = {}
    if fraction > 0:
        for product, total in sorted(total_by_product.items()):
            reserve_gpus[product] = math.ceil(fraction * total - EPSILON)
            training_cap[product] = total - reserve_gpus[product]
    training_used: dict[str, int] = {}
    for workload in sorted(snapshot.holding, key=lambda w: w.key):
        if workload.workload_class == "inference":
            continue
        for entry in workload.placement:
            product = inventory.product_of(entry.node)
            if product is not None:
                training_used[product] = training_used.get(product, 0) + whole(entry.gpus)
    return training_cap, reserve_gpus, training_used


def _victims(snapshot: Snapshot, inventory: Inventory, margin) -> dict[str, list[Victim]]:
    """Holding workloads that preemption may take GPUs from, cheapest loss first, per product."""
    rules = snapshot.policy.preemption
    if not rules.enabled:
        return {}
    min_runtime = _number(rules.min_runtime_seconds, 0.0)
    by_product: dict[str, list[Victim]] = {}
    for workload in sorted(snapshot.holding, key=lambda w: w.key):
        if not workload.preemptible or workload.admitted_at is None:
            continue
        if snapshot.now - workload.admitted_at < min_runtime:
            continue
        products = [p for p in (inventory.product_of(e.node) for e in workload.placement) if p is not None]
        if not products:
            continue
        product = products[0]
        gpus = sum(whole(e.gpus) for e in workload.placement)
        earns = margin(workload.workload_class, workload.tier, product)
        freed = inventory.freed_by(workload.placement, workload.key, snapshot.gpus_of_own_pods)
        by_product.setdefault(product, []).append(
            Victim(workload, workload.key, product, earns, gpus, earns * gpus, tuple(sorted(freed.items())))
        )
    for victims in by_product.values():
        victims.sort(key=lambda v: (v.lost_per_hour, v.key))
    return dict(sorted(by_product.items()))


# --- 2. placement passes -------------------------------------------------------


def placement_orders(candidates: Sequence[Candidate]) -> Iterable[list[Candidate]]:
    """Rank order first (the policy's own), then orders that pack more margin per hour."""
    yield list(candidates)
    yield sorted(candidates, key=lambda c: (-c.effective_margin * c.workload.total_gpus, c.rank))
    if len(candidates) <= ALL_ORDERS_UP_TO:
        yield sorted(candidates, key=lambda c: (-c.workload.total_gpus, c.rank))
        yield sorted(candidates, key=lambda c: (-c.effective_margin, -c.workload.total_gpus, c.rank))
        # Workloads with fewer products first, so flexible ones do not take what picky ones need.
        yield sorted(candidates, key=lambda c: (len(c.options), -c.effective_margin * c.workload.total_gpus, c.rank))


def is_unbeatable(result: PassResult, candidates: Sequence[Candidate]) -> bool:
    """Everyone admitted on its best product, without preemption: no other order can earn more."""
    return len(result.admitted) == len(candidates) and all(
        a.option is c.options[0] and not a.victims for c in candidates for a in (result.admitted[c.rank],)
    )


def run_pass(cycle: Cycle, order: Sequence[Candidate], allow_preemption: bool) -> PassResult:
    result = PassResult(inventory=cycle.inventory.copy(), training_used=dict(cycle.training_used))
    inventory = result.inventory
    # (shape, product, GPUs per replica) -> fewest replicas that failed: free GPUs only shrink
    # during a pass (except when preemption frees some, which clears it), so a bigger gang fails too.
    failed: dict[tuple, int] = {}
    preempt_failed: dict[tuple, list[tuple[int, float]]] = {}
    preempted: set[str] = set()
    attempts = 0
    for candidate in order:
        workload = candidate.workload
        g, replicas, total = workload.gpus_per_replica, workload.replicas, workload.total_gpus
        admission: Admission | None = None
        for option in candidate.options:
            if candidate.is_training and _breaks_reserve(cycle, result.training_used, option.product, total):
                if candidate.rank not in result.reserve_blocked and inventory.fits(option.pools, g, replicas):
                    result.reserve_blocked[candidate.rank] = option.product
                continue
            failed_key = (candidate.shape, option.product, g)
            if failed.get(failed_key, replicas + 1) <= replicas:
                continue
            placement = inventory.place(option.pools, g, replicas)
            if placement is None:
                failed[failed_key] = replicas
                continue
            admission = Admission(option, placement)
            break
        if admission is None and allow_preemption and attempts < MAX_PREEMPTION_ATTEMPTS_PER_PASS:
            attempts += 1
            admission = _preempt(cycle, result, candidate, preempted, preempt_failed)
            if admission is not None:
                # Victims freed GPUs on this product: earlier failures there may now fit.
                # Preemption failures are kept: the victims left only grow fewer.
                product = admission.option.product
                for key in [k for k in failed if k[1] == product]:
                    del failed[key]
        if admission is None:
            continue
        result.reserve_blocked.pop(candidate.rank, None)
        if candidate.is_training:
            result.training_used[admission.option.product] = result.training_used.get(admission.option.product, 0) + total
        result.admitted[candidate.rank] = admission
        bonus = candidate.effective_margin - candidate.best_margin
        result.value += (admission.option.margin + bonus) * total - sum(v.lost_per_hour for v in admission.victims)
    return result


def _breaks_reserve(cycle: Cycle, training_used: dict[str, int], product: str, gpus: int, freed: int = 0) -> bool:
    cap = cycle.training_cap.get(product)
    return cap is not None and training_used.get(product, 0) - freed + gpus > cap


def _preempt(cycle: Cycle, result: PassResult, candidate: Candidate, preempted: set[str], preempt_failed: dict) -> Admission | None:
    """Free GPUs from cheaper victims on one product, the least margin lost first, then place."""
    inventory = result.inventory
    workload = candidate.workload
    g, replicas = workload.gpus_per_replica, workload.replicas
    gain = _number(cycle.policy.preemption.min_margin_gain_per_gpu_hour, 0.0)
    for option in candidate.options:
        victims = cycle.victims_by_product.get(option.product)
        if not victims:
            continue
        threshold = option.margin - gain
        if threshold + EPSILON < cycle.cheapest_victim_margin[option.product]:
            continue  # no victim on this product earns little enough
        failed_key = (candidate.shape, option.product, g)
        if any(r <= replicas and t >= threshold - EPSILON for r, t in preempt_failed.get(failed_key, ())):
            continue
        eligible_pools = set(option.pools)
        base = inventory.replicas_that_fit(option.pools, g)

        def feasible(chosen: Sequence[Victim]) -> bool:
            delta: dict[int, int] = {}
            training_freed = 0
            for victim in chosen:
                if victim.workload.workload_class != "inference":
                    training_freed += victim.gpus
                for index, gpus in victim.freed:
                    if inventory.pool_of[index] in eligible_pools:
                        delta[index] = delta.get(index, 0) + gpus
            fit = base + sum(inventory.usable_after(i, d) // g - inventory.free[i] // g for i, d in delta.items())
            if fit < replicas:
                return False
            return not (candidate.is_training and _breaks_reserve(cycle, result.training_used, option.product, workload.total_gpus, training_freed))

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
                candidate.is_training and _breaks_reserve(cycle, result.training_used, option.product, workload.total_gpus, training_freed)
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
        for victim in chosen:
            inventory.release(victim.workload.placement, victim.key, cycle.snapshot.gpus_of_own_pods)
            if victim.workload.workload_class != "inference":
                result.training_used[victim.product] = result.training_used.get(victim.product, 0) - victim.gpus
        placement = inventory.place(option.pools, g, replicas)
        if placement is None:  # defensive: the count above said it fits; undo rather than lose victims
            for victim in chosen:
                inventory.take(victim.workload.placement)
                if victim.workload.workload_class != "inference":
                    result.training_used[victim.product] += victim.gpus
            continue
        preempted.update(v.key for v in chosen)
        return Admission(option, placement, tuple(sorted(chosen, key=lambda v: v.key)))
    return None


def improve_by_swaps(cycle: Cycle, result: PassResult) -> None:
    """Local search on the chosen pass, by ejection chains.

    A queued single-replica workload may take a node from single-replica
    admissions of this cycle; those move elsewhere — into free GPUs, or, one
    level deeper, by moving others in turn — or go back to the queue. A chain
    is kept only when the margin per hour rises. Bounded: ``SWAP_CANDIDATES``
    queued workloads, ``CHAIN_NODES`` nodes tried per step, depth 2, a few
    rounds. Placement rules are the greedy's own (eligible pools, best fit, no
    overcommit); the search is skipped under an inference reserve."""
    if cycle.training_cap:
        return  # with a reserve, moving training work between products could break it
    chain = _Chain(cycle, result)
    for _ in range(3):
        if chain.budget <= 0:
            break
        improved = False
        queued = [c for c in cycle.placeable if c.rank not in result.admitted and c.workload.replicas == 1]
        queued.sort(key=lambda c: (-c.best_margin * c.workload.total_gpus, c.rank))
        for candidate in queued[:SWAP_CANDIDATES]:
            if chain.budget <= 0:
                break
            if candidate.rank in result.admitted:  # a chain before this one let it in
                continue
            mark = chain.mark()
            chain.index_residents()
            delta = chain.insert(candidate, depth=2, locked=frozenset({candidate.rank}), fill=queued[:SWAP_FILL])
            if delta is not None and delta > EPSILON:
                result.value += delta
                improved = True
            else:
                chain.rollback(mark)
        # Admissions not on their best product may get there by moving others.
        movable = [
            chain.by_rank[rank]
            for rank, admission in sorted(result.admitted.items())
            if admission.option is not chain.by_rank[rank].options[0] and chain.by_rank[rank].workload.replicas == 1 and not admission.victims
        ]
        movable.sort(key=lambda c: (chain.value(c.rank, result.admitted[c.rank].option) - chain.value(c.rank, c.options[0]), c.rank))
        for candidate in movable[:SWAP_CANDIDATES]:
            if chain.budget <= 0:
                break
            admission = result.admitted.get(candidate.rank)
            if admission is None or admission.option is candidate.options[0] or len(admission.placement) != 1:
                continue
            mark = chain.mark()
            chain.index_residents()
            before = chain.value(candidate.rank, admission.option)
            chain.evict(candidate.rank)
            delta = chain.insert(candidate, depth=2, locked=frozenset({candidate.rank}), fill=queued[:SWAP_FILL])
            if delta is not None and delta - before > EPSILON:
                result.value += delta - before
                improved = True
            else:
                chain.rollback(mark)
        if not improved:
            break


class _Chain:
    """Moves of single-replica admissions with an undo journal, for ``improve_by_swaps``."""

    def __init__(self, cycle: Cycle, result: PassResult) -> None:
        self.result = result
        self.inventory = result.inventory
        self.by_rank = {c.rank: c for c in cycle.placeable}
        self.journal: list[tuple[str, int, Admission]] = []
        self.budget = CHAIN_BUDGET // IMPROVE_PASSES

    def value(self, rank: int, option: Option) -> float:
        candidate = self.by_rank[rank]
        return (option.margin + candidate.effective_margin - candidate.best_margin) * candidate.workload.total_gpus

    def mark(self) -> int:
        return len(self.journal)

    def index_residents(self) -> None:
        """Single-replica admissions by node: what a chain may move. Built once per chain and
        checked lazily (``resides``) as moves change it."""
        self.budget -= len(self.result.admitted)
        self.residents: dict[int, list[int]] = {}
        for rank, admission in sorted(self.result.admitted.items()):
            if admission.victims or len(admission.placement) != 1 or self.by_rank[rank].workload.replicas != 1:
                continue
            self.residents.setdefault(self.inventory.index_by_name[admission.placement[0].node], []).append(rank)

    def resides(self, rank: int, index: int) -> bool:
        admission = self.result.admitted.get(rank)
        return admission is not None and self.inventory.index_by_name[admission.placement[0].node] == index

    def touched_since(self, mark: int) -> set[int]:
        """Nodes that residents left since ``mark``."""
        return {
            self.inventory.index_by_name[entry.node]
            for action, _, admission in self.journal[mark:]
            if action == "evict"
            for entry in admission.placement
        }

    def rollback(self, mark: int) -> None:
        while len(self.journal) > mark:
            action, rank, admission = self.journal.pop()
            if action == "admit":
                del self.result.admitted[rank]
                self.inventory.release(admission.placement)
            else:
                self.result.admitted[rank] = admission
                self.inventory.take(admission.placement)

    def replay(self, operations: list[tuple[str, int, Admission]]) -> None:
        for action, rank, admission in operations:
            if action == "admit":
                self.result.admitted[rank] = admission
                self.inventory.take(admission.placement)
            else:
                del self.result.admitted[rank]
                self.inventory.release(admission.placement)
            self.journal.append((action, rank, admission))

    def admit(self, rank: int, admission: Admission) -> None:
        self.replay([("admit", rank, admission)])

    def evict(self, rank: int) -> None:
        self.replay([("evict", rank, self.result.admitted[rank])])

    def insert(self, candidate: Candidate, depth: int, locked: frozenset[int], fill: Sequence[Candidate] = ()) -> float | None:
        """Admit the candidate, possibly moving others; the change in margin per hour, or
        None (nothing changed) when it cannot get in. ``fill``: queued workloads that may
        take what the moves leave free (an eviction can make room for several)."""
        g = candidate.workload.gpus_per_replica
        start = self.mark()
        free_choice: tuple[float, list] | None = None
        better_options = candidate.options
        for number, option in enumerate(candidate.options):
            placement = self.inventory.place(option.pools, g, 1)
            if placement is not None:
                # place() already took the GPUs; journal it without taking twice.
                self.result.admitted[candidate.rank] = Admission(option, placement)
                self.journal.append(("admit", candidate.rank, self.result.admitted[candidate.rank]))
                if number == 0 or depth <= 0:
                    return self.value(candidate.rank, option)
                # Free GPUs only on a worse product: see whether a chain gets it a better one.
                free_choice = (self.value(candidate.rank, option), self.journal[start:])
                better_options = candidate.options[:number]
                self.rollback(start)
                break
        if depth <= 0:
            return None
        residents = self.residents
        best = free_choice
        for option in better_options:
            eligible = set(option.pools)
            moves = []
            self.budget -= len(residents)
            for index in sorted(residents):
                if self.inventory.pool_of[index] not in eligible:
                    continue
                out, freed, lost = [], 0, 0.0
                here = [r for r in residents[index] if r not in locked and self.resides(r, index)]
                for rank in sorted(here, key=lambda r: (self.value(r, self.result.admitted[r].option) / self.by_rank[r].workload.total_gpus, r)):
                    if self.inventory.usable_after(index, freed) >= g:
                        break
                    out.append(rank)
                    freed += self.result.admitted[rank].placement[0].gpus
                    lost += self.value(rank, self.result.admitted[rank].option)
                if out and self.inventory.usable_after(index, freed) >= g:
                    moves.append((lost, index, out))
            moves.sort(key=lambda m: (m[0], m[1]))
            for lost, index, out in moves[: CHAIN_NODES if fill or depth >= 2 else CHAIN_NODES_DEEP]:
                mark = self.mark()
                for rank in out:
                    self.evict(rank)
                self.admit(candidate.rank, Admission(option, (PlacementEntry(node=self.inventory.nodes[index].name, gpus=g, replicas=1),)))
                delta = self.value(candidate.rank, option) - lost
                deeper = locked | set(out)
                for rank in sorted(out):
                    moved = self.insert(self.by_rank[rank], depth - 1, deeper)
                    if moved is not None:
                        delta += moved
                # Only nodes that lost residents can have room the queue has not already tried.
                room = max((self.inventory.free[i] for i in self.touched_since(mark)), default=0)
                for other in fill:
                    if other.workload.gpus_per_replica <= room and other.rank not in self.result.admitted and other.rank not in deeper:
                        placed = self.insert(other, 0, deeper)
                        if placed is not None:
                            delta += placed
                if best is None or delta > best[0] + EPSILON:
                    best = (delta, self.journal[mark:])
                self.rollback(mark)
        if best is None:
            return None
        self.replay(best[1])
        return best[0]


# --- 3. decisions -----------------------------------------------------------------


def finalize(cycle: Cycle, result: PassResult) -> CycleResult:
    """Turn the chosen pass into one decision per workload, in rank order, invalid ones last."""
    limit = cycle.policy.max_queued_per_namespace
    queued_in_namespace: dict[str, int] = {}
    capacity_note_cache: dict[int, str] = {}
    decisions: list[Decision] = []
    preemptions: list[Preemption] = []
    position = 0
    for candidate in cycle.ranked:
        workload = candidate.workload
        if candidate.rejection is not None:
            decisions.append(candidate.rejection)
            continue
        admission = result.admitted.get(candidate.rank)
        if admission is not None:
            decisions.append(_admit_decision(workload, admission))
            for victim in admission.victims:
                preemptions.append(
                    Preemption(
                        namespace=victim.workload.namespace,
                        name=victim.workload.name,
                        preempted_by=workload.key,
                        message=(
                            f"preempted by {workload.key}, which earns {admission.option.margin:.2f} per GPU-hour "
                            f"on {_product_label(victim.product)} against {victim.margin:.2f} here"
                        ),
                        freed=victim.workload.placement,
                    )
                )
            continue
        queued_in_namespace[workload.namespace] = queued_in_namespace.get(workload.namespace, 0) + 1
        if limit is not None and queued_in_namespace[workload.namespace] > limit:
            decisions.append(
                _decision(
                    workload,
                    Action.REJECT,
                    Reason.QUEUE_FULL,
                    f"namespace {workload.namespace} already has {limit} queued workloads ranked ahead of it "
                    f"(the policy's limit per namespace)",
                    margin=candidate.best_margin,
                )
            )
            continue
        position += 1
        blocked_product = result.reserve_blocked.get(candidate.rank)
        if blocked_product is not None:
            reason = Reason.INFERENCE_RESERVE
            message = _reserve_message(cycle, result, workload, blocked_product)
        else:
            reason = Reason.INSUFFICIENT_CAPACITY
            message = _capacity_message(result.inventory, candidate, capacity_note_cache)
        decisions.append(
            _decision(workload, Action.QUEUE, reason, f"{message} (queue position {position})", margin=candidate.best_margin, position=position)
        )
    decisions.extend(cycle.static_rejections)
    decisions.extend(cycle.invalid)
    preemptions.sort(key=lambda p: p.key)
    return CycleResult(decisions=tuple(decisions), preemptions=tuple(preemptions))


def _admit_decision(workload: Workload, admission: Admission) -> Decision:
    placement = admission.placement
    gpus = "GPU" if workload.total_gpus == 1 else "GPUs"
    where = ", ".join(f"{e.node} ({e.gpus})" for e in placement[:5]) + (f" and {len(placement) - 5} more nodes" if len(placement) > 5 else "")
    message = (
        f"admitted {workload.total_gpus} {gpus} of {_product_label(admission.option.product)} on {where}, "
        f"earning {admission.option.margin:.2f} per GPU-hour"
    )
    if admission.victims:
        names = ", ".join(f"{v.key} ({v.margin:.2f} per GPU-hour)" for v in admission.victims[:5])
        more = f" and {len(admission.victims) - 5} more" if len(admission.victims) > 5 else ""
        message += f", by preempting {names}{more}"
    return _decision(workload, Action.ADMIT, Reason.ADMITTED, message, margin=admission.option.margin, placement=placement)


def _capacity_message(inventory: Inventory, candidate: Candidate, cache: dict[int, str]) -> str:
    workload = candidate.workload
    g, replicas = workload.gpus_per_replica, workload.replicas
    key = candidate.kind
    if key not in cache:
        products = " or ".join(_product_label(o.product) for o in candidate.options)
        if replicas == 1:
            best_free = max(inventory.max_free(o.pools) for o in candidate.options)
            unit = "GPU" if g == 1 else "GPUs"
            cache[key] = f"needs {g} {unit} of {products}; the best eligible node has {best_free} free"
        else:
            fit = max(inventory.replicas_that_fit(o.pools, g, enough=replicas) for o in candidate.options)
            cache[key] = (
                f"needs a gang of {replicas}x{g} GPUs on one product ({products}); "
                f"only {fit} of the {replicas} replicas fit in free GPUs now"
            )
    return cache[key]


def _reserve_message(cycle: Cycle, result: PassResult, workload: Workload, product: str) -> str:
    reserve = cycle.reserve_gpus.get(product, 0)
    cap = cycle.training_cap.get(product, 0)
    used = result.training_used.get(product, 0)
    percent = 100 * _number(cycle.policy.inference_reserve_fraction, 0.0)
    return (
        f"needs {workload.total_gpus} GPUs of {_product_label(product)}, which are free only in the "
        f"{reserve} GPUs kept for inference ({percent:g}% reserve); training holds {used} of the {cap} it may use"
    )


def _decision(
    workload: Workload,
    action: Action,
    reason: Reason,
    message: str,
    *,
    margin: float | None = None,
    placement: tuple[PlacementEntry, ...] = (),
    position: int | None = None,
) -> Decision:
    return Decision.about(
        workload, action, reason, message,
        placement=placement, margin_per_gpu_hour=_rounded(margin), queue_position=position,
    )


def _reject(reason: Reason, message: str, margin: float | None = None) -> Decision:
    """A rejection not yet bound to a workload (shared by workloads of the same shape)."""
    return Decision(namespace="", name="", action=Action.REJECT, reason=reason, message=message, margin_per_gpu_hour=_rounded(margin))


def _for_workload(template: Decision, workload: Workload) -> Decision:
    return Decision.about(
        workload, template.action, template.reason, template.message, margin_per_gpu_hour=template.margin_per_gpu_hour,
    )


def _rounded(margin: float | None) -> float | None:
    if margin is None or not math.isfinite(margin):
        return None
    return round(margin, 4)


def _product_label(product: str) -> str:
    return product or "unlabelled GPUs"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    if hours >= 48:
        return f"{hours // 24}d {hours % 24}h"
    if hours:
        return f"{hours}h {rest // 60}m"
    if rest >= 60:
        return f"{rest // 60}m {rest % 60}s"
    return f"{rest}s"
