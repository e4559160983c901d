"""Issue 12's held-out scenario ("How it will be checked"), driven only with kubectl.

The emulated API server runs with ``--no-scheduler`` and calls the webhooks that
`gpuadmit run --manage-webhook-configurations` registers; the test plays the Job and ReplicaSet
controllers and kube-scheduler, each write a kubectl call (``tests.kubectl_driver``):

- Jobs are suspended on create, unsuspended on admission, suspended again when preempted for
  inference, and admitted again when room returns; a Job that can never fit stays suspended with
  its reason on its mirror (`kubectl get gw`);
- GPU pods of the managed namespace are gated on create and released with the pinning affinity
  (bound there by the scheduler step); a GPU pod elsewhere is untouched (it counts as used);
- mirrors go with their owners (`kubectl delete job` collects in the background);
- no GPU is overcommitted at any point (``tests.invariants``, which counts a unit's released pods
  inside its mirror's reservation): checked after every step of the controllers.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gpuadmit.core.native import ADMISSION_GATE, MANAGED_LABEL
from gpuadmit.core.pods import pinned_node
from gpuadmit.localcluster import EmulatorProcess, OperatorProcess, free_port
from tests.e2e_harness import CRD_DIR, REAL_CLUSTER_ENV
from tests.invariants import overcommit_violations
from tests.kubectl_driver import KUBECTL, KUBECTL_MISSING, Kubectl, KubectlControllers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.emulator,
    pytest.mark.timeout(240),
    pytest.mark.skipif(KUBECTL is None, reason=KUBECTL_MISSING),
    pytest.mark.skipif(bool(os.environ.get(REAL_CLUSTER_ENV)), reason="registers webhooks on 127.0.0.1: emulator only"),
    pytest.mark.skipif(importlib.util.find_spec("kubeapi_emulator.admission") is None,
                       reason="this emulated API server does not call admission webhooks"),
]

MANAGED, PLAIN, OPERATOR_NAMESPACE = "team-native", "team-plain", "gpuadmit-system"
NODE = "gpu-0"
POLICY = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "default"}, "spec": {
    "pricePerGPUHour": {"inference": 6.0, "training": 2.0},
    "gpuCostPerHour": {"default": 1.0},
    "preemption": {"enabled": True, "minRuntimeSeconds": 0, "minMarginGainPerGPUHour": 0.5},
}}
T = TypeVar("T")


def gpu_container(gpus: int, image: str, command: list[str]) -> dict[str, Any]:
    return {"name": "main", "image": image, "command": command, "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}


def training_job(name: str, parallelism: int, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": MANAGED},
            "spec": {"parallelism": parallelism, "completions": parallelism, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [gpu_container(gpus, "pytorch/pytorch:2.4.0", ["torchrun", "train.py"])]}}}}


def inference_replicaset(name: str, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    server = {**gpu_container(gpus, "vllm/vllm-openai:latest", ["vllm", "serve", "m"]), "ports": [{"containerPort": 8000}]}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": MANAGED},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [server]}}}}


@dataclass
class Scenario:
    kubectl: Kubectl
    controllers: KubectlControllers
    operator: OperatorProcess
    checks: int = 0

    def check_no_overcommit(self) -> None:
        violations = overcommit_violations(self.kubectl.state())
        assert violations == [], [str(v) for v in violations]
        self.checks += 1

    def until(self, probe: Callable[[], T | None], what: str, timeout: float = 40.0) -> T:
        """Step the controllers and the scheduler, check the oracle, until ``probe()`` answers."""
        deadline = time.monotonic() + timeout
        while True:
            self.controllers.step()
            self.check_no_overcommit()
            found = probe()
            if found is not None and found is not False:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}; operator log:\n{self.operator.log_tail()}")
            time.sleep(0.2)

    def job(self, name: str) -> dict[str, Any]:
        return self.kubectl.get("job", name, "-n", MANAGED)

    def mirror(self, name: str) -> dict[str, Any] | None:
        return next((w for w in self.kubectl.items("gw", "-n", MANAGED) if w["metadata"]["name"] == name), None)

    def mirror_in(self, name: str, phases: set[str]) -> Callable[[], dict[str, Any] | None]:
        def probe() -> dict[str, Any] | None:
            found = self.mirror(name)
            return found if found is not None and (found.get("status") or {}).get("phase") in phases else None
        return probe

    def pods_of(self, owner_kind: str, owner: str) -> list[dict[str, Any]]:
        return [p for p in self.kubectl.items("pods", "-n", MANAGED) if not p["metadata"].get("deletionTimestamp")
                and any(r["kind"] == owner_kind and r["name"] == owner for r in p["metadata"].get("ownerReferences") or [])]

    def bound(self, owner_kind: str, owner: str, count: int) -> Callable[[], list[dict[str, Any]] | None]:
        def probe() -> list[dict[str, Any]] | None:
            pods = self.pods_of(owner_kind, owner)
            return pods if len(pods) == count and all(p["spec"].get("nodeName") for p in pods) else None
        return probe


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    with EmulatorProcess(tmp_path / "emulator", (CRD_DIR,), scheduler=False).running() as emulator:
        kubectl = Kubectl(emulator.kubeconfig)
        for namespace, managed in ((MANAGED, True), (PLAIN, False), (OPERATOR_NAMESPACE, False)):
            labels = {MANAGED_LABEL: "true"} if managed else {}
            kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        kubectl.add_gpu_node(NODE, gpus=8)
        kubectl.create(POLICY)
        operator = OperatorProcess(
            emulator.kubeconfig, tmp_path / "operator",
            ("--manage-webhook-configurations", "--webhook-cert-dir", str(tmp_path / "certs"), "--resync-seconds", "5"),
            env={"GPUADMIT_WEBHOOK_ADDR": "127.0.0.1", "POD_NAMESPACE": OPERATOR_NAMESPACE}, webhook_port=free_port())
        try:
            operator.launch()  # ready once its webhook configurations are written
            yield Scenario(kubectl, KubectlControllers(kubectl, [MANAGED]), operator)
        finally:
            operator.stop()


def test_the_held_out_scenario_with_kubectl_only(scenario: Scenario) -> None:
    kubectl = scenario.kubectl

    # Jobs are suspended on create: one that fits, one that never can (16 GPUs on an 8-GPU node).
    train = kubectl.create(training_job("train", parallelism=2, gpus=2))
    huge = kubectl.create(training_job("huge", parallelism=1, gpus=16))
    assert train["spec"]["suspend"] is True and huge["spec"]["suspend"] is True

    # Admitted: unsuspended; its pods arrive gated and are released with the pinning affinity.
    admitted = scenario.until(scenario.mirror_in("job-train", {"Admitted", "Running"}), "job-train admitted")
    assert [(r["kind"], r["name"]) for r in admitted["metadata"]["ownerReferences"]] == [("Job", "train")]
    scenario.until(lambda: scenario.job("train")["spec"].get("suspend") is False, "train unsuspended")
    job_pods = scenario.until(scenario.bound("Job", "train", 2), "train's pods bound")
    created = [p for p in scenario.controllers.created if p["metadata"]["name"] in {q["metadata"]["name"] for q in job_pods}]
    assert created and all(p["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}] for p in created)
    assert {pinned_node(p["spec"]) for p in job_pods} == {p["spec"]["nodeName"] for p in job_pods} == {NODE}

    # Never fits: kept suspended, the reason on its mirror, as `kubectl get gw` shows it.
    rejected = scenario.until(scenario.mirror_in("job-huge", {"Rejected"}), "job-huge rejected")
    assert rejected["status"]["reason"] == "NoNodeCanFit"
    assert scenario.job("huge")["spec"]["suspend"] is True and not scenario.pods_of("Job", "huge")
    table = kubectl.ok("get", "gw", "-n", MANAGED)
    assert any(line.split()[:1] == ["job-huge"] and "Rejected" in line and "NoNodeCanFit" in line
               for line in table.splitlines()), table

    # A GPU pod elsewhere: stored as written (no gate, no affinity, no mirror); bound, it counts as used.
    solo = kubectl.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo", "namespace": PLAIN},
                           "spec": {"containers": [gpu_container(1, "busybox", ["sleep", "3600"])]}})
    assert not solo["spec"].get("schedulingGates") and not solo["spec"].get("affinity")
    kubectl.bind(solo, NODE)
    assert kubectl.items("gw", "-n", PLAIN) == []

    # Inference needing 4 of the 3 free GPUs: the Job is preempted (suspended, its pods deleted by
    # the Job controller), the ReplicaSet's pod is released onto the freed GPUs.
    kubectl.create(inference_replicaset("serve", gpus=4))
    scenario.until(lambda: scenario.job("train")["spec"].get("suspend") is True, "train suspended again")
    preempted = scenario.mirror("job-train")
    assert preempted is not None and preempted["status"]["phase"] in ("Preempted", "Queued")
    served = scenario.until(scenario.bound("ReplicaSet", "serve", 1), "serve's pod bound")
    assert not scenario.pods_of("Job", "train")
    assert pinned_node(served[0]["spec"]) == NODE and not served[0]["spec"].get("schedulingGates")
    serve_mirror = scenario.mirror(f"pod-{served[0]['metadata']['name']}")
    assert serve_mirror is not None and serve_mirror["status"]["class"] == "inference"

    # The ReplicaSet goes (kubectl collects in the background): its pod, then the pod's mirror go,
    # and the preempted Job is admitted again when room returns.
    kubectl.ok("delete", "replicaset", "serve", "-n", MANAGED)
    scenario.until(lambda: scenario.mirror(serve_mirror["metadata"]["name"]) is None, "serve's mirror collected")
    scenario.until(lambda: scenario.job("train")["spec"].get("suspend") is False, "train resumed")
    scenario.until(scenario.bound("Job", "train", 2), "train's new pods bound")

    # Mirrors go with their owners.
    kubectl.ok("delete", "job", "train", "huge", "-n", MANAGED, "--cascade=background")
    scenario.until(lambda: scenario.mirror("job-train") is None and scenario.mirror("job-huge") is None, "Job mirrors collected")
    scenario.until(lambda: not scenario.pods_of("Job", "train"), "train's pods collected")

    # Elsewhere untouched throughout.
    solo_now = kubectl.get("pod", "solo", "-n", PLAIN)
    assert solo_now["metadata"]["resourceVersion"] != solo["metadata"]["resourceVersion"]  # the binding only
    assert not solo_now["spec"].get("affinity") and not solo_now["spec"].get("schedulingGates")
    assert scenario.checks > 5
