"""Snapshots for property tests: hypothesis strategies, and a seeded generator for plain loops.

Reusable by anyone who needs model objects without parsing Kubernetes ones:
``snapshots()`` draws a whole cycle's input; ``make_*`` build model objects for unit
tests. (The seeded random clusters of greedy against the exact solver are
``benchmarks.exact.seeded_cluster``.)
"""

from __future__ import annotations

from hypothesis import strategies as st

from gpuadmit.core.model import (
    GpuNode,
    InvalidWorkload,
    PlacementEntry,
    Policy,
    PreemptionRules,
    Snapshot,
    Taint,
    Toleration,
    Workload,
)

PRODUCTS = ("NVIDIA-H100", "NVIDIA-A100", "NVIDIA-L4", "NVIDIA-T4")
MEMORY_BY_PRODUCT = {"NVIDIA-H100": 81920, "NVIDIA-A100": 40960, "NVIDIA-L4": 23034, "NVIDIA-T4": 15360}
COST_BY_PRODUCT = {"NVIDIA-H100": 2.4, "NVIDIA-A100": 1.6, "NVIDIA-L4": 0.7, "NVIDIA-T4": 0.35}
NOW = 1_800_000_000.0

TAINTS = (
    Taint("dedicated", "inference", "NoSchedule"),
    Taint("maintenance", None, "NoExecute"),
    Taint("spot", "true", "PreferNoSchedule"),
)
TOLERATIONS = (
    Toleration("dedicated", "Equal", "inference", "NoSchedule"),
    Toleration("maintenance", "Exists"),
    Toleration(None, "Exists"),
)


def policy_strategy(*, preemption: bool | None = None, reserve: bool | None = None, aging: bool | None = None) -> st.SearchStrategy[Policy]:
    """A policy with random prices; each feature on, off, or drawn (None)."""

    def maybe(flag: bool | None, value: st.SearchStrategy, off: object) -> st.SearchStrategy:
        if flag is None:
            return st.one_of(st.just(off), value)
        return value if flag else st.just(off)

    return st.builds(
        Policy,
        gpu_cost_per_hour=st.fixed_dictionaries(
            {product: st.sampled_from([0.3, 0.7, 1.2, 1.6, 2.4]) for product in PRODUCTS}
            | {"default": st.just(1.0)}
        ),
        price_per_gpu_hour=st.fixed_dictionaries(
            {"inference": st.sampled_from([2.0, 3.0, 4.5, 6.0]), "training": st.sampled_from([1.0, 2.0, 2.5, 3.0])}
        ),
        tier_multipliers=st.just({"gold": 1.5, "bronze": 0.8}),
        min_margin_per_gpu_hour=st.sampled_from([-10.0, 0.0, 0.5]),
        inference_reserve_fraction=maybe(reserve, st.sampled_from([0.1, 0.25, 0.5]), 0.0),
        preemption=maybe(
            preemption,
            st.builds(PreemptionRules, enabled=st.just(True), min_runtime_seconds=st.sampled_from([0.0, 600.0]), min_margin_gain_per_gpu_hour=st.sampled_from([0.0, 0.5])),
            PreemptionRules(enabled=False),
        ),
        aging_per_hour=maybe(aging, st.sampled_from([0.1, 1.0]), 0.0),
        max_queued_per_namespace=st.one_of(st.none(), st.integers(0, 4)),
    )


@st.composite
def nodes_strategy(draw, max_nodes: int = 8, *, usable: bool = False) -> tuple[GpuNode, ...]:
    """Up to ``max_nodes`` nodes; ``usable``: at least one, each schedulable, untainted, with GPUs
    none of which other pods use (so contention comes from the workloads drawn)."""
    count = draw(st.integers(1 if usable else 0, max_nodes))
    nodes = []
    for i in range(count):
        product = draw(st.sampled_from(PRODUCTS if usable else PRODUCTS + ("",)))
        allocatable = draw(st.sampled_from([2, 4, 8] if usable else [0, 1, 2, 4, 8]))
        nodes.append(
            GpuNode(
                name=f"node-{i:02d}",
                allocatable=allocatable,
                product=product,
                memory_mib=MEMORY_BY_PRODUCT.get(product, 0),
                schedulable=usable or draw(st.sampled_from([True, True, True, False])),
                taints=() if usable else tuple(draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique=True))),
                gpus_used_by_pods=0 if usable else draw(st.integers(0, allocatable)),
                unschedulable_reason="cordoned",
            )
        )
    return tuple(nodes)


@st.composite
def workload_strategy(draw, index: int, *, single_replica: bool = False) -> Workload:
    products = draw(st.lists(st.sampled_from(PRODUCTS + ("NVIDIA-B200",)), max_size=2, unique=True))
    created = NOW - draw(st.sampled_from([0.0, 60.0, 3600.0, 86400.0, 200000.0]))
    return Workload(
        namespace=draw(st.sampled_from(["team-a", "team-b", "team-c"])),
        name=f"w-{index:03d}",
        gpus_per_replica=draw(st.sampled_from([1, 1, 2, 4, 8])),
        replicas=1 if single_replica else draw(st.sampled_from([1, 1, 1, 2, 3])),
        workload_class=draw(st.sampled_from(["inference", "training"])),
        gpu_products=tuple(products),
        min_gpu_memory_mib=draw(st.sampled_from([0, 0, 20000, 40000])),
        preemptible=draw(st.booleans()),
        max_queue_seconds=draw(st.sampled_from([None, 86400.0, 100000.0])),
        tier=draw(st.sampled_from([None, "gold", "bronze"])),
        tolerations=tuple(draw(st.lists(st.sampled_from(TOLERATIONS), max_size=2, unique=True))),
        created_at=created,
        queued_since=created,
    )


