"""What a real API server does per kind beyond the generic registry: defaults on create and
update, and the kind's own validation (the registry's "strategies" in Kubernetes' words).

The handler fills a create's defaults as it reads the body (``apply_defaults``: admission webhooks
see them, as on a real server, whose decoding defaults); the store calls ``prepare_create`` (the
defaults again, the generated fields, validation) on a new object once the server has given it a
``uid``, and ``prepare_update`` on every main-resource write (``status`` and ``binding`` writes
keep the spec, so they are not checked here); both may fill defaults into the object they are
given and return the causes of a 422 Invalid, worded like the real server's (``field: Forbidden:
...``).

- **Pods**: ``spec.schedulingGates`` may only be set at create (each name once, and not beside a
  ``nodeName``); an update may remove gates, never add one (KEP-3521). A pod created with gates
  gets ``PodScheduled`` False, reason ``SchedulingGated``. Otherwise the spec is immutable except the fields the real server lets
  change: container and init container images, ``activeDeadlineSeconds`` (set, or lowered),
  ``tolerations`` (additions only; ``tolerationSeconds`` of an existing one may change),
  ``terminationGracePeriodSeconds`` (from negative to 1); and, while the pod is gated (KEP-3838),
  ``nodeSelector`` (additions only), the required node affinity (set when absent; else each term
  may only gain ``matchExpressions``/``matchFields`` after its own, the number of terms fixed) and
  the preferred node affinity (freely).
- **batch/v1 Jobs**: ``parallelism`` 1, ``completions`` 1 when both are unset, ``backoffLimit`` 6,
  ``completionMode`` NonIndexed, ``suspend`` false, ``podReplacementPolicy`` TerminatingOrFailed
  (Failed with a ``podFailurePolicy``), the Job's labels from its template's when it has none
  (the generated ones included);
  unless ``manualSelector`` is true, the selector ``batch.kubernetes.io/controller-uid: UID`` and
  the template labels ``batch.kubernetes.io/controller-uid``, ``batch.kubernetes.io/job-name``,
  ``controller-uid`` and ``job-name``. The selector must select the template's labels. On update
  ``spec.selector`` and ``spec.completionMode`` are immutable, and so is ``spec.template``, except
  that while the Job is suspended and not started (no ``status.startTime``) the template's labels,
  annotations, ``nodeSelector``, tolerations, node affinity and ``schedulingGates`` may change.
- **apps/v1 Deployments, ReplicaSets, StatefulSets**: ``replicas`` 1 and the kind's other
  defaults (rolling update strategy, history limits, ...); ``spec.selector`` is required, must
  select the template's labels and is immutable.

A pod template is not defaulted beyond this, as pods themselves are not (see docs/emulator.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubeapi_emulator.selectors import compile_label_selector, format_selector, label_selector_problems
from kubeapi_emulator.store import rfc3339_now

Causes = list[dict[str, str]]
StorageKey = tuple[str, str]

POD_STORAGE: StorageKey = ("", "pods")
JOB_STORAGE: StorageKey = ("batch", "jobs")
DEPLOYMENT_STORAGE: StorageKey = ("apps", "deployments")
REPLICASET_STORAGE: StorageKey = ("apps", "replicasets")
STATEFULSET_STORAGE: StorageKey = ("apps", "statefulsets")
SCALABLE: frozenset[StorageKey] = frozenset({DEPLOYMENT_STORAGE, REPLICASET_STORAGE, STATEFULSET_STORAGE})

SCHEDULING_GATED = "SchedulingGated"
SCHEDULING_GATED_MESSAGE = "Scheduling is blocked due to non-empty scheduling gates"
JOB_CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_CONTROLLER_UID_LABEL = "controller-uid"
LEGACY_JOB_NAME_LABEL = "job-name"

_POD_UPDATE_FORBIDDEN = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)")


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _shown(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def invalid(path: str, value: Any, message: str) -> dict[str, str]:
    return {"reason": "FieldValueInvalid", "field": path, "message": f"Invalid value: {_shown(value)}: {message}"}


def forbidden(path: str, message: str) -> dict[str, str]:
    return {"reason": "FieldValueForbidden", "field": path, "message": f"Forbidden: {message}"}


def required(path: str, message: str = "") -> dict[str, str]:
    return {"reason": "FieldValueRequired", "field": path,
            "message": f"Required value{': ' + message if message else ''}"}


def semantic(value: Any) -> Any:
    """The value as Kubernetes' semantic equality compares it: an empty list, map or string, and
    ``null``, are the same as an absent field."""
    if isinstance(value, dict):
        kept = {key: semantic(item) for key, item in value.items()}
        return {key: item for key, item in kept.items() if item not in (None, {}, [], "")}
    if isinstance(value, list):
        return [semantic(item) for item in value]
    return value


# -- pods ------------------------------------------------------------------------------------------

def gate_names(pod_spec: Mapping[str, Any]) -> list[str]:
    return [str(_map(gate).get("name")) for gate in _list(pod_spec.get("schedulingGates"))]


def is_gated(pod: Mapping[str, Any]) -> bool:
    return bool(_list(_map(pod.get("spec")).get("schedulingGates")))


def _gate_create_causes(pod_spec: Mapping[str, Any]) -> Causes:
    """A gate names itself once, and a pod bound by name at create cannot wait for its gates."""
    names = gate_names(pod_spec)
    causes = [{"reason": "FieldValueDuplicate", "field": f"spec.schedulingGates[{index}]",
               "message": f"Duplicate value: {json.dumps(name)}"}
              for index, name in enumerate(names) if name in names[:index]]
    if names and pod_spec.get("nodeName"):
        causes.append(forbidden("spec.nodeName", "cannot be set until all schedulingGates have been removed"))
    return causes


def _prepare_pod_create(pod: dict[str, Any]) -> Causes:
    causes = _gate_create_causes(_map(pod.get("spec")))
    if causes:
        return causes
    if is_gated(pod):
        status = pod["status"] = dict(_map(pod.get("status")))
        conditions = [c for c in _list(status.get("conditions")) if _map(c).get("type") != "PodScheduled"]
        status["conditions"] = [*conditions, {"type": "PodScheduled", "status": "False", "reason": SCHEDULING_GATED,
                                              "message": SCHEDULING_GATED_MESSAGE, "lastProbeTime": None,
                                              "lastTransitionTime": rfc3339_now()}]
    return []


def _gate_update_causes(old_spec: Mapping[str, Any], new_spec: Mapping[str, Any]) -> Causes:
    old_names = set(gate_names(old_spec))
    return [forbidden(f"spec.schedulingGates[{index}].name",
                      f"only deletion is allowed, but found new scheduling gate '{name}'")
            for index, name in enumerate(gate_names(new_spec)) if name not in old_names]


def _toleration_causes(old: list[Any], new: list[Any]) -> Causes:
    """Existing tolerations stay (their ``tolerationSeconds`` may change); new ones may be added."""
    def without_seconds(toleration: Any) -> Any:
        return semantic({k: v for k, v in _map(toleration).items() if k != "tolerationSeconds"})
    remaining = [without_seconds(t) for t in new]
    for toleration in old:
        wanted = without_seconds(toleration)
        if wanted not in remaining:
            return [forbidden("spec.tolerations", "existing toleration can not be modified except its tolerationSeconds")]
        remaining.remove(wanted)
    return []


def _term_only_adds(old_term: Any, new_term: Any) -> bool:
    old_term, new_term = _map(old_term), _map(new_term)
    old_parts = [semantic(_list(old_term.get(key))) for key in ("matchExpressions", "matchFields")]
    new_parts = [semantic(_list(new_term.get(key))) for key in ("matchExpressions", "matchFields")]
    if not any(old_parts) and any(new_parts):
        return False  # an empty term matches no node: giving it requirements would widen the pod's choice
    return all(new[:len(old)] == old for old, new in zip(old_parts, new_parts, strict=True))


def _node_affinity_causes(old_affinity: Any, new_affinity: Any) -> Causes:
    """KEP-3838 on a gated pod: the required node affinity may only narrow."""
    path = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    old_required = _map(old_affinity).get("requiredDuringSchedulingIgnoredDuringExecution")
    if old_required is None:
        return []
    old_terms = _list(_map(old_required).get("nodeSelectorTerms"))
    new_terms = _list(_map(_map(new_affinity).get("requiredDuringSchedulingIgnoredDuringExecution")).get("nodeSelectorTerms"))
    if old_terms and len(old_terms) != len(new_terms):
        return [invalid(path, new_terms, "no additions/deletions to non-empty NodeSelectorTerms list are allowed")]
    return [invalid(f"{path}[{index}]", new_terms[index], "only additions are allowed (no mutations or deletions)")
            for index, term in enumerate(old_terms) if not _term_only_adds(term, new_terms[index])]


def pod_spec_update_causes(old_spec: Mapping[str, Any], new_spec: Mapping[str, Any]) -> Causes:
    """The real server's pod update rules (ValidatePodUpdate) on two pod specs."""
    causes = _gate_update_causes(old_spec, new_spec)
    causes += [cause for cause in _gate_create_causes(new_spec) if cause["reason"] == "FieldValueDuplicate"]
    munged = dict(new_spec)
    for key in ("containers", "initContainers"):
        old_containers, new_containers = _list(old_spec.get(key)), _list(new_spec.get(key))
        if len(old_containers) == len(new_containers):
            munged[key] = [{**_map(new), "image": _map(old).get("image")} if "image" in _map(old) or "image" in _map(new)
                           else new for old, new in zip(old_containers, new_containers, strict=True)]
    old_deadline, new_deadline = old_spec.get("activeDeadlineSeconds"), new_spec.get("activeDeadlineSeconds")
    if old_deadline != new_deadline:
        if new_deadline is None:
            causes.append(invalid("spec.activeDeadlineSeconds", None, "must not update from a positive integer to nil value"))
        elif isinstance(old_deadline, int) and isinstance(new_deadline, int) and new_deadline > old_deadline:
            causes.append(invalid("spec.activeDeadlineSeconds", new_deadline,
                                  "must be less than or equal to previous value"))
        munged["activeDeadlineSeconds"] = old_deadline
    causes += _toleration_causes(_list(old_spec.get("tolerations")), _list(new_spec.get("tolerations")))
    munged["tolerations"] = old_spec.get("tolerations")
    old_grace = old_spec.get("terminationGracePeriodSeconds")
    if isinstance(old_grace, int) and old_grace < 0 and new_spec.get("terminationGracePeriodSeconds") == 1:
        munged["terminationGracePeriodSeconds"] = old_grace
    munged["schedulingGates"] = old_spec.get("schedulingGates")
    if gate_names(old_spec):  # mutable scheduling directives of a gated pod
        old_selector, new_selector = _map(old_spec.get("nodeSelector")), _map(new_spec.get("nodeSelector"))
        if any(new_selector.get(key) != value for key, value in old_selector.items()):
            causes.append(invalid("spec.nodeSelector", new_selector,
                                  "only additions to spec.nodeSelector are allowed (no mutations or deletions)"))
        munged["nodeSelector"] = old_spec.get("nodeSelector")
        old_affinity, new_affinity = _map(old_spec.get("affinity")), _map(new_spec.get("affinity"))
        causes += _node_affinity_causes(old_affinity.get("nodeAffinity"), new_affinity.get("nodeAffinity"))
        munged["affinity"] = {**new_affinity, "nodeAffinity": old_affinity.get("nodeAffinity")}
        if semantic(munged["affinity"]) == {} and semantic(old_affinity) == {}:
            munged["affinity"] = old_spec.get("affinity")
    if semantic(munged) != semantic(dict(old_spec)):
        changed = sorted(key for key in set(munged) | set(old_spec)
                         if semantic(munged.get(key)) != semantic(old_spec.get(key)))
        causes.append(forbidden("spec", f"{_POD_UPDATE_FORBIDDEN} (changed: {', '.join(f'spec.{k}' for k in changed)})"))
    return causes


