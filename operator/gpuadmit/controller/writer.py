"""Every write the operator makes: status patches, pods, Events, the class label.

Each method does one API call (or one per pod), applies the answer to the cache
at once (so the next cycle sees it without waiting for the watch echo), and
turns failures into a result rather than an exception: a 409 Conflict means the
object moved on since the cycle read it, so the writer re-reads it into the
cache and the next cycle decides again on the fresh object (the assumption is
rolled back by that very re-read). The one exception is our own class label (a
follow-up write) landing first: the object is otherwise the one decided on, so the
status goes onto the relabelled version at once.

Status patches carry ``metadata.resourceVersion``, so a decision is only ever
written onto the exact object version it was computed from.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpuadmit.controller import api as kube
from gpuadmit.controller.api import ApiError, KubeApi, Urgency
from gpuadmit.controller.cache import POD, QUOTA, WORKLOAD, ObjectCache, object_key
from gpuadmit.controller.status import POD_NAME_TAKEN, POD_REFUSED, status_patch
from gpuadmit.core.model import API_GROUP, API_VERSION, CLASS_LABEL
from gpuadmit.core.pods import controlling_workload
from gpuadmit.core.timefmt import format_rfc3339

logger = logging.getLogger(__name__)

COMPONENT = "gpuadmit"
# Answers to a pod create that the same pod would get again (invalid or malformed): no retry.
PERMANENT_POD_ERRORS = frozenset({400, 422})
# A 403 is permanent when an admission policy refused the pod itself (Pod Security admission, a
# validating webhook); RBAC and ResourceQuota 403s can pass later and are retried.
POLICY_REFUSALS = ("violates PodSecurity", "denied the request")


def refused_for_good(error: ApiError) -> bool:
    """Whether creating the same pod again would be refused again."""
    if error.status in PERMANENT_POD_ERRORS:
        return True
    return error.status == 403 and any(marker in error.message for marker in POLICY_REFUSALS)


@dataclass(frozen=True)
class PodCreation:
    """What creating one pod came to: ``created`` (it exists and is ours), else ``refused`` names a
    reason that fails its workload (retrying would change nothing), else the next cycle retries."""

    created: bool
    refused: str = ""
    message: str = ""


def _controller_of(pod: Mapping[str, Any]) -> str:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return f"controlled by {ref.get('kind')} {ref.get('name')}"
    return "no controller"


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait until each has ended. Cancelled again while any runs on: on
    Python 3.11 ``asyncio.wait_for`` (inside every API request) can swallow a cancellation that
    arrives as its answer does, and the task then waits for its next job for ever."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


def _class_label(obj: Mapping[str, Any]) -> Any:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(CLASS_LABEL)


def _without_version_and_class(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object less what our class-label follow-up changes (its version, the label)."""
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")}
    metadata["labels"] = {k: v for k, v in (metadata.get("labels") or {}).items() if k != CLASS_LABEL}
    return {**obj, "metadata": metadata}


