"""Kubeflow PyTorchJobs end to end on the emulated API server with the PyTorchJob and RayJob CRDs
applied (minimal ones, tests/data/crds): the real `gpuadmit run --manage-webhook-configurations`
discovers them at start-up and watches them; a stand-in for the Kubeflow training operator (below)
makes the pods of an unsuspended PyTorchJob and deletes them when it is suspended. The PyTorchJob
is written as a tenant writes it: created suspended by the webhook, mirrored, admitted,
unsuspended, its pods released pinned, preempted by inference (suspended again, its pods gone) and
admitted again. (Without these CRDs the operator runs as before: tests/controller/test_native_e2e.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuadmit.core.pods import pinned_node
from tests.controller.test_native_e2e import (
    MANAGED,
    PLAIN,
    container,
    managed_cluster,
    mirror,
    mirror_phase,
    no_violations,
    pods_in,
    pytestmark,  # noqa: F401 - the same marks and skips
    released_onto,
    start_operator,
)
from tests.e2e_harness import Cluster, wait_until

CRD_DIR = Path(__file__).resolve().parent.parent / "data" / "crds"
PYTORCHJOBS = f"/apis/kubeflow.org/v1/namespaces/{MANAGED}/pytorchjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"


def pytorchjob(name: str, workers: int, gpus: int) -> dict[str, Any]:
    def role(replicas: int) -> dict[str, Any]:
        return {"replicas": replicas, "restartPolicy": "OnFailure", "template": {"spec": {
            "containers": [container(gpus, ["torchrun", "train.py"])]}}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name, "namespace": MANAGED},
            "spec": {"pytorchReplicaSpecs": {"Master": role(1), "Worker": role(workers)}}}


class TrainingOperatorStandIn:
    """What the Kubeflow training operator does that these tests need: an unsuspended PyTorchJob
    gets one pod per replica of each role (``NAME-ROLE-INDEX``, label ``training.kubeflow.org/job-name``,
    controller ownerReference to the PyTorchJob, created through the API so the pod webhook gates
    them); a suspended one has its pods deleted. Polls over its own client, in a thread."""

    def __init__(self, kubeconfig: Path, interval: float = 0.2) -> None:
        self.api = Cluster(kubeconfig, real=False)
        self.interval = interval
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="training-operator stand-in", daemon=True)

    def __enter__(self) -> TrainingOperatorStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile()
            except Exception as error:  # noqa: BLE001 - a controller retries next round
                self.errors.append(repr(error))

    def reconcile(self) -> None:
        jobs = self.api.raw("GET", PYTORCHJOBS)["items"]
        pods = pods_in(self.api, MANAGED, "")
        for job in jobs:
            name, uid = job["metadata"]["name"], job["metadata"]["uid"]
            own = {p["metadata"]["name"] for p in pods if p["metadata"].get("labels", {}).get(JOB_NAME_LABEL) == name}
            if (job["spec"].get("runPolicy") or {}).get("suspend") is True:
                for pod_name in own:
                    self.api.raw("DELETE", f"/api/v1/namespaces/{MANAGED}/pods/{pod_name}")
                continue
            for role, replica_spec in job["spec"]["pytorchReplicaSpecs"].items():
                for index in range(replica_spec.get("replicas", 1)):
                    pod_name = f"{name}-{role.lower()}-{index}"
                    if pod_name in own:
                        continue
                    template = replica_spec["template"]
                    self.api.raw("POST", f"/api/v1/namespaces/{MANAGED}/pods", {
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod_name, "labels": {
                            JOB_NAME_LABEL: name, "training.kubeflow.org/replica-type": role.lower(),
                            "training.kubeflow.org/replica-index": str(index)},
                            "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name,
                                                 "uid": uid, "controller": True, "blockOwnerDeletion": True}]},
                        "spec": template["spec"]}, content_type="application/json")


def apply_crds(cluster: Cluster) -> None:
    for path in sorted(CRD_DIR.glob("*.yaml")):
        cluster.raw("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(path.read_text()),
                    content_type="application/json")
    wait_until(lambda: cluster.raw("GET", PYTORCHJOBS) is not None, 30, what="PyTorchJobs served")


@pytest.fixture
def crds(cluster: Cluster) -> Iterator[None]:
    apply_crds(cluster)
    yield


def get_pytorchjob(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.raw("GET", f"{PYTORCHJOBS}/{name}")


def suspended(cluster: Cluster, name: str) -> bool | None:
    return (get_pytorchjob(cluster, name)["spec"].get("runPolicy") or {}).get("suspend")


def test_a_pytorchjob_is_held_released_preempted_and_readmitted(cluster: Cluster, crds: None, tmp_path: Path) -> None:
    managed_cluster(cluster)
    operator = start_operator(cluster, tmp_path / "operator")
    try:
        with TrainingOperatorStandIn(cluster.kubeconfig) as training_operator:
            # Created suspended by the webhook; mirrored as one gang of master + workers; admitted; unsuspended.
            created = cluster.raw("POST", PYTORCHJOBS, pytorchjob("bert", 2, 2), content_type="application/json")
            assert created["spec"]["runPolicy"]["suspend"] is True
            assert created["metadata"]["annotations"]["gpuadmit.io/suspended-by"] == "admission-webhook"
            admitted = wait_until(mirror_phase(cluster, "pytorchjob-bert", {"Admitted", "Running"}), 30,
                                  what="pytorchjob-bert admitted")
            assert admitted["metadata"]["ownerReferences"][0]["kind"] == "PyTorchJob"
            assert admitted["spec"]["gpus"] == 2 and admitted["spec"]["replicas"] == 3
            assert admitted["status"]["class"] == "training"
            wait_until(lambda: suspended(cluster, "bert") is False or None, 30, what="PyTorchJob unsuspended")
            # Its pods arrive gated (the pod webhook) and are released onto the mirror's placement.
            pods = wait_until(released_onto(cluster, "bert-", 3), 30, what="the PyTorchJob's pods released")
            node = admitted["status"]["placement"][0]["node"]
            assert {pinned_node(p["spec"]) for p in pods} == {node}
            no_violations(cluster)

            # Inference that needs its GPUs preempts it: suspended again, the training operator removes its pods.
            cluster.create_workload(PLAIN, "chat", gpus=5, workload_class="inference", template={"spec": {
                "containers": [{"name": "server", "image": "vllm/vllm-openai:latest", "command": ["vllm", "serve", "m"]}]}})
            wait_until(lambda: suspended(cluster, "bert") is True or None, 30, what="PyTorchJob suspended")
            wait_until(lambda: not pods_in(cluster, MANAGED, "bert-") or None, 30, what="the PyTorchJob's pods gone")
            assert (mirror(cluster, "pytorchjob-bert") or {}).get("status", {}).get("phase") in ("Preempted", "Queued")
            cluster.wait_for_phase(PLAIN, "chat", {"Admitted", "Running"}, timeout=30)
            no_violations(cluster)

            # The preemptor leaves: admitted again, unsuspended, new pods released.
            cluster.delete_workload(PLAIN, "chat")
            wait_until(lambda: suspended(cluster, "bert") is False or None, 30, what="PyTorchJob resumed")
            wait_until(released_onto(cluster, "bert-", 3), 30, what="the PyTorchJob's new pods released")
            no_violations(cluster, settled=True)
            assert not training_operator.errors, training_operator.errors[:3]
        log = operator.log_tail()
        assert "PyTorchJob yes" in log and "RayJob yes" in log
        assert "pytorchjobs@" not in log or "interrupted" not in log  # watched from the first list, no retries
    finally:
        operator.stop()
        print(f"--- {operator.log_path} ---\n{operator.log_tail()}")


def test_crds_installed_after_start_up_are_watched_from_the_next_resync(cluster: Cluster, tmp_path: Path) -> None:
    managed_cluster(cluster)
    operator = start_operator(cluster, tmp_path / "operator", "--resync-seconds", "1")
    try:
        wait_until(lambda: "PyTorchJob no (CRD not installed)" in operator.log_path.read_text() or None, 30,
                   what="the start-up info line")
        apply_crds(cluster)
        wait_until(lambda: "Now served, watched from now on: PyTorchJob, RayJob" in operator.log_path.read_text() or None,
                   30, what="the CRDs discovered on a resync")
        created = cluster.raw("POST", PYTORCHJOBS, pytorchjob("late", 1, 1), content_type="application/json")
        assert created["spec"]["runPolicy"]["suspend"] is True  # the webhook's rule was there all along
        wait_until(mirror_phase(cluster, "pytorchjob-late", {"Admitted", "Running"}), 30, what="pytorchjob-late admitted")
        wait_until(lambda: suspended(cluster, "late") is False or None, 30, what="PyTorchJob unsuspended")
        warnings = [line for line in operator.log_path.read_text().splitlines()
                    if " WARNING " in line and "No certificate in" not in line]  # the generated certificate's
        assert warnings == []

        # Uninstalled: not watched any more (the streams stop at the next resync), and the loop goes on.
        for path in sorted(CRD_DIR.glob("*.yaml")):
            cluster.raw("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                        + yaml.safe_load(path.read_text())["metadata"]["name"])
        wait_until(lambda: "No longer served, not watched any more: PyTorchJob, RayJob" in operator.log_path.read_text()
                   or None, 30, what="the CRDs' removal noticed on a resync")
        cluster.create_workload(PLAIN, "after", gpus=1)
        cluster.wait_for_phase(PLAIN, "after", {"Admitted", "Running"}, timeout=30)
    finally:
        operator.stop()
        print(f"--- {operator.log_path} ---\n{operator.log_tail()}")
