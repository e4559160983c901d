"""Raw Kubernetes objects -> one immutable ``Snapshot`` for the engine.

The same function serves the operator (objects from its watch cache) and
``gpuadmit decide`` (objects from a dump), so both decide from identical input.
Objects are read in place, never copied: a cycle over 10,000 nodes and 100,000
workloads spends its time parsing, not duplicating dicts.

Which workloads go where, by ``status.phase``:
- ``Admitted`` / ``Running``: holding (their ``status.placement`` holds GPUs);
- none, ``Queued`` or ``Preempted``: pending (the engine decides them);
- ``Succeeded`` / ``Failed`` / ``Rejected``: neither (finished or already turned away).
An invalid spec goes to ``invalid`` (one InvalidSpec rejection) unless the
workload is already finished or rejected.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpuadmit.core.classifier import KindLean
from gpuadmit.core.model import (
    DEFAULT_POLICY_NAME,
    HOLDING_PHASES,
    PENDING_PHASES,
    TIER_LABEL,
    GpuNode,
    InvalidWorkload,
    Policy,
    Resources,
    Snapshot,
    Workload,
)
from gpuadmit.core.native import admission_unit_of, ray_cluster_of, ray_job_mirror_key, unit_of_pod
from gpuadmit.core.nodes import node_from_object, pod_gpu_request, pod_is_terminal, pod_requests
from gpuadmit.core.pods import pod_node
from gpuadmit.core.podsecurity import (
    DEFAULT_LEVEL,
    DEFAULT_POD_SECURITY,
    MIRROR_POD_SECURITY,
    PodSecurity,
    TemplateRules,
    pod_security_of_namespaces,
)
from gpuadmit.core.policy import select_policy
from gpuadmit.core.quota import Tenancy, tenancy
from gpuadmit.core.workload import PHASES, ParseCache, parse_workload

_MAPPINGS = (dict, Mapping)  # dict first: the common case is checked fastest


def objects_by_kind(objs: Iterable[Any]) -> dict[str, list[Mapping[str, Any]]]:
    """Group objects by ``kind``, flattening ``kind: List`` and ``<Kind>List`` wrappers.

    Items of a ``NodeList`` (as the API returns them) carry no kind of their own:
    they get ``Node``. Anything that is not a mapping with a string ``kind`` goes
    under the key ``""`` so the caller can report it. Objects are not copied,
    except list items without a kind (a shallow copy that adds it).
    """
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for obj in objs:
        _collect(obj, None, grouped, 0)
    return grouped


MAX_LIST_NESTING = 16


def _collect(obj: Any, implied_kind: str | None, grouped: dict[str, list[Mapping[str, Any]]], depth: int) -> None:
    if not isinstance(obj, _MAPPINGS):
        if obj is not None:  # an empty YAML document is not an object
            grouped.setdefault("", []).append(obj)
        return
    kind = obj.get("kind", implied_kind)
    if not isinstance(kind, str) or not kind:
        grouped.setdefault("", []).append(obj)
        return
    if not kind.endswith("List"):
        if implied_kind and "kind" not in obj:
            obj = {**obj, "kind": kind}
        grouped.setdefault(kind, []).append(obj)
        return
    items = obj.get("items")
    if items is None:
        return  # an empty list: kubectl prints `items: []`, hand-written files may omit it
    if not isinstance(items, list) or depth >= MAX_LIST_NESTING:
        grouped.setdefault("", []).append(obj)
        return
    item_kind = kind[: -len("List")] or None
    for item in items:
        # The common case, kept out of the recursion: a plain object that names its kind.
        own_kind = item.get("kind") if type(item) is dict else None
        if type(own_kind) is str and own_kind and not own_kind.endswith("List"):
            bucket = grouped.get(own_kind)
            if bucket is None:
                bucket = grouped[own_kind] = []
            bucket.append(item)
        else:
            _collect(item, item_kind, grouped, depth + 1)


def tiers_by_namespace(namespaces: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Namespace name -> its ``gpuadmit.io/tier`` label, for namespaces that carry one."""
    tiers: dict[str, str] = {}
    for namespace in namespaces:
        metadata = namespace.get("metadata") if isinstance(namespace, _MAPPINGS) else None
        if not isinstance(metadata, _MAPPINGS):
            continue
        labels = metadata.get("labels")
        tier = labels.get(TIER_LABEL) if isinstance(labels, _MAPPINGS) else None
        name = metadata.get("name")
        if isinstance(name, str) and isinstance(tier, str) and tier:
            tiers[name] = tier
    return tiers


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What a snapshot reads of one non-terminal pod bound to a node or, not bound yet, pinned to
    one (``core.pods.pod_node``): where its requests count, what they are, and whose reservation
    it may fill."""

    node: str
    gpus: int                              # as kube-scheduler counts them (``pod_gpu_request``)
    requests: tuple[tuple[str, int], ...]  # every other resource (``pod_requests``)
    # "namespace/workload" of the GPUWorkload controlling it (its controller ownerReference). A
    # pod that only carries the ``gpuadmit.io/workload`` label is somebody else's: counted as
    # ours, it would hide inside that workload's reservation instead of beside it.
    own: str | None
    unit: str | None  # the key a mirror of its native unit would have (``core.native.unit_of_pod``)
    # "namespace/cluster" when a RayCluster controls it: its unit is then the RayJob that made the
    # cluster, which ``ray_jobs`` tells each cycle (a RayJob records its cluster after the pods may
    # already be read, so this is resolved per snapshot, not kept in the memo).
    ray_cluster: str | None = None

    def filling(self, mirrors: Container[str], ray_jobs: Mapping[str, str] | None = None) -> str | None:
        """The reservation it fills, as ``core.native.admission_unit_of`` says."""
        if self.own is not None:
            return self.own
        if not mirrors:
            return None
        if self.ray_cluster is not None and ray_jobs:
            ray_job_key = ray_job_mirror_key(self.ray_cluster, ray_jobs)
            if ray_job_key is not None:
                return ray_job_key if ray_job_key in mirrors else None
        return self.unit if self.unit in mirrors else None


def pod_facts(pod: Mapping[str, Any]) -> PodFacts | None:
    """The pod's facts, None when it counts nowhere (terminal, not placed, not an object)."""
    if not isinstance(pod, _MAPPINGS) or pod_is_terminal(pod):
        return None
    node_name = pod_node(pod)
    if not node_name:
        return None
    spec = pod.get("spec")
    has_metadata = isinstance(pod.get("metadata"), _MAPPINGS)
    return PodFacts(
        node=node_name, gpus=pod_gpu_request(pod),
        requests=tuple(pod_requests(spec if isinstance(spec, _MAPPINGS) else {}).items()),
        own=admission_unit_of(pod) if has_metadata else None,
        unit=unit_of_pod(pod).mirror_key if has_metadata else None,
        ray_cluster=ray_cluster_of(pod) if has_metadata else None,
    )


