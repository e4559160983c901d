"""Drive a cluster with the real `kubectl`, as a user (or a controller written against kubectl) does.

- ``Kubectl``: runs `kubectl --kubeconfig K ...` and reads its JSON.
- ``KubectlControllers.step()``: one round of the Job and ReplicaSet controllers and of
  kube-scheduler, each write a `kubectl` call, for tests of the held-out kind ("driven only with
  kubectl against the emulator with --no-scheduler, playing the Job and ReplicaSet controllers"):
  A pod create the API server refuses is noted in ``refused`` and retried next step, as a
  controller's work queue would.
  - **Job**: a suspended Job's active pods are deleted; a Job that is not suspended gets
    ``parallelism`` active pods from its template (``tests.native_controllers.pod_from_template``,
    the same pods the HTTP stand-ins make). Pods are never finished here.
  - **ReplicaSet**: ``replicas`` active pods from its template.
  - **scheduler**: a pod without a node and without scheduling gates is bound (the ``binding``
    subresource, `kubectl create --raw`) to the node its required node affinity pins it to
    (``gpuadmit.core.pods.pinned_node``), else to ``default_node`` if set, else left alone; as
    kube-scheduler, only when the node's GPUs not requested by its live pods fit it (a pod
    released onto GPUs whose preempted pods are still going waits for them).

Tests skip when kubectl is absent (``KUBECTL`` is None).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuadmit.core.pods import pinned_node
from tests.invariants import ClusterState, allocatable_gpus, pod_gpus, pod_is_live
from tests.native_controllers import is_active, owned_by, pod_from_template

KUBECTL = shutil.which("kubectl")
KUBECTL_MISSING = "kubectl is not installed: these tests drive the cluster with it"


class KubectlError(AssertionError):
    """kubectl exited non-zero: the message carries the command and its stderr."""


@dataclass
class Kubectl:
    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None, KUBECTL_MISSING
        return subprocess.run([KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """The stdout of a command that must succeed."""
        result = self.run(*args, stdin=stdin)
        if result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """``kubectl create -f -`` of ``obj``: the object as the API server stored it."""
        return dict(json.loads(self.ok("create", "-o", "json", "-f", "-", stdin=json.dumps(obj))))

    def get(self, *args: str) -> dict[str, Any]:
        """``kubectl get ARGS -o json``."""
        return dict(json.loads(self.ok("get", *args, "-o", "json")))

    def items(self, *args: str) -> list[dict[str, Any]]:
        return list(self.get(*args).get("items") or [])

    def state(self) -> ClusterState:
        """What the overcommit oracle reads: nodes, pods and GPUWorkloads (workloads read twice,
        around the pods, as ``ApiReader`` does)."""
        workloads = self.items("gpuworkloads", "-A")
        pods = self.items("pods", "-A")
        return ClusterState(nodes=self.items("nodes"), pods=pods, workloads=workloads,
                            workloads_again=self.items("gpuworkloads", "-A"))

    def add_gpu_node(self, name: str, gpus: int) -> None:
        self.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        resources = {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"}
        self.ok("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}))

    def bind(self, pod: Mapping[str, Any], node: str) -> None:
        meta = pod["metadata"]
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self.ok("create", "--raw", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                "-f", "-", stdin=json.dumps(binding))


@dataclass
class KubectlControllers:
    """One round of the Job and ReplicaSet controllers and of kube-scheduler per ``step()``,
    through kubectl (module docstring), in ``namespaces`` only (pods of other namespaces are
    still bound)."""

    kubectl: Kubectl
    namespaces: Iterable[str]
    default_node: str | None = None
    created: list[dict[str, Any]] = field(default_factory=list)  # every pod as its create returned it
    refused: list[str] = field(default_factory=list)  # creates the API server refused, retried next step

    def step(self) -> None:
        watched = set(self.namespaces)
        listed = self.kubectl.items("jobs.batch,replicasets.apps,pods,nodes", "-A")
        pods = [o for o in listed if o["kind"] == "Pod"]
        nodes = [o for o in listed if o["kind"] == "Node"]
        for owner in listed:
            if owner["kind"] not in ("Job", "ReplicaSet") or owner["metadata"].get("namespace") not in watched:
                continue
            active = [p for p in pods if owned_by(p, owner) and is_active(p)]
            if owner["kind"] == "Job" and owner["spec"].get("suspend"):
                wanted = 0
            elif owner["kind"] == "Job":
                wanted = int(owner["spec"].get("parallelism", 1))
            else:
                wanted = int(owner["spec"].get("replicas", 1))
            for pod in active[wanted:]:
                self.kubectl.run("delete", "pod", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"],
                                 "--wait=false", "--ignore-not-found")
            for _ in range(wanted - len(active)):
                labels = {"batch.kubernetes.io/job-name": owner["metadata"]["name"]} if owner["kind"] == "Job" else {}
                pod = pod_from_template(owner, extra_labels=labels)
                pod["metadata"]["namespace"] = owner["metadata"]["namespace"]
                try:
                    self.created.append(self.kubectl.create(pod))
                except KubectlError as error:  # a denying webhook, one that does not answer: a controller retries
                    self.refused.append(str(error))
        free = {n["metadata"]["name"]: allocatable_gpus(n) for n in nodes}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node in free and pod_is_live(pod) and not pod["metadata"].get("deletionTimestamp"):
                free[node] -= pod_gpus(pod)
        for pod in pods:
            self._schedule(pod, free)

    def _schedule(self, pod: Mapping[str, Any], free: dict[str, int]) -> None:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") or spec.get("schedulingGates") or pod["metadata"].get("deletionTimestamp"):
            return
        node = pinned_node(spec) or self.default_node
        if node is None or free.get(node, 0) < pod_gpus(pod):
            return
        try:
            self.kubectl.bind(pod, node)
            free[node] -= pod_gpus(pod)
        except KubectlError as error:
            if "NotFound" not in str(error) and "not found" not in str(error):  # deleted meanwhile: fine
                raise
