"""Native workloads through the scheduling loop (controller.native), against an in-memory API.

The API keeps objects as a server would (uids, resourceVersions, merge patches, the status
subresource); the test plays the Job controller. Every cycle runs the real loop: snapshot,
engine, writer, and the native half's prepare and reconcile."""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

from gpuadmit.controller import api as kube
from gpuadmit.controller.api import ApiError
from gpuadmit.controller.cache import (
    JOB,
    KINDS,
    NAMESPACE,
    NODE,
    POD,
    POLICY,
    PYTORCHJOB,
    RAYJOB,
    WORKLOAD,
    ObjectCache,
    object_key,
)
from gpuadmit.controller.loop import SchedulingLoop
from gpuadmit.controller.writer import Writer
from gpuadmit.core.native import ADMISSION_GATE, RELEASED_ANNOTATION
from gpuadmit.core.pods import pinned_node
from gpuadmit.core.timefmt import format_rfc3339
from tests.invariants import ClusterState, gpus_in_use_by_node, overcommit_violations, pods_violations

MANAGED = "team-a"
KIND_OF = {kube.POLICIES: POLICY, kube.WORKLOADS: WORKLOAD, kube.PODS: POD, kube.JOBS: JOB, kube.NODES: NODE, kube.NAMESPACES: NAMESPACE,
           kube.EVENTS: "Event", kube.PYTORCHJOBS: PYTORCHJOB, kube.RAYJOBS: RAYJOB}


