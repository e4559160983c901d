"""The incremental engine: state kept between cycles, so a cycle caused by a few changes decides
only what those changes can affect, with the rules (and the code) of a whole cycle.

``IncrementalEngine().decide(snapshot)`` takes the same snapshots as ``decide``. It compares each
with the previous one (by identity first: unchanged objects cost a pointer compare; lists of
workloads walked side by side where they hold the same objects in the same order, ``_aligned``),
or is told what changed (``Changes``: workloads, and optionally nodes and own pods), and either
runs a whole cycle -- the first time, and whenever the kept state cannot be trusted -- or an
incremental one:

- Kept after every cycle: the free-capacity ledger of the last snapshot (``Inventory``, patched
  node by node), the ranked queue (every queued workload by its ``rank_order`` key, which does not
  move with the clock, so aging needs no re-ranking), the queue by *kind* (workloads of one kind
  -- shape, size, class, tier -- have the same options), the static-check caches (``Ranker``), the
  training GPUs per product (the inference reserve), the preemption victims, and each workload's
  last decision.
- A whole cycle runs on: the first snapshot (a restart), a policy change, a GPUQuota that binds, a
  per-namespace queue limit, a node removed or changed in shape (cordoned, relabelled, retainted:
  the layout every index refers to), a node added that forms a new pool (its product, memory and
  hard taints unlike every pool's) or changes a queued kind's options or lists a resource no node
  listed, a workload listed twice, and more changes at once than the larger of ``MAX_CHANGES``
  and a tenth of the queue (then a whole cycle costs about as much). ``full(snapshot)`` forces
  one (the operator's resync).
- A node added to a pool of alike nodes is incremental (``_add_nodes``): the layout is derived
  from the last one (``with_nodes_added``: node indexes follow node names, as a whole cycle's),
  the ledger, reservations, assumed admissions and victims move onto it (in place when the added
  names sort last), holders already placed on the node are counted, the inference-reserve caps
  grow, the ranker keeps every queued kind's options (checked: only a product a kind had no
  option on may change them -- ``Ranker.relayout`` looks at those kinds only, filed by the pools
  they may gain), and the pool's kinds are walked as for freed capacity.
- An incremental cycle: the touched nodes' free capacity is recomputed from the snapshot (their
  objects, the holding workloads and own pods on them, the last cycle's admissions there); new
  workloads get the static checks; queued ones past their deadline are rejected
  (``QueueTimeout``); running ones old enough become victims; then the placement passes
  (``passes.run_pass`` in every order of ``passes.ORDER_KEYS``, preemption, the choice of the best
  pass, the chains -- the whole cycle's code) run on a walk of the queue by kind (``_Streams``;
  kinds alike in demand -- options, GPUs per replica, replicas, training -- form a demand group
  that one fit check answers for, so a freed pool skips every group that cannot use it):
  the kinds whose pools gained capacity, whose product's inference reserve gained room, that may
  preempt a new victim, or that have a new member; each walked from its best-ranked member while
  its members get in. Where a pass preempts, the kinds that may use what the victims free join.
  What keeps that proportional to the change at 100,000 queued: kinds that only fit or fail (no
  new member, nothing to preempt) enter as one heap entry per demand group, at the best of their
  first members, and a group that no longer fits at its turn fails whole; a kind that may preempt
  comes in only if the change may turn its failed attempt into a success -- a victim new, changed
  or gone within the attempt's window (the first ``MAX_VICTIMS_PER_PREEMPTION`` victims under its
  threshold on its pools, cheapest loss first), more of its replicas fitting on a freed node or a
  victim there within that window, or its best member newly within the attempt budget; and a kind
  alike in everything a pass reads of it to one that has just tried everything and failed, with
  no admission since, fails the same way without a walk.
  Why that suffices: after any cycle no queued workload fits in what is left free (a pass only
  takes capacity; what a preemption frees beyond the preemptor's need is walked on at once), so a
  workload whose pools gained nothing still does not fit, and members of one kind fit or fail
  alike, in rank order, in every order. One exception is walked every cycle: a kind that needs
  more than GPUs (CPU, memory, node constraints) and may preempt -- its victims are counted by GPUs
  and the need checked on placing, so an admission elsewhere can turn its failure into a success.

What may differ from a whole cycle: the ejection chains (small clusters without preemption or
reserve) see only the walked kinds, not the whole queue -- the "margin within 1%" of the
equivalence test; preemption is tried by workloads whose queue position is within the whole
cycle's attempt budget (``MAX_PREEMPTION_ATTEMPTS_PER_PASS``; a whole cycle counts the failures
ahead in each order); and the reason of a queued workload the walk did not reach
(``InsufficientCapacity`` or ``InferenceReserve``) and the words of queued messages (free GPUs,
position) are refreshed by the next whole cycle. Everything else -- admissions, placements,
preemptions, rejections, the reasons of what the cycle decided, queue positions -- is what a
whole cycle decides; ``tests/core/test_incremental.py`` compares the two on random event
sequences.

The result's contract: a whole cycle returns every decision (as ``decide``); an incremental one
returns only the decisions that changed -- new workloads, admissions, rejections, and queued
workloads whose reason changed -- plus the preemptions, so a caller writes only those. Queue
positions move for everyone behind an admission or an arrival; they are served, not returned:
``queue_position(key)`` (O(log n)) and ``queued()`` (keys in rank order). ``last_full`` says
whether the last cycle was whole (then every decision carries its position).
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import heapq
import math
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress, count, islice

from ..guarantee import Tenants
from ..inventory import Inventory, LayoutMemo, _beyond, _same_shape, whole
from ..model import Action, CycleResult, Decision, GpuNode, PlacementEntry, Preemption, Snapshot, Workload
from .chains import IMPROVE_PASSES, SWAP_UP_TO_NODES, improve_by_swaps
from .choose import choose_pass
from .cycle import EPSILON, Admission, Candidate, Cycle, Option, PassResult, Victim, new_pass, number_or
from .messages import finalize
from .passes import (
    ALL_ORDERS_UP_TO,
    MAX_PREEMPTION_ATTEMPTS_PER_PASS,
    MAX_VICTIMS_PER_PREEMPTION,
    failed_before,
    order_keys,
    preemption_key,
    run_pass,
)
from .prepare import Ranker, prepare, reserve_caps, timeout_rejection, victim_of, victim_order

# More changes than this in one cycle (or a tenth of the queue, whichever is larger): a whole
# cycle, which then costs about what the changes would.
MAX_CHANGES = 1_000


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed since the snapshot given to the engine's previous call (``decide`` or
    ``full``), told by a caller that knows it (the operator's watch events, a replay's own events),
    so the engine need not compare. What is not listed is taken to be unchanged: the very same
    objects as in that snapshot.

    ``pending`` and ``holding`` (required, apart): by ``Workload.key``, the workload's object in the
    new snapshot (the very object listed in ``Snapshot.pending`` / ``holding``), or None when it is
    no longer listed there. Every key whose object was added, replaced (even by an equal one) or
    removed must be listed -- a workload admitted last cycle that now runs: None in ``pending``,
    its object in ``holding``.

    ``nodes`` and ``own_pods`` (optional; given, they must be complete; None: the engine compares
    those itself, by identity over every node and item by item over the own-pod maps, a
    millisecond or two at 10,000 nodes): ``nodes``, the names of the nodes whose object was
    replaced, every other node the very same object at the same place in ``Snapshot.nodes`` (a
    node added or removed changes the list's length: the engine then compares the nodes itself
    and does not read this); ``own_pods``, every ``(workload key, node)`` entry of
    ``Snapshot.gpus_of_own_pods`` or ``resources_of_own_pods`` added, changed or removed."""

    pending: Mapping[str, Workload | None] = field(default_factory=dict)
    holding: Mapping[str, Workload | None] = field(default_factory=dict)
    nodes: Collection[str] | None = None
    own_pods: Collection[tuple[str, str]] | None = None


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
    pending_idset: set[int]  # the same ids as a set, for set differences at C speed
    holding_idset: set[int]
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
    kinds_by_pool: dict[int, set[int]] = field(default_factory=dict)  # see _kinds_index
    kinds_by_product: dict[str, set[int]] = field(default_factory=dict)
    kinds_indexed: int = 0
    # Kinds alike in what decides whether they fit (options' products, pools and needs; GPUs per
    # replica, replicas, training) form a demand group: one fit check answers for all of them.
    group_of_kind: dict[int, int] = field(default_factory=dict)
    group_demand: list[tuple] = field(default_factory=list)
    kinds_of_group: list[set[int]] = field(default_factory=list)
    groups_by_pool: dict[int, set[int]] = field(default_factory=dict)
    groups_by_product: dict[str, set[int]] = field(default_factory=dict)
    group_ids: dict[tuple, int] = field(default_factory=dict)
    queued_in_group: dict[int, int] = field(default_factory=dict)  # group -> its queued workloads
    needing_kinds: set[int] = field(default_factory=set)  # kinds that need more than GPUs of a node
    budget_edge: tuple | None = None  # _Streams.budget_edge of the last cycle
    # node name -> holding workloads placed on it though no such node is known (counted once it comes)
    placed_elsewhere: dict[str, set[str]] = field(default_factory=dict)


