"""Engine benchmark: one ``decide`` cycle on 10,000 nodes and 10k..100k pending workloads.

Seeded, so every run measures the same cluster. The cluster is mixed the way a
real one is: H100/A100/L4/T4 nodes with 8/4/2/1 GPUs, some tainted, some
cordoned, a third of the GPUs already in use by running workloads (some of
them preemptible), and pending workloads of both classes and several tiers,
sizes, gangs and product constraints. Far more is asked than is free, which
is the expensive case (most workloads are tried and queued).

Printed per size: one cycle's seconds (wall, and CPU: on a shared machine the
CPU figure is the one that does not depend on the neighbours), decisions per
second, and peak memory (tracemalloc, measured in a second run so it does not
slow the timed one).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
import tracemalloc
from collections import Counter

from gpuadmit.core.engine import LayoutMemo, decide
from gpuadmit.core.model import GpuNode, PlacementEntry, Policy, PreemptionRules, Snapshot, Taint, Toleration, Workload

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


def measure(pending_count: int, layouts: LayoutMemo | None = None) -> dict[str, float]:
    snapshot = build_snapshot(pending_count)
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
        "cpu_seconds": cpu_seconds,
        "per_second": len(result.decisions) / seconds,
        "peak_mib": peak / 2**20,
        "admitted": actions["admit"],
        "queued": actions["queue"],
        "rejected": actions["reject"],
        "preempted": len(result.preemptions),
    }


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n")[0]).parse_args(argv if argv is not None else [])  # --help; no sizes to choose
    print(f"{NODES:,} nodes ({', '.join(sorted({k[0] for k in NODE_KINDS}))}), seeded; decide() on one cycle")
    header = f"{'pending':>9} {'cycle s':>8} {'CPU s':>6} {'decisions/s':>12} {'peak MiB':>9} {'admitted':>9} {'queued':>8} {'rejected':>9} {'preempted':>10}"
    print(header)
    print("-" * len(header))
    layouts = LayoutMemo()  # the nodes are the same at every size: kept, as the operator keeps them between cycles
    for size in PENDING_SIZES:
        row = measure(size, layouts)
        print(
            f"{row['pending']:>9,} {row['seconds']:>8.2f} {row['cpu_seconds']:>6.2f} {row['per_second']:>12,.0f} {row['peak_mib']:>9.1f} "
            f"{row['admitted']:>9,} {row['queued']:>8,} {row['rejected']:>9,} {row['preempted']:>10,}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