def merge(target: dict[str, Any], patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


class MemoryApi:
    """Just enough of an API server: objects by kind and key, and a log of every write."""

    max_concurrency = 8

    async def turn(self, urgency: Any) -> None:
        """No request slots here: every request goes at once."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in (*KINDS, "Event")}
        self.versions = itertools.count(1)
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, key)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self.versions))
        return obj

    def add(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        metadata = obj["metadata"]
        metadata.setdefault("uid", f"uid-{kind}-{metadata['name']}" if kind != WORKLOAD else f"uid-{next(self.versions)}")
        metadata.setdefault("creationTimestamp", format_rfc3339(time.time()))
        metadata.setdefault("generation", 1)
        self.objects[kind][object_key(obj)] = self._stamp(obj)
        return copy.deepcopy(obj)

    async def create(self, resource: kube.Resource, body: dict[str, Any], namespace: str | None = None, **_: Any) -> dict[str, Any]:
        kind = KIND_OF[resource]
        if object_key(body) in self.objects[kind]:
            raise ApiError("create", resource.path(namespace), 409, "AlreadyExists", "exists")
        self.writes.append(("create", kind, object_key(body)))
        created = self.add(kind, body)
        created.pop("status", None) if kind == WORKLOAD else None
        self.objects[kind][object_key(created)].pop("status", None) if kind == WORKLOAD else None
        return created

    async def patch(self, resource: kube.Resource, name: str, patch: dict[str, Any], namespace: str | None = None,
                    subresource: str | None = None, **_: Any) -> dict[str, Any]:
        kind = KIND_OF[resource]
        key = f"{namespace}/{name}" if namespace else name
        current = self.objects[kind].get(key)
        if current is None:
            raise ApiError("patch", resource.path(namespace, name), 404, "NotFound", "gone")
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError("patch", resource.path(namespace, name), 409, "Conflict", "changed")
        if kind == POD and "affinity" in (patch.get("spec") or {}) and not any(
                g.get("name") == ADMISSION_GATE for g in current["spec"].get("schedulingGates") or []):
            raise ApiError("patch", resource.path(namespace, name), 422, "Invalid", "affinity only while gated")
        body = copy.deepcopy(patch)
        (body.get("metadata") or {}).pop("resourceVersion", None)
        if subresource == "status":
            body = {"status": body.get("status")}
        updated = merge(current, body)
        self.writes.append(("patch", kind, key))
        self.objects[kind][key] = self._stamp(updated)
        return copy.deepcopy(updated)

    async def delete(self, resource: kube.Resource, name: str, namespace: str | None = None) -> None:
        kind = KIND_OF[resource]
        self.writes.append(("delete", kind, f"{namespace}/{name}"))
        self.objects[kind].pop(f"{namespace}/{name}", None)
        return None

    async def get(self, resource: kube.Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        key = f"{namespace}/{name}" if namespace else name
        found = self.objects[KIND_OF[resource]].get(key)
        if found is None:
            raise ApiError("get", resource.path(namespace, name), 404, "NotFound", "gone")
        return copy.deepcopy(found)

    def events(self, involved_kind: str, name: str) -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.objects["Event"].values()
                if e["involvedObject"]["kind"] == involved_kind and e["involvedObject"]["name"] == name]


def node(name: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "A100"}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]}}


def namespace(name: str, managed: bool) -> dict[str, Any]:
    labels = {"gpuadmit.io/managed": "true"} if managed else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod_spec(gpus: int, command: list[str] | None = None, restart: str = "Never") -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
    if command:
        container["command"] = command
    return {"containers": [container], "restartPolicy": restart}


def job(name: str, parallelism: int, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": MANAGED},
            "spec": {"suspend": True, "parallelism": parallelism,
                     "template": {"metadata": {"labels": {"job": name}}, "spec": pod_spec(gpus, ["torchrun", "train.py"])}}}


def gated_pod(name: str, gpus: int, ns: str = MANAGED, owner: dict[str, Any] | None = None,
              gated: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": ns}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    spec = pod_spec(gpus, restart="Never" if owner is None or owner["kind"] == "Job" else "Always")
    if gated:
        spec["schedulingGates"] = [{"name": ADMISSION_GATE}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": "Pending"}}


class Cluster:
    def __init__(self, *objects: tuple[str, dict[str, Any]]) -> None:
        self.api = MemoryApi()
        for kind, obj in objects:
            self.api.add(kind, obj)
        self.loop = self.restart()

    def restart(self) -> SchedulingLoop:
        """A fresh operator: its cache listed from the API."""
        cache = ObjectCache()
        for kind in KINDS:
            for obj in self.api.objects[kind].values():
                cache.put(kind, copy.deepcopy(obj))
        cache.seeded = True
        self.loop = SchedulingLoop(cache, Writer(self.api, cache, instance="test"))  # type: ignore[arg-type]
        return self.loop

    def add(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        created = self.api.add(kind, obj)
        self.loop.cache.put(kind, copy.deepcopy(created))
        return created

    def delete(self, kind: str, key: str) -> None:
        obj = self.api.objects[kind].pop(key)
        self.loop.cache.remove(kind, obj)

    async def cycle(self) -> None:
        await self.loop.run_cycle()
        await self.loop.writer.follow_ups.drain()
        state = ClusterState(nodes=list(self.api.objects[NODE].values()), pods=list(self.api.objects[POD].values()),
                             workloads=list(self.api.objects[WORKLOAD].values()),
                             ray_jobs=list(self.api.objects[RAYJOB].values()))
        assert overcommit_violations(state) == []  # the overcommit oracle after every cycle

    def get(self, kind: str, key: str) -> dict[str, Any]:
        return self.api.objects[kind][key]

    def job_controller_creates_pods(self, job_name: str, count: int, gpus: int) -> list[str]:
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": f"uid-Job-{job_name}", "controller": True}
        names = [f"{job_name}-{i}" for i in range(count)]
        for name in names:
            self.add(POD, gated_pod(name, gpus, owner=owner))
        return names

    def job_controller_removes_pods(self, job_name: str) -> None:
        for key in [k for k, p in self.api.objects[POD].items() if p["metadata"]["name"].startswith(f"{job_name}-")]:
            self.delete(POD, key)


POLICY_OBJ = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "default"},
              "spec": {"preemption": {"enabled": True, "minRuntimeSeconds": 0}}}


def base(*extra: tuple[str, dict[str, Any]], gpus: int = 4) -> Cluster:
    return Cluster((NODE, node("gpu-a", gpus)), (NAMESPACE, namespace(MANAGED, True)),
                   (NAMESPACE, namespace("plain", False)), (POLICY, POLICY_OBJ), *extra)


async def test_a_job_is_mirrored_admitted_unsuspended_and_its_gated_pods_released_once() -> None:
    cluster = base((JOB, job("train", parallelism=2, gpus=2)))
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/job-train")
    assert mirror["status"]["phase"] == "Admitted"
    assert mirror["metadata"]["ownerReferences"][0]["uid"] == "uid-Job-train"
    assert mirror["status"]["class"] == "training"
    the_job = cluster.get(JOB, f"{MANAGED}/train")
    assert the_job["spec"]["suspend"] is False
    assert the_job["metadata"]["annotations"][RELEASED_ANNOTATION] == mirror["metadata"]["uid"]
    assert ("Normal", "Admitted") in cluster.api.events("Job", "train")
    assert not cluster.api.objects[POD]  # gpuadmit creates no pods for a mirror

    names = cluster.job_controller_creates_pods("train", 2, gpus=2)
    await cluster.cycle()
    pods = [cluster.get(POD, f"{MANAGED}/{name}") for name in names]
    assert [pinned_node(p["spec"]) for p in pods] == ["gpu-a", "gpu-a"]
    assert all(not p["spec"].get("schedulingGates") for p in pods)

    # Another cycle, and a restarted operator: nothing is released or unsuspended again.
    writes = len(cluster.api.writes)
    await cluster.cycle()
    cluster.restart()
    await cluster.cycle()
    assert [w for w in cluster.api.writes[writes:] if w[1] in (POD, JOB)] == []


def serving_workload(gpus: int = 4) -> dict[str, Any]:
    """A GPUWorkload serving inference in the plain namespace: the higher margin that preempts training."""
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": "serve", "namespace": "plain"},
            "spec": {"class": "inference", "gpus": gpus, "template": {"spec": {"containers": [
                {"name": "c", "image": "vllm/vllm-openai", "command": ["vllm", "serve", "m"]}]}}}}


async def test_a_job_preempted_for_inference_is_suspended_and_readmitted_later() -> None:
    cluster = base((JOB, job("train", parallelism=2, gpus=2)))
    await cluster.cycle()
    cluster.job_controller_creates_pods("train", 2, gpus=2)
    await cluster.cycle()
    cluster.add(WORKLOAD, serving_workload())
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/job-train")
    assert mirror["status"]["phase"] == "Preempted"
    the_job = cluster.get(JOB, f"{MANAGED}/train")
    assert the_job["spec"]["suspend"] is True
    assert RELEASED_ANNOTATION not in (the_job["metadata"].get("annotations") or {})
    assert not [w for w in cluster.api.writes if w[0] == "delete" and w[1] == POD]  # the Job controller's job
    assert ("Warning", "PreemptedByHigherMargin") in cluster.api.events("Job", "train")

    cluster.job_controller_removes_pods("train")
    await cluster.cycle()
    assert cluster.get(JOB, f"{MANAGED}/train")["spec"]["suspend"] is True  # no room while serve runs
    cluster.delete(WORKLOAD, "plain/serve")
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/job-train")["status"]["phase"] == "Admitted"
    assert cluster.get(JOB, f"{MANAGED}/train")["spec"]["suspend"] is False


async def test_a_job_that_can_never_fit_stays_suspended_with_the_reason_on_its_mirror() -> None:
    cluster = base((JOB, job("huge", parallelism=2, gpus=8)))
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/job-huge")
    assert mirror["status"]["phase"] == "Rejected" and mirror["status"]["reason"] == "NoNodeCanFit"
    assert cluster.get(JOB, f"{MANAGED}/huge")["spec"]["suspend"] is True
    assert ("Warning", "NoNodeCanFit") in cluster.api.events("Job", "huge")


async def test_a_replicaset_pod_is_its_own_unit_and_a_preempted_one_is_deleted() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "uid-rs", "controller": True}
    cluster = base((POD, gated_pod("web-x", 2, owner=owner)), (POD, gated_pod("web-y", 2, owner=owner)))
    await cluster.cycle()
    for name in ("web-x", "web-y"):
        mirror = cluster.get(WORKLOAD, f"{MANAGED}/pod-{name}")
        assert mirror["status"]["phase"] == "Admitted"
        assert mirror["status"]["class"] == "inference"  # no decisive signal: a ReplicaSet's pod leans inference
        assert pinned_node(cluster.get(POD, f"{MANAGED}/{name}")["spec"]) == "gpu-a"
    # Lost: the mirror is requeued (its node cordoned), so the pod is deleted for its ReplicaSet to recreate.
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/pod-web-x")
    cluster.loop.cache.put(WORKLOAD, cluster.api.add(WORKLOAD, {**mirror, "status": {**mirror["status"], "phase": "Queued",
                                                                                       "placement": []}}))
    await cluster.loop.native.reconcile(0.0)
    assert ("delete", POD, f"{MANAGED}/web-x") in cluster.api.writes
    assert f"{MANAGED}/web-y" in cluster.api.objects[POD]


async def test_pods_elsewhere_are_untouched_and_an_ungated_pod_is_warned_once() -> None:
    cluster = base((POD, gated_pod("free", 1, ns="plain", gated=False)),
                   (POD, gated_pod("sneaky", 1, gated=False)))
    await cluster.cycle()
    await cluster.cycle()
    assert not cluster.api.objects[WORKLOAD]  # neither is mirrored
    assert [w for w in cluster.api.writes if w[1] == POD] == []
    assert cluster.api.events("Pod", "sneaky") == [("Warning", "RunsUnmanaged")]
    assert cluster.api.events("Pod", "free") == []


def mirror_of_train(owner: dict[str, str], gpus: int) -> dict[str, Any]:
    """A GPUWorkload named, labelled and annotated as Job train's mirror, owned by ``owner``."""
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": "job-train", "namespace": MANAGED,
                         "labels": {"gpuadmit.io/mirror-kind": "Job"}, "annotations": {"gpuadmit.io/mirror-of": "train"},
                         "ownerReferences": [owner]},
            "spec": {"gpus": gpus, "template": {"spec": pod_spec(gpus)}}}


