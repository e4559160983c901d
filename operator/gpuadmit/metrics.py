"""Prometheus metrics for gpuadmit, and the ``/metrics`` server.

The operator calls these methods on a ``Metrics`` object: ``observe_cycle`` after
every engine cycle, ``observe_cycle_failed`` after a cycle that failed as a whole,
``observe_status_written`` after every status write, ``observe_preemption``,
``observe_workload_failed`` and ``observe_api_error``. Everything else is derived here.

Two kinds of metrics:

- Events (counters, histograms): decisions, preemptions, API errors, waits and
  latencies. Counters whose label values are known up front are initialised at
  zero, so every dashboard query has data and ``rate()`` sees the first event.
- State (gauges): workloads by phase, queue depth, GPUs by product and state,
  margin per hour. They are computed from the snapshot *as the cycle's decisions
  leave it* (``gauges_after_cycle``, a pure function) and published as one
  immutable object, so a scrape never sees half a cycle or a stale label set.

Label values are bounded: actions, classes, reasons, GPU products, verbs, HTTP
codes, and GPUQuota names (bounded by the objects an admin creates). Workload,
namespace and node names never become labels, except the namespace in the
opt-in ``per_namespace`` metrics.
"""

from __future__ import annotations

import functools
import logging
import platform
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpuadmit import __version__
from gpuadmit.controller.status import WORKLOAD_FAILURE_REASONS  # pure: reasons the operator gives
from gpuadmit.core.guarantee import Tenants, held_by_quota, quota_reports
from gpuadmit.core.inventory import Inventory
from gpuadmit.core.model import (
    CLASSES,
    Action,
    CycleResult,
    Decision,
    GpuNode,
    Phase,
    PlacementEntry,
    Policy,
    Reason,
    Snapshot,
    Workload,
)
from gpuadmit.core.native import NATIVE_ACTIONS, UnitKind

logger = logging.getLogger(__name__)

# Decisions on unparseable workloads carry no class.
UNKNOWN_CLASS = "unknown"
# Nodes without the nvidia.com/gpu.product label.
UNKNOWN_PRODUCT = "unknown"

GPU_STATES = ("allocatable", "reserved", "used_by_others", "free", "unavailable")
QUOTA_STATES = ("guaranteed", "used", "lent")
# Phases a workload can be in while gpuadmit still tracks it (terminal phases leave the snapshot).
# A mirror's phase, "Pending" before its first decision (gpuadmit_native_mirrors).
MIRROR_PHASES = ("Pending", *(phase.value for phase in Phase))
LIVE_PHASES = (Phase.QUEUED.value, Phase.ADMITTED.value, Phase.RUNNING.value, Phase.PREEMPTED.value)
# Queued work that waits for capacity, as opposed to waiting by policy (reserve, margin floor).
CAPACITY_REASONS = frozenset({Reason.INSUFFICIENT_CAPACITY, Reason.NO_NODE_CAN_FIT})

# Queue waits run from seconds (an idle cluster) to days (training behind a busy fleet).
ADMISSION_WAIT_BUCKETS = (
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800,
)
# Event-to-status-written: milliseconds when healthy, seconds under API pressure.
DECISION_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# One engine cycle: sub-millisecond on a small cluster, seconds at thousands of workloads.
CYCLE_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class ClusterGauges:
    """What the cluster looks like once a cycle's decisions are applied."""

    workloads: Mapping[tuple[str, str], int]  # (phase, class) -> count
    queue_depth: Mapping[str, int]  # class -> workloads waiting for GPUs
    oldest_queued_age_seconds: Mapping[str, float]  # class -> age; 0 when none
    gpus: Mapping[tuple[str, str], int]  # (product, state) -> GPUs
    margin_earned_per_hour: Mapping[str, float]  # class -> margin/h of admitted and running work
    margin_queued_per_hour: Mapping[str, float]  # reason -> margin/h waiting in the queue
    smallest_capacity_blocked_request: int | None  # GPUs; None when nothing waits for capacity
    pending_considered: int
    queued_by_namespace: Mapping[str, int] = field(default_factory=dict)
    reserved_by_namespace: Mapping[str, int] = field(default_factory=dict)
    quota_gpus: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # (quota, product, state) -> GPUs
    unmet_guarantee_seconds: Mapping[str, float] = field(default_factory=dict)  # quota -> longest wait; 0 when none


