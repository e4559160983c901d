"""Creating the pods of admitted workloads, in the background of the scheduling loop.

A decision is committed when its status (with the placement) is written; the pods follow.
The loop hands each admitted workload's missing pods to ``PodCreator.start`` and goes on, so
the next cycle's decisions do not wait for this cycle's pod creations (which also queue
behind status writes for an API slot: ``Urgency.MATERIALISE``).

The physical ledger: a pod is only created when its node has the GPUs free *now* (a
preempted victim's pods may still be terminating there), counting the pods in the cache
at the last recount plus every pod started since. A workload whose creations are in
flight is skipped until they end, so nothing is created twice.

A workload's pods are reserved on the ledger at once but built (and their template judged)
only when their creation's turn comes (``Writer.pods_turn``: no decision's write waits), so
in a burst the CPU of building pods follows the decisions instead of delaying them.

The template is judged for its shape and by the pod-security rules in force right before
its pods are built, as Pod Security Admission judges every pod it is asked to create: the
engine's parser leaves workloads that hold GPUs alone, so a template edited after the
admission (while the webhook was down or not installed) would otherwise be copied into the
missing pods unjudged (or, of the wrong shape, fail as an internal error). A refused template
fails its workload (``PodRefused``, naming the field).

A pod the API server refuses for good (400/422, or a 403 from an admission policy), or
whose name a pod of another owner already has, fails its workload through ``fail_workload``:
a Failed workload holds no GPUs, so none stay reserved for a pod that cannot exist.
Anything else is retried next cycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gpuadmit.controller.cache import NODE, ObjectCache, object_key
from gpuadmit.controller.status import INTERNAL_ERROR, POD_REFUSED, internal_error_message
from gpuadmit.controller.writer import PodCreation, Writer, cancel_all
from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import GPU_RESOURCE, Action, Decision, PlacementEntry, Reason
from gpuadmit.core.nodes import gpu_count
from gpuadmit.core.pods import build_pods, pod_name, replica_slots
from gpuadmit.core.podsecurity import DEFAULT_RULES, TemplateRules
from gpuadmit.core.workload import check_pod_template

logger = logging.getLogger(__name__)


def pods_for(workload: Mapping[str, Any], placement: tuple[PlacementEntry, ...]) -> list[dict[str, Any]]:
    """The pods an admitted workload runs on its placement (the same ones its admission created)."""
    metadata = workload.get("metadata") or {}
    status = workload.get("status") or {}
    decision = Decision(
        namespace=str(metadata.get("namespace", "")), name=str(metadata.get("name", "")),
        action=Action.ADMIT, reason=Reason.ADMITTED, message="",
        workload_class=status.get("class") if status.get("class") in ("training", "inference") else None,
        placement=placement,
    )
    return build_pods(workload, decision)


# (workload key, workload uid, reason, message): mark that workload Failed.
FailWorkload = Callable[[str, str, str, str], Awaitable[Any]]
# namespace -> the pod-security rules its templates are held to now.
RulesOf = Callable[[str], TemplateRules]


def template_refusal(workload: Mapping[str, Any], rules: TemplateRules) -> str | None:
    """Why the workload's template may not become pods under ``rules`` (None: it may)."""
    spec = workload.get("spec")
    try:
        check_pod_template(spec.get("template") if isinstance(spec, Mapping) else None, rules)
    except SpecError as error:
        return f"its pods were not created: {error}"
    return None


