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
quotas and cohorts, topology, GPU sharing, and any preemption of inference.

Why separate deciders rather than the engine with other settings: ``engine.decide`` ranks by
margin and places best-fit on the cheapest product; it exposes no ranking key or placement
strategy to configure. With those two hooks the peers would be the engine itself. The peers
reuse the engine's eligibility rules (``hard_taints``, ``tolerates``) but keep their own free-GPU
ledger, patched between cycles rather than rebuilt from every node, with spread as well as
best-fit placement.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping

from gpuadmit.core.inventory import hard_taints, tolerates
from gpuadmit.core.model import (
    Action,
    CycleResult,
    Decision,
    GpuNode,
    PlacementEntry,
    Preemption,
    Reason,
    Snapshot,
    Workload,
)

Decider = Callable[[Snapshot], CycleResult]
Placement = Literal["spread", "binpack"]
CLASS_RANK = {"inference": 0, "training": 1}


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    name: str
    models: str  # the scheduler and configuration it stands for
    by_class: bool  # inference strictly before training
    inference_preempts_training: bool
    placement: Placement

    def __call__(self, snapshot: Snapshot) -> CycleResult:
        return decide_peer(snapshot, self)


FIFO = PeerPolicy("fifo", "Kueue BestEffortFIFO (+ kube-scheduler LeastAllocated)", False, False, "spread")
PRIORITY = PeerPolicy("priority", "KAI-Scheduler train/inference priority classes", True, True, "spread")
BINPACK = PeerPolicy("binpack", "Volcano priority + binpack plugins", True, True, "binpack")
PEERS: Mapping[str, PeerPolicy] = {peer.name: peer for peer in (FIFO, PRIORITY, BINPACK)}


class _FreeLedger:
    """Free GPUs per node with per-count buckets, so choosing a node is a heap pop, not a scan.

    ``buckets[count]`` is a heap of node names that had ``count`` free GPUs when pushed;
    entries whose node has since changed are skipped when met (lazy deletion).
    """

    def __init__(self, free: dict[str, int]):
        self.free = free
        self.top = max(free.values(), default=0)
        self.buckets: list[list[str]] = [[] for _ in range(self.top + 1)]
        for name in sorted(free):
            self.buckets[free[name]].append(name)  # sorted lists are valid heaps

    def set(self, node: str, count: int) -> None:
        self.free[node] = count
        if count > self.top:
            self.buckets.extend([] for _ in range(count - self.top))
            self.top = count
        heapq.heappush(self.buckets[count], node)

    def copy(self) -> _FreeLedger:
        clone = object.__new__(_FreeLedger)
        clone.free = dict(self.free)
        clone.top = self.top
        clone.buckets = [list(bucket) for bucket in self.buckets]
        return clone

    def drop_stale_heads(self) -> None:
        """Pop outdated entries off each bucket's head, so copies do not pop them again and again."""
        for count in range(len(self.buckets)):
            self._first(count)

    def stale_entries(self) -> int:
        return sum(len(bucket) for bucket in self.buckets) - len(self.free)

    def _first(self, count: int) -> str | None:
        bucket = self.buckets[count]
        while bucket and self.free.get(bucket[0]) != count:
            heapq.heappop(bucket)
        return bucket[0] if bucket else None

    def choose(self, need: int, placement: Placement) -> str | None:
        """The node a replica of ``need`` GPUs goes to: fullest that fits (binpack) or emptiest (spread)."""
        counts = range(need, self.top + 1) if placement == "binpack" else range(self.top, need - 1, -1)
        for count in counts:
            node = self._first(count)
            if node is not None:
                return node
        return None


