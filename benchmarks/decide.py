"""Benchmark: `gpuadmit decide -o json` on 10,000 nodes and 100,000 pending workloads, against the
time it takes merely to parse the same input file (both as whole processes, in the same run).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NODES = 10_000
WORKLOADS = 100_000
RUNS = 3
PRODUCTS = [  # (product label, GPUs per node, memory MiB)
    ("NVIDIA-H100-80GB-HBM3", 8, 81559),
    ("NVIDIA-A100-SXM4-80GB", 8, 81920),
    ("NVIDIA-L4", 4, 23034),
    ("Tesla-T4", 2, 15360),
]
TEMPLATES = {
    "inference": {"spec": {"containers": [{
        "name": "server", "image": "vllm/vllm-openai:v0.6.3", "args": ["--model", "m"],
        "ports": [{"containerPort": 8000}], "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
    }]}},
    "training": {"spec": {"restartPolicy": "OnFailure", "containers": [{
        "name": "trainer", "image": "nvcr.io/nvidia/pytorch:24.05-py3",
        "command": ["torchrun", "--nproc_per_node=8", "train.py", "--epochs", "3"],
    }]}},
}


def cluster_dump(nodes: int, workloads: int, seed: int = 7) -> dict[str, Any]:
    """A `kind: List` as `kubectl get nodes,namespaces,gpuworkloads,marginpolicies -A -o json` prints it."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for index in range(nodes):
        product, gpus, memory = PRODUCTS[index % len(PRODUCTS)]
        items.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"gpu-node-{index:05d}", "labels": {
                "nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory)}},
            "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "96"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    tiers = ["gold", "silver", None]
    for index in range(50):
        tier = tiers[index % 3]
        items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": f"team-{index:02d}", "labels": {"gpuadmit.io/tier": tier} if tier else {}}})
    for index in range(workloads):
        workload_class = "inference" if rng.random() < 0.4 else "training"
        spec: dict[str, Any] = {
            "gpus": rng.choice([1, 1, 1, 2, 2, 4, 8]),
            "replicas": rng.choice([1, 1, 1, 1, 2, 4]),
            "template": TEMPLATES[workload_class],
        }
        if rng.random() < 0.3:
            spec["gpuProducts"] = [rng.choice(PRODUCTS)[0]]
        items.append({
            "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": f"job-{index:06d}", "namespace": f"team-{index % 50:02d}",
                         "uid": f"uid-{index}", "creationTimestamp": "2026-11-26T08:00:00Z"},
            "spec": spec,
        })
    items.append({
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "default"},
        "spec": {"gpuCostPerHour": {"NVIDIA-H100-80GB-HBM3": 2.4, "default": 1.2},
                 "pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "tierMultipliers": {"gold": 1.5}},
    })
    return {"apiVersion": "v1", "kind": "List", "items": items}


def best_of(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    nodes = int(os.environ.get("GPUADMIT_BENCH_NODES", NODES))
    workloads = int(os.environ.get("GPUADMIT_BENCH_WORKLOADS", WORKLOADS))
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "cluster.json"
        dump.write_text(json.dumps(cluster_dump(nodes, workloads)))
        size_mb = dump.stat().st_size / 1e6
        parse = best_of([sys.executable, "-c", f"import json; json.load(open({str(dump)!r}))"], RUNS)
        decide = best_of([sys.executable, "-m", "gpuadmit", "decide", "-f", str(dump), "-o", "json"], RUNS)
    print(f"input: {nodes:,} nodes, {workloads:,} pending GPUWorkloads, {size_mb:.0f} MB of JSON")
    print(f"parse only (python json.load, whole process, best of {RUNS}): {parse:6.2f} s")
    print(f"gpuadmit decide -o json (whole process, best of {RUNS}):     {decide:6.2f} s")
    print(f"ratio decide / parse: {decide / parse:.2f}  (target: at most 5)")


if __name__ == "__main__":
    main()
