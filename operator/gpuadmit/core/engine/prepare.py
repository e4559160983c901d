"""Step 1 of a cycle, preparation: static checks per pending workload from the nodes alone
(InvalidSpec, NoNodeCanFit, MarginBelowFloor, QueueTimeout), ranking by effective margin,
the inference-reserve ledger and the victims preemption may take. Done once per snapshot
and shared by every placement pass and by the exact solver."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ..guarantee import Tenants
from ..inventory import Inventory, LayoutMemo, whole, workload_shape
from ..model import Action, Decision, Policy, Reason, Snapshot, Workload
from .cycle import EPSILON, Candidate, Cycle, Option, Victim, number_or
from .messages import (
    bound_to,
    decision_for,
    duration_text,
    need_message,
    no_fit_message,
    product_label,
    rejection,
)


def prepare(snapshot: Snapshot, layouts: LayoutMemo | None = None) -> Cycle:
    policy = snapshot.policy
    inventory = Inventory.from_snapshot(snapshot, layouts=layouts)
    tenants = Tenants.of(snapshot, inventory)
    ranker = Ranker(policy, inventory, tenants)
    rankable: list[Candidate] = []
    static_rejections: list[Decision] = []
    # By identity; the position only separates exact duplicates, which decide alike anyway.
    keyed = sorted(((str(w.namespace), str(w.name), number_or(w.created_at, 0.0), str(w.uid), i), w) for i, w in enumerate(snapshot.pending))
    for _, workload in keyed:
        made = ranker.candidate(workload, snapshot.now)
        if isinstance(made, Decision):
            static_rejections.append(made)
        else:
            rankable.append(made)
    rankable.sort(key=lambda c: c.order)
    for rank, candidate in enumerate(rankable):
        candidate.rank = rank
    if tenants is not None:  # work within its tenant's guarantee first, margin order inside each group
        tenants.rank_guaranteed(c for c in rankable if c.rejection is None)
        rankable.sort(key=lambda c: c.rank not in tenants.guaranteed_ranks)
        tenants.guaranteed_ranks = {rank for rank, c in enumerate(rankable) if c.rank in tenants.guaranteed_ranks}
        for rank, candidate in enumerate(rankable):
            candidate.rank = rank
    static_rejections.sort(key=lambda d: d.key)

    training_cap, reserve_gpus, training_used = _reserve_ledger(snapshot, inventory)
    victims_by_product = _victims(snapshot, inventory, ranker.margin)
    if tenants is not None:
        victims_by_product = tenants.victims_allowed(victims_by_product)
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
        tenants=tenants,
        ranker=ranker,
    )


class Ranker:
    """Step 1 for one workload: its static checks and, if it passes them, its ``Candidate``
    (options, margins, kind). Keeps the caches that make 100,000 workloads cost a few hundred
    checks (by kind: shape, size, class, tier); valid for one policy and one node layout, so the
    incremental engine keeps it between cycles while neither changes."""

    def __init__(self, policy: Policy, inventory: Inventory, tenants: Tenants | None = None) -> None:
        self.policy = policy
        self.inventory = inventory
        self.tenants = tenants
        self.floor = number_or(policy.min_margin_per_gpu_hour, 0.0)
        self.aging = number_or(policy.aging_per_hour, 0.0)
        self._margins: dict[tuple, float] = {}
        self._static: dict[tuple, tuple[tuple[Option, ...], Decision | None, int]] = {}
        # Shapes hash slowly (tolerations are dataclasses); number them once and key caches by number.
        self._shape_ids: dict[tuple, int] = {}
        self._shapes: list[tuple] = []  # by shape number
        self._examples: list[Workload] = []  # by shape number: the first workload of the shape
        self.options_of_kind: dict[int, tuple[Option, ...]] = {}
        # kind -> (GPUs per replica, replicas, training): with its options, what decides whether it fits
        self.demand_of_kind: dict[int, tuple[int, int, bool]] = {}
        # For relayout, static keys: rejected, needing more than GPUs, and by pool those that may gain
        # an option on that pool's product ((shape, GPUs per replica, replicas, product) -> keys).
        self._rejected: set[tuple] = set()
        self._needing: set[tuple] = set()
        self._may_gain: dict[int, dict[tuple, set[tuple]]] = {}

    def margin(self, workload_class: str, tier: str | None, product: str) -> float:
        key = (workload_class, tier, product)
        if key not in self._margins:
            self._margins[key] = number_or(self.policy.margin_per_gpu_hour(workload_class, tier, product), -math.inf)
        return self._margins[key]

    def relayout(self, inventory: Inventory, member: Callable[[int], Workload | None], grown: set[int]) -> bool:
        """The same policy on a layout with nodes added to the pools ``grown`` (the pools alike:
        the incremental engine's): True when every kind with a member (``member``: kind -> one of
        its workloads, or None) keeps its options, so its candidates stay valid; the other kinds are
        forgotten, and made afresh (with new numbers) when a workload of theirs comes again.
        False: some kind's options changed.

        Checked: the kinds that need more than GPUs (by a member), and the kinds needing only GPUs
        that may gain an option. An option holds every eligible pool of its product, and nodes added
        only make more fit: only a product a kind has no option on may change them -- one above the
        floor with an eligible pool among ``grown`` whose pools would now hold it if empty
        (``_may_gain``). Rejections are forgotten (nodes added may hold them now)."""
        self.inventory = inventory
        pools = inventory.pools
        forgotten = set(self._rejected)
        suspects = set(self._needing)
        held: set[tuple] = set()
        for pool in grown:
            for gain_key, static_keys in self._may_gain.get(pool, {}).items():
                if gain_key in held:
                    suspects |= static_keys
                    continue
                shape_id, g, replicas, product = gain_key
                eligible = inventory.eligible_pools(self._examples[shape_id], self._shapes[shape_id])
                same = [pools[p] for p in eligible if pools[p].product == product]
                if Inventory.replicas_if_empty(same, g) >= replicas:
                    held.add(gain_key)
                    suspects |= static_keys
        for static_key in suspects:
            entry = self._static.get(static_key)
            if entry is None:
                continue  # forgotten before
            options, _, kind = entry
            workload = member(kind)
            if workload is None:
                forgotten.add(static_key)
                continue
            made, now_rejected = _static_options(inventory, workload, self._shapes[static_key[0]], self.floor, self.margin)
            if now_rejected is not None or made != options:
                return False
        for static_key in forgotten:
            del self._static[static_key]
        self._rejected.clear()
        self._needing -= forgotten
        return True

    def _index_kind(self, static_key: tuple, options: tuple[Option, ...], rejected: Decision | None) -> None:
        """File a new kind for relayout: in ``_rejected``, ``_needing`` or ``_may_gain``."""
        if rejected is not None:
            self._rejected.add(static_key)
            return
        if options[0].need is not None:
            self._needing.add(static_key)
            return
        shape_id, g, replicas, workload_class, tier = static_key
        inventory = self.inventory
        offered = {o.product for o in options}
        eligible = inventory.eligible_pools(self._examples[shape_id], self._shapes[shape_id])
        for product, pool_indices in inventory.pools_by_product(eligible).items():
            if product in offered or self.margin(workload_class, tier, product) < self.floor - EPSILON:
                continue
            for pool in pool_indices:
                self._may_gain.setdefault(pool, {}).setdefault((shape_id, g, replicas, product), set()).add(static_key)

    def candidate(self, workload: Workload, now: float) -> Candidate | Decision:
        """The workload's candidate (rank not set), or its static rejection."""
        malformed = _malformed(workload)
        if malformed is not None:
            return malformed
        too_big = self.tenants.exceeds(workload) if self.tenants is not None else None
        if too_big is not None:
            return decision_for(workload, Action.REJECT, Reason.EXCEEDS_QUOTA, too_big)
        shape = workload_shape(workload)
        shape_id = self._shape_ids.setdefault(shape, len(self._shape_ids))
        if shape_id == len(self._shapes):
            self._shapes.append(shape)
            self._examples.append(workload)
        static_key = (shape_id, workload.gpus_per_replica, workload.replicas, workload.workload_class, workload.tier)
        if static_key not in self._static:
            made = _static_options(self.inventory, workload, shape, self.floor, self.margin)
            kind = len(self.options_of_kind)  # kinds are never renumbered (see relayout)
            self._static[static_key] = (*made, kind)
            self._index_kind(static_key, *made)
            self.options_of_kind[kind] = made[0]
            self.demand_of_kind[kind] = (workload.gpus_per_replica, workload.replicas, workload.workload_class != "inference")
        options, rejection, kind = self._static[static_key]
        if rejection is not None:
            return bound_to(rejection, workload)
        best_margin = options[0].margin
        now = number_or(now, 0.0)
        queued_since = workload.queued_since  # a plain float, the usual case, read without a call (NaN is not equal to itself)
        if type(queued_since) is not float or queued_since != queued_since:
            queued_since = number_or(queued_since, now)
        waited = max(0.0, now - queued_since)
        candidate = Candidate(
            workload=workload,
            rank=-1,
            options=options,
            best_margin=best_margin,
            effective_margin=best_margin + self.aging * waited / 3600.0,
            shape=shape_id,
            kind=kind,
            is_training=workload.workload_class != "inference",
            order=rank_order(workload, best_margin, self.aging, now, queued_since),
        )
        limit = None if workload.max_queue_seconds is None else number_or(workload.max_queue_seconds, math.inf)
        if limit is not None and waited > limit:
            candidate.rejection = timeout_rejection(workload, waited, limit, best_margin)
        return candidate