class _ClusterView:
    """What a cycle derives from the nodes alone, patched rather than rebuilt between cycles.

    A replay changes a few nodes per cycle (their ``gpus_used_by_pods``), so comparing the new
    node tuple with the last one by identity and patching the differences keeps a cycle's cost
    proportional to what changed, not to the cluster. Only speed depends on this cache.
    """

    def __init__(self) -> None:
        self.nodes: tuple[GpuNode, ...] | None = None
        self.usable: dict[str, GpuNode] = {}
        self.ledger = _FreeLedger({})
        self.largest_node = 0
        self.total_gpus = 0
        self.tainted = False

    def update(self, nodes: tuple[GpuNode, ...]) -> None:
        previous = self.nodes
        if nodes is previous:
            return
        if previous is None or len(previous) != len(nodes):
            self._rebuild(nodes)
            return
        shape_changed = False
        for old, new in zip(previous, nodes):
            if old is new:
                continue
            if old.name != new.name:
                self._rebuild(nodes)
                return
            if (old.allocatable, old.schedulable, old.taints) != (new.allocatable, new.schedulable, new.taints):
                shape_changed = True
                break
            self.usable[new.name] = new
            self.ledger.set(new.name, _free_of(new))
        if shape_changed or self.ledger.stale_entries() > 2 * len(self.usable) + 64:
            self._rebuild(nodes)
            return
        self.ledger.drop_stale_heads()
        self.nodes = nodes

    def _rebuild(self, nodes: tuple[GpuNode, ...]) -> None:
        self.nodes = nodes
        self.usable = {node.name: node for node in nodes if _usable(node)}
        self.ledger = _FreeLedger({name: _free_of(node) for name, node in self.usable.items()})
        self.largest_node = max((node.allocatable for node in self.usable.values()), default=0)
        self.total_gpus = sum(node.allocatable for node in self.usable.values())
        self.tainted = _any_tainted(self.usable.values())


_VIEW = _ClusterView()


def decide_peer(snapshot: Snapshot, peer: PeerPolicy) -> CycleResult:
    """One cycle of ``peer``: admit in rank order with backfill, preempt if the peer does."""
    _VIEW.update(tuple(snapshot.nodes))
    nodes = _VIEW.usable
    ledger = _VIEW.ledger.copy()
    victims_on_node: dict[str, list[Workload]] = {}
    for holder in snapshot.holding:
        for entry in holder.placement:
            if entry.node in ledger.free:
                ledger.set(entry.node, max(0, ledger.free[entry.node] - entry.gpus))
            if peer.inference_preempts_training and holder.preemptible and holder.workload_class == "training":
                victims_on_node.setdefault(entry.node, []).append(holder)
    largest_node, total_gpus, tainted = _VIEW.largest_node, _VIEW.total_gpus, _VIEW.tainted
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
    for workload in sorted(snapshot.pending, key=rank):
        if workload.gpu_products or workload.min_gpu_memory_mib or tainted:
            # Constrained shapes are rare in traces: filter a private ledger for them.
            eligible = {name: node for name, node in nodes.items() if _eligible(node, workload)}
            shape_ledger = _FreeLedger({name: ledger.free[name] for name in eligible})
            shape_largest = max((node.allocatable for node in eligible.values()), default=0)
            shape_total = sum(node.allocatable for node in eligible.values())
        else:
            eligible, shape_ledger, shape_largest, shape_total = nodes, ledger, largest_node, total_gpus
        if workload.gpus_per_replica > shape_largest or workload.total_gpus > shape_total:
            decisions.append(_reject_never_fits(workload, shape_largest, shape_total))
            continue
        placement = _place(shape_ledger, workload, peer.placement)
        shape = (workload.gpu_products, workload.min_gpu_memory_mib, workload.gpus_per_replica, workload.replicas)
        if (
            placement is None
            and peer.inference_preempts_training
            and workload.workload_class == "inference"
            and shape not in preemption_failed
        ):
            placement, victims = _place_with_preemption(shape_ledger, workload, victims_on_node, evicted)
            if placement is None:
                preemption_failed.add(shape)
            for victim in victims:
                evicted.add(victim.key)
                for entry in victim.placement:
                    if entry.node in ledger.free:
                        ledger.set(entry.node, ledger.free[entry.node] + entry.gpus)
                        if shape_ledger is not ledger and entry.node in shape_ledger.free:
                            shape_ledger.set(entry.node, shape_ledger.free[entry.node] + entry.gpus)
                preemptions.append(
                    Preemption(
                        namespace=victim.namespace,
                        name=victim.name,
                        preempted_by=workload.key,
                        message=f"preempted by inference workload {workload.key} ({peer.name} peer policy)",
                        freed=victim.placement,
                    )
                )
        if placement is None:
            queued.append(workload)
            continue
        for entry in placement:
            ledger.set(entry.node, ledger.free[entry.node] - entry.gpus)
            if shape_ledger is not ledger:
                shape_ledger.set(entry.node, shape_ledger.free[entry.node] - entry.gpus)
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