async def test_a_forged_mirror_is_rejected_and_never_decided() -> None:
    cluster = base((JOB, job("train", parallelism=1, gpus=2)))
    forged = mirror_of_train({"apiVersion": "v1", "kind": "ConfigMap", "name": "mine", "uid": "uid-cm"}, gpus=1)
    cluster.add(WORKLOAD, forged)
    await cluster.cycle()
    status = cluster.get(WORKLOAD, f"{MANAGED}/job-train")["status"]
    assert status["phase"] == "Rejected" and status["reason"] == "MirrorNotTrusted"
    assert "ownerReferences" in status["message"]
    assert cluster.get(JOB, f"{MANAGED}/train")["spec"]["suspend"] is True  # nothing released on its word
    assert not cluster.api.objects[POD]


async def test_a_pod_group_is_released_only_when_all_its_pods_exist() -> None:
    labels = {"gpuadmit.io/pod-group": "g"}
    annotations = {"gpuadmit.io/pod-group-size": "2"}

    def member(name: str) -> dict[str, Any]:
        pod = gated_pod(name, 2)
        pod["metadata"].update(labels=labels, annotations=annotations)
        return pod

    cluster = base((POD, member("g-0")))
    await cluster.cycle()
    assert not cluster.api.objects[WORKLOAD]
    cluster.add(POD, member("g-1"))
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/group-g")["status"]["phase"] == "Admitted"
    assert {pinned_node(cluster.get(POD, f"{MANAGED}/g-{i}")["spec"]) for i in range(2)} == {"gpu-a"}


