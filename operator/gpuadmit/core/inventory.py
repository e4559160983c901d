"""The free-GPU ledger the engine places into.

Free GPUs on a node = allocatable − GPUs requested by every non-terminal pod
bound to it − the part of each holding workload's reservation that its own
pods do not request yet (``Snapshot.gpus_of_own_pods`` says how much they do,
so nothing is subtracted twice). Free is clamped to ``0..allocatable``.

Why pools and buckets: a cluster of 10,000 nodes is made of a few dozen kinds
of node (same GPU product, memory and hard taints). Eligibility — product,
memory, tolerations — is a property of the kind, so it is computed once per
(pool, workload shape) and cached, never per node. Inside a pool, nodes sit
in buckets by their current free count, each bucket a heap of node indices
(indices follow node-name order), so best fit — the node with the smallest
free count that still holds a replica, ties by name — is a walk over a few
free counts, not a scan of the nodes. Heaps use lazy deletion: a node is
pushed into its new bucket when its free count changes, and stale entries are
dropped when they surface.

Unschedulable nodes (not Ready, cordoned) stay in the ledger, so releasing a
reservation on them is accounted, but belong to no pool: nothing is placed
there.

Where a replica goes is the ledger's placement strategy: ``BEST_FIT`` (the node
with the fewest free GPUs that still holds it -- most-allocated, counted in GPUs;
the engine, and Volcano's binpack) or ``SPREAD`` (the node with the most free
GPUs -- least-allocated, kube-scheduler's default scoring); ties by node name
either way. The simulator's peer policies place through the same ledger.

Deriving pools from the nodes costs a pass over them and the eligibility caches
start empty; a caller that builds an inventory every cycle on the same nodes (the
operator, a replay) keeps a ``LayoutMemo`` and passes it in. Nothing is cached at
module level.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .affinity import node_matches
from .model import GpuNode, NodeConstraints, PlacementEntry, Resources, Snapshot, Taint, Toleration, Workload
from .nodes import BASIC_RESOURCES

# Taint effects that keep new pods off a node; PreferNoSchedule is only a hint.
HARD_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})

PlacementStrategy = Literal["best-fit", "spread"]
BEST_FIT: PlacementStrategy = "best-fit"  # fewest free GPUs that hold the replica (most-allocated)
SPREAD: PlacementStrategy = "spread"  # most free GPUs (least-allocated)


def toleration_matches(toleration: Toleration, taint: Taint) -> bool:
    """Kubernetes semantics for one toleration against one taint."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    operator = toleration.operator or "Equal"
    if not toleration.key:
        # An empty key only makes sense with Exists, where it tolerates every taint.
        return operator == "Exists"
    if toleration.key != taint.key:
        return False
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.value or "") == (taint.value or "")


def tolerates(tolerations: Iterable[Toleration], taint: Taint | Iterable[Taint]) -> bool:
    """True when the tolerations tolerate the taint (or every taint of an iterable).

    Only the tolerating matters here; whether a taint's effect keeps pods off
    the node is the caller's question (see ``hard_taints``).
    """
    tolerations = tuple(tolerations)
    if isinstance(taint, Taint):
        return any(toleration_matches(toleration, taint) for toleration in tolerations)
    return all(tolerates(tolerations, one) for one in taint)


def hard_taints(taints: Iterable[Taint]) -> tuple[Taint, ...]:
    """The taints that keep untolerating pods off a node, in a canonical order."""
    unique = {(t.key, t.value or "", t.effect): t for t in taints if t.effect in HARD_TAINT_EFFECTS}
    return tuple(unique[k] for k in sorted(unique))


def describe_taint(taint: Taint) -> str:
    return f"{taint.key}={taint.value}:{taint.effect}" if taint.value else f"{taint.key}:{taint.effect}"


UNLIMITED = 1 << 62  # what a node that does not list a basic resource has of it
Given = tuple[int, int] | tuple[int, int, Resources]  # what release gave back on one node
ONE_POD: Resources = (("pods", 1),)  # what a template without requests asks for


def workload_shape(workload: Workload) -> tuple:
    """What decides which nodes a workload may use: products, memory, tolerations (the pools'
    part, the first three), then -- only when there is any -- what it needs per replica beyond
    GPUs: requests, node constraints, nodes to avoid (checked node by node)."""
    products = workload.gpu_products
    if len(products) > 1:
        products = tuple(sorted(set(products)))
    shape = (tuple(products), whole(workload.min_gpu_memory_mib), tuple(workload.tolerations))
    requests, constraints, avoided = workload.requests, workload.node_constraints, workload.avoided_nodes
    if (requests and requests != ONE_POD) or constraints or avoided:
        return (*shape, requests, constraints, avoided)
    if requests:
        return (*shape, requests)
    return shape


@dataclass(frozen=True, slots=True)
class Need:
    """What a replica needs of a node beyond GPUs and its pool: the requests the ledger counts
    (per replica), and the nodes its constraints allow (None: all)."""

    requests: Resources
    allowed: frozenset[int] | None
    constrained_out: int = 0  # eligible-by-pool nodes its node constraints or avoided nodes rule out


@dataclass(frozen=True, slots=True)
class Pool:
    """Schedulable nodes that are alike for eligibility: same product, memory and hard taints."""

    index: int
    product: str
    memory_mib: int
    taints: tuple[Taint, ...]
    node_indices: tuple[int, ...]
    max_allocatable: int
    # allocatable GPU count -> number of nodes with it: capacity questions "if it were empty"
    allocatable_histogram: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Exclusions:
    """Why nodes are not eligible for a workload shape, counted for messages."""

    wrong_product: int = 0
    too_little_memory: int = 0
    untolerated_taint: int = 0
    unschedulable: int = 0
    unmatched_constraints: int = 0  # nodeSelector / required node affinity / nodes to avoid
    example_taint: str = ""
    example_unschedulable_reason: str = ""

    def describe(self) -> str:
        parts = []
        if self.wrong_product:
            parts.append(f"{self.wrong_product} offer another product")
        if self.too_little_memory:
            parts.append(f"{self.too_little_memory} have too little GPU memory")
        if self.untolerated_taint:
            parts.append(f"{self.untolerated_taint} carry a taint it does not tolerate (e.g. {self.example_taint})")
        if self.unschedulable:
            why = f" ({self.example_unschedulable_reason})" if self.example_unschedulable_reason else ""
            parts.append(f"{self.unschedulable} are unschedulable{why}")
        if self.unmatched_constraints:
            parts.append(f"{self.unmatched_constraints} do not match its nodeSelector or required node affinity "
                         "(or are avoided after an Unschedulable report)")
        return "; ".join(parts)


