"""Benchmark: single events on a settled operator at size (issue 16).

One emulated API server (a subprocess, its request audit on) with ``--nodes`` A100 nodes of 8 GPUs
and ``--workloads`` one-GPU training GPUWorkloads created before the operator starts (2,000 x
20,000 by default: 16,000 admitted, 4,000 queued). Then ``gpuadmit run`` (webhooks off, its
defaults otherwise) decides the backlog: the time from its start to the last first decision is
the figure single events are held against. Once it and its pods have settled, ``--events`` single
events, alternating, each after the previous one's writes are done:

- a pod finishing: one admitted workload's pod set to Succeeded; measured until a queued workload
  shows ``Admitted`` in its status (the freed GPU re-admitted), as a watch sees it;
- a new workload created: measured from the create call until its status shows a phase.

Figures: p50/p99/max of each kind (debounce included), the operator's status writes per event
(from the server's audit, between the event and the quiet after it), and the CPU the operator
and the server used per event (which one bounds the latency). Target (issue 16): p99 <= 0.5 s.

``python -m benchmarks.events [--nodes N] [--workloads N] [--events N] [--quick] [--keep DIR]``;
``make bench`` runs it as part "events" (with no options). docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from gpuadmit.localcluster import EmulatorProcess, OperatorProcess
from gpuadmit.sim.report import percentile

from benchmarks.e2e import (
    CREATE_CONCURRENCY,
    CRD_DIR,
    DECISION_TIMEOUT_S,
    GPUS_PER_NODE,
    GROUP_VERSION,
    LoadClient,
    api_session,
    bounded,
    cancelled,
    cpu_seconds,
    set_up_nodes_and_policy,
    wait_idle,
    workload_body,
    workloads_path,
)

NODES = 2_000
WORKLOADS = 20_000
EVENTS = 24
QUICK = (200, 2_000, 12)  # --quick: nodes, workloads, events
EVENT_TIMEOUT_S = 60.0
TARGET_P99_S = 0.5


def one_gpu_training(index: int, prefix: str) -> tuple[str, dict[str, Any]]:
    namespace, body = workload_body(3 * index + 1, prefix)  # index % 3 != 0: a training template
    body["metadata"]["name"] = f"{prefix}-{index:05d}"
    body["spec"].update(gpus=1, replicas=1, **{"class": "training"})
    return namespace, body


# -- what the watch sees ------------------------------------------------------------------------------


@dataclass
class Phases:
    """Every GPUWorkload's phase as a watch reports it, and waiters for a transition."""

    phases: dict[str, str] = field(default_factory=dict)
    waiters: list[tuple[Callable[[str, str | None, str], bool], asyncio.Future[float]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self, key: str, phase: str, at: float) -> None:
        before = self.phases.get(key)
        if before == phase:
            return
        self.phases[key] = phase
        self.changed.set()
        for predicate, future in list(self.waiters):
            if not future.done() and predicate(key, before, phase):
                future.set_result(at)

    def wait_for(self, predicate: Callable[[str, str | None, str], bool]) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters = [w for w in self.waiters if not w[1].done()] + [(predicate, future)]
        return future


async def watch_phases(api: LoadClient, resource_version: str, phases: Phases) -> None:
    while True:
        path = f"/apis/{GROUP_VERSION}/gpuworkloads?watch=true&allowWatchBookmarks=true&resourceVersion={resource_version}"
        async with api.session.get(api.url + path, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
            async for line in response.content:
                seen = time.perf_counter()
                if b'"phase"' not in line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                phase = (obj.get("status") or {}).get("phase")
                if event.get("type") in ("ADDED", "MODIFIED") and phase:
                    phases.seen(f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}", phase, seen)


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Event:
    kind: str            # "pod finished" or "workload created"
    latency_s: float
    window: tuple[float, float]  # wall clock: sent, quiet again
    operator_cpu_s: float
    server_cpu_s: float
    status_writes: int = 0
    other_writes: int = 0


@dataclass
class EventsRun:
    nodes: int
    workloads: int
    first_full_s: float = 0.0    # operator started -> every workload decided
    first_to_last_s: float = 0.0
    settled_phases: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


async def settle(pids: tuple[int, ...], quiet_s: float = 0.3) -> None:
    for pid in pids:
        await wait_idle(pid, quiet_s=quiet_s)


async def settle_backlog(api: LoadClient, phases: Phases, pids: tuple[int, ...]) -> None:
    """Until every admitted workload has its pod and both processes have been quiet a second
    (the backlog's Events and class labels go out after its statuses, at the lowest urgency)."""
    admitted = sum(1 for phase in phases.phases.values() if phase == "Admitted")
    deadline = time.monotonic() + DECISION_TIMEOUT_S
    while time.monotonic() < deadline:
        if len((await api.call("GET", "/api/v1/pods"))["items"]) >= admitted:
            break
        await asyncio.sleep(1.0)
    await settle(pids, quiet_s=1.0)


async def pod_finishes(api: LoadClient, phases: Phases, pod: dict[str, Any]) -> float:
    """Set one pod Succeeded; seconds until a Queued workload shows Admitted."""
    future = phases.wait_for(lambda key, before, after: before == "Queued" and after == "Admitted")
    metadata = pod["metadata"]
    sent = time.perf_counter()
    await api.patch(f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}/status",
                    {"status": {"phase": "Succeeded"}})
    return await asyncio.wait_for(future, EVENT_TIMEOUT_S) - sent


async def workload_created(api: LoadClient, phases: Phases, index: int) -> float:
    """Create one workload; seconds until its status shows a phase."""
    namespace, body = one_gpu_training(index, "event")
    key = f"{namespace}/{body['metadata']['name']}"
    future = phases.wait_for(lambda seen_key, _before, _after: seen_key == key)
    sent = time.perf_counter()
    await api.call("POST", workloads_path(namespace), body)
    return await asyncio.wait_for(future, EVENT_TIMEOUT_S) - sent


async def measure(url: str, kubeconfig: Path, workdir: Path, nodes: int, workloads: int, events: int,
                  server_pid: int, command: str) -> EventsRun:
    run = EventsRun(nodes, workloads)
    async with api_session(url, CREATE_CONCURRENCY + 8) as api:
        await set_up_nodes_and_policy(api, nodes)
        await bounded(CREATE_CONCURRENCY, [lambda n=namespace, b=body: api.call("POST", workloads_path(n), b)
                                           for namespace, body in (one_gpu_training(i, "w") for i in range(workloads))])
        listing = await api.call("GET", f"/apis/{GROUP_VERSION}/gpuworkloads?limit=1")
        phases = Phases()
        watcher = asyncio.create_task(watch_phases(api, listing["metadata"]["resourceVersion"], phases))
        operator = OperatorProcess(kubeconfig, workdir, command=shlex.split(command) if command else ())
        try:
            spawned = time.perf_counter()
            process = operator.launch(wait_ready=False)
            first: float | None = None
            deadline = time.monotonic() + DECISION_TIMEOUT_S
            while len(phases.phases) < workloads:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(phases.phases)} of {workloads} decided in {DECISION_TIMEOUT_S:.0f} s")
                phases.changed.clear()
                await asyncio.wait_for(phases.changed.wait(), DECISION_TIMEOUT_S)
                if first is None:
                    first = time.perf_counter()
            run.first_full_s = time.perf_counter() - spawned
            run.first_to_last_s = time.perf_counter() - (first or spawned)
            await operator.wait_ready_async(timeout=120)
            await settle_backlog(api, phases, (process.pid, server_pid))
            run.settled_phases = dict(Counter(phases.phases.values()))
            pods = [pod for pod in (await api.call("GET", "/api/v1/pods"))["items"]
                    if f"{pod['metadata']['namespace']}/{pod['metadata']['labels'].get('gpuadmit.io/workload')}"
                    in phases.phases]
            for number in range(events):
                operator_cpu, server_cpu = cpu_seconds(process.pid), cpu_seconds(server_pid)
                started = time.time()
                if number % 2 == 0:
                    kind, latency = "pod finished", await pod_finishes(api, phases, pods.pop())
                else:
                    kind, latency = "workload created", await workload_created(api, phases, number)
                await settle((process.pid, server_pid))
                run.events.append(Event(kind, latency, (started, time.time()),
                                        cpu_seconds(process.pid) - operator_cpu, cpu_seconds(server_pid) - server_cpu))
        finally:
            operator.stop()
            await cancelled(watcher)
    return run


