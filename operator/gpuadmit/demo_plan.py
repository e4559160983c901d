"""What `gpuadmit demo` submits: the cluster (the Alibaba 2023 GPU trace's nodes, or the sample
cluster shipped as package data), the workloads drawn from its GPU pods, and when each is sent.

Arrivals are not the trace's (7,064 GPU pods over 149 days keep a few dozen GPUs busy): pods
are drawn at random, seeded, at the rate that offers ``--load`` times the cluster's GPU-seconds.
Proxies, as the trace forces them: qos LS -> an inference template (a vLLM server), everything
else -> a training template (torchrun); fractional GPUs -> one GPU. Time is compressed by
``--time-scale``: run times and the policy's own durations are divided by it.
"""

from __future__ import annotations

import argparse
import collections
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gpuadmit.core.model import (
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    TIER_LABEL,
    Resources,
)
from gpuadmit.core.nodes import resource_amount
from gpuadmit.inputs import load_policy_object

# The trace's GPU model codes -> (nvidia.com/gpu.product, nvidia.com/gpu.memory in MiB) as
# NVIDIA's GPU feature discovery labels them. G2 and G3 are undisclosed internal codes.
TRACE_PRODUCTS: Mapping[str, tuple[str, int]] = {
    "V100M32": ("Tesla-V100-SXM2-32GB", 32768),
    "V100M16": ("Tesla-V100-SXM2-16GB", 16384),
    "P100": ("Tesla-P100-PCIE-16GB", 16384),
    "T4": ("Tesla-T4", 15360),
    "A10": ("NVIDIA-A10", 23028),
    "G2": ("Alibaba-G2", 0),
    "G3": ("Alibaba-G3", 0),
}
INFERENCE_NAMESPACES = ("serving", "serving-gold")  # the second is tier gold: a 1.5x price
TRAINING_NAMESPACE = "research"
GOLD_NAMESPACE = "serving-gold"
MIN_RUN_SECONDS = 2.0  # long enough to be seen Running
FORGER_EVERY = 40  # one training workload in this many carries a forged tier label
# The research team buys committed capacity: a GPUQuota guarantees it this share of the GPUs (of
# any product), which its training gets ahead of any margin ranking and reclaims from borrowers.
GUARANTEED_SHARE = 0.25


def guaranteed_tenant_quota(total_gpus: int) -> dict[str, Any]:
    """The GPUQuota of the demo's guaranteed tenant (the training namespace)."""
    return {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUQuota",
        "metadata": {"name": TRAINING_NAMESPACE},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": TRAINING_NAMESPACE}},
            "guaranteed": {"*": max(1, int(total_gpus * GUARANTEED_SHARE))},
        },
    }

def package_file(*parts: str) -> Path:
    """A file shipped in gpuadmit's package data (``crds``, ``policy.yaml``, ``sample-cluster.yaml``):
    copies of the top-level crds/ and examples/policy.yaml, kept identical by tests/packaging."""
    return Path(str(resources.files("gpuadmit").joinpath("data", *parts)))


# --------------------------------------------------------------------------- what is submitted


@dataclass(frozen=True, slots=True)
class DemoNode:
    name: str
    gpus: int
    product: str  # nvidia.com/gpu.product
    memory_mib: int
    resources: Resources = ()  # allocatable CPU (millicores) and memory (bytes); absent: NODE_DEFAULTS


@dataclass(frozen=True, slots=True)
class DemoPod:
    """A trace pod as the demo submits it."""

    name: str
    qos_inference: bool  # qos LS: the trace's proxy for inference
    gpus: int
    trace_run_seconds: float | None  # None: still running when the trace ended
    products: tuple[str, ...] = ()
    requests: Resources = ()  # CPU (millicores) and memory (bytes) its container requests

@dataclass(frozen=True, slots=True)
class Plan:
    """One submission: when (demo seconds from the start), what, and how long its pods run."""

    at: float
    name: str
    namespace: str
    pod: DemoPod
    run_seconds: float
    max_queue_seconds: int | None
    forges_tier_label: bool = False  # a tenant trying to buy the gold price with a label


