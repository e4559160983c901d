"""The in-memory copy of every object a cycle needs, kept current from watch events.

The cache holds raw objects (plain dicts, exactly as the API returned them), so
the pure core parses them the same way `gpuadmit decide` parses a dump. It is
fed from three sources: the initial lists at start-up (``restore``), kopf's
watch events (``handlers``), and the answers to our own writes (``writer``),
which are applied at once so the next cycle already sees what this one wrote
(Kueue's "assume" step) without waiting for the watch to echo it.

Because those sources race, an event older than what the cache holds is
ignored: resourceVersions are compared as integers when both are integers (as
etcd and the emulator make them), otherwise the newer arrival wins. Deleted
objects leave a tombstone (their uid) so a late event cannot resurrect them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuadmit.core.model import WORKLOAD_LABEL
from gpuadmit.core.native import MIRROR_KIND_LABEL
from gpuadmit.core.nodes import advertised_gpu_problem, pod_gpu_request
from gpuadmit.core.pods import controlling_workload

logger = logging.getLogger(__name__)

WORKLOAD = "GPUWorkload"
POLICY = "MarginPolicy"
QUOTA = "GPUQuota"
NODE = "Node"
POD = "Pod"
NAMESPACE = "Namespace"
JOB = "Job"  # batch/v1, for the native workloads of managed namespaces (controller.native)
# Watched only where their CRDs are served (controller.restore.discover_optional_kinds); named as
# core.native.UnitKind names them, so a unit's kind is its cache kind.
PYTORCHJOB = "PyTorchJob"  # kubeflow.org/v1
RAYJOB = "RayJob"  # ray.io/v1
DISCOVERED_KINDS = (PYTORCHJOB, RAYJOB)
KINDS = (WORKLOAD, POLICY, QUOTA, NODE, POD, NAMESPACE, JOB, *DISCOVERED_KINDS)

SNAPSHOT_KINDS = (NODE, POD, WORKLOAD)  # read by key by the live snapshot (core.livesnapshot)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}


# The few objects some step looks at every cycle, kept apart so it need not walk every object of
# their kind for them: name -> (kind, which of its objects).
MIRROR_CLAIMS = "mirror claims"  # GPUWorkloads that say they mirror a native unit (controller.native)
GATED_PODS = "gated pods"  # pods with a scheduling gate, of any name
INDEXES: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    MIRROR_CLAIMS: (WORKLOAD, lambda obj: MIRROR_KIND_LABEL in _labels(obj)),
    GATED_PODS: (POD, lambda obj: bool((obj.get("spec") or {}).get("schedulingGates"))),
}

DELETED = "DELETED"
TOMBSTONES_KEPT = 10_000


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for namespaced objects, ``name`` for cluster-scoped ones."""
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    name = str(metadata.get("name", ""))
    return f"{namespace}/{name}" if namespace else name


