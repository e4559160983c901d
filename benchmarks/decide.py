"""`make bench` part: `gpuadmit decide -o json` on 10,000 nodes and 100,000 pending workloads,
against the time it takes merely to parse the same input file (both as whole processes, in the
same run), once per count of distinct pod templates among the workloads.

The template count matters: checking and classifying a template is memoised on its content
(core/workload.py), so a cluster of copies of a few templates costs less than one where every
workload brings its own. By default the part measures 200 distinct templates (a cluster of a few
hundred deployments and job definitions) and 100,000 (every workload different, the worst case).

    python -m benchmarks.decide                                   # what make bench runs
    python -m benchmarks.decide --distinct-templates 2,200 --workloads 20000 --nodes 2000
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NODES = 10_000
WORKLOADS = 100_000
RUNS = 3
DISTINCT_TEMPLATES = (200, 100_000)
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


def distinct_template(number: int) -> dict[str, Any]:
    """Pod template number ``number``: two in five serve (inference), the rest train; each differs
    from every other in one argument, the way real deployments differ in model or run name."""
    if number % 5 in (1, 3):
        template = copy.deepcopy(TEMPLATES["inference"])
        template["spec"]["containers"][0]["args"] = ["--model", f"org/model-{number:06d}"]
    else:
        template = copy.deepcopy(TEMPLATES["training"])
        template["spec"]["containers"][0]["command"] += ["--run-name", f"run-{number:06d}"]
    return template


def cluster_dump(nodes: int, workloads: int, distinct_templates: int, seed: int = 7) -> dict[str, Any]:
    """A `kind: List` as `kubectl get nodes,namespaces,gpuworkloads,marginpolicies -A -o json` prints it;
    workload i runs template i mod ``distinct_templates``."""
    rng = random.Random(seed)
    templates = [distinct_template(number) for number in range(min(distinct_templates, workloads))]
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
        spec: dict[str, Any] = {
            "gpus": rng.choice([1, 1, 1, 2, 2, 4, 8]),
            "replicas": rng.choice([1, 1, 1, 1, 2, 4]),
            "template": templates[index % len(templates)],
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


def best_of(command: list[str], runs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of ``runs`` runs of ``command``, each a whole process.
    The CPU figure (user + system of the child) barely moves when other work shares the machine."""
    best: tuple[float, float] | None = None
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if best is None or cpu < best[1]:
            best = (wall, cpu)
    assert best is not None
    return best


def counts(text: str) -> tuple[int, ...]:
    """``200,100000`` -> (200, 100000), for --distinct-templates."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every count must be at least 1, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    """Print parse and decide times per template count (``make bench`` calls ``main()`` with no arguments)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decide", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=NODES, help=f"GPU nodes (default {NODES:,})")
    parser.add_argument("--workloads", type=int, default=WORKLOADS, help=f"pending GPUWorkloads (default {WORKLOADS:,})")
    parser.add_argument("--distinct-templates", type=counts, default=DISTINCT_TEMPLATES, metavar="N[,N...]",
                        help=f"distinct pod templates among the workloads, one measurement each (default {','.join(map(str, DISTINCT_TEMPLATES))})")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs of each command; the best counts (default {RUNS})")
    args = parser.parse_args(argv if argv is not None else [])
    print(f"input: {args.nodes:,} nodes, {args.workloads:,} pending GPUWorkloads; whole processes, "
          f"best of {args.runs} by CPU (user + system; wall depends on what else the machine runs)")
    print(f"{'distinct templates':>18} {'JSON MB':>8} {'parse CPU s':>12} {'decide CPU s':>13} {'CPU ratio':>10} "
          f"{'parse wall s':>13} {'decide wall s':>14} {'wall ratio':>11}")
    for distinct in args.distinct_templates:
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "cluster.json"
            dump.write_text(json.dumps(cluster_dump(args.nodes, args.workloads, distinct)))
            size_mb = dump.stat().st_size / 1e6
            parse_wall, parse_cpu = best_of([sys.executable, "-c", f"import json; json.load(open({str(dump)!r}))"], args.runs)
            decide_wall, decide_cpu = best_of([sys.executable, "-m", "gpuadmit", "decide", "-f", str(dump), "-o", "json"], args.runs)
        print(f"{min(distinct, args.workloads):>18,} {size_mb:>8.0f} {parse_cpu:>12.2f} {decide_cpu:>13.2f} {decide_cpu / parse_cpu:>10.2f} "
              f"{parse_wall:>13.2f} {decide_wall:>14.2f} {decide_wall / parse_wall:>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