class FollowUps:
    """Writes that explain a decision but are not the decision (Events, the class label).

    They run on a few background workers at the lowest urgency, so a burst's status writes
    (what a tenant waits for) are not queued behind twice as many explanatory writes. Lost on
    exit, by design: a label that is still missing is set again by a later cycle.
    """

    def __init__(self, workers: int = 4) -> None:
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"gpuadmit follow-up {i}") for i in range(self._workers)]
        self._queue.put_nowait(job)

    async def drain(self) -> None:
        """Wait until every submitted job ran (tests, shutdown)."""
        if self._tasks:
            await self._queue.join()

    async def close(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job()
            except Exception:
                logger.exception("A follow-up write failed")
            finally:
                self._queue.task_done()


class Writer:
    def __init__(self, api: KubeApi, cache: ObjectCache, instance: str | None = None) -> None:
        self.api = api
        self.cache = cache
        self.instance = instance or socket.gethostname()
        self.conflicts = 0  # for logs and tests: how often a write met a newer object
        # Every status write that failed (conflict, server error, timeout): the loop runs another
        # cycle when this grows, because a failed write changes nothing a watch would report.
        self.failed_status_writes = 0
        self._status_writes: set[tuple[str, str]] = set()  # (kind, key) with a status patch in flight
        self.follow_ups = FollowUps()

    def explain_later(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str,
                      workload_class: str | None = None) -> None:
        """Queue the Event for a decision (and the class label) behind this cycle's status writes."""
        self.follow_ups.submit(lambda: self.post_event(obj, event_type, reason, message))
        if workload_class:
            self.label_later(obj, workload_class)

    def label_later(self, obj: Mapping[str, Any], workload_class: str | None) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if workload_class and labels.get(CLASS_LABEL) != workload_class:
            key = object_key(obj)
            self.follow_ups.submit(lambda: self.set_class_label(self.cache.get(WORKLOAD, key) or obj, workload_class))

    async def write_status(self, kind: str, obj: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
        """Patch only what differs from the cached status. Returns the new object, the old one if
        nothing changed, or None when the write failed (conflict, gone, refused)."""
        patch = status_patch(obj.get("status"), desired)
        if not patch:
            return dict(obj)
        resource = {WORKLOAD: kube.WORKLOADS, QUOTA: kube.QUOTAS}.get(kind, kube.POLICIES)
        writing = (kind, object_key(obj))
        self._status_writes.add(writing)
        try:
            try:
                updated = await self._patch_status(resource, obj, patch)
            except ApiError as error:
                relabelled = await self._only_relabelled(resource, obj, error)
                if relabelled is None:
                    raise
                self.conflicts += 1
                # Our own class label (a follow-up) landed between the cycle's read and this
                # write: what the decision was made on is unchanged, so it goes onto that version
                # now rather than a cycle later.
                updated = await self._patch_status(resource, relabelled, patch)
        except ApiError as error:
            await self._after_failed_write(kind, resource, obj, error)
            return None
        finally:
            self._status_writes.discard(writing)
        self.cache.put(kind, updated)
        return updated

    async def _patch_status(self, resource: kube.Resource, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        metadata = obj.get("metadata") or {}
        body = {"metadata": {"resourceVersion": metadata.get("resourceVersion")}, "status": patch}
        return await self.api.patch(resource, metadata["name"], body, metadata.get("namespace"), subresource="status")

    async def _only_relabelled(self, resource: kube.Resource, obj: Mapping[str, Any], error: ApiError) -> dict[str, Any] | None:
        """After a 409: the object as it is now if only its class label (and so its version) moved."""
        if error.status != 409 or resource is not kube.WORKLOADS:
            return None
        metadata = obj.get("metadata") or {}
        try:
            fresh = await self.api.get(resource, metadata["name"], metadata.get("namespace"))
        except ApiError:
            return None
        relabelled = _class_label(fresh) != _class_label(obj)  # else a 409 of the server's own (a fault, say)
        return fresh if relabelled and _without_version_and_class(fresh) == _without_version_and_class(obj) else None

    def writing_status(self, key: str, kind: str = WORKLOAD) -> bool:
        """Whether a status patch of ours on this object is in flight."""
        return (kind, key) in self._status_writes

    async def set_class_label(self, obj: Mapping[str, Any], workload_class: str | None) -> None:
        """The ``gpuadmit.io/class`` label on the GPUWorkload, so `kubectl get gw -l` can select by class."""
        metadata = obj.get("metadata") or {}
        if not workload_class or (metadata.get("labels") or {}).get(CLASS_LABEL) == workload_class:
            return
        try:
            updated = await self.api.patch(
                kube.WORKLOADS, metadata["name"], {"metadata": {"labels": {CLASS_LABEL: workload_class}}},
                metadata.get("namespace"), urgency=Urgency.EXPLAIN,
            )
        except ApiError as error:
            logger.info("Could not label %s: %s", object_key(obj), error)
            return
        self.cache.put(WORKLOAD, updated)

    async def pods_turn(self) -> None:
        """Until a pod creation would be sent now: no decision's write waits for a slot."""
        await self.api.turn(Urgency.MATERIALISE)

    async def create_pod(self, pod: Mapping[str, Any]) -> PodCreation:
        """Create one pod of a workload. An existing pod of that name counts as created only if the
        same workload controls it (restarts never duplicate); one of another owner is refused, as
        is a pod the API server finds invalid: holding GPUs for either would hold them for nothing."""
        metadata = pod["metadata"]
        try:
            created = await self.api.create(kube.PODS, pod, metadata["namespace"], urgency=Urgency.MATERIALISE)
        except ApiError as error:
            if error.status == 409 and error.reason == "AlreadyExists":
                return await self._existing_pod(pod)
            where = f"{metadata['namespace']}/{metadata['name']}"
            logger.warning("Could not create pod %s: %s", where, error)
            if refused_for_good(error):  # the same pod would be refused again: no retry loop
                return PodCreation(False, POD_REFUSED,
                                   f"the API server refused pod {where} ({error.status} {error.reason}): "
                                   f"{error.message or error}")
            return PodCreation(False)
        self.cache.put(POD, created)
        return PodCreation(True)

    async def _existing_pod(self, pod: Mapping[str, Any]) -> PodCreation:
        """A 409 on create: the pod of that name is ours only if this very workload controls it."""
        metadata = pod["metadata"]
        where = f"{metadata['namespace']}/{metadata['name']}"
        try:
            existing = await self.api.get(kube.PODS, metadata["name"], metadata["namespace"])
        except ApiError as error:
            logger.info("Pod %s answered 409 but cannot be read (%s); retrying next cycle", where, error)
            return PodCreation(False)
        ours, theirs = controlling_workload(pod), controlling_workload(existing)
        if theirs == ours:
            self.cache.put(POD, existing)
            return PodCreation(True)
        if theirs is not None and ours is not None and theirs[0] == ours[0]:
            return PodCreation(False)  # an earlier workload of this name: its pod is deleted, then ours comes
        owner = _controller_of(existing)
        logger.warning("Pod %s exists and is not this workload's (%s)", where, owner)
        return PodCreation(False, POD_NAME_TAKEN,
                           f"pod {where}, the name gpuadmit gives this workload's replica, already exists and is "
                           f"not this workload's ({owner}); delete that pod or rename the workload")

    async def delete_pod(self, pod: Mapping[str, Any]) -> bool:
        """Delete a pod. A pod that is gone at once leaves the cache now; a terminating one
        (graceful deletion) stays until the watch reports it gone, because it still holds its GPUs."""
        metadata = pod.get("metadata") or {}
        try:
            answer = await self.api.delete(kube.PODS, metadata["name"], metadata.get("namespace"))
        except ApiError as error:
            logger.warning("Could not delete pod %s: %s", object_key(pod), error)
            return False
        terminating = isinstance(answer, dict) and answer.get("kind") == "Pod" and \
            bool((answer.get("metadata") or {}).get("deletionTimestamp"))
        if terminating and isinstance(answer, dict):
            self.cache.put(POD, answer)
        else:
            self.cache.remove(POD, pod)
        return True

    async def post_event(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on the GPUWorkload (or a native Job or pod), in its own namespace (tenants
        see only their own)."""
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace")
        if not namespace:
            return
        now = format_rfc3339(time.time())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{metadata.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {  # a GPUWorkload, or the native object it mirrors (controller.native)
                "apiVersion": obj.get("apiVersion") or f"{API_GROUP}/{API_VERSION}",
                "kind": obj.get("kind") or "GPUWorkload",
                "name": metadata.get("name"),
                "namespace": namespace,
                "uid": metadata.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create(kube.EVENTS, event, namespace, urgency=Urgency.EXPLAIN)
        except ApiError as error:  # an Event is an explanation, never worth failing a cycle for
            logger.info("Could not post event on %s: %s", object_key(obj), error)

    async def _after_failed_write(self, kind: str, resource: kube.Resource, obj: Mapping[str, Any], error: ApiError) -> None:
        metadata = obj.get("metadata") or {}
        self.failed_status_writes += 1
        if error.status == 409:
            self.conflicts += 1
            logger.info("Conflict writing %s: it changed since this cycle read it; retrying next cycle", object_key(obj))
        elif error.status != 404:
            logger.warning("Could not write the status of %s: %s", object_key(obj), error)
        try:
            fresh = await self.api.get(resource, metadata["name"], metadata.get("namespace"))
        except ApiError as reread_error:
            if reread_error.status == 404:
                self.cache.remove(kind, obj)
            return
        self.cache.put(kind, fresh)

