"""What a GPUWorkload's (and the MarginPolicy's) status should say: pure functions.

Every function here returns the *desired* status as a dict of the fields the
operator owns; ``status_patch`` turns current + desired into the smallest merge
patch (empty when nothing changed), which is how the writer avoids rewriting a
thousand queued objects every cycle.

Conditions follow the Kubernetes conventions (type, status, reason, message,
lastTransitionTime, observedGeneration); ``lastTransitionTime`` moves only when
a condition's status flips. The set is small on purpose:

- ``Admitted``: True once GPUs are reserved; False while queued, rejected or
  preempted, with the machine reason.
- ``Running``: True while every replica's pod runs; present once admitted.
- ``Finished``: True when the workload reached an end (Succeeded, Failed,
  Rejected); the reason says which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gpuadmit.controller.queueview import DEFAULT_EXACT_HEAD, queued_message, shown_position
from gpuadmit.core.errors import SpecError
from gpuadmit.core.guarantee import QuotaReport
from gpuadmit.core.model import Action, Decision, Phase, Preemption
from gpuadmit.core.quota import Conflict
from gpuadmit.core.timefmt import format_rfc3339

ADMITTED = "Admitted"
RUNNING = "Running"
FINISHED = "Finished"
ACCEPTED = "Accepted"  # on the MarginPolicy
READY = "Ready"  # on a GPUQuota
OVERCOMMITTED = "Overcommitted"  # on a GPUQuota

MESSAGE_LIMIT = 1024  # keep statuses small; the Event carries the same text
MARGIN_DECIMALS = 4  # float noise must not count as a change

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.REJECTED.value})

# Reasons the operator itself gives (the engine's are in core.model.Reason).
POD_FAILED = "PodFailed"
POD_DELETED = "PodDeleted"
PODS_RUNNING = "PodsRunning"
PODS_STARTING = "PodsStarting"
PODS_SUCCEEDED = "PodsSucceeded"
NODE_UNAVAILABLE = "NodeUnavailable"
PLACEMENT_INVALID = "PlacementInvalid"  # status.placement does not account for the replicas (core.placement)
POD_REFUSED = "PodRefused"        # the API server refused one of the workload's pods for good (400/422)
POD_NAME_TAKEN = "PodNameTaken"   # a pod of another owner already has the name one of ours needs
INTERNAL_ERROR = "InternalError"  # gpuadmit failed while handling this one workload
WORKLOAD_FAILURE_REASONS = (POD_REFUSED, POD_NAME_TAKEN, INTERNAL_ERROR)


def internal_error_message(error: Exception) -> str:
    """The status message of a workload marked Failed with ``INTERNAL_ERROR`` for ``error``."""
    return f"gpuadmit could not handle this workload: {type(error).__name__}: {error}"
POLICY_VALID = "Valid"
POLICY_INVALID = "InvalidSpec"
QUOTA_IN_FORCE = "InForce"
QUOTA_CONFLICT = "NamespaceConflict"
GUARANTEES_FIT = "GuaranteesFit"
GUARANTEES_EXCEED_CAPACITY = "GuaranteesExceedCapacity"


def _short(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"


def _status_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, Mapping) else {}


def _generation(obj: Mapping[str, Any]) -> int | None:
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) else None


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    condition_type: str,
    status: bool,
    reason: str,
    message: str,
    now: float,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """``conditions`` with one condition set; lastTransitionTime kept unless the status flips."""
    value = "True" if status else "False"
    result: list[dict[str, Any]] = []
    replaced = False
    for existing in conditions or []:
        if not isinstance(existing, Mapping):
            continue
        if existing.get("type") != condition_type:
            result.append(dict(existing))
            continue
        replaced = True
        same = existing.get("status") == value
        result.append(_condition(condition_type, value, reason, message,
                                 existing.get("lastTransitionTime") if same else format_rfc3339(now), generation))
    if not replaced:
        result.append(_condition(condition_type, value, reason, message, format_rfc3339(now), generation))
    return result


def _condition(condition_type: str, value: str, reason: str, message: str, since: Any, generation: int | None) -> dict[str, Any]:
    condition = {"type": condition_type, "status": value, "reason": reason, "message": _short(message),
                 "lastTransitionTime": since or ""}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def remove_condition(conditions: Iterable[Mapping[str, Any]] | None, condition_type: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions or [] if isinstance(c, Mapping) and c.get("type") != condition_type]


def decision_message(decision: Decision) -> str:
    """The decision's human message; an InvalidSpec one always starts with the field it is about."""
    if decision.field and not decision.message.startswith(decision.field):
        return f"{decision.field}: {decision.message}"
    return decision.message