async def test_a_stale_mirror_of_an_earlier_incarnation_is_deleted_and_replaced() -> None:
    cluster = base((JOB, job("train", parallelism=1, gpus=2)))
    stale = mirror_of_train({"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "uid-before"}, gpus=2)
    cluster.add(WORKLOAD, stale)
    await cluster.cycle()
    assert ("delete", WORKLOAD, f"{MANAGED}/job-train") in cluster.api.writes
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/job-train")
    assert mirror["metadata"]["ownerReferences"][0]["uid"] == "uid-Job-train"
    assert mirror["status"]["phase"] == "Admitted"


async def test_the_oracle_counts_released_native_pods_inside_their_mirrors_reservation() -> None:
    cluster = base((JOB, job("train", parallelism=2, gpus=2)))
    await cluster.cycle()
    cluster.job_controller_creates_pods("train", 2, gpus=2)
    await cluster.cycle()
    state = ClusterState(nodes=list(cluster.api.objects[NODE].values()), pods=list(cluster.api.objects[POD].values()),
                         workloads=list(cluster.api.objects[WORKLOAD].values()))
    assert gpus_in_use_by_node(state) == {"gpu-a": 4}  # not 8: the pods fill the reservation
    assert overcommit_violations(state, settled=True) == [] and pods_violations(state) == []
    mirror = cluster.api.objects[WORKLOAD][f"{MANAGED}/job-train"]
    mirror["status"] = {**mirror["status"], "placement": [{"node": "gpu-a", "gpus": 2, "replicas": 1}]}
    assert pods_violations(state) != []  # released pods beyond the placement are caught


async def test_a_pod_units_mirror_follows_its_pod_to_succeeded() -> None:
    cluster = base((POD, gated_pod("solo", 1)))
    await cluster.cycle()
    pod = cluster.get(POD, f"{MANAGED}/solo")
    assert pinned_node(pod["spec"]) == "gpu-a"
    for phase, expected in (("Running", "Running"), ("Succeeded", "Succeeded")):
        cluster.add(POD, {**pod, "status": {"phase": phase}})
        await cluster.cycle()
        assert cluster.get(WORKLOAD, f"{MANAGED}/pod-solo")["status"]["phase"] == expected
    assert ("Normal", "PodsSucceeded") in cluster.api.events("Pod", "solo")


async def test_opting_out_removes_the_gate_and_rejects_the_mirror() -> None:
    cluster = base((POD, gated_pod("first", 4)))
    await cluster.cycle()
    cluster.add(POD, gated_pod("waiting", 4))
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/pod-waiting")["status"]["phase"] == "Queued"
    cluster.add(NAMESPACE, namespace(MANAGED, False))
    await cluster.cycle()
    pod = cluster.get(POD, f"{MANAGED}/waiting")
    assert not pod["spec"].get("schedulingGates") and pinned_node(pod["spec"]) is None
    status = cluster.get(WORKLOAD, f"{MANAGED}/pod-waiting")["status"]
    assert status["reason"] == "MirrorNotTrusted" and "not managed" in status["message"]
    assert f"{MANAGED}/first" in cluster.api.objects[POD]  # what runs keeps running, as used capacity


async def test_opting_out_resumes_the_jobs_gpuadmits_webhook_suspended() -> None:
    held = job("held", parallelism=1, gpus=8)  # never fits: stays suspended while managed
    held["metadata"]["annotations"] = {"gpuadmit.io/suspended-by": "admission-webhook"}
    own = job("own", parallelism=1, gpus=8)  # suspended by its creator
    cluster = base((JOB, held), (JOB, own))
    await cluster.cycle()
    assert cluster.get(JOB, f"{MANAGED}/held")["spec"]["suspend"] is True
    cluster.add(NAMESPACE, namespace(MANAGED, False))
    await cluster.cycle()
    resumed = cluster.get(JOB, f"{MANAGED}/held")
    assert resumed["spec"]["suspend"] is False and "gpuadmit.io/suspended-by" not in resumed["metadata"]["annotations"]
    assert cluster.get(JOB, f"{MANAGED}/own")["spec"]["suspend"] is True


async def test_native_work_is_counted_by_kind_in_the_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from gpuadmit.metrics import Metrics

    registry = CollectorRegistry()
    cluster = base((JOB, job("train", parallelism=2, gpus=2)))
    cluster.loop.metrics = Metrics(registry)
    await cluster.cycle()
    cluster.job_controller_creates_pods("train", 2, gpus=2)
    await cluster.cycle()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("gpuadmit_native_actions_total", kind="Job", action="mirrored") == 1
    assert value("gpuadmit_native_actions_total", kind="Job", action="resumed") == 1
    assert value("gpuadmit_native_actions_total", kind="Job", action="released") == 2
    assert value("gpuadmit_native_actions_total", kind="Pod", action="released") == 0  # initialised
    assert value("gpuadmit_native_mirrors", kind="Job", phase="Admitted") == 1
    assert value("gpuadmit_native_mirrors", kind="Pod", phase="Admitted") == 0


async def test_a_released_pod_kube_scheduler_cannot_bind_requeues_its_mirror() -> None:
    cluster = base((POD, gated_pod("stuck", 2)))
    await cluster.cycle()
    pod = cluster.get(POD, f"{MANAGED}/stuck")
    assert pinned_node(pod["spec"]) == "gpu-a"
    long_ago = format_rfc3339(time.time() - 3600)
    cluster.add(POD, {**pod, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": long_ago,
         "message": "0/1 nodes are available: 1 node(s) had volume node affinity conflict."}]}})
    await cluster.cycle()
    assert ("delete", POD, f"{MANAGED}/stuck") in cluster.api.writes  # its ReplicaSet would make it again
    assert ("Warning", "Unschedulable") in cluster.api.events("GPUWorkload", "pod-stuck")
    assert cluster.get(WORKLOAD, f"{MANAGED}/pod-stuck")["status"]["phase"] not in ("Admitted", "Running")
