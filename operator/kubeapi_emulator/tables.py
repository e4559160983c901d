"""``kubectl get``'s server-side printing: objects as a ``meta.k8s.io/v1`` Table.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the Table's
columns as they come (those of ``priority`` above 0 only with ``-o wide``). A custom resource's
columns are its CRD's ``additionalPrinterColumns``, each ``jsonPath`` evaluated as the real
server evaluates it (first result; ``date`` cells shown as an age, ``integer``/``number``/
``boolean`` cells as JSON values); without any, the real server shows Age. Built-in kinds get
the columns the real server prints for them (pods: Ready, Status, Restarts, Age, and IP, Node,
... with ``-o wide``; nodes: Status, Roles, Age, Version; namespaces: Status, Age; events: Last
Seen, Type, Reason, Object, Message, their Name only with ``-o wide``; jobs: Status, Completions,
Duration, Age; deployments: Ready, Up-to-date, Available, Age; replicasets: Desired, Current,
Ready, Age; statefulsets: Ready, Age — these four with Containers, Images (and Selector) with
``-o wide``; the others Age or Created At).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kubeapi_emulator.resources import ResourceSpec
from kubeapi_emulator.selectors import format_selector

TABLE_MEDIA = "as=Table"
_NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
                "description": "Name must be unique within a namespace."}
_AGE = ("Age", "date", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.")


def wants_table(accept: str | None) -> bool:
    """Whether the client asked for a Table (``application/json;as=Table;v=v1;g=meta.k8s.io``)."""
    return bool(accept) and any(
        TABLE_MEDIA in part.replace(" ", "") and "g=meta.k8s.io" in part for part in str(accept).split(","))


def human_duration(seconds: float) -> str:
    """kubectl's age format (``duration.HumanDuration``): 45s, 3m12s, 5h3m, 4d2h, 2y10d."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return f"{minutes}m" if whole % 60 == 0 else f"{minutes}m{whole % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any, now: float | None = None) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    then = _seconds(timestamp)
    if then is None:
        return "<invalid>"
    return human_duration((time.time() if now is None else now) - then)


# -- JSONPath, as the server evaluates printer columns -------------------------------------------

_STEP = re.compile(r"""
    \.(?P<field>(?:\\.|[^.\[\\])+)          # .name (a dot inside a key written \.)
  | \[(?P<index>-?\d+)\]                    # [0]
  | \[(?P<all>\*)\]                         # [*]
  | \[\?\(@\.(?P<key>[\w.\\-]+)\s*(?P<op>==|!=)\s*(?P<quote>["']?)(?P<value>[^"')]*)(?P=quote)\)\]  # [?(@.type=="Ready")]
""", re.VERBOSE)


def jsonpath(obj: Any, expression: str) -> list[Any]:
    """The values ``expression`` (``.status.phase``, ``{.a[0].b}``, ``.a[?(@.type=="X")].s``) selects in ``obj``."""
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if not text.startswith((".", "[")):
        text = "." + text
    current = [obj]
    position = 0
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            return []
        position = match.end()
        following: list[Any] = []
        for value in current:
            if match.group("field") is not None:
                key = match.group("field").replace("\\.", ".")
                if isinstance(value, Mapping) and key in value:
                    following.append(value[key])
            elif match.group("index") is not None:
                index = int(match.group("index"))
                if isinstance(value, list) and -len(value) <= index < len(value):
                    following.append(value[index])
            elif match.group("all") is not None:
                if isinstance(value, list):
                    following.extend(value)
                elif isinstance(value, Mapping):
                    following.extend(value.values())
            elif isinstance(value, list):
                keys = match.group("key").split(".")
                for item in value:
                    found = [item]
                    for key in keys:
                        found = [f[key] for f in found if isinstance(f, Mapping) and key in f]
                    matched = bool(found) and _printed(found[0]) == match.group("value")
                    if matched == (match.group("op") == "=="):
                        following.append(item)
        current = following
    return current