# The queue fields a status carries only while Queued (controller.queueview says what they mean).
NOT_QUEUED = {"queuePosition": None, "queuePositionApproximate": None, "queue": None}


def decision_status(workload_obj: Mapping[str, Any], decision: Decision, now: float,
                    exact_head: int = DEFAULT_EXACT_HEAD) -> dict[str, Any]:
    """The status a Decision asks for (admit, queue or reject). A queue position past the first
    ``exact_head`` is shown banded (controller.queueview), message included."""
    message = decision_message(decision)
    queue_fields: dict[str, Any] = dict(NOT_QUEUED)
    if decision.action == Action.QUEUE and decision.queue_position is not None:
        shown = shown_position(decision.queue_position, exact_head)
        message = queued_message(message, decision.queue_position, shown)
        queue_fields = {"queuePosition": shown.value, "queuePositionApproximate": shown.approximate or None,
                        "queue": shown.text}
    current = _status_of(workload_obj)
    generation = _generation(workload_obj)
    conditions = current.get("conditions")
    desired: dict[str, Any] = {
        "reason": decision.reason.value,
        "message": _short(message),
        "class": decision.workload_class,
        "classReason": decision.class_reason or None,
        "marginPerGPUHour": None if decision.margin_per_gpu_hour is None else round(decision.margin_per_gpu_hour, MARGIN_DECIMALS),
        "observedGeneration": generation,
    }
    if decision.action == Action.ADMIT:
        desired.update(
            phase=Phase.ADMITTED.value,
            placement=[{"node": entry.node, "gpus": entry.gpus, "replicas": entry.replicas} for entry in decision.placement],
            admittedAt=format_rfc3339(now),
        )
        conditions = set_condition(conditions, ADMITTED, True, decision.reason.value, message, now, generation)
        conditions = set_condition(conditions, RUNNING, False, PODS_STARTING, "pods are being created", now, generation)
        conditions = remove_condition(conditions, FINISHED)
    elif decision.action == Action.QUEUE:
        desired.update(phase=Phase.QUEUED.value, placement=None, admittedAt=None)
        conditions = set_condition(conditions, ADMITTED, False, decision.reason.value, message, now, generation)
        conditions = remove_condition(conditions, RUNNING)
    else:
        desired.update(phase=Phase.REJECTED.value, placement=None, admittedAt=None)
        conditions = set_condition(conditions, ADMITTED, False, decision.reason.value, message, now, generation)
        conditions = remove_condition(conditions, RUNNING)
        conditions = set_condition(conditions, FINISHED, True, decision.reason.value, message, now, generation)
    desired.update(queue_fields)
    desired["conditions"] = conditions
    return desired


def preempted_status(workload_obj: Mapping[str, Any], preemption: Preemption, now: float) -> dict[str, Any]:
    """Preempted: GPUs given up, back in the queue (a pending phase), counter incremented."""
    current = _status_of(workload_obj)
    generation = _generation(workload_obj)
    previous = current.get("preemptions")
    message = preemption.message or f"preempted by {preemption.preempted_by}, which earns more per GPU-hour"
    conditions = set_condition(current.get("conditions"), ADMITTED, False, preemption.reason.value, message, now, generation)
    conditions = set_condition(conditions, RUNNING, False, preemption.reason.value, message, now, generation)
    return {
        "phase": Phase.PREEMPTED.value,
        "reason": preemption.reason.value,
        "message": _short(message),
        "preemptedBy": preemption.preempted_by,
        "preemptions": (previous if isinstance(previous, int) else 0) + 1,
        "queuedSince": format_rfc3339(now),  # aging and maxQueueSeconds count from the preemption
        **NOT_QUEUED,
        "placement": None,
        "admittedAt": None,
        "observedGeneration": generation,
        "conditions": conditions,
    }