@dataclass
class PodUsage:
    """What the pods hold, summed from their facts: GPUs and other resources by node, and the part
    of each reservation the pods that fill it already request, by (workload key, node)."""

    gpus_by_node: dict[str, int]
    requests_by_node: dict[str, dict[str, int]]
    gpus_of_own: dict[tuple[str, str], int]
    resources_of_own: dict[tuple[str, str], Resources]


def pod_usage(facts: Iterable[PodFacts], mirrors: Container[str] = (),
              ray_jobs: Mapping[str, str] | None = None) -> PodUsage:
    gpus_by_node: dict[str, int] = {}
    requests_by_node: dict[str, dict[str, int]] = {}
    gpus_of_own: dict[tuple[str, str], int] = {}
    own_requests: dict[tuple[str, str], dict[str, int]] = {}
    for fact in facts:
        node_requests = requests_by_node.setdefault(fact.node, {})
        for resource, amount in fact.requests:
            node_requests[resource] = node_requests.get(resource, 0) + amount
        if fact.gpus:
            gpus_by_node[fact.node] = gpus_by_node.get(fact.node, 0) + fact.gpus
        owner = fact.filling(mirrors, ray_jobs)
        if owner is None:
            continue
        key = (owner, fact.node)
        held = own_requests.setdefault(key, {})
        for resource, amount in fact.requests:
            held[resource] = held.get(resource, 0) + amount
        if fact.gpus:
            gpus_of_own[key] = gpus_of_own.get(key, 0) + fact.gpus
    return PodUsage(gpus_by_node, requests_by_node, gpus_of_own,
                    {key: tuple(sorted(held.items())) for key, held in own_requests.items()})


