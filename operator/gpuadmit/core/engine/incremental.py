"""The incremental engine: state kept between cycles, so a cycle caused by a few changes decides
only what those changes can affect, with the rules (and the code) of a whole cycle.

``IncrementalEngine().decide(snapshot)`` takes the same snapshots as ``decide``. It compares each
with the previous one (by identity first: unchanged objects cost a pointer compare) and either
runs a whole cycle -- the first time, and whenever the kept state cannot be trusted -- or an
incremental one:

- Kept after every cycle: the free-capacity ledger of the last snapshot (``Inventory``, patched
  node by node), the ranked queue (every queued workload by its ``rank_order`` key, which does not
  move with the clock, so aging needs no re-ranking), the queue by *kind* (workloads of one kind
  -- shape, size, class, tier -- have the same options), the static-check caches (``Ranker``), the
  training GPUs per product (the inference reserve), the preemption victims, and each workload's
  last decision.
- A whole cycle runs on: the first snapshot (a restart), a policy change, a GPUQuota that binds, a
  per-namespace queue limit, a node added, removed or changed in shape, a preemption in the last
  cycle (its victims come back), a victim becoming old enough to preempt while work is queued,
  and more than ``MAX_CHANGES`` changes at once (then a whole cycle costs about as much).
  ``full(snapshot)`` forces one (the operator's resync).
- An incremental cycle: the changed nodes' free capacity is recomputed from the snapshot; new
  workloads get the static checks; queued ones past their deadline are rejected
  (``QueueTimeout``); then the placement passes (``choose_pass``, the very code of a whole cycle:
  orders, preemption, chains) run on the part of the queue that can change -- the new workloads,
  and for every kind whose eligible pools gained free capacity (or whose product's inference
  reserve gained room) its best-ranked members, as many as the free GPUs could hold plus one.
  Why that suffices: after any cycle no queued workload fits in what is left free (a pass only
  takes capacity; preemption forces the next cycle whole), so a workload whose pools gained
  nothing still does not fit, and members of one kind fit or fail alike, in rank order.

What differs from a whole cycle (where the "margin within 1%" of the equivalence test applies):
the passes' alternative orders and ejection chains see only that part of the queue; preemption
is tried by the part's workloads whose queue position is within the whole cycle's attempt budget
(``MAX_PREEMPTION_ATTEMPTS_PER_PASS``); and the reason of a queued workload outside the part
(``InsufficientCapacity`` or ``InferenceReserve``) and the words of every queued message (free
GPUs now, position) are refreshed by the next whole cycle. Everything else -- admissions,
placements, preemptions, rejections, the reasons of what the cycle decided -- follows the rules
exactly as a whole cycle does; ``tests/core/test_incremental.py`` compares the two on random
event sequences.

The result's contract: a whole cycle returns every decision (as ``decide``); an incremental one
returns only the decisions that changed -- new workloads, admissions, rejections, and queued
workloads whose reason changed -- plus the preemptions, so a caller writes only those. Queue
positions move for everyone behind an admission or an arrival; they are served, not returned:
``queue_position(key)`` (O(log n)) and ``queued()`` (keys in rank order). ``last_full`` says
whether the last cycle was whole (then every decision carries its position).
"""

from __future__ import annotations

import bisect
import gc
import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ..guarantee import Tenants
from ..inventory import Inventory, LayoutMemo, _beyond, _same_shape, whole
from ..model import Action, CycleResult, Decision, GpuNode, PlacementEntry, Preemption, Snapshot, Workload
from .choose import choose_pass
from .cycle import EPSILON, Admission, Candidate, Cycle, Victim, number_or
from .messages import finalize
from .passes import ALL_ORDERS_UP_TO, MAX_PREEMPTION_ATTEMPTS_PER_PASS
from .prepare import Ranker, prepare, timeout_rejection, victim_of, victim_order

# More changes than this in one cycle (or a tenth of the queue, whichever is larger): a whole
# cycle, which then costs about what the changes would.
MAX_CHANGES = 1_000
# Rounds of an incremental cycle's part growing by what its preemptions free (each round adds
# the kinds that could use the victims' GPUs; one or two suffice in practice).
MAX_PART_ROUNDS = 4


