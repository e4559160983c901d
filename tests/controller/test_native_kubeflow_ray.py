"""Kubeflow PyTorchJobs and KubeRay RayJobs through the Job suspend path (controller.native), against
the in-memory API of tests/controller/test_native.py; the test plays KubeRay (RayJob -> RayCluster -> pods)."""

from __future__ import annotations

from typing import Any

from gpuadmit.controller import api as kube
from gpuadmit.controller.cache import NAMESPACE, POD, PYTORCHJOB, RAYJOB, WORKLOAD
from gpuadmit.core.native import RELEASED_ANNOTATION
from gpuadmit.core.pods import pinned_node
from tests.controller.test_native import MANAGED, base, gated_pod, namespace, pod_spec, serving_workload

CLUSTER = "tune-x7k2p"  # KubeRay names a RayJob's cluster NAME-<random>


def rayjob(name: str = "tune", workers: int = 2, gpus: int = 1) -> dict[str, Any]:
    head = {"spec": {"containers": [{"name": "head", "image": "rayproject/ray", "resources": {"requests": {"cpu": "1"}}}]}}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "namespace": MANAGED},
            "spec": {"suspend": True, "entrypoint": "python tune.py", "rayClusterSpec": {
                "headGroupSpec": {"template": head},
                "workerGroupSpecs": [{"groupName": "gpu", "replicas": workers, "minReplicas": 0,
                                      "template": {"spec": pod_spec(gpus, ["ray", "start"], restart="Always")}}]}}}


async def kuberay_creates_the_cluster(cluster: Any, workers: int, gpus: int) -> list[str]:
    """KubeRay on an unsuspended RayJob: the cluster's name in the RayJob's status, then the
    RayCluster's worker pods (controller: the RayCluster), gated by the pod webhook."""
    status = {"status": {"rayClusterName": CLUSTER, "jobDeploymentStatus": "Initializing"}}
    cluster.loop.cache.put(RAYJOB, await cluster.api.patch(kube.RAYJOBS, "tune", status, MANAGED, subresource="status"))
    owner = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "name": CLUSTER, "uid": "uid-cluster", "controller": True}
    names = [f"{CLUSTER}-gpu-worker-{i}" for i in range(workers)]
    for name in names:
        pod = gated_pod(name, gpus, owner=owner)
        pod["metadata"]["labels"] = {"ray.io/cluster": CLUSTER, "ray.io/node-type": "worker"}
        cluster.add(POD, pod)
    return names


