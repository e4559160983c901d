"""Discrete-event replay of a trace through a decider (the engine, or a peer).

The replay owns the cluster: it turns arrivals, completions and queue deadlines into
``Snapshot``s, asks the decider for one ``CycleResult`` per event time, and applies it:
admits reserve GPUs until the workload's run time is over, preemptions send the victim back
to the queue with the run time it has left (checkpointed training resumes; nothing it ran is
lost) and ``queued_since`` reset, rejects end the workload.

Fast because it only does work when something changed: a cycle runs when a workload arrives,
when GPUs are freed while work is queued, when a queued workload reaches its deadline, or when
a running one becomes old enough to preempt -- never on a timer; events at the same time are
batched into one cycle. Non-preemptible running work is folded into the nodes'
``gpus_used_by_pods`` (as the operator sees other pods), so the snapshot's ``holding`` holds only
possible preemption victims.

Every policy is scored by the same ``Policy``: margin realised is the integral over the replay
of sum(margin per GPU-hour of the product each running replica sits on x its GPUs).

With GPUQuotas (``gpuadmit simulate --quotas``) every snapshot carries them, no running work is
folded into the nodes (a tenant's usage counts all of its work), and a cycle runs whenever a
running workload becomes old enough to preempt (a guarantee may reclaim it whatever it earns).
Peers get the same snapshots and model quotas as their counterparts do (``sim/peer_quotas.py``).
Each workload of a tenant with a guarantee is marked, when it arrives, whether it is within that
guarantee then (``JobRecord.within_guarantee``, the same rule for every policy): the report's
"guaranteed workloads" are these.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from gpuadmit.core.guarantee import Tenants, Usage
from gpuadmit.core.model import (
    Action,
    GpuNode,
    Phase,
    PlacementEntry,
    Policy,
    Quota,
    Reason,
    Resources,
    Snapshot,
    Workload,
)
from gpuadmit.sim.peers import Decider
from gpuadmit.sim.trace import Trace, TraceWorkload

# A queued workload's deadline event fires this long after the deadline, so the engine's
# "waited more than max_queue_seconds" test is true when it looks.
DEADLINE_NUDGE_S = 1e-3
# Waiting longer than the limit by more than this counts as waiting past it.
WAIT_TOLERANCE_S = 1.0
# After a cycle with preemptions, victims are decided again at once (the engine does not
# re-admit a victim in the cycle that preempted it); bounded so a bad decider cannot spin.
MAX_CYCLES_PER_INSTANT = 8

ARRIVAL, COMPLETION, DEADLINE, PREEMPTIBLE = 0, 1, 2, 3


class SimulationError(RuntimeError):
    """A decider broke a rule the replay enforces (overcommit, unknown node, broken gang)."""


@dataclass(frozen=True, slots=True)
class Contender:
    """A policy in the replay: its decider and what the replay must schedule cycles for."""

    name: str
    decide: Decider
    honours_queue_timeouts: bool  # run a cycle at each queued workload's deadline
    min_runtime_before_preemption_s: float | None  # run a cycle when a victim becomes eligible


@dataclass(slots=True)
class JobRecord:
    """The life of one workload in one replay."""

    spec: TraceWorkload
    max_queue_seconds: float | None
    state: str = "future"  # future | pending | running | done | rejected
    queued_since: float = 0.0
    remaining_s: float | None = None  # None: runs until the horizon
    run_started: float | None = None
    first_admitted_at: float | None = None
    placement: tuple[PlacementEntry, ...] = ()
    generation: int = 0  # bumped on every state change, so stale events are ignored
    reject_reason: str | None = None
    preemptions: int = 0
    waited_past_max: bool = False
    margin_rate: float = 0.0  # $/hour while running
    workload: Workload | None = None
    # Within its tenant's guarantee when it arrived (``GuaranteeBook``), and the product charged.
    within_guarantee: bool = False
    guarantee_product: str | None = None

    @property
    def wait_s(self) -> float | None:
        return None if self.first_admitted_at is None else self.first_admitted_at - self.spec.submit_time


@dataclass(slots=True)
class Series:
    """Sampled after each event time: what the plots draw."""

    time: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)  # cumulative $
    busy_gpus: list[int] = field(default_factory=list)
    queued_inference: list[int] = field(default_factory=list)
    queued_training: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ReplayResult:
    policy_name: str
    jobs: list[JobRecord]
    series: Series
    horizon_s: float
    start_s: float
    total_gpus: int
    margin: float  # $ realised over the replay
    gpu_seconds: float  # GPU-seconds busy
    cycles: int
    preemptions: int
    wall_seconds: float
    cpu_seconds: float  # this process's CPU time: the honest figure on a shared machine
    guaranteed_namespaces: frozenset[str] = frozenset()  # namespaces of quotas that guarantee GPUs
    fragmented_gpu_seconds: float = 0.0  # integral of ``fragmented_gpus`` over the replay

    @property
    def fragmentation(self) -> float:
        """Share of the cluster's GPU-time fragmented (``fragmented_gpus``), over the replay."""
        span = (self.horizon_s - self.start_s) * self.total_gpus
        return self.fragmented_gpu_seconds / span if span > 0 else 0.0