def rank_order(workload: Workload, best_margin: float, aging: float, now: float, queued_since: float | None = None) -> tuple:
    """The sort key of the ranking: effective margin (best margin plus aging) first, then creation
    time, key and uid. Aging adds the same amount to every queued workload as time passes, so
    the key leaves ``now`` out (-best + aging x queued_since): ranks do not move with the clock,
    which lets the incremental engine keep its ranked queue between cycles."""
    if queued_since is None:
        queued_since = number_or(workload.queued_since, now)
    # Rounded so that effective margins equal but for the floats' rounding tie, and fall to
    # creation time as true ties do (the aging term is large: 0.05 x 1.8e9 s / 3600 = 25,000).
    value = round(-best_margin + aging * queued_since / 3600.0, 9) if aging else -best_margin
    created = workload.created_at
    if type(created) is not float or created != created:
        created = number_or(created, 0.0)
    uid = workload.uid if type(workload.uid) is str else str(workload.uid)
    return value, created, f"{workload.namespace}/{workload.name}", uid


def timeout_rejection(workload: Workload, waited: float, limit: float, margin: float) -> Decision:
    return decision_for(
        workload,
        Action.REJECT,
        Reason.QUEUE_TIMEOUT,
        f"waited {duration_text(waited)} in the queue, longer than its limit of {duration_text(limit)}",
        margin=margin,
    )


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

    The returned rejection is a template; ``bound_to`` puts the workload's name on it.
    """
    g, replicas = workload.gpus_per_replica, workload.replicas
    by_product = inventory.pools_by_product(inventory.eligible_pools(workload, shape))
    need = inventory.need_of(workload, shape)
    capable: list[Option] = []
    largest_node = 0
    most_replicas = (0, "")
    gpus_alone_fit = False  # some product would hold it by GPUs alone: what binds is the need
    for product, pool_indices in by_product.items():
        pools = [inventory.pools[p] for p in pool_indices]
        largest_node = max(largest_node, max(pool.max_allocatable for pool in pools))
        holds = Inventory.replicas_if_empty(pools, g)
        if need is not None and holds >= replicas:
            gpus_alone_fit = True
            holds = inventory.replicas_if_empty_with(pool_indices, g, need)
        if holds >= replicas:
            capable.append(Option(product, margin(workload.workload_class, workload.tier, product), pool_indices, need))
        elif holds > most_replicas[0] or not most_replicas[1]:
            most_replicas = (holds, product)
    if not capable:
        if need is not None and gpus_alone_fit:
            message = need_message(inventory, workload, need, [p for pools in by_product.values() for p in pools], most_replicas)
        else:
            message = no_fit_message(inventory, workload, by_product, largest_node, most_replicas)
        return (), rejection(Reason.NO_NODE_CAN_FIT, message)
    capable.sort(key=lambda o: (-o.margin, o.product))
    above_floor = tuple(o for o in capable if o.margin >= floor - EPSILON)
    if not above_floor:
        best = capable[0]
        shown = "unknown" if not math.isfinite(best.margin) else f"{best.margin:.2f}"
        return (), rejection(
            Reason.MARGIN_BELOW_FLOOR,
            f"earns at most {shown} per GPU-hour (as {workload.workload_class} on {product_label(best.product)}), "
            f"below the policy floor of {floor:.2f}",
            margin=best.margin,
        )
    return above_floor, None




def _reserve_ledger(snapshot: Snapshot, inventory: Inventory) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    total_by_product: dict[str, int] = {}
    for node, allocatable in zip(inventory.nodes, inventory.allocatable, strict=True):
        total_by_product[node.product] = total_by_product.get(node.product, 0) + allocatable
    training_cap, reserve_gpus = reserve_caps(snapshot.policy, total_by_product)
    training_used: dict[str, int] = {}
    for workload in sorted(snapshot.holding, key=lambda w: w.key):
        if workload.workload_class == "inference":
            continue
        for entry in workload.placement:
            held_on = inventory.product_of(entry.node)
            if held_on is not None:
                training_used[held_on] = training_used.get(held_on, 0) + whole(entry.gpus)
    return training_cap, reserve_gpus, training_used


def reserve_caps(policy: Policy, total_by_product: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Per product (by its allocatable GPUs), the GPUs training may use and those held back for inference."""
    fraction = min(1.0, max(0.0, number_or(policy.inference_reserve_fraction, 0.0)))
    training_cap: dict[str, int] = {}
    reserve_gpus: dict[str, int] = {}
    if fraction > 0:
        for product, total in sorted(total_by_product.items()):
            reserve_gpus[product] = math.ceil(fraction * total - EPSILON)
            training_cap[product] = total - reserve_gpus[product]
    return training_cap, reserve_gpus