def _facts_of(pods: Iterable[Mapping[str, Any]]) -> list[PodFacts]:
    return [facts for pod in pods if (facts := pod_facts(pod)) is not None]


def gpus_of_own_pods(pods: Iterable[Mapping[str, Any]], mirrors: Container[str] = (),
                     ray_jobs: Mapping[str, str] | None = None) -> dict[tuple[str, str], int]:
    """GPUs requested by the non-terminal pods that fill a reservation (controlled by their
    GPUWorkload, or of the native unit a trusted mirror stands for), by (workload key, node)."""
    return pod_usage(_facts_of(pods), mirrors, ray_jobs).gpus_of_own


class ParseMemo:
    """Parsed workloads kept from one snapshot to the next by a caller that builds many (the
    operator): an object is parsed again only when it (uid, resourceVersion), the policy object,
    its namespace's tier or its namespace's template rules changed. Entries of workloads gone from the latest snapshot are
    dropped, so it holds at most one entry per workload."""

    def __init__(self) -> None:
        self.cache = ParseCache()
        self._entries: dict[tuple[str, str], tuple[tuple[Any, ...], Policy, Workload | InvalidWorkload]] = {}
        self._placed: dict[tuple[str, str], tuple[Workload, Workload]] = {}  # parsed -> with placed resources
        # Each namespace's template rules under one PodSecurity (a snapshot's): the same object for
        # every workload of the namespace, so the stamps compare by identity, and built once.
        self._rules_under: PodSecurity | None = None
        self._rules: dict[str, TemplateRules] = {}

    def _rules_for(self, pod_security: PodSecurity, namespace: str) -> TemplateRules:
        if pod_security is MIRROR_POD_SECURITY:  # one object for every namespace already
            return pod_security.rules_for(namespace)
        if pod_security is not self._rules_under:
            if pod_security != self._rules_under:  # an equal one (the next snapshot's) keeps them
                self._rules = {}
            self._rules_under = pod_security
        rules = self._rules.get(namespace)
        if rules is None:
            rules = self._rules[namespace] = pod_security.rules_for(namespace)
        return rules

    def parse(self, obj: Mapping[str, Any], policy: Policy, tiers: Mapping[str, str], now: float,
              seen: set[tuple[str, str]], pod_security: PodSecurity = DEFAULT_POD_SECURITY,
              class_lean: KindLean | None = None) -> Workload | InvalidWorkload:
        metadata = obj.get("metadata") if isinstance(obj, _MAPPINGS) else None
        if not isinstance(metadata, _MAPPINGS) or not metadata.get("creationTimestamp"):
            return parse_workload(obj, policy, tiers, now=now, pod_security=pod_security, cache=self.cache,
                                  class_lean=class_lean)  # its age would come from ``now``
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        stamp = (str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or ""), tiers.get(key[0]),
                 self._rules_for(pod_security, key[0] or "default"), class_lean)
        seen.add(key)
        held = self._entries.get(key)
        if held is not None and held[0] == stamp and held[1] is policy and stamp[0] and stamp[1]:
            return held[2]
        parsed = parse_workload(obj, policy, tiers, now=now, pod_security=pod_security, cache=self.cache,
                                class_lean=class_lean)
        self._entries[key] = (stamp, policy, parsed)
        return parsed

    def placed(self, workload: Workload) -> Workload:
        """``_with_placed_resources`` of a parsed holding workload: the same object for as long as
        the parse is (an engine that keeps state between cycles compares them by identity first)."""
        key = (workload.namespace, workload.name)
        held = self._placed.get(key)
        if held is not None and held[0] is workload:
            return held[1]
        placed = _with_placed_resources(workload)
        self._placed[key] = (workload, placed)
        return placed

    def forget(self, key: tuple[str, str]) -> None:
        """Drop one workload's entries (it is gone)."""
        self._entries.pop(key, None)
        self._placed.pop(key, None)

    def keep_only(self, seen: set[tuple[str, str]]) -> None:
        if len(self._entries) > len(seen):
            self._entries = {key: entry for key, entry in self._entries.items() if key in seen}
        if len(self._placed) > len(seen):
            self._placed = {key: entry for key, entry in self._placed.items() if key in seen}