def _place(ledger: _FreeLedger, workload: Workload, placement: Placement) -> tuple[PlacementEntry, ...] | None:
    """Every replica on a node by the strategy, or None (all or nothing: nothing is kept on failure)."""
    taken: list[tuple[str, int]] = []
    for _ in range(workload.replicas):
        node = ledger.choose(workload.gpus_per_replica, placement)
        if node is None:
            for name, before in reversed(taken):
                ledger.set(name, before)
            return None
        taken.append((node, ledger.free[node]))
        ledger.set(node, ledger.free[node] - workload.gpus_per_replica)
    for name, before in reversed(taken):  # the caller commits; leave the ledger as found
        ledger.set(name, before)
    return _entries([name for name, _ in taken], workload.gpus_per_replica)


def _place_with_preemption(
    ledger: _FreeLedger,
    workload: Workload,
    victims_on_node: Mapping[str, list[Workload]],
    evicted: set[str],
) -> tuple[tuple[PlacementEntry, ...] | None, list[Workload]]:
    """Place ``workload`` by evicting training workloads: per replica, the node needing the fewest
    victim GPUs, youngest victims first. Returns (placement, victims) or (None, []) if it cannot."""
    # A trial overlay: nothing is evicted unless the whole gang fits. Only nodes with victims
    # (or freed by them) can help, since the plain placement already failed.
    free = {node: ledger.free[node] for node in victims_on_node if node in ledger.free}
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
            spare = ledger.choose(need, "binpack")  # earlier replicas of the gang may have used it
            if spare is not None and spare not in free:
                free[spare] = ledger.free[spare]
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
    return _entries(nodes_taken, need), victims


def _entries(node_names: Iterable[str], gpus_per_replica: int) -> tuple[PlacementEntry, ...]:
    replicas: dict[str, int] = {}
    for name in node_names:
        replicas[name] = replicas.get(name, 0) + 1
    return tuple(PlacementEntry(node=name, gpus=count * gpus_per_replica, replicas=count) for name, count in sorted(replicas.items()))


def _reject_never_fits(workload: Workload, largest: int, total: int) -> Decision:
    if workload.gpus_per_replica > largest:
        message = f"needs {workload.gpus_per_replica} GPUs per replica; the largest eligible node has {largest}"
    else:
        message = f"needs {workload.total_gpus} GPUs in all; eligible nodes have {total}"
    return Decision.about(workload, Action.REJECT, Reason.NO_NODE_CAN_FIT, message)


def _free_of(node: GpuNode) -> int:
    return max(0, node.allocatable - node.gpus_used_by_pods)


def _usable(node: GpuNode) -> bool:
    return node.schedulable and node.allocatable > 0


def _any_tainted(nodes: Iterable[GpuNode]) -> bool:
    return any(hard_taints(node.taints) for node in nodes)


def _eligible(node: GpuNode, workload: Workload) -> bool:
    if workload.gpu_products and node.product not in workload.gpu_products:
        return False
    if workload.min_gpu_memory_mib and node.memory_mib < workload.min_gpu_memory_mib:
        return False
    return tolerates(workload.tolerations, hard_taints(node.taints))  # the engine's own taint rules
