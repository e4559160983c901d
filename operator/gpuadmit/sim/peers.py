"""Peer policies: what a platform team may run today, as deciders over gpuadmit's own types.

Each peer is a ``Decider`` -- ``Snapshot -> CycleResult``, the signature of
``gpuadmit.core.engine.decide`` -- so the replay drives every policy the same way and
scores every one with the same MarginPolicy prices. A peer never reads prices: it ranks by
arrival or by class, and places by its own strategy.

- ``fifo``: Kueue's BestEffortFIFO: arrival order, no classes, a workload that does not fit
  is skipped for the ones behind it (backfill), no preemption, no queue timeout. Pods are
  spread (kube-scheduler's default LeastAllocated scoring).
- ``priority``: KAI-Scheduler's train/inference priority classes: inference strictly above
  training, arrival order within a class, inference preempts training at once (youngest
  victims first, fewest GPUs taken), no queue timeout; pods spread.
- ``binpack``: Volcano's priority + binpack plugins: ``priority``'s order and preemption,
  with pods packed onto the most-allocated node that fits.

Left out by all three: prices and costs (they are price-blind by design), fair sharing,
topology, GPU sharing, and any preemption of inference. GPUQuotas in the snapshot (``simulate
--quotas``) are modelled as each counterpart has them: ``sim/peer_quotas.py``.

Why separate deciders rather than the engine with other settings: ``engine.decide`` ranks by
margin and places best-fit on the product that earns most; the peers rank by arrival or class
and never look at prices. What they share with the engine is the free-GPU ledger
(``core.inventory.Inventory``): its eligibility rules (products, memory, ``tolerates`` hard
taints, schedulable nodes) and its placement strategy, ``SPREAD`` for fifo and priority,
``BEST_FIT`` (most-allocated) for binpack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gpuadmit.core.inventory import (
    BEST_FIT,
    SPREAD,
    Inventory,
    LayoutMemo,
    Need,
    PlacementStrategy,
    workload_shape,
)
from gpuadmit.core.model import (
    Action,
    CycleResult,
    Decision,
    PlacementEntry,
    Preemption,
    Reason,
    Snapshot,
    Workload,
)
from gpuadmit.sim import peer_quotas

Decider = Callable[[Snapshot], CycleResult]
CLASS_RANK = {"inference": 0, "training": 1}


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    name: str
    models: str  # the scheduler and configuration it stands for
    by_class: bool  # inference strictly before training
    inference_preempts_training: bool
    strategy: PlacementStrategy  # where replicas go in the shared ledger

    def __call__(self, snapshot: Snapshot) -> CycleResult:
        return decide_peer(snapshot, self)


FIFO = PeerPolicy("fifo", "Kueue BestEffortFIFO (+ kube-scheduler LeastAllocated)", False, False, SPREAD)
PRIORITY = PeerPolicy("priority", "KAI-Scheduler train/inference priority classes", True, True, SPREAD)
BINPACK = PeerPolicy("binpack", "Volcano priority + binpack plugins", True, True, BEST_FIT)
PEERS: Mapping[str, PeerPolicy] = {peer.name: peer for peer in (FIFO, PRIORITY, BINPACK)}


def decide_peer(snapshot: Snapshot, peer: PeerPolicy, layouts: LayoutMemo | None = None) -> CycleResult:
    """One cycle of ``peer``: admit in rank order with backfill, preempt if the peer does.

    ``layouts``: kept by a replay between cycles, so the node pools are not derived each cycle."""
    inventory = Inventory.from_snapshot(snapshot, strategy=peer.strategy, layouts=layouts)
    victims_on_node: dict[str, list[Workload]] = {}
    borrowers_on_node: dict[str, list[Workload]] = {}  # what a deserved quota may reclaim
    used, protected = peer_quotas.usage(snapshot) if snapshot.quotas else ({}, set())
    if peer.inference_preempts_training:
        for holder in snapshot.holding:
            if not holder.preemptible or holder.key in protected:
                continue
            for entry in holder.placement:
                if holder.workload_class == "training":
                    victims_on_node.setdefault(entry.node, []).append(holder)
                if snapshot.quotas:
                    borrowers_on_node.setdefault(entry.node, []).append(holder)
    # Per workload shape: eligible pools, the largest eligible node, the GPUs of all of them, and
    # what a replica needs beyond GPUs (CPU, memory, node constraints; None: GPUs alone).
    reach: dict[tuple, tuple[tuple[int, ...], int, int, Need | None]] = {}
    # Shapes whose preemption attempt failed this cycle: GPUs only get scarcer, so skip repeats.
    preemption_failed: set[tuple] = set()

    # Within a class, by queued_since: a preempted workload rejoins at the back, as with Kueue's
    # default requeuing (by eviction time).
    def rank(workload: Workload) -> tuple:
        by_class = CLASS_RANK.get(workload.workload_class, 1) if peer.by_class else 0
        return (by_class, workload.queued_since, workload.created_at, workload.key)

    decisions: list[Decision] = []
    preemptions: list[Preemption] = []
    evicted: set[str] = set()
    queued: list[Workload] = []
    ordered = sorted(snapshot.pending, key=rank)
    within: set[str] = set()
    if snapshot.quotas:  # work within its (nominal or deserved) quota before work that borrows
        within = peer_quotas.within_quota(snapshot, ordered, used)
        ordered.sort(key=lambda w: w.key not in within)
    for workload in ordered:
        shape = workload_shape(workload)
        if shape not in reach:
            pools = inventory.eligible_pools(workload, shape)
            reach[shape] = (
                pools,
                max((inventory.pools[p].max_allocatable for p in pools), default=0),
                sum(alloc * count for p in pools for alloc, count in inventory.pools[p].allocatable_histogram),
                inventory.need_of(workload, shape),
            )
        pools, largest, total, need = reach[shape]
        if workload.gpus_per_replica > largest or workload.total_gpus > total:
            decisions.append(_reject_never_fits(workload, largest, total))
            continue
        if need is not None and inventory.replicas_if_empty_with(pools, workload.gpus_per_replica, need) < workload.replicas:
            decisions.append(Decision.about(
                workload, Action.REJECT, Reason.NO_NODE_CAN_FIT,
                f"needs {workload.replicas} replicas of {workload.gpus_per_replica} GPUs and {_describe(need)}; "
                "eligible nodes cannot hold that many even empty",
            ))
            continue
        if snapshot.quotas and peer_quotas.over_cap(snapshot, workload, used):
            queued.append(workload)
            continue
        placement = (
            inventory.place(pools, workload.gpus_per_replica, workload.replicas) if need is None
            else inventory.place_needing(pools, workload.gpus_per_replica, workload.replicas, need)
        )
        size = (shape, workload.gpus_per_replica, workload.replicas)
        victims: list[Workload] = []
        reclaim = False
        if (
            placement is None
            and peer.inference_preempts_training
            and workload.workload_class == "inference"
            and size not in preemption_failed
        ):
            placement, victims = _place_with_preemption(inventory, pools, workload, victims_on_node, evicted, need)
            if placement is None:
                preemption_failed.add(size)
        if placement is None and workload.key in within and borrowers_on_node and (size, "reclaim") not in preemption_failed:
            placement, victims = _place_with_preemption(inventory, pools, workload, borrowers_on_node, evicted, need)
            reclaim = placement is not None
            if placement is None:
                preemption_failed.add((size, "reclaim"))
        if victims:
            for victim in victims:
                peer_quotas.charge(snapshot, victim, used, -1)
                evicted.add(victim.key)
                inventory.release(victim.placement)
                preemptions.append(
                    Preemption(
                        namespace=victim.namespace,
                        name=victim.name,
                        preempted_by=workload.key,
                        reason=Reason.RECLAIMED_BY_GUARANTEE if reclaim else Reason.PREEMPTED_BY_HIGHER_MARGIN,
                        message=(f"reclaimed by {workload.key}, within its deserved quota ({peer.name} peer policy)" if reclaim
                                 else f"preempted by inference workload {workload.key} ({peer.name} peer policy)"),
                        freed=victim.placement,
                    )
                )
            if placement is not None:
                inventory.take(placement)
        if placement is None:
            queued.append(workload)
            continue
        if snapshot.quotas:
            peer_quotas.charge(snapshot, workload, used)
        decisions.append(Decision.about(
            workload, Action.ADMIT, Reason.ADMITTED, f"admitted by the {peer.name} peer policy", placement=placement,
        ))
    for position, workload in enumerate(queued, start=1):
        decisions.append(Decision.about(
            workload, Action.QUEUE, Reason.INSUFFICIENT_CAPACITY,
            f"needs {workload.replicas}x{workload.gpus_per_replica} GPUs; not free now", queue_position=position,
        ))
    decisions.extend(Decision.invalid(invalid) for invalid in snapshot.invalid)
    return CycleResult(decisions=tuple(decisions), preemptions=tuple(preemptions))


def _place_with_preemption(
    inventory: Inventory,
    pools: tuple[int, ...],
    workload: Workload,
    victims_on_node: Mapping[str, list[Workload]],
    evicted: set[str],
    resource_need: Need | None = None,
) -> tuple[tuple[PlacementEntry, ...] | None, list[Workload]]:
    """Place ``workload`` by evicting training workloads: per replica, the node needing the fewest
    victim GPUs, youngest victims first. Returns (placement, victims) or (None, []) if it cannot;
    the inventory is left as it was (the caller releases the victims and takes the placement).

    With a ``resource_need`` (CPU, memory, node constraints), victims are chosen by GPUs as above and the
    result is kept only if every replica also fits its node's resources with those victims gone
    and is allowed there; else (None, []), never an overcommitted node."""
    # A trial overlay: nothing is evicted unless the whole gang fits. Only eligible nodes with
    # victims (or freed by them) can help, since the plain placement already failed.
    eligible = set(pools)

    def free_on(node: str) -> int | None:
        index = inventory.index_by_name.get(node)
        return None if index is None or inventory.pool_of[index] not in eligible else inventory.free[index]

    free = {node: count for node in victims_on_node if (count := free_on(node)) is not None}
    victims: list[Workload] = []
    chosen: set[str] = set()
    nodes_taken: list[str] = []
    need = workload.gpus_per_replica
    for _ in range(workload.replicas):
        best: tuple[tuple[int, float], str, list[Workload]] | None = None
        for node in sorted(free):
            if free[node] >= need:
                best = ((0, 0.0), node, [])
                break
        if best is None and workload.replicas > 1:
            spare_index = inventory.best_fit_node(pools, need)  # earlier replicas of the gang may have used it
            if spare_index is not None and inventory.nodes[spare_index].name not in free:
                spare = inventory.nodes[spare_index].name
                free[spare] = inventory.free[spare_index]
                best = ((0, 0.0), spare, [])
        for node in sorted(free) if best is None else ():
            candidates = sorted(
                (v for v in victims_on_node.get(node, ()) if v.key not in evicted and v.key not in chosen),
                key=lambda v: (-(v.admitted_at or 0.0), v.key),
            )
            gained, picked = free[node], []
            for victim in candidates:
                if gained >= need:
                    break
                gained += sum(e.gpus for e in victim.placement if e.node == node)
                picked.append(victim)
            if gained >= need:
                # Fewest GPUs taken, then the youngest victims (least work set back), then name.
                cost = (sum(v.total_gpus for v in picked), -min((v.admitted_at or 0.0) for v in picked) if picked else 0.0)
                if best is None or cost < best[0]:
                    best = (cost, node, picked)
        if best is None:
            return None, []
        _, node, picked = best
        for victim in picked:
            chosen.add(victim.key)
            victims.append(victim)
            for entry in victim.placement:
                if entry.node in free:
                    free[entry.node] += entry.gpus
        free[node] -= need
        nodes_taken.append(node)
    if resource_need is not None and not _fits_resources(inventory, nodes_taken, resource_need, victims):
        return None, []
    return _entries(nodes_taken, need, resource_need), victims


def _fits_resources(inventory: Inventory, nodes_taken: list[str], need: Need, victims: list[Workload]) -> bool:
    """Whether the replicas on ``nodes_taken`` are allowed there and fit each node's free resources
    plus what ``victims`` give back on it."""
    for node in set(nodes_taken):
        index = inventory.index_by_name[node]
        if need.allowed is not None and index not in need.allowed:
            return False
        free = dict(inventory.resource_free[index])
        for victim in victims:
            for entry in victim.placement:
                if entry.node == node:
                    for resource, amount in entry.resources:
                        if resource in free:
                            free[resource] += amount
        replicas = nodes_taken.count(node)
        if any(resource in free and free[resource] < amount * replicas for resource, amount in need.requests):
            return False
    return True


def _describe(need: Need) -> str:
    asked = ", ".join(f"{amount} {resource}" for resource, amount in need.requests) or "no other resource"
    return f"{asked} per replica" + (" on the nodes its constraints allow" if need.allowed is not None else "")


def _entries(node_names: Iterable[str], gpus_per_replica: int, need: Need | None = None) -> tuple[PlacementEntry, ...]:
    replicas: dict[str, int] = {}
    for name in node_names:
        replicas[name] = replicas.get(name, 0) + 1
    requests = need.requests if need is not None else ()
    return tuple(
        PlacementEntry(node=name, gpus=count * gpus_per_replica, replicas=count, resources=tuple((r, a * count) for r, a in requests))
        for name, count in sorted(replicas.items())
    )


def _reject_never_fits(workload: Workload, largest: int, total: int) -> Decision:
    if workload.gpus_per_replica > largest:
        message = f"needs {workload.gpus_per_replica} GPUs per replica; the largest eligible node has {largest}"
    else:
        message = f"needs {workload.total_gpus} GPUs in all; eligible nodes have {total}"
    return Decision.about(workload, Action.REJECT, Reason.NO_NODE_CAN_FIT, message)