def _product_of(node: GpuNode) -> str:
    return node.product or UNKNOWN_PRODUCT


def _placed_margin_per_hour(policy: Policy, workload: Workload, placement: Iterable[PlacementEntry],
                            products: Mapping[str, str]) -> float:
    """Margin per hour a placement earns: each node's GPUs at that product's cost."""
    return sum(
        policy.margin_per_gpu_hour(workload.workload_class, workload.tier, products.get(entry.node, "default"))
        * entry.gpus
        for entry in placement
    )


def _waiting_margin_per_hour(policy: Policy, workload: Workload, decision: Decision | None,
                             cluster_products: Iterable[str]) -> float:
    """Margin per hour a waiting workload would earn: the engine's figure, else the best product it may use."""
    if decision is not None and decision.margin_per_gpu_hour is not None:
        return decision.margin_per_gpu_hour * workload.total_gpus
    candidates = list(workload.gpu_products) or [p for p in cluster_products if p] or ["default"]
    best = max(policy.margin_per_gpu_hour(workload.workload_class, workload.tier, p) for p in candidates)
    return best * workload.total_gpus


def gauges_after_cycle(snapshot: Snapshot, result: CycleResult, per_namespace: bool = False,
                       admitted_margin_per_gpu_hour: Mapping[str, float] | None = None) -> ClusterGauges:
    """The state gauges after ``result`` is applied to ``snapshot`` (pure).

    Holding workloads keep their GPUs unless preempted this cycle; admits add
    theirs; victims go back to waiting (phase Preempted); queue decisions wait.

    Margin earned is what the admit decisions said (``marginPerGPUHour`` in
    status) times the GPUs held: this cycle's admits from their decision, held
    work from ``admitted_margin_per_gpu_hour`` (workload key -> the figure of
    its admission). Held work missing there (admitted before a restart) is
    priced by the policy on the product of each node it occupies.
    """
    admitted_margin = admitted_margin_per_gpu_hour or {}
    products = {node.name: _product_of(node) for node in snapshot.nodes}
    pending_by_key = {w.key: w for w in snapshot.pending}
    victims = {p.key for p in result.preemptions}
    policy = snapshot.policy

    workloads: Tally[tuple[str, str]] = Tally({(phase, cls): 0 for phase in LIVE_PHASES for cls in CLASSES})
    queue_depth: Tally[str] = Tally({cls: 0 for cls in CLASSES})
    oldest_queued: dict[str, float] = {cls: 0.0 for cls in CLASSES}
    reserved_by_node: Tally[str] = Tally()
    margin_earned: dict[str, float] = {cls: 0.0 for cls in CLASSES}
    # Every reason work can wait for is exported, zero or not, so sums always have data.
    margin_queued: dict[str, float] = {r.value: 0.0 for r in Reason if r is not Reason.ADMITTED}
    smallest_blocked: int | None = None
    queued_by_namespace: Tally[str] = Tally()
    reserved_by_namespace: Tally[str] = Tally()

    def wait(workload: Workload, reason: Reason, margin_per_hour: float, queued_since: float) -> None:
        cls = workload.workload_class
        queue_depth[cls] += 1
        oldest_queued[cls] = max(oldest_queued[cls], snapshot.now - queued_since)
        margin_queued[reason.value] = margin_queued.get(reason.value, 0.0) + margin_per_hour
        if per_namespace:
            queued_by_namespace[workload.namespace] += 1

    def held_margin_per_hour(workload: Workload) -> float:
        if workload.margin_per_gpu_hour is not None:  # status.marginPerGPUHour: survives restarts
            return workload.margin_per_gpu_hour * sum(entry.gpus for entry in workload.placement)
        if workload.key in admitted_margin:
            return admitted_margin[workload.key] * sum(entry.gpus for entry in workload.placement)
        return _placed_margin_per_hour(policy, workload, workload.placement, products)

    def hold(workload: Workload, placement: tuple[PlacementEntry, ...], margin_per_hour: float) -> None:
        for entry in placement:
            reserved_by_node[entry.node] += entry.gpus
            if per_namespace:
                reserved_by_namespace[workload.namespace] += entry.gpus
        margin_earned[workload.workload_class] += margin_per_hour

    victim_reasons = {p.key: p.reason for p in result.preemptions}
    for workload in snapshot.holding:
        if workload.key in victims:
            workloads[(Phase.PREEMPTED.value, workload.workload_class)] += 1
            # A victim's aging restarts at its preemption, which is now.
            wait(workload, victim_reasons[workload.key], held_margin_per_hour(workload), queued_since=snapshot.now)
            continue
        phase = workload.phase if workload.phase in (Phase.ADMITTED.value, Phase.RUNNING.value) else Phase.ADMITTED.value
        workloads[(phase, workload.workload_class)] += 1
        hold(workload, workload.placement, held_margin_per_hour(workload))

    for decision in result.decisions:
        if decision.key not in pending_by_key:  # invalid specs: rejected, nothing to hold or wait
            continue
        workload = pending_by_key[decision.key]
        if decision.action is Action.ADMIT:
            workloads[(Phase.ADMITTED.value, workload.workload_class)] += 1
            if decision.margin_per_gpu_hour is not None:
                margin = decision.margin_per_gpu_hour * sum(entry.gpus for entry in decision.placement)
            else:
                margin = _placed_margin_per_hour(policy, workload, decision.placement, products)
            hold(workload, decision.placement, margin)
        elif decision.action is Action.QUEUE:
            workloads[(Phase.QUEUED.value, workload.workload_class)] += 1
            margin = _waiting_margin_per_hour(policy, workload, decision, products.values())
            wait(workload, decision.reason, margin, queued_since=workload.queued_since)
            if decision.reason in CAPACITY_REASONS:
                smallest_blocked = min(workload.total_gpus, smallest_blocked or workload.total_gpus)

    gpus: Tally[tuple[str, str]] = Tally()
    own_pod_gpus_by_node: Tally[str] = Tally()
    for (_, node_name), count in snapshot.gpus_of_own_pods.items():
        own_pod_gpus_by_node[node_name] += count
    for node in snapshot.nodes:
        product = _product_of(node)
        reserved = reserved_by_node.pop(node.name, 0)
        used_by_others = max(0, node.gpus_used_by_pods - own_pod_gpus_by_node[node.name])
        rest = max(0, node.allocatable - reserved - used_by_others)
        gpus[(product, "allocatable")] += node.allocatable
        gpus[(product, "reserved")] += reserved
        gpus[(product, "used_by_others")] += used_by_others
        gpus[(product, "free" if node.schedulable else "unavailable")] += rest
        for state in GPU_STATES:  # every state of every product exists, zero or not
            gpus[(product, state)] += 0
    # Placements on nodes that left the cluster still hold GPUs in gpuadmit's books.
    for reserved in reserved_by_node.values():
        gpus[(UNKNOWN_PRODUCT, "reserved")] += reserved

    quota_gpus, unmet = _quota_gauges(snapshot, result, pending_by_key, victims)
    return ClusterGauges(
        workloads=dict(workloads),
        queue_depth=dict(queue_depth),
        oldest_queued_age_seconds=oldest_queued,
        gpus=dict(gpus),
        margin_earned_per_hour=margin_earned,
        margin_queued_per_hour=margin_queued,
        smallest_capacity_blocked_request=smallest_blocked,
        pending_considered=len(snapshot.pending) + len(snapshot.invalid),
        queued_by_namespace=dict(queued_by_namespace),
        reserved_by_namespace=dict(reserved_by_namespace),
        quota_gpus=quota_gpus,
        unmet_guarantee_seconds=unmet,
    )


