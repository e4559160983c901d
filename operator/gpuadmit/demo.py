"""`gpuadmit demo`: the whole system on an emulated cluster, no cluster and no network needed.

What runs, all on loopback:

1. the emulated API server (``python -m kubeapi_emulator``, a subprocess) serving the CRDs;
2. a MarginPolicy (examples/policy.yaml, or the same built in), nodes from the Alibaba 2023 GPU
   trace (a product-stratified subset, so queueing shows) or a built-in sample cluster;
3. the REAL operator (``gpuadmit run``, a subprocess) with /metrics on a local port;
4. this process submits GPUWorkloads drawn from the trace's GPU pods and plays kubelet (the
   emulator has none): our pods turn Running when created and Succeeded when their compressed
   run time is over; it shows the decisions live and ends with a summary.

Time is compressed by ``--time-scale`` (one demo second stands for that many trace seconds): run
times, and the policy's own durations (preemption's minimum run time, the default queue
timeout), are divided by it. Arrivals are not the trace's (7,064 GPU pods over 149 days keep a
few dozen GPUs busy): pods are drawn at random, seeded, at the rate that offers ``--load`` times
the cluster's GPU-seconds. Proxies, as the trace forces them: qos LS -> an inference template
(a vLLM server), everything else -> a training template (torchrun); fractional GPUs -> one GPU.
Best-effort (BE) pods give up after ``--be-patience-minutes`` of trace time in the queue.

Every create goes through the operator's admission webhooks first (mutate, then validate), as a
real API server would send it; one training workload in ``FORGER_EVERY`` carries a forged
``gpuadmit.io/tier`` label, which the validating webhook refuses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, TextIO

import yaml

import gpuadmit
from gpuadmit.core.model import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, GPU_RESOURCE, HOLDING_PHASES, TIER_LABEL, WORKLOAD_LABEL
from gpuadmit.core.validation import apply_json_patch
from gpuadmit.processes import free_port, stop_process

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
TRACE_SUBDIR = Path("shared") / "traces" / "alibaba-gpu-2023"
INFERENCE_NAMESPACES = ("serving", "serving-gold")  # the second is tier gold: a 1.5x price
TRAINING_NAMESPACE = "research"
GOLD_NAMESPACE = "serving-gold"
MIN_RUN_SECONDS = 2.0  # long enough to be seen Running
DEFAULT_MAX_RATE = 5.0  # workloads/s that the emulator, the operator and this process keep up with on a busy laptop
STARTUP_DEADLINE = 60.0
DECISIONS_SHOWN = 6
FORGER_EVERY = 40  # one training workload in this many carries a forged tier label
REFUSED = "Refused"  # not a status phase: the admission webhook turned the create down

BUILTIN_POLICY: dict[str, Any] = {
    "apiVersion": "gpuadmit.io/v1alpha1",
    "kind": "MarginPolicy",
    "metadata": {"name": "default"},
    "spec": {
        "gpuCostPerHour": {"default": 1.20},
        "pricePerGPUHour": {"inference": 6.00, "training": 2.00},
        "tierMultipliers": {"gold": 1.5},
        "minMarginPerGPUHour": 0.0,
        "preemption": {"enabled": True, "minRuntimeSeconds": 600, "minMarginGainPerGPUHour": 0.5},
        "defaultMaxQueueSeconds": 86400,
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of submissions before the summary (default 180)")
    parser.add_argument("--nodes", type=int, default=32, help="trace nodes to emulate, a product-stratified subset (default 32)")
    parser.add_argument("--trace-dir", default=None, help="directory with the Alibaba 2023 trace CSVs (default: found upwards from here)")
    parser.add_argument("--no-trace", action="store_true", help="use the built-in sample cluster even when the trace is there")
    parser.add_argument("--time-scale", type=float, default=10.0, help="trace seconds per demo second (default 10)")
    parser.add_argument("--load", type=float, default=1.5, help="offered GPU load as a multiple of the cluster's GPUs (default 1.5)")
    parser.add_argument("--be-patience-minutes", type=float, default=10.0, help="trace minutes a BE pod waits in the queue before giving up (default 10)")
    parser.add_argument("--max-rate", type=float, default=DEFAULT_MAX_RATE, help=f"most workloads submitted per second (default {DEFAULT_MAX_RATE:g})")
    parser.add_argument("--seed", type=int, default=7, help="random seed for the pods drawn (default 7)")
    parser.add_argument("--metrics-port", type=int, default=0, help="the operator's /metrics port (default: a free one)")
    parser.add_argument("--policy", default=None, help="MarginPolicy YAML (default examples/policy.yaml, else built in)")
    parser.add_argument("--no-webhooks", action="store_true", help="create workloads directly, without the admission webhooks")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the operator's and emulator's logs")
    parser.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(Demo(args, sys.stdout).run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("gpuadmit demo: interrupted; the emulator and the operator were stopped", file=sys.stderr)
        return 130
    except DemoError as error:
        print(f"gpuadmit demo: {error}", file=sys.stderr)
        return 1


class DemoError(RuntimeError):
    """The demo could not run (a process did not start, a file is missing): said plainly."""


# --------------------------------------------------------------------------- what is submitted


@dataclass(frozen=True, slots=True)
class DemoNode:
    name: str
    gpus: int
    product: str  # nvidia.com/gpu.product
    memory_mib: int


@dataclass(frozen=True, slots=True)
class DemoPod:
    """A trace pod as the demo submits it."""

    name: str
    qos_inference: bool  # qos LS: the trace's proxy for inference
    gpus: int
    trace_run_seconds: float | None  # None: still running when the trace ended
    products: tuple[str, ...] = ()


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


def find_trace_dir(explicit: str | None, starts: Iterable[Path]) -> Path | None:
    """``explicit``, else the first ``shared/traces/alibaba-gpu-2023`` found going upwards from ``starts``."""
    from gpuadmit.sim.trace import ALIBABA_NODES_FILE, ALIBABA_PODS_FILE

    def complete(folder: Path) -> bool:
        return (folder / ALIBABA_NODES_FILE).is_file() and (folder / ALIBABA_PODS_FILE).is_file()

    if explicit:
        folder = Path(explicit).expanduser()
        if not complete(folder):
            raise DemoError(f"--trace-dir {explicit}: no {ALIBABA_NODES_FILE} and {ALIBABA_PODS_FILE} there")
        return folder
    for start in starts:
        for folder in (start.resolve(), *start.resolve().parents):
            if complete(folder / TRACE_SUBDIR):
                return folder / TRACE_SUBDIR
    return None


def load_trace(trace_dir: Path, node_count: int) -> tuple[list[DemoNode], list[DemoPod], str]:
    from gpuadmit.sim.trace import LoadShape, read_alibaba

    trace = read_alibaba(trace_dir, LoadShape(node_count=node_count))
    nodes = [
        DemoNode(n.name, n.allocatable, *TRACE_PRODUCTS.get(n.product, (f"Alibaba-{n.product}" if n.product else "", 0)))
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
        )
        for w in trace.workloads
    ]
    return nodes, pods, f"Alibaba GPU trace 2023 ({trace_dir})"


def sample_cluster(seed: int) -> tuple[list[DemoNode], list[DemoPod], str]:
    """A small cluster shaped like the trace, for machines without it: same products, same mix."""
    rng = random.Random(seed)
    shapes = [("V100M32", 8, 4), ("V100M16", 8, 4), ("T4", 2, 10), ("P100", 2, 6), ("A10", 4, 4)]
    nodes = []
    for model, gpus, count in shapes:
        product, memory = TRACE_PRODUCTS[model]
        nodes += [DemoNode(f"sample-{model.lower()}-{i}", gpus, product, memory) for i in range(count)]
    pods = []
    for index in range(3000):
        inference = rng.random() < 0.57  # LS share of the trace's GPU pods
        median = 783.0 if inference else 223.0  # the trace's median run times
        gpus = rng.choices([1, 2, 4, 8], weights=[95, 2, 2, 1])[0]
        pods.append(DemoPod(f"sample-pod-{index:04d}", inference, gpus, median * math.exp(rng.gauss(0.0, 1.0))))
    return nodes, pods, "built-in sample cluster"


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


def node_object(node: DemoNode) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": node.name, "nvidia.com/gpu.count": str(node.gpus)}
    if node.product:
        labels[GPU_PRODUCT_LABEL] = node.product
    if node.memory_mib:
        labels[GPU_MEMORY_LABEL] = str(node.memory_mib)
    amounts = {GPU_RESOURCE: str(node.gpus), "cpu": "64", "memory": "256Gi", "pods": "110"}
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
    """The policy with its durations compressed like everything else."""
    policy = yaml.safe_load(path.read_text()) if path is not None else json.loads(json.dumps(BUILTIN_POLICY))
    spec = policy.setdefault("spec", {})
    preemption = spec.get("preemption")
    if isinstance(preemption, dict) and isinstance(preemption.get("minRuntimeSeconds"), (int, float)):
        preemption["minRuntimeSeconds"] = max(1, round(preemption["minRuntimeSeconds"] / time_scale))
    if isinstance(spec.get("defaultMaxQueueSeconds"), (int, float)):
        spec["defaultMaxQueueSeconds"] = max(1, round(spec["defaultMaxQueueSeconds"] / time_scale))
    policy.setdefault("metadata", {})["name"] = "default"
    return policy


def repo_file(*parts: str) -> Path | None:
    """A file or directory of the source tree (crds/, examples/): beside the package, or under the cwd."""
    package_root = Path(gpuadmit.__file__).resolve().parent
    for base in (package_root / "data", package_root.parents[1], Path.cwd()):
        candidate = base.joinpath(*parts)
        if candidate.exists():
            return candidate
    return None


# --------------------------------------------------------------------------- the API, minimally


class Api:
    """Plain-HTTP JSON calls to the emulated server (no credentials, loopback only)."""

    def __init__(self, base_url: str) -> None:
        import aiohttp

        self.base_url = base_url.rstrip("/")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self.in_flight = asyncio.Semaphore(16)

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, *, merge: bool = False, params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        async with self.in_flight:
            async with self.session.request(
                method, self.base_url + path, data=None if body is None else json.dumps(body), headers=headers, params=params
            ) as response:
                text = await response.text()
        try:
            return response.status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return response.status, text

    async def must(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, payload = await self.call(method, path, body, **kwargs)
        if status >= 300 and not (method == "POST" and status == 409):
            raise DemoError(f"{method} {path} answered {status}: {str(payload)[:300]}")
        return payload

    async def follow(self, path: str, on_event: Callable[[str, dict[str, Any]], Awaitable[None] | None], params: Mapping[str, str] | None = None) -> None:
        """List, then watch from there, forever; every object arrives as an event, re-listed after a break."""
        import aiohttp

        while True:
            try:
                listing = await self.must("GET", path, params=params)
                for item in listing.get("items") or []:
                    await _maybe_await(on_event("ADDED", item))
                version = (listing.get("metadata") or {}).get("resourceVersion", "")
                watch_params = {**(params or {}), "watch": "true", "resourceVersion": str(version), "allowWatchBookmarks": "true"}
                async with self.session.get(self.base_url + path, params=watch_params) as response:
                    if response.status != 200:
                        raise DemoError(f"watch {path} answered {response.status}")
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            await _maybe_await(on_event(event["type"], event.get("object") or {}))
                        elif event.get("type") == "ERROR":
                            break  # e.g. 410 Gone: list again
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, DemoError):
                await asyncio.sleep(0.5)  # the server restarts or drops the stream: list again shortly


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    obj: dict[str, Any]
    message: str = ""


class AdmissionClient:
    """Plays the API server's part in admission: the mutating webhook, then the validating one.

    The emulator calls no webhooks, so the demo does, for every create. A webhook that cannot be
    reached lets the create through, as ``failurePolicy: Ignore`` does (docs/webhooks.md).
    """

    def __init__(self, base_url: str, cafile: Path) -> None:
        import ssl

        import aiohttp

        self.base_url = base_url.rstrip("/")
        self.ssl = ssl.create_default_context(cafile=str(cafile))
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.unreachable = 0

    async def close(self) -> None:
        await self.session.close()

    async def review(self, obj: dict[str, Any]) -> Verdict:
        import aiohttp

        try:
            mutation = await self._call("mutate-gpuworkload", obj)
            if not mutation.get("allowed"):
                return Verdict(False, obj, str((mutation.get("status") or {}).get("message", "")))
            if mutation.get("patch"):
                obj = apply_json_patch(obj, json.loads(base64.b64decode(mutation["patch"])))
            validation = await self._call("validate-gpuworkload", obj)
            if not validation.get("allowed"):
                return Verdict(False, obj, str((validation.get("status") or {}).get("message", "")))
            return Verdict(True, obj)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            self.unreachable += 1
            return Verdict(True, obj)

    async def _call(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        metadata = obj.get("metadata") or {}
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": os.urandom(8).hex(),
                "kind": {"group": "gpuadmit.io", "version": "v1alpha1", "kind": "GPUWorkload"},
                "resource": {"group": "gpuadmit.io", "version": "v1alpha1", "resource": "gpuworkloads"},
                "name": metadata.get("name", ""),
                "namespace": metadata.get("namespace", ""),
                "operation": "CREATE",
                "userInfo": {"username": f"system:serviceaccount:{metadata.get('namespace')}:default"},
                "object": obj,
                "oldObject": None,
                "dryRun": False,
            },
        }
        async with self.session.post(f"{self.base_url}/{path}", json=review, ssl=self.ssl) as response:
            response.raise_for_status()
            answer = await response.json()
        return dict(answer["response"])

    async def listening(self) -> bool:
        import aiohttp

        try:
            async with self.session.post(f"{self.base_url}/validate-gpuworkload", data=b"{}", ssl=self.ssl):
                return True  # any answer (a 400 for this empty review) means it serves
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


# --------------------------------------------------------------------------- what was decided


@dataclass
class Tracked:
    plan: Plan
    submitted_at: float
    workload_class: str  # as the operator classified it (the trace's proxy until then)
    phase: str | None = None
    reason: str = ""
    admitted_at: float | None = None
    gpus_held: int = 0
    margin_per_gpu_hour: float = 0.0
    preemptions: int = 0


@dataclass
class Decision:
    at: float
    verb: str
    key: str
    workload_class: str
    detail: str


@dataclass
class Ledger:
    """Everything shown: fed by watch events on GPUWorkloads."""

    total_gpus: int
    time_scale: float
    started: float = field(default_factory=time.monotonic)
    workloads: dict[str, Tracked] = field(default_factory=dict)
    decisions: collections.deque[Decision] = field(default_factory=lambda: collections.deque(maxlen=200))
    decision_count: int = 0
    earned: float = 0.0  # margin, in trace time
    gpu_seconds_used: float = 0.0
    last_tick: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.started

    def submitted(self, plan: Plan, sent_at: float) -> None:
        key = f"{plan.namespace}/{plan.name}"
        if key not in self.workloads:
            self.workloads[key] = Tracked(plan, sent_at, "inference" if plan.pod.qos_inference else "training")

    def refused(self, plan: Plan, sent_at: float, message: str) -> None:
        """The admission webhook turned the create down: it never reaches the operator."""
        key = f"{plan.namespace}/{plan.name}"
        tracked = Tracked(plan, sent_at, "inference" if plan.pod.qos_inference else "training", phase=REFUSED)
        tracked.reason = message[1:].split("]", 1)[0] if message.startswith("[") else "AdmissionRefused"
        self.workloads[key] = tracked
        self._decided("refused", key, tracked, f"by the webhook: {message}")

    def observe(self, event_type: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        tracked = self.workloads.get(f"{metadata.get('namespace')}/{metadata.get('name')}")
        if tracked is None or event_type == "DELETED":
            return
        status = obj.get("status") or {}
        if status.get("class") in ("inference", "training"):
            tracked.workload_class = status["class"]
        phase, reason = status.get("phase"), str(status.get("reason") or "")
        if isinstance(status.get("preemptions"), int):
            tracked.preemptions = status["preemptions"]
        holding = phase in HOLDING_PHASES
        placement = status.get("placement") if holding else None
        tracked.gpus_held = sum(int(p.get("gpus") or 0) for p in placement or [] if isinstance(p, Mapping))
        margin = status.get("marginPerGPUHour")
        tracked.margin_per_gpu_hour = float(margin) if holding and isinstance(margin, (int, float)) else 0.0
        if (phase, reason) == (tracked.phase, tracked.reason) or phase is None:
            return
        before, tracked.phase, tracked.reason = tracked.phase, phase, reason
        key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        message = str(status.get("message") or "")
        if phase in HOLDING_PHASES and (tracked.admitted_at is None or before not in HOLDING_PHASES):
            if tracked.admitted_at is None:
                tracked.admitted_at = self.now()
            nodes = ", ".join(f"{p.get('node')}x{p.get('gpus')}" for p in placement or [] if isinstance(p, Mapping))
            self._decided("admitted", key, tracked, f"{tracked.plan.pod.gpus} GPU on {nodes}, ${tracked.margin_per_gpu_hour:.2f}/GPU-h")
        elif phase == "Queued" and before in (None, "Queued", "Preempted"):
            self._decided("queued", key, tracked, f"{reason}: {message}")
        elif phase == "Rejected":
            self._decided("rejected", key, tracked, f"{reason}: {message}")
        elif phase == "Preempted":
            self._decided("preempted", key, tracked, message)

    def _decided(self, verb: str, key: str, tracked: Tracked, detail: str) -> None:
        self.decision_count += 1
        self.decisions.append(Decision(self.now(), verb, key, tracked.workload_class, detail))

    def tick(self) -> None:
        """Integrate margin and GPU use since the last tick (margin counts in trace time)."""
        now = self.now()
        if self.last_tick is not None:
            elapsed = now - self.last_tick
            self.earned += self.margin_per_hour() * elapsed * self.time_scale / 3600
            self.gpu_seconds_used += self.gpus_in_use() * elapsed
        self.last_tick = now

    def gpus_in_use(self) -> int:
        return sum(t.gpus_held for t in self.workloads.values())

    def margin_per_hour(self) -> float:
        return sum(t.gpus_held * t.margin_per_gpu_hour for t in self.workloads.values())

    def counts(self) -> dict[str, collections.Counter[str]]:
        """Per class: submitted, undecided (no status yet), admitted (ever), holding now, queued,
        rejected (by the operator), refused (by the webhook), done."""
        table: dict[str, collections.Counter[str]] = {"inference": collections.Counter(), "training": collections.Counter()}
        for tracked in self.workloads.values():
            row = table.setdefault(tracked.workload_class, collections.Counter())
            row["submitted"] += 1
            row["admitted"] += tracked.admitted_at is not None
            row["holding"] += tracked.phase in HOLDING_PHASES
            row["undecided"] += tracked.phase is None
            row["queued"] += tracked.phase in ("Queued", "Preempted")
            row["rejected"] += tracked.phase == "Rejected"
            row["refused"] += tracked.phase == REFUSED
            row["done"] += tracked.phase in ("Succeeded", "Failed")
            row["preemptions"] += tracked.preemptions
        return table

    def waits(self, workload_class: str) -> list[float]:
        return sorted(
            t.admitted_at - t.submitted_at
            for t in self.workloads.values()
            if t.workload_class == workload_class and t.admitted_at is not None
        )


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(share * len(values)) - 1))]


# --------------------------------------------------------------------------- showing it


class Screen:
    """A table redrawn in place on a terminal; plain progress lines anywhere else (CI, pipes)."""

    def __init__(self, out: TextIO, ledger: Ledger, header: str, live: bool, duration: float) -> None:
        self.out, self.ledger, self.header, self.live = out, ledger, header, live
        self.plain_every = max(2.0, min(10.0, duration / 12))
        self.last_plain = -math.inf
        self.decisions_printed = 0

    def update(self, submitted: int, final: bool = False) -> None:
        if self.live:
            self.out.write("\x1b[H\x1b[2J" + "\n".join(self.table(submitted)) + "\n")
            self.out.flush()
            return
        now = self.ledger.now()
        if final or now - self.last_plain >= self.plain_every:
            self.last_plain = now
            self.out.write(self.progress_line(submitted) + "\n")
            fresh = self.ledger.decision_count - self.decisions_printed
            recent = list(self.ledger.decisions)[-fresh:] if fresh > 0 else []
            latest_by_verb = {decision.verb: decision for decision in recent}  # one line of each kind
            shown = sorted(latest_by_verb.values(), key=lambda decision: decision.at)
            for decision in shown:
                self.out.write(f"    {decision.verb:<9} {decision.key} ({decision.workload_class}) {decision.detail}"[:160] + "\n")
            self.decisions_printed = self.ledger.decision_count
            self.out.flush()

    def progress_line(self, submitted: int) -> str:
        ledger = self.ledger
        parts = [f"[{ledger.now():5.0f}s] submitted {submitted}"]
        for name, row in ledger.counts().items():
            parts.append(
                f"{name}: {row['admitted']} admitted, {row['queued']} queued, {row['rejected']} rejected, "
                f"{row['refused']} refused, {row['undecided']} undecided"
            )
        parts.append(f"GPUs {ledger.gpus_in_use()}/{ledger.total_gpus}")
        parts.append(f"margin ${ledger.margin_per_hour():,.2f}/h")
        return " | ".join(parts)

    def table(self, submitted: int) -> list[str]:
        ledger = self.ledger
        used = ledger.gpus_in_use()
        lines = [*self.header.splitlines(), ""]
        lines.append(f"t = {ledger.now():5.0f} s    submitted {submitted}    decisions {ledger.decision_count}")
        lines.append("")
        lines.append(f"{'class':<10} {'submitted':>9} {'undecided':>9} {'admitted':>9} {'running':>8} {'queued':>7} {'rejected':>9} {'refused':>8} {'done':>6} {'wait p50':>9} {'p95':>7}")
        for name, row in ledger.counts().items():
            waits = ledger.waits(name)
            lines.append(
                f"{name:<10} {row['submitted']:>9} {row['undecided']:>9} {row['admitted']:>9} {row['holding']:>8} {row['queued']:>7} "
                f"{row['rejected']:>9} {row['refused']:>8} {row['done']:>6} {_seconds(percentile(waits, 0.5)):>9} {_seconds(percentile(waits, 0.95)):>7}"
            )
        bar_width = 40
        filled = round(bar_width * used / max(1, ledger.total_gpus))
        lines.append("")
        lines.append(f"GPUs in use  [{'#' * filled}{'.' * (bar_width - filled)}] {used}/{ledger.total_gpus}")
        lines.append(f"margin       ${ledger.margin_per_hour():,.2f} per hour    earned ${ledger.earned:,.2f} (trace time)")
        lines.append("")
        lines.append("last decisions:")
        for decision in list(ledger.decisions)[-DECISIONS_SHOWN:]:
            lines.append(f"  {decision.at:5.0f}s {decision.verb:<9} {decision.key} ({decision.workload_class}) {decision.detail}"[:150])
        return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def summary(ledger: Ledger, elapsed: float, time_scale: float) -> list[str]:
    counts = ledger.counts()
    lines = ["", f"Summary after {elapsed:.0f} s ({elapsed * time_scale / 3600:.1f} hours of trace time)", ""]
    lines.append(f"{'class':<10} {'submitted':>9} {'admitted':>9} {'rejected':>9} {'refused':>8} {'queued':>7} {'undecided':>9} {'wait p50':>9} {'wait p95':>9}  (waits: admitted ones, demo seconds)")
    for name, row in counts.items():
        waits = ledger.waits(name)
        lines.append(
            f"{name:<10} {row['submitted']:>9} {row['admitted']:>9} {row['rejected']:>9} {row['refused']:>8} {row['queued']:>7} {row['undecided']:>9} "
            f"{_seconds(percentile(waits, 0.5)):>9} {_seconds(percentile(waits, 0.95)):>9}"
        )
    lines.append("")
    lines.append("last decision by class and reason:")
    reasons = collections.Counter((t.workload_class, t.reason or "(none yet)") for t in ledger.workloads.values())
    for (name, reason), count in sorted(reasons.items()):
        lines.append(f"  {name:<10} {reason:<26} {count:>6}")
    preemptions = sum(row["preemptions"] for row in counts.values())
    average_use = ledger.gpu_seconds_used / max(1e-9, elapsed) / max(1, ledger.total_gpus)
    lines.append("")
    lines.append(f"margin earned: ${ledger.earned:,.2f} over {elapsed * time_scale / 3600:.1f} trace hours; "
                 f"average GPU use {average_use:.0%}; preemptions {preemptions}")
    lines.append("admitted by class: " + " ".join(f"{name}={row['admitted']}" for name, row in counts.items()))
    return lines


# --------------------------------------------------------------------------- running it all


class Demo:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="gpuadmit-demo-"))
        self.running_pods: dict[str, tuple[float, dict[str, Any]]] = {}  # pod uid -> (run time over at, its metadata)
        self.run_seconds: dict[str, float] = {}  # workload key -> demo seconds its pods run
        self.admission: AdmissionClient | None = None

    async def run(self) -> int:
        args = self.args
        if min(args.duration, args.time_scale, args.load, args.max_rate) <= 0 or args.nodes < 1:
            raise DemoError("--duration, --time-scale, --load, --max-rate and --nodes must be positive")
        trace_dir = None if args.no_trace else find_trace_dir(args.trace_dir, [Path.cwd(), Path(gpuadmit.__file__).resolve().parent])
        if trace_dir is not None:
            nodes, pods, source = load_trace(trace_dir, args.nodes)
        else:
            nodes, pods, source = sample_cluster(args.seed)
            source += "" if args.no_trace else " (no trace found; see --trace-dir)"
        total_gpus = sum(node.gpus for node in nodes)
        plans, rate, offered = plan_submissions(pods, total_gpus, args)
        policy_path = Path(args.policy) if args.policy else repo_file("examples", "policy.yaml")
        crds = repo_file("crds")
        if crds is None:
            raise DemoError("cannot find the CRDs (crds/ beside the package or in the current directory)")
        api: Api | None = None
        tasks: list[asyncio.Task[None]] = []
        succeeded = False
        main_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):  # stop the child processes, as on Ctrl-C
            if main_task is not None:
                loop.add_signal_handler(signum, main_task.cancel)
        try:
            url = await self.start_emulator(crds)
            api = Api(url)
            await self.populate(api, nodes, demo_policy(policy_path, args.time_scale))
            metrics_port = args.metrics_port or free_port()
            await self.start_operator(metrics_port)
            ledger = Ledger(total_gpus=total_gpus, time_scale=args.time_scale)
            header = (
                f"gpuadmit demo: {len(nodes)} nodes, {total_gpus} GPUs from the {source}\n"
                f"1 s here = {args.time_scale:g} s of trace; ~{rate:.1f} workloads/s offering {offered:.1f}x the GPUs; "
                f"metrics: http://127.0.0.1:{metrics_port}/metrics"
            )
            self.out.write(header + "\n")
            self.out.write(f"logs: {self.workdir}" + ("" if args.keep_logs else " (removed at the end unless --keep-logs or a failure)") + "\n")
            self.out.flush()
            live = self.out.isatty() and not args.plain and os.environ.get("TERM") != "dumb"
            screen = Screen(self.out, ledger, header, live, args.duration)
            tasks = [
                asyncio.create_task(api.follow("/apis/gpuadmit.io/v1alpha1/gpuworkloads", ledger.observe)),
                asyncio.create_task(api.follow("/api/v1/pods", lambda t, o: self.play_kubelet(api, t, o), {"labelSelector": WORKLOAD_LABEL})),
                asyncio.create_task(self.finish_pods(api)),
            ]
            submitted = await self.submit_all(api, plans, ledger, screen)
            ledger.tick()
            screen.update(submitted, final=True)
            lines = summary(ledger, ledger.now(), args.time_scale)
            lines.append(await metrics_line(f"http://127.0.0.1:{metrics_port}/metrics"))
            if self.admission is not None:
                lines.append(f"admission webhooks: every create went through /mutate-gpuworkload and /validate-gpuworkload"
                             f" ({self.admission.unreachable} let through unreviewed)")
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            succeeded = True
            return 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if api is not None:
                await api.close()
            if self.admission is not None:
                await self.admission.close()
            self.stop_processes()
            if succeeded and not args.keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
            elif not succeeded:
                print(f"gpuadmit demo: logs kept in {self.workdir}", file=sys.stderr)

    async def start_emulator(self, crds: Path) -> str:
        kubeconfig = self.workdir / "kubeconfig"
        self.spawn("emulator", [sys.executable, "-m", "kubeapi_emulator", "--port", "0", "--crds", str(crds), "--kubeconfig-out", str(kubeconfig)])
        await self.wait_for(lambda: kubeconfig.exists(), "the emulated API server to listen")
        config = yaml.safe_load(kubeconfig.read_text())
        return str(config["clusters"][0]["cluster"]["server"])

    async def populate(self, api: Api, nodes: list[DemoNode], policy: dict[str, Any]) -> None:
        await api.must("POST", "/apis/gpuadmit.io/v1alpha1/marginpolicies", policy)
        for namespace in (*INFERENCE_NAMESPACES, TRAINING_NAMESPACE):
            labels = {TIER_LABEL: "gold"} if namespace == GOLD_NAMESPACE else {}
            await api.must("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        await asyncio.gather(*(api.must("POST", "/api/v1/nodes", node_object(node)) for node in nodes))

    async def start_operator(self, metrics_port: int) -> None:
        health_port = free_port()
        webhook_port = 0 if self.args.no_webhooks else free_port()
        cert_dir = self.workdir / "certs"
        self.spawn(
            "operator",
            [sys.executable, "-m", "gpuadmit.cli", "run", "--metrics-port", str(metrics_port), "--health-port", str(health_port),
             "--webhook-port", str(webhook_port), "--webhook-cert-dir", str(cert_dir), "--resync-seconds", "10"],
            env={"KUBECONFIG": str(self.workdir / "kubeconfig"), "GPUADMIT_WEBHOOK_ADDR": "127.0.0.1"},
        )
        import aiohttp

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://127.0.0.1:{health_port}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response:
                        return response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        await self.wait_for(ready, "the operator to be ready")
        if webhook_port:
            await self.wait_for(lambda: (cert_dir / "ca.crt").exists(), "the webhook certificate")
            self.admission = AdmissionClient(f"https://127.0.0.1:{webhook_port}", cert_dir / "ca.crt")
            await self.wait_for(self.admission.listening, "the admission webhooks to listen")

    async def submit_all(self, api: Api, plans: list[Plan], ledger: Ledger, screen: Screen) -> int:
        """Create each workload at its time; refresh the screen meanwhile; return how many were created."""
        submitted = 0
        pending: set[asyncio.Task[None]] = set()

        async def submit(plan: Plan) -> None:
            nonlocal submitted
            key = f"{plan.namespace}/{plan.name}"
            self.run_seconds[key] = plan.run_seconds
            sent_at = ledger.now()
            obj = workload_object(plan)
            if self.admission is not None:
                verdict = await self.admission.review(obj)
                if not verdict.allowed:
                    ledger.refused(plan, sent_at, verdict.message)
                    return
                obj = verdict.obj
            await api.must("POST", f"/apis/gpuadmit.io/v1alpha1/namespaces/{plan.namespace}/gpuworkloads", obj)
            ledger.submitted(plan, sent_at)
            submitted += 1

        refresh = 1.0 if screen.live else 0.5
        next_refresh = 0.0
        index = 0
        while True:
            now = ledger.now()
            while index < len(plans) and plans[index].at <= now:
                task = asyncio.create_task(submit(plans[index]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
            if now >= next_refresh:
                ledger.tick()
                screen.update(submitted)
                next_refresh = now + refresh
                self.check_processes()
            if now >= self.args.duration:
                break
            wake = min(next_refresh, plans[index].at if index < len(plans) else next_refresh, self.args.duration)
            await asyncio.sleep(max(0.01, wake - ledger.now()))
        for task in list(pending):  # what the server has not taken by the end is not submitted
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return submitted

    def play_kubelet(self, api: Api, event_type: str, pod: Mapping[str, Any]) -> Awaitable[None] | None:
        """Our pods: Pending -> Running on arrival; Succeeded once the run time is over (finish_pods).

        Pods are told apart by uid: a preempted workload's pods come back under the same names.
        """
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}")
        if event_type == "DELETED":
            self.running_pods.pop(uid, None)
            return None
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase != "Pending" or uid in self.running_pods or not (pod.get("spec") or {}).get("nodeName"):
            return None
        workload = f"{metadata.get('namespace')}/{(metadata.get('labels') or {}).get(WORKLOAD_LABEL)}"
        finish_at = time.monotonic() + self.run_seconds.get(workload, MIN_RUN_SECONDS)
        self.running_pods[uid] = (finish_at, dict(metadata))
        return self.set_pod_phase(api, metadata, "Running")

    async def finish_pods(self, api: Api) -> None:
        while True:
            now = time.monotonic()
            due = [uid for uid, (finish_at, _) in self.running_pods.items() if finish_at <= now]
            finished = [self.running_pods.pop(uid)[1] for uid in due]
            await asyncio.gather(*(self.set_pod_phase(api, metadata, "Succeeded") for metadata in finished))
            await asyncio.sleep(0.25)

    async def set_pod_phase(self, api: Api, metadata: Mapping[str, Any], phase: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ready = "True" if phase == "Running" else "False"
        status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": stamp}]}
        if phase == "Running":
            status["startTime"] = stamp
        path = f"/api/v1/namespaces/{metadata.get('namespace')}/pods/{metadata.get('name')}/status"
        await api.call("PATCH", path, {"status": status}, merge=True)  # 404: preempted meanwhile, fine

    # -- processes ------------------------------------------------------------------------------

    def spawn(self, name: str, command: list[str], env: Mapping[str, str] | None = None) -> None:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,  # Ctrl-C reaches us, and we stop them in order
            )
        self.processes.append((name, process, log_path))

    def check_processes(self) -> None:
        for name, process, log_path in self.processes:
            if process.poll() is not None:
                raise DemoError(f"the {name} exited with code {process.returncode}; its log ends with:\n{_tail(log_path)}")

    async def wait_for(self, condition: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            self.check_processes()
            if time.monotonic() > deadline:
                raise DemoError(f"gave up waiting for {what} after {STARTUP_DEADLINE:.0f} s")
            await asyncio.sleep(0.2)

    def stop_processes(self) -> None:
        for _, process, _ in reversed(self.processes):  # the operator first, then its API server
            stop_process(process)


async def metrics_line(url: str) -> str:
    """Proof that /metrics was served while the operator ran: how many gpuadmit samples it had."""
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                text = await response.text()
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return f"metrics: {url} not reachable ({type(error).__name__})"
    samples = sum(1 for line in text.splitlines() if line.startswith("gpuadmit_"))
    return f"metrics: {samples} gpuadmit_ samples served at {url}"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