def load_trace(trace_dir: Path, node_count: int) -> tuple[list[DemoNode], list[DemoPod], str]:
    from gpuadmit.sim.trace import LoadShape, read_alibaba

    trace = read_alibaba(trace_dir, LoadShape(node_count=node_count))
    nodes = [
        DemoNode(n.name, n.allocatable, *TRACE_PRODUCTS.get(n.product, (f"Alibaba-{n.product}" if n.product else "", 0)), n.resources)
        for n in trace.nodes
        if n.allocatable > 0
    ]
    pods = [
        DemoPod(
            name=w.name,
            qos_inference=w.workload_class == "inference",
            gpus=max(1, w.gpus),
            trace_run_seconds=w.duration_s,
            products=tuple(TRACE_PRODUCTS[p][0] for p in w.products if p in TRACE_PRODUCTS),
            requests=w.requests,
        )
        for w in trace.workloads
    ]
    return nodes, pods, f"Alibaba GPU trace 2023 ({trace_dir})"


def sample_cluster(seed: int, path: Path | None = None) -> tuple[list[DemoNode], list[DemoPod], str]:
    """The sample cluster shipped as package data (``sample-cluster.yaml``), for machines without
    the trace: the trace's products, CPU and memory, and mix of workloads, drawn seeded."""
    path = path or package_file("sample-cluster.yaml")
    shape = yaml.safe_load(path.read_text())
    rng = random.Random(seed)
    nodes = []
    for group in shape["nodes"]:
        product, memory = TRACE_PRODUCTS[group["product"]]
        # CPU and memory are optional: a group without them gets the demo's default node size.
        host = tuple((resource, resource_amount(resource, str(group[resource]))) for resource in ("cpu", "memory")
                     if resource in group)
        nodes += [DemoNode(f"sample-{group['product'].lower()}-{i}", int(group["gpus"]), product, memory, host)
                  for i in range(int(group["count"]))]
    mix = shape["workloads"]
    sizes = [int(gpus) for gpus in mix["gpusPerPod"]]
    weights = [float(weight) for weight in mix["gpusPerPod"].values()]
    # Per resource: the quantities a pod requests and their weights.
    request_mix = {resource: ([resource_amount(resource, str(q)) for q in mix[key]], [float(w) for w in mix[key].values()])
                   for resource, key in (("cpu", "cpuPerPod"), ("memory", "memoryPerPod")) if key in mix}  # optional
    pods = []
    for index in range(int(mix["count"])):
        inference = rng.random() < float(mix["inferenceShare"])
        median = float(mix["medianRunSeconds"]["inference" if inference else "training"])
        gpus = rng.choices(sizes, weights=weights)[0]
        run_seconds = median * math.exp(rng.gauss(0.0, 1.0))
        requests = tuple((resource, rng.choices(amounts, weights=w)[0]) for resource, (amounts, w) in request_mix.items())
        pods.append(DemoPod(f"sample-pod-{index:04d}", inference, gpus, run_seconds, requests=requests))
    return nodes, pods, "sample cluster"


def plan_submissions(
    pods: list[DemoPod], total_gpus: int, args: argparse.Namespace
) -> tuple[list[Plan], float, float]:
    """Seeded arrivals at the rate that offers ``--load`` x the cluster's GPU-seconds (at most
    ``--max-rate``); returns the plans, the rate, and the load actually offered."""
    rng = random.Random(args.seed)
    longest = max(MIN_RUN_SECONDS, args.duration / 2)

    def demo_run_seconds(pod: DemoPod) -> float:
        if pod.trace_run_seconds is None:
            return longest
        return min(longest, max(MIN_RUN_SECONDS, pod.trace_run_seconds / args.time_scale))

    order = list(pods)
    rng.shuffle(order)
    sample = order[: min(len(order), 2000)]
    mean_gpu_seconds = sum(p.gpus * demo_run_seconds(p) for p in sample) / max(1, len(sample))
    rate = min(args.max_rate, max(0.2, args.load * total_gpus / max(mean_gpu_seconds, 1e-9)))
    offered = rate * mean_gpu_seconds / max(1, total_gpus)
    patience = max(1, round(args.be_patience_minutes * 60 / args.time_scale))
    plans: list[Plan] = []
    clock, index, trainings, uses = 0.0, 0, 0, collections.Counter[str]()
    while order:
        clock += rng.expovariate(rate)
        if clock >= args.duration:
            break
        pod = order[index % len(order)]
        index += 1
        uses[pod.name] += 1
        name = pod.name.lower() if uses[pod.name] == 1 else f"{pod.name.lower()}-r{uses[pod.name]}"
        namespace = rng.choice(INFERENCE_NAMESPACES) if pod.qos_inference else TRAINING_NAMESPACE
        trainings += not pod.qos_inference
        forges = not pod.qos_inference and trainings % FORGER_EVERY == FORGER_EVERY // 8  # the 5th, 45th, ...
        plans.append(Plan(clock, name, namespace, pod, demo_run_seconds(pod), None if pod.qos_inference else patience, forges))
    return plans, rate, offered