def whole(value: object) -> int:
    """A GPU or MiB count as a non-negative int; nonsense (None, NaN, text) counts as 0."""
    try:
        return max(0, int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0


def _own_pods_on(own_pods: Mapping[tuple[str, str], int], key: str, node: str) -> int:
    return whole(own_pods.get((key, node), 0))


def _beyond(held: Resources, own: Resources) -> Resources:
    """Per resource, what a reservation holds beyond what its own pods already request."""
    if not own:
        return held
    mine = dict(own)
    return tuple((r, max(0, a - mine.get(r, 0))) for r, a in held)


def _most(held: Resources, own: Resources) -> Resources:
    """Per resource, the larger of a reservation and what its own pods request."""
    if not own:
        return held
    most = dict(held)
    for r, a in own:
        most[r] = max(most.get(r, 0), a)
    return tuple(sorted(most.items()))


class _NodeLayout:
    """What an inventory derives from the nodes alone: order, pools, and caches keyed by
    workload shape. Nodes change far less often than cycles run, so the last layout is kept."""

    def __init__(self, nodes: Sequence[GpuNode]) -> None:
        by_name = _unique_by_name(nodes)
        self.nodes: list[GpuNode] = [by_name[name] for name in sorted(by_name)]
        self.index_by_name: dict[str, int] = {node.name: i for i, node in enumerate(self.nodes)}
        self.products_offered: frozenset[str] = frozenset(node.product for node in self.nodes)
        self.allocatable: list[int] = [whole(node.allocatable) for node in self.nodes]
        groups: dict[tuple, list[int]] = {}
        for index, node in enumerate(self.nodes):
            if node.schedulable:
                key = (node.product, whole(node.memory_mib), hard_taints(node.taints))
                groups.setdefault(key, []).append(index)
        self.pools: list[Pool] = []
        self.pool_of: list[int] = [-1] * len(self.nodes)
        for (product, memory, taints), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], [describe_taint(t) for t in kv[0][2]])):
            histogram: dict[int, int] = {}
            for index in members:
                histogram[self.allocatable[index]] = histogram.get(self.allocatable[index], 0) + 1
                self.pool_of[index] = len(self.pools)
            self.pools.append(
                Pool(
                    index=len(self.pools),
                    product=product,
                    memory_mib=memory,
                    taints=taints,
                    node_indices=tuple(members),
                    max_allocatable=max(histogram),
                    allocatable_histogram=tuple(sorted(histogram.items())),
                )
            )
        self.eligible_cache: dict[tuple, tuple[int, ...]] = {}
        self.exclusions_cache: dict[tuple, Exclusions] = {}
        self.need_cache: dict[tuple, Need | None] = {}
        # Every resource beyond GPUs some node lists: the ledger counts these (requests for the basic
        # ones no node lists are not counted; see core.nodes.BASIC_RESOURCES).
        self.resource_allocatable: list[dict[str, int]] = [dict(node.resources) for node in self.nodes]
        self.listed_resources: frozenset[str] = frozenset(r for node in self.nodes for r, _ in node.resources)
        self._labels: list[dict[str, str]] | None = None  # made when a workload first has node constraints
        self._capacity_kinds: list[list[tuple[tuple[int, dict[str, int]], int]]] | None = None

        # Input position -> node index, when every name is text and unique (the usual case): lets a
        # LayoutMemo patch the GPUs used on the nodes whose object changed. None otherwise.
        names = [node.name for node in nodes]
        plain = all(isinstance(node.name, str) and isinstance(node.product, str) for node in nodes)
        self.index_of_position: list[int] | None = (
            [self.index_by_name[name] for name in names] if plain and len(set(names)) == len(names) else None
        )
        self._position_of_index: list[int] | None = None

    def with_nodes_added(self, nodes: Sequence[GpuNode], added: Sequence[GpuNode]) -> tuple[_NodeLayout, list[int | None]] | None:
        """The layout of ``nodes`` -- this layout's nodes, alike in shape, and ``added`` -- derived
        from this one, equal to ``_NodeLayout(nodes)``, and each of its nodes' index in this one
        (None: added); None when that would not hold as derived here (names not unique text, or
        an added node that forms a new pool)."""
        names = [node.name for node in nodes]
        if self.index_of_position is None or len(set(names)) != len(names) or not all(
            isinstance(node.name, str) and isinstance(node.product, str) for node in added
        ):
            return None
        pool_of_key = {(pool.product, pool.memory_mib, pool.taints): pool.index for pool in self.pools}
        added_pool: dict[str, int] = {}
        for node in added:
            if node.schedulable:
                home = pool_of_key.get((node.product, whole(node.memory_mib), hard_taints(node.taints)))
                if home is None:
                    return None
                added_pool[node.name] = home
        grown = object.__new__(_NodeLayout)
        newcomers = sorted(added, key=_name)
        in_place = not self.nodes or not newcomers or newcomers[0].name > self.nodes[-1].name  # the added come last
        was: list[int | None]
        if in_place:  # the known nodes keep their indexes: this layout's lists, extended
            known = len(self.nodes)
            grown.nodes = self.nodes + newcomers
            grown.index_by_name = self.index_by_name | {node.name: known + i for i, node in enumerate(newcomers)}
            was = [*range(known), *[None] * len(newcomers)]
            grown.allocatable = self.allocatable + [whole(node.allocatable) for node in newcomers]
            grown.pool_of = self.pool_of + [added_pool.get(node.name, -1) for node in newcomers]
            grown.resource_allocatable = self.resource_allocatable + [dict(node.resources) for node in newcomers]
            moved: list[int] = []
        else:
            grown.nodes = sorted([*self.nodes, *added], key=_name)
            grown.index_by_name = {node.name: i for i, node in enumerate(grown.nodes)}
            was = list(map(self.index_by_name.get, map(_name, grown.nodes)))  # None: added
            grown.allocatable = [self.allocatable[i] if i is not None else whole(n.allocatable) for i, n in zip(was, grown.nodes, strict=True)]
            grown.pool_of = [self.pool_of[i] if i is not None else added_pool.get(n.name, -1) for i, n in zip(was, grown.nodes, strict=True)]
            grown.resource_allocatable = [self.resource_allocatable[i] if i is not None else dict(n.resources) for i, n in zip(was, grown.nodes, strict=True)]
            moved = [i for i, known in enumerate(was) if known is not None]  # index here -> index there
        grown.products_offered = self.products_offered | {node.product for node in added}
        grown.pools = []
        for pool in self.pools:
            histogram = dict(pool.allocatable_histogram)
            members = list(pool.node_indices) if in_place else list(map(moved.__getitem__, pool.node_indices))
            joined = [grown.index_by_name[name] for name, p in added_pool.items() if p == pool.index]
            for index in joined:
                histogram[grown.allocatable[index]] = histogram.get(grown.allocatable[index], 0) + 1
            grown.pools.append(replace(pool, node_indices=tuple(sorted(members + joined)) if joined else tuple(members),
                                       max_allocatable=max(histogram), allocatable_histogram=tuple(sorted(histogram.items()))))
        grown.eligible_cache = dict(self.eligible_cache)  # by pool product, memory and taints: alike
        grown.exclusions_cache = {}
        grown.need_cache = {}
        grown.listed_resources = self.listed_resources | {r for node in added for r, _ in node.resources}
        grown._labels = None
        grown._capacity_kinds = None
        grown.index_of_position = list(map(grown.index_by_name.__getitem__, names))
        grown._position_of_index = None
        return grown, was

    @property
    def position_of_index(self) -> list[int]:
        """Node index -> input position (the inverse of ``index_of_position``, which must exist)."""
        if self._position_of_index is None:
            assert self.index_of_position is not None
            inverse = [0] * len(self.index_of_position)
            for position, index in enumerate(self.index_of_position):
                inverse[index] = position
            self._position_of_index = inverse
        return self._position_of_index

    def capacity_kinds(self, pool: int) -> list[tuple[tuple[int, dict[str, int]], int]]:
        """((allocatable GPUs, allocatable resources), node count) of a pool's nodes, made on first use."""
        if self._capacity_kinds is None:
            self._capacity_kinds = []
            for one in self.pools:
                kinds: dict[tuple[int, tuple[tuple[str, int], ...]], int] = {}
                for index in one.node_indices:
                    key = (self.allocatable[index], self.nodes[index].resources)
                    kinds[key] = kinds.get(key, 0) + 1
                self._capacity_kinds.append([((gpus, dict(resources)), count) for (gpus, resources), count in sorted(kinds.items())])
        return self._capacity_kinds[pool]

    def labels_of(self, index: int) -> dict[str, str]:
        if self._labels is None:
            self._labels = [dict(node.labels) for node in self.nodes]
        return self._labels[index]


