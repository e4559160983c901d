"""Benchmark: the real operator end to end against the emulated API server (issue 3).

One emulated API server (``python -m kubeapi_emulator``, a subprocess) serves three parts, with
the CRDs, the example MarginPolicy (examples/policy.yaml) and enough A100 nodes for everything
(both classes earn a margin there: every decision is an admission, the dearest kind):

1. The operator on a backlog (its throughput): 2,000 GPUWorkloads created at once while no
   operator runs, then ``gpuadmit run`` starts (webhooks off, other flags at their defaults). A
   watch timestamps the moment each workload first shows a phase in its status. Figures: start
   to first decision, first to last decision and decisions/s over that span, CPU per decision.
2. The operator live (its latency): once it is idle, 2,000 more created at once (64 in flight)
   while it runs. Figures: time from the first creation sent until every one is decided,
   decisions per second over that time, p50/p99 latency from creation (when the create call
   returned) to decision (when the watch saw the phase).
3. Bare status patches: the operator stopped, a plain client patches the status of 2,000 fresh
   GPUWorkloads (a decision-sized status each, the same watch open) at 16, 48 (the operator's
   ``--max-concurrent-writes``) and 128 in flight, three rounds each; the best round counts.

The target (issue 3) is operator decisions/s on the backlog >= half the bare patches/s, against
48 in flight and against the best level; the live ratio is printed too, with the CPU each side
used (rates on a shared machine swing with its load; CPU per request hardly does).

``python -m benchmarks.e2e [--workloads N] [--audit] [--profile] [--keep DIR]``;
``make bench`` runs it as part "e2e" (with no options). docs/benchmarks.md has the method and figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from gpuadmit.controller.http1 import Http1Pool
from gpuadmit.core.timefmt import format_rfc3339
from gpuadmit.localcluster import EmulatorProcess, OperatorProcess
from gpuadmit.sim.report import percentile

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
POLICY_FILE = REPO / "examples" / "policy.yaml"
GROUP_VERSION = "gpuadmit.io/v1alpha1"
GPU = "nvidia.com/gpu"

WORKLOADS = 2_000
NAMESPACES = 8
GPUS_PER_NODE = 8
CREATE_CONCURRENCY = 64          # tenants creating at once
OPERATOR_WRITE_CONCURRENCY = 48  # gpuadmit run --max-concurrent-writes (its default)
BARE_CONCURRENCY_LEVELS = (16, OPERATOR_WRITE_CONCURRENCY, 128)
BARE_ROUNDS = 3                  # each level measured this often; the best round counts
DECISION_TIMEOUT_S = 600.0


# -- processes ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc; 0.0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# -- the API, plainly -----------------------------------------------------------------------------


@dataclass
class LoadClient:
    """The tenants' and the bare patches' client: JSON requests over the operator's own keep-alive
    pool (so the load generator costs the shared CPU as little as the operator's requests do, and
    the bare patches are as cheap as a client can make them), watches over aiohttp."""

    url: str
    session: aiohttp.ClientSession
    pool: Http1Pool

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json", expect: tuple[int, ...] = (200, 201)) -> Any:
        answer = await self.pool.request(method, path, {"Content-Type": content_type},
                                         None if body is None else json.dumps(body).encode())
        payload = json.loads(answer.body) if answer.body else None
        if answer.status not in expect:
            raise RuntimeError(f"{method} {path}: {answer.status} {payload}")
        return payload

    async def patch(self, path: str, body: Any) -> Any:
        return await self.call("PATCH", path, body, content_type="application/merge-patch+json")


@contextlib.asynccontextmanager
async def api_session(url: str, connections: int) -> Any:
    connector = aiohttp.TCPConnector(limit=connections + 4)
    pool = Http1Pool(url, headers={"User-Agent": "gpuadmit-bench"})
    async with aiohttp.ClientSession(connector=connector, read_bufsize=2**20,
                                     headers={"User-Agent": "gpuadmit-bench"}) as session:
        try:
            yield LoadClient(url, session, pool)
        finally:
            pool.close()


async def bounded(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run every job with at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


def workloads_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    path = f"/apis/{GROUP_VERSION}/namespaces/{namespace}/gpuworkloads"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def workload_body(index: int, name_prefix: str) -> tuple[str, dict[str, Any]]:
    """A mix of small inference and training workloads (1 or 2 GPUs, one replica)."""
    namespace = f"bench-{index % NAMESPACES}"
    inference = index % 3 == 0
    container: dict[str, Any] = (
        {"name": "server", "image": "vllm/vllm-openai:v0.6.3", "ports": [{"containerPort": 8000}]}
        if inference else
        {"name": "trainer", "image": "nvcr.io/nvidia/pytorch:24.05-py3", "command": ["torchrun", "train.py"]})
    return namespace, {
        "apiVersion": GROUP_VERSION, "kind": "GPUWorkload",
        "metadata": {"name": f"{name_prefix}-{index:05d}", "namespace": namespace},
        "spec": {"class": "inference" if inference else "training", "gpus": 1 + index % 2, "replicas": 1,
                 "template": {"spec": {"containers": [container]}}},
    }


def gpus_needed(count: int) -> int:
    return sum(1 + index % 2 for index in range(count))


async def set_up_cluster(api: LoadClient, workloads: int) -> int:
    """Namespaces, the example policy, and GPU nodes for every workload plus a tenth to spare."""
    node_count = -(-gpus_needed(workloads) * 11 // 10 // GPUS_PER_NODE)
    await set_up_nodes_and_policy(api, node_count)
    return node_count


async def set_up_nodes_and_policy(api: LoadClient, node_count: int) -> None:
    """The bench namespaces, the example policy and ``node_count`` Ready A100 nodes of 8 GPUs."""
    for index in range(NAMESPACES):
        await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": f"bench-{index}"}}, expect=(201, 409))
    policy = yaml.safe_load(POLICY_FILE.read_text())
    await api.call("POST", f"/apis/{GROUP_VERSION}/marginpolicies", policy)

    async def add_node(index: int) -> None:
        name = f"gpu-node-{index:04d}"
        await api.call("POST", "/api/v1/nodes", {"metadata": {"name": name, "labels": {
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}}})
        await api.patch(f"/api/v1/nodes/{name}/status", {"status": {
            "capacity": {GPU: str(GPUS_PER_NODE), "cpu": "96", "memory": "1Ti"},
            "allocatable": {GPU: str(GPUS_PER_NODE), "cpu": "96", "memory": "1Ti"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})

    await bounded(16, [lambda index=index: add_node(index) for index in range(node_count)])


# -- part 1: the operator -------------------------------------------------------------------------


@dataclass
class BareRun:
    """Bare status patches at each concurrency level, and the server CPU they and their creations cost."""

    patches_per_s: dict[int, float] = field(default_factory=dict)
    server_cpu_per_patch_s: dict[int, float] = field(default_factory=dict)
    server_cpu_per_create_s: float = 0.0


@dataclass
class BacklogRun:
    """The operator started on a backlog: every workload created before it runs."""

    workloads: int
    creations_per_s: float = 0.0
    spawned: float = 0.0                                          # the operator process started
    decided: dict[str, float] = field(default_factory=dict)       # key -> phase first seen
    phases: dict[str, str] = field(default_factory=dict)
    operator_cpu_s: float = 0.0   # from its first decision to its last
    server_cpu_s: float = 0.0     # same span

    @property
    def first_to_last_s(self) -> float:
        return max(self.decided.values()) - min(self.decided.values())

    @property
    def decisions_per_s(self) -> float:
        """Decisions over the span from the first to the last (n decisions, n - 1 intervals)."""
        return (len(self.decided) - 1) / self.first_to_last_s if self.first_to_last_s > 0 else float("nan")

    @property
    def start_to_first_s(self) -> float:
        return min(self.decided.values()) - self.spawned


@dataclass
class OperatorRun:
    workloads: int
    nodes: int
    started: float = 0.0                                          # first create sent
    created: dict[str, float] = field(default_factory=dict)       # key -> create returned
    decided: dict[str, float] = field(default_factory=dict)       # key -> phase first seen
    phases: dict[str, str] = field(default_factory=dict)
    creation_done: float = 0.0
    wall_window: tuple[float, float] = (0.0, 0.0)  # time.time() at the first creation and the last decision
    server_cpu_s: float = 0.0     # the API server's CPU from the first creation to the last decision
    operator_cpu_s: float = 0.0   # the operator's, same span

    @property
    def makespan_s(self) -> float:
        return max(self.decided.values()) - self.started

    @property
    def decisions_per_s(self) -> float:
        return len(self.decided) / self.makespan_s

    @property
    def after_creations(self) -> tuple[int, float]:
        """(decisions, seconds) from the last creation returned to the last decision: the operator's
        pace once the server no longer also serves the burst of creations."""
        last = max(self.decided.values())
        return sum(1 for t in self.decided.values() if t > self.creation_done), last - self.creation_done

    @property
    def latencies_s(self) -> list[float]:
        return sorted(self.decided[key] - self.created[key] for key in self.decided if key in self.created)


async def watch_decisions(api: LoadClient, resource_version: str, run: OperatorRun | BacklogRun, all_decided: asyncio.Event,
                          on_first: Callable[[], None] | None = None) -> None:
    """Timestamp the first phase each workload shows, from a watch (resumed if the stream ends)."""
    while not all_decided.is_set():
        path = f"/apis/{GROUP_VERSION}/gpuworkloads?watch=true&allowWatchBookmarks=true&resourceVersion={resource_version}"
        async with api.session.get(api.url + path, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
            async for line in response.content:
                seen = time.perf_counter()
                if b'"phase"' not in line:
                    continue  # undecided (or a bookmark): not worth decoding, as in drain_watch
                event = json.loads(line)
                obj = event.get("object") or {}
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                if event.get("type") not in ("ADDED", "MODIFIED"):
                    continue
                phase = (obj.get("status") or {}).get("phase")
                key = f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
                if phase and key not in run.decided:
                    if not run.decided and on_first is not None:
                        on_first()
                    run.decided[key] = seen
                    run.phases[key] = phase
                    if len(run.decided) >= run.workloads:
                        all_decided.set()
                        return


async def measure_operator(url: str, kubeconfig: Path, workdir: Path, workloads: int, server_pid: int,
                           profile: bool = False, command: str = "") -> tuple[BacklogRun, OperatorRun]:
    """Both operator scenarios, one operator process: first its start on a backlog of ``workloads``
    (its throughput: nothing else asks anything of the server meanwhile), then, once it is idle, a
    live burst of as many more created at once (its latency, sharing the server with the tenants)."""
    async with api_session(url, CREATE_CONCURRENCY + 8) as api:
        nodes = await set_up_cluster(api, 2 * workloads)
        backlog = BacklogRun(workloads)
        started = time.perf_counter()
        await bounded(CREATE_CONCURRENCY, [lambda n=namespace, b=body: api.call("POST", workloads_path(n), b)
                                           for namespace, body in (workload_body(i, "b") for i in range(workloads))])
        backlog.creations_per_s = workloads / (time.perf_counter() - started)
        listing = await api.call("GET", f"/apis/{GROUP_VERSION}/gpuworkloads?limit=1")
        backlog_decided = asyncio.Event()
        cpu_at_first: list[float] = []
        backlog.spawned = time.perf_counter()
        # The operator as `make bench` has always measured it: webhooks off, otherwise its defaults.
        operator = OperatorProcess(kubeconfig, workdir, command=shlex.split(command) if command else ())
        try:
            process = operator.launch(wait_ready=False)  # its start-up is part of what the backlog measures

            def first_decision() -> None:
                cpu_at_first.extend((cpu_seconds(process.pid), cpu_seconds(server_pid)))
            watcher = asyncio.create_task(watch_decisions(
                api, listing["metadata"]["resourceVersion"], backlog, backlog_decided, on_first=first_decision))
            try:
                await asyncio.wait_for(backlog_decided.wait(), DECISION_TIMEOUT_S)
                backlog.operator_cpu_s = cpu_seconds(process.pid) - cpu_at_first[0]
                backlog.server_cpu_s = cpu_seconds(server_pid) - cpu_at_first[1]
            finally:
                await cancelled(watcher)
            await operator.wait_ready_async(timeout=120)
            await wait_idle(process.pid)  # the backlog's pods, Events and labels written: a clean start
            run = await measure_burst(api, workdir, workloads, nodes, server_pid, process.pid, profile)
        finally:
            operator.stop()
        return backlog, run


async def measure_burst(api: LoadClient, workdir: Path, workloads: int, nodes: int, server_pid: int, operator_pid: int,
                        profile: bool) -> OperatorRun:
    run = OperatorRun(workloads, nodes)
    profilers = [start_profiler(pid, workdir / f"{name}-profile.txt")
                 for name, pid in {"emulator": server_pid, "operator": operator_pid}.items()] if profile else []
    listing = await api.call("GET", f"/apis/{GROUP_VERSION}/gpuworkloads?limit=1")
    all_decided = asyncio.Event()
    watcher = asyncio.create_task(watch_decisions(api, listing["metadata"]["resourceVersion"], run, all_decided))
    bodies = [workload_body(index, "w") for index in range(workloads)]

    async def create(namespace: str, body: dict[str, Any]) -> None:
        await api.call("POST", workloads_path(namespace), body)
        run.created[f"{namespace}/{body['metadata']['name']}"] = time.perf_counter()

    try:
        server_cpu, operator_cpu = cpu_seconds(server_pid), cpu_seconds(operator_pid)
        run.started, wall_started = time.perf_counter(), time.time()
        await bounded(CREATE_CONCURRENCY, [lambda n=namespace, b=body: create(n, b) for namespace, body in bodies])
        run.creation_done = time.perf_counter()
        await asyncio.wait_for(all_decided.wait(), DECISION_TIMEOUT_S)
        run.wall_window = (wall_started, time.time())
        run.server_cpu_s = cpu_seconds(server_pid) - server_cpu
        run.operator_cpu_s = cpu_seconds(operator_pid) - operator_cpu
    finally:
        await cancelled(watcher)
        for profiler in profilers:
            if profiler is not None:
                stop_profiler(profiler)
    return run


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_idle(pid: int, quiet_s: float = 0.5, timeout_s: float = 120.0) -> None:
    """Until the process has used almost no CPU for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(quiet_s)
        if cpu_seconds(pid) - before < 0.05 * quiet_s:
            return


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on a process, when installed (``pip install py-spy``): collapsed stacks (one line per
    stack with its sample count, for flamegraph.pl or speedscope) in ``out``."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        print("  (--profile: py-spy is not installed in this virtualenv; pip install py-spy)")
        return None
    print(f"  profiling pid {pid} with py-spy into {out}")
    return subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--gil",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output on SIGINT (SIGTERM would lose it)."""
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()