def build_snapshot(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    namespaces: Iterable[Mapping[str, Any]],
    workloads: Iterable[Mapping[str, Any]],
    policies: Iterable[Mapping[str, Any] | Policy],
    now: float,
    policy_name: str = DEFAULT_POLICY_NAME,
    memo: ParseMemo | None = None,
    pod_security_level: str = DEFAULT_LEVEL,
    quotas: Tenancy | Iterable[Mapping[str, Any]] = (),
    avoided_nodes: Mapping[str, frozenset[str]] | None = None,
    mirrors: Mapping[str, KindLean | None] | None = None,
    ray_jobs: Mapping[str, str] | None = None,
) -> Snapshot:
    """The engine's input from raw objects.

    ``policies`` may hold MarginPolicy objects or ready ``Policy`` instances (the
    operator passes its last good one); the one named ``policy_name`` is used,
    ``DEFAULT_POLICY`` when there is none. Raises ``SpecError`` only when that
    policy is invalid. Nodes and workloads come out sorted by name, so the
    snapshot does not depend on the order a watch delivered them in. ``memo`` (optional) reuses
    the parse of workloads unchanged since the last snapshot built with it. ``pod_security_level``
    is the Pod Security Standards level templates are held to (a namespace's stricter
    ``pod-security.kubernetes.io/enforce`` label wins; see ``core.podsecurity``).
    ``quotas``: GPUQuota objects (invalid ones are left out; the operator reports them) or their
    ``Tenancy``.
    ``avoided_nodes``: workload key ("namespace/name") -> nodes its pods may not be placed on this
    time (the operator's: where kube-scheduler lately found them Unschedulable).
    ``mirrors``: the keys of the trusted mirrors of native units (``core.native``), each with the
    class its native kind leans to: their templates are held to the accounting rules only (their
    pods are made by the tenant's own controllers), and the pods of their units fill their
    reservations as a GPUWorkload's own pods do.
    ``ray_jobs``: "namespace/cluster" -> RayJob name (``core.native.ray_jobs_by_cluster``), so a
    RayJob's pods fill its mirror's reservation.
"""
    mirrors = mirrors or {}
    policy = select_policy(policies, policy_name)
    namespaces = namespaces if isinstance(namespaces, (list, tuple)) else list(namespaces)
    tiers = tiers_by_namespace(namespaces)
    pod_security = pod_security_of_namespaces(namespaces, pod_security_level)
    tenants = quotas if isinstance(quotas, Tenancy) else tenancy(quotas, namespaces)
    usage = pod_usage(_facts_of(pods), mirrors, ray_jobs)
    used_by_node, requests_by_node = usage.gpus_by_node, usage.requests_by_node

    # Keyed by name, so an object listed twice (two dumps concatenated) counts once: the
    # later one wins, as it would have on the API server. A node counted twice would
    # offer GPUs that do not exist.
    nodes_by_name: dict[str, GpuNode] = {}
    for node_obj in nodes:
        name = _name_of(node_obj)
        used, requests = (used_by_node.get(name, 0), requests_by_node.get(name)) if name else (0, None)
        gpu_node = node_from_object(node_obj, used, requests)
        if gpu_node is not None:
            nodes_by_name[gpu_node.name] = gpu_node

    parsed_by_key: dict[tuple[str, str], Workload | InvalidWorkload] = {}
    pending_phase_of_invalid: dict[tuple[str, str], bool] = {}
    seen: set[tuple[str, str]] = set()
    cache = ParseCache()  # many workloads share a template and timestamps: read each once
    for workload_obj in workloads:
        security, lean = pod_security, None
        if mirrors:
            mirror_key = f"{_namespace_of(workload_obj)}/{_name_of(workload_obj)}"
            if mirror_key in mirrors:
                security, lean = MIRROR_POD_SECURITY, mirrors[mirror_key]
        if memo is not None:
            parsed = memo.parse(workload_obj, policy, tiers, now, seen, security, lean)
        else:
            parsed = parse_workload(workload_obj, policy, tiers, now=now, pod_security=security, cache=cache,
                                    class_lean=lean)
        key = (parsed.namespace, parsed.name)
        parsed_by_key[key] = parsed
        if isinstance(parsed, InvalidWorkload):
            pending_phase_of_invalid[key] = raw_phase(workload_obj) in PENDING_PHASES

    if memo is not None:
        memo.keep_only(seen)
    holding: list[Workload] = []
    pending: list[Workload] = []
    invalid: list[InvalidWorkload] = []
    for key in sorted(parsed_by_key):
        parsed = parsed_by_key[key]
        if isinstance(parsed, InvalidWorkload):
            # Nameless ones cannot be written back; finished or rejected ones were already told.
            if parsed.name and pending_phase_of_invalid[key]:
                invalid.append(parsed)
        elif parsed.phase in HOLDING_PHASES:
            holding.append(memo.placed(parsed) if memo is not None else _with_placed_resources(parsed))
        elif parsed.phase in PENDING_PHASES:
            avoided = avoided_nodes.get(parsed.key) if avoided_nodes else None
            pending.append(replace(parsed, avoided_nodes=frozenset(avoided)) if avoided else parsed)

    return Snapshot(
        nodes=tuple(nodes_by_name[name] for name in sorted(nodes_by_name)),
        holding=tuple(holding),
        pending=tuple(pending),
        policy=policy,
        now=now,
        invalid=tuple(invalid),
        gpus_of_own_pods=usage.gpus_of_own,
        quotas=tenants.quotas,
        quota_of_namespace=tenants.quota_of_namespace,
        resources_of_own_pods=usage.resources_of_own,
    )


