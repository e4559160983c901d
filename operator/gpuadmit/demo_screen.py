"""What `gpuadmit demo` shows: a ledger fed by watch events on GPUWorkloads, redrawn as a table
on a terminal (plain progress lines anywhere else), and the summary at the end."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from gpuadmit.core.engine import bound_by
from gpuadmit.core.model import HOLDING_PHASES
from gpuadmit.core.placement import placement_of
from gpuadmit.demo_plan import Plan
from gpuadmit.sim.report import percentile

DECISIONS_SHOWN = 6
REFUSED = "Refused"  # not a status phase: the admission webhook turned the create down

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
class ShownDecision:
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
    decisions: collections.deque[ShownDecision] = field(default_factory=lambda: collections.deque(maxlen=200))
    decision_count: int = 0
    earned: float = 0.0  # margin, in trace time
    gpu_seconds_used: float = 0.0
    last_tick: float | None = None
    held_back: int = 0  # queued or rejected decisions
    bound_by: collections.Counter[str] = field(default_factory=collections.Counter)  # of those: by the resource beside GPUs that bound

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
        placement = placement_of(obj).entries if holding else ()
        tracked.gpus_held = sum(entry.gpus for entry in placement)
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
            nodes = ", ".join(f"{entry.node}x{entry.gpus}" for entry in placement)
            self._decided("admitted", key, tracked, f"{tracked.plan.pod.gpus} GPU on {nodes}, ${tracked.margin_per_gpu_hour:.2f}/GPU-h")
        elif phase == "Queued" and before in (None, "Queued", "Preempted"):
            self._held_back(message)
            self._decided("queued", key, tracked, f"{reason}: {message}")
        elif phase == "Rejected":
            self._held_back(message)
            self._decided("rejected", key, tracked, f"{reason}: {message}")
        elif phase == "Preempted":
            self._decided("preempted", key, tracked, message)

    def _held_back(self, message: str) -> None:
        self.held_back += 1
        resource = bound_by(message)
        if resource is not None:
            self.bound_by[resource] += 1

    def _decided(self, verb: str, key: str, tracked: Tracked, detail: str) -> None:
        self.decision_count += 1
        self.decisions.append(ShownDecision(self.now(), verb, key, tracked.workload_class, detail))

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

    def waits(self, workload_class: str | None = None, namespace: str | None = None) -> list[float]:
        """Waits of the admitted workloads, of one class and/or one namespace."""
        return sorted(
            t.admitted_at - t.submitted_at
            for t in self.workloads.values()
            if t.admitted_at is not None
            and (workload_class is None or t.workload_class == workload_class)
            and (namespace is None or t.plan.namespace == namespace)
        )


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


def resources_line(ledger: Ledger) -> str:
    """How many queued or rejected decisions CPU or memory bound rather than GPUs (the engine names
    the binding resource in its message)."""
    cpu, memory = ledger.bound_by["cpu"], ledger.bound_by["memory"]
    others = sum(ledger.bound_by.values()) - cpu - memory
    line = f"bound by CPU or memory: {cpu + memory} of {ledger.held_back} queued or rejected decisions (CPU {cpu}, memory {memory})"
    return line + (f"; by other resources {others}" if others else "")


def summary(ledger: Ledger, elapsed: float, time_scale: float, guarantee: tuple[str, int] | None = None) -> list[str]:
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
    lines.append(resources_line(ledger))
    lines.append("admitted by class: " + " ".join(f"{name}={row['admitted']}" for name, row in counts.items()))
    if guarantee is not None:
        namespace, gpus = guarantee
        waits = ledger.waits(namespace=namespace)
        lines.append(f"guaranteed tenant {namespace} (GPUQuota: {gpus} GPUs of any product): {len(waits)} admitted, "
                     f"wait p50 {_seconds(percentile(waits, 0.5))}, p95 {_seconds(percentile(waits, 0.95))}")
    return lines