def requeued_status(workload_obj: Mapping[str, Any], reason: str, message: str, now: float) -> dict[str, Any]:
    """Back to the queue without a preemptor (its node went away): a fresh decision comes next cycle."""
    current = _status_of(workload_obj)
    generation = _generation(workload_obj)
    conditions = set_condition(current.get("conditions"), ADMITTED, False, reason, message, now, generation)
    conditions = remove_condition(conditions, RUNNING)
    return {
        "phase": Phase.QUEUED.value,
        "reason": reason,
        "message": _short(message),
        "queuedSince": format_rfc3339(now),
        **NOT_QUEUED,
        "placement": None,
        "admittedAt": None,
        "observedGeneration": generation,
        "conditions": conditions,
    }


def pod_phase(pod: Mapping[str, Any]) -> str:
    status = pod.get("status")
    return str(status.get("phase") or "Pending") if isinstance(status, Mapping) else "Pending"


def rejected_status(workload_obj: Mapping[str, Any], reason: str, message: str, now: float) -> dict[str, Any]:
    """Rejected by the operator outside a decision of the engine (a mirror it no longer trusts or
    no longer decides): whatever it held is given back, placement and all, as with a rejection."""
    current = _status_of(workload_obj)
    generation = _generation(workload_obj)
    conditions = set_condition(current.get("conditions"), ADMITTED, False, reason, message, now, generation)
    conditions = set_condition(conditions, RUNNING, False, reason, message, now, generation)
    conditions = set_condition(conditions, FINISHED, True, reason, message, now, generation)
    return {
        "phase": Phase.REJECTED.value,
        "reason": reason,
        "message": _short(message),
        "queuePosition": None,
        "placement": None,
        "admittedAt": None,
        "observedGeneration": generation,
        "conditions": conditions,
    }


def phase_from_pods(pods: Sequence[Mapping[str, Any]], replicas: int) -> tuple[str, str, str] | None:
    """(phase, reason, message) the pods of a holding workload imply, or None to leave it as it is.

    Failed as soon as one pod failed; Succeeded when every replica succeeded;
    Running when every replica has a pod and all of them run (a replica that
    already succeeded while others still run keeps the workload Running).
    """
    live = [pod for pod in pods if not (pod.get("metadata") or {}).get("deletionTimestamp")]
    for pod in live:
        if pod_phase(pod) == "Failed":
            name = (pod.get("metadata") or {}).get("name", "?")
            detail = (pod.get("status") or {}).get("message") or (pod.get("status") or {}).get("reason") or "no detail"
            return Phase.FAILED.value, POD_FAILED, f"pod {name} failed ({detail}); its siblings are deleted"
    if len(live) < replicas:
        return None
    phases = [pod_phase(pod) for pod in live]
    if all(phase == "Succeeded" for phase in phases):
        return Phase.SUCCEEDED.value, PODS_SUCCEEDED, "its pod succeeded" if len(live) == 1 else f"all {len(live)} pods succeeded"
    if all(phase in ("Running", "Succeeded") for phase in phases):
        return Phase.RUNNING.value, PODS_RUNNING, "its pod is running" if len(live) == 1 else f"all {len(live)} pods are running"
    return None


def pods_phase_status(workload_obj: Mapping[str, Any], phase: str, reason: str, message: str, now: float) -> dict[str, Any]:
    """The status for a phase the pods decided (Running, Succeeded, Failed, or Failed because a pod vanished)."""
    current = _status_of(workload_obj)
    generation = _generation(workload_obj)
    conditions = current.get("conditions")
    conditions = set_condition(conditions, RUNNING, phase == Phase.RUNNING.value, reason, message, now, generation)
    if phase in TERMINAL_PHASES:
        conditions = set_condition(conditions, FINISHED, True, reason, message, now, generation)
    return {"phase": phase, "reason": reason, "message": _short(message), "conditions": conditions}