def _prepare_pod_update(old: Mapping[str, Any], new: dict[str, Any]) -> Causes:
    return pod_spec_update_causes(_map(old.get("spec")), _map(new.get("spec")))


# -- workloads with a pod template ---------------------------------------------------------------

def _template_causes(spec: Mapping[str, Any]) -> Causes:
    """A pod template with containers, and the required selector, well formed and selecting its labels."""
    selector = spec.get("selector")
    template = _map(spec.get("template"))
    causes: Causes = []
    if not _list(_map(template.get("spec")).get("containers")):
        causes.append(required("spec.template.spec.containers"))
    if selector is None:
        return [*causes, required("spec.selector")]
    problems = label_selector_problems(selector, "spec.selector")
    if problems:
        path_and_message = (problem.split(": ", 1) for problem in problems)
        return causes + [{"reason": "FieldValueInvalid", "field": path, "message": message}
                         for path, message in path_and_message]
    matches = compile_label_selector(selector)
    if matches is None:
        return [*causes, invalid("spec.selector", selector, "empty selector is invalid")]
    labels = _map(_map(template.get("metadata")).get("labels"))
    if not matches(labels):
        causes.append(invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`"))
    return causes


def _immutable(path: str, old: Any, new: Any) -> Causes:
    return [] if semantic(old) == semantic(new) else [invalid(path, new, "field is immutable")]


def _set_default(mapping: dict[str, Any], key: str, value: Any) -> None:
    if mapping.get(key) is None:
        mapping[key] = value


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj["spec"]`` as a fresh dict the strategy may change (the stored one is never changed)."""
    spec = obj["spec"] = dict(_map(obj.get("spec")))
    return spec


def _default_job(job: dict[str, Any]) -> None:
    spec = _spec_of(job)
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    _set_default(spec, "parallelism", 1)
    _set_default(spec, "backoffLimit", 6)
    _set_default(spec, "completionMode", "NonIndexed")
    _set_default(spec, "suspend", False)
    _set_default(spec, "podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    template_labels = _map(_map(_map(spec.get("template")).get("metadata")).get("labels"))
    meta = job["metadata"]
    if template_labels and not meta.get("labels"):
        meta["labels"] = dict(template_labels)


def _prepare_job_create(job: dict[str, Any]) -> Causes:
    _default_job(job)
    spec = job["spec"]
    meta = job["metadata"]
    if not spec.get("manualSelector"):
        # The selector the server generates: only this Job's pods match it.
        uid, name = str(meta.get("uid")), str(meta.get("name"))
        template = spec["template"] = dict(_map(spec.get("template")))
        template_meta = template["metadata"] = dict(_map(template.get("metadata")))
        labels = template_meta["labels"] = dict(_map(template_meta.get("labels")))
        for key, value in ((LEGACY_JOB_CONTROLLER_UID_LABEL, uid), (JOB_CONTROLLER_UID_LABEL, uid),
                           (LEGACY_JOB_NAME_LABEL, name), (JOB_NAME_LABEL, name)):
            labels.setdefault(key, value)
        selector = spec["selector"] = dict(_map(spec.get("selector")))
        selector["matchLabels"] = {**_map(selector.get("matchLabels"))}
        selector["matchLabels"].setdefault(JOB_CONTROLLER_UID_LABEL, uid)
        if not meta.get("labels"):
            # The defaults run again when the stored Job is read back: a Job without labels shows
            # its template's, generated ones included (as `kubectl get job -o yaml` does on a real server).
            meta["labels"] = dict(labels)
    elif spec.get("selector") is None:
        return [required("spec.selector")]
    return _template_causes(spec)


_JOB_MUTABLE_TEMPLATE_SPEC = ("nodeSelector", "tolerations", "schedulingGates")


def _prepare_job_update(old: Mapping[str, Any], new: dict[str, Any]) -> Causes:
    _default_job(new)
    old_spec, new_spec = _map(old.get("spec")), new["spec"]
    causes = _immutable("spec.selector", old_spec.get("selector"), new_spec.get("selector"))
    causes += _immutable("spec.completionMode", old_spec.get("completionMode"), new_spec.get("completionMode"))
    old_template, new_template = _map(old_spec.get("template")), _map(new_spec.get("template"))
    suspended_not_started = bool(old_spec.get("suspend")) and not _map(old.get("status")).get("startTime")
    if suspended_not_started:
        # What may change before a suspended Job starts (Kubernetes' mutable scheduling directives).
        old_template = _with_template_scheduling_of(old_template, new_template)
    causes += _immutable("spec.template", old_template, new_template)
    return causes + _template_causes(new_spec)


def _with_template_scheduling_of(old_template: Mapping[str, Any], new_template: Mapping[str, Any]) -> dict[str, Any]:
    """``old_template`` with the labels, annotations and scheduling directives of ``new_template``."""
    old_meta, new_meta = _map(old_template.get("metadata")), _map(new_template.get("metadata"))
    meta = {**old_meta, "labels": new_meta.get("labels"), "annotations": new_meta.get("annotations")}
    old_pod, new_pod = _map(old_template.get("spec")), _map(new_template.get("spec"))
    pod = {**old_pod, **{key: new_pod.get(key) for key in _JOB_MUTABLE_TEMPLATE_SPEC}}
    pod["affinity"] = {**_map(old_pod.get("affinity")), "nodeAffinity": _map(new_pod.get("affinity")).get("nodeAffinity")}
    return {**old_template, "metadata": meta, "spec": pod}


def _default_rolling(spec: dict[str, Any], key: str, rolling_update: Mapping[str, Any]) -> None:
    """``spec[key]`` (a Deployment's strategy, a StatefulSet's updateStrategy) field by field:
    type RollingUpdate when unset, and its rollingUpdate's defaults when that is the type."""
    strategy = spec[key] = dict(_map(spec.get(key)))
    _set_default(strategy, "type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        strategy["rollingUpdate"] = {**rolling_update, **{k: v for k, v in _map(strategy.get("rollingUpdate")).items()
                                                          if v is not None}}


def _default_apps(kind: str) -> Callable[[dict[str, Any]], None]:
    def default(obj: dict[str, Any]) -> None:
        spec = _spec_of(obj)
        _set_default(spec, "replicas", 1)
        if kind == "Deployment":
            _default_rolling(spec, "strategy", {"maxUnavailable": "25%", "maxSurge": "25%"})
            _set_default(spec, "revisionHistoryLimit", 10)
            _set_default(spec, "progressDeadlineSeconds", 600)
        elif kind == "StatefulSet":
            _set_default(spec, "podManagementPolicy", "OrderedReady")
            _default_rolling(spec, "updateStrategy", {"partition": 0})
            _set_default(spec, "revisionHistoryLimit", 10)
            _set_default(spec, "persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    return default


@dataclass(frozen=True)
class KindStrategy:
    """The per-kind hooks the store calls (see the module docstring)."""

    prepare_create: Callable[[dict[str, Any]], Causes]
    prepare_update: Callable[[Mapping[str, Any], dict[str, Any]], Causes]
    default: Callable[[dict[str, Any]], None] = lambda obj: None  # pods: none served (see the docstring)


def apply_defaults(storage_key: StorageKey, body: Any) -> None:
    """The kind's defaults filled into a create's body as it is read, so that admission webhooks
    see them, as the real server decodes (and defaults) a body before admission."""
    strategy = STRATEGIES.get(storage_key)
    if strategy is not None and isinstance(body, dict) and isinstance(body.get("metadata", {}), dict) \
            and isinstance(body.get("spec", {}), dict):
        body.setdefault("metadata", {})
        strategy.default(body)


def _apps_strategy(kind: str) -> KindStrategy:
    default = _default_apps(kind)

    def create(obj: dict[str, Any]) -> Causes:
        default(obj)
        return _template_causes(obj["spec"])

    def update(old: Mapping[str, Any], new: dict[str, Any]) -> Causes:
        default(new)
        causes = _immutable("spec.selector", _map(old.get("spec")).get("selector"), new["spec"].get("selector"))
        return causes + _template_causes(new["spec"])

    return KindStrategy(create, update, default)


STRATEGIES: dict[StorageKey, KindStrategy] = {
    POD_STORAGE: KindStrategy(_prepare_pod_create, _prepare_pod_update),
    JOB_STORAGE: KindStrategy(_prepare_job_create, _prepare_job_update, _default_job),
    DEPLOYMENT_STORAGE: _apps_strategy("Deployment"),
    REPLICASET_STORAGE: _apps_strategy("ReplicaSet"),
    STATEFULSET_STORAGE: _apps_strategy("StatefulSet"),
}


def scale_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``autoscaling/v1`` Scale of a Deployment, ReplicaSet or StatefulSet (its ``/scale``)."""
    meta = _map(obj.get("metadata"))
    selector = format_selector(_map(_map(obj.get("spec")).get("selector")))
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if key in meta},
        "spec": {"replicas": _map(obj.get("spec")).get("replicas", 0)},
        "status": {"replicas": _map(obj.get("status")).get("replicas", 0),
                   **({"selector": selector} if selector != "<none>" else {})},
    }