def is_relevant_pod(pod: Mapping[str, Any]) -> bool:
    """Pods that use GPUs, belong to a GPUWorkload or claim to (the label: a pod that squats a
    name of ours must be seen to be refused); the rest of the cluster is not our business."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return WORKLOAD_LABEL in labels or pod_gpu_request(pod) > 0 or controlling_workload(pod) is not None


def _owner_key(pod: Mapping[str, Any] | None) -> str | None:
    """The key of the GPUWorkload that controls this pod (core.pods.controlling_workload), if any."""
    if pod is None:
        return None
    controller = controlling_workload(pod)
    return None if controller is None else f"{(pod.get('metadata') or {}).get('namespace')}/{controller[0]}"


def _resource_version(obj: Mapping[str, Any]) -> int | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(value) if isinstance(value, str | int) else None
    except ValueError:
        return None


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


@dataclass
class ObjectCache:
    """Raw objects by kind and key. Single-threaded: only the operator's event loop touches it."""

    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    _tombstones: OrderedDict[str, None] = field(default_factory=OrderedDict)
    seeded: bool = False  # set once the initial lists of every kind are in
    _nodes_left_out: set[str] = field(default_factory=set)  # told once each, not at every heartbeat
    # Since the loop last took them (``take_changes``): the GPUWorkload keys whose object or pods
    # changed, and whether anything else it follows pods by changed (then it looks at everything).
    _changed_workloads: set[str] = field(default_factory=set)
    _changed_all: bool = True
    _nodes_changed: bool = True  # a Node stored or removed since ``take_nodes_changed``

    _pods_of: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # workload key -> pod key -> pod
    # Since the snapshot last took them (``take_changed_keys``): the keys of each kind it reads
    # whose object was stored or removed; None: every key (the kind was listed again).
    _changed_keys: dict[str, set[str] | None] = field(default_factory=lambda: {kind: None for kind in SNAPSHOT_KINDS})
    _indexed: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in INDEXES})

    def _changed(self, kind: str, key: str, before: Mapping[str, Any] | None, after: dict[str, Any] | None = None) -> None:
        keys = self._changed_keys.get(kind)
        if keys is not None:
            keys.add(key)
        for name, (indexed_kind, belongs) in INDEXES.items():
            if indexed_kind == kind:
                if after is not None and belongs(after):
                    self._indexed[name].add(key)
                else:
                    self._indexed[name].discard(key)
        if kind == WORKLOAD:
            self._changed_workloads.add(key)
        elif kind == POD:
            old, new = _owner_key(before), _owner_key(after)
            if old is not None:
                self._changed_workloads.add(old)
                if old != new:
                    self._unindex_pod(old, key)
            if new is not None and after is not None:
                self._changed_workloads.add(new)
                self._pods_of.setdefault(new, {})[key] = after
        elif kind == NODE:
            self._nodes_changed = True

    def _unindex_pod(self, workload_key: str, pod_key: str) -> None:
        pods = self._pods_of.get(workload_key)
        if pods is not None:
            pods.pop(pod_key, None)
            if not pods:
                del self._pods_of[workload_key]

    def take_changed_keys(self, kind: str) -> frozenset[str] | None:
        """The keys of ``kind`` (a node, pod or workload) stored or removed since the last call
        (None: take every key as changed), and forget them."""
        keys = self._changed_keys[kind]
        self._changed_keys[kind] = set()
        return None if keys is None else frozenset(keys)

    def take_nodes_changed(self) -> bool:
        """Whether any Node was stored or removed since the last call (a status update, a label)."""
        changed, self._nodes_changed = self._nodes_changed, False
        return changed

    def take_changes(self) -> set[str] | None:
        """The GPUWorkload keys whose object or own pods changed since the last call (None: take
        everything: workloads or pods were listed again), and forget them."""
        changed = None if self._changed_all else self._changed_workloads
        self._changed_workloads, self._changed_all = set(), False
        return changed

    def put(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Store an object (from a list, an event or a write answer); True if it changed the cache."""
        if not isinstance(obj, Mapping) or not (obj.get("metadata") or {}).get("name"):
            return False
        if kind == POD and not is_relevant_pod(obj):
            return self.remove(kind, obj)  # a pod that stopped being relevant (label removed)
        uid = _uid(obj)
        if uid and uid in self._tombstones:
            return False
        key = object_key(obj)
        store = self.objects[kind]
        current = store.get(key)
        if current is not None and _uid(current) == uid:
            new_version, old_version = _resource_version(obj), _resource_version(current)
            if new_version is not None and old_version is not None and new_version <= old_version:
                return False  # stale: an echo of something we already hold
        store[key] = stored = dict(obj)
        self._changed(kind, key, current, stored)
        if kind == NODE:
            self._tell_if_left_out(key, obj)
        return True

    def _tell_if_left_out(self, name: str, node: Mapping[str, Any]) -> None:
        """Log once when a node advertises GPUs the engine will not use (more than a node can have)."""
        problem = advertised_gpu_problem(node)
        if problem is None:
            self._nodes_left_out.discard(name)
        elif name not in self._nodes_left_out:
            self._nodes_left_out.add(name)
            logger.warning("Node %s is left out of every decision: %s", name, problem)

    def remove(self, kind: str, obj: Mapping[str, Any]) -> bool:
        key = object_key(obj)
        current = self.objects[kind].get(key)
        uid = _uid(obj)
        if current is None or (uid and _uid(current) and _uid(current) != uid):
            return False  # nothing held, or a newer object of the same name: keep it
        del self.objects[kind][key]
        self._changed(kind, key, current)
        if uid:
            self._tombstones[uid] = None
            while len(self._tombstones) > TOMBSTONES_KEPT:
                self._tombstones.popitem(last=False)
        return True

    def apply_event(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> bool:
        """A watch event (ADDED/MODIFIED/DELETED, or None for kopf's initial listing)."""
        if event_type == DELETED:
            return self.remove(kind, obj)
        return self.put(kind, obj)

    def replace_all(self, kind: str, objs: Iterable[Mapping[str, Any]]) -> None:
        """The result of a full list: what is not in it is gone."""
        fresh: dict[str, dict[str, Any]] = {}
        for obj in objs:
            if isinstance(obj, Mapping) and (obj.get("metadata") or {}).get("name"):
                if kind != POD or is_relevant_pod(obj):
                    fresh[object_key(obj)] = dict(obj)
                if kind == NODE:
                    self._tell_if_left_out(object_key(obj), obj)
        self.objects[kind] = fresh
        for name, (indexed_kind, belongs) in INDEXES.items():
            if indexed_kind == kind:
                self._indexed[name] = {key for key, obj in fresh.items() if belongs(obj)}
        if kind in (WORKLOAD, POD):
            self._changed_all = True
        if kind in SNAPSHOT_KINDS:
            self._changed_keys[kind] = None
        if kind == NODE:
            self._nodes_changed = True
        if kind == POD:
            self._pods_of = {}
            for pod_key, pod in fresh.items():
                owner = _owner_key(pod)
                if owner is not None:
                    self._pods_of.setdefault(owner, {})[pod_key] = pod

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.objects[kind].get(key)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return list(self.objects[kind].values())

    def indexed(self, name: str) -> list[dict[str, Any]]:
        """The objects of one of ``INDEXES`` (say, every gated pod), without a walk over their kind."""
        store = self.objects[INDEXES[name][0]]
        return [store[key] for key in sorted(self._indexed[name]) if key in store]

    def by_key(self, kind: str) -> Mapping[str, dict[str, Any]]:
        """Every object of ``kind`` by key: the cache's own mapping, not a copy (read it, never change it)."""
        return self.objects[kind]

    def pods_by_workload(self) -> dict[str, list[dict[str, Any]]]:
        """Our pods grouped by their GPUWorkload's key (namespace + the controller ownerReference's
        name), kept as pods come and go. Pods that merely carry the ``gpuadmit.io/workload`` label
        are not ours."""
        return {key: list(pods.values()) for key, pods in self._pods_of.items()}

    def pods_of(self, workload_key: str) -> list[dict[str, Any]]:
        """The pods of one GPUWorkload (as ``pods_by_workload``)."""
        return list(self._pods_of.get(workload_key, {}).values())

    def counts(self) -> dict[str, int]:
        """Objects by kind; the discovered kinds only when there are some (a cluster without their
        CRDs reports what it reported before they were known)."""
        return {kind: len(store) for kind, store in self.objects.items() if store or kind not in DISCOVERED_KINDS}