def policy_status(policy_obj: Mapping[str, Any], error_field: str | None, error_message: str, now: float) -> dict[str, Any]:
    """The MarginPolicy's ``Accepted`` condition: False names the offending field. A valid spec
    is also recorded as ``acceptedSpec``, so a restarted operator keeps it in force while a
    later, invalid spec is fixed."""
    current = _status_of(policy_obj)
    generation = _generation(policy_obj)
    if error_field is None:
        conditions = set_condition(current.get("conditions"), ACCEPTED, True, POLICY_VALID, "policy is in force", now, generation)
        return {"observedGeneration": generation, "conditions": conditions, "acceptedSpec": policy_obj.get("spec")}
    message = f"{error_field}: {error_message}; the last valid policy stays in force"
    conditions = set_condition(current.get("conditions"), ACCEPTED, False, POLICY_INVALID, message, now, generation)
    return {"observedGeneration": generation, "conditions": conditions}


def quota_status(quota_obj: Mapping[str, Any], report: QuotaReport | None, namespaces: Sequence[str],
                 conflicts: Sequence[Conflict], error: SpecError | None, now: float) -> dict[str, Any]:
    """A GPUQuota's status: guaranteed, used and lent GPUs (per product and in all), the namespaces
    it applies to, ``Ready`` (False when invalid or when a namespace is contested) and
    ``Overcommitted`` (its guarantees on a product exceed what the cluster has of it)."""
    current = _status_of(quota_obj)
    generation = _generation(quota_obj)
    name = str((quota_obj.get("metadata") or {}).get("name", ""))
    if error is not None:
        conditions = set_condition(current.get("conditions"), READY, False, POLICY_INVALID,
                                   f"{error.field}: {error.message}; the quota is not in force", now, generation)
        return {"observedGeneration": generation, "conditions": conditions}
    if conflicts:
        described = "; ".join(
            f"namespace {c.namespace} is also matched by GPUQuota {c.lost if c.kept == name else c.kept}, "
            + ("which is newer: this one applies there" if c.kept == name else "which is older and applies there")
            for c in conflicts[:10]
        )
        conditions = set_condition(current.get("conditions"), READY, False, QUOTA_CONFLICT, described, now, generation)
    else:
        conditions = set_condition(current.get("conditions"), READY, True, QUOTA_IN_FORCE,
                                   f"applies to {len(namespaces)} namespaces", now, generation)
    over = report.overcommitted if report is not None else ()
    conditions = set_condition(
        conditions, OVERCOMMITTED, bool(over), GUARANTEES_EXCEED_CAPACITY if over else GUARANTEES_FIT,
        f"the guarantees of all GPUQuotas on {', '.join(over)} exceed the cluster's GPUs of it: not all can be honoured at once"
        if over else "every guarantee fits in the cluster's GPUs", now, generation,
    )
    rows = report.products if report is not None else ()
    return {
        "observedGeneration": generation,
        "guaranteedGPUs": report.guaranteed if report is not None else 0,
        "usedGPUs": report.used if report is not None else 0,
        "lentGPUs": report.lent if report is not None else 0,
        "products": [{"product": r.product, "guaranteed": r.guaranteed, "used": r.used, "lent": r.lent} for r in rows],
        "namespaces": list(namespaces)[:1000],
        "conditions": conditions,
    }


def status_patch(current_status: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``desired`` that differ from ``current_status`` (None removes a field); {} if none."""
    current = current_status if isinstance(current_status, Mapping) else {}
    patch: dict[str, Any] = {}
    for name, value in desired.items():
        if value is None:
            if current.get(name) is not None:
                patch[name] = None
        elif current.get(name) != value:
            patch[name] = value
    return patch