def _quota_gauges(snapshot: Snapshot, result: CycleResult, pending_by_key: Mapping[str, Workload],
                  victims: set[str]) -> tuple[dict[tuple[str, str, str], int], dict[str, float]]:
    """Per GPUQuota, as the cycle leaves the cluster: guaranteed, used and lent GPUs per product,
    and how long the longest-waiting workload that its guarantee covers has waited."""
    if not snapshot.quotas:
        return {}, {}
    admitted = tuple(
        replace(pending_by_key[d.key], placement=d.placement, phase=Phase.ADMITTED.value, admitted_at=snapshot.now)
        for d in result.decisions if d.action is Action.ADMIT and d.key in pending_by_key
    )
    after = replace(snapshot, holding=tuple(w for w in snapshot.holding if w.key not in victims) + admitted, pending=())
    inventory = Inventory.from_snapshot(after)
    gpus: dict[tuple[str, str, str], int] = {}
    for name, report in quota_reports(after, inventory).items():
        for row in report.products:
            for state, count in zip(QUOTA_STATES, (row.guaranteed, row.used, row.lent), strict=True):
                gpus[(name, row.product, state)] = count
    used, _ = held_by_quota(after, inventory)
    cluster_products = sorted(inventory.products_offered)
    unmet = {name: 0.0 for name in snapshot.quotas}
    for decision in result.decisions:
        workload = pending_by_key.get(decision.key)
        tenant = snapshot.quota_of_namespace.get(decision.namespace)
        if decision.action is not Action.QUEUE or workload is None or tenant is None or tenant not in snapshot.quotas:
            continue
        idle, idle_any = Tenants.idle(used, snapshot.quotas[tenant])
        products = workload.gpu_products or tuple(cluster_products)
        if any(workload.total_gpus <= idle.get(p, 0) + idle_any for p in products):
            unmet[tenant] = max(unmet[tenant], snapshot.now - workload.queued_since)
    return gpus, unmet


