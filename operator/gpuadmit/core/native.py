"""Native workloads (Jobs, pods, pod groups) -> admission units and their mirror GPUWorkloads.

In a namespace labelled ``gpuadmit.io/managed: "true"`` gpuadmit decides for the objects teams
already submit. Each admission unit gets a *mirror*: a GPUWorkload in the same namespace, made by
the operator, owned by the native object(s), decided by the same engine. This module is the pure
half: which unit a pod belongs to, the mirror a unit should have, whether a GPUWorkload that claims
to be a mirror is one, and which reserved slot each waiting pod is released onto. The edge
(``controller.native``) writes what these functions return.

Units:
- a batch/v1 **Job** is one gang of ``parallelism`` (at most ``completions``) replicas of its pod
  template; its pods are not units of their own, they are released onto their Job's placement;
- a Kubeflow **PyTorchJob** or a KubeRay **RayJob** likewise (``SUSPENDABLE``): one gang of the
  GPU pods of all its roles or groups (``gang_of``), held and released through its suspend field;
- a **pod group**: pods labelled ``gpuadmit.io/pod-group: NAME`` with annotation
  ``gpuadmit.io/pod-group-size: "N"``, one gang of N;
- a **LeaderWorkerSet group**: pods with the labels ``leaderworkerset.sigs.k8s.io/name`` and
  ``leaderworkerset.sigs.k8s.io/group-index``, size from ``leaderworkerset.sigs.k8s.io/size``;
- any other pod (of a Deployment, ReplicaSet, StatefulSet, or bare) is its own unit of one replica.

Trust: tenants may create GPUWorkloads, so a label cannot make one a mirror. ``mirror_problem``
accepts a GPUWorkload carrying ``gpuadmit.io/mirror-kind`` only when its namespace is managed, the
native unit it names is alive, its name is that unit's mirror name and its ownerReferences name the
uid of every native owner. The spec is not part of trust: the operator rewrites a trusted mirror's
spec to the one built here while it holds no GPUs (a tenant's copy with a smaller spec is corrected
before it is decided), so a forger gains nothing a real mirror would not have.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpuadmit.core.classifier import KindLean
from gpuadmit.core.model import API_GROUP, API_VERSION, PlacementEntry
from gpuadmit.core.nodes import pod_gpu_request, pod_is_terminal
from gpuadmit.core.pods import GPUWORKLOAD_KIND, controlling_workload, pinned_affinity, pinned_node, replica_slots
from gpuadmit.core.policy import whole_number
from gpuadmit.core.template_shape import MAX_LABEL_VALUE_LENGTH

_MAPPINGS = (dict, Mapping)

# Shared names (HELPERS.md; the webhooks of native-hooks use the same ones).
MANAGED_LABEL = "gpuadmit.io/managed"
MANAGED_VALUE = "true"
ADMISSION_GATE = "gpuadmit.io/admission"
POD_GROUP_LABEL = "gpuadmit.io/pod-group"
POD_GROUP_SIZE_ANNOTATION = "gpuadmit.io/pod-group-size"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_SIZE_ANNOTATION = "leaderworkerset.sigs.k8s.io/size"

# The mirror's own marks.
MIRROR_KIND_LABEL = "gpuadmit.io/mirror-kind"  # a UnitKind: Job, PyTorchJob, RayJob, Pod, PodGroup, LeaderWorkerSet
MIRROR_NAME_LABEL = "gpuadmit.io/mirror-name"  # the native name, or its hash when longer than a label value
MIRROR_OF_ANNOTATION = "gpuadmit.io/mirror-of"  # the native name in full, always
MIRROR_KEYS = frozenset({MIRROR_KIND_LABEL, MIRROR_NAME_LABEL, MIRROR_OF_ANNOTATION})
# On the mirror of a workload whose parts ask for different GPUs per pod: what each part asks and
# that every replica reserves the largest (a GPUWorkload has one GPUs-per-replica).
UNEVEN_GPUS_ANNOTATION = "gpuadmit.io/uneven-gpus"
# An explicit class on the native object (its metadata or, for a Job, its pod template's).
CLASS_ANNOTATION = "gpuadmit.io/class"
# On a Job the Job webhook suspended (core.holds): on opting out, gpuadmit resumes such a Job.
SUSPENDED_BY_ANNOTATION = "gpuadmit.io/suspended-by"
# On a Job gpuadmit unsuspended: the uid of the mirror it was released for. A Job without it that
# runs unsuspended was unsuspended by somebody else (its pods still wait at their gates).
RELEASED_ANNOTATION = "gpuadmit.io/released-for"

# What the operator does to native units, counted by kind in gpuadmit_native_actions_total.
MIRRORED, REJECTED, RESUMED, SUSPENDED, RELEASED_POD, DELETED_POD, UNMANAGED = (
    "mirrored", "rejected", "resumed", "suspended", "released", "deleted", "unmanaged")
NATIVE_ACTIONS = (MIRRORED, REJECTED, RESUMED, SUSPENDED, RELEASED_POD, DELETED_POD, UNMANAGED)

# The reason an untrusted mirror claim is Rejected with (and left out of the decisions).
MIRROR_NOT_TRUSTED = "MirrorNotTrusted"

JOB_API_VERSION = "batch/v1"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the API server in a Job's pod template
PYTORCHJOB_API_VERSION = "kubeflow.org/v1"  # Kubeflow's training operator
RAYJOB_API_VERSION = "ray.io/v1"  # KubeRay
RAYCLUSTER_KIND = "RayCluster"  # what a RayJob's pods are controlled by (RayJob -> RayCluster -> pods)
RAY_CLUSTER_LABEL = "ray.io/cluster"  # KubeRay's label on every pod of a RayCluster
MAX_GROUP_SIZE = 1024  # the CRD's bound on spec.replicas
HASH_LENGTH = 10


class UnitKind(str, enum.Enum):
    JOB = "Job"
    POD = "Pod"
    POD_GROUP = "PodGroup"
    LWS_GROUP = "LeaderWorkerSet"
    PYTORCH_JOB = "PyTorchJob"
    RAY_JOB = "RayJob"


_NAME_PREFIX = {UnitKind.JOB: "job", UnitKind.POD: "pod", UnitKind.POD_GROUP: "group", UnitKind.LWS_GROUP: "lws",
                UnitKind.PYTORCH_JOB: "pytorchjob", UnitKind.RAY_JOB: "rayjob"}
# A kind's lean where the template is not decisive: a Job runs to completion, a Deployment's,
# ReplicaSet's, StatefulSet's or LeaderWorkerSet's pods serve (core.classifier).
_LEAN_BY_OWNER = {
    "Job": KindLean("training", "a Job"),
    "PyTorchJob": KindLean("training", "a PyTorchJob"),
    "RayJob": KindLean("training", "a RayJob"),
    "ReplicaSet": KindLean("inference", "a ReplicaSet's (or Deployment's) pod"),
    "StatefulSet": KindLean("inference", "a StatefulSet's pod"),
    "LeaderWorkerSet": KindLean("inference", "a LeaderWorkerSet group"),
}


@dataclass(frozen=True, slots=True)
class UnitRef:
    """One admission unit: its namespace, kind and native name (a Job's, a pod's, a group's)."""

    namespace: str
    kind: UnitKind
    name: str

    @property
    def mirror_name(self) -> str:
        return mirror_name(self.kind, self.name)

    @property
    def mirror_key(self) -> str:
        return f"{self.namespace}/{self.mirror_name}"


def mirror_name(kind: UnitKind, name: str) -> str:
    """The mirror's name: ``<kind prefix>-<native name>``, or, past a label value's 63 characters
    (a workload's name labels its pods), its start and a hash of the whole. Deterministic, so a
    restarted operator finds the mirror it made."""
    base = f"{_NAME_PREFIX[kind]}-{name}"
    if len(base) <= MAX_LABEL_VALUE_LENGTH:
        return base
    digest = _digest(f"{kind.value}/{name}")
    return f"{base[: MAX_LABEL_VALUE_LENGTH - HASH_LENGTH - 1].rstrip('-.')}-{digest}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def name_label_value(name: str) -> str:
    return name if len(name) <= MAX_LABEL_VALUE_LENGTH else _digest(name)


# -- reading native objects -----------------------------------------------------------------


def _metadata(obj: object) -> Mapping[str, Any]:
    found = obj.get("metadata") if isinstance(obj, _MAPPINGS) else None
    return found if isinstance(found, _MAPPINGS) else {}


def _map(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    found = obj.get(key)
    return found if isinstance(found, _MAPPINGS) else {}


def namespace_of(obj: object) -> str:
    return str(_metadata(obj).get("namespace") or "default")


def name_of(obj: object) -> str:
    return str(_metadata(obj).get("name") or "")


def uid_of(obj: object) -> str:
    return str(_metadata(obj).get("uid") or "")


def is_managed(namespace: Mapping[str, Any]) -> bool:
    return _map(_metadata(namespace), "labels").get(MANAGED_LABEL) == MANAGED_VALUE


def managed_namespaces(namespaces: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(name_of(ns) for ns in namespaces if is_managed(ns))


def controller_of(obj: object) -> tuple[str, str, str] | None:
    """(kind, name, uid) of an object's controller ownerReference, else None."""
    refs = _metadata(obj).get("ownerReferences")
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, _MAPPINGS) and ref.get("controller") is True and isinstance(ref.get("name"), str):
            return str(ref.get("kind") or ""), ref["name"], str(ref.get("uid") or "")
    return None


def job_of_pod(pod: object, ray_jobs: Mapping[str, str] | None = None) -> tuple[UnitKind, str] | None:
    """The suspendable workload (``SUSPENDABLE``: a batch/v1 Job, a PyTorchJob, a RayJob) whose gang
    a pod belongs to, as (unit kind, name), else None.

    - its controller ownerReference names a Job or a PyTorchJob (the training operator's pods);
    - its controller is a RayCluster that ``ray_jobs`` ("namespace/cluster" -> RayJob name,
      ``ray_jobs_by_cluster``) says a RayJob made (RayJob -> RayCluster -> pods); a RayCluster no
      RayJob names is somebody's own cluster: its pods are units of their own, as any other pod's;
    - no controller: the label ``batch.kubernetes.io/job-name`` the API server puts in every Job's
      pod template (so a pod made from the template by hand, as a test playing the Job controller
      makes it, is the Job's too).
    """
    metadata = _metadata(pod)
    refs = metadata.get("ownerReferences")
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, _MAPPINGS) and ref.get("controller") is True:
            name, kind, api_version = ref.get("name"), ref.get("kind"), ref.get("apiVersion")
            if not isinstance(name, str) or not name:
                return None
            if kind == "Job" and api_version == JOB_API_VERSION:
                return UnitKind.JOB, name
            if kind == UnitKind.PYTORCH_JOB.value and api_version == PYTORCHJOB_API_VERSION:
                return UnitKind.PYTORCH_JOB, name
            if kind == RAYCLUSTER_KIND and api_version == RAYJOB_API_VERSION and ray_jobs:
                ray_job = ray_jobs.get(f"{namespace_of(pod)}/{name}")
                return (UnitKind.RAY_JOB, ray_job) if ray_job else None
            return None  # another controller's pod (a ReplicaSet's, say), whatever its labels
    name = _map(metadata, "labels").get(JOB_NAME_LABEL)
    return (UnitKind.JOB, name) if isinstance(name, str) and name else None


def ray_jobs_by_cluster(ray_jobs: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """"namespace/cluster" -> RayJob name, from each RayJob's ``status.rayClusterName`` (KubeRay
    records it before it creates the cluster, so before the cluster's pods exist). Only RayJobs
    that make their own cluster (``spec.rayClusterSpec``): one that runs on an existing cluster
    (``spec.clusterSelector``) names a cluster that is not its own, whose pods stay their own units."""
    found: dict[str, str] = {}
    for ray_job in ray_jobs:
        spec = _map(ray_job, "spec")
        if not _map(spec, "rayClusterSpec") or _map(spec, "clusterSelector"):
            continue
        cluster = _map(ray_job, "status").get("rayClusterName")
        if isinstance(cluster, str) and cluster:
            found[f"{namespace_of(ray_job)}/{cluster}"] = name_of(ray_job)
    return found


def ray_cluster_of(pod: object) -> str | None:
    """"namespace/cluster" of the RayCluster controlling a pod (its controller ownerReference), else None."""
    refs = _metadata(pod).get("ownerReferences")
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, _MAPPINGS) and ref.get("controller") is True:
            name = ref.get("name")
            if ref.get("kind") == RAYCLUSTER_KIND and ref.get("apiVersion") == RAYJOB_API_VERSION \
                    and isinstance(name, str) and name:
                return f"{namespace_of(pod)}/{name}"
            return None
    return None


def ray_job_mirror_key(cluster: str, ray_jobs: Mapping[str, str]) -> str | None:
    """The mirror key of the RayJob that made the cluster ("namespace/cluster"), if one did."""
    ray_job = ray_jobs.get(cluster)
    return UnitRef(cluster.split("/", 1)[0], UnitKind.RAY_JOB, ray_job).mirror_key if ray_job else None


def is_gated(pod: object) -> bool:
    """Whether the pod still waits at gpuadmit's scheduling gate."""
    spec = pod.get("spec") if isinstance(pod, _MAPPINGS) else None
    gates = spec.get("schedulingGates") if isinstance(spec, _MAPPINGS) else None
    return isinstance(gates, list) and any(isinstance(g, _MAPPINGS) and g.get("name") == ADMISSION_GATE for g in gates)


def unit_of_pod(pod: object, ray_jobs: Mapping[str, str] | None = None) -> UnitRef:
    """The admission unit a pod belongs to: its Job (or PyTorchJob, or RayJob: ``job_of_pod``), its
    pod group, its LeaderWorkerSet group, or itself (in that order: a Job's pods go where the Job
    was placed, whatever else they carry)."""
    namespace = namespace_of(pod)
    job = job_of_pod(pod, ray_jobs)
    if job is not None:
        return UnitRef(namespace, *job)
    labels = _map(_metadata(pod), "labels")
    group = labels.get(POD_GROUP_LABEL)
    if isinstance(group, str) and group:
        return UnitRef(namespace, UnitKind.POD_GROUP, group)
    lws, index = labels.get(LWS_NAME_LABEL), labels.get(LWS_GROUP_INDEX_LABEL)
    if isinstance(lws, str) and lws and isinstance(index, str) and index:
        return UnitRef(namespace, UnitKind.LWS_GROUP, f"{lws}-{index}")
    return UnitRef(namespace, UnitKind.POD, name_of(pod))


def group_size(pod: object) -> int | None:
    """The size a pod of a group names (its size annotation), None when absent or not 1..1024."""
    annotations = _map(_metadata(pod), "annotations")
    unit = unit_of_pod(pod)
    key = POD_GROUP_SIZE_ANNOTATION if unit.kind == UnitKind.POD_GROUP else LWS_SIZE_ANNOTATION
    value = annotations.get(key)
    size = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 4 else None
    return size if size is not None and 1 <= size <= MAX_GROUP_SIZE else None


def job_template(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_map(job, "spec"), "template")


def job_replicas(job: Mapping[str, Any]) -> int:
    """Pods a Job runs at once: ``parallelism`` (default 1), at most ``completions`` when set."""
    spec = _map(job, "spec")
    parallelism = whole_number(spec.get("parallelism"))
    replicas = 1 if parallelism is None else parallelism
    completions = whole_number(spec.get("completions"))
    if completions is not None:
        replicas = min(replicas, completions)
    return max(0, replicas)


def job_suspended(job: Mapping[str, Any], kind: UnitKind = UnitKind.JOB) -> bool:
    """Whether a suspendable workload (``SUSPENDABLE``) is suspended (its kind's suspend field is true)."""
    spec = _map(job, "spec")
    return (_map(spec, "runPolicy") if kind == UnitKind.PYTORCH_JOB else spec).get("suspend") is True


def _conditions_outcome(obj: Mapping[str, Any], succeeded: str) -> str | None:
    conditions = _map(obj, "status").get("conditions")
    for condition in conditions if isinstance(conditions, list) else ():
        if isinstance(condition, _MAPPINGS) and condition.get("status") == "True":
            if condition.get("type") == succeeded:
                return "Succeeded"
            if condition.get("type") == "Failed":
                return "Failed"
    return None


def job_finished(job: Mapping[str, Any], kind: UnitKind = UnitKind.JOB) -> str | None:
    """"Succeeded" or "Failed" for a finished suspendable workload, else None: a Job's or a
    PyTorchJob's True Complete (Succeeded) or Failed condition; a RayJob's ``jobDeploymentStatus``
    Complete (with ``jobStatus`` SUCCEEDED, else Failed) or Failed."""
    if kind == UnitKind.RAY_JOB:
        status = _map(job, "status")
        deployment = status.get("jobDeploymentStatus")
        if deployment == "Complete":
            return "Succeeded" if status.get("jobStatus") == "SUCCEEDED" else "Failed"
        return "Failed" if deployment == "Failed" else None
    return _conditions_outcome(job, "Succeeded" if kind == UnitKind.PYTORCH_JOB else "Complete")


def template_gpus(template: Mapping[str, Any]) -> int:
    """GPUs one pod of ``template`` requests, as kube-scheduler counts them."""
    return pod_gpu_request({"spec": _map(template, "spec")})


def _count(value: object, default: int) -> int:
    number = whole_number(value)
    return max(0, default if number is None else number)


def replica_templates(job: Mapping[str, Any], kind: UnitKind = UnitKind.JOB) -> list[tuple[int, Mapping[str, Any]]]:
    """(replicas, pod template) of each part of a suspendable workload, as its controller makes pods:
    a Job's ``job_replicas`` of its template; a PyTorchJob's ``pytorchReplicaSpecs`` roles (Master,
    Worker, ...: ``replicas`` default 1) in name order; a RayJob's ``rayClusterSpec``: the head (one
    pod) and each worker group's ``replicas`` (default ``minReplicas``, default 0) times ``numOfHosts``
    (default 1)."""
    spec = _map(job, "spec")
    if kind == UnitKind.PYTORCH_JOB:
        roles = _map(spec, "pytorchReplicaSpecs")
        return [(_count(_map(roles, role).get("replicas"), 1), _map(_map(roles, role), "template"))
                for role in sorted(roles) if isinstance(role, str)]
    if kind == UnitKind.RAY_JOB:
        cluster = _map(spec, "rayClusterSpec")
        parts = [(1, _map(_map(cluster, "headGroupSpec"), "template"))]
        groups = cluster.get("workerGroupSpecs")
        for group in groups if isinstance(groups, list) else ():
            if isinstance(group, _MAPPINGS):
                replicas = _count(group.get("replicas"), _count(group.get("minReplicas"), 0))
                parts.append((replicas * _count(group.get("numOfHosts"), 1), _map(group, "template")))
        return parts
    return [(job_replicas(job), job_template(job))]


@dataclass(frozen=True, slots=True)
class Gang:
    """A suspendable workload as one gang: its GPU pods' count, the GPUs of each (the largest of
    its parts': a GPUWorkload has one GPUs-per-replica, so a part asking fewer reserves the larger;
    ``uneven`` says so), and the template the mirror copies (the part asking the most)."""

    replicas: int
    gpus: int
    template: Mapping[str, Any]
    uneven: str  # "" when every part asks the same; else what each asks, for the mirror's annotation


def gang_of(job: Mapping[str, Any], kind: UnitKind = UnitKind.JOB) -> Gang | None:
    """The gang of a suspendable workload's GPU pods (parts asking for no GPU, a CPU-only Ray head
    or PyTorch master, are not part of it: their pods are not held), None when none asks for GPUs."""
    parts = [(replicas, template, gpus) for replicas, template in replica_templates(job, kind)
             if replicas > 0 and (gpus := template_gpus(template)) > 0]
    if not parts:
        return None
    largest = max(parts, key=lambda part: part[2])
    uneven = ""
    if len({part[2] for part in parts}) > 1:
        asked = ", ".join(f"{replicas} x {gpus}" for replicas, _template, gpus in parts)
        uneven = f"pods asking {asked} GPUs: each of the {sum(p[0] for p in parts)} replicas reserves {largest[2]}"
    return Gang(sum(part[0] for part in parts), largest[2], largest[1], uneven)


# -- the mirror ---------------------------------------------------------------------------------


def lean_of_pod(pod: object) -> KindLean | None:
    if unit_of_pod(pod).kind == UnitKind.LWS_GROUP:
        return _LEAN_BY_OWNER["LeaderWorkerSet"]
    controller = controller_of(pod)
    return _LEAN_BY_OWNER.get(controller[0]) if controller is not None else None


def explicit_class(*objs: object) -> str:
    """The class named by ``gpuadmit.io/class`` on the first of ``objs`` that carries a valid one,
    else ``auto`` (the classifier decides)."""
    for obj in objs:
        value = _map(_metadata(obj), "annotations").get(CLASS_ANNOTATION)
        if value in ("training", "inference"):
            return str(value)
    return "auto"


def _pod_template_of(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What a pod was made from, as a template: its labels, annotations and spec, without what the
    API server or gpuadmit added for one pod (node, scheduling gates). Shares the pod's nested
    values (it is compared and serialised, never changed)."""
    metadata = _metadata(pod)
    spec = {key: value for key, value in _map(pod, "spec").items() if key not in ("nodeName", "schedulingGates")}
    template_metadata: dict[str, Any] = {}
    for key in ("labels", "annotations"):
        if isinstance(metadata.get(key), _MAPPINGS) and metadata[key]:
            template_metadata[key] = dict(metadata[key])
    return {"metadata": template_metadata, "spec": spec}


@dataclass(frozen=True, slots=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        # Not a controller reference (no controller would adopt a GPUWorkload); the mirror goes with
        # its owner by garbage collection, without blocking the owner's deletion.
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "blockOwnerDeletion": False}


@dataclass(frozen=True, slots=True)
class Mirror:
    """The mirror a unit should have. What decides trust (unit, owners) is read at once; the spec
    and body, which copy a template, are built only when asked for (a create, a drift check)."""

    unit: UnitRef
    owners: tuple[Owner, ...]
    lean: KindLean | None
    spec_class: str
    gpus: int
    replicas: int
    source: Mapping[str, Any]  # the Job (or PyTorchJob, RayJob), or the pod (its own spec is copied)
    template: Mapping[str, Any] | None = None  # a suspendable workload's: the template copied
    uneven: str = ""  # a suspendable workload's parts ask for different GPUs per pod: how (an annotation)

    @property
    def owner_uids(self) -> frozenset[str]:
        return frozenset(owner.uid for owner in self.owners)

    @property
    def spec(self) -> dict[str, Any]:
        template = dict(self.template) if self.template is not None else _pod_template_of(self.source)
        return {"class": self.spec_class, "gpus": self.gpus, "replicas": self.replicas, "template": template}

    @property
    def body(self) -> dict[str, Any]:
        """The GPUWorkload to create."""
        unit = self.unit
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": GPUWORKLOAD_KIND,
            "metadata": {
                "name": unit.mirror_name,
                "namespace": unit.namespace,
                "labels": {MIRROR_KIND_LABEL: unit.kind.value, MIRROR_NAME_LABEL: name_label_value(unit.name)},
                "annotations": {MIRROR_OF_ANNOTATION: unit.name,
                                **({UNEVEN_GPUS_ANNOTATION: self.uneven} if self.uneven else {})},
                "ownerReferences": [owner.reference() for owner in self.owners],
            },
            "spec": self.spec,
        }


def _owner(obj: Mapping[str, Any], api_version: str, kind: str) -> Owner:
    return Owner(api_version, kind, name_of(obj), uid_of(obj))


# The kinds gpuadmit holds by suspending them (one gang each), with their API versions.
SUSPENDABLE: dict[UnitKind, str] = {
    UnitKind.JOB: JOB_API_VERSION, UnitKind.PYTORCH_JOB: PYTORCHJOB_API_VERSION, UnitKind.RAY_JOB: RAYJOB_API_VERSION,
}


def mirror_of_job(job: Mapping[str, Any], kind: UnitKind = UnitKind.JOB) -> Mirror | None:
    """The mirror of a suspendable workload (a Job, PyTorchJob or RayJob) that asks for GPUs (None:
    it asks for none, or runs no pods): its ``gang_of``."""
    gang = gang_of(job, kind)
    if gang is None:
        return None
    unit = UnitRef(namespace_of(job), kind, name_of(job))
    return Mirror(unit, (_owner(job, SUSPENDABLE[kind], kind.value),), _LEAN_BY_OWNER[kind.value],
                  explicit_class(job, gang.template), gang.gpus, gang.replicas, job, gang.template, gang.uneven)


def mirror_of_pods(unit: UnitRef, pods: Sequence[Mapping[str, Any]],
                   gpus_of: Callable[[Mapping[str, Any]], int] = pod_gpu_request) -> Mirror | None:
    """The mirror of a pod unit or a group (``pods``: its pods). None when the unit asks for no
    GPUs, or a group is not complete yet (fewer pods than its size: a gang is decided whole).
    ``gpus_of``: a pod's GPUs (a caller may pass a memoised ``pod_gpu_request``)."""
    # Live pods first: a finished pod still names its unit (its mirror follows it to Succeeded or
    # Failed), but where a group has more pods than its size, the live ones are the group.
    members = sorted(pods, key=lambda pod: (pod_is_terminal(pod), name_of(pod))) if len(pods) > 1 else list(pods)
    if not members:
        return None
    if unit.kind == UnitKind.POD:
        replicas = 1
        members = members[:1]
    else:
        size = group_size(members[0])
        if size is None or len(members) < size:
            return None
        replicas = size
        members = members[:size]
    gpus = max(gpus_of(pod) for pod in members)
    if gpus <= 0:
        return None
    first = next((pod for pod in members if gpus_of(pod) == gpus), members[0])
    owners = tuple(_owner(pod, "v1", "Pod") for pod in members)
    return Mirror(unit, owners, lean_of_pod(first), explicit_class(*members), gpus, replicas, first)


def pods_by_unit(
    pods: Iterable[Mapping[str, Any]], managed: frozenset[str],
    gpus_of: Callable[[Mapping[str, Any]], int] = pod_gpu_request,
    unit_of: Callable[[Mapping[str, Any]], UnitRef] = unit_of_pod,
) -> dict[UnitRef, list[Mapping[str, Any]]]:
    """The GPU pods of the managed namespaces by their unit (a Job's pods under the Job's unit).
    ``gpus_of``, ``unit_of``: ``pod_gpu_request`` and ``unit_of_pod``, or memoised versions."""
    grouped: dict[UnitRef, list[Mapping[str, Any]]] = {}
    if managed:
        for pod in pods:
            if namespace_of(pod) in managed and gpus_of(pod) > 0:
                grouped.setdefault(unit_of(pod), []).append(pod)
    return grouped


def expected_mirror(
    unit: UnitRef, job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]],
    gpus_of: Callable[[Mapping[str, Any]], int] = pod_gpu_request,
) -> Mirror | None:
    """The mirror ``unit`` should have now (``job``: its Job, for a Job unit; ``pods``: its GPU
    pods), None when the unit is gone or asks for no GPUs, or a group is still forming."""
    if unit.kind in SUSPENDABLE:
        return mirror_of_job(job, unit.kind) if job is not None else None
    return mirror_of_pods(unit, pods, gpus_of)