class IncrementalEngine:
    """One engine kept for the life of a caller (the operator, a replay); see the module docstring."""

    def __init__(self) -> None:
        self._layouts = LayoutMemo()
        self._state: _State | None = None
        self.last_full = False
        self.last_full_reason = ""  # why the last whole cycle ran
        self.full_cycles = 0
        self.incremental_cycles = 0
        self._changed_positions: list[int] = []  # nodes (by position) whose object changed, from _why_whole
        self._nodes_added = False  # from _why_whole: the snapshot has the last one's nodes and more

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

    def decide(self, snapshot: Snapshot, changes: Changes | None = None) -> CycleResult:
        """The cycle for this snapshot: incremental when the state allows, else whole.

        ``changes``: what the caller knows changed since the snapshot it gave last (see
        ``Changes``); None: the engine compares the snapshots itself (O(workloads), at C speed)."""
        collecting = gc.isenabled()
        gc.disable()  # as decide() does: a cycle allocates much and frees little
        try:
            state = self._state
            why = self._why_whole(state, snapshot, changes) if state is not None else "first cycle"
            if why is None and state is not None:
                result = self._incremental(state, snapshot, changes)
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

    def _why_whole(self, state: _State, snapshot: Snapshot, changes: Changes | None = None) -> str | None:
        last = state.snapshot
        policy = snapshot.policy
        if policy is not last.policy and policy != last.policy:
            return "policy changed"
        if policy.max_queued_per_namespace is not None:
            return "a queue limit per namespace"
        if snapshot.quotas and Tenants.of(snapshot, state.inventory) is not None:
            return "GPUQuotas"
        self._nodes_added = False
        if snapshot.nodes is not last.nodes:
            if len(snapshot.nodes) != len(last.nodes):
                if len(snapshot.nodes) < len(last.nodes):
                    return "nodes removed"
                self._nodes_added = True  # the rest is checked by _add_nodes
                return None
            if state.inventory.layout.index_of_position is None:
                return "duplicate node names"
            told = _told_positions(state.inventory, snapshot, changes.nodes) if changes is not None and changes.nodes is not None else None
            self._changed_positions = told if told is not None else list(
                compress(range(len(snapshot.nodes)), map(operator.is_not, snapshot.nodes, last.nodes)))
            for position in self._changed_positions:
                if not _same_shape(snapshot.nodes[position], last.nodes[position]):
                    return "a node changed shape"
        else:
            self._changed_positions = []
        return None

    def _incremental(self, state: _State, snapshot: Snapshot, changes: Changes | None) -> CycleResult | str:
        """One incremental cycle, or why it must be whole (state untouched then, it is rebuilt)."""
        last = state.snapshot
        now = snapshot.now
        added: _Added | None = None
        if self._nodes_added:
            grown = _add_nodes(state, snapshot)
            if isinstance(grown, str):
                return grown
            added = grown
            self._changed_positions = added.changed_positions
        inventory = state.inventory
        # --- what changed --------------------------------------------------------
        if changes is None:
            pending_diff = _compare(state.pending, state.pending_ids, state.pending_idset, snapshot.pending, last.pending)
            holding_diff = _compare(state.holding, state.holding_ids, state.holding_idset, snapshot.holding, last.holding)
        else:
            pending_diff = _told(state.pending, state.pending_ids, state.pending_idset, changes.pending)
            holding_diff = _told(state.holding, state.holding_ids, state.holding_idset, changes.holding)
        if pending_diff is None or holding_diff is None:
            return "a workload listed twice"
        pending, pending_ids, pending_idset, arrived, left_objects = pending_diff
        holding, holding_ids, holding_idset, taken, released = holding_diff
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
        touched_nodes.update(positions[position] for position in self._changed_positions)
        if changes is not None and changes.own_pods is not None:
            own_changed = set(changes.own_pods)
        else:
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
        if added is not None:
            changed_victims |= added.holders
        for workload in released:
            _hold(state, workload, -1)
            touched_nodes.update(_node_indices(inventory, workload))
            changed_victims.add(workload.key)
        for workload in taken:
            _hold(state, workload, +1)
            touched_nodes.update(_node_indices(inventory, workload))
            changed_victims.add(workload.key)
        state.pending, state.pending_ids, state.holding, state.holding_ids = pending, pending_ids, holding, holding_ids
        state.pending_idset, state.holding_idset = pending_idset, holding_idset
        state.snapshot = snapshot
        state.admitted, state.assumed_nodes, state.assumed_training = set(), set(), {}
        newly_victims: list[Victim] = []
        if snapshot.policy.preemption.enabled:
            for key in sorted(changed_victims):
                was = state.victim_of_key.get(key)
                _set_victim(state, snapshot, holding.get(key), key)
                now_victim = state.victim_of_key.get(key)
                if now_victim != was:  # a victim new, changed or gone: those that may choose it (or did) look again
                    newly_victims.extend(v for v in (now_victim, was) if v is not None)
            waiting = state.not_yet_victims
            while waiting and waiting[0][0] <= now:  # old enough to preempt now
                _, key = heapq.heappop(waiting)
                if key in holding and key not in state.victim_of_key:
                    _set_victim(state, snapshot, holding[key], key)
                    if key in state.victim_of_key:
                        newly_victims.append(state.victim_of_key[key])
        # --- free capacity, node by node ---------------------------------------------
        touched_pools: set[int] = set()
        freed_nodes: list[tuple[int, int]] | None = []  # (node index, its raw free GPUs before) where something was freed
        node_at = inventory.layout.position_of_index if touched_nodes else []
        for index in sorted(touched_nodes):
            raw_before = inventory.raw_free[index]
            if _refresh_node(state, snapshot, index, snapshot.nodes[node_at[index]]):
                pool = inventory.pool_of[index]
                if pool >= 0:
                    touched_pools.add(pool)
                    freed_nodes.append((index, raw_before))  # type: ignore[union-attr]
        reserve_freed = {p for p, used in training_before.items() if state.training_used.get(p, 0) < used}
        if added is not None:
            touched_pools |= added.pools
            reserve_freed |= added.reserve_grown
            freed_nodes = None  # nodes new to the pools: taken as freeing anything there
        if inventory.stale_entries() > 2 * len(inventory.nodes) + 64:
            inventory.rebucket()  # the lazily deleted heap entries, dropped before every pass copies them
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
        # --- the passes, walking only the kinds this change can affect ------------------------
        preemptions: tuple[Preemption, ...] = ()
        streams = _Streams(state, now)
        streams.activate(new_keys, touched_pools, reserve_freed, newly_victims, freed_nodes)
        state.budget_edge = streams.budget_edge
        if streams.active:
            cycle = Cycle(
                snapshot=snapshot,
                policy=snapshot.policy,
                inventory=inventory,
                ranked=[],
                static_rejections=[],
                invalid=[],
                training_cap=state.training_cap,
                reserve_gpus=state.reserve_gpus,
                training_used=dict(state.training_used),
                victims_by_product=state.victims if snapshot.policy.preemption.enabled else {},
                cheapest_victim_margin=streams.cheapest_victim or {p: min(v.margin for v in vs) for p, vs in state.victims.items() if vs},
                ranker=state.ranker,
            )
            best, seen = _choose_lazily(cycle, streams)
            cycle.ranked = sorted(seen, key=lambda c: c.rank)
            for candidate in cycle.ranked:
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


