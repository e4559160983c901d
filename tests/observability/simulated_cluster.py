"""A small GPU cluster that lives through engine cycles, feeding a ``Metrics`` as the operator would.

Each cycle: new workloads arrive, the real engine (``gpuadmit.core.engine.decide``)
decides, and the decisions are applied the way the writer applies them (admits hold
GPUs, victims wait again, rejections leave). The cluster keeps its own ledger of what
was decided and written, so tests can compare what Prometheus reports with what
actually happened. Deterministic: a seeded random generator and a simulated clock.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from gpuadmit.core.model import (
    Action,
    CycleResult,
    GpuNode,
    InvalidWorkload,
    Phase,
    Policy,
    PreemptionRules,
    Quota,
    Snapshot,
    Workload,
)
from gpuadmit.metrics import Metrics

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
# The research team is guaranteed 8 A100s (lent to preemptible work while idle).
QUOTAS = {"research": Quota("research", {A100: 8})}
CYCLE_SECONDS = 120.0  # simulated time between cycles: long enough for waits of minutes to hours

POLICY = Policy(
    gpu_cost_per_hour={A100: 1.60, H100: 2.40, L4: 0.50, "default": 1.20},
    price_per_gpu_hour={"inference": 6.00, "training": 2.00},
    tier_multipliers={"gold": 1.5, "discount": 0.5},
    min_margin_per_gpu_hour=0.2,
    preemption=PreemptionRules(enabled=True, min_runtime_seconds=600.0, min_margin_gain_per_gpu_hour=0.5),
    default_max_queue_seconds=86400.0,
)


@dataclass
class Ledger:
    """What the cycles decided, as the writer would have written it."""

    admitted: int = 0
    admitted_by_class: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    queue_decisions: int = 0
    preemptions: int = 0
    cycles: int = 0
    api_errors: int = 0
    # status.marginPerGPUHour of each workload now holding GPUs, with its GPUs
    margin_written: dict[str, tuple[float, int]] = field(default_factory=dict)


class SimulatedCluster:
    def __init__(self, metrics: Metrics, decide: Callable[[Snapshot], CycleResult], seed: int = 7) -> None:
        self.metrics = metrics
        self.decide = decide
        self.random = random.Random(seed)
        self.now = 1_800_000_000.0
        self.nodes = [
            *(GpuNode(f"a100-{i}", 8, A100) for i in range(3)),
            *(GpuNode(f"h100-{i}", 8, H100) for i in range(2)),
            GpuNode("l4-0", 4, L4),
            GpuNode("h100-cordoned", 8, H100, schedulable=False, unschedulable_reason="cordoned"),
        ]
        self.foreign_pod_gpus = {"a100-0": 1}  # someone else's GPU pod
        self.holding: dict[str, Workload] = {}
        self.pending: dict[str, Workload] = {}
        self.invalid: list[InvalidWorkload] = []
        self.finishes_at: dict[str, float] = {}
        self.last_outcome: dict[str, tuple[Action, str]] = {}
        self.ledger = Ledger()
        self.serial = 0

    # --- arrivals -----------------------------------------------------------------------

    def _arrive(self, workload_class: str, gpus: int, replicas: int = 1, **extra: object) -> None:
        self.serial += 1
        namespace = self.random.choice(["team-a", "team-b", "research"])
        fields: dict[str, object] = {"max_queue_seconds": POLICY.default_max_queue_seconds, **extra}
        workload = Workload(
            namespace=namespace, name=f"{workload_class[:5]}-{self.serial}", gpus_per_replica=gpus,
            replicas=replicas, workload_class=workload_class,  # type: ignore[arg-type]
            preemptible=workload_class == "training", created_at=self.now, queued_since=self.now,
            **fields,  # type: ignore[arg-type]
        )
        self.pending[workload.key] = workload

    def arrivals(self, cycle: int) -> None:
        for _ in range(self.random.randint(1, 3)):
            if self.random.random() < 0.4:
                self._arrive("inference", self.random.choice([1, 2, 4]))
            else:
                self._arrive("training", self.random.choice([2, 4, 8]), replicas=self.random.choice([1, 1, 2]))
        if cycle % 6 == 2:  # a request no node can hold
            self._arrive("training", 16)
        if cycle % 6 == 4:  # a discounted tier whose training margin is below the floor
            self._arrive("training", 1, tier="discount")
        if cycle % 8 == 5:  # impatient work that will time out in a full cluster
            self._arrive("training", 8, replicas=2, max_queue_seconds=CYCLE_SECONDS * 2)
        if cycle == 3:
            self.invalid.append(InvalidWorkload("team-b", "broken", "spec.gpus", "must be a positive integer"))

    # --- a cycle ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        own: dict[tuple[str, str], int] = {}
        used = dict(self.foreign_pod_gpus)
        for workload in self.holding.values():
            for entry in workload.placement:
                own[(workload.key, entry.node)] = entry.gpus
                used[entry.node] = used.get(entry.node, 0) + entry.gpus
        nodes = tuple(replace(node, gpus_used_by_pods=used.get(node.name, 0)) for node in self.nodes)
        return Snapshot(nodes=nodes, holding=tuple(self.holding.values()), pending=tuple(self.pending.values()),
                        policy=POLICY, now=self.now, invalid=tuple(self.invalid), gpus_of_own_pods=own,
                        quotas=QUOTAS, quota_of_namespace={"research": "research"})

    def run_cycle(self, cycle: int) -> CycleResult:
        self.now += CYCLE_SECONDS
        for key in [k for k, at in self.finishes_at.items() if at <= self.now and k in self.holding]:
            del self.holding[key]  # finished: Succeeded, leaves the books
            self.ledger.margin_written.pop(key, None)
        for key, workload in list(self.holding.items()):
            if workload.phase == Phase.ADMITTED.value:  # its pods started
                self.holding[key] = replace(workload, phase=Phase.RUNNING.value)
        self.arrivals(cycle)

        snapshot = self.snapshot()
        event_at = time.monotonic()
        started = time.perf_counter()
        result = self.decide(snapshot)
        self.metrics.observe_cycle(snapshot, result, time.perf_counter() - started)
        self.ledger.cycles += 1
        self.apply(snapshot, result, event_at)
        if cycle % 5 == 0:  # the writer lost a race with another client
            self.metrics.observe_api_error("patch", 409)
            self.ledger.api_errors += 1
        return result

    def apply(self, snapshot: Snapshot, result: CycleResult, event_at: float) -> None:
        classes = {w.key: w.workload_class for w in (*snapshot.holding, *snapshot.pending)}
        for preemption in result.preemptions:
            victim = self.holding.pop(preemption.key)
            self.pending[victim.key] = replace(victim, phase=Phase.PREEMPTED.value, placement=(),
                                               admitted_at=None, queued_since=self.now,
                                               preemptions=victim.preemptions + 1)
            self.ledger.margin_written.pop(victim.key, None)
            self.ledger.preemptions += 1
            self.metrics.observe_preemption(classes[victim.key], classes.get(preemption.preempted_by, ""))
        for decision in result.decisions:
            outcome = (decision.action, decision.reason.value)
            changed = self.last_outcome.get(decision.key) != outcome
            self.last_outcome[decision.key] = outcome
            workload = self.pending.get(decision.key)
            if decision.action is Action.ADMIT and workload is not None:
                del self.pending[decision.key]
                del self.last_outcome[decision.key]
                gpus = sum(entry.gpus for entry in decision.placement)
                self.holding[decision.key] = replace(workload, phase=Phase.ADMITTED.value,
                                                     placement=decision.placement, admitted_at=self.now)
                self.finishes_at[decision.key] = self.now + self.random.choice([2, 4, 8, 30]) * CYCLE_SECONDS
                self.ledger.admitted += 1
                cls = workload.workload_class
                self.ledger.admitted_by_class[cls] = self.ledger.admitted_by_class.get(cls, 0) + 1
                self.ledger.margin_written[decision.key] = (decision.margin_per_gpu_hour or 0.0, gpus)
                self.metrics.observe_status_written(decision, time.monotonic() - event_at,
                                                    self.now - workload.queued_since)
            elif decision.action is Action.REJECT:
                self.pending.pop(decision.key, None)
                self.last_outcome.pop(decision.key, None)
                self.invalid = [w for w in self.invalid if w.key != decision.key]
                reason = decision.reason.value
                self.ledger.rejected_by_reason[reason] = self.ledger.rejected_by_reason.get(reason, 0) + 1
                self.metrics.observe_status_written(decision, time.monotonic() - event_at, None)
            elif decision.action is Action.QUEUE and workload is not None:
                self.pending[decision.key] = replace(workload, phase=Phase.QUEUED.value)
                if changed:  # the writer only writes a status that changed
                    self.ledger.queue_decisions += 1
                    self.metrics.observe_status_written(decision, time.monotonic() - event_at, None)

    # --- what the books say now -----------------------------------------------------------

    def reserved_gpus(self) -> int:
        return sum(entry.gpus for workload in self.holding.values() for entry in workload.placement)

    def queued(self) -> int:
        return len(self.pending)

    def margin_per_hour_written(self) -> float:
        return sum(margin * gpus for margin, gpus in self.ledger.margin_written.values())