@st.composite
def snapshots(
    draw,
    *,
    max_nodes: int = 8,
    max_pending: int = 10,
    max_holding: int = 4,
    single_replica: bool = False,
    preemption: bool | None = None,
    reserve: bool | None = None,
    aging: bool | None = None,
    crowded: bool = False,
    usable_nodes: bool = False,
) -> Snapshot:
    """A whole cycle's input. Holding workloads are placed within the nodes' free GPUs,
    so the drawn cluster is never overcommitted before the engine runs.

    ``crowded``: usable nodes whose every GPU is held by running workloads (mostly preemptible),
    so whatever is admitted must preempt: the case preemption properties need. ``usable_nodes``:
    every node schedulable, untainted and free of other pods (capacity the reserve can bound)."""
    nodes = draw(nodes_strategy(max_nodes, usable=crowded or usable_nodes))
    free = {node.name: node.allocatable - node.gpus_used_by_pods for node in nodes}
    # Crowded: one holding workload per node first, taking all of it; then any others drawn.
    places = list(nodes) if crowded else []
    places += [draw(st.sampled_from(nodes)) for _ in range(draw(st.integers(0, max_holding)) if nodes else 0)]
    holding = []
    for i, node in enumerate(places):
        if free[node.name] < 1:
            continue
        gpus = free[node.name] if crowded else draw(st.integers(1, free[node.name]))
        free[node.name] -= gpus
        holding.append(
            Workload(
                namespace=draw(st.sampled_from(["team-a", "team-b", "team-x"])),
                name=f"held-{i:02d}",
                gpus_per_replica=gpus,
                replicas=1,
                workload_class=draw(st.sampled_from(["inference", "training"])),
                preemptible=draw(st.sampled_from([True, True, True, False]) if crowded else st.booleans()),
                tier=draw(st.sampled_from([None, "bronze"])),
                phase="Running",
                placement=(PlacementEntry(node=node.name, gpus=gpus),),
                admitted_at=NOW - draw(st.sampled_from([10.0, 7200.0])),
                created_at=NOW - 10000.0,
                queued_since=NOW - 10000.0,
            )
        )
    pending = [draw(workload_strategy(i, single_replica=single_replica)) for i in range(draw(st.integers(0, max_pending)))]
    invalid = [
        InvalidWorkload("team-z", f"bad-{i}", "spec.gpus", "spec.gpus must be between 1 and 64")
        for i in range(draw(st.integers(0, 2)))
    ]
    return Snapshot(
        nodes=nodes,
        holding=tuple(holding),
        pending=tuple(pending),
        policy=draw(policy_strategy(preemption=preemption, reserve=reserve, aging=aging)),
        now=NOW,
        invalid=tuple(invalid),
    )


# --- plain factories for unit tests ------------------------------------------------


def make_node(name: str, gpus: int = 8, product: str = "NVIDIA-A100", **fields) -> GpuNode:
    fields.setdefault("memory_mib", MEMORY_BY_PRODUCT.get(product, 0))
    return GpuNode(name=name, allocatable=gpus, product=product, **fields)


def make_workload(name: str, gpus: int = 1, replicas: int = 1, workload_class: str = "inference", namespace: str = "team-a", **fields) -> Workload:
    fields.setdefault("created_at", NOW - 60.0)
    fields.setdefault("queued_since", fields["created_at"])
    return Workload(namespace=namespace, name=name, gpus_per_replica=gpus, replicas=replicas, workload_class=workload_class, **fields)


def make_holding(name: str, placement: dict[str, int], workload_class: str = "training", *, ran_seconds: float = 7200.0, **fields) -> Workload:
    entries = tuple(PlacementEntry(node=node, gpus=gpus) for node, gpus in placement.items())
    gpus = sum(placement.values())
    fields.setdefault("namespace", "team-b")
    return Workload(
        name=name,
        gpus_per_replica=gpus,
        replicas=1,
        workload_class=workload_class,
        phase="Running",
        placement=entries,
        admitted_at=NOW - ran_seconds,
        **fields,
    )


def make_policy(**fields) -> Policy:
    fields.setdefault("gpu_cost_per_hour", {"NVIDIA-H100": 2.4, "NVIDIA-A100": 1.6, "NVIDIA-L4": 0.7, "default": 1.0})
    fields.setdefault("price_per_gpu_hour", {"inference": 6.0, "training": 2.0})
    fields.setdefault("preemption", PreemptionRules(enabled=False))
    return Policy(**fields)


def make_snapshot(nodes=(), pending=(), holding=(), policy: Policy | None = None, **fields) -> Snapshot:
    return Snapshot(nodes=tuple(nodes), holding=tuple(holding), pending=tuple(pending), policy=policy or make_policy(), now=NOW, **fields)