# --- nodes added ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Added:
    changed_positions: list[int]  # positions (in the new snapshot) of the nodes added or whose object changed
    pools: set[int]  # pools that gained a node
    reserve_grown: set[str]  # products whose training cap grew
    holders: set[str]  # holding workloads placed on an added node (their victims change)


def _add_nodes(state: _State, snapshot: Snapshot) -> _Added | str:
    """Nodes added, none removed or changed in shape, the pools alike (each added node joins a pool
    of alike nodes): the state moved onto the new layout (node indexes follow node names, as a
    whole cycle's), or why a whole cycle must run (the state is rebuilt then)."""
    last = state.snapshot.nodes
    kept = len(last)
    # Usually the nodes known keep their positions and the added ones come after (a cache in
    # arrival order): compared by identity at C speed; else by name.
    changed = list(compress(range(kept), map(operator.is_not, snapshot.nodes[:kept], last)))
    added_positions = list(range(kept, len(snapshot.nodes)))
    if not all(_same_shape(snapshot.nodes[position], last[position]) for position in changed):
        last_nodes = {node.name: node for node in last}
        changed, added_positions = [], []
        for position, node in enumerate(snapshot.nodes):
            before = last_nodes.get(node.name)
            if before is None:
                added_positions.append(position)
            elif before is not node:
                if not _same_shape(node, before):
                    return "a node changed shape"
                changed.append(position)
        if len(added_positions) != len(snapshot.nodes) - kept:
            return "nodes removed"
    old = state.inventory
    grown = old.layout.with_nodes_added(snapshot.nodes, [snapshot.nodes[position] for position in added_positions])
    if grown is None:
        return "a new pool, or node names not unique"  # pool numbers would move under every kind's options
    layout, was = grown
    if layout.listed_resources != old.layout.listed_resources:
        return "a resource newly listed"  # what the ledger counts, and so every kind's need
    inventory = old.on_layout(layout, was)
    new_names = {snapshot.nodes[position].name for position in added_positions}
    pools = {layout.pool_of[layout.index_by_name[name]] for name in new_names} - {-1}
    def member(kind: int) -> Workload | None:
        orders = state.by_kind.get(kind)
        return state.queued[orders[0][2]].workload if orders else None

    if not state.ranker.relayout(inventory, member, pools):
        return "a kind's options changed"
    state.inventory = inventory
    if inventory is not old:  # a node added before known ones in name order: indexes move
        moved = [i for i, known in enumerate(was) if known is not None]  # old index -> new (in name order both)
        first_moved = next(i for i, index in enumerate(moved) if index != i)
        state.reservations = {moved[index]: held for index, held in state.reservations.items()}
        state.assumed_nodes = {moved[index] for index in state.assumed_nodes}
        for product, victims in state.victims.items():
            state.victims[product] = [
                dataclasses.replace(v, freed=tuple((moved[i], gpus) for i, gpus in v.freed)) if v.freed and v.freed[-1][0] >= first_moved else v
                for v in victims
            ]
        state.victim_of_key = {v.key: v for victims in state.victims.values() for v in victims}
    holders: set[str] = set()
    for name in new_names:  # what holds on an added node (a whole cycle counts it)
        holders.update(state.placed_elsewhere.pop(name, ()))
    for workload in (state.holding[key] for key in sorted(holders) if key in state.holding):
        for entry in workload.placement:
            if entry.node in new_names:
                index = layout.index_by_name[entry.node]
                state.reservations.setdefault(index, {}).setdefault(workload.key, []).append(entry)
                if workload.workload_class != "inference":
                    product = layout.nodes[index].product
                    state.training_used[product] = state.training_used.get(product, 0) + whole(entry.gpus)
    cap_before = state.training_cap
    totals = {product: cap + state.reserve_gpus[product] for product, cap in cap_before.items()}
    for name in new_names:
        index = layout.index_by_name[name]
        totals[layout.nodes[index].product] = totals.get(layout.nodes[index].product, 0) + layout.allocatable[index]
    state.training_cap, state.reserve_gpus = reserve_caps(snapshot.policy, totals)
    reserve_grown = {p for p, cap in state.training_cap.items() if cap > cap_before.get(p, 0)}
    return _Added(sorted(changed + added_positions), pools, reserve_grown, holders)


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
        pending_idset=set(map(id, snapshot.pending)),
        holding_idset=set(map(id, snapshot.holding)),
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
            else:
                state.placed_elsewhere.setdefault(entry.node, set()).add(workload.key)
    for candidate in cycle.ranked:
        if candidate.rejection is None and candidate.workload.key in queued_keys and candidate.workload.key not in state.queued:
            _enqueue(state, candidate, sort=False)
    state.queue.sort()
    for orders in state.by_kind.values():
        orders.sort()
    state.budget_edge = state.queue[MAX_PREEMPTION_ATTEMPTS_PER_PASS] if len(state.queue) > MAX_PREEMPTION_ATTEMPTS_PER_PASS else None
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
    group = state.group_of_kind.get(candidate.kind)
    if group is None:  # a kind new since the index was last brought up to date
        _kinds_index(state)
        group = state.group_of_kind[candidate.kind]
    state.queued_in_group[group] = state.queued_in_group.get(group, 0) + 1
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
    state.queued_in_group[state.group_of_kind[candidate.kind]] -= 1
    for orders in (state.queue, state.by_kind[candidate.kind]):
        at = bisect.bisect_left(orders, candidate.order)
        if at < len(orders) and orders[at] == candidate.order:
            del orders[at]