class _ClusterGaugesCollector(Collector):
    """Publishes the latest ``ClusterGauges`` as gauge families, all from one object. They are
    worked out when read (a scrape), not at every cycle: a cycle at 20,000 workloads would
    otherwise recount every one of them for each single event, scraped or not."""

    def __init__(self, per_namespace: bool) -> None:
        self.per_namespace = per_namespace
        self._latest: ClusterGauges | None = None
        self._after_last_cycle: Callable[[], ClusterGauges] | None = None  # not worked out yet
        self._lock = threading.Lock()

    def after_cycle(self, gauges: Callable[[], ClusterGauges]) -> None:
        """The gauges of the last cycle, to work out when first read (from immutable inputs)."""
        with self._lock:
            self._after_last_cycle = gauges

    @property
    def latest(self) -> ClusterGauges | None:
        with self._lock:
            gauges, self._after_last_cycle = self._after_last_cycle, None
            if gauges is not None:
                try:
                    self._latest = gauges()
                except Exception:
                    logger.exception("gpuadmit metrics: could not work out the gauges of a cycle")
            return self._latest

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.latest))

    def _families(self, state: ClusterGauges | None) -> Iterator[Metric]:
        workloads = GaugeMetricFamily(
            "gpuadmit_workloads", "GPUWorkloads gpuadmit tracks, by phase and class, after the last cycle.",
            labels=["phase", "class"])
        queue_depth = GaugeMetricFamily(
            "gpuadmit_queue_depth", "Workloads waiting for GPUs (Queued or Preempted), by class.", labels=["class"])
        oldest = GaugeMetricFamily(
            "gpuadmit_oldest_queued_age_seconds",
            "Age of the oldest waiting workload since it was created or last preempted, by class; 0 when none.",
            labels=["class"])
        gpus = GaugeMetricFamily(
            "gpuadmit_gpus", "GPUs by product and state (allocatable, reserved, used_by_others, free, unavailable).",
            labels=["product", "state"])
        earned = GaugeMetricFamily(
            "gpuadmit_margin_earned_per_hour", "Margin per hour earned by admitted and running work, by class.",
            labels=["class"])
        queued_margin = GaugeMetricFamily(
            "gpuadmit_margin_queued_per_hour", "Margin per hour of work waiting in the queue, by the reason it waits.",
            labels=["reason"])
        smallest = GaugeMetricFamily(
            "gpuadmit_queue_smallest_request_gpus",
            "Smallest GPU request among work queued for lack of capacity; absent when none waits for capacity.")
        considered = GaugeMetricFamily(
            "gpuadmit_cycle_pending_workloads", "Pending and invalid workloads the last cycle considered.")
        quota_gpus = GaugeMetricFamily(
            "gpuadmit_quota_gpus",
            'GPUs of each GPUQuota by product ("*": of any product) and state: guaranteed, used, lent (idle guaranteed GPUs other work holds).',
            labels=["quota", "product", "state"])
        unmet = GaugeMetricFamily(
            "gpuadmit_quota_unmet_guarantee_seconds",
            "Longest time a queued workload within its GPUQuota's guarantee has waited, by quota; 0 when none waits.",
            labels=["quota"])
        families: list[Metric] = [workloads, queue_depth, oldest, gpus, earned, queued_margin, smallest, considered, quota_gpus, unmet]
        if self.per_namespace:
            ns_queued = GaugeMetricFamily(
                "gpuadmit_namespace_queue_depth", "Workloads waiting for GPUs, by namespace (opt-in).",
                labels=["namespace"])
            ns_reserved = GaugeMetricFamily(
                "gpuadmit_namespace_gpus_reserved", "GPUs reserved by admitted and running work, by namespace (opt-in).",
                labels=["namespace"])
            families += [ns_queued, ns_reserved]
        if state is not None:
            for (phase, cls), count in sorted(state.workloads.items()):
                workloads.add_metric([phase, cls], count)
            for cls, count in sorted(state.queue_depth.items()):
                queue_depth.add_metric([cls], count)
            for cls, age in sorted(state.oldest_queued_age_seconds.items()):
                oldest.add_metric([cls], age)
            for (product, gpu_state), count in sorted(state.gpus.items()):
                gpus.add_metric([product, gpu_state], count)
            for cls, margin in sorted(state.margin_earned_per_hour.items()):
                earned.add_metric([cls], margin)
            for reason, margin in sorted(state.margin_queued_per_hour.items()):
                queued_margin.add_metric([reason], margin)
            if state.smallest_capacity_blocked_request is not None:
                smallest.add_metric([], state.smallest_capacity_blocked_request)
            considered.add_metric([], state.pending_considered)
            for (quota, product, quota_state), count in sorted(state.quota_gpus.items()):
                quota_gpus.add_metric([quota, product, quota_state], count)
            for quota, seconds in sorted(state.unmet_guarantee_seconds.items()):
                unmet.add_metric([quota], seconds)
            if self.per_namespace:
                for namespace, count in sorted(state.queued_by_namespace.items()):
                    ns_queued.add_metric([namespace], count)
                for namespace, count in sorted(state.reserved_by_namespace.items()):
                    ns_reserved.add_metric([namespace], count)
        return iter(families)


