"""Kubeflow PyTorchJobs and KubeRay RayJobs through the Job suspend path (core.native, core.holds), on plain dicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpuadmit.core.holds import job_hold, pytorchjob_hold, rayjob_hold
from gpuadmit.core.native import (
    MIRROR_KIND_LABEL,
    UNEVEN_GPUS_ANNOTATION,
    UnitKind,
    UnitRef,
    admission_unit_of,
    gang_of,
    job_finished,
    job_suspended,
    mirror_of_job,
    mirror_problem,
    mirrors_in,
    ray_jobs_by_cluster,
    stale_mirror,
    suspend_patch,
    unit_of_pod,
)
from gpuadmit.core.snapshot import gpus_of_own_pods
from gpuadmit.core.validation import apply_json_patch

NS = "team-a"
MANAGED = frozenset({NS})


def template(gpus: int, image: str = "pytorch/pytorch:2.4.0") -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {"requests": {"cpu": "1"}}
    return {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "main", "image": image,
                                                                           "resources": resources}]}}


def pytorchjob(master_gpus: int = 4, workers: int = 3, worker_gpus: int = 2, suspend: bool | None = True,
               run_policy: dict[str, Any] | None = None) -> dict[str, Any]:
    policy = dict(run_policy or {})
    if suspend is not None:
        policy["suspend"] = suspend
    spec: dict[str, Any] = {"pytorchReplicaSpecs": {
        "Master": {"replicas": 1, "template": template(master_gpus, "master")},
        "Worker": {"replicas": workers, "template": template(worker_gpus, "worker")},
    }}
    if policy or run_policy is not None:
        spec["runPolicy"] = policy
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": "bert", "namespace": NS, "uid": "uid-bert"}, "spec": spec}


def rayjob(head_gpus: int = 0, groups: list[dict[str, Any]] | None = None, suspend: bool = True,
           cluster: str | None = None) -> dict[str, Any]:
    if groups is None:
        groups = [{"groupName": "gpu", "replicas": 2, "template": template(1)}]
    obj: dict[str, Any] = {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": "tune", "namespace": NS, "uid": "uid-tune"},
        "spec": {"suspend": suspend, "entrypoint": "python tune.py",
                 "rayClusterSpec": {"headGroupSpec": {"template": template(head_gpus)}, "workerGroupSpecs": groups}},
    }
    if cluster:
        obj["status"] = {"rayClusterName": cluster}
    return obj


def pod(name: str, controller: tuple[str, str, str] | None, gpus: int = 1, labels: dict[str, str] | None = None,
        node: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": labels or {}}
    if controller is not None:
        api_version, kind, owner = controller
        metadata["ownerReferences"] = [{"apiVersion": api_version, "kind": kind, "name": owner,
                                        "uid": f"uid-{owner}", "controller": True}]
    spec = copy.deepcopy(template(gpus)["spec"])
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": "Running"}}


# -- the gang and its mirror ----------------------------------------------------------------------


def test_a_pytorchjob_is_one_gang_of_master_and_workers() -> None:
    mirror = mirror_of_job(pytorchjob(master_gpus=2, workers=3, worker_gpus=2), UnitKind.PYTORCH_JOB)
    assert mirror is not None
    assert mirror.unit == UnitRef(NS, UnitKind.PYTORCH_JOB, "bert")
    assert (mirror.spec["replicas"], mirror.spec["gpus"]) == (4, 2)
    body = mirror.body
    assert body["metadata"]["name"] == "pytorchjob-bert"
    assert body["metadata"]["labels"][MIRROR_KIND_LABEL] == "PyTorchJob"
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                    "name": "bert", "uid": "uid-bert", "blockOwnerDeletion": False}]
    assert mirror.lean is not None and mirror.lean.workload_class == "training"


def test_uneven_templates_reserve_the_larger_per_replica_and_copy_its_template() -> None:
    obj = pytorchjob(master_gpus=4, workers=3, worker_gpus=2)
    gang = gang_of(obj, UnitKind.PYTORCH_JOB)
    assert gang is not None and gang.uneven and (gang.replicas, gang.gpus) == (4, 4)
    mirror = mirror_of_job(obj, UnitKind.PYTORCH_JOB)
    assert mirror is not None and mirror.spec["template"]["spec"]["containers"][0]["image"] == "master"
    assert mirror.body["metadata"]["annotations"][UNEVEN_GPUS_ANNOTATION] == \
        "pods asking 1 x 4, 3 x 2 GPUs: each of the 4 replicas reserves 4"
    even = mirror_of_job(pytorchjob(master_gpus=2, worker_gpus=2), UnitKind.PYTORCH_JOB)
    assert even is not None and not even.uneven and UNEVEN_GPUS_ANNOTATION not in even.body["metadata"]["annotations"]


def test_a_cpu_master_is_not_part_of_the_gang() -> None:
    mirror = mirror_of_job(pytorchjob(master_gpus=0, workers=2, worker_gpus=8), UnitKind.PYTORCH_JOB)
    assert mirror is not None and (mirror.spec["replicas"], mirror.spec["gpus"]) == (2, 8)
    assert mirror_of_job(pytorchjob(master_gpus=0, worker_gpus=0), UnitKind.PYTORCH_JOB) is None


def test_a_rayjob_is_one_gang_of_its_gpu_head_and_workers() -> None:
    groups = [{"groupName": "a", "replicas": 2, "template": template(1)},
              {"groupName": "b", "minReplicas": 1, "numOfHosts": 2, "template": template(1)},  # replicas from minReplicas
              {"groupName": "cpu", "replicas": 5, "template": template(0)}]
    mirror = mirror_of_job(rayjob(head_gpus=0, groups=groups), UnitKind.RAY_JOB)
    assert mirror is not None and (mirror.spec["replicas"], mirror.spec["gpus"]) == (4, 1)
    with_head = mirror_of_job(rayjob(head_gpus=1, groups=groups), UnitKind.RAY_JOB)
    assert with_head is not None and with_head.spec["replicas"] == 5
    assert with_head.body["metadata"]["name"] == "rayjob-tune"


# -- suspend, resume, outcome -----------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "kind"), [(pytorchjob(), UnitKind.PYTORCH_JOB), (rayjob(), UnitKind.RAY_JOB)])
def test_the_suspend_patch_writes_each_kinds_own_field(obj: dict[str, Any], kind: UnitKind) -> None:
    assert job_suspended(obj, kind)
    resumed = copy.deepcopy(obj)
    patch = suspend_patch(False, "mirror-uid", kind)
    if kind == UnitKind.PYTORCH_JOB:
        resumed["spec"]["runPolicy"].update(patch["spec"]["runPolicy"])
    else:
        resumed["spec"].update(patch["spec"])
    assert not job_suspended(resumed, kind)
    assert "suspend" not in patch["spec"] or kind != UnitKind.PYTORCH_JOB


def test_outcomes_of_each_kind() -> None:
    succeeded = {"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}
    assert job_finished(succeeded, UnitKind.PYTORCH_JOB) == "Succeeded"
    assert job_finished(succeeded, UnitKind.JOB) is None  # a Job's is Complete
    assert job_finished({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}, UnitKind.PYTORCH_JOB) == "Failed"
    assert job_finished({"status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}, UnitKind.RAY_JOB) == "Succeeded"
    assert job_finished({"status": {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}}, UnitKind.RAY_JOB) == "Failed"
    assert job_finished({"status": {"jobDeploymentStatus": "Running"}}, UnitKind.RAY_JOB) is None


# -- the webhook's hold -------------------------------------------------------------------------


def test_a_pytorchjob_is_created_suspended_whether_or_not_it_has_a_run_policy() -> None:
    for obj in (pytorchjob(suspend=None), pytorchjob(suspend=None, run_policy={"backoffLimit": 3}),
                pytorchjob(suspend=False)):
        hold = pytorchjob_hold(obj)
        held = apply_json_patch(obj, hold.patch)
        assert job_suspended(held, UnitKind.PYTORCH_JOB), hold.patch
        assert held["spec"].get("runPolicy", {}).get("backoffLimit") == obj["spec"].get("runPolicy", {}).get("backoffLimit")
        assert held["metadata"]["annotations"]["gpuadmit.io/suspended-by"] == "admission-webhook"
    assert pytorchjob_hold(pytorchjob(suspend=True)).patch == []
    assert pytorchjob_hold(pytorchjob(master_gpus=0, worker_gpus=0, suspend=None)).patch == []
    # A Job's hold does not know PyTorchJob templates: the kind matters.
    assert job_hold(pytorchjob(suspend=None)).patch == []


def test_a_rayjob_is_created_suspended_when_a_group_asks_for_gpus() -> None:
    held = apply_json_patch(rayjob(suspend=False), rayjob_hold(rayjob(suspend=False)).patch)
    assert job_suspended(held, UnitKind.RAY_JOB)
    cpu_only = rayjob(suspend=False, groups=[{"groupName": "cpu", "replicas": 2, "template": template(0)}])
    assert rayjob_hold(cpu_only).patch == []
    assert rayjob_hold({"kind": "RayJob", "spec": "nonsense"}).patch == []


# -- pods to units ----------------------------------------------------------------------------------


def test_pods_of_a_pytorchjob_belong_to_it() -> None:
    worker = pod("bert-worker-0", ("kubeflow.org/v1", "PyTorchJob", "bert"),
                 labels={"training.kubeflow.org/job-name": "bert"})
    assert unit_of_pod(worker) == UnitRef(NS, UnitKind.PYTORCH_JOB, "bert")
    # The label alone (a pod no controller owns) is not enough: it is shared by every Kubeflow kind.
    assert unit_of_pod(pod("p", None, labels={"training.kubeflow.org/job-name": "bert"})).kind == UnitKind.POD
    # Another API version of the kind is not the one gpuadmit knows.
    assert unit_of_pod(pod("q", ("kubeflow.org/v2", "PyTorchJob", "bert"))).kind == UnitKind.POD


def test_pods_of_a_rayjobs_cluster_belong_to_the_rayjob() -> None:
    ray_jobs = ray_jobs_by_cluster([rayjob(cluster="tune-x7k2p")])
    assert ray_jobs == {f"{NS}/tune-x7k2p": "tune"}
    worker = pod("tune-x7k2p-gpu-worker-abcde", ("ray.io/v1", "RayCluster", "tune-x7k2p"),
                 labels={"ray.io/cluster": "tune-x7k2p"})
    assert unit_of_pod(worker, ray_jobs) == UnitRef(NS, UnitKind.RAY_JOB, "tune")
    # A RayCluster no RayJob made (somebody's own cluster): each pod is its own unit, as today.
    own = pod("mine-head", ("ray.io/v1", "RayCluster", "mine"))
    assert unit_of_pod(own, ray_jobs) == UnitRef(NS, UnitKind.POD, "mine-head")
    assert unit_of_pod(worker) == UnitRef(NS, UnitKind.POD, worker["metadata"]["name"])
    # A RayJob on an existing cluster (clusterSelector) names a cluster that is not its own.
    borrowing = rayjob(cluster="shared")
    borrowing["spec"] = {"clusterSelector": {"ray.io/cluster": "shared"}, "entrypoint": "python x.py"}
    assert ray_jobs_by_cluster([borrowing]) == {}


def test_a_released_ray_pod_fills_its_rayjobs_reservation() -> None:
    ray_jobs = ray_jobs_by_cluster([rayjob(cluster="tune-x7k2p")])
    worker = pod("w0", ("ray.io/v1", "RayCluster", "tune-x7k2p"), node="gpu-1")
    mirrors = {f"{NS}/rayjob-tune"}
    assert admission_unit_of(worker, mirrors, ray_jobs) == f"{NS}/rayjob-tune"
    assert gpus_of_own_pods([worker], mirrors, ray_jobs) == {(f"{NS}/rayjob-tune", "gpu-1"): 1}
    assert gpus_of_own_pods([worker], mirrors) == {}  # without the map it is only used capacity


# -- trust --------------------------------------------------------------------------------------------


def test_a_pytorchjob_mirror_is_trusted_only_when_owned_by_the_live_pytorchjob() -> None:
    obj = pytorchjob()
    expected = mirror_of_job(obj, UnitKind.PYTORCH_JOB)
    assert expected is not None
    made = expected.body
    assert mirror_problem(made, expected, MANAGED) is None
    forged = copy.deepcopy(made)
    forged["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert mirror_problem(forged, expected, MANAGED) is not None
    # Left over from a PyTorchJob deleted and made again under the same name: stale, deleted.
    remade = copy.deepcopy(obj)
    remade["metadata"]["uid"] = "uid-bert-2"
    assert stale_mirror(made, mirror_of_job(remade, UnitKind.PYTORCH_JOB))
    trusted, untrusted = mirrors_in([made], [obj], [], [{"metadata": {"name": NS, "labels": {"gpuadmit.io/managed": "true"}}}])
    assert list(trusted) == [f"{NS}/pytorchjob-bert"] and not untrusted
