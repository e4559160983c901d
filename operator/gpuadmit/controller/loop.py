"""The scheduling loop: one asyncio task that turns cache changes into decisions.

Watch events only set a flag (``trigger``); a cycle starts ``debounce_seconds``
after the first one (a change seen while the last cycle ran has already waited
that long) so a burst of a thousand creations is decided in a few cycles, not a
thousand, and runs a cycle at least once a minute (``IDLE_CYCLE_SECONDS``), and every
``resync_seconds`` a whole one, re-listing everything first, to catch whatever a watch may have missed.

One cycle, top to bottom:

1. The policy in force: the MarginPolicy named ``--policy-name``; an invalid one
   gets ``Accepted=False`` and the last good one stays in force.
2. Follow the pods of holding workloads: Running / Succeeded / Failed from the
   pods, missing pods created (an Admitted workload whose pods are not there,
   e.g. after a restart, gets its pods, never a new placement), leftover pods
   of workloads that no longer hold GPUs deleted.
3. Snapshot the cache, requeue workloads whose node went away (deleted, NotReady,
   cordoned), whose status.placement does not account for their replicas, or whose pod
   kube-scheduler has reported Unschedulable for longer than ``unschedulable_seconds``
   (controller.unschedulable: that node is then avoided for that workload a while), decide:
   one IncrementalEngine kept for the loop's life decides only what changed, and returns only
   the decisions that changed; a whole cycle at the start, after a resync, a policy or quota
   change, a failed cycle or status write, or a decision left unwritten (``_decide_incrementally``).
   Queued workloads whose shown position moved without a decision are found near the band edges.
4. Apply: preemptions first (victim status Preempted, then its pods deleted),
   then every admit, queue and reject status together. An admit's pods are
   started once its status with the placement is written (the reservation
   exists before anything can run) and are created in the background
   (``PodCreator``): the next cycle does not wait for them. Events and class
   labels follow at the lowest urgency. Only statuses that differ from the
   cached one are written.

Every write answer goes into the cache at once, and cycles are pipelined: the next cycle
thinks while the last one's writes are in flight, assuming them (controller.inflight: an
admission in flight holds its GPUs; nothing decided about a workload with a write in flight is
written), so a cycle never allocates GPUs a previous one already reserved.

Failure isolation: whatever is done for one workload (following its pods, building
them, writing its status, preempting or requeueing it) runs guarded. An error there
marks that workload Failed with reason ``InternalError`` and the error (a Failed
workload holds no GPUs; its pods are deleted next cycle) and the cycle goes on for
everyone else; an API error is only logged (the next cycle retries). A cycle that
fails as a whole logs and is retried; after ``max_failed_cycles`` such failures in a
row the loop reports itself unhealthy (``/readyz`` answers 503) until one succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpuadmit.controller import status as desired_status
from gpuadmit.controller.api import ApiError
from gpuadmit.controller.cache import NAMESPACE, NODE, POD, POLICY, QUOTA, WORKLOAD, ObjectCache, object_key
from gpuadmit.controller.inflight import InFlight
from gpuadmit.controller.native import NativeWorkloads
from gpuadmit.controller.podcreator import PodCreator, pods_for
from gpuadmit.controller.queueview import (
    DEFAULT_EXACT_HEAD,
    QueueView,
    positions_near_band_edges,
    repositioned,
    shown_position,
)
from gpuadmit.controller.settled import SettledStatuses
from gpuadmit.controller.unschedulable import UnschedulableTracker, unschedulable_condition
from gpuadmit.controller.writer import Writer
from gpuadmit.core.engine import IncrementalEngine
from gpuadmit.core.errors import SpecError
from gpuadmit.core.guarantee import quota_reports
from gpuadmit.core.livesnapshot import ChangedKeys, LiveSnapshot
from gpuadmit.core.model import (
    HOLDING_PHASES,
    PENDING_PHASES,
    Action,
    CycleResult,
    Decision,
    Phase,
    PlacementEntry,
    Policy,
    Preemption,
    Snapshot,
    Workload,
)
from gpuadmit.core.nodes import node_from_object, pod_is_terminal
from gpuadmit.core.placement import placement_of
from gpuadmit.core.pods import controlling_workload
from gpuadmit.core.podsecurity import DEFAULT_LEVEL, TemplateRules, namespace_rules
from gpuadmit.core.policy import DEFAULT_POLICY, parse_policy
from gpuadmit.core.quota import Tenancy, tenancy
from gpuadmit.core.timefmt import parse_rfc3339_or_none

logger = logging.getLogger(__name__)

MAX_PAUSE_S = 2.0
# A cycle at least this often on a quiet cluster (an incremental one, cheap): queue timeouts and
# preemption's minimum runtimes come due by the clock, and the alerts count cycles. The re-list and
# whole cycle of a resync come every ``resync_seconds`` (longer: they cost in proportion to the cluster).
IDLE_CYCLE_SECONDS = 60.0
CATCH_UP_SECONDS = 1.0  # after an echo of our own write, a cycle this soon reads what it changed


class MetricsSink(Protocol):
    """The narrow interface of ``gpuadmit.metrics.Metrics`` the loop calls."""

    def observe_cycle(self, snapshot: Snapshot, result: CycleResult, duration_s: float, whole: bool = True) -> None: ...
    def observe_status_written(self, decision: Decision, latency_s: float, admission_wait_s: float | None) -> None: ...
    def observe_preemption(self, victim_class: str, preemptor_class: str) -> None: ...
    def observe_cycle_failed(self, in_a_row: int) -> None: ...
    def observe_workload_failed(self, reason: str) -> None: ...
    def observe_native(self, actions: Mapping[tuple[str, str], int], mirrors: Mapping[tuple[str, str], int]) -> None: ...


class Gate(Protocol):
    """Whether this replica may allocate now (peering); standalone: always."""

    async def is_active(self) -> bool: ...


@dataclass(frozen=True)
class LoopSettings:
    debounce_seconds: float = 0.2
    resync_seconds: float = 600.0
    policy_name: str = "default"
    namespaces: tuple[str, ...] = ()
    pod_security_level: str = DEFAULT_LEVEL  # what templates are held to (core.podsecurity)
    max_failed_cycles: int = 5  # whole-cycle failures in a row that make the loop unhealthy (0: never)
    unschedulable_seconds: float = 120.0  # a pod Unschedulable this long requeues its workload (controller.unschedulable)
    exact_queue_positions: int = DEFAULT_EXACT_HEAD  # statuses past this queue position show its band (controller.queueview)


@dataclass
class CycleReport:
    """What one cycle did, for logs and tests."""

    decisions: int = 0
    statuses_written: int = 0
    pods_started: int = 0  # their creation goes on in the background
    pods_deleted: int = 0
    preemptions: int = 0
    requeued: int = 0
    skipped: bool = False
    duration_s: float = 0.0
    follow_s: float = 0.0  # step 2, its status writes awaited
    snapshot_s: float = 0.0
    decide_s: float = 0.0
    apply_s: float = 0.0
    whole: bool = True  # a whole cycle (False: incremental, its decisions only what changed)
    whole_reason: str = ""  # why it was whole (the engine's words), for the log
    objects_read: int = 0  # changed objects its snapshot read (core.livesnapshot)
    by_action: dict[str, int] = field(default_factory=dict)


def _phase(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status")
    return status.get("phase") if isinstance(status, Mapping) else None


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _owned_by(pod: Mapping[str, Any], workload: Mapping[str, Any]) -> bool:
    """A pod of this very workload (its controller, not an earlier workload that had the same name)."""
    controller = controlling_workload(pod)
    return controller is not None and controller[1] == _uid(workload)


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building a snapshot allocates many small objects and
    frees few, and the collector would rescan the cache's whole heap again and again for nothing
    (half a snapshot's time at 20,000 workloads). The engine's decide does the same."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


async def run_bounded(jobs: Iterable[Callable[[], Awaitable[Any]]], limit: int) -> None:
    """Run the jobs with at most ``limit`` started and not finished. Each job's own CPU work
    (building a status, encoding it) then happens as its turn comes, between answers, instead
    of all up front while the requests already sent wait to be read."""
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    await asyncio.gather(*(worker() for _ in range(max(1, limit))))


class SchedulingLoop:
    def __init__(
        self,
        cache: ObjectCache,
        writer: Writer,
        settings: LoopSettings = LoopSettings(),
        *,
        decide: Callable[[Snapshot], CycleResult] | None = None,
        metrics: MetricsSink | None = None,
        gate: Gate | None = None,
        resync: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # One incremental engine for the loop's life (core.engine.incremental); ``decide``, when
        # given (tests), is called for a whole cycle every time instead.
        self.engine: IncrementalEngine | None = IncrementalEngine() if decide is None else None
        self.cache = cache
        self.writer = writer
        self.settings = settings
        self.decide = decide if decide is not None else self._decide_incrementally
        self.metrics = metrics
        self.gate = gate
        self.resync = resync
        self.clock = clock
        self.cycles = 0  # cycles that decided (a standby replica's skipped ones do not count)
        self.attempts = 0  # cycles run or skipped: the loop is working
        self.last_cycle_monotonic: float | None = None
        self.failed_cycles_in_a_row = 0
        self.workloads_failed = 0  # workloads this loop marked Failed (refused pods, errors): for logs and tests
        self.last_report = CycleReport()
        self._wakeup = asyncio.Event()
        self._first_change_at = 0.0  # monotonic time of the first trigger since the last cycle began
        self._in_burst = False  # changes arrived while the last cycle ran (see _pause)
        self._last_good_policy: Policy | None = None
        self._warned_default_policy = False
        self._pending_since: dict[str, float] = {}  # workload key -> when a change to it was seen
        self.pods = PodCreator(cache, writer, self.trigger_later, self.fail_workload, self._template_rules)
        self.native = NativeWorkloads(cache, writer, self.trigger, clock)
        self._policy_parsed: tuple[tuple[Any, Any], Policy] | None = None
        # The snapshot kept current from the cache's changed keys: a cycle reads what changed, and
        # unchanged objects stay the same objects (the engine compares them by identity first).
        self._live = LiveSnapshot()
        self._tenancy = Tenancy()
        self.unschedulable = UnschedulableTracker(settings.unschedulable_seconds)
        self._unschedulable_timer: asyncio.TimerHandle | None = None
        self.queue_view: QueueView | None = None  # the exact queue of the last cycle, served on demand
        self.in_flight = InFlight()  # status writes of a cycle still applying (controller.inflight)
        self.settled = SettledStatuses(settings.exact_queue_positions)  # queue/reject statuses known current
        self._applying: asyncio.Task[None] | None = None  # that cycle's apply, when pipelined
        self.last_cycle_whole = True  # whether the last decision was a whole cycle
        self._whole_next: str | None = None  # why the next cycle must be whole (None: the engine may go on)
        self._decided: dict[str, Decision] = {}  # every pending workload's last decision (incremental cycles)
        self._queue_order: list[str] = []  # the queued keys in rank order, as of the last cycle
        self._queue_set: set[str] = set()  # the same keys
        self._queue_moved = 0  # at most how many places a queued workload moved in the last cycle
        self._reposition_owed: set[str] = set()  # queued, band not checked (a write was in flight)
        # Workloads whose pods step 2 and the unschedulable check look at again next cycle though
        # nothing of theirs changes: something done or awaited for them (pods being started, a
        # write, a pod unschedulable but not yet overdue). None: look at every workload.
        self._follow_again: set[str] | None = None
        self._usable_nodes: set[str] | None = None  # as of the last Node change seen
        self._usable_changed = True  # whether that change made a node usable or not (or none left)
        self._catch_up: asyncio.TimerHandle | None = None  # a cycle to read our writes' echoes

    # -- inputs -------------------------------------------------------------------------

    def notify(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """A watch event: update the cache, and wake the loop if the change can matter to a decision."""
        key = object_key(obj)
        before = self.cache.get(kind, key) if kind in (WORKLOAD, POD, QUOTA) else None
        if not self.cache.apply_event(kind, event_type, obj):
            return
        if kind == WORKLOAD:
            if event_type != "DELETED" and _phase(obj) in PENDING_PHASES:
                self._pending_since.setdefault(key, time.monotonic())
            else:
                self._pending_since.pop(key, None)
        if not self._echoes_own_write(kind, event_type, before, obj):
            if kind in (POLICY, QUOTA):
                self.whole_cycle_next("policy or quota changed")
            self.trigger()
        elif self._catch_up is None:
            # An echo changes no decision, but the next cycle still reads what it changed: a cycle
            # soon after a burst of our own writes (16,000 pods started) reads them then, not the
            # next event's cycle.
            self._catch_up = asyncio.get_running_loop().call_later(CATCH_UP_SECONDS, self._caught_up)

    def _caught_up(self) -> None:
        self._catch_up = None
        self.trigger()

    def _echoes_own_write(self, kind: str, event_type: str | None, before: Mapping[str, Any] | None,
                          obj: Mapping[str, Any]) -> bool:
        """The watch often brings our own write back before its answer arrives. Such an echo
        changes nothing the cycle that wrote it did not know, and waking the loop for it would
        cost a cycle per write: a creation of a pod we are creating; a workload whose status we
        are writing, or whose only change is our class label (same spec, not being deleted)."""
        key = object_key(obj)
        if kind == POD:
            return event_type == "ADDED" and self.pods.creating(key)
        if kind == QUOTA:  # our status write: the spec (generation) is what decisions depend on
            return (event_type == "MODIFIED" and before is not None and _uid(before) == _uid(obj)
                    and (before.get("metadata") or {}).get("generation") == (obj.get("metadata") or {}).get("generation"))
        if kind != WORKLOAD or event_type != "MODIFIED" or before is None or _uid(before) != _uid(obj):
            return False
        before_meta, after_meta = before.get("metadata") or {}, obj.get("metadata") or {}
        if (before_meta.get("generation") != after_meta.get("generation")
                or before_meta.get("deletionTimestamp") != after_meta.get("deletionTimestamp")):
            return False
        return _phase(before) == _phase(obj) or self.writer.writing_status(key)

    def whole_cycle_next(self, why: str) -> None:
        """The next cycle decides everything again (the engine's kept state is not trusted)."""
        if self._whole_next is None:
            self._whole_next = why

    def trigger(self) -> None:
        if not self._wakeup.is_set():
            self._first_change_at = time.monotonic()
            self._wakeup.set()

    # -- the task -----------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: wait for a trigger (or the resync period), debounce, run one cycle. Cycles are
        pipelined: the next one thinks while the last one's writes are in flight."""
        try:
            await self._run()
        finally:
            if self._applying is not None:
                self._applying.cancel()

    async def _run(self) -> None:
        last_resync = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=min(self.settings.resync_seconds, IDLE_CYCLE_SECONDS))
            except TimeoutError:
                pass
            await asyncio.sleep(self._pause())  # let the rest of a burst arrive
            self._wakeup.clear()
            # Resync by the clock, not by silence: a busy cluster never goes quiet for a whole period.
            if self.resync is not None and time.monotonic() - last_resync >= self.settings.resync_seconds:
                last_resync = time.monotonic()
                try:
                    await self.resync()
                except Exception:
                    logger.exception("Resync failed; deciding on the watched state")
                self.whole_cycle_next("resync")
            await self.run_cycle_safely(pipelined=True)
            self.attempts += 1
            self._in_burst = self._wakeup.is_set()  # changes arrived while it ran: a burst goes on

    def _pause(self) -> float:
        """What is left of the wait after the first change: the debounce, stretched during a burst
        (changes kept arriving while the last cycle ran) to the last cycle's thinking time (at most
        MAX_PAUSE_S), since a cycle's snapshot and decision cost time in proportion to the whole
        cluster, so the loop batches more per cycle instead of re-deciding the same queue. A
        change after a quiet spell (one pod finishing on a settled cluster) waits the debounce
        only. Its API writes are not counted: changes seen while they ran have waited already."""
        thinking_s = self.last_report.snapshot_s + self.last_report.decide_s if self._in_burst else 0.0
        wait_s = max(self.settings.debounce_seconds, min(thinking_s, MAX_PAUSE_S))
        return max(0.0, self._first_change_at + wait_s - time.monotonic())

    async def run_cycle_safely(self, pipelined: bool = False) -> CycleReport:
        try:
            report = await self.run_cycle(pipelined)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Scheduling cycle failed (%d in a row); the next change or resync retries",
                             self.failed_cycles_in_a_row + 1)
            self._cycle_failed()
            return CycleReport(skipped=True)
        if not report.skipped and not pipelined:
            self.failed_cycles_in_a_row = 0
        return report

    def _cycle_failed(self) -> None:
        self.failed_cycles_in_a_row += 1
        self.whole_cycle_next("a failed cycle")
        if self.metrics is not None:
            self.metrics.observe_cycle_failed(self.failed_cycles_in_a_row)
        self.trigger_later()

    def healthy(self) -> bool:
        """False once ``max_failed_cycles`` cycles in a row failed as a whole (until one succeeds)."""
        limit = self.settings.max_failed_cycles
        return limit <= 0 or self.failed_cycles_in_a_row < limit

    def trigger_later(self, delay: float = 1.0) -> None:
        asyncio.get_running_loop().call_later(delay, self.trigger)

    async def run_cycle(self, pipelined: bool = False) -> CycleReport:
        """One cycle. ``pipelined``: return once its decision is made and its writes are started
        (the loop's next cycle then thinks while they are in flight, assuming them:
        controller.inflight); otherwise return when they are done."""
        started = time.monotonic()
        report = CycleReport()
        if not self.cache.seeded or (self.gate is not None and not await self.gate.is_active()):
            report.skipped = True
            return report
        now = self.clock()
        failed_writes_before = self.writer.failed_status_writes
        policy = await self._policy_in_force(now)
        self._live.read_pods(self.cache.by_key(POD), self.cache.take_changed_keys(POD))
        self.pods.recount(self._live.gpus_by_node)
        if self.native.trusted or self.native.untrusted:
            await self._applied()  # native units: no overlap with the last cycle's release and hold-back
        await self.native.prepare(now)  # mirrors made, checked and kept in line with their native objects
        followed = self._to_follow()
        mark = time.monotonic()
        await self._follow_pods(now, report, followed)
        report.follow_s = time.monotonic() - mark

        mark = time.monotonic()
        in_flight = self.in_flight.keys()  # decided on assumptions: applied by a later cycle
        snapshot = self._snapshot(policy, now)
        lost = self._holding_to_requeue(snapshot)
        for key, reason_and_why in self._unschedulable_to_requeue(now, followed).items():
            lost.setdefault(key, reason_and_why)
        if lost:
            await self._requeue(lost, snapshot, now, report)
            snapshot = self._snapshot(policy, now)
        report.snapshot_s, mark = time.monotonic() - mark, time.monotonic()
        report.objects_read = self._live.objects_read
        result = self.decide(snapshot)
        whole = self.last_cycle_whole = self.engine is None or self.engine.last_full
        report.whole = whole
        report.whole_reason = self.engine.last_full_reason if self.engine is not None and whole else ""
        report.decide_s = time.monotonic() - mark
        if self.engine is None:
            self.queue_view = QueueView.of(result, now, self.cycles + 1)
        else:
            self._remember(snapshot, result, whole)
            self.queue_view = QueueView.of_queue(self._queue_order, dict(self._decided), now, self.cycles + 1)
        await self._applied()  # one cycle's writes at a time: this one's start when the last one's end
        # Decisions on workloads whose write was in flight when the snapshot was taken are left to
        # the next cycle (it decides on the answer); the rest are in flight from now on.
        applied = result if not in_flight else CycleResult(
            decisions=tuple(d for d in result.decisions if d.key not in in_flight), preemptions=result.preemptions)
        if len(applied.decisions) < len(result.decisions):
            self.trigger()
            if any(d.action != Action.ADMIT and d.key in in_flight for d in result.decisions):
                # The engine re-decides an admission it made that is still pending; another
                # decision left unwritten would not come back until the workload changes.
                self.whole_cycle_next("a decision left to the next cycle")
        if self.engine is not None and not whole:
            moved = self._moved_in_queue(applied.decisions, now, in_flight)
            if moved:
                applied = CycleResult(decisions=applied.decisions + tuple(moved), preemptions=applied.preemptions)
        self.in_flight.add(applied.decisions)
        finish = self._finish_cycle(snapshot, result, applied, now, report, started, failed_writes_before)
        if pipelined and not (result.preemptions or lost):  # victims out first: no overlap then
            self._applying = asyncio.create_task(self._finish_safely(finish), name="gpuadmit cycle apply")
            return report
        await finish
        return report

    # -- step 3b: the engine ---------------------------------------------------------------

    def _decide_incrementally(self, snapshot: Snapshot) -> CycleResult:
        """The kept engine's cycle: whole when asked for (start, resync, a policy or quota change,
        a failed cycle or write, a decision left unwritten), else only what the changes affect."""
        assert self.engine is not None
        why, self._whole_next = self._whole_next, None
        if why is not None:
            return self.engine.full(snapshot, why)
        return self.engine.decide(snapshot)  # the engine itself goes whole when it must

    def _remember(self, snapshot: Snapshot, result: CycleResult, whole: bool) -> None:
        """Every pending workload's last decision, and the queue's order, after this cycle."""
        assert self.engine is not None
        if whole:
            self._decided = {d.key: d for d in result.decisions}
            self._reposition_owed.clear()
        else:
            decided = self._decided
            for decision in result.decisions:
                decided[decision.key] = decision
            gone = decided.keys() - {w.key for w in snapshot.pending} - {w.key for w in snapshot.invalid}
            for key in gone:
                del decided[key]
        order = list(self.engine.queued())
        queued = set(order)
        # How far any queued workload may have moved: one place per arrival or departure, and per
        # workload decided again (it left its place and took another).
        self._queue_moved = len(queued ^ self._queue_set) + len(result.decisions)
        self._queue_order, self._queue_set = order, queued

    def _moved_in_queue(self, decisions: tuple[Decision, ...], now: float, in_flight: frozenset[str]) -> list[Decision]:
        """Queued workloads the cycle did not decide whose status shows another position now (an
        arrival or admission ahead moved them across a band's edge): found near the band edges
        only, not by walking the queue (controller.queueview)."""
        order = self._queue_order
        decided_now = {d.key for d in decisions}
        exact_head = self.settings.exact_queue_positions
        keys = {order[p - 1] for p in positions_near_band_edges(len(order), self._queue_moved, exact_head)}
        keys |= self._reposition_owed & self._queue_set
        self._reposition_owed = set()
        out: list[Decision] = []
        get = self.cache.get
        position_of = self.engine.queue_position if self.engine is not None else None
        for key in keys:
            if key in decided_now:
                continue
            if key in in_flight:
                self._reposition_owed.add(key)
                continue
            decision = self._decided.get(key)
            obj = get(WORKLOAD, key)
            position = position_of(key) if position_of is not None else None
            if decision is None or obj is None or position is None or decision.action != Action.QUEUE:
                continue
            status = obj.get("status")
            shown = status.get("queue") if isinstance(status, Mapping) else None
            if shown != shown_position(position, exact_head).text:
                self._decided[key] = decision = repositioned(decision, position)
                out.append(decision)
        return out

    async def _applied(self) -> None:
        """Wait for the last pipelined cycle's writes."""
        if self._applying is not None:
            await asyncio.shield(self._applying)
            self._applying = None

    async def _finish_safely(self, finish: Awaitable[CycleReport]) -> None:
        try:
            report = await finish
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Applying a scheduling cycle failed (%d in a row); the next change or resync retries",
                             self.failed_cycles_in_a_row + 1)
            self._cycle_failed()
            return
        if not report.skipped:
            self.failed_cycles_in_a_row = 0

    async def _finish_cycle(self, snapshot: Snapshot, result: CycleResult, applied: CycleResult, now: float,
                            report: CycleReport, started: float, failed_writes_before: int) -> CycleReport:
        """Step 4 (``applied``: the decisions to write) and the cycle's bookkeeping."""
        mark = time.monotonic()
        try:
            await self._apply(snapshot, applied, now, report)
        finally:
            self.in_flight.clear()  # written, failed or never started: assumed no longer
        native = await self.native.reconcile(now)  # native units released or held back as their mirrors now stand
        if self.metrics is not None:
            self.metrics.observe_native(native.actions, self.native.mirrors_by_kind_and_phase())
        try:
            await self._write_quota_statuses(snapshot, now)
        except asyncio.CancelledError:
            raise
        except Exception:  # a quota's status is a report: it never stops the cycle
            logger.exception("Writing the GPUQuota statuses failed; the decisions stand, the next cycle tries again")
        report.apply_s = time.monotonic() - mark

        report.decisions = len(result.decisions)
        report.duration_s = time.monotonic() - started
        self.cycles += 1
        self.last_cycle_monotonic = time.monotonic()
        self.last_report = report
        if self.metrics is not None:
            # The gauges describe the whole queue: an incremental cycle's result holds only what
            # changed, so they are given every pending workload's last decision.
            seen = result if self.engine is None or report.whole else CycleResult(
                decisions=tuple(self._decided.values()), preemptions=result.preemptions)
            self.metrics.observe_cycle(snapshot, seen, report.duration_s, report.whole)
        if self.writer.failed_status_writes > failed_writes_before:
            # The engine assumed its decisions written: a refused one is decided again from scratch.
            self.whole_cycle_next("a status write failed")
        if report.preemptions or report.requeued:
            self.trigger()  # victims and requeued work are pending again: decide them next
        elif self.writer.failed_status_writes > failed_writes_before:
            # A failed write (an injected 409 on an unchanged object, say) brings no watch event:
            # without this the retry would wait for the next resync.
            self.trigger_later()
        if report.statuses_written or report.pods_started or report.pods_deleted:
            logger.info(
                "Cycle %d (%s): %d decisions %s, %d statuses written, %d pods started, %d deleted, %d preempted; "
                "%.3fs (follow %.3f, snapshot %.3f, decide %.3f, apply %.3f)",
                self.cycles, self._cycle_kind(report), report.decisions, report.by_action, report.statuses_written,
                report.pods_started, report.pods_deleted, report.preemptions, report.duration_s,
                report.follow_s, report.snapshot_s, report.decide_s, report.apply_s,
            )
        return report

    def _cycle_kind(self, report: CycleReport) -> str:
        """For the cycle's log line: "incremental", or "whole: why"."""
        if not report.whole:
            return "incremental"
        return f"whole: {report.whole_reason}" if report.whole_reason else "whole"

    # -- step 1: the policy ---------------------------------------------------------------

    async def _policy_in_force(self, now: float) -> Policy | None:
        """The policy to decide with (None: the default one), and its Accepted condition written."""
        obj = self.cache.get(POLICY, self.settings.policy_name)
        if obj is None:
            if not self._warned_default_policy:
                logger.warning("No MarginPolicy named %r: deciding with the built-in default policy", self.settings.policy_name)
                self._warned_default_policy = True
            self._last_good_policy = None
            return None
        self._warned_default_policy = False
        try:
            policy = self._parsed_policy(obj)
            error_field, error_message = None, ""
            self._last_good_policy = policy
        except SpecError as error:
            error_field, error_message = error.field, error.message
        except Exception as error:  # noqa: BLE001 - never let a policy crash the loop
            error_field, error_message = "spec", f"could not be read ({type(error).__name__})"
        if error_field and self._last_good_policy is None:
            self._last_good_policy = self._accepted_before_restart(obj)
        desired = desired_status.policy_status(obj, error_field, error_message, now)
        if desired_status.status_patch(obj.get("status"), desired):
            if error_field:
                logger.warning("MarginPolicy %s is invalid (%s: %s); the last valid policy stays in force",
                               self.settings.policy_name, error_field, error_message)
            await self.writer.write_status(POLICY, obj, desired)
        return self._last_good_policy

    def _parsed_policy(self, obj: Mapping[str, Any]) -> Policy:
        """The policy object, parsed once per version: the same Policy instance from cycle to cycle
        is what lets the snapshot's ParseMemo reuse the parsed workloads."""
        metadata = obj.get("metadata") or {}
        version = (metadata.get("uid"), metadata.get("resourceVersion"))
        if self._policy_parsed is not None and version[1] and self._policy_parsed[0] == version:
            return self._policy_parsed[1]
        policy = parse_policy(obj)
        self._policy_parsed = (version, policy)
        return policy

    # -- step 2: pods -------------------------------------------------------------------

    def _to_follow(self) -> set[str] | None:
        """The workloads steps 2 and 3 look at this cycle: those whose object or pods changed since
        the last cycle (the cache keeps count) and those carried over (``_follow_again``); None
        (every workload) when a node came, went or became usable or unusable (a Node's status
        update that changes neither, as a kubelet's, is not one), a kind was re-listed, or the
        cycle is whole."""
        changed = self.cache.take_changes()
        self._usable_changed = False
        if self.cache.take_nodes_changed() or self._usable_nodes is None:
            usable = self._usable_node_names()
            self._usable_changed = usable != self._usable_nodes
            self._usable_nodes = usable
            if self._usable_changed:
                changed = None
        again, self._follow_again = self._follow_again, set()
        if (changed is None or again is None or self._whole_next is not None or self.engine is None
                or self.native.trusted or self.native.untrusted):
            return None
        return changed | again

    async def _follow_pods(self, now: float, report: CycleReport, only: set[str] | None = None) -> None:
        """Step 2 for every workload, or for those in ``only`` (the others' pods and objects are
        as they were when last followed, and nothing was left to do for them)."""
        if only is None:
            pods_by_workload = self.cache.pods_by_workload()
            workloads = {object_key(w): w for w in self.cache.all(WORKLOAD)}
        else:
            pods_by_workload = {key: pods for key in only if (pods := self.cache.pods_of(key))}
            workloads = {key: w for key in only if (w := self.cache.get(WORKLOAD, key)) is not None}
        again = self._follow_again
        usable_nodes = self._usable_nodes
        assert usable_nodes is not None  # taken by _to_follow, which runs first
        own_by_key: dict[str, list[dict[str, Any]]] = {}
        jobs: list[Awaitable[Any]] = []
        for key, pods in pods_by_workload.items():
            workload = workloads.get(key)
            if workload is None or _phase(workload) not in HOLDING_PHASES:
                leftovers = pods  # workload gone or no longer holding GPUs: none of its pods may run
            else:
                own: list[dict[str, Any]] = []
                leftovers = []
                for pod in pods:
                    (own if _owned_by(pod, workload) else leftovers).append(pod)
                own_by_key[key] = own
            for pod in leftovers:
                if not _terminating(pod) and (workload is None or not pod_is_terminal(pod)):
                    jobs.append(self._delete_pod(pod, report))
                    if again is not None:
                        again.add(key)
        for key, workload in workloads.items():
            if _phase(workload) not in HOLDING_PHASES or self.native.is_mirror(key):
                continue  # a mirror's pods are its native controller's; controller.native follows them
            pods_missing = False
            try:
                recorded = placement_of(workload)
                job = None
                if recorded.problem is None and all(entry.node in usable_nodes for entry in recorded.entries):
                    own = own_by_key.get(key, [])
                    job = self._follow_holding(workload, recorded.entries, own, now, report)
                    pods_missing = len(own) < sum(entry.replicas for entry in recorded.entries)
                # else: its node is gone or unusable, or its placement does not account for their
                # replicas; step 3 requeues it, whatever its pods say
            except Exception as error:  # noqa: BLE001 - one workload's error is that workload's
                job = self._workload_error(key, error)
            if job is not None:
                jobs.append(self._guarded(key, job))
            if again is not None and (job is not None or pods_missing):
                # Its status is being written, or pods are missing (being started, or waiting for
                # room on their node): look again. A workload whose pods are all there is looked
                # at again when one of them or its object changes (the cache keeps count).
                again.add(key)
        await asyncio.gather(*jobs)

    def _usable_node_names(self) -> set[str]:
        """Nodes that exist, are Ready and not cordoned (the engine's notion, from core.nodes)."""
        usable: set[str] = set()
        for node in self.cache.all(NODE):
            parsed = node_from_object(node, 0)
            name = (node.get("metadata") or {}).get("name")
            if isinstance(name, str) and (parsed is None or parsed.schedulable):  # no GPUs advertised is not a loss
                usable.add(name)
        return usable

    def _follow_holding(
        self, workload: Mapping[str, Any], placement: tuple[PlacementEntry, ...], pods: list[dict[str, Any]],
        now: float, report: CycleReport,
    ) -> Awaitable[None] | None:
        """What the pods of a holding workload call for: a phase to write (returned, to await with
        the others), missing pods to start (started here), or nothing (None, the usual case)."""
        replicas = sum(entry.replicas for entry in placement)
        verdict = desired_status.phase_from_pods(pods, replicas)
        phase = _phase(workload)
        if verdict is None and phase == "Running":
            live = [pod for pod in pods if not _terminating(pod)]
            if len(live) < replicas:
                names = {(pod.get("metadata") or {}).get("name") for pod in live}
                missing = [pod["metadata"]["name"] for pod in pods_for(workload, placement)
                           if pod["metadata"]["name"] not in names]
                verdict = ("Failed", desired_status.POD_DELETED, f"pod {', '.join(missing)} was deleted while running")
        if verdict is not None and verdict[0] != phase:
            return self._write_pods_phase(workload, verdict, now, report)
        if phase == "Admitted" and len(pods) < replicas and not self.pods.busy(workload):
            report.pods_started += self.pods.start(workload, placement, pods)
        return None

    async def _write_pods_phase(self, workload: Mapping[str, Any], verdict: tuple[str, str, str], now: float,
                                report: CycleReport) -> None:
        new_phase, reason, message = verdict
        desired = desired_status.pods_phase_status(workload, new_phase, reason, message, now)
        if await self._write(workload, desired, report):
            self.trigger()  # siblings of a failed pod go next cycle, with the other leftovers
            if new_phase == "Failed":
                self.writer.explain_later(workload, "Warning", reason, message)

    async def _delete_pod(self, pod: Mapping[str, Any], report: CycleReport) -> None:
        if await self.writer.delete_pod(pod):
            report.pods_deleted += 1

    # -- step 3: snapshot, lost nodes -------------------------------------------------------

    @staticmethod
    def _accepted_before_restart(policy_obj: Mapping[str, Any]) -> Policy | None:
        """The spec this policy had when it was last accepted (status.acceptedSpec), if valid."""
        accepted = (policy_obj.get("status") or {}).get("acceptedSpec")
        if not isinstance(accepted, Mapping):
            return None
        try:
            return parse_policy({**policy_obj, "spec": accepted})
        except Exception:  # noqa: BLE001 - a broken record is the same as none
            return None

    def _snapshot(self, policy: Policy | None, now: float) -> Snapshot:
        """The cache as the engine reads it, with the admissions in flight assumed; only the
        objects changed since the last snapshot are read again (core.livesnapshot)."""
        namespaces = self.cache.all(NAMESPACE)
        self._tenancy = tenancy(self.cache.all(QUOTA), namespaces)
        overrides: dict[str, dict[str, Any] | None] = dict(self.in_flight.assumed_objects(self.cache.by_key(WORKLOAD), now))
        # a GPUWorkload that claims to mirror and is not trusted is not decided
        overrides.update((key, None) for key in self.native.untrusted)
        changed = ChangedKeys(**{name: self.cache.take_changed_keys(kind)
                                 for name, kind in (("nodes", NODE), ("pods", POD), ("workloads", WORKLOAD))})
        with cyclic_gc_paused():
            return self._live.build(
                nodes=self.cache.by_key(NODE), pods=self.cache.by_key(POD), namespaces=namespaces,
                workloads=self.cache.by_key(WORKLOAD), policy=policy or DEFAULT_POLICY, now=now, changed=changed,
                overrides=overrides, pod_security_level=self.settings.pod_security_level, quotas=self._tenancy,
                avoided_nodes=self.unschedulable.avoided_nodes(now), mirrors=self.native.trusted,
                ray_jobs=self.native.ray_jobs,
            )

    async def _write_quota_statuses(self, snapshot: Snapshot, now: float) -> None:
        """Each GPUQuota's status as of this cycle's snapshot (usage before its admissions: they
        are counted once their status is written, next cycle). Only what changed is written."""
        quota_objects = self.cache.all(QUOTA)
        if not quota_objects:
            return
        tenants = self._tenancy
        reports = quota_reports(snapshot)
        writes = []
        for obj in quota_objects:
            name = str((obj.get("metadata") or {}).get("name", ""))
            desired = desired_status.quota_status(
                obj, reports.get(name), tenants.namespaces_of(name), tenants.conflicts_of(name), tenants.invalid.get(name), now)
            if desired_status.status_patch(obj.get("status"), desired):
                writes.append(self.writer.write_status(QUOTA, obj, desired))
        await asyncio.gather(*writes)

    def _holding_to_requeue(self, snapshot: Snapshot) -> dict[str, tuple[str, str]]:
        """Holding workloads placed on a node that is gone, NotReady or cordoned, or whose
        status.placement does not account for their replicas: key -> (reason, why). Only those
        read again by this snapshot, unless a node came, went or changed usability, or the cycle
        is whole (nothing else can make one lost; a requeue that failed makes the next cycle whole)."""
        by_name = {node.name: node for node in snapshot.nodes}
        lost: dict[str, tuple[str, str]] = {}
        holding: Iterable[Workload] = snapshot.holding
        if not (self._usable_changed or self._whole_next is not None or self.engine is None):
            holding = self._live.holding_read()
        for workload in holding:
            if workload.placement_problem is not None:
                lost[workload.key] = (desired_status.PLACEMENT_INVALID, workload.placement_problem)
                continue
            for entry in workload.placement:
                node = by_name.get(entry.node)
                if node is None and self.cache.get(NODE, entry.node) is None:
                    lost[workload.key] = (desired_status.NODE_UNAVAILABLE, f"node {entry.node} was deleted")
                elif node is not None and not node.schedulable:
                    lost[workload.key] = (desired_status.NODE_UNAVAILABLE,
                                          f"node {entry.node} is {node.unschedulable_reason or 'unschedulable'}")
        return lost

    def _unschedulable_to_requeue(self, now: float, only: set[str] | None = None) -> dict[str, tuple[str, str]]:
        """Holding workloads (all, or those in ``only``) with a pod kube-scheduler has found
        unschedulable for too long; a cycle is asked for when the next such pod will be overdue.
        A workload with such a pod is looked at again next cycle (``_follow_again``)."""
        if only is None or self.native.trusted:  # a mirror's pods are its unit's: not counted by workload
            holding = {object_key(w): w for w in self.cache.all(WORKLOAD) if _phase(w) in HOLDING_PHASES}
            pods_by_workload = self.cache.pods_by_workload()
        else:
            holding = {key: w for key in only
                       if (w := self.cache.get(WORKLOAD, key)) is not None and _phase(w) in HOLDING_PHASES}
            pods_by_workload = {key: self.cache.pods_of(key) for key in holding}
        own: dict[str, list[Mapping[str, Any]]] = {
            key: [pod for pod in pods if _owned_by(pod, holding[key])]
            for key, pods in pods_by_workload.items() if key in holding}
        for key, pods in self.native.released_pods_by_mirror().items():  # a mirror's are its unit's
            if key in holding:
                own[key] = pods
        overdue, next_due = self.unschedulable.overdue(own, now)
        if self._follow_again is not None:
            self._follow_again.update(key for key, pods in own.items()
                                      if any(unschedulable_condition(pod) is not None for pod in pods))
        if next_due is not None:
            if self._unschedulable_timer is not None:
                self._unschedulable_timer.cancel()
            self._unschedulable_timer = asyncio.get_running_loop().call_later(next_due + 0.1, self.trigger)
        return overdue

    async def _requeue(self, lost: dict[str, tuple[str, str]], snapshot: Snapshot, now: float, report: CycleReport) -> None:
        async def requeue_one(key: str, reason_and_why: tuple[str, str]) -> None:
            workload = self.cache.get(WORKLOAD, key)
            if workload is None:
                return
            reason, why = reason_and_why
            message = f"{why}: back in the queue, its pods deleted"
            desired = desired_status.requeued_status(workload, reason, message, now)
            if await self._write(workload, desired, report):
                report.requeued += 1
                self.writer.explain_later(workload, "Warning", reason, message)
                pods = self.cache.pods_of(key)
                await asyncio.gather(*(self._delete_pod(pod, report) for pod in pods if not _terminating(pod)))
        await asyncio.gather(*(self._guarded(key, requeue_one(key, reason_and_why))
                               for key, reason_and_why in sorted(lost.items())))

    # -- step 4: apply ------------------------------------------------------------------

    async def _apply(self, snapshot: Snapshot, result: CycleResult, now: float, report: CycleReport) -> None:
        preemptors_blocked, unreleased_nodes = await self._apply_preemptions(
            result.preemptions, result.decisions, now, report)
        admits = [d for d in result.decisions if d.action == Action.ADMIT]
        for decision in result.decisions:
            report.by_action[decision.action.value] = report.by_action.get(decision.action.value, 0) + 1
        get = self.cache.get
        settled = {d.key for d in result.decisions  # their status says it already: nothing to build or write
                   if d.action != Action.ADMIT and self.settled.unchanged(d, get(WORKLOAD, d.key))}
        others = [d for d in result.decisions if d.action != Action.ADMIT and d.key not in settled]
        for key in settled:
            self.in_flight.done(key)
        self.settled.keep_only(self._decided if self.engine is not None else {d.key for d in result.decisions})
        # The decision assumed every victim's GPUs free. Where a victim could not be preempted, no
        # admit may land on its nodes (not only its preemptor: the freed room may have been shared).
        waiting = {d.key for d in admits if d.key in preemptors_blocked
                   or any(entry.node in unreleased_nodes for entry in d.placement)}
        if waiting:
            self.whole_cycle_next("an admission waits for its victims")
            logger.info("%d admits wait: a victim changed before it could be preempted (nodes %s)",
                        len(waiting), ", ".join(sorted(unreleased_nodes)) or "-")
            self.trigger()
        # Each admit writes its reservation before its pods are started. Queue and reject writes
        # hold no GPUs, so they go out alongside.
        pods_by_workload = {d.key: self.cache.pods_of(d.key) for d in admits}  # as they are now
        guarded = self._guarded_call
        for key in waiting:
            self.in_flight.done(key)  # not written now: assumed no longer
        await run_bounded(
            [
                *(functools.partial(guarded, d.key, self._apply_admit, d, now, report, pods_by_workload.get(d.key, []))
                  for d in admits if d.key not in waiting),
                *(functools.partial(guarded, d.key, self._apply_queue_or_reject, d, now, report) for d in others),
            ],
            2 * self.writer.api.max_concurrency,
        )

    async def _apply_preemptions(
        self, preemptions: Iterable[Preemption], decisions: Iterable[Decision], now: float, report: CycleReport,
    ) -> tuple[set[str], set[str]]:
        """Victims out first. Returns the preemptors whose victims could not all be preempted and
        the nodes where such a victim still holds GPUs: admitting onto them now could put two
        workloads on the same GPUs."""
        class_of = {d.key: d.workload_class for d in decisions}
        blocked: set[str] = set()
        unreleased_nodes: set[str] = set()

        async def preempt(preemption: Preemption) -> None:
            victim = self.cache.get(WORKLOAD, preemption.key)
            if victim is None or _phase(victim) not in HOLDING_PHASES:
                blocked.add(preemption.preempted_by)
                return
            desired = desired_status.preempted_status(victim, preemption, now)
            if not await self._write(victim, desired, report):
                blocked.add(preemption.preempted_by)
                still = self.cache.get(WORKLOAD, preemption.key) or victim
                unreleased_nodes.update(entry.node for entry in placement_of(victim).entries + placement_of(still).entries)
                return
            report.preemptions += 1
            pods = [pod for pod in self.cache.pods_of(preemption.key) if not _terminating(pod)]
            await asyncio.gather(*(self._delete_pod(pod, report) for pod in pods))
            self.writer.explain_later(victim, "Warning", preemption.reason.value, desired["message"])
            if self.metrics is not None:
                victim_class = str((victim.get("status") or {}).get("class") or "unknown")
                self.metrics.observe_preemption(victim_class, class_of.get(preemption.preempted_by) or "unknown")

        async def preempt_guarded(preemption: Preemption) -> None:
            try:
                await preempt(preemption)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the victim's error is the victim's; its GPUs count as held
                blocked.add(preemption.preempted_by)
                victim = self.cache.get(WORKLOAD, preemption.key)
                unreleased_nodes.update(entry.node for entry in placement_of(victim or {}).entries)
                await self._workload_error(preemption.key, error)

        await asyncio.gather(*(preempt_guarded(p) for p in preemptions))
        return blocked, unreleased_nodes

    async def _apply_admit(
        self, decision: Decision, now: float, report: CycleReport, existing_pods: list[dict[str, Any]],
    ) -> None:
        workload = self.cache.get(WORKLOAD, decision.key)
        if workload is None:
            return
        desired = desired_status.decision_status(workload, decision, now, self.settings.exact_queue_positions)
        if not await self._write(workload, desired, report, decision):
            return
        admitted = self.cache.get(WORKLOAD, decision.key) or workload
        if not self.native.is_mirror(decision.key):  # a mirror's unit is released by controller.native
            pods = [p for p in existing_pods if _owned_by(p, admitted)]
            report.pods_started += self.pods.start(admitted, decision.placement, pods)
        self.writer.explain_later(admitted, "Normal", decision.reason.value, decision.message, decision.workload_class)

    async def _apply_queue_or_reject(self, decision: Decision, now: float, report: CycleReport) -> None:
        workload = self.cache.get(WORKLOAD, decision.key)
        if workload is None:
            return
        was_rejected = _phase(workload) == "Rejected"
        desired = desired_status.decision_status(workload, decision, now, self.settings.exact_queue_positions)
        written = await self._write(workload, desired, report, decision)
        if written is None:
            self.settled.forget(decision.key)
            return
        updated = self.cache.get(WORKLOAD, decision.key) or workload
        self.settled.settle(decision, updated)
        if decision.action == Action.REJECT and written and not was_rejected:
            self.writer.explain_later(updated, "Warning", decision.reason.value,
                                      desired_status.decision_message(decision), decision.workload_class)
        else:
            self.writer.label_later(updated, decision.workload_class)

    # -- failure isolation ------------------------------------------------------------------

    async def _guarded(self, key: str, job: Awaitable[Any]) -> None:
        """Await one workload's job; an error in it is that workload's, never the cycle's."""
        try:
            await job
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the point: the other workloads go on
            await self._workload_error(key, error)

    async def _guarded_call(self, key: str, job: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """``_guarded`` for a job started only when its turn comes (``run_bounded``): one
        decision's write, no longer in flight once it ends (whatever its outcome)."""
        try:
            await self._guarded(key, job(*args))
        finally:
            self.in_flight.done(key)

    async def _workload_error(self, key: str, error: Exception) -> None:
        if isinstance(error, ApiError):  # the API's trouble, not the workload's: the next cycle retries
            logger.warning("An API call for %s failed: %s; retrying next cycle", key, error)
            self.trigger_later()
            return
        logger.error("Handling %s failed; it is marked Failed and the cycle goes on", key, exc_info=error)
        await self.fail_workload(key, "", desired_status.INTERNAL_ERROR, desired_status.internal_error_message(error))

    def _template_rules(self, namespace: str) -> TemplateRules:
        """The pod-security rules a namespace's templates are held to now (its cached Namespace)."""
        return namespace_rules(self.cache.get(NAMESPACE, namespace), self.settings.pod_security_level)

    async def fail_workload(self, key: str, uid: str, reason: str, message: str) -> bool:
        """Mark one workload Failed with ``reason`` and ``message`` (``uid``: only that incarnation).

        Failed holds no GPUs: the next snapshot no longer counts its reservation, and its pods
        are deleted as leftovers. Never raises; True when the status was written."""
        try:
            workload = self.cache.get(WORKLOAD, key)
            if workload is None or (uid and _uid(workload) != uid) or _phase(workload) in desired_status.TERMINAL_PHASES:
                return False
            desired = desired_status.pods_phase_status(workload, Phase.FAILED.value, reason, message, self.clock())
            if not desired_status.status_patch(workload.get("status"), desired):
                return False
            if await self.writer.write_status(WORKLOAD, workload, desired) is None:
                self.trigger_later()  # the next cycle sees the fresh object and, if it still must, fails it again
                return False
            self.workloads_failed += 1
            logger.warning("Workload %s failed: %s: %s", key, reason, message)
            self.writer.explain_later(workload, "Warning", reason, message)
            if self.metrics is not None:
                self.metrics.observe_workload_failed(reason)
            self.trigger()  # its pods go next cycle, and its GPUs to whoever waits
            return True
        except asyncio.CancelledError:
            raise
        except Exception:  # even this must not stop the others (logged with its traceback)
            logger.exception("Could not mark %s Failed", key)
            return False

    async def _write(
        self, workload: Mapping[str, Any], desired: Mapping[str, Any], report: CycleReport,
        decision: Decision | None = None,
    ) -> bool | None:
        """Write a workload's status if it differs. True: written; False: nothing to write;
        None: the write failed (the cache holds a fresh copy; the next cycle decides again)."""
        if not desired_status.status_patch(workload.get("status"), desired):
            return False
        updated = await self.writer.write_status(WORKLOAD, workload, desired)
        if updated is None:
            self.trigger()
            return None
        report.statuses_written += 1
        if decision is not None:
            self._observe_written(workload, decision)
        return True

    def _observe_written(self, workload: Mapping[str, Any], decision: Decision) -> None:
        seen = self._pending_since.pop(decision.key, None)
        if self.metrics is None:
            return
        latency = time.monotonic() - seen if seen is not None else 0.0
        wait = None
        if decision.action == Action.ADMIT:
            status = found if isinstance(found := workload.get("status"), Mapping) else {}
            since = parse_rfc3339_or_none(status.get("queuedSince")) or parse_rfc3339_or_none(
                (workload.get("metadata") or {}).get("creationTimestamp"))
            wait = max(0.0, self.clock() - since) if since is not None else None
        self.metrics.observe_status_written(decision, latency, wait)