def count_writes(audit_log: Path, run: EventsRun) -> None:
    """Each event's operator writes, from the server's audit: status patches and the rest."""
    from kubeapi_emulator.audit import read_audit_log

    for record in read_audit_log(audit_log):
        if record.get("userAgent") != "gpuadmit" or record["verb"] in ("get", "list", "watch") or "nonResourceURL" in record:
            continue
        for event in run.events:
            if event.window[0] <= record["time"] <= event.window[1]:
                if record["resource"] == "gpuworkloads" and record["subresource"] == "status":
                    event.status_writes += 1
                else:
                    event.other_writes += 1
                break


def summary(run: EventsRun) -> str:
    lines = [
        f"operator on {run.nodes} nodes x {GPUS_PER_NODE} GPUs, {run.workloads} one-GPU GPUWorkloads created before it "
        f"started: {', '.join(f'{k} {v}' for k, v in sorted(run.settled_phases.items()))}",
        f"  first full decision of the backlog  {run.first_full_s:7.2f} s from its start "
        f"({run.first_to_last_s:.2f} s from the first decision to the last)",
    ]
    worst = 0.0
    for kind, what in (("pod finished", "a pod finishing -> a queued workload Admitted in status"),
                       ("workload created", "a workload created -> its decision in status")):
        chosen = [e for e in run.events if e.kind == kind]
        if not chosen:
            continue
        latencies = sorted(e.latency_s for e in chosen)
        p99 = percentile(latencies, 0.99) or float("nan")
        worst = max(worst, p99)
        status_writes = [e.status_writes for e in chosen]
        lines += [
            f"  {what} ({len(chosen)} events)",
            f"    latency p50 {percentile(latencies, 0.5) or float('nan'):.3f} s, p99 {p99:.3f} s, max {latencies[-1]:.3f} s "
            f"({p99 / run.first_full_s:.3f} of the first full decision)",
            f"    status writes per event: mean {sum(status_writes) / len(chosen):.1f}, max {max(status_writes)}; "
            f"other writes (pods, Events, labels) mean {sum(e.other_writes for e in chosen) / len(chosen):.1f}",
            f"    CPU per event: operator {1000 * sum(e.operator_cpu_s for e in chosen) / len(chosen):.0f} ms, "
            f"API server {1000 * sum(e.server_cpu_s for e in chosen) / len(chosen):.0f} ms",
        ]
    lines.append(f"target p99 <= {TARGET_P99_S} s (debounce included): {'met' if worst <= TARGET_P99_S else 'NOT met'}")
    return "\n".join(lines)


