"""A snapshot kept current from what changed, for a caller that builds one per cycle (the operator).

``build_snapshot`` reads every node, pod and workload each time: at 2,000 nodes and 20,000
workloads that is half a second a cycle even with its memos, whatever the cycle is for. A
``LiveSnapshot`` keeps what it read last time -- each workload's parse and where it goes
(holding, pending, invalid), each counted pod's facts, each node's parse and what its pods use
-- and reads again only the objects the caller says changed (its watch cache knows), so a cycle
caused by one pod finishing reads that pod, its node and its workload.

The snapshot it returns is the one ``build_snapshot`` would return for the same objects (a test
compares them on random changes): the same rules, because it calls the same pieces
(``pod_facts``, ``pod_usage``, ``node_from_object``, ``ParseMemo``), only on less input. Unchanged
objects stay the very same objects from one snapshot to the next, which is what the incremental
engine compares first. Whatever every object's reading depends on -- the policy, the namespaces'
tiers and pod-security rules, the trusted mirrors and RayJobs -- changing makes it read
everything again, as does a caller that does not know what changed (``changed=None``).
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpuadmit.core.classifier import KindLean
from gpuadmit.core.model import (
    HOLDING_PHASES,
    PENDING_PHASES,
    GpuNode,
    InvalidWorkload,
    Policy,
    Resources,
    Snapshot,
    Workload,
)
from gpuadmit.core.nodes import node_from_object
from gpuadmit.core.podsecurity import DEFAULT_LEVEL, MIRROR_POD_SECURITY, pod_security_of_namespaces
from gpuadmit.core.quota import Tenancy
from gpuadmit.core.snapshot import ParseMemo, PodFacts, pod_facts, pod_usage, raw_phase, tiers_by_namespace

Key = tuple[str, str]  # (namespace, name), the order snapshots list workloads in


@dataclass(frozen=True)
class ChangedKeys:
    """The cache keys whose objects changed (added, replaced or removed) since the last build;
    None for a kind: take it as all changed (it was listed again)."""

    nodes: frozenset[str] | None = None
    pods: frozenset[str] | None = None
    workloads: frozenset[str] | None = None


EVERYTHING = ChangedKeys()


class _Sorted:
    """Keys in order, with their values; the tuple of values rebuilt only after a change."""

    def __init__(self) -> None:
        self.values: dict[Key, Any] = {}
        self._keys: list[Key] = []
        self._tuple: tuple[Any, ...] | None = ()

    def set(self, key: Key, value: Any) -> None:
        held = self.values.get(key)
        if held is value:
            return
        if held is None and key not in self.values:
            bisect.insort(self._keys, key)
        self.values[key] = value
        self._tuple = None

    def drop(self, key: Key) -> None:
        if key in self.values:
            del self.values[key]
            del self._keys[bisect.bisect_left(self._keys, key)]
            self._tuple = None

    def as_tuple(self) -> tuple[Any, ...]:
        if self._tuple is None:
            self._tuple = tuple(map(self.values.__getitem__, self._keys))
        return self._tuple


class LiveSnapshot:
    """See the module docstring. One per caller, fed every cycle."""

    def __init__(self) -> None:
        self._memo = ParseMemo()
        self._context: tuple[Any, ...] | None = None  # what every object's reading depends on
        # Workloads: cache key -> (namespace, name) it was listed under, and where it went.
        self._key_of: dict[str, Key] = {}
        self._holding = _Sorted()
        self._pending: dict[Key, Workload] = {}  # as parsed (before this cycle's avoided nodes); never listed
        self._invalid = _Sorted()
        self._avoided: dict[str, frozenset[str]] = {}  # workload key -> nodes avoided, as last applied
        self._pending_out = _Sorted()  # pending as listed: the avoided nodes applied
        self._overridden: set[str] = set()  # cache keys given as overrides last time
        # Pods: facts of the counted ones, and which are on each node.
        self._facts: dict[str, PodFacts] = {}
        self._pods_on: dict[str, set[str]] = {}
        self._gpus_by_node: dict[str, int] = {}
        self._requests_by_node: dict[str, dict[str, int]] = {}
        self._own_keys_on: dict[str, list[tuple[str, str]]] = {}  # node -> its (workload, node) own entries
        self._gpus_of_own: dict[tuple[str, str], int] = {}
        self._resources_of_own: dict[tuple[str, str], Resources] = {}
        # Nodes: every Node object's parse (None: not a GPU node), by its cache key.
        self._node_objects: dict[str, GpuNode | None] = {}
        self._nodes = _Sorted()
        self._nodes_to_read: set[str] = set()  # whose pods' use changed since the last build
        self._pods_read = 0  # since the last build
        self.last: Snapshot | None = None
        # What the last build read again, for a caller that checks only that: the workloads' cache keys.
        self.workloads_read: set[str] = set()
        self.objects_read = 0  # nodes, pods and workloads read since the last build began

    @property
    def gpus_by_node(self) -> Mapping[str, int]:
        """GPUs the counted pods request, by node, as of the last build (``gpus_used_by_node``)."""
        return self._gpus_by_node

    def build(
        self,
        *,
        nodes: Mapping[str, Mapping[str, Any]],
        pods: Mapping[str, Mapping[str, Any]],
        namespaces: Iterable[Mapping[str, Any]],
        workloads: Mapping[str, Mapping[str, Any]],
        policy: Policy,
        now: float,
        changed: ChangedKeys = EVERYTHING,
        overrides: Mapping[str, Mapping[str, Any] | None] | None = None,
        pod_security_level: str = DEFAULT_LEVEL,
        quotas: Tenancy | None = None,
        avoided_nodes: Mapping[str, frozenset[str]] | None = None,
        mirrors: Mapping[str, KindLean | None] | None = None,
        ray_jobs: Mapping[str, str] | None = None,
    ) -> Snapshot:
        """The snapshot of these objects (each kind by its cache key), reading again only those
        in ``changed``. ``overrides``: cache key -> the object to read instead of the cached one
        (an admission in flight, assumed), None to leave the workload out. The rest as
        ``build_snapshot``."""
        mirrors = dict(mirrors or {})
        ray_jobs = dict(ray_jobs or {})
        namespaces = namespaces if isinstance(namespaces, (list, tuple)) else list(namespaces)
        tiers = tiers_by_namespace(namespaces)
        pod_security = pod_security_of_namespaces(namespaces, pod_security_level)
        context = (policy, tiers, pod_security, mirrors, ray_jobs)
        if self._context is None or context[0] is not self._context[0] or context[1:] != self._context[1:]:
            changed = EVERYTHING  # every object's reading depends on them
            self._context = context
        policy, tiers, pod_security, mirrors, ray_jobs = self._context  # kept: the same objects

        self.read_pods(pods, changed.pods)
        touched_nodes, self._nodes_to_read = self._nodes_to_read, set()
        self.objects_read = self._pods_read
        self._read_nodes(nodes, changed.nodes, touched_nodes)
        filed = self._read_workloads(workloads, changed.workloads, overrides or {}, policy, tiers, now, pod_security,
                                     mirrors)
        self._apply_avoided(filed, avoided_nodes or {})
        self.objects_read += len(self.workloads_read) + (len(nodes) if changed.nodes is None else len(changed.nodes))
        self._pods_read = 0

        tenants = quotas if quotas is not None else Tenancy()
        last = self.last
        own_gpus: Mapping[tuple[str, str], int]
        own_resources: Mapping[tuple[str, str], Resources]
        if last is None or touched_nodes:  # copies: the last snapshot keeps its own (the engine compares them)
            own_gpus, own_resources = dict(self._gpus_of_own), dict(self._resources_of_own)
        else:  # unchanged: the very same objects (compared by identity first)
            own_gpus, own_resources = last.gpus_of_own_pods, last.resources_of_own_pods
        snapshot = Snapshot(
            nodes=self._nodes.as_tuple(),
            holding=self._holding.as_tuple(),
            pending=self._pending_out.as_tuple(),
            policy=policy,
            now=now,
            invalid=self._invalid.as_tuple(),
            gpus_of_own_pods=own_gpus,
            quotas=tenants.quotas,
            quota_of_namespace=tenants.quota_of_namespace,
            resources_of_own_pods=own_resources,
        )
        self.last = snapshot
        return snapshot

    def holding_read(self) -> list[Workload]:
        """The holding workloads among those the last build read again."""
        found = (self._holding.values.get(listed) for key in self.workloads_read if (listed := self._key_of.get(key)))
        return [workload for workload in found if workload is not None]

    # -- pods -------------------------------------------------------------------------------

    def read_pods(self, pods: Mapping[str, Mapping[str, Any]], changed: frozenset[str] | None) -> None:
        """The pods brought up to date alone (``build`` does it too): a caller may want
        ``gpus_by_node`` before its snapshot. Their nodes are read again by the next build."""
        mirrors, ray_jobs = (self._context[3], self._context[4]) if self._context is not None else ({}, {})
        if changed is None:
            self._facts, self._pods_on = {}, {}
            self._gpus_by_node, self._requests_by_node = {}, {}
            self._own_keys_on, self._gpus_of_own, self._resources_of_own = {}, {}, {}
            changed_keys: Iterable[str] = pods.keys()
        else:
            changed_keys = changed
        touched: set[str] = set()
        for key in changed_keys:
            before = self._facts.pop(key, None)
            if before is not None:
                touched.add(before.node)
                on_node = self._pods_on[before.node]
                on_node.discard(key)
                if not on_node:
                    del self._pods_on[before.node]
            pod = pods.get(key)
            after = pod_facts(pod) if pod is not None else None
            if after is not None:
                self._facts[key] = after
                self._pods_on.setdefault(after.node, set()).add(key)
                touched.add(after.node)
        for node in touched:
            self._recount_node(node, mirrors, ray_jobs)
        self._nodes_to_read |= touched
        self._pods_read += len(pods) if changed is None else len(changed)

    def _recount_node(self, node: str, mirrors: Container[str], ray_jobs: Mapping[str, str]) -> None:
        """One node's share of ``pod_usage``, summed again from the facts of its pods."""
        for own_key in self._own_keys_on.pop(node, ()):
            self._gpus_of_own.pop(own_key, None)
            self._resources_of_own.pop(own_key, None)
        self._gpus_by_node.pop(node, None)
        self._requests_by_node.pop(node, None)
        keys = self._pods_on.get(node)
        if not keys:
            return
        usage = pod_usage((self._facts[key] for key in sorted(keys)), mirrors, ray_jobs)
        self._gpus_by_node.update(usage.gpus_by_node)
        self._requests_by_node.update(usage.requests_by_node)
        self._gpus_of_own.update(usage.gpus_of_own)
        self._resources_of_own.update(usage.resources_of_own)
        own_keys = list(usage.resources_of_own)
        if own_keys:
            self._own_keys_on[node] = own_keys

    # -- nodes ------------------------------------------------------------------------------

    def _read_nodes(self, nodes: Mapping[str, Mapping[str, Any]], changed: frozenset[str] | None,
                    used_changed: set[str]) -> None:
        if changed is None or not self._node_objects:
            self._node_objects, self._nodes = {}, _Sorted()
            keys: Iterable[str] = nodes.keys()
        else:
            keys = set(changed) | used_changed
        for key in keys:
            before = self._node_objects.pop(key, None)
            if before is not None:
                self._nodes.drop(("", before.name))
            obj = nodes.get(key)
            if obj is None:
                continue
            parsed = node_from_object(obj, self._gpus_by_node.get(key, 0), self._requests_by_node.get(key))
            self._node_objects[key] = parsed
            if parsed is not None:
                self._nodes.set(("", parsed.name), parsed)

    # -- workloads --------------------------------------------------------------------------

    def _read_workloads(self, workloads: Mapping[str, Mapping[str, Any]], changed: frozenset[str] | None,
                        overrides: Mapping[str, Mapping[str, Any] | None], policy: Policy, tiers: Mapping[str, str],
                        now: float, pod_security: Any, mirrors: Mapping[str, KindLean | None]) -> set[Key]:
        """Each changed workload read again and filed where it goes; returns the pending ones filed."""
        everything = changed is None
        if everything:
            self._key_of = {}
            self._holding, self._pending, self._invalid = _Sorted(), {}, _Sorted()
            self._pending_out, self._avoided = _Sorted(), {}
        keys = set(workloads) if changed is None else set(changed)
        keys |= self._overridden  # read as cached again, now that they are not overridden
        keys.update(overrides)
        self._overridden = set(overrides)
        self.workloads_read = keys
        seen: set[Key] = set()
        filed_pending: set[Key] = set()
        for key in keys:
            obj = overrides[key] if key in overrides else workloads.get(key)
            listed = self._key_of.pop(key, None)
            if listed is not None:
                for kept in (self._holding, self._pending_out, self._invalid):
                    kept.drop(listed)
                self._pending.pop(listed, None)
            if obj is None:
                if listed is not None:
                    self._memo.forget(listed)
                continue
            security, lean = pod_security, None
            if key in mirrors:
                security, lean = MIRROR_POD_SECURITY, mirrors[key]
            parsed = self._memo.parse(obj, policy, tiers, now, seen, security, lean)
            now_listed = (parsed.namespace, parsed.name)
            if listed is not None and listed != now_listed:
                self._memo.forget(listed)
            self._key_of[key] = now_listed
            if isinstance(parsed, InvalidWorkload):
                # Nameless ones cannot be written back; finished or rejected ones were already told.
                if parsed.name and raw_phase(obj) in PENDING_PHASES:
                    self._invalid.set(now_listed, parsed)
            elif parsed.phase in HOLDING_PHASES:
                self._holding.set(now_listed, self._memo.placed(parsed))
            elif parsed.phase in PENDING_PHASES:
                self._pending[now_listed] = parsed
                filed_pending.add(now_listed)
        if everything:
            self._memo.keep_only(seen)
        return filed_pending

    def _apply_avoided(self, filed_pending: set[Key], avoided_nodes: Mapping[str, frozenset[str]]) -> None:
        """The pending workloads as listed: each with the nodes it avoids this time (those filed
        now, and those whose avoided nodes changed)."""
        avoided = {key: frozenset(nodes) for key, nodes in avoided_nodes.items() if nodes}
        stale = {key for key in self._avoided.keys() | avoided.keys() if self._avoided.get(key) != avoided.get(key)}
        self._avoided = avoided
        for key in stale:
            listed = self._key_of.get(key)
            if listed is not None and listed in self._pending:
                filed_pending.add(listed)
        for listed in filed_pending:
            parsed = self._pending[listed]
            nodes = avoided.get(parsed.key)
            self._pending_out.set(listed, replace(parsed, avoided_nodes=nodes) if nodes else parsed)