@dataclass(slots=True)
class _State:
    """What a cycle leaves for the next (see the module docstring)."""

    snapshot: Snapshot
    ranker: Ranker
    inventory: Inventory  # free capacity of ``snapshot`` less the last cycle's admissions
    training_cap: dict[str, int]
    reserve_gpus: dict[str, int]
    training_used: dict[str, int]
    pending: dict[str, Workload]
    holding: dict[str, Workload]
    pending_ids: dict[int, Workload]  # by id(): the snapshot's own objects, compared by identity first
    holding_ids: dict[int, Workload]
    reservations: dict[int, dict[str, list]]  # node index -> holding key -> its placement entries there
    queue: list[tuple]  # rank_order keys of the queued workloads, sorted
    queued: dict[str, Candidate]  # by key
    by_kind: dict[int, list[tuple]]  # kind -> rank_order keys of its queued workloads, sorted
    deadlines: list[tuple[float, str]]  # (queued_since + limit, key), a heap; stale entries skipped
    victims: dict[str, list[Victim]]  # product -> victims, cheapest loss first
    victim_of_key: dict[str, Victim]
    not_yet_victims: list[tuple[float, str]]  # (admitted_at + min runtime, key), a heap
    decided: dict[str, tuple]  # key -> (action, reason, placement) last decided
    admitted: set[str] = field(default_factory=set)  # admitted by the last cycle
    # The last cycle's admissions are taken from ``inventory`` (and counted in the training GPUs)
    # until a snapshot shows them: their nodes are recomputed next cycle, whatever it shows.
    assumed_nodes: set[int] = field(default_factory=set)
    assumed_training: dict[str, int] = field(default_factory=dict)


