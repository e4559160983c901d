"""The operator's half of native workloads: mirror writes, release, hold-back, Events.

``core.native`` says what each admission unit of a managed namespace should look like; this module
makes it so, twice a cycle:

- ``prepare`` (before the snapshot): the mirror GPUWorkload of every held unit is created, a
  trusted mirror's spec is kept equal to its native object's while it holds no GPUs, and a
  GPUWorkload that claims to be a mirror but is not trusted (``core.native.mirror_problem``) is
  Rejected with reason ``MirrorNotTrusted`` and left out of the decisions. The trusted mirrors,
  with their kinds' class leans, go to the snapshot.
- ``reconcile`` (after the decisions are written): a holding mirror's unit is released (its Job
  unsuspended; each gated pod pinned to a free slot of the placement and its gate removed, in one
  patch); a mirror that holds nothing any more has its unit held back (its Job suspended: the Job
  controller removes the pods, gpuadmit deletes nothing; a released pod of a pod unit or group
  deleted: its controller recreates it, gated). A mirror follows its unit (Running from its
  released pods, Succeeded/Failed from its Job or pods), every change of a mirror's decision is
  told as an Event on the native object(s), and a GPU pod of a managed namespace that runs past the
  gate without a release gets one Warning Event. Pods of a namespace that stopped being managed
  lose gpuadmit's gate.

Nothing here is remembered that the API does not hold, except which Events were already told:
which slots are taken is read from the released pods' pinning, so a restart releases nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuadmit.controller import api as kube
from gpuadmit.controller import status as desired_status
from gpuadmit.controller.api import ApiError
from gpuadmit.controller.cache import (
    GATED_PODS,
    MIRROR_CLAIMS,
    NAMESPACE,
    NODE,
    POD,
    RAYJOB,
    WORKLOAD,
    ObjectCache,
    object_key,
)
from gpuadmit.controller.writer import Writer
from gpuadmit.core.classifier import KindLean
from gpuadmit.core.holds import SUSPENDED_BY_WEBHOOK
from gpuadmit.core.model import GPU_RESOURCE, HOLDING_PHASES, Phase
from gpuadmit.core.native import (
    ADMISSION_GATE,
    DELETED_POD,
    MIRROR_KIND_LABEL,
    MIRROR_NOT_TRUSTED,
    MIRRORED,
    REJECTED,
    RELEASED_ANNOTATION,
    RELEASED_POD,
    RESUMED,
    SUSPENDABLE,
    SUSPENDED,
    SUSPENDED_BY_ANNOTATION,
    UNMANAGED,
    Mirror,
    UnitKind,
    UnitRef,
    admission_unit_of,
    claimed_unit,
    expected_mirror,
    is_gated,
    job_finished,
    job_suspended,
    judge_mirrors,
    let_go_by_hand,
    managed_namespaces,
    name_of,
    namespace_of,
    pods_by_unit,
    ray_jobs_by_cluster,
    release_assignments,
    release_patch,
    released,
    stale_mirror,
    suspend_patch,
    uid_of,
    unit_of_pod,
)
from gpuadmit.core.nodes import gpu_count, gpus_used_by_node, pod_gpu_request, pod_is_terminal
from gpuadmit.core.placement import placement_of
from gpuadmit.core.pods import controlling_workload

logger = logging.getLogger(__name__)

RUNS_UNMANAGED = "RunsUnmanaged"
# Where each suspendable kind (core.native.SUSPENDABLE; its cache kind is its unit kind's name) is patched.
SUSPENDABLE_RESOURCES: dict[UnitKind, kube.Resource] = {
    UnitKind.JOB: kube.JOBS, UnitKind.PYTORCH_JOB: kube.PYTORCHJOBS, UnitKind.RAY_JOB: kube.RAYJOBS,
}
JOB_SUCCEEDED, JOB_FAILED = "JobSucceeded", "JobFailed"
TOLD_KEPT = 100_000  # bound on the Events-told memory: a restart re-tells at most once each


def _phase(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status")
    return status.get("phase") if isinstance(status, Mapping) else None


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, Mapping) else {}


def _terminating(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


@dataclass
class NativeReport:
    """What the native half did in one cycle, for logs, tests and metrics."""

    mirrors_created: int = 0
    mirrors_updated: int = 0
    mirrors_rejected: int = 0
    mirrors_deleted: int = 0
    jobs_unsuspended: int = 0
    jobs_suspended: int = 0
    pods_released: int = 0
    pods_deleted: int = 0
    pods_ungated: int = 0
    warnings: list[str] = field(default_factory=list)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (unit kind, action) -> count


class NativeWorkloads:
    """Mirrors, release and hold-back for the native units of managed namespaces (one per loop)."""

    def __init__(self, cache: ObjectCache, writer: Writer, trigger: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.writer = writer
        self.trigger = trigger
        self.clock = clock
        self.trusted: dict[str, KindLean | None] = {}  # mirror key -> its kind's lean
        self.untrusted: set[str] = set()  # keys of GPUWorkloads that claim to mirror and are not trusted
        self.last_report = NativeReport()
        self._told: dict[tuple[str, str], tuple[str, str]] = {}  # (native uid, mirror uid) -> (phase, reason) told
        self._warned_unmanaged: set[str] = set()  # pod uids told they run unmanaged
        self._facts: dict[tuple[str, str], tuple[int, UnitRef]] = {}  # (pod uid, resourceVersion) -> GPUs, unit
        self._managed: frozenset[str] = frozenset()  # the managed namespaces, as of ``prepare``
        self._pod_keys_by_unit: dict[UnitRef, list[str]] = {}  # as of ``prepare``
        self.ray_jobs: dict[str, str] = {}  # "namespace/RayCluster" -> RayJob, as of ``prepare``
        self._room: dict[str, int] = {}  # node -> GPUs no live pod asks for, as of this reconcile

    def mirrors_by_kind_and_phase(self) -> Counter[tuple[str, str]]:
        """The trusted mirrors, by (unit kind, phase; "Pending" before the first decision)."""
        counts: Counter[tuple[str, str]] = Counter()
        for key in self.trusted:
            mirror = self.cache.get(WORKLOAD, key)
            unit = claimed_unit(mirror) if mirror is not None else None
            if mirror is not None and unit is not None:
                counts[(unit.kind.value, str(_phase(mirror) or "Pending"))] += 1
        return counts

    def released_pods_by_mirror(self) -> dict[str, list[Mapping[str, Any]]]:
        """The pods gpuadmit released, by the key of their unit's trusted mirror (for the
        Unschedulable follow-up, as a GPUWorkload's own pods)."""
        if not self.trusted:
            return {}
        released_pods: dict[str, list[Mapping[str, Any]]] = {}
        for pod in self.cache.all(POD):
            key = admission_unit_of(pod, self.trusted, self.ray_jobs) if released(pod) else None
            if key is not None and key in self.trusted:
                released_pods.setdefault(key, []).append(pod)
        return released_pods

    def is_mirror(self, key: str) -> bool:
        return key in self.trusted

    def excluded(self, key: str) -> bool:
        """Whether a GPUWorkload is left out of the decisions (an untrusted mirror claim)."""
        return key in self.untrusted

    # -- before the snapshot ----------------------------------------------------------------

    def gpus_of(self, pod: Mapping[str, Any]) -> int:
        """``pod_gpu_request``, read once per pod version (pods rarely change, cycles are many)."""
        return self._pod_facts(pod)[0]

    def unit_of(self, pod: Mapping[str, Any]) -> UnitRef:
        """``unit_of_pod``, read once per pod version (a pod of its own while RayJobs exist is read
        again: its RayCluster may have become a RayJob's since)."""
        unit = self._pod_facts(pod)[1]
        return unit_of_pod(pod, self.ray_jobs) if self.ray_jobs and unit.kind == UnitKind.POD else unit

    def _pod_facts(self, pod: Mapping[str, Any]) -> tuple[int, UnitRef]:
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or ""))
        if not key[0] or not key[1]:
            return pod_gpu_request(pod), unit_of_pod(pod)
        facts = self._facts.get(key)
        if facts is None:
            if len(self._facts) > 2 * max(1000, len(self.cache.objects[POD])):
                self._facts.clear()  # bounded: old versions go, the next cycle reads the live ones again
            facts = self._facts[key] = (pod_gpu_request(pod), unit_of_pod(pod))
        return facts

    async def prepare(self, now: float) -> NativeReport:
        report = NativeReport()
        self.last_report = report
        managed = self._managed = managed_namespaces(self.cache.all(NAMESPACE))
        self.ray_jobs = ray_jobs_by_cluster(self.cache.all(RAYJOB)) if managed else {}
        grouped = pods_by_unit(self.cache.all(POD), managed, self.gpus_of, self.unit_of) if managed else {}
        self._pod_keys_by_unit = {unit: [object_key(pod) for pod in pods] for unit, pods in grouped.items()}
        expected_by_unit: dict[UnitRef, Mirror | None] = {}

        def expected_of(unit: UnitRef) -> Mirror | None:
            """The unit's mirror as it should be now, built only for the units that need it."""
            if unit not in expected_by_unit:
                expected_by_unit[unit] = expected_mirror(unit, self._native_of(unit), grouped.get(unit, []), self.gpus_of)
            return expected_by_unit[unit]

        trusted: dict[str, KindLean | None] = {}
        untrusted: set[str] = set()
        writes: list[Awaitable[Any]] = []
        mirrored: set[UnitRef] = set()
        for verdict in judge_mirrors(self.cache.indexed(MIRROR_CLAIMS), managed, expected_of):
            workload, unit, expected = verdict.workload, verdict.unit, verdict.expected
            key = object_key(workload)
            if verdict.trusted and expected is not None and let_go_by_hand(unit, grouped.get(unit, [])):
                untrusted.add(key)  # left out of decisions: its pod's GPUs count as the pod's own
                if _phase(workload) != Phase.REJECTED.value and not _terminating(workload):
                    writes.append(self._reject_let_go(workload, now, report))
            elif verdict.trusted and expected is not None:
                trusted[key] = expected.lean
                mirrored.add(unit)
                if (_phase(workload) not in HOLDING_PHASES and _phase(workload) not in desired_status.TERMINAL_PHASES
                        and _drifted(workload, expected) and not _terminating(workload)):
                    writes.append(self._replace_spec(workload, expected, report))
            else:
                untrusted.add(key)
                if _terminating(workload):
                    continue
                if unit.namespace in managed and stale_mirror(workload, expected):
                    writes.append(self._delete_stale(workload, report))
                elif _phase(workload) != Phase.REJECTED.value:
                    writes.append(self._reject(workload, verdict.problem or "it mirrors nothing", now, report))
        # Units gpuadmit holds (a suspended Job, a gated pod) and that have no mirror yet get one.
        held = {unit for unit, pods in grouped.items() if any(is_gated(pod) for pod in pods)}
        for kind in SUSPENDABLE if managed else ():
            for job in self.cache.all(kind.value):
                if namespace_of(job) in managed and job_suspended(job, kind) and job_finished(job, kind) is None:
                    held.add(UnitRef(namespace_of(job), kind, name_of(job)))
        for unit in held - mirrored:
            mirror = expected_of(unit)
            if mirror is None or self.cache.get(WORKLOAD, unit.mirror_key) is not None:
                continue  # nothing to mirror yet, or the name is taken by a GPUWorkload that is not its mirror
            writes.append(self._create_mirror(mirror, report))
        self.trusted, self.untrusted = trusted, untrusted
        await asyncio.gather(*writes)  # a mirror created here joins ``trusted``: decided in this very cycle
        return report

    def _native_of(self, unit: UnitRef) -> Mapping[str, Any] | None:
        """A suspendable unit's object (its Job, PyTorchJob or RayJob), None for other units."""
        return self.cache.get(unit.kind.value, f"{unit.namespace}/{unit.name}") if unit.kind in SUSPENDABLE else None

    async def _create_mirror(self, mirror: Mirror, report: NativeReport) -> None:
        try:
            created = await self.writer.api.create(kube.WORKLOADS, mirror.body, mirror.unit.namespace)
        except ApiError as error:
            if error.status == 409:
                return  # made meanwhile (by us before a restart, or by the tenant): judged next cycle
            logger.warning("Could not create the mirror %s: %s", mirror.unit.mirror_key, error)
            self.trigger()
            return
        self.cache.put(WORKLOAD, created)
        self.trusted[mirror.unit.mirror_key] = mirror.lean
        report.mirrors_created += 1
        report.actions[(mirror.unit.kind.value, MIRRORED)] += 1
        logger.info("Mirror %s made for %s %s", mirror.unit.mirror_key, mirror.unit.kind.value, mirror.unit.name)

    async def _replace_spec(self, workload: Mapping[str, Any], expected: Mirror, report: NativeReport) -> None:
        metadata = workload.get("metadata") or {}
        body = {"metadata": {"resourceVersion": metadata.get("resourceVersion")}, "spec": dict(expected.spec)}
        try:
            updated = await self.writer.api.patch(kube.WORKLOADS, metadata["name"], body, metadata.get("namespace"))
        except ApiError as error:
            logger.info("Could not bring mirror %s in line with its native object: %s", object_key(workload), error)
            self.trigger()
            return
        self.cache.put(WORKLOAD, updated)
        report.mirrors_updated += 1

    async def _delete_stale(self, workload: Mapping[str, Any], report: NativeReport) -> None:
        metadata = workload.get("metadata") or {}
        try:
            await self.writer.api.delete(kube.WORKLOADS, metadata["name"], metadata.get("namespace"))
        except ApiError as error:
            logger.info("Could not delete the stale mirror %s: %s", object_key(workload), error)
            return
        self.cache.remove(WORKLOAD, workload)
        report.mirrors_deleted += 1
        self.trigger()  # the unit's new mirror is made next cycle

    async def _reject(self, workload: Mapping[str, Any], problem: str, now: float, report: NativeReport) -> None:
        message = (f"carries {MIRROR_KIND_LABEL} but is not trusted as a mirror: {problem}; gpuadmit makes the "
                   "mirrors of native workloads itself (remove the label to submit an ordinary GPUWorkload)")
        desired = desired_status.rejected_status(workload, MIRROR_NOT_TRUSTED, message, now)
        if await self.writer.write_status(WORKLOAD, workload, desired) is not None:
            report.mirrors_rejected += 1
            unit = claimed_unit(workload)
            report.actions[(unit.kind.value if unit else UnitKind.POD.value, REJECTED)] += 1
            self.writer.explain_later(workload, "Warning", MIRROR_NOT_TRUSTED, message)

    async def _reject_let_go(self, workload: Mapping[str, Any], now: float, report: NativeReport) -> None:
        message = (f"its pod runs past the {ADMISSION_GATE} gate without gpuadmit's release (the gate was removed "
                   "by hand): it runs unmanaged, its GPUs count as used capacity, and this mirror reserves none")
        desired = desired_status.rejected_status(workload, RUNS_UNMANAGED, message, now)
        if await self.writer.write_status(WORKLOAD, workload, desired) is not None:
            report.mirrors_rejected += 1

    # -- after the decisions ------------------------------------------------------------------

    async def reconcile(self, now: float) -> NativeReport:
        report = self.last_report
        # Only units released use it: without trusted mirrors, a walk over every pod saved.
        self._room = _room_by_node(self.cache.all(NODE), self.cache.all(POD)) if self.trusted else {}
        work: list[Awaitable[Any]] = []
        for key in sorted(self.trusted):
            mirror = self.cache.get(WORKLOAD, key)
            unit = claimed_unit(mirror) if mirror is not None else None
            if mirror is None or unit is None or _terminating(mirror):
                continue
            job = self._native_of(unit)
            # The unit's pods as they are now, after this cycle's writes (a pod that arrived since
            # ``prepare`` brought its own watch event: the next cycle takes it).
            pods: list[Mapping[str, Any]] = [pod for pod_key in self._pod_keys_by_unit.get(unit, [])
                    if (pod := self.cache.get(POD, pod_key)) is not None]
            work.append(self._reconcile_unit(mirror, unit, job, pods, now, report))
        work.append(self._watch_unmanaged(report))
        await asyncio.gather(*work)
        return report

    async def _reconcile_unit(self, mirror: Mapping[str, Any], unit: UnitRef, job: Mapping[str, Any] | None,
                              pods: list[Mapping[str, Any]], now: float, report: NativeReport) -> None:
        try:
            phase = _phase(mirror)
            if phase in HOLDING_PHASES:
                await self._release(mirror, unit, job, pods, report)
                await self._follow(mirror, unit, job, pods, now)
            elif phase not in desired_status.TERMINAL_PHASES or phase == Phase.REJECTED.value:
                await self._hold_back(mirror, unit, job, pods, report)
            natives = [job] if job is not None else ([] if unit.kind in SUSPENDABLE else pods)
            self._tell(self.cache.get(WORKLOAD, object_key(mirror)) or mirror, natives)
        except asyncio.CancelledError:
            raise
        except ApiError as error:
            logger.warning("An API call for the native unit of %s failed: %s; retrying next cycle", object_key(mirror), error)
            self.trigger()

    async def _release(self, mirror: Mapping[str, Any], unit: UnitRef, job: Mapping[str, Any] | None,
                       pods: list[Mapping[str, Any]], report: NativeReport) -> None:
        recorded = placement_of(mirror)
        if recorded.problem is not None:
            return  # the loop requeues it (PlacementInvalid); nothing is released onto a placement it cannot read
        if job is not None and job_suspended(job, unit.kind) and job_finished(job, unit.kind) is None:
            await self._patch(unit.kind.value, SUSPENDABLE_RESOURCES[unit.kind], job,
                              suspend_patch(False, uid_of(mirror), unit.kind))
            report.jobs_unsuspended += 1
            report.actions[(unit.kind.value, RESUMED)] += 1
        if unit.kind in (UnitKind.POD_GROUP, UnitKind.LWS_GROUP):
            live = [pod for pod in pods if not pod_is_terminal(pod) and not _terminating(pod)]
            if len(live) < recorded.replicas:
                return  # a gang goes whole: a member is missing (being recreated)
        gpus = (mirror.get("spec") or {}).get("gpus")
        for pod, node in release_assignments(recorded.entries, pods):
            if pod_gpu_request(pod) > (gpus if isinstance(gpus, int) else 0):
                logger.warning("Pod %s asks for more GPUs than its mirror %s reserved per replica; not released",
                               object_key(pod), object_key(mirror))
                continue
            # A preempted Job's pods go when its Job controller deletes them, after this cycle:
            # until then a pod pinned beside them would ask the node for more GPUs than it has.
            if node in self._room and self._room[node] < pod_gpu_request(pod):
                logger.info("Pod %s waits for GPUs on %s still held by pods going away", object_key(pod), node)
                continue
            if node in self._room:
                self._room[node] -= pod_gpu_request(pod)
            await self._patch(POD, kube.PODS, pod, release_patch(pod, node))
            report.pods_released += 1
            report.actions[(unit.kind.value, RELEASED_POD)] += 1

    async def _hold_back(self, mirror: Mapping[str, Any], unit: UnitRef, job: Mapping[str, Any] | None,
                         pods: list[Mapping[str, Any]], report: NativeReport) -> None:
        """A mirror that holds no GPUs: its unit may run nothing gpuadmit released."""
        ours = [pod for pod in pods if released(pod) and not pod_is_terminal(pod) and not _terminating(pod)]
        if job is not None:
            annotations = (job.get("metadata") or {}).get("annotations") or {}
            if (not job_suspended(job, unit.kind) and job_finished(job, unit.kind) is None
                    and (RELEASED_ANNOTATION in annotations or ours)):
                await self._patch(unit.kind.value, SUSPENDABLE_RESOURCES[unit.kind], job,
                                  suspend_patch(True, None, unit.kind))
                report.jobs_suspended += 1
                report.actions[(unit.kind.value, SUSPENDED)] += 1
            return
        for pod in ours:
            if await self.writer.delete_pod(pod):
                report.pods_deleted += 1
                report.actions[(unit.kind.value, DELETED_POD)] += 1

    async def _follow(self, mirror: Mapping[str, Any], unit: UnitRef, job: Mapping[str, Any] | None,
                      pods: list[Mapping[str, Any]], now: float) -> None:
        """The mirror's phase from its unit: a Job's outcome from its conditions; Running, or a
        pod unit's or group's outcome, from the released pods (as a GPUWorkload's from its own)."""
        verdict: tuple[str, str, str] | None = None
        if job is not None:
            outcome = job_finished(job, unit.kind)
            if outcome is not None:
                verdict = (outcome, JOB_SUCCEEDED if outcome == "Succeeded" else JOB_FAILED,
                           f"{unit.kind.value} {unit.name} {outcome.lower()}")
        if verdict is None:
            replicas = placement_of(mirror).replicas
            found = desired_status.phase_from_pods([pod for pod in pods if released(pod)], replicas)
            if found is not None and (job is None or found[0] == Phase.RUNNING.value):
                verdict = found  # a Job's failed pod is retried by the Job controller: the Job's condition decides
        if verdict is not None and verdict[0] != _phase(mirror):
            desired = desired_status.pods_phase_status(mirror, *verdict, now)
            await self.writer.write_status(WORKLOAD, mirror, desired)

    async def _patch(self, kind: str, resource: kube.Resource, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        body = {**patch, "metadata": {**(patch.get("metadata") or {}), "resourceVersion": metadata.get("resourceVersion")}}
        try:
            updated = await self.writer.api.patch(resource, metadata["name"], body, metadata.get("namespace"))
        except ApiError as error:
            if error.status in (404, 409):
                logger.info("%s %s changed before it could be patched: %s; next cycle", kind, object_key(obj), error)
                self.trigger()
                return
            raise
        self.cache.put(kind, updated)

    def _tell(self, mirror: Mapping[str, Any], natives: Iterable[Mapping[str, Any]]) -> None:
        """An Event on each native object when its mirror's decision changed since last told."""
        status = _status(mirror)
        phase, reason = str(status.get("phase") or ""), str(status.get("reason") or "")
        if not phase:
            return
        message = str(status.get("message") or "")
        event_type = "Warning" if phase in (Phase.REJECTED.value, Phase.PREEMPTED.value, Phase.FAILED.value) else "Normal"
        for native in natives:
            told_key = (uid_of(native), uid_of(mirror))
            if self._told.get(told_key) == (phase, reason):
                continue
            if len(self._told) >= TOLD_KEPT:
                self._told.clear()
            self._told[told_key] = (phase, reason)
            self.writer.explain_later(native, event_type, reason or phase,
                                      f"GPUWorkload {object_key(mirror)} {phase}: {message}".strip())

    async def _watch_unmanaged(self, report: NativeReport) -> None:
        """GPU pods of managed namespaces past the gate without a release are told once; pods of
        namespaces no longer managed lose gpuadmit's gate, and Jobs its webhook suspended there are
        resumed (gpuadmit no longer decides for them)."""
        managed = self._managed
        ungates: list[Awaitable[Any]] = []
        # Outside managed namespaces only gated pods concern it: those alone are walked then.
        for pod in self.cache.all(POD) if managed else self.cache.indexed(GATED_PODS):
            # The cheap tests first: most pods are in no managed namespace and carry no gate.
            if not (pod.get("spec") or {}).get("schedulingGates") and not managed:
                continue
            in_managed = namespace_of(pod) in managed
            if not in_managed and not is_gated(pod):
                continue
            if in_managed and (uid_of(pod) in self._warned_unmanaged or is_gated(pod) or released(pod)):
                continue
            if self.gpus_of(pod) <= 0 or pod_is_terminal(pod) or controlling_workload(pod) is not None:
                continue
            if not in_managed:
                if is_gated(pod):
                    gates = [g for g in (pod.get("spec") or {}).get("schedulingGates") or []
                             if not (isinstance(g, Mapping) and g.get("name") == ADMISSION_GATE)]
                    ungates.append(self._patch(POD, kube.PODS, pod, {"spec": {"schedulingGates": gates or None}}))
                    report.pods_ungated += 1
                continue
            self._warned_unmanaged.add(uid_of(pod))
            message = (f"pod {object_key(pod)} asks for GPUs in a namespace gpuadmit manages but runs without its "
                       f"admission (the {ADMISSION_GATE} gate was removed, or the pod arrived while no webhook ran): "
                       "its GPUs count as used capacity, and gpuadmit neither reserves nor preempts them")
            report.warnings.append(object_key(pod))
            report.actions[(unit_of_pod(pod).kind.value, UNMANAGED)] += 1
            self.writer.explain_later(pod, "Warning", RUNS_UNMANAGED, message)
        for kind, resource in SUSPENDABLE_RESOURCES.items():
            for job in self.cache.all(kind.value):
                annotations = (job.get("metadata") or {}).get("annotations") or {}
                if (namespace_of(job) not in managed and job_suspended(job, kind) and job_finished(job, kind) is None
                        and annotations.get(SUSPENDED_BY_ANNOTATION) == SUSPENDED_BY_WEBHOOK):
                    # Held by gpuadmit's webhook in a namespace no longer managed: given back to its controller.
                    patch = suspend_patch(False, None, kind)
                    patch["metadata"]["annotations"][SUSPENDED_BY_ANNOTATION] = None
                    ungates.append(self._patch(kind.value, resource, job, patch))
                    report.actions[(kind.value, RESUMED)] += 1
        await asyncio.gather(*ungates)


def _room_by_node(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GPUs of each node that no live pod (bound, pinned, or terminating) asks for."""
    used = gpus_used_by_node(pods)
    room: dict[str, int] = {}
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name"))
        allocatable = gpu_count(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE))
        room[name] = allocatable - used.get(name, 0)
    return room


def _drifted(workload: Mapping[str, Any], expected: Mirror) -> bool:
    """Whether a mirror's spec differs from its native object's in a field gpuadmit sets (the API
    server may default others, which are left alone)."""
    spec = workload.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    return any(spec.get(key) != value for key, value in expected.spec.items())
