"""Native workloads end to end: the real `gpuadmit run --manage-webhook-configurations`, the
emulated API server (it calls the operator's webhooks; its scheduler binds released pods) and the
test stand-ins of the Job and ReplicaSet controllers. The Job and pods are written as a tenant
writes them: the webhooks hold them (Job suspended, pods gated), the operator does the rest:
mirrors, admission, release, preemption, readmission, garbage collection, a restart that releases
nothing twice."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpuadmit.core.pods import pinned_node
from tests.e2e_harness import REAL_CLUSTER_ENV, Cluster, OperatorProcess, wait_until, webhook_operator
from tests.invariants import ClusterState, overcommit_violations, pods_violations
from tests.native_controllers import NativeControllers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.emulator,
    pytest.mark.skipif(bool(os.environ.get(REAL_CLUSTER_ENV)),
                       reason="plays the Job and ReplicaSet controllers and registers webhooks on 127.0.0.1"),
    pytest.mark.skipif(importlib.util.find_spec("kubeapi_emulator.admission") is None,
                       reason="this emulated API server does not call admission webhooks"),
]

MANAGED, PLAIN, OPERATOR_NAMESPACE = "team-native", "team-plain", "gpuadmit-system"
POLICY = {
    "pricePerGPUHour": {"inference": 6.0, "training": 2.0},
    "gpuCostPerHour": {"default": 1.0},
    "preemption": {"enabled": True, "minRuntimeSeconds": 0, "minMarginGainPerGPUHour": 0.5},
}


def container(gpus: int, command: list[str]) -> dict[str, Any]:
    return {"name": "main", "image": "busybox", "command": command,
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}


def job(name: str, parallelism: int, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": MANAGED},
            "spec": {"parallelism": parallelism, "completions": parallelism, "template": {
                "spec": {"restartPolicy": "Never", "containers": [container(gpus, ["torchrun", "train.py"])]}}}}


def replicaset(name: str, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": MANAGED},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container(gpus, ["python", "app.py"])]}}}}


def mirror(cluster: Cluster, name: str) -> dict[str, Any] | None:
    found = [w for w in cluster.workloads(MANAGED) if w["metadata"]["name"] == name]
    return found[0] if found else None


def mirror_phase(cluster: Cluster, name: str, phases: set[str]) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        found = mirror(cluster, name)
        return found if found is not None and (found.get("status") or {}).get("phase") in phases else None
    return check


def get_job(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.raw("GET", f"/apis/batch/v1/namespaces/{MANAGED}/jobs/{name}")


def pods_in(cluster: Cluster, namespace: str, prefix: str) -> list[dict[str, Any]]:
    return [p for p in cluster.all_pods() if p["metadata"]["namespace"] == namespace
            and p["metadata"]["name"].startswith(prefix) and not p["metadata"].get("deletionTimestamp")]


def released_onto(cluster: Cluster, prefix: str, count: int) -> Callable[[], list[dict[str, Any]] | None]:
    def check() -> list[dict[str, Any]] | None:
        pods = pods_in(cluster, MANAGED, prefix)
        ok = len(pods) == count and all(not p["spec"].get("schedulingGates") and pinned_node(p["spec"]) for p in pods)
        return pods if ok else None
    return check


def no_violations(cluster: Cluster, settled: bool = False) -> None:
    """The overcommit oracle; settled: the pods match the reservations too (mirrors' included)."""
    state = ClusterState.from_dump(cluster.dump())
    assert overcommit_violations(state, settled) == []
    if settled:
        assert pods_violations(state) == []


def start_operator(cluster: Cluster, workdir: Path, *extra_args: str) -> OperatorProcess:
    """`gpuadmit run` registering its own webhooks (Jobs suspended and pods gated on create)."""
    operator = webhook_operator(cluster.kubeconfig, workdir, *extra_args, pod_namespace=OPERATOR_NAMESPACE)
    operator.launch()
    return operator


def managed_cluster(cluster: Cluster) -> None:
    """One 8-GPU node, the policy, a managed namespace (and the operator's), and a plain one."""
    cluster.add_gpu_nodes(1, gpus=8)
    cluster.apply_policy(POLICY)
    for name in (MANAGED, OPERATOR_NAMESPACE):
        cluster.ensure_namespace(name)
        cluster.core.patch_namespace(name, {"metadata": {"labels": {"gpuadmit.io/managed": "true"}}})
    cluster.ensure_namespace(PLAIN)


def test_jobs_and_replicaset_pods_are_held_released_preempted_and_readmitted(cluster: Cluster, tmp_path: Path) -> None:
    managed_cluster(cluster)
    operators = [start_operator(cluster, tmp_path / "operator-0")]
    try:
        run_scenario(cluster, operators, tmp_path)
    finally:
        for operator in operators:
            operator.stop()
            print(f"--- {operator.log_path} ---\n{operator.log_tail()}")


def run_scenario(cluster: Cluster, operators: list[OperatorProcess], tmp_path: Path) -> None:
    with NativeControllers.from_kubeconfig(cluster.kubeconfig, deployments=False, statefulsets=False):
        # A Job: suspended on create, mirrored, admitted, unsuspended; its pods arrive gated and are
        # released, pinned.
        created = cluster.raw("POST", f"/apis/batch/v1/namespaces/{MANAGED}/jobs", job("train", 2, 2),
                              content_type="application/json")
        assert created["spec"]["suspend"] is True
        admitted = wait_until(mirror_phase(cluster, "job-train", {"Admitted", "Running"}), 30, what="job-train admitted")
        assert admitted["metadata"]["ownerReferences"][0]["kind"] == "Job"
        assert admitted["spec"]["gpus"] == 2 and admitted["spec"]["replicas"] == 2
        wait_until(lambda: get_job(cluster, "train")["spec"].get("suspend") is False, 30, what="Job unsuspended")
        job_pods = wait_until(released_onto(cluster, "train-", 2), 30, what="the Job's pods released")
        node = admitted["status"]["placement"][0]["node"]
        assert {pinned_node(p["spec"]) for p in job_pods} == {node}

        # A ReplicaSet's pod: its own unit, leaning inference, released beside the Job (8 GPUs: 4 + 2).
        cluster.raw("POST", f"/apis/apps/v1/namespaces/{MANAGED}/replicasets", replicaset("web", 2),
                    content_type="application/json")
        web_pods = wait_until(released_onto(cluster, "web-", 1), 30, what="the ReplicaSet's pod released")
        web_mirror = mirror(cluster, f"pod-{web_pods[0]['metadata']['name']}")
        assert web_mirror is not None and web_mirror["status"]["class"] == "inference"

        # A GPU pod elsewhere: untouched, no mirror; it counts as used (1 GPU left).
        cluster.core.create_namespaced_pod(PLAIN, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo"},
                                                   "spec": {"containers": [container(1, ["sleep", "1"])]}})
        no_violations(cluster)

        # Inference that needs the Job's GPUs preempts it: the Job is suspended, its pods go.
        cluster.create_workload(PLAIN, "chat", gpus=5, workload_class="inference", template={"spec": {"containers": [
            {"name": "server", "image": "vllm/vllm-openai:latest", "command": ["vllm", "serve", "m"]}]}})
        wait_until(lambda: get_job(cluster, "train")["spec"].get("suspend") is True, 30, what="Job suspended")
        wait_until(lambda: not pods_in(cluster, MANAGED, "train-") or None, 30, what="the Job's pods gone")
        assert (mirror(cluster, "job-train") or {}).get("status", {}).get("phase") in ("Preempted", "Queued")
        cluster.wait_for_phase(PLAIN, "chat", {"Admitted", "Running"}, timeout=30)
        no_violations(cluster)

        # The preemptor leaves: the Job is admitted again and unsuspended.
        cluster.delete_workload(PLAIN, "chat")
        wait_until(lambda: get_job(cluster, "train")["spec"].get("suspend") is False, 30, what="Job resumed")
        wait_until(released_onto(cluster, "train-", 2), 30, what="the Job's new pods released")
        no_violations(cluster, settled=True)

        # A restart releases nothing twice: the same pods keep the same pinning, the Job and the
        # mirrors keep their admission (resourceVersions would move with the scheduler's bindings and
        # the Job controller's status writes, so what gpuadmit writes is compared instead).
        def held_state() -> tuple[Any, ...]:
            pods = sorted((p["metadata"]["uid"], pinned_node(p["spec"]), bool(p["spec"].get("schedulingGates")))
                          for p in pods_in(cluster, MANAGED, ""))
            the_job = get_job(cluster, "train")
            mirrors = sorted((w["metadata"]["name"], (w.get("status") or {}).get("admittedAt"))
                             for w in cluster.workloads(MANAGED))
            return pods, the_job["spec"].get("suspend"), the_job["metadata"].get("annotations"), mirrors

        before = held_state()
        operators[0].stop()
        operators.append(start_operator(cluster, tmp_path / "operator-1"))
        time.sleep(3)
        assert held_state() == before

    # Solo was never touched by gpuadmit.
    solo = cluster.core.read_namespaced_pod("solo", PLAIN).to_dict()
    assert not (solo["spec"].get("affinity") or {}) and not [w for w in cluster.workloads(PLAIN) if w["metadata"]["name"] != "chat"]

    # Mirrors go with their owners: garbage collection (as kubectl deletes, in the background), or
    # the operator when the delete orphaned the mirror (the API's default for batch/v1 Jobs).
    cluster.raw("DELETE", f"/apis/batch/v1/namespaces/{MANAGED}/jobs/train?propagationPolicy=Background")
    wait_until(lambda: mirror(cluster, "job-train") is None or None, 30, what="job-train collected")
    cluster.raw("POST", f"/apis/batch/v1/namespaces/{MANAGED}/jobs", job("again", 1, 1), content_type="application/json")
    wait_until(mirror_phase(cluster, "job-again", {"Admitted", "Running"}), 30, what="job-again admitted")
    cluster.raw("DELETE", f"/apis/batch/v1/namespaces/{MANAGED}/jobs/again")  # orphans its dependents
    wait_until(lambda: mirror(cluster, "job-again") is None or None, 30, what="the orphaned job-again deleted")