# -- part 2: bare status patches ------------------------------------------------------------------


async def drain_watch(api: LoadClient) -> None:
    """Watch every gpuworkload change from now on and read it (as the operator run's observer does)."""
    listing = await api.call("GET", f"/apis/{GROUP_VERSION}/gpuworkloads?limit=1")
    path = f"/apis/{GROUP_VERSION}/gpuworkloads?watch=true&resourceVersion={listing['metadata']['resourceVersion']}"
    async with api.session.get(api.url + path, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
        async for line in response.content:
            if b'"phase"' in line:
                json.loads(line)


def decision_status(index: int, message: str = "admitted onto gpu-node-0001") -> dict[str, Any]:
    """A status of the size and shape the operator writes for an admitted workload."""
    now = format_rfc3339(time.time())
    return {"status": {
        "phase": "Admitted", "reason": "Admitted", "message": message,
        "class": "training", "classReason": "torchrun in the command", "marginPerGPUHour": 0.8,
        "placement": [{"node": f"gpu-node-{index % 100:04d}", "gpus": 1 + index % 2, "replicas": 1}],
        "admittedAt": now,
        "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted",
                        "message": "admitted", "lastTransitionTime": now}],
    }}


async def measure_bare_patches(url: str, workloads: int, server_pid: int, profile: bool = False,
                               workdir: Path | None = None, rounds: int = BARE_ROUNDS) -> BareRun:
    """Status patches per second at each concurrency level: ``workloads`` fresh objects, each
    patched once per round (every round changes the status); the best round counts, since on a
    shared machine a slow round measures the neighbours."""
    bare = BareRun()
    profiler = start_profiler(server_pid, (workdir or Path(".")) / "emulator-bare-profile.txt") if profile else None
    async with api_session(url, max(BARE_CONCURRENCY_LEVELS)) as api:
        # The same observer as in the operator run: a watch on gpuworkloads, so the server
        # serialises each change for one watcher in both runs (the operator's own watch is its cost).
        observer = asyncio.create_task(drain_watch(api))
        bodies = [workload_body(index, "bare") for index in range(workloads)]
        server_cpu = cpu_seconds(server_pid)
        await bounded(CREATE_CONCURRENCY, [lambda n=namespace, b=body: api.call("POST", workloads_path(n), b)
                                           for namespace, body in bodies])
        bare.server_cpu_per_create_s = (cpu_seconds(server_pid) - server_cpu) / workloads
        for round_number in range(rounds):
            for concurrency in BARE_CONCURRENCY_LEVELS:
                message = f"bare patch, round {round_number}, {concurrency} in flight"
                server_cpu = cpu_seconds(server_pid)
                started = time.perf_counter()
                await bounded(concurrency, [
                    lambda n=namespace, b=body, i=index: api.patch(
                        workloads_path(n, b["metadata"]["name"], "status"), decision_status(i, message))
                    for index, (namespace, body) in enumerate(bodies)])
                rate = workloads / (time.perf_counter() - started)
                if rate > bare.patches_per_s.get(concurrency, 0.0):
                    bare.patches_per_s[concurrency] = rate
                    bare.server_cpu_per_patch_s[concurrency] = (cpu_seconds(server_pid) - server_cpu) / workloads
        await cancelled(observer)
    if profiler is not None:
        stop_profiler(profiler)
    return bare


