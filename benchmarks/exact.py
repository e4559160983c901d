"""`make bench` part: how close the greedy engine comes to the margin-optimal admission set.

On N seeded random clusters (2..15 nodes of four products, 5..50 pending single-replica workloads,
more GPUs asked than free, random prices; no preemption, reserve or aging, which the exact solver
does not model), ``decide`` and ``solve_exact`` (a MILP, scipy's HiGHS) each admit a set; the
figure is greedy's margin per hour over the optimum's, worst and mean. ``tests/core/test_exact.py``
asserts bounds on the same clusters (``seeded_cluster``), so the test and this figure cannot drift.

    python -m benchmarks.exact                  # what make bench runs: 200 clusters (~40 s of CPU)
    python -m benchmarks.exact --clusters 25    # the first 25 (the test's quick set)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterable

from gpuadmit.core.engine import decide
from gpuadmit.core.exact import solve_exact
from gpuadmit.core.model import Action, CycleResult, GpuNode, Policy, PreemptionRules, Snapshot, Workload

CLUSTERS = 200
NOW = 1_800_000_000.0
MEMORY_BY_PRODUCT = {"NVIDIA-H100": 81920, "NVIDIA-A100": 40960, "NVIDIA-L4": 23034, "NVIDIA-T4": 15360}
PRODUCTS = tuple(MEMORY_BY_PRODUCT)


def random_snapshot(rng: random.Random, *, nodes: int = 10, pending: int = 30, single_replica: bool = True, products: tuple[str, ...] = PRODUCTS) -> Snapshot:
    """A seeded random cluster for quality comparisons: no preemption, reserve or aging,
    no floor; contention on purpose (more GPUs asked than free)."""
    node_list = []
    for i in range(nodes):
        product = rng.choice(products)
        allocatable = rng.choice([1, 2, 4, 8, 8])
        node_list.append(
            GpuNode(
                name=f"node-{i:03d}",
                allocatable=allocatable,
                product=product,
                memory_mib=MEMORY_BY_PRODUCT[product],
                gpus_used_by_pods=rng.choice([0, 0, 0, rng.randint(0, allocatable)]),
            )
        )
    policy = Policy(
        gpu_cost_per_hour={product: round(rng.uniform(0.2, 2.5), 2) for product in products} | {"default": 1.0},
        price_per_gpu_hour={"inference": round(rng.uniform(2.0, 6.0), 2), "training": round(rng.uniform(1.0, 3.5), 2)},
        tier_multipliers={"gold": 1.5, "silver": 1.2, "bronze": 0.8},
        min_margin_per_gpu_hour=0.0,
        preemption=PreemptionRules(enabled=False),
    )
    workloads = []
    for i in range(pending):
        allowed = tuple(sorted(rng.sample(products, rng.randint(1, 2)))) if rng.random() < 0.4 else ()
        workloads.append(
            Workload(
                namespace=rng.choice(["team-a", "team-b", "team-c"]),
                name=f"w-{i:03d}",
                gpus_per_replica=rng.choice([1, 1, 2, 2, 3, 4, 6, 8]),
                replicas=1 if single_replica else rng.choice([1, 1, 2, 4]),
                workload_class=rng.choice(["inference", "training"]),
                gpu_products=allowed,
                tier=rng.choice([None, None, "gold", "silver", "bronze"]),
                created_at=NOW - rng.randint(0, 10000),
                queued_since=NOW - rng.randint(0, 10000),
            )
        )
    return Snapshot(nodes=tuple(node_list), holding=(), pending=tuple(workloads), policy=policy, now=NOW)


def seeded_cluster(seed: int) -> Snapshot:
    """Cluster number ``seed`` of the comparison: its size is drawn from the seed too."""
    rng = random.Random(seed)
    return random_snapshot(rng, nodes=rng.randint(2, 15), pending=rng.randint(5, 50))


def margin_per_hour(result: CycleResult) -> float:
    """What the admitted set earns per hour: margin per GPU-hour times the GPUs placed."""
    return sum(d.margin_per_gpu_hour * sum(e.gpus for e in d.placement) for d in result.decisions if d.action == Action.ADMIT)


def greedy_over_optimum(seeds: Iterable[int]) -> list[float]:
    """Greedy's margin per hour over the exact optimum's, per cluster (1.0 when neither earns).

    Raises ``AssertionError`` if the exact solver ever earns less than greedy: it would not be an optimum.
    """
    ratios = []
    for seed in seeds:
        snapshot = seeded_cluster(seed)
        greedy, optimum = margin_per_hour(decide(snapshot)), margin_per_hour(solve_exact(snapshot))
        if optimum < greedy - 1e-6:
            raise AssertionError(f"cluster {seed}: the exact solver earns {optimum:.4f}/h, less than greedy's {greedy:.4f}/h")
        ratios.append(greedy / optimum if optimum > 1e-9 else 1.0)
    return ratios


def main(argv: list[str] | None = None) -> int:
    """Print the worst and mean ratio (``make bench`` calls ``main()`` with no arguments)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exact", description=__doc__.split("\n")[0])
    parser.add_argument("--clusters", type=int, default=CLUSTERS, help=f"how many seeded clusters, seeds 0..N-1 (default {CLUSTERS})")
    args = parser.parse_args(argv if argv is not None else [])
    started = time.process_time()
    ratios = greedy_over_optimum(range(args.clusters))
    cpu = time.process_time() - started
    worst = min(range(len(ratios)), key=ratios.__getitem__)
    optimal = sum(1 for ratio in ratios if ratio >= 1 - 1e-9)
    print(f"{len(ratios)} seeded random clusters (seeds 0..{len(ratios) - 1}), greedy decide() against the exact MILP optimum")
    print(f"greedy margin per hour / optimum: worst {ratios[worst]:.1%} (seed {worst}), mean {sum(ratios) / len(ratios):.1%}")
    print(f"greedy found the optimum on {optimal} of {len(ratios)}; {cpu:.1f} s of CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
