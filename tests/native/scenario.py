"""The setting of the native-workload e2e tests driven with kubectl: the emulated API server with
``--no-scheduler``, `gpuadmit run --manage-webhook-configurations`, a managed and a plain namespace,
and ``Scenario``, which steps the kubectl stand-ins of the Job and ReplicaSet controllers and of
kube-scheduler (``tests.kubectl_driver``) and checks the invariants (no overcommit, coherent statuses) after every step."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gpuadmit.core.native import MANAGED_LABEL
from gpuadmit.localcluster import EmulatorProcess, OperatorProcess
from tests.e2e_harness import CRD_DIR, REAL_CLUSTER_ENV, webhook_operator
from tests.invariants import check_state
from tests.kubectl_driver import KUBECTL, KUBECTL_MISSING, Kubectl, KubectlControllers

MARKS = [
    pytest.mark.e2e,
    pytest.mark.emulator,
    pytest.mark.timeout(240),
    pytest.mark.skipif(KUBECTL is None, reason=KUBECTL_MISSING),
    pytest.mark.skipif(bool(os.environ.get(REAL_CLUSTER_ENV)), reason="registers webhooks on 127.0.0.1: emulator only"),
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

    def check_invariants(self) -> None:
        """The point-in-time invariants: no overcommit, and every decided workload's status coherent
        (a holding phase with its placement, any other without)."""
        violations = check_state(self.kubectl.state(), decision_grace_seconds=60)
        assert violations == [], [str(v) for v in violations]
        self.checks += 1

    def until(self, probe: Callable[[], T | None], what: str, timeout: float = 40.0) -> T:
        """Step the controllers and the scheduler, check the oracle, until ``probe()`` answers."""
        deadline = time.monotonic() + timeout
        while True:
            self.controllers.step()
            self.check_invariants()
            found = probe()
            if found is not None and found is not False:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}; operator log:\n{self.operator.log_tail()}")
            time.sleep(0.2)

    def events(self, namespace: str, kind: str, name: str) -> list[tuple[str, str]]:
        """(type, reason) of the Events about one object, as `kubectl get events` lists them."""
        return [(e.get("type"), e.get("reason")) for e in self.kubectl.items("events", "-n", namespace)
                if (e.get("involvedObject") or {}).get("kind") == kind and (e.get("involvedObject") or {}).get("name") == name]

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


@contextmanager
def started_scenario(tmp_path: Path, gpus: int = 8, operator_args: Sequence[str] = ()) -> Iterator[Scenario]:
    """The emulator (``--no-scheduler``), namespaces MANAGED (labelled managed) and PLAIN, node
    NODE with ``gpus`` GPUs, the policy, and the operator registering its webhooks."""
    with EmulatorProcess(tmp_path / "emulator", (CRD_DIR,), scheduler=False).running() as emulator:
        kubectl = Kubectl(emulator.kubeconfig)
        for namespace, managed in ((MANAGED, True), (PLAIN, False), (OPERATOR_NAMESPACE, False)):
            labels = {MANAGED_LABEL: "true"} if managed else {}
            kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        kubectl.add_gpu_node(NODE, gpus=gpus)
        kubectl.create(POLICY)
        operator = webhook_operator(emulator.kubeconfig, tmp_path / "operator", "--resync-seconds", "5", *operator_args,
                                    pod_namespace=OPERATOR_NAMESPACE)
        try:
            operator.launch()  # ready once its webhook configurations are written
            yield Scenario(kubectl, KubectlControllers(kubectl, [MANAGED], default_node=NODE), operator)
        finally:
            operator.stop()
