"""Pods kube-scheduler cannot bind: give the reservation back and choose again elsewhere.

gpuadmit reserves GPUs on a node and pins each pod there (core.pods); kube-scheduler binds
it, checking what gpuadmit does not model (volumes, ports, pod affinity, a resource another
scheduler took meanwhile). When it cannot, it sets the pod's ``PodScheduled`` condition False
with reason ``Unschedulable`` and says why. A pod of a holding workload in that state for
longer than ``--unschedulable-seconds`` (counted from the condition's ``lastTransitionTime``,
which kube-scheduler moves only when the status flips, so a restart of the operator does not
reset it) requeues its workload: the loop deletes its pods, gives its GPUs back, writes
reason ``Unschedulable`` with the scheduler's message and posts a Warning Event with that
reason. The workload is not lost: it is Queued and decided again, and for ``AVOID_SECONDS``
the node its pod could not go to is left out of its eligible nodes (``build_snapshot``'s
``avoided_nodes``), so the next cycle does not make the same choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuadmit.core.pods import pod_node
from gpuadmit.core.timefmt import parse_rfc3339_or_none

UNSCHEDULABLE = "Unschedulable"  # kube-scheduler's condition reason, and ours on the requeued workload
AVOID_SECONDS = 600.0  # how long a workload keeps away from the node its pod could not be bound to


def unschedulable_condition(pod: Mapping[str, Any]) -> tuple[float | None, str] | None:
    """(since, scheduler's message) of a pod not bound and reported ``Unschedulable``, else None.
    ``since`` is None when the condition carries no readable time."""
    spec, status = pod.get("spec"), pod.get("status")
    if isinstance(spec, Mapping) and spec.get("nodeName"):
        return None
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for condition in conditions if isinstance(conditions, list) else []:
        if (isinstance(condition, Mapping) and condition.get("type") == "PodScheduled"
                and condition.get("status") == "False" and condition.get("reason") == UNSCHEDULABLE):
            return parse_rfc3339_or_none(condition.get("lastTransitionTime")), str(condition.get("message") or "")
    return None


class UnschedulableTracker:
    """Which holding workloads to requeue because a pod of theirs stays unschedulable, and the
    nodes each workload keeps away from for a while afterwards."""

    def __init__(self, grace_seconds: float, avoid_seconds: float = AVOID_SECONDS) -> None:
        self.grace_seconds = grace_seconds
        self.avoid_seconds = avoid_seconds
        self._first_seen: dict[str, float] = {}  # pod uid -> when seen unschedulable without a readable time
        self._avoided_until: dict[str, dict[str, float]] = {}  # workload key -> node -> until

    def overdue(self, pods_by_workload: Mapping[str, Iterable[Mapping[str, Any]]],
                now: float) -> tuple[dict[str, tuple[str, str]], float | None]:
        """Workload key -> (reason, why) for each holding workload (``pods_by_workload`` holds only
        their own pods) with a pod unschedulable for longer than the grace period, and the seconds
        until the next pod becomes overdue (None: none is waiting). The node of each overdue pod
        is avoided by its workload from now on."""
        overdue: dict[str, tuple[str, str]] = {}
        next_due: float | None = None
        seen: set[str] = set()
        for key, pods in pods_by_workload.items():
            for pod in pods:
                metadata = pod.get("metadata") or {}
                if metadata.get("deletionTimestamp"):
                    continue
                found = unschedulable_condition(pod)
                if found is None:
                    continue
                since, message = found
                uid = str(metadata.get("uid") or metadata.get("name"))
                seen.add(uid)
                if since is None:
                    since = self._first_seen.setdefault(uid, now)
                waited = now - since
                if waited < self.grace_seconds:
                    left = self.grace_seconds - waited
                    next_due = left if next_due is None else min(next_due, left)
                    continue
                node = pod_node(pod)
                if key not in overdue:
                    where = f" on node {node}" if node else ""
                    overdue[key] = (UNSCHEDULABLE, f"pod {metadata.get('name')} could not be scheduled{where} for "
                                                   f"{waited:.0f}s: {message or 'no reason given'}")
                if node:
                    self._avoided_until.setdefault(key, {})[node] = now + self.avoid_seconds
        self._first_seen = {uid: at for uid, at in self._first_seen.items() if uid in seen}
        return overdue, next_due

    def avoided_nodes(self, now: float) -> dict[str, frozenset[str]]:
        """Workload key -> the nodes it keeps away from now (expired entries dropped)."""
        avoided: dict[str, frozenset[str]] = {}
        for key, nodes in list(self._avoided_until.items()):
            current = {node: until for node, until in nodes.items() if until > now}
            if current:
                self._avoided_until[key] = current
                avoided[key] = frozenset(current)
            else:
                del self._avoided_until[key]
        return avoided