def _victims(snapshot: Snapshot, inventory: Inventory, margin) -> dict[str, list[Victim]]:
    """Holding workloads that preemption may take GPUs from, cheapest loss first, per product."""
    rules = snapshot.policy.preemption
    if not rules.enabled:
        return {}
    min_runtime = number_or(rules.min_runtime_seconds, 0.0)
    by_product: dict[str, list[Victim]] = {}
    for workload in sorted(snapshot.holding, key=lambda w: w.key):
        if workload.admitted_at is None or snapshot.now - workload.admitted_at < min_runtime:
            continue
        victim = victim_of(snapshot, inventory, margin, workload)
        if victim is not None:
            by_product.setdefault(victim.product, []).append(victim)
    for victims in by_product.values():
        victims.sort(key=victim_order)
    return dict(sorted(by_product.items()))


def victim_order(victim: Victim) -> tuple[float, str]:
    return victim.lost_per_hour, victim.key


def victim_of(snapshot: Snapshot, inventory: Inventory, margin, workload: Workload) -> Victim | None:
    """The holding workload as a preemption victim (whatever it ran), or None when it cannot be one."""
    if not workload.preemptible or workload.admitted_at is None:
        return None
    products = [p for p in (inventory.product_of(e.node) for e in workload.placement) if p is not None]
    if not products:
        return None
    product = products[0]
    gpus = sum(whole(e.gpus) for e in workload.placement)
    earns = margin(workload.workload_class, workload.tier, product)
    freed = inventory.freed_by(workload.placement, workload.key, snapshot.gpus_of_own_pods)
    return Victim(workload, workload.key, product, earns, gpus, earns * gpus, tuple(sorted(freed.items())))