def _with_placed_resources(workload: Workload) -> Workload:
    """A holding workload whose placement entries carry what they hold of every other resource
    (replicas x the template's requests), for the ledger."""
    if not workload.requests or not workload.placement:
        return workload
    entries = tuple(
        replace(entry, resources=tuple((r, a * entry.replicas) for r, a in workload.requests))
        if type(entry.replicas) is int and entry.replicas > 0 else entry
        for entry in workload.placement
    )
    return replace(workload, placement=entries)


def _namespace_of(obj: object) -> str:
    metadata = obj.get("metadata") if isinstance(obj, _MAPPINGS) else None
    namespace = metadata.get("namespace") if isinstance(metadata, _MAPPINGS) else None
    return namespace if isinstance(namespace, str) and namespace else "default"


def _name_of(obj: object) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, _MAPPINGS) else None
    name = metadata.get("name") if isinstance(metadata, _MAPPINGS) else None
    return name if isinstance(name, str) else None


def raw_phase(obj: object) -> Any:
    """``status.phase`` of a raw object, None when absent or not a known phase string."""
    status = obj.get("status") if isinstance(obj, _MAPPINGS) else None
    phase = status.get("phase") if isinstance(status, _MAPPINGS) else None
    return phase if isinstance(phase, str) and phase in PHASES else None