async def test_a_rayjob_is_admitted_unsuspended_and_its_clusters_pods_fill_its_reservation() -> None:
    cluster = base((RAYJOB, rayjob(workers=2, gpus=1)), gpus=4)
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/rayjob-tune")
    assert mirror["status"]["phase"] == "Admitted"
    assert (mirror["spec"]["replicas"], mirror["spec"]["gpus"]) == (2, 1)  # the CPU head is not in the gang
    assert mirror["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    the_job = cluster.get(RAYJOB, f"{MANAGED}/tune")
    assert the_job["spec"]["suspend"] is False
    assert the_job["metadata"]["annotations"][RELEASED_ANNOTATION] == mirror["metadata"]["uid"]

    names = await kuberay_creates_the_cluster(cluster, 2, 1)
    await cluster.cycle()
    pods = [cluster.get(POD, f"{MANAGED}/{name}") for name in names]
    assert [pinned_node(p["spec"]) for p in pods] == ["gpu-a", "gpu-a"]
    assert all(not p["spec"].get("schedulingGates") for p in pods)
    assert not cluster.api.objects[WORKLOAD].get(f"{MANAGED}/pod-{names[0]}")  # not units of their own

    # Bound, its pods fill the mirror's reservation (not counted beside it): 2 of the 4 GPUs are free.
    for pod in pods:
        pod["spec"]["nodeName"] = "gpu-a"
        pod["status"]["phase"] = "Running"
        cluster.loop.cache.put(POD, dict(pod))
    other = gated_pod("solo", 2)
    cluster.add(POD, other)
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/pod-solo")["status"]["phase"] == "Admitted"
    assert cluster.get(WORKLOAD, f"{MANAGED}/rayjob-tune")["status"]["phase"] in ("Admitted", "Running")


async def test_a_rayjob_preempted_for_inference_is_suspended_and_readmitted_later() -> None:
    cluster = base((RAYJOB, rayjob(workers=2, gpus=2)), gpus=4)
    await cluster.cycle()
    names = await kuberay_creates_the_cluster(cluster, 2, 2)
    await cluster.cycle()
    cluster.add(WORKLOAD, serving_workload())
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/rayjob-tune")["status"]["phase"] == "Preempted"
    the_job = cluster.get(RAYJOB, f"{MANAGED}/tune")
    assert the_job["spec"]["suspend"] is True and RELEASED_ANNOTATION not in (the_job["metadata"].get("annotations") or {})
    assert ("Warning", "PreemptedByHigherMargin") in cluster.api.events("RayJob", "tune")
    assert not [w for w in cluster.api.writes if w[0] == "delete" and w[1] == POD]  # KubeRay deletes the cluster

    for name in names:  # KubeRay on a suspended RayJob: the cluster and its pods go
        cluster.delete(POD, f"{MANAGED}/{name}")
    cluster.delete(WORKLOAD, "plain/serve")
    await cluster.cycle()
    assert cluster.get(WORKLOAD, f"{MANAGED}/rayjob-tune")["status"]["phase"] == "Admitted"
    assert cluster.get(RAYJOB, f"{MANAGED}/tune")["spec"]["suspend"] is False


def pytorchjob(name: str, master_gpus: int, workers: int, worker_gpus: int) -> dict[str, Any]:
    def role(replicas: int, gpus: int) -> dict[str, Any]:
        return {"replicas": replicas, "template": {"spec": pod_spec(gpus, ["torchrun", "train.py"])}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": MANAGED, "annotations": {"gpuadmit.io/suspended-by": "admission-webhook"}},
            "spec": {"runPolicy": {"suspend": True},
                     "pytorchReplicaSpecs": {"Master": role(1, master_gpus), "Worker": role(workers, worker_gpus)}}}


async def test_a_pytorchjob_with_uneven_roles_reserves_the_larger_and_is_resumed_through_run_policy() -> None:
    cluster = base((PYTORCHJOB, pytorchjob("bert", 2, 2, 1)), gpus=8)
    await cluster.cycle()
    mirror = cluster.get(WORKLOAD, f"{MANAGED}/pytorchjob-bert")
    assert mirror["status"]["phase"] == "Admitted"
    assert (mirror["spec"]["replicas"], mirror["spec"]["gpus"]) == (3, 2)
    assert "each of the 3 replicas reserves 2" in mirror["metadata"]["annotations"]["gpuadmit.io/uneven-gpus"]
    the_job = cluster.get(PYTORCHJOB, f"{MANAGED}/bert")
    assert the_job["spec"]["runPolicy"]["suspend"] is False and "suspend" not in the_job["spec"]
    assert ("Normal", "Admitted") in cluster.api.events("PyTorchJob", "bert")


async def test_opting_out_resumes_a_pytorchjob_gpuadmits_webhook_suspended() -> None:
    cluster = base((PYTORCHJOB, pytorchjob("huge", 8, 2, 8)), gpus=8)  # 3 x 8 GPUs: never fits here
    await cluster.cycle()
    assert cluster.get(PYTORCHJOB, f"{MANAGED}/huge")["spec"]["runPolicy"]["suspend"] is True
    cluster.add(NAMESPACE, namespace(MANAGED, False))
    await cluster.cycle()
    resumed = cluster.get(PYTORCHJOB, f"{MANAGED}/huge")
    assert resumed["spec"]["runPolicy"]["suspend"] is False
    assert "gpuadmit.io/suspended-by" not in resumed["metadata"]["annotations"]