def _printed(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _cell(column_type: str, value: Any) -> Any:
    if column_type == "date":
        return age(value)
    if column_type == "integer":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if column_type == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    return _printed(value)


# -- built-in kinds ------------------------------------------------------------------------------

def _pod_cells(pod: Mapping[str, Any]) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if isinstance(s, Mapping) and s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses if isinstance(s, Mapping))
    reason = status.get("reason") or status.get("phase") or "Pending"
    if any(isinstance(c, Mapping) and c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated"
           for c in status.get("conditions") or []):
        reason = "SchedulingGated"
    for container in statuses:
        waiting = ((container or {}).get("state") or {}).get("waiting") or {}
        terminated = ((container or {}).get("state") or {}).get("terminated") or {}
        if waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated.get("reason"):
            reason = terminated["reason"]
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [f"{ready}/{len(containers)}", reason, restarts, age((pod.get("metadata") or {}).get("creationTimestamp")),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", f"{len(gates)}" if gates else "<none>"]


def _node_cells(node: Mapping[str, Any]) -> list[Any]:
    status = node.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == "Ready"), None)
    state = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = (node.get("metadata") or {}).get("labels") or {}
    roles = sorted(key.split("/", 1)[1] for key in labels if key.startswith("node-role.kubernetes.io/"))
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or [] if isinstance(a, Mapping)}
    return [state, ",".join(roles) or "<none>", age((node.get("metadata") or {}).get("creationTimestamp")),
            info.get("kubeletVersion") or "", addresses.get("InternalIP") or "<none>",
            addresses.get("ExternalIP") or "<none>", info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>"]


_EVENTS = ("", "events")


def _template_cells(obj: Mapping[str, Any], *, selector: bool = True) -> list[Any]:
    """The -o wide cells of a kind with a pod template: Containers, Images(, Selector)."""
    spec = obj.get("spec") or {}
    containers = [c for c in (((spec.get("template") or {}).get("spec") or {}).get("containers") or [])
                  if isinstance(c, Mapping)]
    cells: list[Any] = [",".join(str(c.get("name") or "") for c in containers),
                        ",".join(str(c.get("image") or "") for c in containers)]
    return [*cells, format_selector(spec.get("selector") or {})] if selector else cells


def _has_condition(status: Mapping[str, Any], kind: str) -> bool:
    """As kubectl's printer: the first condition of that type decides."""
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition.get("status") == "True"
    return False


def _seconds(timestamp: Any) -> float | None:
    """An RFC 3339 timestamp as epoch seconds (None when unreadable or absent)."""
    if not isinstance(timestamp, str) or not timestamp:
        return None
    try:
        return float(calendar.timegm(time.strptime(str(timestamp).rstrip("Z").split(".")[0], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def _job_cells(job: Mapping[str, Any]) -> list[Any]:
    spec, status = job.get("spec") or {}, job.get("status") or {}
    succeeded = int(status.get("succeeded") or 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    started, finished = _seconds(status.get("startTime")), _seconds(status.get("completionTime"))
    duration = "" if started is None else human_duration((time.time() if finished is None else finished) - started)
    if _has_condition(status, "Complete"):
        state = "Complete"
    elif _has_condition(status, "Failed"):
        state = "Failed"
    elif (job.get("metadata") or {}).get("deletionTimestamp"):
        state = "Terminating"
    elif _has_condition(status, "Suspended"):
        state = "Suspended"
    elif _has_condition(status, "FailureTarget"):
        state = "FailureTarget"
    else:
        state = "Running"
    return [state, completions, duration, age((job.get("metadata") or {}).get("creationTimestamp")), *_template_cells(job)]


def _apps_cells(key: tuple[str, str], obj: Mapping[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    replicas, ready = int(spec.get("replicas") or 0), int(status.get("readyReplicas") or 0)
    created = age((obj.get("metadata") or {}).get("creationTimestamp"))
    if key == ("apps", "deployments"):
        return [f"{ready}/{replicas}", int(status.get("updatedReplicas") or 0),
                int(status.get("availableReplicas") or 0), created, *_template_cells(obj)]
    if key == ("apps", "replicasets"):
        return [replicas, int(status.get("replicas") or 0), ready, created, *_template_cells(obj)]
    return [f"{ready}/{replicas}", created, *_template_cells(obj, selector=False)]  # statefulsets


_WIDE_TEMPLATE = [("Containers", "string", 1, "Names of each container in the template."),
                  ("Images", "string", 1, "Images referenced by each container in the template.")]
_SELECTOR = ("Selector", "string", 1, "A label query over pods that should match the pod count.")


def _event_cells(event: Mapping[str, Any]) -> list[Any]:
    """As the real server's event printer: times as ages (``eventTime`` or the series' last
    observation when the older fields are unset), the object as ``kind/name`` in lower case."""
    metadata = event.get("metadata") or {}
    involved = event.get("involvedObject") or {}
    series = event.get("series") if isinstance(event.get("series"), Mapping) else None
    source = event.get("source") or {}
    first_seen = age(event.get("firstTimestamp") or event.get("eventTime"))
    last_seen = age(event.get("lastTimestamp")) if event.get("lastTimestamp") else first_seen
    count = event.get("count") or 1
    if series is not None:
        last_seen, count = age(series.get("lastObservedTime")), series.get("count") or count
    kind, name = str(involved.get("kind") or "").lower(), involved.get("name")
    component = source.get("component") or event.get("reportingComponent") or ""
    instance = source.get("host") or event.get("reportingInstance") or ""
    return [last_seen, event.get("type") or "", event.get("reason") or "", f"{kind}/{name}" if name else kind,
            involved.get("fieldPath") or "", f"{component}, {instance}" if component and instance else component,
            str(event.get("message") or "").strip(), first_seen, count, metadata.get("name", "")]


_BUILTIN_COLUMNS: dict[tuple[str, str], list[tuple[str, str, int, str]]] = {
    ("", "pods"): [
        ("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
        ("Status", "string", 0, "The aggregate status of the containers in this pod."),
        ("Restarts", "string", 0, "The number of times the containers in this pod have been restarted."),
        _AGE,
        ("IP", "string", 1, "IP address allocated to the pod."),
        ("Node", "string", 1, "Name of the Node this pod is bound to."),
        ("Nominated Node", "string", 1, "Name of the node nominated to run this pod."),
        ("Readiness Gates", "string", 1, "Pod readiness gates."),
    ],
    ("", "nodes"): [
        ("Status", "string", 0, "The status of the node"),
        ("Roles", "string", 0, "The roles of the node"),
        _AGE,
        ("Version", "string", 0, "Kubelet Version reported by the node."),
        ("Internal-IP", "string", 1, "List of internal IPs for the node."),
        ("External-IP", "string", 1, "List of external IPs for the node."),
        ("OS-Image", "string", 1, "OS image reported by the node."),
        ("Kernel-Version", "string", 1, "Kernel version reported by the node."),
        ("Container-Runtime", "string", 1, "Container runtime version reported by the node."),
    ],
    ("", "namespaces"): [("Status", "string", 0, "The status of the namespace"), _AGE],
    ("batch", "jobs"): [
        ("Status", "string", 0, "Status of the job."),
        ("Completions", "string", 0, "The number of pods which reached phase Succeeded."),
        ("Duration", "string", 0, "Time required to complete the job."),
        _AGE, *_WIDE_TEMPLATE, _SELECTOR,
    ],
    ("apps", "deployments"): [
        ("Ready", "string", 0, "Number of the pod with ready state"),
        ("Up-to-date", "integer", 0, "Total number of non-terminated pods targeted by this deployment that have "
                                     "the desired template spec."),
        ("Available", "integer", 0, "Total number of available pods (ready for at least minReadySeconds) "
                                    "targeted by this deployment."),
        _AGE, *_WIDE_TEMPLATE, _SELECTOR,
    ],
    ("apps", "replicasets"): [
        ("Desired", "integer", 0, "Replicas is the number of desired replicas."),
        ("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
        ("Ready", "integer", 0, "The number of ready replicas for this replica set."),
        _AGE, *_WIDE_TEMPLATE, _SELECTOR,
    ],
    ("apps", "statefulsets"): [("Ready", "string", 0, "Number of the pod with ready state"), _AGE, *_WIDE_TEMPLATE],
    # The real server prints an event's name last, and only with -o wide (see _EVENTS).
    _EVENTS: [
        ("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
        ("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
        ("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
        ("Object", "string", 0, "The object that this event is about."),
        ("Subobject", "string", 1, "The field of the object that this event is about."),
        ("Source", "string", 1, "The component reporting this event. Should be a short machine understandable string."),
        ("Message", "string", 0, "A human-readable description of the status of this operation."),
        ("First Seen", "string", 1, "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
        ("Count", "integer", 1, "The number of times this event has occurred."),
        ("Name", "string", 1, "Name must be unique within a namespace."),
    ],
    ("apiextensions.k8s.io", "customresourcedefinitions"): [
        ("Created At", "date", 0, "CreationTimestamp of the CustomResourceDefinition")],
}


def _builtin_cells(spec: ResourceSpec, obj: Mapping[str, Any]) -> list[Any]:
    key = (spec.group, spec.plural)
    if key == ("", "pods"):
        return _pod_cells(obj)
    if key == ("", "nodes"):
        return _node_cells(obj)
    if key == ("batch", "jobs"):
        return _job_cells(obj)
    if key[0] == "apps":
        return _apps_cells(key, obj)
    metadata = obj.get("metadata") or {}
    if key == ("", "namespaces"):
        return [(obj.get("status") or {}).get("phase") or "Active", age(metadata.get("creationTimestamp"))]
    if key == ("apiextensions.k8s.io", "customresourcedefinitions"):
        return [metadata.get("creationTimestamp")]  # kubectl prints this date as it is
    return [age(metadata.get("creationTimestamp"))]


def _columns(spec: ResourceSpec) -> list[tuple[str, str, int, str, str]]:
    """(name, type, priority, description, jsonPath or "") for each column after Name."""
    if spec.printer_columns:
        return [(str(c.get("name")), str(c.get("type") or "string"), int(c.get("priority") or 0),
                 str(c.get("description") or ""), str(c.get("jsonPath") or "")) for c in spec.printer_columns]
    return [(*column, "") for column in _BUILTIN_COLUMNS.get((spec.group, spec.plural), [_AGE])]


def column_definitions(spec: ResourceSpec) -> list[dict[str, Any]]:
    definitions = [] if (spec.group, spec.plural) == _EVENTS else [dict(_NAME_COLUMN)]
    for name, column_type, priority, description, _ in _columns(spec):
        definitions.append({"name": name, "type": column_type, "format": "", "description": description,
                            "priority": priority})
    return definitions


def row(spec: ResourceSpec, obj: Mapping[str, Any], include_object: str = "Metadata") -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    cells: list[Any] = [metadata.get("name", "")]
    if (spec.group, spec.plural) == _EVENTS and not spec.printer_columns:
        cells = _event_cells(obj)
    elif spec.printer_columns:
        for _, column_type, _, _, path in _columns(spec):
            found = jsonpath(obj, path) if path else []
            cells.append(_cell(column_type, found[0]) if found and found[0] is not None else None)
    else:
        cells += _builtin_cells(spec, obj)
    result: dict[str, Any] = {"cells": cells}
    if include_object == "Object":
        result["object"] = obj
    elif include_object != "None":
        result["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
    return result


def table(spec: ResourceSpec, objects: Iterable[Mapping[str, Any]], *, resource_version: str | None = None,
          include_object: str | None = None, with_columns: bool = True) -> dict[str, Any]:
    """A Table of ``objects``; a watch event's Table leaves the columns out after the first."""
    result: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                              "metadata": {"resourceVersion": resource_version} if resource_version else {}}
    if with_columns:
        result["columnDefinitions"] = column_definitions(spec)
    result["rows"] = [row(spec, obj, include_object or "Metadata") for obj in objects]
    return result
