"""Engine benchmark: one ``decide`` cycle on 10,000 nodes and 10k..100k pending workloads.

Seeded, so every run measures the same cluster. The cluster is mixed the way a
real one is: H100/A100/L4/T4 nodes with 8/4/2/1 GPUs, some tainted, some
cordoned, a third of the GPUs already in use by running workloads (some of
them preemptible), and pending workloads of both classes and several tiers,
sizes, gangs and product constraints. Far more is asked than is free, which
is the expensive case (most workloads are tried and queued).

Two variants: GPUs only, and every resource (``--resources``): CPU, memory and pods listed on
every node, CPU and memory requested by every workload, and about 30,000 other pods (not
gpuadmit's) on the nodes, whose requests count against them -- issue 11's scale case. By
default both are printed, each size GPUs-only first.

Printed per size: the seconds to parse the cycle's input (``json.loads`` of the snapshot the
cycle decides, written as JSON: its nodes, running and pending workloads -- a lower bound on
what the operator parses, whose API objects say more), one cycle's seconds (wall, and CPU: on a shared machine the
CPU figure is the one that does not depend on the neighbours), decisions per
second, and peak memory (tracemalloc, measured in a second run so it does not
slow the timed one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
import tracemalloc
from collections import Counter

from gpuadmit.core.engine import Changes, IncrementalEngine, LayoutMemo, decide
from gpuadmit.core.model import (
    Action,
    CycleResult,
    GpuNode,
    PlacementEntry,
    Policy,
    PreemptionRules,
    Snapshot,
    Taint,
    Toleration,
    Workload,
)

SEED = 20240601
NODES = 10_000
PENDING_SIZES = (10_000, 25_000, 50_000, 100_000)
NOW = 1_800_000_000.0

# (product, GPUs per node, GPU memory MiB, share of nodes)
NODE_KINDS = (
    ("NVIDIA-H100-80GB-HBM3", 8, 81559, 0.15),
    ("NVIDIA-A100-SXM4-40GB", 8, 40960, 0.15),
    ("NVIDIA-A100-PCIE-40GB", 4, 40960, 0.15),
    ("NVIDIA-L4", 2, 23034, 0.25),
    ("NVIDIA-L4", 4, 23034, 0.10),
    ("NVIDIA-T4", 1, 15360, 0.20),
)
PRODUCTS = sorted({kind[0] for kind in NODE_KINDS})
DEDICATED = Taint("dedicated", "inference", "NoSchedule")
MAINTENANCE = Taint("maintenance", None, "NoExecute")

POLICY = Policy(
    gpu_cost_per_hour={
        "NVIDIA-H100-80GB-HBM3": 2.40,
        "NVIDIA-A100-SXM4-40GB": 1.60,
        "NVIDIA-A100-PCIE-40GB": 1.40,
        "NVIDIA-L4": 0.70,
        "NVIDIA-T4": 0.35,
        "default": 1.20,
    },
    price_per_gpu_hour={"inference": 6.00, "training": 2.00},
    tier_multipliers={"gold": 1.5, "silver": 1.2, "bronze": 0.8},
    min_margin_per_gpu_hour=0.0,
    inference_reserve_fraction=0.1,
    preemption=PreemptionRules(enabled=True, min_runtime_seconds=600, min_margin_gain_per_gpu_hour=0.5),
    aging_per_hour=0.05,
    default_max_queue_seconds=86400.0,
)


def build_nodes(rng: random.Random) -> tuple[GpuNode, ...]:
    kinds = [kind[:3] for kind in NODE_KINDS]
    weights = [kind[3] for kind in NODE_KINDS]
    nodes = []
    for i in range(NODES):
        product, gpus, memory = rng.choices(kinds, weights)[0]
        roll = rng.random()
        taints = (DEDICATED,) if roll < 0.05 else (MAINTENANCE,) if roll < 0.07 else ()
        cordoned = rng.random() < 0.02
        nodes.append(
            GpuNode(
                name=f"gpu-node-{i:05d}",
                allocatable=gpus,
                product=product,
                memory_mib=memory,
                schedulable=not cordoned,
                taints=taints,
                gpus_used_by_pods=0,
                unschedulable_reason="cordoned" if cordoned else "",
            )
        )
    return tuple(nodes)


def build_holding(rng: random.Random, nodes: tuple[GpuNode, ...]) -> tuple[Workload, ...]:
    """Running workloads on about a third of the nodes, their pods already there."""
    holding = []
    for node in nodes:
        if not node.schedulable or node.taints or rng.random() > 0.33:
            continue
        gpus = rng.randint(1, node.allocatable)
        workload_class = "inference" if rng.random() < 0.4 else "training"
        holding.append(
            Workload(
                namespace=f"team-{rng.randint(0, 49):02d}",
                name=f"running-{len(holding):05d}",
                gpus_per_replica=gpus,
                replicas=1,
                workload_class=workload_class,
                preemptible=workload_class == "training",
                tier=rng.choice([None, "bronze", "silver"]),
                phase="Running",
                placement=(PlacementEntry(node=node.name, gpus=gpus),),
                admitted_at=NOW - rng.randint(60, 86400),
                created_at=NOW - 90000,
                queued_since=NOW - 90000,
            )
        )
    return tuple(holding)


def build_pending(rng: random.Random, count: int) -> tuple[Workload, ...]:
    pending = []
    for i in range(count):
        workload_class = "inference" if rng.random() < 0.35 else "training"
        gang = rng.random() < 0.05
        products = tuple(rng.sample(PRODUCTS, rng.randint(1, 2))) if rng.random() < 0.3 else ()
        created = NOW - rng.randint(0, 80000)
        pending.append(
            Workload(
                namespace=f"team-{rng.randint(0, 49):02d}",
                name=f"job-{i:06d}",
                gpus_per_replica=rng.choice([1, 1, 1, 2, 2, 4, 8]) if not gang else rng.choice([4, 8]),
                replicas=rng.randint(2, 8) if gang else 1,
                workload_class=workload_class,
                gpu_products=products,
                min_gpu_memory_mib=rng.choice([0, 0, 0, 20000, 40000]),
                preemptible=workload_class == "training",
                max_queue_seconds=86400.0,
                tier=rng.choice([None, None, "gold", "silver", "bronze"]),
                tolerations=(Toleration("dedicated", "Equal", "inference", "NoSchedule"),) if workload_class == "inference" and rng.random() < 0.3 else (),
                created_at=created,
                queued_since=created,
            )
        )
    return tuple(pending)


# Per GPUs on a node: CPUs (millicores) and memory (bytes) it lists, kind of the usual cloud shapes.
CPU_PER_GPU = 24_000
MEMORY_PER_GPU = 240 * 2**30
OTHER_PODS = 30_000


def with_resources(snapshot: Snapshot, seed: int = SEED) -> Snapshot:
    """The snapshot with every resource: nodes list CPU, memory and pods; every workload requests
    CPU and memory (4-22 CPUs and 32-200 GiB per GPU, of the nodes' 24 and 240: on part of the
    cluster CPU or memory binds before GPUs); about ``OTHER_PODS`` other pods, 0.5-4 CPUs and
    1-16 GiB each, are spread over the nodes."""
    rng = random.Random(seed + 2)
    used: dict[str, list[int]] = {}
    names = [n.name for n in snapshot.nodes]
    for _ in range(OTHER_PODS):
        node = rng.choice(names)
        held = used.setdefault(node, [0, 0, 0])
        held[0] += rng.choice((500, 1000, 2000, 4000))
        held[1] += rng.choice((1, 2, 4, 8, 16)) * 2**30
        held[2] += 1

    def asks(gpus: int) -> tuple[tuple[str, int], ...]:
        cpu = gpus * rng.choice((4_000, 8_000, 12_000, 16_000, 22_000))
        return (("cpu", cpu), ("memory", gpus * rng.choice((32, 64, 128, 200)) * 2**30), ("pods", 1))

    nodes = tuple(
        dataclasses.replace(
            n,
            resources=(("cpu", n.allocatable * CPU_PER_GPU), ("memory", n.allocatable * MEMORY_PER_GPU), ("pods", 110)),
            resources_used_by_pods=tuple(zip(("cpu", "memory", "pods"), used.get(n.name, (0, 0, 0)), strict=True)),
        )
        for n in snapshot.nodes
    )
    holding = []
    for w in snapshot.holding:
        requests = asks(w.gpus_per_replica)
        placement = tuple(dataclasses.replace(e, resources=tuple((r, a * e.replicas) for r, a in requests)) for e in w.placement)
        holding.append(dataclasses.replace(w, requests=requests, placement=placement))
    pending = tuple(dataclasses.replace(w, requests=asks(w.gpus_per_replica)) for w in snapshot.pending)
    # The holding workloads' pods are on their nodes too (own pods): their requests count there once.
    own = {(w.key, e.node): e.resources for w in holding for e in w.placement}
    on_node: dict[str, dict[str, int]] = {}
    for (_, node), resources in own.items():
        for resource, amount in resources:
            on_node.setdefault(node, {})[resource] = on_node.setdefault(node, {}).get(resource, 0) + amount
    nodes = tuple(
        dataclasses.replace(n, resources_used_by_pods=tuple(
            (r, a + on_node.get(n.name, {}).get(r, 0)) for r, a in n.resources_used_by_pods))
        for n in nodes
    )
    return dataclasses.replace(snapshot, nodes=nodes, holding=tuple(holding), pending=pending, resources_of_own_pods=own)


def build_snapshot(pending_count: int, seed: int = SEED) -> Snapshot:
    rng = random.Random(seed)
    nodes = build_nodes(rng)
    holding = build_holding(rng, nodes)
    pending = build_pending(random.Random(seed + 1), pending_count)
    own_pods = {(w.key, e.node): e.gpus for w in holding for e in w.placement}
    used = Counter()
    for (_, node), gpus in own_pods.items():
        used[node] += gpus
    nodes = tuple(dataclasses.replace(n, gpus_used_by_pods=used[n.name]) for n in nodes)
    return Snapshot(nodes=nodes, holding=holding, pending=pending, policy=POLICY, now=NOW, gpus_of_own_pods=own_pods)


def time_to_parse(snapshot: Snapshot) -> float:
    """Seconds ``json.loads`` takes on the cycle's input (the snapshot as JSON): the yardstick of
    issue 11's "one-cycle time within 5x the time to parse its input"."""
    def plain(value: object) -> object:  # JSON has no tuple keys nor sets: pairs and lists instead
        if isinstance(value, dict):
            return [[plain(k), plain(v)] for k, v in value.items()] if any(isinstance(k, tuple) for k in value) else {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [plain(v) for v in value]
        return value

    text = json.dumps(plain(dataclasses.asdict(snapshot)), default=str, separators=(",", ":"))
    started = time.perf_counter()
    json.loads(text)
    return time.perf_counter() - started


def measure(pending_count: int, layouts: LayoutMemo | None = None, resources: bool = False) -> dict[str, float]:
    snapshot = build_snapshot(pending_count)
    if resources:
        snapshot = with_resources(snapshot)
    parse_seconds = time_to_parse(snapshot)
    started, started_cpu = time.perf_counter(), time.process_time()
    result = decide(snapshot, layouts=layouts)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    tracemalloc.start()
    decide(snapshot, layouts=layouts)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    actions = Counter(d.action.value for d in result.decisions)
    return {
        "pending": pending_count,
        "seconds": seconds,
        "parse_seconds": parse_seconds,
        "cpu_seconds": cpu_seconds,
        "per_second": len(result.decisions) / seconds,
        "peak_mib": peak / 2**20,
        "admitted": actions["admit"],
        "queued": actions["queue"],
        "rejected": actions["reject"],
        "preempted": len(result.preemptions),
    }


class SteadyCluster:
    """The benchmark's cluster after its first cycle, changed one event at a time as the operator's
    cache would be: admissions run (their pods on the nodes), rejections leave, a finished
    workload's pods and reservation go. Each ``snapshot()`` is a new value (nothing the engine
    saw is changed in place)."""

    def __init__(self, snapshot: Snapshot, seed: int = SEED) -> None:
        self.rng = random.Random(seed + 3)
        self.base = snapshot
        self.now = snapshot.now
        self.nodes = {n.name: n for n in snapshot.nodes}
        self.pending = {w.key: w for w in snapshot.pending}
        self.holding = {w.key: w for w in snapshot.holding}
        self.own_pods = dict(snapshot.gpus_of_own_pods)
        self.serial = 0
        self.changes = Changes({}, {}, set(), set())  # since the last snapshot, as an operator's watch would tell
        self._nodes: tuple[GpuNode, ...] | None = None
        self._pending: tuple[Workload, ...] | None = None
        self._holding: tuple[Workload, ...] | None = None

    def snapshot(self) -> Snapshot:
        self.changes = Changes({}, {}, set(), set())
        self._nodes = self._nodes or tuple(self.nodes.values())
        self._pending = self._pending or tuple(self.pending.values())
        self._holding = self._holding or tuple(self.holding.values())
        return dataclasses.replace(self.base, nodes=self._nodes, pending=self._pending, holding=self._holding,
                                   gpus_of_own_pods=dict(self.own_pods), now=self.now)

    def apply(self, result: CycleResult) -> None:
        for preemption in result.preemptions:
            self.finish(preemption.key)
        for decision in result.decisions:
            workload = self.pending.get(decision.key)
            if workload is None or decision.action is Action.QUEUE:
                continue
            del self.pending[decision.key]
            self.changes.pending[decision.key] = None  # type: ignore[index]
            self._pending = None
            if decision.action is Action.ADMIT:
                running = dataclasses.replace(workload, phase="Running", placement=decision.placement, admitted_at=self.now)
                self.holding[running.key] = running
                self.changes.holding[running.key] = running  # type: ignore[index]
                self._holding = None
                for entry in decision.placement:
                    self.use(entry.node, entry.gpus)
                    self.own_pods[(running.key, entry.node)] = entry.gpus
                    self.changes.own_pods.add((running.key, entry.node))  # type: ignore[union-attr]

    def use(self, name: str, gpus: int) -> None:
        self.nodes[name] = dataclasses.replace(self.nodes[name], gpus_used_by_pods=self.nodes[name].gpus_used_by_pods + gpus)
        self.changes.nodes.add(name)  # type: ignore[union-attr]
        self._nodes = None

    def finish(self, key: str | None = None) -> None:
        """A running workload's pods finish and it leaves (one at random by default)."""
        key = key or self.rng.choice(sorted(self.holding))
        workload = self.holding.pop(key)
        self.changes.holding[key] = None  # type: ignore[index]
        self._holding = None
        for entry in workload.placement:
            self.use(entry.node, -self.own_pods.pop((key, entry.node), 0))
            self.changes.own_pods.add((key, entry.node))  # type: ignore[union-attr]

    def arrive(self) -> None:
        self.serial += 1
        workload = build_pending(random.Random(self.rng.random()), 1)[0]
        workload = dataclasses.replace(workload, name=f"new-{self.serial:06d}", created_at=self.now, queued_since=self.now)
        self.pending[workload.key] = workload
        self.changes.pending[workload.key] = workload  # type: ignore[index]
        self._pending = None

    def add_node(self) -> None:
        self.serial += 1
        product, gpus, memory = NODE_KINDS[self.serial % len(NODE_KINDS)][:3]
        name = f"gpu-node-new-{self.serial:05d}"
        self.nodes[name] = GpuNode(name=name, allocatable=gpus, product=product, memory_mib=memory)
        self.changes.nodes.add(name)  # type: ignore[union-attr]
        self._nodes = None


def measure_incremental(pending_count: int, events: int, tell: bool = True) -> None:
    """Single changes at steady state, decided by the incremental engine: CPU per change. ``tell``:
    the cluster tells the engine what changed (``Changes``, as the operator's watch events can);
    else the engine compares the snapshots itself."""
    snapshot = build_snapshot(pending_count)
    cluster = SteadyCluster(snapshot)
    engine = IncrementalEngine()
    started = time.process_time()
    result = engine.decide(snapshot)
    whole_cpu = time.process_time() - started
    cluster.apply(result)
    cluster.apply(engine.decide(cluster.snapshot()))  # the first cycle's admissions seen running
    how = "changes told by the caller" if tell else "snapshots compared by the engine"
    print(f"incremental engine, {pending_count:,} pending: whole first cycle {whole_cpu:.2f} s CPU; "
          f"then {events} single changes of each kind, one cycle each ({how}; CPU ms per cycle)")
    # whole/p50: how many single changes one whole cycle costs (a ratio: steadier than ms on a busy machine)
    header = f"{'change':>14} {'cycles':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'whole/p50':>10} {'whole cycles':>13} {'admitted':>9}"
    print(header)
    print("-" * len(header))
    # A node added joins a pool of alike nodes (the engine moves its state onto the new layout).
    for name, change, count in (("new workload", cluster.arrive, events), ("pod finished", cluster.finish, events),
                                ("node added", cluster.add_node, events)):
        times, whole, admitted = [], 0, 0
        for _ in range(count):
            change()
            cluster.now += 1.0
            changes = cluster.changes
            snapshot = cluster.snapshot()
            started = time.process_time()
            result = engine.decide(snapshot, changes if tell else None)
            times.append(1000 * (time.process_time() - started))
            whole += engine.last_full
            admitted += sum(1 for d in result.decisions if d.action is Action.ADMIT)
            cluster.apply(result)
        times.sort()
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        p50 = times[len(times) // 2]
        print(f"{name:>14} {count:>7} {p50:>8.1f} {p99:>8.1f} {times[-1]:>8.1f} {1000 * whole_cpu / p50:>10.0f} {whole:>13} {admitted:>9}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda text: tuple(int(x) for x in text.split(",")), default=PENDING_SIZES,
                        help="pending workloads per cycle, comma-separated (default: %(default)s)")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--gpus-only", action="store_true", help="only the GPU-only variant")
    variant.add_argument("--resources", action="store_true", help="only the every-resource variant")
    parser.add_argument("--incremental-events", type=int, default=50,
                        help="single changes of each kind for the incremental engine, at the largest size (0: none; default %(default)s)")
    parser.add_argument("--incremental-only", action="store_true", help="only the incremental engine's figures")
    parser.add_argument("--compare-snapshots", action="store_true",
                        help="only with the incremental engine comparing snapshots itself, as the operator's loop has it do "
                             "(default: with the changes told, as the operator's watch can tell them, then compared)")
    args = parser.parse_args(argv if argv is not None else [])
    tells = (False,) if args.compare_snapshots else (True, False)
    if args.incremental_only:
        for number, tell in enumerate(tells):
            print("\n" * (number > 0), end="")
            measure_incremental(max(args.sizes), args.incremental_events, tell)
        return
    variants = [False] if args.gpus_only else [True] if args.resources else [False, True]
    print(f"{NODES:,} nodes ({', '.join(sorted({k[0] for k in NODE_KINDS}))}), seeded; decide() on one cycle")
    print(f"every resource: CPU/memory/pods on nodes, CPU and memory on every workload, {OTHER_PODS:,} other pods")
    header = f"{'variant':>10} {'pending':>9} {'parse s':>8} {'cycle s':>8} {'x parse':>8} {'CPU s':>6} {'decisions/s':>12} {'peak MiB':>9} {'admitted':>9} {'queued':>8} {'rejected':>9} {'preempted':>10}"
    print(header)
    print("-" * len(header))
    layouts = {False: LayoutMemo(), True: LayoutMemo()}  # the nodes are the same at every size: kept, as the operator keeps them
    for size in args.sizes:
        for resources in variants:
            row = measure(size, layouts[resources], resources)
            print(
                f"{'resources' if resources else 'GPUs only':>10} {row['pending']:>9,} {row['parse_seconds']:>8.2f} {row['seconds']:>8.2f} {row['seconds'] / row['parse_seconds']:>8.1f} {row['cpu_seconds']:>6.2f} {row['per_second']:>12,.0f} {row['peak_mib']:>9.1f} "
                f"{row['admitted']:>9,} {row['queued']:>8,} {row['rejected']:>9,} {row['preempted']:>10,}",
                flush=True,
            )
    if args.incremental_events:
        for tell in tells:
            print()
            measure_incremental(max(args.sizes), args.incremental_events, tell)


if __name__ == "__main__":
    main(sys.argv[1:])