def _name(node: GpuNode) -> str:
    return node.name


def _same_shape(a: GpuNode, b: GpuNode) -> bool:
    """Equal in everything a layout is derived from (all but what pods use)."""
    return (a.name, a.allocatable, a.product, a.memory_mib, a.schedulable, a.taints, a.unschedulable_reason,
            a.labels, a.resources) == (
        b.name, b.allocatable, b.product, b.memory_mib, b.schedulable, b.taints, b.unschedulable_reason,
        b.labels, b.resources)


def _unique_by_name(nodes: Sequence[GpuNode]) -> dict[str, GpuNode]:
    """One node per name. Names and products are compared and sorted, so anything but text is
    made text first; the survivor of duplicate names must not depend on input order, so the
    smallest repr wins (computed only for duplicates: for every node it would dominate a cycle)."""
    by_name: dict[str, GpuNode] = {}
    for node in nodes:
        if not (isinstance(node.name, str) and isinstance(node.product, str)):
            node = replace(node, name=str(node.name), product=node.product if isinstance(node.product, str) else "")
        kept = by_name.setdefault(node.name, node)
        if kept is not node and repr(node) < repr(kept):
            by_name[node.name] = node
    return by_name


class LayoutMemo:
    """What inventories derive from the nodes, kept between cycles by a caller that builds one per
    cycle on nearly the same nodes (the operator's loop, a replay).

    The layout (order, pools, eligibility caches) is reused while no node changed shape (nodes
    compared by identity first, then by every field but the GPUs used by pods); the free GPUs
    after pods are kept too, and patched only on the nodes whose object changed, so a cycle
    costs what changed plus a copy, not a pass over every node. The result is the same either
    way (tests/core/test_inventory.py builds both and compares); only speed depends on it.
    """

    def __init__(self) -> None:
        self._nodes: tuple[GpuNode, ...] = ()
        self._layout: _NodeLayout | None = None
        self._after_pods: Inventory | None = None

    def layout_of(self, nodes: Sequence[GpuNode]) -> _NodeLayout:
        return self._refresh(nodes)

    def after_pods(self, nodes: Sequence[GpuNode]) -> Inventory:
        """The ledger of these nodes with the GPUs their pods use taken, nothing reserved yet.
        Shared: copy it before changing it."""
        layout = self._refresh(nodes)
        if self._after_pods is None:
            self._after_pods = Inventory._after_pods_of(layout, self._nodes)
        return self._after_pods

    def _refresh(self, nodes: Sequence[GpuNode]) -> _NodeLayout:
        nodes = tuple(nodes)
        previous, layout = self._nodes, self._layout
        if layout is None or len(nodes) != len(previous) or not all(
            new is old or _same_shape(new, old) for new, old in zip(nodes, previous, strict=True)  # same length: checked first
        ):
            layout = self._layout = _NodeLayout(nodes)
            self._after_pods = None
        elif self._after_pods is not None:
            positions = layout.index_of_position
            if positions is None:
                self._after_pods = None  # duplicate names: which one counts may change with usage
            else:
                ledger = self._after_pods
                for position, (new, old) in enumerate(zip(nodes, previous, strict=True)):
                    if new is not old:
                        ledger.adjust(positions[position], whole(old.gpus_used_by_pods) - whole(new.gpus_used_by_pods))
                        if new.resources_used_by_pods != old.resources_used_by_pods:
                            ledger.adjust_resources(positions[position], old.resources_used_by_pods, 1)
                            ledger.adjust_resources(positions[position], new.resources_used_by_pods, -1)
                if ledger.stale_entries() > 2 * len(nodes) + 64:
                    ledger.rebucket()
        self._nodes = nodes
        return layout