# -- the report -----------------------------------------------------------------------------------


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def summary(backlog: BacklogRun, run: OperatorRun, bare_run: BareRun) -> str:
    bare = bare_run.patches_per_s
    latencies = run.latencies_s
    best_level = max(bare, key=lambda level: bare[level])
    ratio_best = backlog.decisions_per_s / bare[best_level]
    ratio_same = backlog.decisions_per_s / bare[OPERATOR_WRITE_CONCURRENCY]
    burst_same = run.decisions_per_s / bare[OPERATOR_WRITE_CONCURRENCY]
    after_count, after_s = run.after_creations
    phases = Counter(run.phases.values())
    backlog_phases = ", ".join(f"{k} {v}" for k, v in sorted(Counter(backlog.phases.values()).items()))
    lines = [
        f"operator on a backlog: {backlog.workloads} GPUWorkloads created at once ({backlog.creations_per_s:.0f}/s), "
        f"then the operator started, on {run.nodes} nodes x {GPUS_PER_NODE} GPUs",
        f"  start to first decision   {backlog.start_to_first_s:7.2f} s   (interpreter, kopf, listing the cluster, the first cycle)",
        f"  first to last decision    {backlog.first_to_last_s:7.2f} s   = {backlog.decisions_per_s:.0f} decisions/s",
        f"  phases                    {backlog_phases}",
        f"  CPU per decision          operator {1000 * backlog.operator_cpu_s / backlog.workloads:.2f} ms, "
        f"API server {1000 * backlog.server_cpu_s / backlog.workloads:.2f} ms",
        f"operator live: {run.workloads} more created at once ({CREATE_CONCURRENCY} creations in flight) "
        f"while it runs",
        f"  creations took            {run.creation_done - run.started:7.2f} s",
        f"  all decided after         {run.makespan_s:7.2f} s   (from the first creation sent)",
        f"  decisions per second      {run.decisions_per_s:7.0f}",
        f"  after the last creation   {after_count} decisions in {after_s:.2f} s = "
        f"{after_count / after_s if after_s > 0 else float('nan'):.0f}/s (ratio to bare at "
        f"{OPERATOR_WRITE_CONCURRENCY} in flight: {(after_count / after_s if after_s > 0 else 0) / bare[OPERATOR_WRITE_CONCURRENCY]:.2f})",
        f"  latency creation->decision p50 {_or_nan(percentile(latencies, 0.5)):.2f} s, p99 {_or_nan(percentile(latencies, 0.99)):.2f} s, "
        f"max {latencies[-1] if latencies else float('nan'):.2f} s",
        f"  phases                    {', '.join(f'{k} {v}' for k, v in sorted(phases.items()))}",
        f"bare status patches on the same server, {run.workloads} objects, best of {BARE_ROUNDS} rounds:",
        *(f"  {level:4d} in flight            {rate:7.0f} patches/s" for level, rate in bare.items()),
        f"ratio operator on the backlog / bare: {ratio_same:.2f} against {OPERATOR_WRITE_CONCURRENCY} in flight "
        f"(the operator's limit), {ratio_best:.2f} against the best ({best_level} in flight); target >= 0.5: "
        f"{'met' if min(ratio_same, ratio_best) >= 0.5 else 'NOT met'}",
        f"ratio operator live / bare at {OPERATOR_WRITE_CONCURRENCY} in flight: {burst_same:.2f} (the tenants' "
        f"{run.workloads} creations share the one-process server and the two cores; see docs/benchmarks.md)",
        *cpu_lines(run, bare_run),
    ]
    return "\n".join(lines)