class _Below:
    """Ranks that may try preemption: those within the whole cycle's attempt budget (a rank here
    is the queue position, counted from 0)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __contains__(self, rank: object) -> bool:
        return isinstance(rank, int) and rank < self.limit


class _Streams:
    """Each placement order of a whole cycle, walked kind by kind over the kinds a change can
    affect, without looking at the rest of the queue.

    In every order the members of one kind come in rank order (``passes.ORDER_KEYS``), have the same
    options and fit or fail alike, and free capacity only shrinks during a pass except where it
    preempts: so a kind is walked from its best-ranked member while its members get in, and left
    at the first that does not (its new members are still tried, for their decisions). A kind
    comes in when it may use what the change freed (its pools or its product's inference reserve),
    a new victim, or -- mid-pass -- what a preemption freed on one of its products (from its first
    member after the preemptor in that order: those before it were tried, and failed, already).
    A kind whose members fit nowhere now and cannot preempt is left out from the start. A
    candidate's rank is its queue position, so ranks keep the queue's order."""

    def __init__(self, state: _State, now: float) -> None:
        self.state = state
        self.now = now
        self.active: set[int] = set()
        self.startable: set[int] = set()  # active kinds whose best-ranked member may get in
        self.plain_kinds: set[int] = set()  # see activate
        self.plain_by_group: dict[int, list[int]] = {}
        self.new_in_kind: dict[int, list[int]] = {}  # kind -> indexes (in by_kind) of its new members
        self.ready: dict[str, Candidate] = {}  # candidates given a rank and an effective margin this cycle
        self.margined: set[str] = set()  # keys of candidates given an effective margin (see unranked)
        self.by_pool, self.by_product = _kinds_index(state)
        policy = state.snapshot.policy
        self.preempting = bool(policy.preemption.enabled) and any(state.victims.values())
        self.gain = number_or(policy.preemption.min_margin_gain_per_gpu_hour, 0.0)
        self.fit_memo: dict[int, tuple[object, bool]] = {}  # demand group -> (capacity version, fits)
        self.cheapest_victim = {p: min(v.margin for v in vs) for p, vs in state.victims.items() if vs} if self.preempting else {}
        self.preempting_options: dict[int, list[tuple[Option, float]]] = {}  # see _may_preempt
        # The first order past the attempt budget: a member ranks within it when it sorts before.
        self.near_head_kinds: dict[int, list[int]] = {}  # see _near_head_in
        self.ahead: dict[tuple, list[float]] = {}  # see _in_window
        self.signatures: dict[tuple, int] = {}  # see _signature
        self.signature_of_kind: dict[int, int] = {}
        self.failed_alike: dict[int, tuple[int, int]] = {}  # signature -> the pass and its admissions when one failed
        self.victims_on: dict[str, dict[int, list[Victim]]] = {}  # see _victims_on
        self.budget_edge = state.queue[MAX_PREEMPTION_ATTEMPTS_PER_PASS] if len(state.queue) > MAX_PREEMPTION_ATTEMPTS_PER_PASS else None

    def candidate(self, order: tuple) -> Candidate:
        candidate = self.ready.get(order[2])
        if candidate is None:
            state = self.state
            candidate = self.ready[order[2]] = state.queued[order[2]]
            candidate.rank = bisect.bisect_left(state.queue, order)
            waited = max(0.0, self.now - number_or(candidate.workload.queued_since, self.now))
            candidate.effective_margin = candidate.best_margin + state.ranker.aging * waited / 3600.0
        return candidate

    def unranked(self, order: tuple) -> Candidate:
        """``candidate`` without its rank (it may be a past cycle's): for comparing order keys but
        for the rank they end with -- the orders of queued workloads sort as their ranks do."""
        self.give_margins((order,))
        return self.state.queued[order[2]]

    def give_margins(self, orders: Iterable[tuple]) -> None:
        """This cycle's effective margin to the candidates of ``orders`` (as ``candidate`` does)."""
        ready, margined, queued = self.ready, self.margined, self.state.queued
        now, aging = self.now, self.state.ranker.aging
        for order in orders:
            key = order[2]
            if key in ready or key in margined:
                continue
            margined.add(key)
            candidate = queued[key]
            waited = max(0.0, now - number_or(candidate.workload.queued_since, now))
            candidate.effective_margin = candidate.best_margin + aging * waited / 3600.0

    def activate(self, new_keys: set[str], touched_pools: set[int], reserve_freed: set[str], newly_victims: list[Victim],
                 freed_nodes: list[tuple[int, int]] | None = None) -> None:
        """The kinds to walk (see the class docstring). ``freed_nodes``: (node index, raw free GPUs
        before) of the nodes where something was freed (None: any node of ``touched_pools``)."""
        state = self.state
        for key in new_keys:
            candidate = state.queued.get(key)
            if candidate is not None:
                orders = state.by_kind[candidate.kind]
                self.new_in_kind.setdefault(candidate.kind, []).append(bisect.bisect_left(orders, candidate.order))
        for indexes in self.new_in_kind.values():
            indexes.sort()
        kinds: set[int] = set()
        groups: set[int] = set()
        if freed_nodes is not None and len(freed_nodes) > VICTIMS_ONE_BY_ONE:
            freed_nodes = None  # many at once: every kind of those pools that may preempt, not node by node
        for pool in touched_pools:
            groups.update(state.groups_by_pool.get(pool, ()))
        for group in groups:  # a group that does not fit now stays out, but for its kinds that may preempt anew
            if not self._queued_in(group):
                continue
            if self._group_may_fit(group):
                kinds.update(state.kinds_of_group[group])
            elif self.preempting:
                kinds.update(kind for kind in self._near_head_in(group) if freed_nodes is None or self._may_preempt_anew(kind, freed_nodes))
        for product in reserve_freed:
            kinds.update(self.by_product.get(product, ()))
        by_product: dict[str, list[Victim]] = {}
        for victim in newly_victims:
            by_product.setdefault(victim.product, []).append(victim)
        for product, victims in by_product.items():
            if len(victims) > VICTIMS_ONE_BY_ONE:  # many at once (a big cycle's admissions running): by product
                kinds.update(kind for kind in self.by_product.get(product, ()) if self._near_head(kind))
            else:
                for victim in victims:
                    kinds |= self._may_take(victim)
        if self.preempting:
            kinds.update(self._newly_within_budget())
        if self.preempting:
            # Preemption for a workload that needs more than GPUs counts victims by GPUs and checks
            # the need on placing: an admission elsewhere can turn its failure into a success (more
            # victims chosen), so such kinds try again every cycle while they may preempt.
            kinds.update(state.needing_kinds)
        for kind in kinds | set(self.new_in_kind):
            if state.by_kind.get(kind) and (self._may_fit(kind) or self._may_preempt(kind)):
                self.startable.add(kind)
        self.active = self.startable | set(self.new_in_kind)
        # Plain kinds: started, with no new member and no preemption to try -- members that fit or
        # fail as their demand group does (see walk).
        for kind in sorted(self.startable):
            if kind not in self.new_in_kind and not self._may_preempt(kind):
                self.plain_kinds.add(kind)
                self.plain_by_group.setdefault(state.group_of_kind[kind], []).append(kind)

    def _may_take(self, victim: Victim) -> set[int]:
        """The kinds whose preemption may choose the victim, or chose it (it is gone or changed):
        ``passes._preempt``'s rule -- an option on its product whose threshold it is under, with GPUs
        it frees on that option's pools, and it within the attempt's window (``_in_window``). To the
        others it changes nothing, so they fail as they did."""
        state = self.state
        pool_of, options_of_kind, demand_of_kind = state.inventory.pool_of, state.ranker.options_of_kind, state.ranker.demand_of_kind
        pools = {pool_of[index] for index, _ in victim.freed} - {-1}
        current = state.victim_of_key.get(victim.key) is victim  # new or changed (else: gone, or the old one)
        kinds: set[int] = set()
        for pool in pools:
            for kind in self.by_pool.get(pool, ()):
                if kind not in kinds and self._near_head(kind) and any(
                    option.product == victim.product and pool in option.pools and victim.margin <= option.margin - self.gain + EPSILON
                    and self._in_window(victim, option)
                    and (not current or demand_of_kind[kind][1] > 1 or option.need is not None
                         or self._may_hold_there(victim, option, demand_of_kind[kind][0]))
                    for option in options_of_kind[kind]
                ):
                    kinds.add(kind)
        return kinds

    def _may_hold_there(self, victim: Victim, option: Option, g: int) -> bool:
        """For a kind of one replica needing only GPUs, whose attempt failed before the victim came:
        whether, with it, a node it frees GPUs on would hold the replica. The attempt failed, so no
        node of its window held one; the victim's coming only drops the last victim from the window
        elsewhere, so only its own nodes can now hold one."""
        inventory = self.state.inventory
        on_node = self._victims_on(victim.product)
        threshold = option.margin - self.gain
        for index in {i for i, _ in victim.freed if inventory.pool_of[i] in option.pools}:
            freed = sum(gpus for v in on_node.get(index, ()) if v.margin <= threshold + EPSILON and self._in_window(v, option)
                        for i, gpus in v.freed if i == index)
            if inventory.usable_after(index, freed) >= g:
                return True
        return False

    def _in_window(self, victim: Victim, option: Option) -> bool:
        """Whether an attempt on the option would look at the victim: one looks at the first
        ``MAX_VICTIMS_PER_PREEMPTION`` victims under its threshold that free GPUs on its pools,
        cheapest loss first, and no further. (Within a pass, a preemption before a kind's turn takes
        victims and so moves the window on: then ``_reopen`` walks the kind on.)"""
        victims = self.state.victims.get(victim.product, [])
        at = bisect.bisect_left(victims, victim_order(victim), key=victim_order)  # the victims ahead of it
        if at < MAX_VICTIMS_PER_PREEMPTION:
            return True
        key = (victim.product, at, option.pools)
        margins = self.ahead.get(key)
        if margins is None:
            pool_of, on = self.state.inventory.pool_of, set(option.pools)
            margins = self.ahead[key] = sorted(v.margin for v in victims[:at] if any(pool_of[i] in on for i, _ in v.freed))
        return bisect.bisect_right(margins, option.margin - self.gain + EPSILON) < MAX_VICTIMS_PER_PREEMPTION

    def _may_preempt_anew(self, kind: int, freed_nodes: list[tuple[int, int]]) -> bool:
        """Whether capacity freed on ``freed_nodes`` may turn the kind's failed preemption into a
        success: on a node of an option's pools, more replicas fit in its free GPUs than before, or
        a victim there is within the attempt's window (the rest of the attempt counts as before)."""
        if not self._may_preempt(kind):
            return False
        state = self.state
        inventory = state.inventory
        g = state.ranker.demand_of_kind[kind][0]
        for option, threshold in self.preempting_options[kind]:
            for index, raw_before in freed_nodes:
                if inventory.pool_of[index] not in option.pools:
                    continue
                if inventory.free[index] // g != min(inventory.allocatable[index], max(0, raw_before)) // g:
                    return True
                for victim in self._victims_on(option.product).get(index, ()):
                    if victim.margin <= threshold + EPSILON and self._in_window(victim, option):
                        return True
        return False

    def _victims_on(self, product: str) -> dict[int, list[Victim]]:
        """The product's victims by the nodes they free GPUs on (made once a cycle)."""
        on = self.victims_on.get(product)
        if on is None:
            on = self.victims_on[product] = {}
            for victim in self.state.victims.get(product, ()):
                for index, _ in victim.freed:
                    on.setdefault(index, []).append(victim)
        return on

    def _newly_within_budget(self) -> list[int]:
        """Kinds whose best-ranked member came within the attempt budget since the last cycle (others
        ahead left): never tried preemption there."""
        state = self.state
        old_edge, queue = state.budget_edge, state.queue
        if old_edge is None:
            return []
        end = min(len(queue), MAX_PREEMPTION_ATTEMPTS_PER_PASS)
        start = bisect.bisect_left(queue, old_edge)
        kinds = []
        for order in queue[start:end]:
            kind = state.queued[order[2]].kind
            if state.by_kind[kind][0] == order:
                kinds.append(kind)
        return kinds

    def _may_fit(self, kind: int, inventory: Inventory | None = None, training_used: Mapping[str, int] | None = None,
                 version: object = None) -> bool:
        """Whether a member of the kind fits in free capacity now (by default: the state's).
        ``version`` names the capacity's state (it changes only with an admission): the kinds of
        one demand group share the answer while it holds."""
        return self._group_may_fit(self.state.group_of_kind[kind], inventory, training_used, version)

    def _group_may_fit(self, group: int, inventory: Inventory | None = None, training_used: Mapping[str, int] | None = None,
                       version: object = None) -> bool:
        known = self.fit_memo.get(group)
        if known is not None and known[0] == version:
            return known[1]
        state = self.state
        fits = self._group_fits(group, inventory if inventory is not None else state.inventory, training_used if training_used is not None else state.training_used)
        self.fit_memo[group] = (version, fits)
        return fits

    def _group_fits(self, group: int, inventory: Inventory, training_used: Mapping[str, int]) -> bool:
        state = self.state
        options, g, replicas, is_training = state.group_demand[group]
        total = g * replicas
        for product, pools, need in options:
            cap = state.training_cap.get(product)
            if is_training and cap is not None and training_used.get(product, 0) + total > cap:
                continue  # training never into the inference reserve
            if inventory.fits(pools, g, replicas, need):
                return True
        return False

    def _may_enter(self, kind: int, result: PassResult) -> bool:
        """Whether the kind's next member may get in during this pass, as capacity is now."""
        version = (id(result), len(result.admitted))
        return self._may_fit(kind, result.inventory, result.training_used, version) or self._may_preempt(kind, result)

    def _may_preempt(self, kind: int, result: PassResult | None = None) -> bool:
        """Whether a member of the kind may preempt: within the attempt budget, some victim cheap
        enough on a product of its options, and (``result``: in that pass) no attempt alike that
        failed already (``passes._preempt`` skips those)."""
        if not self.preempting:
            return False
        options = self.preempting_options.get(kind)
        if options is None:  # the same all cycle (the kinds' heads do not change during the passes)
            options = self.preempting_options[kind] = self._preempting_options(kind)
        if not options or result is None or not result.preempt_failed:
            return bool(options)
        state = self.state
        g, replicas, _ = state.ranker.demand_of_kind[kind]
        shape = state.queued[state.by_kind[kind][0][2]].shape  # the kind's (its members') shape
        failed = result.preempt_failed
        return not all(failed_before(failed.get(preemption_key(shape, option, g, False)), replicas, threshold)
                       for option, threshold in options)

    def _preempting_options(self, kind: int) -> list[tuple[Option, float]]:
        """(option, threshold) of the kind's options on which its head may try preemption: within
        the attempt budget, with a victim cheap enough on that product."""
        if not self._near_head(kind):
            return []
        cheapest = self.cheapest_victim
        return [(option, option.margin - self.gain) for option in self.state.ranker.options_of_kind[kind]
                if option.product in cheapest and cheapest[option.product] <= option.margin - self.gain + EPSILON]

    def _queued_in(self, group: int) -> bool:
        """Whether a kind of the group has queued workloads (groups stay indexed when their kinds'
        queues run empty, and a fit check can cost a look at every node)."""
        return self.state.queued_in_group.get(group, 0) > 0

    def _near_head_in(self, group: int) -> list[int]:
        """The group's kinds with a member within the attempt budget (the only ones that may preempt)."""
        kinds = self.near_head_kinds.get(group)
        if kinds is None:
            kinds = self.near_head_kinds[group] = [kind for kind in self.state.kinds_of_group[group] if self._near_head(kind)]
        return kinds

    def _near_head(self, kind: int) -> bool:
        """Whether the kind has a member within the attempt budget (its best-ranked one's rank)."""
        orders = self.state.by_kind.get(kind)
        return bool(orders) and (self.budget_edge is None or orders[0] < self.budget_edge)  # type: ignore[index]

    def walk(self, key: Callable[[Candidate], tuple], result: PassResult, seen: dict[str, Candidate]) -> Iterator[Candidate]:
        """One order: the active kinds' members, merged by ``key``, as the pass admits them."""
        state = self.state
        heap: list[tuple[tuple, int, int]] = []  # (key, kind, index); an entry not in ``at`` is stale
        at: dict[int, int] = {}  # kind -> index of its member in the heap

        def push(kind: int, index: int) -> None:
            orders = state.by_kind[kind]
            if index >= len(orders):
                return
            # A member that cannot fit now (nor preempt) fails at its turn, capacity only
            # shrinking until then: skipped, unless it is new and needs its decision.
            if not self._may_enter(kind, result):
                later = [i for i in self.new_in_kind.get(kind, ()) if i >= index]
                if not later:
                    return
                index = later[0]
            at[kind] = index
            heapq.heappush(heap, (key(self.candidate(orders[index])), kind, index))

        plain = self.plain_by_group
        for kind in sorted(self.active):
            if kind in self.startable:
                if state.group_of_kind[kind] not in plain or kind not in self.plain_kinds:
                    push(kind, 0)
            elif kind in self.new_in_kind:
                push(kind, self.new_in_kind[kind][0])
        # The plain kinds of a group come in as one entry, at the best of their first members: a group
        # that does not fit when its turn comes fails whole (capacity only shrinks until then; what a
        # preemption frees, _reopen walks on), one that fits is walked kind by kind.
        waiting: dict[int, list[int]] = {}
        queued, by_kind = state.queued, state.by_kind
        for group, kinds in plain.items():
            heads = [by_kind[kind][0] for kind in kinds]
            self.give_margins(heads)
            if key(queued[heads[0][2]])[:-1]:
                _, first = min(zip([key(queued[order[2]])[:-1] for order in heads], heads, strict=True))
            else:  # rank order: the orders themselves
                first = min(heads)
            heap.append((key(self.candidate(first)), -1 - group, 0))
            waiting[group] = kinds
        heapq.heapify(heap)
        while heap:
            position, kind, index = heapq.heappop(heap)
            if kind < 0:
                kinds = waiting.pop(-1 - kind)
                if self._group_may_fit(-1 - kind, result.inventory, result.training_used, (id(result), len(result.admitted))):
                    for member in kinds:
                        if member not in at:  # not walked on already by _reopen
                            push(member, 0)
                continue
            if at.get(kind) != index:
                continue  # replaced by an earlier member (see _reopen)
            del at[kind]
            if index not in self.new_in_kind.get(kind, ()) and not self._may_enter(kind, result):
                # Others took what it could have used since it was pushed: it fails at its turn.
                later = [i for i in self.new_in_kind.get(kind, ()) if i > index]
                if later:
                    push(kind, later[0])
                continue
            candidate = self.candidate(state.by_kind[kind][index])
            is_new = index in self.new_in_kind.get(kind, ())
            if not is_new and self._fails_alike(kind, candidate, result):
                later = [i for i in self.new_in_kind.get(kind, ()) if i > index]
                if later:
                    push(kind, later[0])
                continue
            # Its failure tells how kinds alike fail if it tries all a kind alike would (within the budget).
            afresh = ((not self.preempting or candidate.rank < MAX_PREEMPTION_ATTEMPTS_PER_PASS) and len(seen) < MAX_PREEMPTION_ATTEMPTS_PER_PASS
                      and self._tries_afresh(candidate, result))
            seen[candidate.workload.key] = candidate
            yield candidate
            admission = result.admitted.get(candidate.rank)
            if admission is None and afresh:
                self.failed_alike[self._signature(kind)] = (id(result), len(result.admitted))
            if admission is not None:
                push(kind, index + 1)
                if admission.victims:
                    self._reopen(admission.victims, key, (position[:-1], candidate.order), at, push, result)
            else:  # the rest of the kind fails too: only its new members still need a decision
                later = [i for i in self.new_in_kind.get(kind, ()) if i > index]
                if later:
                    push(kind, later[0])

    def _signature(self, kind: int) -> int:
        """Numbers kinds alike in all a placement or preemption attempt reads of them: options
        (products, margins, pools, needs), GPUs per replica, replicas, training."""
        signature = self.signature_of_kind.get(kind)
        if signature is None:
            ranker = self.state.ranker
            alike = (ranker.options_of_kind[kind], ranker.demand_of_kind[kind])
            signature = self.signature_of_kind[kind] = self.signatures.setdefault(alike, len(self.signatures))
        return signature

    def _preempting(self, candidate: Candidate) -> Iterator[tuple[tuple, int, float]]:
        """(failure key, replicas, threshold) of each option ``passes._preempt`` would try for the
        candidate (victims there, one cheap enough), whether or not a failure alike is known."""
        if not self.preempting or candidate.rank >= MAX_PREEMPTION_ATTEMPTS_PER_PASS:
            return
        workload = candidate.workload
        for option in candidate.options:
            threshold = option.margin - self.gain
            if option.product in self.cheapest_victim and threshold + EPSILON >= self.cheapest_victim[option.product]:
                yield preemption_key(candidate.shape, option, workload.gpus_per_replica, False), workload.replicas, threshold

    def _tries_afresh(self, candidate: Candidate, result: PassResult) -> bool:
        """Whether the pass would try every preemption option of the candidate (no failure alike
        known for its shape): its failure then says how a kind alike fails (``_fails_alike``)."""
        failed = result.preempt_failed
        return not any(failed_before(failed.get(key), replicas, threshold) for key, replicas, threshold in self._preempting(candidate))

    def _fails_alike(self, kind: int, candidate: Candidate, result: PassResult) -> bool:
        """Whether a kind alike (``_signature``) tried everything and failed with the pass as it is
        now (no admission since): then this candidate fails the same way -- it is not walked, and
        the failures its preemption would leave are left as ``passes._preempt`` would."""
        if self.failed_alike.get(self._signature(kind)) != (id(result), len(result.admitted)):
            return False
        failed = result.preempt_failed
        for key, replicas, threshold in list(self._preempting(candidate)):
            if not failed_before(failed.get(key), replicas, threshold):
                failed.setdefault(key, []).append((replicas, threshold))
        return True

    def _reopen(self, victims: tuple[Victim, ...], key: Callable[[Candidate], tuple], position: tuple,
                at: dict[int, int], push: Callable[[int, int], None], result: PassResult) -> None:
        """A preemption freed capacity (and, for training victims, reserve room) on a product: every
        kind that may use it walks on, from its first member after ``position`` in this order
        (the preemptor's key but for its rank, and its rank order: compared without ranking)."""
        state = self.state
        groups: set[int] = set()
        for product in {v.product for v in victims}:
            groups.update(state.groups_by_product.get(product, ()))
        version = (id(result), len(result.admitted))
        kinds: set[int] = set()
        for group in groups:  # a group that fits: all its kinds; else those that may preempt
            if not self._queued_in(group):
                continue
            members = state.kinds_of_group[group]
            if self._group_may_fit(group, result.inventory, result.training_used, version):
                kinds.update(members)
            elif self.preempting:
                kinds.update(kind for kind in self._near_head_in(group) if self._may_preempt(kind, result))
        for kind in sorted(kinds):
            orders = state.by_kind.get(kind)
            if not orders:
                continue
            low, high = 0, len(orders)
            while low < high:  # members of a kind are in rank order in every order
                middle = low if low == 0 else (low + high) // 2  # the first member first: usually after
                if (key(self.unranked(orders[middle]))[:-1], orders[middle]) <= position:
                    low = middle + 1
                else:
                    high = middle
            if at.get(kind, len(orders)) > low:  # not waiting already with that member or an earlier one
                push(kind, low)


def _choose_lazily(cycle: Cycle, streams: _Streams) -> tuple[PassResult, list[Candidate]]:
    """``choose_pass`` for the incremental cycle: the same orders, passes, choice and chains, each
    order walked by ``streams``; the pass chosen and the candidates it decides."""
    state = streams.state
    allow_preemption = bool(cycle.policy.preemption.enabled) and any(cycle.victims_by_product.values())
    budget = _Below(MAX_PREEMPTION_ATTEMPTS_PER_PASS)
    runs: list[tuple[PassResult, dict[str, Candidate]]] = []
    queue_length = len(state.queue)
    for key in order_keys(queue_length, queue_length <= ALL_ORDERS_UP_TO):
        result = new_pass(cycle)
        seen: dict[str, Candidate] = {}
        run_pass(cycle, streams.walk(key, result, seen), allow_preemption, budget, result)
        runs.append((result, seen))
        if _unbeatable(result, seen, queue_length):
            break
    runs.sort(key=lambda run: -run[0].value)  # ties keep the earlier order
    chains = (not allow_preemption and not cycle.training_cap and len(cycle.inventory.nodes) <= SWAP_UP_TO_NODES
              and not _unbeatable(*runs[0], queue_length))  # improve_by_swaps's own conditions
    if chains:  # the ejection chains look at what the walks met (a whole cycle: the whole queue)
        everyone: dict[str, Candidate] = {}
        for _, seen in runs:
            everyone.update(seen)
        cycle.ranked = sorted(everyone.values(), key=lambda c: c.rank)
        for result, _ in runs[:IMPROVE_PASSES]:
            improve_by_swaps(cycle, result)
    best_result, best_seen = runs[0]
    for result, seen in runs[1:]:
        if result.value > best_result.value + EPSILON:
            best_result, best_seen = result, seen
    # Decided: what the chosen pass met, and what the chains let in from the other walks.
    return best_result, [c for c in cycle.ranked if c.workload.key in best_seen or c.rank in best_result.admitted] if chains else list(best_seen.values())


def _unbeatable(result: PassResult, seen: dict[str, Candidate], queue_length: int) -> bool:
    """``passes.is_unbeatable`` over the whole queue: every queued workload admitted on its best product."""
    return len(result.admitted) == queue_length and all(
        a.option is c.options[0] and not a.victims for c in seen.values() for a in (result.admitted[c.rank],)
    )


def _kinds_index(state: _State) -> tuple[dict[int, set[int]], dict[str, set[int]]]:
    """Kinds by the pools and the products of their options, and their demand groups (kinds are
    numbered as the ranker meets them: the indexes grow by the new ones)."""
    ranker = state.ranker
    options_of_kind, demand_of_kind = ranker.options_of_kind, ranker.demand_of_kind
    by_pool, by_product = state.kinds_by_pool, state.kinds_by_product
    for kind in range(state.kinds_indexed, len(options_of_kind)):
        options = options_of_kind[kind]
        if any(option.need is not None for option in options):
            state.needing_kinds.add(kind)
        demand = (tuple((o.product, o.pools, o.need) for o in options), *demand_of_kind[kind])
        group = state.group_ids.get(demand)
        if group is None:
            group = state.group_ids[demand] = len(state.group_demand)
            state.group_demand.append(demand)
            state.kinds_of_group.append(set())
            for option in options:
                state.groups_by_product.setdefault(option.product, set()).add(group)
                for pool in option.pools:
                    state.groups_by_pool.setdefault(pool, set()).add(group)
        state.group_of_kind[kind] = group
        state.kinds_of_group[group].add(kind)
        for option in options:
            by_product.setdefault(option.product, set()).add(kind)
            for pool in option.pools:
                by_pool.setdefault(pool, set()).add(kind)
    state.kinds_indexed = len(options_of_kind)
    return by_pool, by_product


# --- holding workloads and free capacity --------------------------------------------------


def _hold(state: _State, workload: Workload, sign: int) -> None:
    """Add (+1) or remove (-1) a holding workload's reservations and training GPUs."""
    inventory = state.inventory
    for entry in workload.placement:
        index = inventory.index_by_name.get(entry.node)
        if index is None:
            if sign > 0:
                state.placed_elsewhere.setdefault(entry.node, set()).add(workload.key)
            else:
                state.placed_elsewhere.get(entry.node, set()).discard(workload.key)
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


def _refresh_node(state: _State, snapshot: Snapshot, index: int, node: GpuNode) -> bool:
    """Recompute a node's free GPUs and resources from the snapshot (as ``Inventory`` does for
    every node); True when something was freed."""
    inventory = state.inventory
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


_Diff = tuple[dict[str, Workload], dict[int, Workload], set[int], list[Workload], list[Workload]]


def _compare(by_key: dict[str, Workload], by_id: dict[int, Workload], known: set[int], workloads: tuple[Workload, ...],
             last: tuple[Workload, ...]) -> _Diff | None:
    """(by key, by id, ids, arrived, left) against the last cycle's objects (``last``, whose ids
    are ``known``), or None when a key or an object is listed twice. By identity first, at C
    speed: the two lists walked side by side where they agree (``_aligned``; a caller that keeps
    its objects and their order between cycles costs that), else set differences of ids (which
    stay valid: the last snapshot keeps its objects alive); a caller that parses afresh pays an
    equality test per object it replaced. ``by_key``, ``by_id`` and ``known`` are changed in place
    (on None the state is rebuilt anyway)."""
    if workloads is last:
        return by_key, by_id, known, [], []
    aligned = _aligned(last, workloads, known) if len(known) == len(last) else None
    if aligned is not None:
        added, removed = aligned
        known.difference_update(map(id, removed))
        known.update(map(id, added))
        if len(known) != len(workloads):
            return None  # an object listed twice (or one the state was not told of: it still holds the old)
        ids = known
    else:
        ids = set(map(id, workloads))
        if len(ids) != len(workloads):
            return None
        added_ids = ids - known
        removed_ids = known - ids
        if not added_ids and not removed_ids:
            return by_key, by_id, ids, [], []
        added = list(compress(workloads, map(added_ids.__contains__, map(id, workloads)))) if added_ids else []
        removed = [by_id[i] for i in removed_ids]
    for workload in removed:
        del by_id[id(workload)]
    gone = {w.key: w for w in removed}
    for workload in removed:
        del by_key[workload.key]
    arrived: list[Workload] = []
    for workload in sorted(added, key=lambda w: w.key):
        key = workload.key
        if key in by_key:
            return None
        by_key[key] = workload
        by_id[id(workload)] = workload
        if gone.get(key) != workload:
            arrived.append(workload)
        else:
            del gone[key]  # replaced by an equal object: no change
    left = sorted(gone.values(), key=lambda w: w.key)
    return by_key, by_id, ids, arrived, left


# Past this many differences the side-by-side walk gives way to set differences (both cost about
# the same then).
ALIGN_UP_TO = 64
# Past this many victims new, changed or gone on one product in a cycle (or nodes freed), every kind
# of the product (of the pools) that may preempt is walked, rather than those each victim (node) may
# matter to, which costs a look at the kinds of its pools per victim (node).
VICTIMS_ONE_BY_ONE = 8


def _aligned(old: tuple[Workload, ...], new: tuple[Workload, ...], known: set[int]) -> tuple[list[Workload], list[Workload]] | None:
    """(added, removed) when ``new`` is ``old`` with up to ``ALIGN_UP_TO`` objects added and
    removed, the others in the same order (``known``: the ids of ``old``, each once); else None.
    Runs of the same objects are skipped at C speed; where they differ, an object not known was
    added, else the old one there was removed. A known object met out of order leaves it for the
    end of ``new``, where it is found: then None. So every object taken as removed is not in ``new``."""
    added: list[Workload] = []
    removed: list[Workload] = []
    i = j = 0
    while i < len(old) and j < len(new):
        skip = next(compress(count(), map(operator.is_not, islice(new, j, None), islice(old, i, None))), None)
        if skip is None:
            i, j = i + min(len(old) - i, len(new) - j), j + min(len(old) - i, len(new) - j)
            break
        i, j = i + skip, j + skip
        if len(added) + len(removed) >= ALIGN_UP_TO:
            return None
        if id(new[j]) in known:
            removed.append(old[i])
            i += 1
        else:
            added.append(new[j])
            j += 1
    tail = new[j:]
    if any(map(known.__contains__, map(id, tail))):
        return None
    removed.extend(old[i:])
    added.extend(tail)
    return (added, removed) if len(added) + len(removed) <= ALIGN_UP_TO else None


def _told(by_key: dict[str, Workload], by_id: dict[int, Workload], known: set[int], changed: Mapping[str, Workload | None]) -> _Diff:
    """``_compare`` from what the caller says changed (key -> the object now, None: gone)."""
    arrived: list[Workload] = []
    left: list[Workload] = []
    for key in sorted(changed):
        new, old = changed[key], by_key.get(key)
        if new is old:
            continue
        if old is not None:
            del by_key[key]
            by_id.pop(id(old), None)
            known.discard(id(old))
        if new is not None:
            by_key[key] = new
            by_id[id(new)] = new
            known.add(id(new))
            if old is not None and old == new:
                continue
            arrived.append(new)
        if old is not None:
            left.append(old)
    return by_key, by_id, known, arrived, left


def _told_positions(inventory: Inventory, snapshot: Snapshot, names: Collection[str]) -> list[int] | None:
    """The positions in ``snapshot.nodes`` of the nodes named (``Changes.nodes``), the nodes listed
    as last time; None when a name is not where the last layout has it (then compared instead)."""
    layout = inventory.layout
    index_by_name, position_of_index, nodes = layout.index_by_name, layout.position_of_index, snapshot.nodes
    positions = []
    for name in names:
        index = index_by_name.get(name)
        if index is None:
            return None
        position = position_of_index[index]
        if nodes[position].name != name:
            return None
        positions.append(position)
    return sorted(positions)


def _changed_keys(old: Mapping, new: Mapping) -> set:
    """Keys added, removed or changed between two mappings (values hashable: at C speed)."""
    if old is new:
        return set()
    try:
        return {key for key, _ in old.items() ^ new.items()}
    except TypeError:  # a value that does not hash
        changed = {key for key, value in new.items() if old.get(key) != value}
        changed.update(key for key in old if key not in new)
        return changed
