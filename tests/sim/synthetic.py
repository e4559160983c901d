"""Small synthetic traces for the replay tests: written to a temporary directory, seeded."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

# Two products: a cheap one and one dearer than training pays, so where work lands matters.
CLUSTER_ROWS = [
    {"name": "cheap", "gpus": 4, "product": "T4", "memory_mib": 16384, "count": 3},
    {"name": "dear", "gpus": 4, "product": "V100M32", "memory_mib": 32768, "count": 3},
]
POLICY = {
    "apiVersion": "gpuadmit.io/v1alpha1",
    "kind": "MarginPolicy",
    "metadata": {"name": "default"},
    "spec": {
        "gpuCostPerHour": {"T4": 0.35, "V100M32": 2.48, "default": 1.20},
        "pricePerGPUHour": {"inference": 6.0, "training": 2.0},
        "preemption": {"enabled": True, "minRuntimeSeconds": 600, "minMarginGainPerGPUHour": 0.5},
        "defaultMaxQueueSeconds": 4 * 3600,
    },
}
HEADER = ["name", "submit_time", "duration_s", "gpus", "replicas", "class", "products", "tier", "namespace"]


def synthetic_rows(seed: int = 7, hours: float = 36.0, arrivals_per_hour: float = 6.0) -> list[dict]:
    """Poisson arrivals; 40% inference (short, 1-2 GPUs), 60% training (longer, 1-4 GPUs)."""
    rng = random.Random(seed)
    rows, now, index = [], 0.0, 0
    while True:
        now += rng.expovariate(arrivals_per_hour / 3600.0)
        if now > hours * 3600:
            return rows
        inference = rng.random() < 0.4
        rows.append(
            {
                "name": f"{'serve' if inference else 'train'}-{index}",
                "submit_time": round(now, 1),
                "duration_s": round(rng.uniform(600, 3600) if inference else rng.uniform(1800, 4 * 3600), 1),
                "gpus": rng.choice([1, 1, 2]) if inference else rng.choice([1, 2, 2, 4]),
                "replicas": 1,
                "class": "inference" if inference else "training",
                "products": "",
                "tier": "",
                "namespace": "team-a" if index % 2 else "team-b",
            }
        )
        index += 1


def write_csv(path: Path, rows: list[dict], header: list[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_synthetic(directory: Path, seed: int = 7, **kwargs) -> tuple[Path, Path, Path]:
    """(workloads.csv, cluster.csv, policy.yaml) in ``directory``."""
    workloads = write_csv(directory / "workloads.csv", synthetic_rows(seed, **kwargs), HEADER)
    cluster = write_csv(directory / "cluster.csv", CLUSTER_ROWS, ["name", "gpus", "product", "memory_mib", "count"])
    policy = directory / "policy.yaml"
    policy.write_text(json.dumps(POLICY))  # JSON is YAML
    return workloads, cluster, policy