def cpu_lines(run: OperatorRun, bare: BareRun) -> list[str]:
    """What each side cost in CPU: unlike rates, this hardly depends on what else the machine runs."""
    if not run.server_cpu_s or not bare.server_cpu_per_patch_s:
        return []
    per_decision = run.server_cpu_s / run.workloads
    creation = bare.server_cpu_per_create_s
    patch = bare.server_cpu_per_patch_s[OPERATOR_WRITE_CONCURRENCY]
    operator_part = per_decision - creation
    return [
        "CPU (less sensitive to machine load than the rates):",
        f"  API server per workload, operator run  {1000 * per_decision:6.2f} ms "
        f"(of which its creation {1000 * creation:.2f} ms, the operator's requests and watches {1000 * operator_part:.2f} ms)",
        f"  API server per bare status patch       {1000 * patch:6.2f} ms  "
        f"-> server-bound ratio {patch / operator_part if operator_part > 0 else float('nan'):.2f}",
        f"  operator per decision                  {1000 * run.operator_cpu_s / run.workloads:6.2f} ms",
    ]


def request_mix(audit_log: Path, run: OperatorRun) -> str:
    """The requests the API server served between the first creation and the last decision, by
    who asked (the benchmark's client, the operator) and what (RBAC verb, resource)."""
    from kubeapi_emulator.audit import read_audit_log

    counts: dict[tuple[str, str], int] = {}
    start, end = run.wall_window
    for record in read_audit_log(audit_log):
        if not start <= record["time"] <= end or "nonResourceURL" in record:
            continue
        who = "bench" if record["userAgent"] == "gpuadmit-bench" else "operator"
        what = f"{record['verb']} {record['resource']}" + (f"/{record['subresource']}" if record["subresource"] else "")
        counts[(who, what)] = counts.get((who, what), 0) + 1
    lines = [f"requests served from the first creation to the last decision (per workload, of {run.workloads}):"]
    lines += [f"  {who:8s} {what:32s} {count:6d}  ({count / run.workloads:.2f})"
              for (who, what), count in sorted(counts.items(), key=lambda item: -item[1])]
    return "\n".join(lines)