class PodCreator:
    def __init__(self, cache: ObjectCache, writer: Writer, retry_later: Callable[[float], None],
                 fail_workload: FailWorkload | None = None, rules_of: RulesOf | None = None) -> None:
        self.cache = cache
        self.rules_of = rules_of or (lambda _namespace: DEFAULT_RULES)
        self.writer = writer
        self.retry_later = retry_later  # asks for a later cycle when a pod had to wait or failed
        self.fail_workload = fail_workload
        self.created = 0  # pods created since start (for tests and logs)
        self._counted: dict[str, int] = {}      # node -> GPUs of its cached pods at the last recount
        self._in_flight: Counter[str] = Counter()  # node -> GPUs of pods whose create has not returned
        self._landed: Counter[str] = Counter()     # node -> GPUs of pods created since the last recount
        self._tasks: dict[str, asyncio.Task[None]] = {}  # workload key -> its creations
        self._pods_in_flight: set[str] = set()  # pod keys whose create has not returned

    def recount(self, gpus_by_node: Mapping[str, int]) -> None:
        """Physical use recounted at a cycle's start: the GPUs the cached pods request by node
        (``gpus_used_by_node`` of them, kept by the loop's live snapshot); pods in flight stay counted."""
        self._counted = dict(gpus_by_node)
        self._landed.clear()

    def busy(self, workload: Mapping[str, Any]) -> bool:
        return object_key(workload) in self._tasks

    def creating(self, pod_key: str) -> bool:
        """Whether this pod's create request is in flight (its watch echo may come first)."""
        return pod_key in self._pods_in_flight

    def start(self, workload: Mapping[str, Any], placement: tuple[PlacementEntry, ...],
              existing: list[dict[str, Any]]) -> int:
        """Start creating the workload's pods that are not there yet and fit their node now;
        returns how many were started (the others wait for a later cycle). They hold their GPUs
        on the ledger from now; they are built when their turn comes (``_create_all``)."""
        key = object_key(workload)
        if key in self._tasks:
            return 0
        metadata = workload.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
        names = {(pod.get("metadata") or {}).get("name") for pod in existing}
        reserved: dict[str, tuple[str, int]] = {}  # pod name -> (node, GPUs), as pods_for builds them
        for index, (node_name, gpus) in enumerate(replica_slots(placement)):
            name_of_pod = pod_name(name, index)
            if name_of_pod in names:
                continue
            if not self._fits(node_name, gpus):
                logger.info("Pod %s waits: node %s has no %d free GPUs yet", name_of_pod, node_name, gpus)
                self.retry_later(2.0)
                continue
            self._in_flight[node_name] += gpus
            self._pods_in_flight.add(f"{namespace}/{name_of_pod}" if namespace else name_of_pod)
            reserved[name_of_pod] = (node_name, gpus)
        if reserved:
            uid = str(metadata.get("uid") or "")
            self._tasks[key] = asyncio.create_task(self._create_all(key, uid, workload, placement, reserved),
                                                   name=f"gpuadmit pods of {key}")
        return len(reserved)

    async def drain(self) -> None:
        """Wait for every creation in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        await cancel_all(list(self._tasks.values()))
        self._tasks.clear()

    def _fits(self, node_name: str, gpus: int) -> bool:
        node = self.cache.get(NODE, node_name)
        if node is None:
            return False
        allocatable = gpu_count(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE))
        used = self._counted.get(node_name, 0) + self._in_flight[node_name] + self._landed[node_name]
        return used + gpus <= allocatable

    def _unreserve(self, reserved: Mapping[str, tuple[str, int]], namespace: str) -> None:
        for name_of_pod, (node_name, gpus) in reserved.items():
            self._pods_in_flight.discard(f"{namespace}/{name_of_pod}" if namespace else name_of_pod)
            self._in_flight[node_name] -= gpus

    async def _create_all(self, key: str, uid: str, workload: Mapping[str, Any], placement: tuple[PlacementEntry, ...],
                          reserved: Mapping[str, tuple[str, int]]) -> None:
        namespace = str((workload.get("metadata") or {}).get("namespace") or "")
        results: list[PodCreation] = []
        pods: list[dict[str, Any]] = []
        built = False
        failure: tuple[str, str] | None = None  # (reason, message) that fails the workload
        try:
            await self.writer.pods_turn()  # decisions first: nothing is built while a status write waits
            try:
                refusal = template_refusal(workload, self.rules_of(namespace or "default"))
                if refusal is not None:
                    failure = (POD_REFUSED, refusal)
                else:
                    pods = [pod for pod in pods_for(workload, placement) if pod["metadata"]["name"] in reserved]
                    built = True
            except Exception as error:  # this workload's trouble, never the others'
                logger.error("Building the pods of %s failed; it is marked Failed", key, exc_info=error)
                failure = (INTERNAL_ERROR, internal_error_message(error))
            if failure is not None:
                if self.fail_workload is not None:
                    await self.fail_workload(key, uid, *failure)  # its GPUs go with it
                return
            results = await asyncio.gather(*(self._create_one(pod, *reserved[pod["metadata"]["name"]])
                                             for pod in pods))
        finally:
            if not built:  # refused, failed or cancelled before building: its reservations are held no longer
                self._unreserve(reserved, namespace)
            self._tasks.pop(key, None)
        refused = next((result for result in results if result.refused), None)
        if refused is not None and self.fail_workload is not None:
            await self.fail_workload(key, uid, refused.refused, refused.message)  # its GPUs go with it
        elif not all(result.created for result in results):
            self.retry_later(1.0)  # the reservation stands; its missing pods come next cycle

    async def _create_one(self, pod: dict[str, Any], node_name: str, gpus: int) -> PodCreation:
        key = object_key(pod)
        result = PodCreation(False)
        try:
            result = await self.writer.create_pod(pod)
        finally:
            self._pods_in_flight.discard(key)
            self._in_flight[node_name] -= gpus
            if result.created:
                self._landed[node_name] += gpus
                self.created += 1
        return result
