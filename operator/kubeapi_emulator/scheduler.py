"""A kube-scheduler stand-in: binds pending pods, or says why it cannot.

A real cluster runs kube-scheduler next to the API server; the emulator runs this, on by
default (``EmulatedApiServer(scheduler=False)`` or ``python -m kubeapi_emulator --no-scheduler``
turns it off, so a test can play the scheduler). It considers pods that are not bound
(no ``spec.nodeName``), not gated (no ``spec.schedulingGates``: a gated pod is never bound, and
``pods/binding`` refuses it with 409 as kube-apiserver does), not being deleted, not finished, and meant for it (``schedulerName``
``default-scheduler`` or absent). For each, in creation order, it runs kube-scheduler's filters
on every node, in kube-scheduler's order, stopping at a node's first failure:

1. NodeUnschedulable: a cordoned node (``spec.unschedulable``) unless the pod tolerates
   ``node.kubernetes.io/unschedulable``;
2. TaintToleration: every ``NoSchedule``/``NoExecute`` taint tolerated (a node whose ``Ready``
   condition is not True carries ``node.kubernetes.io/not-ready`` or ``unreachable``, as the
   node lifecycle controller would add);
3. NodeAffinity: ``nodeSelector`` labels, and the required node affinity (terms ORed; within a
   term, ``matchExpressions`` In/NotIn/Exists/DoesNotExist/Gt/Lt on labels and ``matchFields``
   on ``metadata.name``, ANDed);
4. NodeResourcesFit: for every resource the pod requests, allocatable minus the requests of
   the non-finished pods bound there; ``pods`` counts one per pod (checked only when the node
   declares ``pods``, as every kubelet does).

A pod goes to the feasible node with the most free CPU (ties by name) through the
``pods/binding`` subresource's own code path (``bind``): ``spec.nodeName`` set and
``PodScheduled`` True. With no feasible node it gets ``PodScheduled`` False, reason
``Unschedulable``, and kube-scheduler's message, e.g. "0/3 nodes are available: 1 Insufficient
cpu, 2 node(s) didn't match Pod's node affinity/selector.". A pass runs shortly after any pod
or node changes, so an unschedulable pod is retried when the cluster changes, as in
kube-scheduler. No preemption, pod affinity, topology spread, volumes or ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kubeapi_emulator import errors
from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.resources import ResourceSpec
from kubeapi_emulator.store import ObjectStore, StoredEvent, rfc3339_now

logger = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "default-scheduler"
POD_STORAGE = ("", "pods")
NODE_STORAGE = ("", "nodes")
PASS_DELAY_S = 0.02  # a burst of creations is scheduled in one pass
NODE_NAME_FIELD = "metadata.name"
FINISHED_PHASES = ("Succeeded", "Failed")

# Filter failures, in kube-scheduler's words.
NODE_UNSCHEDULABLE = "node(s) were unschedulable"
AFFINITY_MISMATCH = "node(s) didn't match Pod's node affinity/selector"
TOO_MANY_PODS = "Too many pods"

_SUFFIXES = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse_quantity(value: Any) -> Fraction:
    """A Kubernetes quantity ("500m", "8Gi", 2) as an exact number; 0 when unreadable."""
    if isinstance(value, bool):
        return Fraction(0)
    if isinstance(value, (int, float)):
        return Fraction(value)
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return Fraction(0)
    return Fraction(match.group(1)) * _SUFFIXES[match.group(2)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _container_requests(container: Any) -> dict[str, Fraction]:
    """A container's requests, each defaulting to its limit (as the API server defaults them)."""
    resources = _mapping(_mapping(container).get("resources"))
    amounts = {str(name): parse_quantity(v) for name, v in _mapping(resources.get("limits")).items()}
    amounts.update({str(name): parse_quantity(v) for name, v in _mapping(resources.get("requests")).items()})
    return amounts


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Fraction]:
    """What a pod asks of its node, as kube-scheduler computes it: per resource, the larger of
    the containers' sum (plus sidecars: init containers with ``restartPolicy: Always``) and the
    largest init container (plus the sidecars started before it), plus ``spec.overhead``."""
    spec = _mapping(pod.get("spec"))
    total: dict[str, Fraction] = {}
    for container in _list(spec.get("containers")):
        _add(total, _container_requests(container))
    sidecars: dict[str, Fraction] = {}
    init_peak: dict[str, Fraction] = {}
    for container in _list(spec.get("initContainers")):
        amounts = _container_requests(container)
        if _mapping(container).get("restartPolicy") == "Always":
            _add(sidecars, amounts)
            needed = sidecars
        else:
            needed = _add(dict(sidecars), amounts)
        for name, amount in needed.items():
            init_peak[name] = max(init_peak.get(name, Fraction(0)), amount)
    _add(total, sidecars)
    zero = Fraction(0)
    requests = {name: max(total.get(name, zero), init_peak.get(name, zero)) for name in set(total) | set(init_peak)}
    for name, amount in _mapping(spec.get("overhead")).items():
        requests[str(name)] = requests.get(str(name), Fraction(0)) + parse_quantity(amount)
    return {name: amount for name, amount in requests.items() if amount > 0}