class Inventory:
    """Free GPUs per node, by pool and free count; mutable, cheap to ``copy``."""

    def __init__(
        self,
        nodes: Sequence[GpuNode],
        holding: Sequence[Workload] = (),
        gpus_of_own_pods: Mapping[tuple[str, str], int] | None = None,
        *,
        strategy: PlacementStrategy = BEST_FIT,
        layouts: LayoutMemo | None = None,
        own_pod_resources: Mapping[tuple[str, str], Resources] | None = None,
    ) -> None:
        if strategy not in (BEST_FIT, SPREAD):
            raise ValueError(f"unknown placement strategy {strategy!r} (known: {BEST_FIT}, {SPREAD})")
        if layouts is not None:
            self._copy_ledger(layouts.after_pods(nodes))
        else:
            self._fill_after_pods(_NodeLayout(nodes), nodes)
        self.strategy: PlacementStrategy = strategy
        # Reservations, summed per node first (raw counts add up in any order): one adjust per node.
        own_pods = gpus_of_own_pods or {}
        self.own_pod_resources: Mapping[tuple[str, str], Resources] = own_pod_resources or {}
        reserved: dict[int, int] = {}
        for workload in holding:
            for entry in workload.placement:
                index = self.index_by_name.get(entry.node)
                if index is not None:
                    gpus = entry.gpus if type(entry.gpus) is int and entry.gpus >= 0 else whole(entry.gpus)
                    if own_pods:
                        gpus = max(0, gpus - _own_pods_on(own_pods, workload.key, entry.node))
                    reserved[index] = reserved.get(index, 0) + gpus
                    if entry.resources:
                        self.adjust_resources(index, _beyond(entry.resources, self.own_pod_resources.get((workload.key, entry.node), ())), -1)
        for index, gpus in reserved.items():
            self.adjust(index, -gpus)

    @classmethod
    def _after_pods_of(cls, layout: _NodeLayout, nodes: Sequence[GpuNode]) -> Inventory:
        ledger = object.__new__(cls)
        ledger.strategy = BEST_FIT
        ledger.own_pod_resources = {}
        ledger._fill_after_pods(layout, nodes)
        return ledger

    def _fill_after_pods(self, layout: _NodeLayout, nodes: Sequence[GpuNode]) -> None:
        """Free GPUs = allocatable - GPUs used by pods; reservations are taken after."""
        self._adopt(layout)
        raw_free = list(self.allocatable)
        if layout.index_of_position is not None:
            for index, node in zip(layout.index_of_position, nodes, strict=True):
                raw_free[index] -= whole(node.gpus_used_by_pods)
        else:
            current = _unique_by_name(nodes)
            raw_free = [alloc - whole(current[node.name].gpus_used_by_pods) for alloc, node in zip(self.allocatable, self.nodes, strict=True)]
        self._count_free(raw_free)
        # Raw free amount of every listed resource beyond GPUs, per node (may go negative: overbooked).
        # Copy on write: a copy shares the dicts, and whoever changes one copies it first.
        self.resource_free: list[dict[str, int]] = [dict(free) for free in layout.resource_allocatable]
        self._resources_owned: set[int] = set(range(len(self.nodes)))
        if layout.index_of_position is not None:
            for index, node in zip(layout.index_of_position, nodes, strict=True):
                if node.resources_used_by_pods:
                    self.adjust_resources(index, node.resources_used_by_pods, -1)
        else:
            current = _unique_by_name(nodes)
            for index, node in enumerate(self.nodes):
                if current[node.name].resources_used_by_pods:
                    self.adjust_resources(index, current[node.name].resources_used_by_pods, -1)

    def _count_free(self, raw_free: list[int]) -> None:
        """The pools' counts, buckets and tops from the nodes' raw free GPUs."""
        # Raw free may be negative (overbooked by pods); usable free is clamped.
        self.raw_free: list[int] = raw_free
        self.free: list[int] = [min(alloc, max(0, raw)) for alloc, raw in zip(self.allocatable, raw_free, strict=True)]
        # count_by_free[pool][f]: nodes of the pool with exactly f free; buckets[pool][f]: their heap.
        self.count_by_free: list[list[int]] = [[0] * (pool.max_allocatable + 1) for pool in self.pools]
        for pool in self.pools:
            for index in pool.node_indices:
                self.count_by_free[pool.index][self.free[index]] += 1
        self.rebucket()
        self.top_free: list[int] = [self._scan_top(pool.index, pool.max_allocatable) for pool in self.pools]

    def on_layout(self, layout: _NodeLayout, was: Sequence[int | None]) -> Inventory:
        """This ledger on the layout ``with_nodes_added`` made from its own (``was``: each node's
        index here, None: added): each known node's free GPUs and resources carried; an added node
        starts with none free (the caller gives it what its pods and reservations leave). When the
        known nodes keep their indexes (the added ones come last by name), this ledger itself,
        grown in place; else a new one."""
        known = len(self.nodes)
        if was[:known] == list(range(known)):
            self._adopt(layout)
            for pool in layout.pools:  # a pool's largest node may have grown: more free counts
                more = pool.max_allocatable + 1 - len(self.count_by_free[pool.index])
                if more > 0:
                    self.count_by_free[pool.index].extend([0] * more)
                    self.buckets[pool.index].extend([] for _ in range(more))
                    self.bucket_max[pool.index].extend([None] * more)
            for index in range(known, len(layout.nodes)):
                self.raw_free.append(0)
                self.free.append(0)
                self.resource_free.append(layout.resource_allocatable[index])  # shared until written
                p = layout.pool_of[index]
                if p >= 0:
                    self.count_by_free[p][0] += 1
                    heapq.heappush(self.buckets[p][0], index)
                    bound = self.bucket_max[p][0]
                    if bound is not None:
                        self._raise_bound(bound, index)
            return self
        clone = object.__new__(Inventory)
        clone.strategy = self.strategy
        clone.own_pod_resources = self.own_pod_resources
        clone._adopt(layout)
        raw_free = [self.raw_free[i] if i is not None else 0 for i in was]
        resource_free = [self.resource_free[i] if i is not None else free for i, free in zip(was, layout.resource_allocatable, strict=True)]
        clone._count_free(raw_free)
        clone.resource_free = resource_free
        clone._resources_owned = set()
        self._resources_owned = set()
        return clone

    def rebucket(self) -> None:
        """Fill the buckets afresh from the free counts, without the stale entries lazy deletion leaves."""
        self.buckets: list[list[list[int]]] = [[[] for _ in range(pool.max_allocatable + 1)] for pool in self.pools]
        # Per bucket, an upper bound of its nodes' free resources (None: not known yet); see _bucket_first.
        self.bucket_max: list[list[dict[str, int] | None]] = [[None] * (pool.max_allocatable + 1) for pool in self.pools]
        for pool in self.pools:
            for index in pool.node_indices:  # ascending, so each bucket is already a valid heap
                self.buckets[pool.index][self.free[index]].append(index)

    def stale_entries(self) -> int:
        return sum(len(heap) for heaps in self.buckets for heap in heaps) - sum(len(pool.node_indices) for pool in self.pools)

    def _adopt(self, layout: _NodeLayout) -> None:
        """Take the node-derived, read-only part: shared by copies and by later cycles."""
        self.layout = layout
        self.nodes = layout.nodes
        self.index_by_name = layout.index_by_name
        self.products_offered = layout.products_offered
        self.allocatable = layout.allocatable
        self.pools = layout.pools
        self.pool_of = layout.pool_of
        self._eligible_cache = layout.eligible_cache
        self._exclusions_cache = layout.exclusions_cache
        self._need_cache = layout.need_cache

    @classmethod
    def from_snapshot(
        cls, snapshot: Snapshot, *, strategy: PlacementStrategy = BEST_FIT, layouts: LayoutMemo | None = None,
    ) -> Inventory:
        return cls(snapshot.nodes, snapshot.holding, snapshot.gpus_of_own_pods, strategy=strategy, layouts=layouts,
                   own_pod_resources=snapshot.resources_of_own_pods)

    def copy(self) -> Inventory:
        """An independent ledger with the same free counts (pools and caches are shared, read-only)."""
        clone = object.__new__(Inventory)
        clone.strategy = self.strategy
        clone.own_pod_resources = self.own_pod_resources
        clone._copy_ledger(self)
        return clone

    def _copy_ledger(self, other: Inventory) -> None:
        self._adopt(other.layout)
        self.raw_free = list(other.raw_free)
        self.free = list(other.free)
        self.count_by_free = [list(counts) for counts in other.count_by_free]
        self.buckets = [[list(heap) for heap in heaps] for heaps in other.buckets]
        self.bucket_max = [[dict(bound) if bound is not None else None for bound in bounds] for bounds in other.bucket_max]
        self.top_free = list(other.top_free)
        self.resource_free = list(other.resource_free)  # the dicts are shared until written
        self._resources_owned = set()
        other._resources_owned = set()

    # --- eligibility -------------------------------------------------------

    def eligible_pools(self, workload: Workload, shape: tuple | None = None) -> tuple[int, ...]:
        """Pools whose nodes the workload may use (product, memory, tolerations), cached by shape."""
        shape = (shape or workload_shape(workload))[:3]
        cached = self._eligible_cache.get(shape)
        if cached is None:
            products, min_memory, tolerations = shape
            cached = tuple(
                pool.index
                for pool in self.pools
                if (not products or pool.product in products)
                and pool.memory_mib >= min_memory
                and tolerates(tolerations, pool.taints)
            )
            self._eligible_cache[shape] = cached
        return cached

    def exclusions(self, workload: Workload) -> Exclusions:
        """Count why each node is not eligible: for the message of a rejection (a full scan,
        cached by shape)."""
        shape = workload_shape(workload)
        cached = self._exclusions_cache.get(shape)
        if cached is None:
            cached = self._exclusions_cache[shape] = self._count_exclusions(shape)
        return cached

    def need_of(self, workload: Workload, shape: tuple | None = None) -> Need | None:
        """What the workload's replicas need of a node beyond GPUs and pools, or None when nothing
        (the GPU-only case, placed exactly as by GPUs alone). Cached by shape."""
        shape = shape or workload_shape(workload)
        if len(shape) == 3:
            return None
        if shape in self._need_cache:
            return self._need_cache[shape]
        listed = self.layout.listed_resources
        counted = tuple((r, a) for r, a in workload.requests if a > 0 and (r in listed or r not in BASIC_RESOURCES))
        allowed: frozenset[int] | None = None
        constrained_out = 0
        if workload.node_constraints or workload.avoided_nodes:
            allowed = frozenset(
                index for index, node in enumerate(self.nodes)
                if node.name not in workload.avoided_nodes and node_matches(workload.node_constraints, node.name, self.layout.labels_of(index))
            )
            constrained_out = sum(
                1 for p in self.eligible_pools(workload, shape) for index in self.pools[p].node_indices if index not in allowed
            )
        need = None if not counted and allowed is None else Need(counted, allowed, constrained_out)
        self._need_cache[shape] = need
        return need

    def _count_exclusions(self, shape: tuple) -> Exclusions:
        products, min_memory, tolerations = shape[:3]
        constraints: NodeConstraints = shape[4] if len(shape) > 4 else NodeConstraints()
        avoided: frozenset[str] = shape[5] if len(shape) > 5 else frozenset()
        counts = {"wrong_product": 0, "too_little_memory": 0, "untolerated_taint": 0, "unschedulable": 0,
                  "unmatched_constraints": 0}
        example_taint = example_reason = ""
        for index, node in enumerate(self.nodes):
            if products and node.product not in products:
                counts["wrong_product"] += 1
            elif whole(node.memory_mib) < min_memory:
                counts["too_little_memory"] += 1
            elif not node.schedulable:
                counts["unschedulable"] += 1
                example_reason = example_reason or node.unschedulable_reason
            else:
                blocking = [t for t in hard_taints(node.taints) if not tolerates(tolerations, t)]
                if blocking:
                    counts["untolerated_taint"] += 1
                    example_taint = example_taint or describe_taint(blocking[0])
                elif node.name in avoided or not node_matches(constraints, node.name, self.layout.labels_of(index)):
                    counts["unmatched_constraints"] += 1
        return Exclusions(**counts, example_taint=example_taint, example_unschedulable_reason=example_reason)

    def pools_by_product(self, pool_indices: Iterable[int]) -> dict[str, tuple[int, ...]]:
        grouped: dict[str, list[int]] = {}
        for index in pool_indices:
            grouped.setdefault(self.pools[index].product, []).append(index)
        return {product: tuple(indices) for product, indices in sorted(grouped.items())}

    def product_of(self, node_name: str) -> str | None:
        index = self.index_by_name.get(node_name)
        return None if index is None else self.nodes[index].product

    # --- capacity questions ------------------------------------------------

    @staticmethod
    def replicas_if_empty(pools: Iterable[Pool], gpus_per_replica: int) -> int:
        """Replicas of this size the pools' nodes could hold if nothing ran on them."""
        return sum(count * (alloc // gpus_per_replica) for pool in pools for alloc, count in pool.allocatable_histogram)

    def replicas_if_empty_with(self, pool_indices: Iterable[int], gpus_per_replica: int, need: Need) -> int:
        """``replicas_if_empty`` counting the need too: allowed nodes, and every resource's allocatable."""
        if need.allowed is not None:  # node by node
            return sum(
                self._replicas_on(index, self.allocatable[index], gpus_per_replica, need, self.layout.resource_allocatable[index])
                for p in pool_indices for index in self.pools[p].node_indices
            )
        # Nodes alike in GPUs and every resource hold alike: one count per kind of node.
        return sum(
            count * self._replicas_on(-1, gpus, gpus_per_replica, need, resources)
            for p in pool_indices for (gpus, resources), count in self.layout.capacity_kinds(p)
        )

    def _replicas_on(self, index: int, gpus_free: int, g: int, need: Need, free: Mapping[str, int]) -> int:
        """Replicas of ``g`` GPUs and the need's requests that ``gpus_free`` GPUs and ``free`` hold on a node."""
        if need.allowed is not None and index not in need.allowed:
            return 0
        count = gpus_free // g
        for resource, amount in need.requests:
            have = free.get(resource)
            if have is None:
                if resource not in BASIC_RESOURCES:
                    return 0  # an extended resource the node does not list: it has none
                continue
            count = min(count, max(0, have) // amount)
            if not count:
                return 0
        return count

    def replicas_fitting_on(self, index: int, gpus_per_replica: int, need: Need) -> int:
        """Replicas that fit on one node now, in its free GPUs and every resource of the need."""
        return self._replicas_on(index, self.free[index], gpus_per_replica, need, self.resource_free[index])

    def shortage(self, pool_indices: Iterable[int], gpus_per_replica: int, need: Need, *, if_empty: bool = False) -> tuple[str, int] | None:
        """The resource that binds a replica on the allowed nodes with enough GPUs (now, or if they
        were empty): (resource, the most any such node offers) for the first one short on all of
        them; None when each is offered somewhere (then it is their combination, or the gang)."""
        best: dict[str, int] = {}
        for p in pool_indices:
            for index in self.pools[p].node_indices:
                gpus = self.allocatable[index] if if_empty else self.free[index]
                if gpus < gpus_per_replica or (need.allowed is not None and index not in need.allowed):
                    continue
                free = self.layout.resource_allocatable[index] if if_empty else self.resource_free[index]
                for resource, _ in need.requests:
                    have = free.get(resource)
                    if have is None and resource in BASIC_RESOURCES:
                        have = UNLIMITED
                    best[resource] = max(best.get(resource, 0), have or 0)
        for resource, amount in need.requests:
            if best.get(resource, 0) < amount:
                return resource, max(0, best.get(resource, 0))
        return None

    def max_free(self, pool_indices: Sequence[int], need: Need | None = None) -> int:
        if need is not None:  # the fullest bucket, from the top, with a node that meets the need
            best = 0
            for p in pool_indices:
                counts = self.count_by_free[p]
                for free in range(self.top_free[p], best, -1):
                    if counts[free] and self._bucket_first(p, free, need) is not None:
                        best = free
                        break
            return best
        if len(pool_indices) == 1:  # the usual case, asked for every workload
            return self.top_free[pool_indices[0]]
        return max((self.top_free[p] for p in pool_indices), default=0)

    def replicas_that_fit(self, pool_indices: Iterable[int], gpus_per_replica: int, enough: int | None = None,
                          need: Need | None = None) -> int:
        """Replicas of this size that fit in free GPUs (and the need's resources) now (stops counting at ``enough``)."""
        total = 0
        if need is not None:  # node by node
            gpus_free, resource_free, replicas_on = self.free, self.resource_free, self._replicas_on
            for p in pool_indices:
                for index in self.pools[p].node_indices:
                    if gpus_free[index] < gpus_per_replica:
                        continue  # holds none: skipped without the call, most nodes of a full cluster
                    total += replicas_on(index, gpus_free[index], gpus_per_replica, need, resource_free[index])
                    if enough is not None and total >= enough:
                        return total
            return total
        for p in pool_indices:
            counts = self.count_by_free[p]
            for free in range(gpus_per_replica, self.top_free[p] + 1):
                if counts[free]:
                    total += counts[free] * (free // gpus_per_replica)
                    if enough is not None and total >= enough:
                        return total
        return total

    def fits(self, pool_indices: Sequence[int], gpus_per_replica: int, replicas: int, need: Need | None = None) -> bool:
        if need is not None:
            if not self.fits(pool_indices, gpus_per_replica, replicas):
                return False
            if replicas == 1:
                return self.choose_node(pool_indices, gpus_per_replica, need) is not None
            return self.replicas_that_fit(pool_indices, gpus_per_replica, replicas, need) >= replicas
        if replicas == 1:
            top_free = self.top_free
            return any(top_free[p] >= gpus_per_replica for p in pool_indices)
        return self.replicas_that_fit(pool_indices, gpus_per_replica, enough=replicas) >= replicas

    def total_free(self, pool_indices: Iterable[int]) -> int:
        return sum(free * count for p in pool_indices for free, count in enumerate(self.count_by_free[p]))

    # --- placing and releasing --------------------------------------------

    def best_fit_node(self, pool_indices: Sequence[int], gpus_per_replica: int, need: Need | None = None) -> int | None:
        """The eligible node with the smallest free count ≥ the replica's GPUs (that also meets the
        need); ties by name."""
        best: tuple[int, int] | None = None  # (free, index): the fewest free that hold it, then the lowest index
        for p in pool_indices:
            top = self.top_free[p]
            limit = top if best is None else min(top, best[0])
            if limit < gpus_per_replica:
                continue
            counts = self.count_by_free[p]
            for free in range(gpus_per_replica, limit + 1):
                if counts[free]:
                    head = self._bucket_head(p, free) if need is None else self._bucket_first(p, free, need)
                    if head is None:
                        continue
                    candidate = (free, head)
                    if best is None or candidate < best:
                        best = candidate
                    break
        return None if best is None else best[1]

    def emptiest_node(self, pool_indices: Sequence[int], gpus_per_replica: int, need: Need | None = None) -> int | None:
        """The eligible node with the largest free count (≥ the replica's GPUs); ties by name."""
        best: tuple[int, int] | None = None  # (-free, index): the most free, then the lowest index
        if need is not None:
            for p in pool_indices:
                counts = self.count_by_free[p]
                for free in range(self.top_free[p], gpus_per_replica - 1, -1):
                    if best is not None and -free > best[0]:
                        break
                    head = self._bucket_first(p, free, need) if counts[free] else None
                    if head is not None:
                        if best is None or (-free, head) < best:
                            best = (-free, head)
                        break
            return None if best is None else best[1]
        for p in pool_indices:
            top = self.top_free[p]
            if top < gpus_per_replica or (best is not None and -top > best[0]):
                continue
            candidate = (-top, self._bucket_head(p, top))
            if best is None or candidate < best:
                best = candidate
        return None if best is None else best[1]

    def choose_node(self, pool_indices: Sequence[int], gpus_per_replica: int, need: Need | None = None) -> int | None:
        """Where the next replica goes, by this ledger's strategy; None when none holds it."""
        if self.strategy == SPREAD:
            return self.emptiest_node(pool_indices, gpus_per_replica, need)
        return self.best_fit_node(pool_indices, gpus_per_replica, need)

    def place(self, pool_indices: Sequence[int], gpus_per_replica: int, replicas: int) -> tuple[PlacementEntry, ...] | None:
        """Place all replicas (one at a time, by the strategy) or none; commits on success."""
        if gpus_per_replica <= 0 or replicas <= 0 or not self.fits(pool_indices, gpus_per_replica, replicas):
            return None
        replicas_by_node: dict[int, int] = {}
        for _ in range(replicas):
            index = self.choose_node(pool_indices, gpus_per_replica)
            if index is None:  # cannot happen after fits(); undo rather than half-place a gang
                for placed, count in replicas_by_node.items():
                    self.adjust(placed, gpus_per_replica * count)
                return None
            self.adjust(index, -gpus_per_replica)
            replicas_by_node[index] = replicas_by_node.get(index, 0) + 1
        return tuple(
            PlacementEntry(node=self.nodes[i].name, gpus=count * gpus_per_replica, replicas=count)
            for i, count in sorted(replicas_by_node.items())
        )

    def place_needing(self, pool_indices: Sequence[int], g: int, replicas: int, need: Need) -> tuple[PlacementEntry, ...] | None:
        """``place``, where every replica also meets the need on its node: allowed there, and fits
        in every resource (two replicas on one node add up)."""
        if g <= 0 or replicas <= 0 or not self.fits(pool_indices, g, replicas):
            return None  # not even by GPUs
        replicas_by_node: dict[int, int] = {}
        for _ in range(replicas):
            index = self.choose_node(pool_indices, g, need)
            if index is None:  # short of a resource somewhere: undo rather than half-place a gang
                for placed, count in replicas_by_node.items():
                    self.adjust(placed, g * count)
                    self.adjust_resources(placed, need.requests, count)
                return None
            self.adjust(index, -g)
            self.adjust_resources(index, need.requests, -1)
            replicas_by_node[index] = replicas_by_node.get(index, 0) + 1
        return tuple(
            PlacementEntry(node=self.nodes[i].name, gpus=count * g, replicas=count,
                           resources=tuple((r, a * count) for r, a in need.requests))
            for i, count in sorted(replicas_by_node.items())
        )

    def take(self, placement: Iterable[PlacementEntry]) -> None:
        for entry in placement:
            index = self.index_by_name.get(entry.node)
            if index is not None:
                self.adjust(index, -whole(entry.gpus))
                if entry.resources:
                    self.adjust_resources(index, entry.resources, -1)

    def release(
        self, placement: Iterable[PlacementEntry], workload_key: str = "", own_pods: Mapping[tuple[str, str], int] | None = None,
    ) -> tuple[Given, ...]:
        """Give back a holding workload's GPUs and other resources: its reservation and what its own
        pods request (they are deleted with it), i.e. max(entry, own pods) per node and resource.
        Returns what it gave back, (node index, GPUs[, resources when any]), so that ``unrelease`` can undo
        exactly this: ``take`` of the same placement would take back only the reservation, not
        what its own pods held."""
        given: list[Given] = []
        for entry in placement:
            index = self.index_by_name.get(entry.node)
            if index is not None:
                amount = max(whole(entry.gpus), _own_pods_on(own_pods or {}, workload_key, entry.node))
                self.adjust(index, amount)
                resources = entry.resources
                if workload_key and self.own_pod_resources:
                    resources = _most(resources, self.own_pod_resources.get((workload_key, entry.node), ()))
                if resources:
                    self.adjust_resources(index, resources, 1)
                given.append((index, amount, resources) if resources else (index, amount))
        return tuple(given)

    def unrelease(self, given: Iterable[Given]) -> None:
        """Undo a ``release`` exactly, from what it returned (``adjust`` counts raw free GPUs, so
        the clamped free counts come back too)."""
        for item in given:
            self.adjust(item[0], -item[1])
            if len(item) == 3:
                self.adjust_resources(item[0], item[2], -1)

    def adjust_resources(self, index: int, amounts: Resources, times: int) -> None:
        """Add ``times`` x ``amounts`` to a node's free resources (negative: take); resources the
        node does not list are not counted."""
        if index not in self._resources_owned:
            self.resource_free[index] = dict(self.resource_free[index])
            self._resources_owned.add(index)
        free = self.resource_free[index]
        for resource, amount in amounts:
            if resource in free:
                free[resource] += times * amount
        if times > 0:
            p = self.pool_of[index]
            bound = self.bucket_max[p][self.free[index]] if p >= 0 else None
            if bound is not None:
                self._raise_bound(bound, index)

    def freed_by(self, placement: Iterable[PlacementEntry], workload_key: str, own_pods: Mapping[tuple[str, str], int]) -> dict[int, int]:
        """Node index -> GPUs that ``release`` would add back (before clamping)."""
        freed: dict[int, int] = {}
        for entry in placement:
            index = self.index_by_name.get(entry.node)
            if index is not None:
                freed[index] = freed.get(index, 0) + max(whole(entry.gpus), _own_pods_on(own_pods, workload_key, entry.node))
        return freed

    def usable_after(self, index: int, delta: int) -> int:
        return min(self.allocatable[index], max(0, self.raw_free[index] + delta))

    def adjust(self, index: int, delta: int) -> None:
        """Change a node's raw free count by ``delta`` and keep pools, buckets and tops in step."""
        self.raw_free[index] += delta
        old = self.free[index]
        new = min(self.allocatable[index], max(0, self.raw_free[index]))
        if new == old:
            return
        self.free[index] = new
        p = self.pool_of[index]
        if p < 0:
            return
        counts = self.count_by_free[p]
        counts[old] -= 1
        counts[new] += 1
        heapq.heappush(self.buckets[p][new], index)
        if self.layout.listed_resources:
            bound = self.bucket_max[p][new]
            if bound is not None:
                self._raise_bound(bound, index)
        if new > self.top_free[p]:
            self.top_free[p] = new
        elif counts[self.top_free[p]] == 0:
            self.top_free[p] = self._scan_top(p, self.top_free[p])

    def _scan_top(self, p: int, start: int) -> int:
        counts = self.count_by_free[p]
        for free in range(start, -1, -1):
            if counts[free]:
                return free
        return 0

    def _bucket_first(self, p: int, free: int, need: Need) -> int | None:
        """The lowest-index node of a bucket that also meets the need: the head when it does (the
        usual case), else a scan of the bucket."""
        head = self._bucket_head(p, free)
        if self._replicas_on(head, 1, 1, need, self.resource_free[head]):
            return head
        # Each bucket keeps an upper bound of what its nodes have free of every listed resource
        # (exact after a scan, raised as nodes enter or resources are given back): a bucket whose
        # bound is short of the need is skipped without a scan.
        bound = self.bucket_max[p][free]
        if bound is not None and any(bound.get(r, 0) < a for r, a in need.requests):
            return None
        own, pools, replicas_on, resource_free = self.free, self.pool_of, self._replicas_on, self.resource_free
        first: int | None = None
        exact: dict[str, int] = {}
        for i in self.buckets[p][free]:
            if own[i] != free or pools[i] != p:
                continue  # stale
            if (first is None or i < first) and replicas_on(i, 1, 1, need, resource_free[i]):
                first = i
            self._raise_bound(exact, i)
        self.bucket_max[p][free] = exact
        return first

    def _raise_bound(self, bound: dict[str, int], index: int) -> None:
        """Raise a bucket's bound to cover a node's free resources (one it lacks: unlimited if basic)."""
        free = self.resource_free[index]
        for resource in self.layout.listed_resources:
            have = free.get(resource)
            if have is None:
                have = UNLIMITED if resource in BASIC_RESOURCES else 0
            if have > bound.get(resource, -1):
                bound[resource] = have

    def _bucket_head(self, p: int, free: int) -> int:
        heap = self.buckets[p][free]
        while self.free[heap[0]] != free or self.pool_of[heap[0]] != p:
            heapq.heappop(heap)
        return heap[0]