def fragmented_gpus(
    free_gpus: Mapping[str, int], free_resources: Mapping[str, Mapping[str, int]], pending: Iterable[Resources],
) -> int:
    """GPUs idle on nodes whose free CPU or memory cannot host the smallest pending pod (the FGD
    paper's GPU fragmentation, by CPU and memory): the smallest pending pod asks, of each resource,
    the least any pending replica asks (so a node short of it can host no pending pod at all).
    0 when nothing is pending or no pending pod asks for CPU or memory; a resource a node does
    not list does not limit it."""
    smallest: dict[str, int] = {}
    first = True
    for requests in pending:
        asked = dict(requests)
        for resource in ("cpu", "memory"):
            amount = asked.get(resource, 0)
            smallest[resource] = amount if first else min(smallest[resource], amount)
        first = False
    if first or not any(smallest.values()):
        return 0
    return sum(
        gpus for node, gpus in free_gpus.items()
        if gpus > 0 and any(free_resources[node].get(r, amount) < amount for r, amount in smallest.items())
    )


class GuaranteeBook:
    """Which arriving workloads are within their tenant's guarantee, the same rule for every policy.

    A workload is within guarantee when it arrives if, on some product it may use (one the trace
    allows, with a node that holds a replica, priced by the policy at or above its floor, as the
    engine's options are), its GPUs fit what the tenant's guarantee leaves idle (``guarantee.Tenants.idle``: per product, then "*"),
    counting as used the GPUs the tenant's running work holds (per product it sits on) and the
    GPUs of its earlier arrivals that were within guarantee and still wait for their first
    admission (charged to the product they fitted). The tenant's usage is the policy's own, so
    each policy's guaranteed workloads are the ones *it* owed a guarantee to."""

    def __init__(self, quotas: Mapping[str, Quota], quota_of_namespace: Mapping[str, str], nodes: Iterable[GpuNode], policy: Policy) -> None:
        self.quotas = {name: quota for name, quota in quotas.items() if any(gpus > 0 for gpus in quota.guaranteed.values())}
        self.quota_of_namespace = {ns: name for ns, name in quota_of_namespace.items() if name in self.quotas}
        self.policy = policy
        self.largest_node: dict[str, int] = {}
        for node in nodes:
            self.largest_node[node.product] = max(self.largest_node.get(node.product, 0), node.allocatable)
        self.used: Usage = {name: {} for name in self.quotas}  # running GPUs + waiting guaranteed GPUs

    def _charge(self, namespace: str, product: str, gpus: int) -> None:
        name = self.quota_of_namespace.get(namespace)
        if name is not None:
            by_product = self.used[name]
            by_product[product] = by_product.get(product, 0) + gpus

    def arrive(self, job: JobRecord) -> None:
        """Mark ``job`` (arriving for the first time) within guarantee or not, and charge it if so."""
        name = self.quota_of_namespace.get(job.spec.namespace)
        if name is None:
            return
        spec = job.spec
        idle, idle_any = Tenants.idle(self.used, self.quotas[name])
        fitting = [
            product for product, largest in sorted(self.largest_node.items())
            if (not spec.products or product in spec.products) and spec.gpus <= largest
            and self.policy.margin_per_gpu_hour(spec.workload_class, spec.tier, product) >= self.policy.min_margin_per_gpu_hour
            and spec.total_gpus <= idle.get(product, 0) + idle_any
        ]
        if fitting:  # the product of its own guarantee first, so "*" stays for the rest
            job.within_guarantee = True
            job.guarantee_product = min(fitting, key=lambda p: (-idle.get(p, 0), p))
            self._charge(job.spec.namespace, job.guarantee_product, job.spec.total_gpus)

    def first_leaves_queue(self, job: JobRecord) -> None:
        """``job`` is admitted or rejected for the first time: its waiting charge ends."""
        if job.guarantee_product is not None:
            self._charge(job.spec.namespace, job.guarantee_product, -job.spec.total_gpus)
            job.guarantee_product = None

    def runs(self, job: JobRecord, products: Mapping[str, str], sign: int) -> None:
        for entry in job.placement:
            self._charge(job.spec.namespace, products[entry.node], sign * entry.gpus)