def _add(into: dict[str, Fraction], amounts: Mapping[str, Fraction]) -> dict[str, Fraction]:
    for name, amount in amounts.items():
        into[name] = into.get(name, Fraction(0)) + amount
    return into


def _node_name(node: Mapping[str, Any]) -> str:
    return str(_mapping(node.get("metadata")).get("name") or "")


def _requirement_matches(requirement: Any, value: str | None) -> bool:
    requirement = _mapping(requirement)
    operator, values = requirement.get("operator"), [str(v) for v in _list(requirement.get("values"))]
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


def _term_matches(term: Any, labels: Mapping[str, Any], name: str) -> bool:
    term = _mapping(term)
    expressions, fields = _list(term.get("matchExpressions")), _list(term.get("matchFields"))
    if not expressions and not fields:
        return False  # an empty term matches no node (kube-scheduler's rule)
    for requirement in expressions:
        key = str(_mapping(requirement).get("key"))
        if not _requirement_matches(requirement, str(labels[key]) if key in labels else None):
            return False
    for requirement in fields:
        if _mapping(requirement).get("key") != NODE_NAME_FIELD or not _requirement_matches(requirement, name):
            return False
    return True


def affinity_matches(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """The pod's ``nodeSelector`` and required node affinity both allow the node."""
    labels = _mapping(_mapping(node.get("metadata")).get("labels"))
    for key, value in _mapping(pod_spec.get("nodeSelector")).items():
        if str(labels.get(key)) != str(value) or key not in labels:
            return False
    required = _mapping(_mapping(_mapping(pod_spec.get("affinity")).get("nodeAffinity"))
                        .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if "nodeSelectorTerms" not in required:
        return True
    return any(_term_matches(term, labels, _node_name(node)) for term in _list(required.get("nodeSelectorTerms")))


def _tolerates(tolerations: list[Any], taint: Mapping[str, Any]) -> bool:
    for toleration in tolerations:
        toleration = _mapping(toleration)
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        key = toleration.get("key")
        if key in (None, "") and toleration.get("operator") == "Exists":
            return True
        if key != taint.get("key"):
            continue
        if toleration.get("operator") == "Exists" or str(toleration.get("value") or "") == str(taint.get("value") or ""):
            return True
    return False


def node_taints(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The node's taints, plus the one the node lifecycle controller adds to a node not Ready."""
    taints = [_mapping(t) for t in _list(_mapping(node.get("spec")).get("taints"))]
    ready = next((c for c in _list(_mapping(node.get("status")).get("conditions"))
                  if _mapping(c).get("type") == "Ready"), None)
    if ready is not None and ready.get("status") != "True":
        key = "node.kubernetes.io/not-ready" if ready.get("status") == "False" else "node.kubernetes.io/unreachable"
        taints.append({"key": key, "effect": "NoSchedule"})
    return taints


@dataclass(frozen=True)
class NodeView:
    """What the filters read of a node, parsed once per pass."""

    name: str
    obj: Mapping[str, Any]
    cordoned: bool
    taints: tuple[Mapping[str, Any], ...]
    allocatable: dict[str, Fraction]

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> NodeView:
        allocatable = _mapping(_mapping(node.get("status")).get("allocatable"))
        return cls(_node_name(node), node, bool(_mapping(node.get("spec")).get("unschedulable")),
                   tuple(t for t in node_taints(node) if t.get("effect") in ("NoSchedule", "NoExecute")),
                   {str(k): parse_quantity(v) for k, v in allocatable.items()})


def filter_node(pod_spec: Mapping[str, Any], requests: Mapping[str, Fraction], node: NodeView,
                used: Mapping[str, Fraction], pods_on_node: int) -> list[str]:
    """Why the pod cannot go to this node (kube-scheduler's words; empty: it can)."""
    tolerations = _list(pod_spec.get("tolerations"))
    if node.cordoned and not _tolerates(tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}):
        return [NODE_UNSCHEDULABLE]
    for taint in node.taints:
        if not _tolerates(tolerations, taint):
            return [f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"]
    if not affinity_matches(pod_spec, node.obj):
        return [AFFINITY_MISMATCH]
    failures = []
    if "pods" in node.allocatable and pods_on_node + 1 > node.allocatable["pods"]:
        failures.append(TOO_MANY_PODS)
    zero = Fraction(0)
    for name in sorted(requests):
        if name != "pods" and requests[name] > node.allocatable.get(name, zero) - used.get(name, zero):
            failures.append(f"Insufficient {name}")
    return failures


def names_pinned(pod_spec: Mapping[str, Any]) -> set[str] | None:
    """The node names the required affinity allows when every term names them (``matchFields``
    ``metadata.name`` In), else None: only those nodes can take the pod."""
    required = _mapping(_mapping(_mapping(pod_spec.get("affinity")).get("nodeAffinity"))
                        .get("requiredDuringSchedulingIgnoredDuringExecution"))
    terms = _list(required.get("nodeSelectorTerms"))
    if not terms:
        return None
    names: set[str] = set()
    for term in terms:
        allowed = [set(map(str, _list(_mapping(f).get("values")))) for f in _list(_mapping(term).get("matchFields"))
                   if _mapping(f).get("key") == NODE_NAME_FIELD and _mapping(f).get("operator") == "In"]
        if not allowed:
            return None
        names |= set.intersection(*allowed)
    return names


def unschedulable_message(failures: Iterable[str], node_count: int) -> str:
    """kube-scheduler's FitError text: each reason with how many nodes gave it, sorted."""
    if node_count == 0:
        return "no nodes available to schedule pods"
    counts = Counter(failures)
    reasons = sorted(f"{count} {reason}" for reason, count in counts.items())
    return f"0/{node_count} nodes are available: {', '.join(reasons)}."


def bind(store: ObjectStore, pods: ResourceSpec, namespace: str, name: str, binding: Any) -> dict[str, Any]:
    """``POST pods/{name}/binding`` as the API server does it: the pod gets ``spec.nodeName`` (and
    the binding's annotations) and ``PodScheduled`` True, in one write; 409 if it is bound already,
    being deleted or still has scheduling gates. Returns the ``Status`` the server answers with."""
    body = _mapping(binding)
    target = _mapping(body.get("target"))
    node_name = target.get("name")
    binding_name = _mapping(body.get("metadata")).get("name")
    causes = []
    if not isinstance(node_name, str) or not node_name:
        causes.append({"reason": "FieldValueRequired", "field": "target.name", "message": "Required value"})
    if target.get("kind") not in (None, "", "Node"):
        causes.append({"reason": "FieldValueNotSupported", "field": "target.kind",
                       "message": f'Unsupported value: "{target.get("kind")}": supported values: "Node"'})
    if binding_name not in (None, "", name):
        causes.append({"reason": "FieldValueInvalid", "field": "metadata.name",
                       "message": f"Invalid value: {binding_name!r}: must match the pod's name ({name})"})
    if causes:
        raise errors.invalid("", "Binding", name, causes)

    def change(pod: dict[str, Any]) -> dict[str, Any]:
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            raise _binding_conflict(name, f"pod {name} is being deleted, cannot be assigned to a host")
        spec = dict(pod.get("spec") or {})
        if spec.get("nodeName"):
            raise _binding_conflict(name, f'pod {name} is already assigned to node "{spec["nodeName"]}"')
        if spec.get("schedulingGates"):  # not ready for scheduling (KEP-3521)
            raise _binding_conflict(name, f"pod {name} has non-empty .spec.schedulingGates")
        spec["nodeName"] = node_name
        annotations = _mapping(_mapping(body.get("metadata")).get("annotations"))
        if annotations:
            pod["metadata"] = {**metadata, "annotations": {**_mapping(metadata.get("annotations")), **annotations}}
        status = dict(pod.get("status") or {})
        status["conditions"] = _with_condition(status.get("conditions"), {
            "type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": rfc3339_now()})
        return {**pod, "spec": spec, "status": status}

    store.update(pods, namespace, name, change, "binding")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}


def _binding_conflict(name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{name}": {why}',
                    {"name": name, "group": "", "kind": "pods/binding"})


def _with_condition(conditions: Any, condition: dict[str, Any]) -> list[Any]:
    return [*(c for c in _list(conditions) if _mapping(c).get("type") != condition["type"]), condition]


def _pending(pod: Mapping[str, Any]) -> bool:
    """Waiting for this scheduler: not bound, not gated, not being deleted, not finished, ours to place."""
    spec, metadata = _mapping(pod.get("spec")), _mapping(pod.get("metadata"))
    return (not spec.get("nodeName") and not spec.get("schedulingGates") and not metadata.get("deletionTimestamp")
            and _mapping(pod.get("status")).get("phase") not in FINISHED_PHASES
            and spec.get("schedulerName") in (None, "", DEFAULT_SCHEDULER))


class SchedulerStandIn:
    """Runs scheduling passes in the server's event loop whenever a pod or node changes."""

    def __init__(self, store: ObjectStore, spec_for: Callable[[str, str, str], ResourceSpec]) -> None:
        self.store = store
        self.pods = spec_for("", "v1", "pods")
        self.nodes = spec_for("", "v1", "nodes")
        self.bound = 0  # pods bound since start (tests, logs)
        self._requests: dict[int, tuple[Mapping[str, Any], dict[str, Fraction]]] = {}  # id(bound pod) -> its requests
        self._views: dict[int, NodeView] = {}  # id(node) -> its view, as of the last pass
        # (namespace, name) of the pods waiting for a pass, kept from the store's events so a pass
        # with nothing to place costs nothing (None: not known yet, the first pass lists them).
        self._waiting: set[tuple[str, str]] | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        store.listeners.append(self._on_event)

    def _on_event(self, event: StoredEvent) -> None:
        if event.storage_key == POD_STORAGE and self._waiting is not None:
            metadata = _mapping(event.obj.get("metadata"))
            key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
            if event.type != "DELETED" and _pending(event.obj):
                self._waiting.add(key)
            else:
                self._waiting.discard(key)
        if event.storage_key in (POD_STORAGE, NODE_STORAGE):
            self._wakeup.set()

    def start(self) -> None:
        self._wakeup.set()  # pods created before the start wait for a pass too
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kube-scheduler stand-in")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(PASS_DELAY_S)
            self._wakeup.clear()
            try:
                self.schedule_pending()
            except Exception:  # the stand-in must outlive one bad pass
                logger.exception("The kube-scheduler stand-in failed a pass")

    def schedule_pending(self) -> int:
        """One pass over every pending pod; returns how many were bound."""
        if self._waiting is None:
            pending, _ = self.store.list(self.pods, None, _pending)
            self._waiting = {(str(p["metadata"].get("namespace") or ""), p["metadata"]["name"]) for p in pending}
        else:
            found = (self.store.find(self.pods, namespace or None, name) for namespace, name in self._waiting)
            pending = [self.store.present(self.pods, obj) for obj in found if obj is not None and _pending(obj)]
        if not pending:
            return 0  # the usual case once everything is bound: no walk over any pod
        pending.sort(key=lambda p: (str(p["metadata"].get("creationTimestamp") or ""),
                                    int(p["metadata"].get("resourceVersion") or 0)))
        pods, _ = self.store.list(self.pods, None, lambda _: True)
        nodes = self._node_views(self.store.list(self.nodes, None, lambda _: True)[0])
        by_name = {node.name: node for node in nodes}
        used: dict[str, dict[str, Fraction]] = {node.name: {} for node in nodes}
        count: Counter[str] = Counter()
        requests_by_id: dict[int, tuple[Mapping[str, Any], dict[str, Fraction]]] = {}
        for pod in pods:
            node_name = _mapping(pod.get("spec")).get("nodeName")
            if node_name in used and _mapping(pod.get("status")).get("phase") not in FINISHED_PHASES:
                # Stored objects are never changed in place: a pod's requests are computed once.
                cached = self._requests.get(id(pod))
                requests = cached[1] if cached is not None and cached[0] is pod else pod_requests(pod)
                requests_by_id[id(pod)] = (pod, requests)
                _add(used[node_name], requests)
                count[node_name] += 1
        self._requests = requests_by_id
        bound = 0
        for pod in pending:
            requests = pod_requests(pod)
            spec = _mapping(pod.get("spec"))

            # A pod pinned by name (as gpuadmit and the DaemonSet controller pin theirs) can only go
            # to those nodes: look there first, and at every node only to say why it cannot.
            pinned = names_pinned(spec)
            candidates = [by_name[name] for name in sorted(pinned) if name in by_name] if pinned is not None else nodes
            feasible = [node for node in candidates
                        if not filter_node(spec, requests, node, used[node.name], count[node.name])]
            metadata = pod["metadata"]
            if feasible:
                def free_cpu(node: NodeView) -> tuple[Fraction, str]:
                    return (-(node.allocatable.get("cpu", Fraction(0)) - used[node.name].get("cpu", Fraction(0))), node.name)
                chosen = min(feasible, key=free_cpu).name
                try:
                    bind(self.store, self.pods, metadata.get("namespace"), metadata["name"],
                         {"metadata": {"name": metadata["name"]}, "target": {"kind": "Node", "name": chosen}})
                except ApiError as error:
                    logger.debug("Binding %s failed: %s", metadata["name"], error)
                    continue
                _add(used[chosen], requests)
                count[chosen] += 1
                bound += 1
            else:
                failures = [reason for node in nodes
                            for reason in filter_node(spec, requests, node, used[node.name], count[node.name])]
                self._mark_unschedulable(pod, unschedulable_message(failures, len(nodes)))
        self.bound += bound
        return bound

    def _node_views(self, stored: list[dict[str, Any]]) -> list[NodeView]:
        """Every node's view. Stored objects are never changed in place, so a view is parsed once
        per node version, not once per pass (a pass follows every pod change, and parsing every
        node's quantities each time was a fifth of the server's CPU in a burst of admissions)."""
        previous = self._views
        views = [view if (view := previous.get(id(node))) is not None and view.obj is node else NodeView.of(node)
                 for node in stored]
        self._views = {id(view.obj): view for view in views}
        return views

    def _mark_unschedulable(self, pod: Mapping[str, Any], message: str) -> None:
        current = next((c for c in _list(_mapping(pod.get("status")).get("conditions"))
                        if _mapping(c).get("type") == "PodScheduled"), None)
        if current is not None and (current.get("status"), current.get("reason"), current.get("message")) == \
                ("False", "Unschedulable", message):
            return  # told already: no write, no event, no new pass

        # As kube-scheduler: the transition time moves only when the status does, so it says
        # since when the pod has been unschedulable, whatever the message says now.
        since = current.get("lastTransitionTime") if current is not None and current.get("status") == "False" else None

        def change(stored: dict[str, Any]) -> dict[str, Any]:
            status = dict(stored.get("status") or {})
            status.setdefault("phase", "Pending")
            status["conditions"] = _with_condition(status.get("conditions"), {
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastProbeTime": None, "lastTransitionTime": since or rfc3339_now()})
            return {**stored, "status": status}

        metadata = pod["metadata"]
        try:
            self.store.update(self.pods, metadata.get("namespace"), metadata["name"], change, "status")
        except ApiError as error:
            logger.debug("Marking %s unschedulable failed: %s", metadata["name"], error)