async def run_benchmark(workloads: int = WORKLOADS, profile: bool = False, keep: Path | None = None,
                        command: str = "", audit: bool = False) -> tuple[BacklogRun, OperatorRun, BareRun, str]:
    """Both halves on one emulated server: (the operator run, the bare patches, the printed summary)."""
    with tempfile.TemporaryDirectory(prefix="gpuadmit-bench-e2e-") as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        audit_log = workdir / "audit.jsonl" if audit else None
        if audit_log is not None:
            audit_log.unlink(missing_ok=True)
        emulator = EmulatorProcess(workdir, (CRD_DIR,), audit_log=audit_log)
        try:
            await emulator.start_async()
            pid = emulator.child.pid if emulator.child else 0
            backlog, run = await measure_operator(emulator.url, emulator.kubeconfig, workdir, workloads, pid, profile, command)
            bare = await measure_bare_patches(emulator.url, workloads, pid, profile, workdir)
            text = summary(backlog, run, bare) + (f"\n{request_mix(audit_log, run)}" if audit_log is not None else "")
        finally:
            emulator.stop()
        return backlog, run, bare, text


def main(argv: list[str] | None = None) -> int:
    """Run it and print the summary (``make bench`` calls ``main()`` with no arguments)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", type=int, default=WORKLOADS, help=f"how many GPUWorkloads (default {WORKLOADS})")
    parser.add_argument("--profile", action="store_true",
                        help="record the operator and the emulator with py-spy (if installed) while deciding")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep logs (emulator, operator, profile) in DIR instead of a temporary directory")
    parser.add_argument("--operator-command", default="", metavar="CMD",
                        help="run this instead of `python -m gpuadmit run` (the port flags are appended)")
    parser.add_argument("--audit", action="store_true",
                        help="record the API server's request audit and print the request mix of the operator run")
    args = parser.parse_args(argv if argv is not None else [])
    *_, text = asyncio.run(run_benchmark(args.workloads, args.profile, args.keep, args.operator_command, args.audit))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