def replay(
    trace: Trace,
    policy: Policy,
    contender: Contender,
    progress: Callable[[float], None] | None = None,
    fold_non_preemptible: bool = True,
    quotas: Mapping[str, Quota] | None = None,
    quota_of_namespace: Mapping[str, str] | None = None,
) -> ReplayResult:
    """Replay ``trace`` through ``contender``; ``progress`` gets the share done (0..1) now and then.

    ``fold_non_preemptible=False`` passes every running workload in ``holding`` instead of
    folding the non-preemptible ones into the nodes: the same decisions, a bigger snapshot.
    """
    started_wall = time.perf_counter()
    started_cpu = time.process_time()
    quotas = dict(quotas or {})
    quota_of_namespace = dict(quota_of_namespace or {}) if quotas else {}
    if quotas:
        fold_non_preemptible = False  # a tenant's usage is all of its work
    base_nodes = {node.name: replace(node, gpus_used_by_pods=0) for node in trace.nodes}
    node_order = sorted(base_nodes)
    node_index = {name: index for index, name in enumerate(node_order)}
    node_views: list[GpuNode] = [base_nodes[name] for name in node_order]
    folded_used = {name: 0 for name in node_order}  # GPUs of non-preemptible running work
    folded_resources: dict[str, dict[str, int]] = {name: {} for name in node_order}  # and their CPU and memory
    free = {name: base_nodes[name].allocatable for name in node_order}
    # Free CPU and memory per node, for the resources the node lists (unlisted ones are not limited).
    free_resources = {name: dict(base_nodes[name].resources) for name in node_order}
    product_of = {name: base_nodes[name].product for name in node_order}
    total_gpus = sum(free.values())
    book = GuaranteeBook(quotas, quota_of_namespace, base_nodes.values(), policy) if quotas else None

    jobs = [JobRecord(spec=spec, max_queue_seconds=policy.default_max_queue_seconds) for spec in trace.workloads]
    by_key = {job.spec.key: job for job in jobs}
    pending: dict[str, JobRecord] = {}
    holding: dict[str, Workload] = {}  # preemptible running work, as the snapshot shows it

    events: list[tuple[float, int, int, int, int]] = []  # (time, kind, sequence, job index, generation)
    sequence = 0

    def push(at: float, kind: int, job_index: int, generation: int) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, kind, sequence, job_index, generation))

    job_index_of = {job.spec.key: index for index, job in enumerate(jobs)}
    for index, job in enumerate(jobs):
        if job.spec.submit_time <= trace.end_time:
            push(job.spec.submit_time, ARRIVAL, index, 0)

    start = jobs[0].spec.submit_time if jobs else 0.0
    start = min(start, trace.end_time)
    series = Series()
    now = start
    cumulative_margin = 0.0
    margin_rate = 0.0
    busy = 0
    busy_gpu_seconds = 0.0
    fragmented = 0  # fragmented_gpus now
    fragmented_gpu_seconds = 0.0
    queued_by_class = {"inference": 0, "training": 0}
    cycles = 0
    preemption_count = 0
    nodes_dirty = True
    nodes_tuple: tuple[GpuNode, ...] = ()
    span = max(trace.end_time - start, 1e-9)
    next_progress = 0.0

    def workload_of(job: JobRecord, phase: str | None) -> Workload:
        spec = job.spec
        return Workload(
            namespace=spec.namespace,
            name=spec.name,
            gpus_per_replica=spec.gpus,
            replicas=spec.replicas,
            workload_class=spec.workload_class,
            class_reason="from the trace",
            uid=spec.key,
            gpu_products=spec.products,
            preemptible=spec.workload_class == "training",
            max_queue_seconds=job.max_queue_seconds,
            tier=spec.tier,
            created_at=spec.submit_time,
            queued_since=job.queued_since,
            phase=phase,
            placement=job.placement,
            admitted_at=job.run_started,
            preemptions=job.preemptions,
            requests=spec.requests,
        )

    def enqueue(job: JobRecord, at: float, phase: str | None) -> None:
        job.state = "pending"
        job.queued_since = at
        job.generation += 1
        job.workload = workload_of(job, phase)
        pending[job.spec.key] = job
        queued_by_class[job.spec.workload_class] += 1
        price = policy.price_of(job.spec.workload_class, job.spec.tier)
        pending_prices[price] = pending_prices.get(price, 0) + 1
        if contender.honours_queue_timeouts and job.max_queue_seconds is not None:
            push(at + job.max_queue_seconds + DEADLINE_NUDGE_S, DEADLINE, job_index_of[job.spec.key], job.generation)

    def leave_queue(job: JobRecord) -> None:
        del pending[job.spec.key]
        if book is not None:
            book.first_leaves_queue(job)
        queued_by_class[job.spec.workload_class] -= 1
        price = policy.price_of(job.spec.workload_class, job.spec.tier)
        pending_prices[price] -= 1
        if not pending_prices[price]:
            del pending_prices[price]

    def set_folded(node: str, delta: int, resources: Resources, sign: int) -> None:
        nonlocal nodes_dirty
        folded_used[node] += delta
        used = folded_resources[node]
        for resource, amount in resources:
            used[resource] = used.get(resource, 0) + sign * amount
        node_views[node_index[node]] = replace(
            base_nodes[node], gpus_used_by_pods=folded_used[node],
            resources_used_by_pods=tuple(sorted((r, a) for r, a in used.items() if a)),
        )
        nodes_dirty = True

    def stop_running(job: JobRecord, at: float) -> None:
        nonlocal margin_rate, busy
        ran = 0.0 if job.run_started is None else at - job.run_started
        if book is not None:
            book.runs(job, product_of, -1)
        if job.remaining_s is not None:
            job.remaining_s = max(0.0, job.remaining_s - ran)
        for entry in job.placement:
            free[entry.node] += entry.gpus
            for resource, amount in entry.resources:
                if resource in free_resources[entry.node]:
                    free_resources[entry.node][resource] += amount
            if job.spec.key not in holding:
                set_folded(entry.node, -entry.gpus, entry.resources, -1)
        holding.pop(job.spec.key, None)
        margin_rate -= job.margin_rate
        busy -= job.spec.total_gpus
        job.margin_rate = 0.0
        job.placement = ()
        job.run_started = None

    def admit(job: JobRecord, placement: tuple[PlacementEntry, ...], at: float) -> None:
        nonlocal margin_rate, busy
        placed = 0
        requests = job.spec.requests
        # What each entry holds beyond GPUs, by the trace (not by what the decider says it holds).
        placement = tuple(replace(entry, resources=tuple((r, a * entry.replicas) for r, a in requests)) for entry in placement)
        for entry in placement:
            if entry.node not in free:
                raise SimulationError(f"{contender.name}: placed {job.spec.key} on unknown node {entry.node!r}")
            if entry.gpus > free[entry.node]:
                raise SimulationError(
                    f"{contender.name}: overcommit: {job.spec.key} wants {entry.gpus} GPUs on {entry.node}, {free[entry.node]} free"
                )
            for resource, amount in entry.resources:
                have = free_resources[entry.node].get(resource)
                if have is not None and amount > have:
                    raise SimulationError(
                        f"{contender.name}: overcommit: {job.spec.key} wants {amount} {resource} on {entry.node}, {have} free"
                    )
            placed += entry.gpus
        if placed != job.spec.total_gpus:
            raise SimulationError(f"{contender.name}: {job.spec.key} placed {placed} GPUs of {job.spec.total_gpus} (gang broken)")
        leave_queue(job)
        if job.max_queue_seconds is not None and at - job.queued_since > job.max_queue_seconds + WAIT_TOLERANCE_S:
            job.waited_past_max = True
        if job.first_admitted_at is None:
            job.first_admitted_at = at
        job.state = "running"
        job.generation += 1
        job.placement = tuple(placement)
        job.run_started = at
        job.workload = workload_of(job, Phase.RUNNING.value)
        if book is not None:
            book.runs(job, product_of, +1)
        folded = fold_non_preemptible and not job.workload.preemptible
        for entry in placement:
            free[entry.node] -= entry.gpus
            for resource, amount in entry.resources:
                if resource in free_resources[entry.node]:
                    free_resources[entry.node][resource] -= amount
            if folded:
                set_folded(entry.node, entry.gpus, entry.resources, +1)
        if not folded:
            holding[job.spec.key] = job.workload
        if job.workload.preemptible:
            if contender.min_runtime_before_preemption_s is not None:
                push(at + contender.min_runtime_before_preemption_s + DEADLINE_NUDGE_S, PREEMPTIBLE, job_index_of[job.spec.key], job.generation)
        job.margin_rate = sum(
            policy.margin_per_gpu_hour(job.spec.workload_class, job.spec.tier, product_of[entry.node]) * entry.gpus for entry in placement
        )
        margin_rate += job.margin_rate
        busy += job.spec.total_gpus
        if job.remaining_s is not None:
            push(at + job.remaining_s, COMPLETION, job_index_of[job.spec.key], job.generation)

    any_resources = any(node.resources for node in base_nodes.values())
    cheapest_cost = min((policy.cost_of(product) for product in set(product_of.values())), default=0.0)
    min_gain = policy.preemption.min_margin_gain_per_gpu_hour
    pending_prices: dict[float, int] = {}  # price per GPU-hour -> queued workloads at it

    def could_preempt(victim: JobRecord) -> bool:
        """Whether any queued workload could out-earn ``victim`` by the policy's gain: if none
        can, a cycle now would change nothing (capacity did not change), so it is skipped."""
        if not pending_prices:
            return False
        if quotas:
            return True  # a guarantee reclaims whatever the borrower earns
        best = max(pending_prices) - cheapest_cost
        return best >= victim.margin_rate / max(victim.spec.total_gpus, 1) + min_gain - 1e-9

    def run_cycle(at: float) -> bool:
        """One engine cycle at ``at``; True when it preempted (victims get another cycle)."""
        nonlocal cycles, preemption_count, nodes_dirty, nodes_tuple
        if nodes_dirty:
            nodes_tuple = tuple(node_views)
            nodes_dirty = False
        snapshot = Snapshot(
            nodes=nodes_tuple,
            holding=tuple(holding.values()),
            pending=tuple(job.workload for job in pending.values() if job.workload is not None),
            policy=policy,
            now=at,
            quotas=quotas,
            quota_of_namespace=quota_of_namespace,
        )
        result = contender.decide(snapshot)
        cycles += 1
        for preemption in result.preemptions:
            victim = by_key.get(preemption.key)
            if victim is None or victim.state != "running":
                raise SimulationError(f"{contender.name}: preempted {preemption.key}, which is not running")
            stop_running(victim, at)
            victim.preemptions += 1
            preemption_count += 1
            enqueue(victim, at, Phase.PREEMPTED.value)
            victim.workload = None  # decided again next cycle, not in this one's result
        for decision in result.decisions:
            job = pending.get(decision.key)
            if job is None or job.workload is None:
                continue
            if decision.action == Action.ADMIT:
                admit(job, decision.placement, at)
            elif decision.action == Action.REJECT:
                leave_queue(job)
                job.state = "rejected"
                job.generation += 1
                job.reject_reason = decision.reason.value if isinstance(decision.reason, Reason) else str(decision.reason)
        for job in pending.values():
            if job.workload is None:
                job.workload = workload_of(job, Phase.PREEMPTED.value)
        return bool(result.preemptions)

    def advance(to: float) -> None:
        nonlocal now, cumulative_margin, busy_gpu_seconds, fragmented_gpu_seconds
        if to > now:
            cumulative_margin += margin_rate * (to - now) / 3600.0
            busy_gpu_seconds += busy * (to - now)
            fragmented_gpu_seconds += fragmented * (to - now)
            now = to

    def sample() -> None:
        nonlocal fragmented
        fragmented = fragmented_gpus(free, free_resources, (job.spec.requests for job in pending.values())) if any_resources else 0
        series.time.append(now)
        series.margin.append(cumulative_margin)
        series.busy_gpus.append(busy)
        series.queued_inference.append(queued_by_class["inference"])
        series.queued_training.append(queued_by_class["training"])

    sample()
    while events and events[0][0] <= trace.end_time:
        at = events[0][0]
        advance(at)
        need_cycle = False
        while events and events[0][0] == at:
            _, kind, _, index, generation = heapq.heappop(events)
            job = jobs[index]
            if kind == ARRIVAL:
                job.remaining_s = job.spec.duration_s
                if book is not None:
                    book.arrive(job)
                enqueue(job, at, None)
                need_cycle = True
            elif kind == COMPLETION:
                if job.state == "running" and job.generation == generation:
                    stop_running(job, at)
                    job.state = "done"
                    job.generation += 1
                    need_cycle = need_cycle or bool(pending)
            elif kind == DEADLINE:
                need_cycle = need_cycle or (job.state == "pending" and job.generation == generation)
            elif kind == PREEMPTIBLE:
                need_cycle = need_cycle or (job.state == "running" and job.generation == generation and could_preempt(job))
        for _ in range(MAX_CYCLES_PER_INSTANT):
            if not (need_cycle and pending):
                break
            need_cycle = run_cycle(at)
        sample()
        if progress is not None and (at - start) / span >= next_progress:
            progress((at - start) / span)
            next_progress += 0.01
    advance(trace.end_time)
    for job in jobs:
        if job.state == "pending" and job.max_queue_seconds is not None:
            if now - job.queued_since > job.max_queue_seconds + WAIT_TOLERANCE_S:
                job.waited_past_max = True
    sample()
    if progress is not None:
        progress(1.0)
    return ReplayResult(
        policy_name=contender.name,
        jobs=jobs,
        series=series,
        horizon_s=trace.end_time,
        start_s=start,
        total_gpus=total_gpus,
        margin=cumulative_margin,
        gpu_seconds=busy_gpu_seconds,
        cycles=cycles,
        preemptions=preemption_count,
        wall_seconds=time.perf_counter() - started_wall,
        cpu_seconds=time.process_time() - started_cpu,
        fragmented_gpu_seconds=fragmented_gpu_seconds,
        guaranteed_namespaces=frozenset(
            ns for ns, name in quota_of_namespace.items() if any(g > 0 for g in quotas[name].guaranteed.values())
        ),
    )


def margin_contender(policy: Policy) -> Contender:
    """gpuadmit's own engine, exactly as the operator runs it: the incremental engine, kept for the
    whole replay (each cycle decides what the events since the last one can affect)."""
    from gpuadmit.core.engine import IncrementalEngine  # the engine is the thing under test

    rules = policy.preemption
    return Contender(
        name="margin",
        decide=IncrementalEngine().decide,
        honours_queue_timeouts=True,
        min_runtime_before_preemption_s=rules.min_runtime_seconds if rules.enabled else None,
    )


def peer_contender(name: str) -> Contender:
    from gpuadmit.core.inventory import LayoutMemo
    from gpuadmit.sim.peers import PEERS, decide_peer

    return Contender(
        name=name,
        decide=functools.partial(decide_peer, peer=PEERS[name], layouts=LayoutMemo()),
        honours_queue_timeouts=False,
        min_runtime_before_preemption_s=None,
    )


POLICY_NAMES = ("margin", "fifo", "priority", "binpack")


def contender_for(name: str, policy: Policy) -> Contender:
    if name == "margin":
        return margin_contender(policy)
    if name in POLICY_NAMES:
        return peer_contender(name)
    raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICY_NAMES)})")