class IncrementalEngine:
    """One engine kept for the life of a caller (the operator, a replay); see the module docstring."""

    def __init__(self) -> None:
        self._layouts = LayoutMemo()
        self._state: _State | None = None
        self.last_full = False
        self.last_full_reason = ""  # why the last whole cycle ran
        self.full_cycles = 0
        self.incremental_cycles = 0

    # --- the queue, served -----------------------------------------------------

    def queue_position(self, key: str) -> int | None:
        """1-based position of a queued workload in the ranked queue, None when it is not queued."""
        state = self._state
        candidate = state.queued.get(key) if state is not None else None
        if state is None or candidate is None:
            return None
        return bisect.bisect_left(state.queue, candidate.order) + 1

    def queued(self) -> Iterator[str]:
        """The queued workloads' keys, best-ranked first."""
        if self._state is not None:
            for order in self._state.queue:
                yield order[2]

    def __len__(self) -> int:
        return 0 if self._state is None else len(self._state.queue)

    # --- cycles -------------------------------------------------------------------

    def decide(self, snapshot: Snapshot) -> CycleResult:
        """The cycle for this snapshot: incremental when the state allows, else whole."""
        collecting = gc.isenabled()
        gc.disable()  # as decide() does: a cycle allocates much and frees little
        try:
            state = self._state
            why = self._why_whole(state, snapshot) if state is not None else "first cycle"
            if why is None and state is not None:
                result = self._incremental(state, snapshot)
                if isinstance(result, CycleResult):
                    self.last_full = False
                    self.incremental_cycles += 1
                    return result
                why = result
            return self._whole(snapshot, why or "asked")
        finally:
            if collecting:
                gc.enable()

    def full(self, snapshot: Snapshot, why: str = "asked") -> CycleResult:
        """A whole cycle (resync), the state rebuilt from it."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._whole(snapshot, why)
        finally:
            if collecting:
                gc.enable()

    def _whole(self, snapshot: Snapshot, why: str) -> CycleResult:
        self.last_full, self.last_full_reason = True, why
        self.full_cycles += 1
        self._state = None
        cycle = prepare(snapshot, self._layouts)
        best = choose_pass(cycle)
        result = finalize(cycle, best)
        if isinstance(cycle.ranker, Ranker) and cycle.tenants is None:
            self._state = _keep(snapshot, cycle, best.admitted, result)
        return result

    def _why_whole(self, state: _State, snapshot: Snapshot) -> str | None:
        last = state.snapshot
        policy = snapshot.policy
        if policy is not last.policy and policy != last.policy:
            return "policy changed"
        if policy.max_queued_per_namespace is not None:
            return "a queue limit per namespace"
        if snapshot.quotas and Tenants.of(snapshot, state.inventory) is not None:
            return "GPUQuotas"
        if snapshot.nodes is not last.nodes:
            if len(snapshot.nodes) != len(last.nodes):
                return "nodes added or removed"
            if state.inventory.layout.index_of_position is None:
                return "duplicate node names"
            for new, old in zip(snapshot.nodes, last.nodes, strict=True):
                if new is not old and not _same_shape(new, old):
                    return "a node changed shape"
        return None

    def _incremental(self, state: _State, snapshot: Snapshot) -> CycleResult | str:
        """One incremental cycle, or why it must be whole (state untouched then, it is rebuilt)."""
        last = state.snapshot
        now = snapshot.now
        inventory = state.inventory
        # --- what changed --------------------------------------------------------
        pending_diff = _compare(state.pending, state.pending_ids, snapshot.pending)
        holding_diff = _compare(state.holding, state.holding_ids, snapshot.holding)
        if pending_diff is None or holding_diff is None:
            return "a workload listed twice"
        pending, pending_ids, arrived, left_objects = pending_diff
        holding, holding_ids, taken, released = holding_diff
        left = [w.key for w in left_objects]
        # Ours, admitted last cycle, yet still pending (the caller has not applied it): decided again.
        arrived += [pending[key] for key in sorted(state.admitted) if key in pending and key not in {w.key for w in arrived}]
        limit = max(MAX_CHANGES, len(state.queue) // 10)
        # Our admissions starting to run and our rejections leaving are what the last cycle expected.
        expected = sum(1 for key in left if key in state.admitted or state.decided.get(key, (None,))[0] is Action.REJECT)
        expected += sum(1 for w in taken if w.key in state.admitted)
        if len(arrived) + len(left) + len(released) + len(taken) - expected > limit:
            return "many changes at once"
        touched_nodes: set[int] = set()
        positions = inventory.layout.index_of_position
        if positions is None:
            return "duplicate node names"
        if snapshot.nodes is not last.nodes and positions is not None:
            for position, (new, old) in enumerate(zip(snapshot.nodes, last.nodes, strict=True)):
                if new is not old:
                    touched_nodes.add(positions[position])
        own_changed = _changed_keys(last.gpus_of_own_pods, snapshot.gpus_of_own_pods)
        own_changed |= _changed_keys(last.resources_of_own_pods, snapshot.resources_of_own_pods)
        for _, node in own_changed:
            index = inventory.index_by_name.get(node)
            if index is not None:
                touched_nodes.add(index)
        # --- holding: reservations, training GPUs, victims ------------------------------
        training_before = dict(state.training_used)
        for product, gpus in state.assumed_training.items():
            training_before[product] = training_before.get(product, 0) + gpus
        touched_nodes |= state.assumed_nodes
        changed_victims = {key for key, _ in own_changed}
        for workload in released:
            _hold(state, workload, -1)
            touched_nodes.update(_node_indices(inventory, workload))
            changed_victims.add(workload.key)
        for workload in taken:
            _hold(state, workload, +1)
            touched_nodes.update(_node_indices(inventory, workload))
            changed_victims.add(workload.key)
        state.pending, state.pending_ids, state.holding, state.holding_ids = pending, pending_ids, holding, holding_ids
        state.snapshot = snapshot
        state.admitted, state.assumed_nodes, state.assumed_training = set(), set(), {}
        newly_victims: list[Victim] = []
        if snapshot.policy.preemption.enabled:
            for key in changed_victims:
                _set_victim(state, snapshot, holding.get(key), key)
            waiting = state.not_yet_victims
            while waiting and waiting[0][0] <= now:  # old enough to preempt now
                _, key = heapq.heappop(waiting)
                if key in holding and key not in state.victim_of_key:
                    _set_victim(state, snapshot, holding[key], key)
                    if key in state.victim_of_key:
                        newly_victims.append(state.victim_of_key[key])
        # --- free capacity, node by node ---------------------------------------------
        touched_pools: set[int] = set()
        nodes_by_index = _nodes_by_index(snapshot.nodes, positions) if touched_nodes else {}
        for index in sorted(touched_nodes):
            if _refresh_node(state, snapshot, index, nodes_by_index.get(index)):
                pool = inventory.pool_of[index]
                if pool >= 0:
                    touched_pools.add(pool)
        reserve_freed = {p for p, used in training_before.items() if state.training_used.get(p, 0) < used}
        # --- the queue ---------------------------------------------------------------------
        decisions: list[Decision] = []
        for key in left:
            _unqueue(state, key)
        new_keys: set[str] = set()
        for workload in arrived:
            _unqueue(state, workload.key)
            new_keys.add(workload.key)
            made = state.ranker.candidate(workload, now)
            if isinstance(made, Decision):
                decisions.append(made)
            elif made.rejection is not None:
                decisions.append(made.rejection)
            else:
                _enqueue(state, made)
        while state.deadlines and state.deadlines[0][0] < now:
            _, key = heapq.heappop(state.deadlines)
            candidate = state.queued.get(key)
            if candidate is None:
                continue
            workload = candidate.workload
            waited = max(0.0, now - number_or(workload.queued_since, now))
            limit_s = number_or(workload.max_queue_seconds, math.inf)
            if waited > limit_s:
                _unqueue(state, key)
                decisions.append(timeout_rejection(workload, waited, limit_s, candidate.best_margin))
        # --- the part of the queue that can change, decided by the whole cycle's code -----------
        chosen = _part(state, {}, new_keys, touched_pools, reserve_freed, newly_victims, inventory)
        preemptions: tuple[Preemption, ...] = ()
        aging = state.ranker.aging
        all_orders = len(state.queue) <= ALL_ORDERS_UP_TO
        for _ in range(MAX_PART_ROUNDS):
            part = sorted(chosen.values(), key=lambda c: c.order)
            for rank, candidate in enumerate(part):
                candidate.rank = rank
                waited = max(0.0, now - number_or(candidate.workload.queued_since, now))
                candidate.effective_margin = candidate.best_margin + aging * waited / 3600.0
            budget_rank = {c.rank for c in part if bisect.bisect_left(state.queue, c.order) < MAX_PREEMPTION_ATTEMPTS_PER_PASS}
            cycle = Cycle(
                snapshot=snapshot,
                policy=snapshot.policy,
                inventory=inventory,
                ranked=part,
                static_rejections=[],
                invalid=[],
                training_cap=state.training_cap,
                reserve_gpus=state.reserve_gpus,
                training_used=dict(state.training_used),
                victims_by_product=state.victims if snapshot.policy.preemption.enabled else {},
                cheapest_victim_margin={p: min(v.margin for v in vs) for p, vs in state.victims.items() if vs},
                ranker=state.ranker,
            )
            best = choose_pass(cycle, all_orders=all_orders, may_preempt=budget_rank)
            # What victims free beyond the preemptor's need goes to the workloads ranked after it in
            # a whole cycle: the kinds that could use it join the part, and the part is decided again.
            victims = [v for admission in best.admitted.values() for v in admission.victims]
            if not victims:
                break
            freed = inventory.copy()
            for victim in victims:
                freed.release(victim.workload.placement, victim.key, snapshot.gpus_of_own_pods)
            pools = {inventory.pool_of[i] for v in victims for i, _ in v.freed if inventory.pool_of[i] >= 0}
            training = {v.product for v in victims if v.workload.workload_class != "inference"}
            before = len(chosen)
            _part(state, chosen, set(), pools, training, [], freed)
            if len(chosen) == before:
                break
        if chosen:
            for candidate in part:
                admission = best.admitted.get(candidate.rank)
                if admission is not None:
                    _unqueue(state, candidate.workload.key)
                    _assume(state, candidate, admission.option.product, admission.placement)
            queue, queued = state.queue, state.queued

            def position_of(candidate: Candidate) -> int:
                return bisect.bisect_left(queue, candidate.order) + 1 if candidate.workload.key in queued else 0

            outcome = finalize(cycle, best, position_of)
            decisions.extend(outcome.decisions)
            preemptions = outcome.preemptions
        if snapshot.invalid is not last.invalid and snapshot.invalid != last.invalid:
            known = set(last.invalid)
            decisions.extend(Decision.invalid(item) for item in snapshot.invalid if item not in known)
        changed = []
        for decision in decisions:
            summary = (decision.action, decision.reason, decision.placement)
            if decision.key in new_keys or state.decided.get(decision.key) != summary or decision.action is not Action.QUEUE:
                changed.append(decision)
            state.decided[decision.key] = summary
        for key in left:
            if key not in pending:
                state.decided.pop(key, None)
        return CycleResult(decisions=tuple(changed), preemptions=preemptions)


# --- building the state after a whole cycle ---------------------------------------------


def _keep(snapshot: Snapshot, cycle: Cycle, admitted: Mapping[int, Admission], result: CycleResult) -> _State | None:
    assert isinstance(cycle.ranker, Ranker)
    queued_keys = {d.key for d in result.decisions if d.action is Action.QUEUE}
    state = _State(
        snapshot=snapshot,
        ranker=cycle.ranker,
        inventory=cycle.inventory,
        training_cap=cycle.training_cap,
        reserve_gpus=cycle.reserve_gpus,
        training_used=dict(cycle.training_used),
        pending={},
        holding={},
        pending_ids={id(w): w for w in snapshot.pending},
        holding_ids={id(w): w for w in snapshot.holding},
        reservations={},
        queue=[],
        queued={},
        by_kind={},
        deadlines=[],
        victims={},
        victim_of_key={},
        not_yet_victims=[],
        decided={d.key: (d.action, d.reason, d.placement) for d in result.decisions},
    )
    for candidate in cycle.ranked:
        admission = admitted.get(candidate.rank)
        if admission is not None:
            _assume(state, candidate, admission.option.product, admission.placement)
    for workload in snapshot.pending:
        if state.pending.setdefault(workload.key, workload) is not workload:
            return None  # duplicate keys: every cycle whole
    for workload in snapshot.holding:
        if state.holding.setdefault(workload.key, workload) is not workload:
            return None
        for entry in workload.placement:
            index = cycle.inventory.index_by_name.get(entry.node)
            if index is not None:
                state.reservations.setdefault(index, {}).setdefault(workload.key, []).append(entry)
    for candidate in cycle.ranked:
        if candidate.rejection is None and candidate.workload.key in queued_keys and candidate.workload.key not in state.queued:
            _enqueue(state, candidate, sort=False)
    state.queue.sort()
    for orders in state.by_kind.values():
        orders.sort()
    if snapshot.policy.preemption.enabled:
        state.victims = {product: list(victims) for product, victims in cycle.victims_by_product.items()}
        state.victim_of_key = {v.key: v for victims in state.victims.values() for v in victims}
        min_runtime = number_or(snapshot.policy.preemption.min_runtime_seconds, 0.0)
        for key, workload in state.holding.items():
            if workload.preemptible and workload.admitted_at is not None and key not in state.victim_of_key:
                if snapshot.now - workload.admitted_at < min_runtime:
                    state.not_yet_victims.append((workload.admitted_at + min_runtime, key))
        heapq.heapify(state.not_yet_victims)
    return state


def _assume(state: _State, candidate: Candidate, product: str, placement: tuple[PlacementEntry, ...]) -> None:
    """Take an admission's capacity until a snapshot shows it (see ``_State.assumed_nodes``)."""
    state.admitted.add(candidate.workload.key)
    state.inventory.take(placement)
    state.assumed_nodes.update(_node_indices(state.inventory, candidate.workload, placement))
    if candidate.is_training:
        state.assumed_training[product] = state.assumed_training.get(product, 0) + candidate.workload.total_gpus