def _class_label(decision: Decision) -> str:
    return decision.workload_class or UNKNOWN_CLASS


# Reasons a workload can be queued or rejected with: their counters start at zero for every class.
_WAIT_OR_REJECT_REASONS = tuple(
    r for r in Reason if r not in (Reason.ADMITTED, Reason.PREEMPTED_BY_HIGHER_MARGIN, Reason.RECLAIMED_BY_GUARANTEE)
)


class Metrics:
    """gpuadmit's metrics, registered in ``registry`` (a fresh one by default).

    With a fresh registry, process, platform and GC metrics are included, as
    ``prometheus_client`` does for its global registry. ``per_namespace=True``
    adds ``gpuadmit_namespace_*`` series labelled by namespace: useful on
    clusters with few tenants, a cardinality risk on clusters with many.
    ``existing_namespaces`` (optional) returns the namespaces that exist now, or
    None when not known; the per-namespace series of the others are dropped after
    each cycle, so deleted namespaces leave nothing behind.

    Every ``observe_*`` method swallows and logs its own failures: a metrics bug
    must never stop admissions.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        per_namespace: bool = False,
        existing_namespaces: Callable[[], Iterable[str] | None] | None = None,
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self.per_namespace = per_namespace
        self._existing_namespaces = existing_namespaces
        self._namespace_series: set[tuple[str, str, str]] = set()  # label values of namespace_decisions
        self._lock = threading.Lock()
        # Last outcome counted per pending workload, so a workload that stays
        # queued for a hundred cycles counts as one queue decision, not a hundred.
        self._last_outcome: dict[str, tuple[Action, Reason]] = {}
        # The margin per GPU-hour each admit decision carried, while its workload
        # holds GPUs: the figure written to status, which the snapshot lacks.
        self._admitted_margin: dict[str, float] = {}

        self.build_info = Gauge(
            "gpuadmit_build_info", "Always 1; the labels say which gpuadmit is running.",
            ["version", "python_version"], registry=registry)
        self.build_info.labels(__version__, platform.python_version()).set(1)

        self.cycles = Counter("gpuadmit_cycles", "Scheduling cycles completed.", registry=registry)
        self.cycles_by_kind = Counter(
            "gpuadmit_cycles_by_kind", "Scheduling cycles completed, by kind: whole (every pending workload decided "
            "again) or incremental (only what the changes since the last cycle affect).", ["kind"], registry=registry)
        self.cycle_duration = Histogram(
            "gpuadmit_cycle_duration_seconds", "Time one scheduling cycle took (snapshot to decisions).",
            buckets=CYCLE_DURATION_BUCKETS, registry=registry)
        self.last_cycle = Gauge(
            "gpuadmit_last_cycle_timestamp_seconds", "Unix time the last scheduling cycle finished.",
            registry=registry)
        self.decisions = Counter(
            "gpuadmit_decisions",
            "Decisions by action, class and reason; a workload's unchanged decision on a later cycle is not counted again.",
            ["action", "class", "reason"], registry=registry)
        for cls in CLASSES:
            self.decisions.labels(Action.ADMIT.value, cls, Reason.ADMITTED.value)
            for action in (Action.QUEUE, Action.REJECT):
                for reason in _WAIT_OR_REJECT_REASONS:
                    self.decisions.labels(action.value, cls, reason.value)
        self.decisions.labels(Action.REJECT.value, UNKNOWN_CLASS, Reason.INVALID_SPEC.value)

        self.margin_turned_away = Counter(
            "gpuadmit_margin_turned_away_per_hour",
            "Sum of the margin per hour of rejected work, by reason (negative margins count as 0).",
            ["reason"], registry=registry)
        for reason in _WAIT_OR_REJECT_REASONS:
            self.margin_turned_away.labels(reason.value)

        self.admission_wait = Histogram(
            "gpuadmit_admission_wait_seconds", "Time from creation (or last preemption) to admission, by class.",
            ["class"], buckets=ADMISSION_WAIT_BUCKETS, registry=registry)
        self.decision_latency = Histogram(
            "gpuadmit_decision_latency_seconds", "Time from the triggering event to the status being written, by action.",
            ["action"], buckets=DECISION_LATENCY_BUCKETS, registry=registry)
        for cls in CLASSES:
            self.admission_wait.labels(cls)
        for action in Action:
            self.decision_latency.labels(action.value)

        self.preemptions = Counter(
            "gpuadmit_preemptions", "Preemptions, by the victim's class and the preemptor's class.",
            ["victim_class", "preemptor_class"], registry=registry)
        for victim in CLASSES:
            for preemptor in CLASSES:
                self.preemptions.labels(victim, preemptor)

        self.failed_cycles = Counter(
            "gpuadmit_failed_cycles", "Scheduling cycles that failed as a whole (each is retried).", registry=registry)
        self.failed_cycles_in_a_row = Gauge(
            "gpuadmit_failed_cycles_in_a_row",
            "Scheduling cycles failed as a whole since the last one that succeeded; /readyz fails at --max-failed-cycles.",
            registry=registry)
        self.workloads_failed = Counter(
            "gpuadmit_workloads_failed",
            "Workloads gpuadmit marked Failed itself, by reason: PodRefused (the API server refused a pod), "
            "PodNameTaken (another owner's pod has the name), InternalError (an error while handling it).",
            ["reason"], registry=registry)
        for failure_reason in WORKLOAD_FAILURE_REASONS:
            self.workloads_failed.labels(failure_reason)

        self.api_errors = Counter(
            "gpuadmit_api_errors", "Kubernetes API calls that failed, by verb and HTTP status code (0: no response).",
            ["verb", "code"], registry=registry)

        self.native_actions = Counter(
            "gpuadmit_native_actions",
            "What gpuadmit did to the native workloads of managed namespaces, by unit kind (Job, Pod, PodGroup, "
            "LeaderWorkerSet) and action (mirrored, rejected, resumed, suspended, released, deleted, unmanaged).",
            ["kind", "action"], registry=registry)
        self.native_mirrors = Gauge(
            "gpuadmit_native_mirrors",
            "Mirror GPUWorkloads of native workloads after the last cycle, by unit kind and phase.",
            ["kind", "phase"], registry=registry)
        for unit_kind in UnitKind:
            for native_action in NATIVE_ACTIONS:
                self.native_actions.labels(unit_kind.value, native_action)
            for phase in MIRROR_PHASES:
                self.native_mirrors.labels(unit_kind.value, phase).set(0)

        self.namespace_decisions: Counter | None = None
        if per_namespace:
            self.namespace_decisions = Counter(
                "gpuadmit_namespace_decisions", "Decisions by namespace, action and reason (opt-in).",
                ["namespace", "action", "reason"], registry=registry)

        self._cluster = _ClusterGaugesCollector(per_namespace)
        registry.register(self._cluster)

    @property
    def latest_gauges(self) -> ClusterGauges | None:
        """The state gauges as of the last cycle (None before the first)."""
        return self._cluster.latest

    def observe_cycle(self, snapshot: Snapshot, result: CycleResult, duration_s: float, whole: bool = True) -> None:
        """Count the cycle and its new decisions, and publish the state it leaves behind. ``result``
        holds every pending workload's decision (after an incremental cycle, the caller's record of
        the last one each got), whatever the cycle's kind."""
        try:
            with self._lock:
                # The margins as of before this cycle's admissions: a dict replaced, never changed.
                gauges = functools.partial(gauges_after_cycle, snapshot, result, self.per_namespace,
                                           self._admitted_margin)
                self._count_new_decisions(snapshot, result)
                self._remember_admitted_margins(snapshot, result)
                self._forget_deleted_namespaces()
            self._cluster.after_cycle(gauges)
            self.cycle_duration.observe(max(0.0, duration_s))
            self.cycles.inc()
            self.cycles_by_kind.labels("whole" if whole else "incremental").inc()
            self.last_cycle.set(time.time())
            self.failed_cycles_in_a_row.set(0)
        except Exception:
            logger.exception("gpuadmit metrics: could not observe a cycle")

    def observe_cycle_failed(self, in_a_row: int) -> None:
        """A cycle failed as a whole; ``in_a_row`` counts it with the failures just before it."""
        try:
            self.failed_cycles.inc()
            self.failed_cycles_in_a_row.set(in_a_row)
        except Exception:
            logger.exception("gpuadmit metrics: could not observe a failed cycle")

    def observe_workload_failed(self, reason: str) -> None:
        try:
            self.workloads_failed.labels(reason).inc()
        except Exception:
            logger.exception("gpuadmit metrics: could not observe a failed workload")

    def _count_new_decisions(self, snapshot: Snapshot, result: CycleResult) -> None:
        pending = {w.key: w for w in snapshot.pending}
        products = [node.product for node in snapshot.nodes]
        still_pending = set(pending) | {w.key for w in snapshot.invalid}
        for decision in result.decisions:
            outcome = (decision.action, decision.reason)
            if self._last_outcome.get(decision.key) == outcome:
                continue
            self._last_outcome[decision.key] = outcome
            self.decisions.labels(decision.action.value, _class_label(decision), decision.reason.value).inc()
            if self.namespace_decisions is not None:
                labels = (decision.namespace, decision.action.value, decision.reason.value)
                self.namespace_decisions.labels(*labels).inc()
                self._namespace_series.add(labels)
            workload = pending.get(decision.key)
            if decision.action is Action.REJECT and workload is not None:
                margin = _waiting_margin_per_hour(snapshot.policy, workload, decision, products)
                self.margin_turned_away.labels(decision.reason.value).inc(max(0.0, margin))
        # Forget workloads that left the pending side: a later return (say, after
        # a preemption) is a new decision.
        for key in list(self._last_outcome):
            if key not in still_pending:
                del self._last_outcome[key]

    def _forget_deleted_namespaces(self) -> None:
        """Drop the per-namespace series of namespaces that no longer exist (when that is known)."""
        if self.namespace_decisions is None or self._existing_namespaces is None or not self._namespace_series:
            return
        existing = self._existing_namespaces()
        if existing is None:
            return
        existing = set(existing)
        for labels in [labels for labels in self._namespace_series if labels[0] not in existing]:
            self.namespace_decisions.remove(*labels)
            self._namespace_series.discard(labels)

    def _remember_admitted_margins(self, snapshot: Snapshot, result: CycleResult) -> None:
        victims = {p.key for p in result.preemptions}
        holding = {w.key for w in snapshot.holding} - victims
        kept = {key: margin for key, margin in self._admitted_margin.items() if key in holding}
        for decision in result.decisions:
            if decision.action is Action.ADMIT and decision.margin_per_gpu_hour is not None:
                kept[decision.key] = decision.margin_per_gpu_hour
        self._admitted_margin = kept

    def observe_native(self, actions: Mapping[tuple[str, str], int], mirrors: Mapping[tuple[str, str], int]) -> None:
        """One cycle's actions on native units, and the mirrors by kind and phase it leaves."""
        try:
            for (kind, action), count in actions.items():
                if count > 0:
                    self.native_actions.labels(kind, action).inc(count)
            for unit_kind in UnitKind:
                for phase in MIRROR_PHASES:
                    self.native_mirrors.labels(unit_kind.value, phase).set(mirrors.get((unit_kind.value, phase), 0))
        except Exception:
            logger.exception("gpuadmit metrics: could not observe the native workloads")

    def observe_status_written(self, decision: Decision, latency_s: float, admission_wait_s: float | None) -> None:
        """A decision reached the API: latency from its triggering event, and for admits the wait since creation."""
        try:
            self.decision_latency.labels(decision.action.value).observe(max(0.0, latency_s))
            if admission_wait_s is not None and decision.action is Action.ADMIT:
                self.admission_wait.labels(_class_label(decision)).observe(max(0.0, admission_wait_s))
        except Exception:
            logger.exception("gpuadmit metrics: could not observe a status write")

    def observe_preemption(self, victim_class: str, preemptor_class: str) -> None:
        try:
            self.preemptions.labels(victim_class or UNKNOWN_CLASS, preemptor_class or UNKNOWN_CLASS).inc()
        except Exception:
            logger.exception("gpuadmit metrics: could not observe a preemption")

    def observe_api_error(self, verb: str, code: int) -> None:
        try:
            self.api_errors.labels(str(verb).lower() or "unknown", str(int(code or 0))).inc()
        except Exception:
            logger.exception("gpuadmit metrics: could not observe an API error")


@dataclass
class MetricsServer:
    """A running ``/metrics`` server; ``port`` is the bound one (useful with port 0)."""

    port: int
    _server: object
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]
        self._thread.join(timeout=5)


def start_metrics_server(metrics: Metrics, port: int, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve ``metrics`` on ``http://addr:port/metrics`` from a daemon thread (port 0: any free port)."""
    server, thread = start_http_server(port, addr, registry=metrics.registry)
    return MetricsServer(port=server.server_port, _server=server, _thread=thread)