def let_go_by_hand(unit: UnitRef, pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a pod unit's pod runs past gpuadmit's gate without a release (the gate removed by
    hand): it runs unmanaged, and a mirror decided for it would reserve the GPUs it already uses."""
    live = [pod for pod in pods if not pod_is_terminal(pod) and not _metadata(pod).get("deletionTimestamp")]
    return unit.kind == UnitKind.POD and bool(live) and not any(is_gated(pod) or released(pod) for pod in live)


def units_in(
    jobs: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], managed: frozenset[str],
    gpus_of: Callable[[Mapping[str, Any]], int] = pod_gpu_request,
) -> tuple[dict[UnitRef, Mirror | None], dict[UnitRef, list[Mapping[str, Any]]]]:
    """Every unit of the managed namespaces with the mirror it should have (None: none yet, e.g. a
    group still forming), and the GPU pods of each unit. (The operator asks ``expected_mirror``
    only for the units it needs: those with a mirror or a hold.)"""
    grouped = pods_by_unit(pods, managed, gpus_of)
    mirrors: dict[UnitRef, Mirror | None] = {}
    for job in jobs:
        if namespace_of(job) in managed:
            mirror = mirror_of_job(job)
            if mirror is not None:
                mirrors[mirror.unit] = mirror
    for unit, unit_pods in grouped.items():
        if unit.kind not in SUSPENDABLE:
            mirrors[unit] = mirror_of_pods(unit, unit_pods, gpus_of)
    return mirrors, grouped


# -- trust ----------------------------------------------------------------------------------------


def claimed_unit(workload: Mapping[str, Any]) -> UnitRef | None:
    """The unit a GPUWorkload claims to mirror (its mirror-kind label and mirror-of annotation),
    None when it claims none (an ordinary GPUWorkload)."""
    metadata = _metadata(workload)
    kind = _map(metadata, "labels").get(MIRROR_KIND_LABEL)
    if kind is None:
        return None
    try:
        unit_kind = UnitKind(kind)
    except ValueError:
        unit_kind = UnitKind.POD  # an unknown kind is still a claim, and fails the checks below
    return UnitRef(namespace_of(workload), unit_kind, str(_map(metadata, "annotations").get(MIRROR_OF_ANNOTATION) or ""))


def mirror_problem(workload: Mapping[str, Any], expected: Mirror | None, managed: frozenset[str]) -> str | None:
    """Why a GPUWorkload that claims to be a mirror is not trusted as one (None: it is).

    ``expected``: the mirror the claimed unit should have now (``units_in``), None when that unit
    does not exist (or has no mirror yet)."""
    unit = claimed_unit(workload)
    if unit is None:
        return "it carries no gpuadmit.io/mirror-kind label"
    if unit.namespace not in managed:
        return f"namespace {unit.namespace} is not managed (label {MANAGED_LABEL}: \"true\")"
    kind = _map(_metadata(workload), "labels").get(MIRROR_KIND_LABEL)
    if kind not in {k.value for k in UnitKind}:
        return f"{MIRROR_KIND_LABEL} {kind!r} is not one of {', '.join(k.value for k in UnitKind)}"
    if expected is None or expected.unit != unit:
        return f"no live {unit.kind.value} {unit.name!r} in namespace {unit.namespace} asks for GPUs"
    if name_of(workload) != unit.mirror_name:
        return f"the mirror of {unit.kind.value} {unit.name!r} is named {unit.mirror_name!r}"
    refs = _metadata(workload).get("ownerReferences")
    owned_by = {str(ref.get("uid") or "") for ref in refs if isinstance(ref, _MAPPINGS)} if isinstance(refs, list) else set()
    if not expected.owner_uids <= owned_by:
        return f"its ownerReferences do not name the live {unit.kind.value} {unit.name!r} (uid)"
    return None


@dataclass(frozen=True, slots=True)
class MirrorVerdict:
    """One GPUWorkload that claims to mirror a unit: the unit, the mirror that unit should have now
    (None: gone, or in a namespace not managed) and why it is not trusted (None: trusted)."""

    workload: Mapping[str, Any]
    unit: UnitRef
    expected: Mirror | None
    problem: str | None

    @property
    def trusted(self) -> bool:
        return self.problem is None and self.expected is not None


def judge_mirrors(workloads: Iterable[Mapping[str, Any]], managed: frozenset[str],
                  expected_of: Callable[[UnitRef], Mirror | None]) -> Iterator[MirrorVerdict]:
    """A verdict for every GPUWorkload of ``workloads`` that claims to be a mirror (ordinary ones are
    passed over at the cost of a label lookup). ``expected_of``: the mirror a unit of a managed
    namespace should have now (``expected_mirror``, memoised by the caller)."""
    for workload in workloads:
        metadata = workload.get("metadata")
        labels = metadata.get("labels") if isinstance(metadata, _MAPPINGS) else None
        if not labels or MIRROR_KIND_LABEL not in labels:
            continue
        unit = claimed_unit(workload)
        if unit is None:
            continue
        expected = expected_of(unit) if unit.namespace in managed else None
        yield MirrorVerdict(workload, unit, expected, mirror_problem(workload, expected, managed))


def mirrors_in(
    workloads: Iterable[Mapping[str, Any]], jobs: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
    namespaces: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, KindLean | None], dict[str, str]]:
    """For a dump (``gpuadmit decide``): the keys of the trusted mirrors with their kinds' leans (for
    ``build_snapshot``'s ``mirrors``), and the untrusted claims with their problem (not decided, as
    the operator decides none of them). ``jobs``: the suspendable objects (Jobs, PyTorchJobs,
    RayJobs, told apart by their ``kind``)."""
    managed = managed_namespaces(namespaces)
    jobs = list(jobs)
    kinds = {kind.value: kind for kind in SUSPENDABLE}
    ray_jobs = ray_jobs_by_cluster(job for job in jobs if job.get("kind") == UnitKind.RAY_JOB.value)
    grouped = pods_by_unit(pods, managed, unit_of=lambda pod: unit_of_pod(pod, ray_jobs))
    jobs_by_unit = {UnitRef(namespace_of(job), kinds[str(job.get("kind") or "Job")], name_of(job)): job
                    for job in jobs if str(job.get("kind") or "Job") in kinds}
    expected: dict[UnitRef, Mirror | None] = {}

    def expected_of(unit: UnitRef) -> Mirror | None:
        if unit not in expected:
            job = jobs_by_unit.get(unit)
            expected[unit] = expected_mirror(unit, job, grouped.get(unit, []))
        return expected[unit]

    trusted: dict[str, KindLean | None] = {}
    untrusted: dict[str, str] = {}
    for verdict in judge_mirrors(workloads, managed, expected_of):
        key = f"{namespace_of(verdict.workload)}/{name_of(verdict.workload)}"
        if verdict.trusted and verdict.expected is not None:
            trusted[key] = verdict.expected.lean
        else:
            untrusted[key] = verdict.problem or "it mirrors nothing"
    return trusted, untrusted


def stale_mirror(workload: Mapping[str, Any], expected: Mirror | None) -> bool:
    """Whether an untrusted mirror claim is the leftover of a native object gone or made again: its
    name is the mirror name of the unit it claims, and its owner references (none left after an
    orphaning delete, as ``kubectl delete --cascade=orphan`` or a Job deleted through the API without
    a propagation policy leaves it) name only that unit's kind and name, never a uid the unit has now
    (a StatefulSet's pod recreated under the same name, a Job made again). The operator deletes it,
    so the unit's new mirror can take the name; ``expected``: the unit's mirror now, None when gone."""
    unit = claimed_unit(workload)
    if unit is None or name_of(workload) != unit.mirror_name or (expected is not None and expected.unit != unit):
        return False
    refs = _metadata(workload).get("ownerReferences")
    refs = [ref for ref in refs if isinstance(ref, _MAPPINGS)] if isinstance(refs, list) else []
    owner_kind = unit.kind.value if unit.kind in SUSPENDABLE else "Pod"
    named = unit.kind in SUSPENDABLE or unit.kind == UnitKind.POD  # a group's pods have names of their own
    current = expected.owner_uids if expected is not None else frozenset()
    return all(ref.get("kind") == owner_kind and (not named or ref.get("name") == unit.name)
               and str(ref.get("uid") or "") not in current for ref in refs)


# -- release ----------------------------------------------------------------------------------------


def free_slots(placement: Sequence[PlacementEntry], released_pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """The nodes of the placement's replica slots no released pod occupies yet, in placement order.

    Derived from the pods alone (each released pod is pinned to its slot's node), so an operator
    that restarts between two releases knows which slots are taken: a slot is never given twice."""
    taken = Counter(node for pod in released_pods if not pod_is_terminal(pod) and (node := pinned_node(_map(pod, "spec"))))
    free: list[str] = []
    for node, _gpus in replica_slots(placement):
        if taken[node] > 0:
            taken[node] -= 1
        else:
            free.append(node)
    return free


def released(pod: Mapping[str, Any]) -> bool:
    """Released by gpuadmit: past the gate and pinned to a node. A pod past the gate without the
    pinning was let go by somebody else (or arrived while no webhook ran): it runs unmanaged."""
    return not is_gated(pod) and pinned_node(_map(pod, "spec")) is not None


def release_assignments(
    placement: Sequence[PlacementEntry], pods: Sequence[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], str]]:
    """(gated pod, node) for each waiting pod that a free slot takes, pods in name order. A released
    pod being deleted keeps its slot until it is gone: its GPUs are still in use."""
    slots = free_slots(placement, [pod for pod in pods if not is_gated(pod)])
    waiting = sorted((pod for pod in pods if is_gated(pod) and not pod_is_terminal(pod)
                      and not _metadata(pod).get("deletionTimestamp")), key=name_of)
    return list(zip(waiting, slots, strict=False))


def release_patch(pod: Mapping[str, Any], node: str) -> dict[str, Any]:
    """The merge patch that releases a gated pod onto ``node``: the pinning node affinity (allowed
    only while the pod is gated, so in the same patch) and the gate removed, the others kept."""
    spec = _map(pod, "spec")
    gates = spec.get("schedulingGates")
    kept = [g for g in gates if not (isinstance(g, _MAPPINGS) and g.get("name") == ADMISSION_GATE)] if isinstance(gates, list) else []
    return {"spec": {"affinity": pinned_affinity(spec.get("affinity"), node), "schedulingGates": kept or None}}


def suspend_patch(suspend: bool, mirror_uid: str | None, kind: UnitKind = UnitKind.JOB) -> dict[str, Any]:
    """The merge patch that suspends or resumes a suspendable workload (``spec.suspend``, a
    PyTorchJob's ``spec.runPolicy.suspend``), marking (or unmarking) whom it was released for."""
    spec: dict[str, Any] = {"runPolicy": {"suspend": suspend}} if kind == UnitKind.PYTORCH_JOB else {"suspend": suspend}
    return {"metadata": {"annotations": {RELEASED_ANNOTATION: mirror_uid}}, "spec": spec}



def admission_unit_of(pod: Mapping[str, Any], mirrors: Container[str] = (),
                      ray_jobs: Mapping[str, str] | None = None) -> str | None:
    """The key ("namespace/name") of the GPUWorkload whose reservation a pod fills: the GPUWorkload
    controlling it (gpuadmit's own pods), or the trusted mirror (``mirrors``: their keys) of the
    native unit it belongs to; None for any other pod (it counts only as used capacity)."""
    controller = controlling_workload(pod)
    if controller is not None:
        return f"{namespace_of(pod)}/{controller[0]}"
    if mirrors:
        key = unit_of_pod(pod, ray_jobs).mirror_key
        if key in mirrors:
            return key
    return None