async def run_benchmark(nodes: int, workloads: int, events: int, keep: Path | None = None,
                        command: str = "") -> tuple[EventsRun, str]:
    with tempfile.TemporaryDirectory(prefix="gpuadmit-bench-events-") as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        audit_log = workdir / "audit.jsonl"
        audit_log.unlink(missing_ok=True)
        emulator = EmulatorProcess(workdir, (CRD_DIR,), audit_log=audit_log)
        try:
            await emulator.start_async()
            pid = emulator.child.pid if emulator.child else 0
            run = await measure(emulator.url, emulator.kubeconfig, workdir, nodes, workloads, events, pid, command)
        finally:
            emulator.stop()
        count_writes(audit_log, run)
        return run, summary(run)


def main(argv: list[str] | None = None) -> int:
    """Run it and print the summary (``make bench`` calls ``main()`` with no arguments)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.events", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=NODES, help=f"GPU nodes of {GPUS_PER_NODE} GPUs (default {NODES})")
    parser.add_argument("--workloads", type=int, default=WORKLOADS, help=f"one-GPU GPUWorkloads (default {WORKLOADS})")
    parser.add_argument("--events", type=int, default=EVENTS, help=f"single events, alternating kinds (default {EVENTS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]} nodes x {QUICK[1]} workloads, {QUICK[2]} events")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR", help="keep the logs and the audit in DIR")
    parser.add_argument("--operator-command", default="", metavar="CMD",
                        help="run this instead of `python -m gpuadmit run` (the port flags are appended)")
    args = parser.parse_args(argv if argv is not None else [])
    nodes, workloads, events = QUICK if args.quick else (args.nodes, args.workloads, args.events)
    if min(nodes, workloads, events) < 1:
        parser.error("--nodes, --workloads and --events must be at least 1")
    _, text = asyncio.run(run_benchmark(nodes, workloads, events, args.keep, args.operator_command))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
