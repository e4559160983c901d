"""The invariants gpuadmit must keep whatever happens to it, checked from the API's point of view.

A GPU admission controller is trusted with capacity: whatever the faults (API errors, cut
watches, SIGKILLed operator, lost nodes, hostile input), these must hold:

- **no overcommit**: on every node, non-terminal pods never request more GPUs than allocatable,
  and reservations (Admitted/Running statuses' ``placement``) never promise more; once the
  operator has caught up, pods plus the part of each reservation its own pods do not request
  yet (the ledger of docs/architecture.md) fit too;
- **one current decision**: every GPUWorkload carries exactly one phase, a known one, with a
  reason and a message; a holding phase has a placement that accounts for exactly its replicas (``gpus x
  replicas`` GPUs, read by ``gpuadmit.core.placement``), any
  other phase none; a message never carries a Python traceback;
- **nothing lost**: every workload the test created (and did not delete) is still there;
- **nothing decided twice**: once admitted, a workload keeps its placement and ``admittedAt``
  until it leaves the holding phases (Preempted, Queued, finished); a finished or rejected
  workload never comes back; a pod is never created twice for the same admission.

Point-in-time invariants are checked from a ``ClusterState`` (pure functions). "Decided twice"
needs history: ``DecisionHistory`` is fed every workload and pod version in order (from watch
streams, ``WatchRecorder``), so it sees a Preempted in between even when a poll would miss it.

The reader uses only list and watch, so the same checker runs against the emulated API server
and a real cluster.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuadmit.core.model import API_GROUP, API_VERSION, GPU_RESOURCE, HOLDING_PHASES, WORKLOAD_LABEL, Phase
from gpuadmit.core.native import claimed_unit, ray_jobs_by_cluster, released, unit_of_pod
from gpuadmit.core.nodes import parse_quantity
from gpuadmit.core.placement import placement_of as recorded_placement
from gpuadmit.core.pods import pod_node
from gpuadmit.core.timefmt import parse_rfc3339_or_none

KNOWN_PHASES = frozenset(phase.value for phase in Phase)
FINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.REJECTED.value})
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "', "\n  at ")

# Invariant names: the same strings appear in reports and in ``Violation.invariant``.
OVERCOMMIT = "overcommit"
NO_DECISION = "no-decision"
BAD_STATUS = "bad-status"
LOST = "lost"
DECIDED_TWICE = "decided-twice"
FINAL_REVERTED = "final-reverted"
POD_DUPLICATED = "pod-duplicated"
PODS_MISMATCH = "pods-mismatch"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: which, about what (``ns/name`` or a node), and what was seen."""

    invariant: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.subject}: {self.message}"


@dataclass
class ClusterState:
    """Raw objects as the API returned them. ``workloads_again`` is a second read of the
    workloads taken after the pods: a reservation counts only if both reads agree on it, so
    three separate list calls can never produce a false overcommit."""

    nodes: list[Mapping[str, Any]]
    pods: list[Mapping[str, Any]]
    workloads: list[Mapping[str, Any]]
    workloads_again: list[Mapping[str, Any]] | None = None
    ray_jobs: list[Mapping[str, Any]] = field(default_factory=list)  # whose clusters' pods fill their mirrors

    @classmethod
    def from_dump(cls, dump: Mapping[str, list[Mapping[str, Any]]]) -> ClusterState:
        """From a dump of ``nodes``, ``pods`` and ``workloads`` (the e2e harness's ``Cluster.dump()``)."""
        return cls(nodes=dump["nodes"], pods=dump["pods"], workloads=dump["workloads"])


# -- reading objects ------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def key_of(obj: Mapping[str, Any]) -> str:
    metadata = _mapping(obj.get("metadata"))
    return f"{metadata.get('namespace') or 'default'}/{metadata.get('name')}"


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(obj.get("status"))


def phase_of(obj: Mapping[str, Any]) -> str | None:
    phase = _status(obj).get("phase")
    return phase if isinstance(phase, str) and phase else None