# What a node lists when its source gives no CPU or memory.
NODE_DEFAULTS = {"cpu": "64", "memory": "256Gi", "pods": "110"}


def quantity(resource: str, amount: int) -> str:
    """A ledger amount (CPU in millicores, memory in bytes) as a Kubernetes quantity."""
    if resource == "cpu":
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    for unit, size in (("Gi", 2**30), ("Mi", 2**20)):
        if amount % size == 0:
            return f"{amount // size}{unit}"
    return str(amount)


def node_object(node: DemoNode) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": node.name, "nvidia.com/gpu.count": str(node.gpus)}
    if node.product:
        labels[GPU_PRODUCT_LABEL] = node.product
    if node.memory_mib:
        labels[GPU_MEMORY_LABEL] = str(node.memory_mib)
    amounts = {GPU_RESOURCE: str(node.gpus), **NODE_DEFAULTS, **{resource: quantity(resource, amount) for resource, amount in node.resources}}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {},
        "status": {
            "capacity": dict(amounts),
            "allocatable": dict(amounts),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "emulated by gpuadmit demo"}],
        },
    }


def workload_object(plan: Plan) -> dict[str, Any]:
    gpus = plan.pod.gpus
    requests = {resource: quantity(resource, amount) for resource, amount in plan.pod.requests}
    if plan.pod.qos_inference:
        template = {
            "metadata": {"labels": {"app": "chat-api"}},
            "spec": {
                "containers": [{
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.6.3",
                    "args": ["--model", "Qwen/Qwen2.5-7B-Instruct", "--tensor-parallel-size", str(gpus)],
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                    "resources": {"requests": requests},
                }]
            },
        }
    else:
        template = {
            "metadata": {"labels": {"app": "ranker-training"}},
            "spec": {
                "restartPolicy": "OnFailure",
                "containers": [{
                    "name": "trainer",
                    "image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
                    "command": ["torchrun", f"--nproc-per-node={gpus}", "train.py", "--config", "configs/ranker.yaml"],
                    "resources": {"requests": requests},
                }],
            },
        }
    spec: dict[str, Any] = {"gpus": gpus, "replicas": 1, "template": template}
    if plan.pod.products:
        spec["gpuProducts"] = list(plan.pod.products)
    if plan.max_queue_seconds is not None:
        spec["maxQueueSeconds"] = plan.max_queue_seconds
    metadata: dict[str, Any] = {"name": plan.name, "namespace": plan.namespace, "annotations": {"demo.example.com/trace-pod": plan.pod.name}}
    if plan.forges_tier_label:  # the tier comes from the namespace's label, never from the workload
        metadata["labels"] = {TIER_LABEL: "gold"}
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": metadata, "spec": spec}


def demo_policy(path: Path | None, time_scale: float) -> dict[str, Any]:
    """The policy (``path``, else the example policy shipped as package data) with its durations
    compressed like everything else."""
    # A user's file is read as every command reads one (bounded, one line per problem) and must parse.
    policy = load_policy_object(str(path))[0] if path is not None else yaml.safe_load(package_file("policy.yaml").read_text())
    spec = policy.setdefault("spec", {})
    preemption = spec.get("preemption")
    if isinstance(preemption, dict) and isinstance(preemption.get("minRuntimeSeconds"), (int, float)):
        preemption["minRuntimeSeconds"] = max(1, round(preemption["minRuntimeSeconds"] / time_scale))
    if isinstance(spec.get("defaultMaxQueueSeconds"), (int, float)):
        spec["defaultMaxQueueSeconds"] = max(1, round(spec["defaultMaxQueueSeconds"] / time_scale))
    policy.setdefault("metadata", {})["name"] = "default"
    return policy