# --- the queue ---------------------------------------------------------------------------


def _enqueue(state: _State, candidate: Candidate, sort: bool = True) -> None:
    key = candidate.workload.key
    state.queued[key] = candidate
    orders = state.by_kind.setdefault(candidate.kind, [])
    if sort:
        bisect.insort(state.queue, candidate.order)
        bisect.insort(orders, candidate.order)
    else:
        state.queue.append(candidate.order)
        orders.append(candidate.order)
    workload = candidate.workload
    if workload.max_queue_seconds is not None:
        deadline = number_or(workload.queued_since, state.snapshot.now) + number_or(workload.max_queue_seconds, math.inf)
        if math.isfinite(deadline):
            heapq.heappush(state.deadlines, (deadline, key))


def _unqueue(state: _State, key: str) -> None:
    candidate = state.queued.pop(key, None)
    if candidate is None:
        return
    for orders in (state.queue, state.by_kind[candidate.kind]):
        at = bisect.bisect_left(orders, candidate.order)
        if at < len(orders) and orders[at] == candidate.order:
            del orders[at]


def _part(state: _State, chosen: dict[str, Candidate], new_keys: set[str], touched_pools: set[int], reserve_freed: set[str],
          newly_victims: list[Victim], inventory: Inventory) -> dict[str, Candidate]:
    """The queued workloads this cycle can change, in rank order: the new ones; per kind that
    gained capacity its best-ranked members, as many as free GPUs could hold, plus one; per kind
    that may preempt a workload newly old enough to be a victim, its best-ranked members within
    the whole cycle's preemption budget, as many as the new victims' GPUs could hold, plus one.
    Added to ``chosen`` (by key), which is returned; ``inventory`` is the free capacity to count."""
    chosen.update((key, state.queued[key]) for key in new_keys if key in state.queued)
    if newly_victims:
        gain = number_or(state.snapshot.policy.preemption.min_margin_gain_per_gpu_hour, 0.0)
        cheapest: dict[str, float] = {}
        gpus: dict[str, int] = {}
        for victim in newly_victims:
            cheapest[victim.product] = min(cheapest.get(victim.product, math.inf), victim.margin)
            gpus[victim.product] = gpus.get(victim.product, 0) + victim.gpus
        for kind, orders in state.by_kind.items():
            usable = [o for o in state.ranker.options_of_kind[kind] if o.product in cheapest and o.margin - gain + EPSILON >= cheapest[o.product]]
            if not orders or not usable:
                continue
            head = state.queued[orders[0][2]].workload
            count = sum(gpus[o.product] for o in usable) // max(1, head.total_gpus) + 1
            for order in orders[:count]:
                if bisect.bisect_left(state.queue, order) >= MAX_PREEMPTION_ATTEMPTS_PER_PASS:
                    break
                chosen.setdefault(order[2], state.queued[order[2]])
    if touched_pools or reserve_freed:
        options_of_kind = state.ranker.options_of_kind
        for kind, orders in state.by_kind.items():
            if not orders:
                continue
            options = options_of_kind[kind]
            if not any(not touched_pools.isdisjoint(o.pools) or o.product in reserve_freed for o in options):
                continue
            head = state.queued[orders[0][2]].workload
            g, replicas = head.gpus_per_replica, head.replicas
            fits = sum(inventory.replicas_that_fit(o.pools, g) // replicas for o in options)
            for order in orders[: fits + 1]:
                chosen.setdefault(order[2], state.queued[order[2]])
    return chosen


# --- holding workloads and free capacity --------------------------------------------------


def _hold(state: _State, workload: Workload, sign: int) -> None:
    """Add (+1) or remove (-1) a holding workload's reservations and training GPUs."""
    inventory = state.inventory
    for entry in workload.placement:
        index = inventory.index_by_name.get(entry.node)
        if index is None:
            continue
        on_node = state.reservations.setdefault(index, {})
        if sign > 0:
            on_node.setdefault(workload.key, []).append(entry)
        else:
            on_node.pop(workload.key, None)
        if workload.workload_class != "inference":
            product = inventory.nodes[index].product
            state.training_used[product] = state.training_used.get(product, 0) + sign * whole(entry.gpus)


def _node_indices(inventory: Inventory, workload: Workload, placement: tuple[PlacementEntry, ...] | None = None) -> list[int]:
    entries = workload.placement if placement is None else placement
    return [i for i in (inventory.index_by_name.get(e.node) for e in entries) if i is not None]


def _nodes_by_index(nodes: tuple[GpuNode, ...], positions: list[int] | None) -> dict[int, GpuNode]:
    if positions is None:
        return {}
    return dict(zip(positions, nodes, strict=True))


def _refresh_node(state: _State, snapshot: Snapshot, index: int, node: GpuNode | None) -> bool:
    """Recompute a node's free GPUs and resources from the snapshot (as ``Inventory`` does for
    every node); True when something was freed."""
    inventory = state.inventory
    if node is None:
        return False
    name = inventory.nodes[index].name
    own_gpus, own_resources = snapshot.gpus_of_own_pods, snapshot.resources_of_own_pods
    raw = inventory.allocatable[index] - whole(node.gpus_used_by_pods)
    resources = dict(inventory.layout.resource_allocatable[index])
    for resource, amount in node.resources_used_by_pods:
        if resource in resources:
            resources[resource] -= amount
    for key, entries in state.reservations.get(index, {}).items():
        gpus = sum(e.gpus if type(e.gpus) is int and e.gpus >= 0 else whole(e.gpus) for e in entries)
        if own_gpus:
            gpus = max(0, gpus - whole(own_gpus.get((key, name), 0)))
        raw -= gpus
        for entry in entries:
            if entry.resources:
                for resource, amount in _beyond(entry.resources, own_resources.get((key, name), ())):
                    if resource in resources:
                        resources[resource] -= amount
    freed = raw > inventory.raw_free[index]
    if raw != inventory.raw_free[index]:
        inventory.adjust(index, raw - inventory.raw_free[index])
    current = inventory.resource_free[index]
    delta = tuple((r, a - current.get(r, 0)) for r, a in resources.items() if a != current.get(r, 0))
    if delta:
        freed = freed or any(a > 0 for _, a in delta)
        inventory.adjust_resources(index, delta, 1)
    return freed


def _set_victim(state: _State, snapshot: Snapshot, workload: Workload | None, key: str) -> None:
    """Bring the victim lists up to date for one holding workload (None: it left)."""
    old = state.victim_of_key.pop(key, None)
    if old is not None:
        victims = state.victims[old.product]
        at = bisect.bisect_left(victims, victim_order(old), key=victim_order)
        while at < len(victims) and victims[at].key != key:
            at += 1
        if at < len(victims):
            del victims[at]
    if workload is None or workload.admitted_at is None:
        return
    min_runtime = number_or(snapshot.policy.preemption.min_runtime_seconds, 0.0)
    if snapshot.now - workload.admitted_at < min_runtime:
        if workload.preemptible:
            heapq.heappush(state.not_yet_victims, (workload.admitted_at + min_runtime, key))
        return
    victim = victim_of(snapshot, state.inventory, state.ranker.margin, workload)
    if victim is not None:
        state.victim_of_key[key] = victim
        bisect.insort(state.victims.setdefault(victim.product, []), victim, key=victim_order)


def _compare(
    by_key: dict[str, Workload], by_id: dict[int, Workload], workloads: tuple[Workload, ...],
) -> tuple[dict[str, Workload], dict[int, Workload], list[Workload], list[Workload]] | None:
    """(by key, by id, arrived, left) against the last cycle's objects, or None when a key is listed
    twice. By identity first, at C speed: a caller that keeps its objects between cycles costs
    two set differences; one that parses afresh pays an equality test per object it replaced."""
    new_ids = dict(zip(map(id, workloads), workloads, strict=True))
    if len(new_ids) != len(workloads):
        return None
    added = [new_ids[i] for i in new_ids.keys() - by_id.keys()]
    removed = [by_id[i] for i in by_id.keys() - new_ids.keys()]
    if not added and not removed:
        return by_key, new_ids, [], []
    gone = {w.key: w for w in removed}  # by_key is changed in place: on None the state is rebuilt anyway
    for workload in removed:
        del by_key[workload.key]
    arrived: list[Workload] = []
    for workload in sorted(added, key=lambda w: w.key):
        key = workload.key
        if key in by_key:
            return None
        by_key[key] = workload
        if gone.get(key) != workload:
            arrived.append(workload)
        else:
            del gone[key]  # replaced by an equal object: no change
    left = sorted(gone.values(), key=lambda w: w.key)
    return by_key, new_ids, arrived, left


def _changed_keys(old: Mapping, new: Mapping) -> set:
    if old is new:
        return set()
    changed = {key for key, value in new.items() if old.get(key) != value}
    changed.update(key for key in old if key not in new)
    return changed