def placement_of(obj: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """``status.placement`` as sorted (node, gpus) pairs, read by the operator's own reader
    (``gpuadmit.core.placement``): entries it cannot read are left out."""
    return tuple(sorted((entry.node, entry.gpus) for entry in recorded_placement(obj).entries))


def _whole(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def requested_gpus(obj: Mapping[str, Any]) -> int:
    spec = _mapping(obj.get("spec"))
    return _whole(spec.get("gpus"), 0) * _whole(spec.get("replicas"), 1)


def allocatable_gpus(node: Mapping[str, Any]) -> int:
    amount = parse_quantity(_mapping(_status(node).get("allocatable")).get(GPU_RESOURCE, "0"))
    return int(amount) if amount is not None and amount > 0 else 0


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs a pod requests (requests, else limits, summed over its containers)."""
    total = 0
    for container in _mapping(pod.get("spec")).get("containers") or []:
        resources = _mapping(_mapping(container).get("resources"))
        amounts = _mapping(resources.get("requests")) or _mapping(resources.get("limits"))
        amount = parse_quantity(amounts.get(GPU_RESOURCE, "0")) if GPU_RESOURCE in amounts else 0
        total += int(amount or 0)
    return total


def pod_is_live(pod: Mapping[str, Any]) -> bool:
    return _status(pod).get("phase") not in TERMINAL_POD_PHASES


def owning_workload_key(pod: Mapping[str, Any], mirrors: Collection[str] = (),
                        ray_jobs: Mapping[str, str] | None = None) -> str | None:
    """``ns/name`` of the workload a pod belongs to: a pod of ours by the gpuadmit.io/workload
    label; a native pod gpuadmit released (past its gate, pinned) by the mirror of its unit
    (``mirrors``: the keys of the mirror GPUWorkloads present, docs/native-workloads.md)."""
    metadata = _mapping(pod.get("metadata"))
    name = _mapping(metadata.get("labels")).get(WORKLOAD_LABEL)
    if isinstance(name, str) and name:
        return f"{metadata.get('namespace') or 'default'}/{name}"
    if mirrors and released(pod):
        key = unit_of_pod(pod, ray_jobs).mirror_key
        return key if key in mirrors else None
    return None


def mirror_keys(workloads: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Keys of the workloads that claim to mirror a native unit (labelled gpuadmit.io/mirror-kind)."""
    return frozenset(key_of(w) for w in workloads if claimed_unit(w) is not None)


# -- point-in-time invariants (pure) --------------------------------------------------------------


def gpus_in_use_by_node(state: ClusterState) -> dict[str, int]:
    """GPUs taken on each node: non-terminal pods bound to it, plus the part of each stable
    reservation that its own pods do not request yet (the ledger of docs/architecture.md)."""
    in_use: Counter[str] = Counter(live_pod_gpus_by_node(state))
    own: Counter[tuple[str, str]] = Counter()
    mirrors, ray_jobs = mirror_keys(state.workloads), ray_jobs_by_cluster(state.ray_jobs)
    for pod in state.pods:
        node, owner = pod_node(pod), owning_workload_key(pod, mirrors, ray_jobs)
        if isinstance(node, str) and node and owner and pod_is_live(pod):
            own[(owner, node)] += pod_gpus(pod)
    for key, placement in _stable_reservations(state).items():
        for node, gpus in placement:
            in_use[node] += max(0, gpus - own[(key, node)])
    return dict(in_use)


def live_pod_gpus_by_node(state: ClusterState) -> dict[str, int]:
    """GPUs requested by non-terminal pods, per node: what the devices physically serve. A pod
    not bound yet counts on the node its affinity pins it to (kube-scheduler binds it there)."""
    in_use: Counter[str] = Counter()
    for pod in state.pods:
        node = pod_node(pod)
        if isinstance(node, str) and node and pod_is_live(pod):
            in_use[node] += pod_gpus(pod)
    return dict(in_use)


def reserved_gpus_by_node(state: ClusterState) -> dict[str, int]:
    """GPUs promised by Admitted/Running statuses (seen the same in both reads), per node."""
    reserved: Counter[str] = Counter()
    for placement in _stable_reservations(state).values():
        for node, gpus in placement:
            reserved[node] += gpus
    return dict(reserved)


def _stable_reservations(state: ClusterState) -> dict[str, tuple[tuple[str, int], ...]]:
    def holding(workloads: Iterable[Mapping[str, Any]]) -> dict[str, tuple[tuple[str, int], ...]]:
        return {key_of(w): placement_of(w) for w in workloads if phase_of(w) in HOLDING_PHASES}

    first = holding(state.workloads)
    if state.workloads_again is None:
        return first
    again = holding(state.workloads_again)
    return {key: placement for key, placement in first.items() if again.get(key) == placement}


def explain_node(state: ClusterState, node: str) -> list[str]:
    """What takes GPUs on ``node``, line by line: for a violation report a person can act on."""
    lines = []
    for pod in state.pods:
        if pod_node(pod) == node and pod_is_live(pod):
            metadata = _mapping(pod.get("metadata"))
            lines.append(f"pod {metadata.get('namespace')}/{metadata.get('name')} ({owning_workload_key(pod)}): "
                         f"{pod_gpus(pod)} GPUs, phase {_status(pod).get('phase')}")
    for workload in state.workloads:
        for placed_node, gpus in placement_of(workload):
            if placed_node == node:
                lines.append(f"reservation {key_of(workload)}: {gpus} GPUs, phase {phase_of(workload)}")
    return lines


def overcommit_violations(state: ClusterState, settled: bool = False) -> list[Violation]:
    """Always: live pods never ask a node for more GPUs than it has, and reservations never
    promise more. Once settled, also the combined ledger: while a preempted or requeued
    workload's pods are being deleted (a delete may fail and be retried), they overlap with
    the reservation that replaced them; the new pods wait for them, so that overlap is
    transient by design, but it must be gone once the operator has caught up."""
    allocatable = {_mapping(n.get("metadata")).get("name"): allocatable_gpus(n) for n in state.nodes}
    measures = [("live pods request", live_pod_gpus_by_node(state)), ("reservations promise", reserved_gpus_by_node(state))]
    if settled:
        measures.append(("pods and reservations take", gpus_in_use_by_node(state)))
    violations = []
    for what, by_node in measures:
        for node, used in sorted(by_node.items()):
            if node in allocatable and used > allocatable[node]:  # a deleted node holds nothing any more
                violations.append(Violation(OVERCOMMIT, node, f"{what} {used} GPUs > {allocatable[node]} allocatable"))
    return violations


def status_violations(workload: Mapping[str, Any], *, now: float | None = None,
                      decision_grace_seconds: float | None = None) -> list[Violation]:
    """What is wrong with one workload's status: a missing, unknown or incoherent decision."""
    key, status, phase = key_of(workload), _status(workload), phase_of(workload)
    if phase is None:
        if decision_grace_seconds is None or now is None:
            return []
        created = _created_at(workload)
        if decision_grace_seconds <= 0:
            return [Violation(NO_DECISION, key, "no decision once the operator caught up")]
        if created is not None and now - created > decision_grace_seconds:
            return [Violation(NO_DECISION, key, f"no decision {now - created:.0f}s after creation")]
        return []
    if phase not in KNOWN_PHASES:
        return [Violation(BAD_STATUS, key, f"unknown phase {phase!r}")]
    violations = []
    for text_field in ("reason", "message"):
        value = status.get(text_field)
        if not isinstance(value, str) or not value:
            violations.append(Violation(BAD_STATUS, key, f"phase {phase} without a {text_field}"))
        elif any(marker in value for marker in TRACEBACK_MARKERS):
            violations.append(Violation(BAD_STATUS, key, f"traceback text in status.{text_field}: {value[:200]!r}"))
    placed = sum(gpus for _, gpus in placement_of(workload))
    problem = recorded_placement(workload).problem
    if phase in HOLDING_PHASES and (problem is not None or placed != requested_gpus(workload)):
        violations.append(Violation(BAD_STATUS, key, f"{phase} with {placed} GPUs placed for {requested_gpus(workload)} "
                                                     f"requested ({problem or 'placement'})"))
    if phase in (Phase.QUEUED.value, Phase.REJECTED.value, Phase.PREEMPTED.value) and placed:
        violations.append(Violation(BAD_STATUS, key, f"{phase} but still has a placement of {placed} GPUs"))
    return violations


def pods_violations(state: ClusterState) -> list[Violation]:
    """For a settled cluster: holding workloads have exactly their pods, sized and pinned as
    placed; any other workload has no live pod; no replica has two live pods. A mirror's pods are
    its native controller's (a Job's may not all exist yet): at most its replicas, each released
    onto a node of its placement, none once it holds nothing."""
    live_pods: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    mirrors, ray_jobs = mirror_keys(state.workloads), ray_jobs_by_cluster(state.ray_jobs)
    for pod in state.pods:
        owner = owning_workload_key(pod, mirrors, ray_jobs)
        if owner and pod_is_live(pod):
            live_pods[owner].append(pod)
    violations = []
    for workload in state.workloads:
        key, phase = key_of(workload), phase_of(workload)
        pods = live_pods.get(key, [])
        if phase not in HOLDING_PHASES:
            if pods:
                violations.append(Violation(PODS_MISMATCH, key, f"{phase} but {len(pods)} live pod(s)"))
            continue
        if key in mirrors:
            placed = Counter({node: gpus for node, gpus in placement_of(workload)})
            on_nodes: Counter[str] = Counter()
            for pod in pods:
                on_nodes[pod_node(pod) or ""] += pod_gpus(pod)
            if any(gpus > placed[node] for node, gpus in on_nodes.items()):
                violations.append(Violation(PODS_MISMATCH, key, f"released pods on {dict(on_nodes)} beyond placement "
                                                                f"{placement_of(workload)}"))
            continue
        replicas = _whole(_mapping(workload.get("spec")).get("replicas"), 1)
        names = Counter(_mapping(p.get("metadata")).get("name") for p in pods)
        if len(pods) != replicas or any(count > 1 for count in names.values()):
            violations.append(Violation(PODS_MISMATCH, key, f"{phase} with {len(pods)} live pods for {replicas} replicas"))
            continue
        on_nodes: Counter[str] = Counter()
        for pod in pods:
            on_nodes[pod_node(pod) or ""] += pod_gpus(pod)
        if tuple(sorted(on_nodes.items())) != placement_of(workload):
            violations.append(Violation(PODS_MISMATCH, key, f"pods on {dict(on_nodes)} but placement {placement_of(workload)}"))
    return violations


def lost_violations(state: ClusterState, expected: Iterable[str]) -> list[Violation]:
    present = {key_of(w) for w in state.workloads}
    return [Violation(LOST, key, "created by the test, gone from the API") for key in sorted(set(expected) - present)]


def check_state(state: ClusterState, *, expected: Iterable[str] = (), now: float | None = None,
                decision_grace_seconds: float | None = None, settled: bool = False) -> list[Violation]:
    """Every point-in-time invariant. ``settled`` adds the checks that only hold once the
    operator has caught up (every workload decided, pods match placements)."""
    violations = overcommit_violations(state, settled) + lost_violations(state, expected)
    grace = 0.0 if settled else decision_grace_seconds
    now = time.time() if now is None else now
    for workload in state.workloads:
        violations += status_violations(workload, now=now, decision_grace_seconds=grace)
    if settled:
        violations += pods_violations(state)
    return violations


def _created_at(obj: Mapping[str, Any]) -> float | None:
    return parse_rfc3339_or_none(_mapping(obj.get("metadata")).get("creationTimestamp"))


# -- history: nothing decided twice ---------------------------------------------------------------


@dataclass
class _WorkloadTrack:
    phase: str | None = None
    placement: tuple[tuple[str, int], ...] = ()
    admitted_at: Any = None
    holding_epochs: int = 0  # times it entered a holding phase: the pods each admission may create


@dataclass
class DecisionHistory:
    """Every version of every workload and pod, in order per object, checked as they come.

    Workloads are tracked by uid (a workload deleted and recreated under the same name is a
    new one). Thread-safe: the workload and pod watches feed it from two threads.
    """

    workloads: dict[str, _WorkloadTrack] = field(default_factory=dict)
    key_by_uid: dict[str, str] = field(default_factory=dict)
    pod_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # pod key -> uids
    pod_owner: dict[str, str] = field(default_factory=dict)  # pod key -> owner workload uid
    violations: list[Violation] = field(default_factory=list)
    versions_seen: int = 0
    gaps: int = 0  # watches that had to re-list: history may have holes, so pod counts are not judged
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_workload(self, obj: Mapping[str, Any]) -> list[Violation]:
        uid = _mapping(obj.get("metadata")).get("uid") or key_of(obj)
        key, phase, placement = key_of(obj), phase_of(obj), placement_of(obj)
        admitted_at = _status(obj).get("admittedAt")
        found: list[Violation] = []
        with self._lock:
            self.versions_seen += 1
            self.key_by_uid[uid] = key
            track = self.workloads.setdefault(uid, _WorkloadTrack())
            if track.phase in FINAL_PHASES and phase != track.phase:
                found.append(Violation(FINAL_REVERTED, key, f"{track.phase} turned into {phase}"))
            if phase in HOLDING_PHASES:
                if track.phase in HOLDING_PHASES:
                    if placement != track.placement:
                        found.append(Violation(DECIDED_TWICE, key, f"placement {track.placement} became {placement} "
                                                                   "without leaving the holding phases"))
                    elif admitted_at != track.admitted_at:
                        found.append(Violation(DECIDED_TWICE, key, f"admitted again (admittedAt {track.admitted_at} "
                                                                   f"-> {admitted_at}) for the same state"))
                else:
                    track.holding_epochs += 1
            track.phase, track.placement, track.admitted_at = phase, placement, admitted_at
            self.violations += found
        return found

    def forget_workload(self, obj: Mapping[str, Any]) -> None:
        """A DELETED event: the workload is gone on purpose (its pods may still be counted)."""
        with self._lock:
            uid = _mapping(obj.get("metadata")).get("uid") or key_of(obj)
            track = self.workloads.get(uid)
            if track is not None:
                track.phase = None

    def record_pod(self, pod: Mapping[str, Any]) -> None:
        metadata = _mapping(pod.get("metadata"))
        if not owning_workload_key(pod):
            return
        pod_key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        owner_uids = [ref.get("uid") for ref in metadata.get("ownerReferences") or [] if isinstance(ref, Mapping)]
        with self._lock:
            self.versions_seen += 1
            self.pod_uids[pod_key].add(str(metadata.get("uid")))
            if owner_uids and owner_uids[0]:
                self.pod_owner[pod_key] = owner_uids[0]

    def note_gap(self) -> None:
        """A watch had to re-list: events may have been missed, so pod counts are not judged."""
        with self._lock:
            self.gaps += 1

    def take_violations(self) -> list[Violation]:
        """The violations found since the last call."""
        with self._lock:
            found, self.violations = self.violations, []
        return found

    def duplicated_pods(self) -> list[Violation]:
        """Pods created more often than their workload was admitted. Judged after the fact, so
        the order in which the pod and workload watches delivered does not matter."""
        with self._lock:
            if self.gaps:
                return []
            found = []
            for pod_key, uids in sorted(self.pod_uids.items()):
                owner = self.pod_owner.get(pod_key)
                track = self.workloads.get(owner) if owner else None
                if track is not None and len(uids) > max(1, track.holding_epochs):
                    found.append(Violation(POD_DUPLICATED, pod_key, f"created {len(uids)} times for "
                                                                    f"{track.holding_epochs} admission(s)"))
            return found


# -- through the API ------------------------------------------------------------------------------


WORKLOADS_PATH = f"/apis/{API_GROUP}/{API_VERSION}/gpuworkloads"
PODS_PATH = "/api/v1/pods"
NODES_PATH = "/api/v1/nodes"


class ApiReader:
    """Lists and watches through a ``kubernetes`` ``ApiClient`` (plain dicts, no model classes)."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    @classmethod
    def from_kubeconfig(cls, path: str) -> "ApiReader":
        import kubernetes
        return cls(kubernetes.config.new_client_from_config(config_file=str(path)))

    def _request(self, path: str, query: list[tuple[str, str]] | None = None, timeout: float = 30.0) -> Any:
        serialized = self.api_client.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        return self.api_client.call_api(*serialized, _request_timeout=timeout)

    def list(self, path: str) -> tuple[list[dict[str, Any]], str]:
        """(items, resourceVersion of the list)."""
        response = self._request(path)
        body = json.loads(response.read() or b"{}")
        if response.status >= 400:
            raise RuntimeError(f"GET {path}: {response.status} {body.get('message', '')}")
        return body.get("items") or [], str(_mapping(body.get("metadata")).get("resourceVersion") or "")

    def state(self) -> ClusterState:
        workloads, _ = self.list(WORKLOADS_PATH)
        nodes, _ = self.list(NODES_PATH)
        pods, _ = self.list(PODS_PATH)
        workloads_again, _ = self.list(WORKLOADS_PATH)
        return ClusterState(nodes=nodes, pods=pods, workloads=workloads, workloads_again=workloads_again)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 10) -> Iterator[dict[str, Any]]:
        """Events from ``resource_version`` until the server ends the stream (raises on 410)."""
        query = [("watch", "true"), ("resourceVersion", resource_version), ("timeoutSeconds", str(timeout_seconds)),
                 ("allowWatchBookmarks", "true")]
        response = self._request(path, query, timeout=timeout_seconds + 30)
        if response.status >= 400:
            raise WatchExpired(response.status)
        buffer = b""
        for chunk in response.response.stream(4096, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        raise WatchExpired(_mapping(event.get("object")).get("code", 500))
                    yield event


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410) or the server refused it: re-list."""


WATCH_SECONDS = 5  # short watches: a stopping recorder never waits long for its threads


class WatchRecorder:
    """Two threads (workloads, pods) that list then watch, feeding a ``DecisionHistory``.

    Resumes from the last resourceVersion when a stream is cut (what faults do); only when the
    server no longer has that version does it re-list, and counts a gap.
    """

    def __init__(self, reader: ApiReader, history: DecisionHistory | None = None) -> None:
        self.reader = reader
        self.history = history or DecisionHistory()
        self.stopping = threading.Event()
        self.streams_cut = 0
        self._threads = [
            threading.Thread(target=self._follow, args=(WORKLOADS_PATH, self._on_workload), daemon=True,
                             name="invariants-workloads"),
            threading.Thread(target=self._follow, args=(PODS_PATH, self._on_pod), daemon=True,
                             name="invariants-pods"),
        ]
        self._listed = [threading.Event(), threading.Event()]

    def __enter__(self) -> "WatchRecorder":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        for thread in self._threads:
            thread.start()
        for listed in self._listed:
            listed.wait(timeout)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=20)

    def _on_workload(self, event_type: str, obj: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self.history.forget_workload(obj)
        else:
            self.history.record_workload(obj)

    def _on_pod(self, event_type: str, obj: Mapping[str, Any]) -> None:
        self.history.record_pod(obj)

    def _follow(self, path: str, on_event: Callable[[str, Mapping[str, Any]], None]) -> None:
        listed = self._listed[0 if path == WORKLOADS_PATH else 1]
        resource_version = ""
        first = True
        while not self.stopping.is_set():
            try:
                if not resource_version:
                    items, resource_version = self.reader.list(path)
                    if not first:
                        self.history.note_gap()
                    first = False
                    for item in items:
                        on_event("ADDED", item)
                    listed.set()
                opened = time.monotonic()
                for event in self.reader.watch(path, resource_version, timeout_seconds=WATCH_SECONDS):
                    obj = _mapping(event.get("object"))
                    resource_version = str(_mapping(obj.get("metadata")).get("resourceVersion") or resource_version)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(event["type"], obj)
                    if self.stopping.is_set():
                        break
                else:
                    if time.monotonic() - opened < WATCH_SECONDS - 1:  # ended early: cut, not timed out
                        self.streams_cut += 1
            except WatchExpired:
                resource_version = ""
            except Exception:  # noqa: BLE001 - API faults: the reader retries, the checker must not die
                self.stopping.wait(0.2)


@dataclass
class InvariantChecker:
    """Runs the invariants against a live cluster, alongside a fault test.

    ``expect(keys)`` when creating workloads, ``forget(keys)`` when deleting them on purpose;
    ``check()`` as often as wanted while faults run; ``check(settled=True)`` once the operator
    has caught up. ``violations`` collects everything found, history included.
    """

    read_state: Callable[[], ClusterState]
    history: DecisionHistory = field(default_factory=DecisionHistory)
    decision_grace_seconds: float | None = None
    expected: set[str] = field(default_factory=set)
    violations: list[Violation] = field(default_factory=list)
    checks_run: int = 0
    last_state: ClusterState | None = None

    def expect(self, keys: Iterable[str]) -> None:
        self.expected.update(keys)

    def forget(self, keys: Iterable[str]) -> None:
        self.expected.difference_update(keys)

    def check(self, settled: bool = False) -> list[Violation]:
        """Read the cluster once and return the new violations (also kept in ``violations``)."""
        expected = set(self.expected)  # before reading: a workload created meanwhile is not "lost"
        state = self.last_state = self.read_state()
        found = check_state(state, expected=expected, decision_grace_seconds=self.decision_grace_seconds,
                            settled=settled)
        found += self.history.take_violations()
        if settled:
            found += self.history.duplicated_pods()
        self.checks_run += 1
        for violation in found:
            if violation not in self.violations:
                self.violations.append(violation)
        return found
