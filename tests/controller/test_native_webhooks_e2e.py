"""End to end with kubectl: `gpuadmit run --manage-webhook-configurations` against the emulated API
server, which calls the webhooks it registers. In a namespace labelled `gpuadmit.io/managed: "true"`
a GPU pod comes back gated and a GPU Job suspended; elsewhere they come back as written. With the
operator stopped, `failurePolicy: Fail` refuses GPU pods of managed namespaces, never of the operator's own.
And the whole path: a Job and a ReplicaSet written as tenants write them, held by the webhooks,
released by the operator (the Job and ReplicaSet controllers played by tests/native_controllers.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpuadmit.core.native import ADMISSION_GATE, MANAGED_LABEL
from gpuadmit.localcluster import OperatorProcess
from tests.e2e_harness import Cluster, wait_until, webhook_operator
from tests.kubectl_driver import Kubectl
from tests.native.scenario import MARKS, OPERATOR_NAMESPACE

pytestmark = MARKS  # kubectl-driven, emulator only: the same marks and skips as tests/native


def gpu_pod(namespace: str, name: str, gpus: int = 1) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": gpus}} if gpus else {"requests": {"cpu": "10m"}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "main", "image": "pytorch/pytorch:2.4.0", "resources": resources}]}}


def gpu_job(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"parallelism": 2, "completions": 2, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "pytorch/pytorch:2.4.0",
                                "resources": {"limits": {"nvidia.com/gpu": 4}}}]}}}}


@dataclass
class Setup:
    cluster: Cluster
    kubectl: Kubectl
    operator: OperatorProcess


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with Cluster.start(tmp_path / "cluster", scheduler=False) as cluster:
        kubectl = Kubectl(cluster.kubeconfig)
        for namespace, managed in (("team-managed", True), ("team-plain", False), (OPERATOR_NAMESPACE, True)):
            labels = {MANAGED_LABEL: "true"} if managed else {}
            kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        operator = webhook_operator(cluster.kubeconfig, tmp_path / "operator", pod_namespace=OPERATOR_NAMESPACE)
        try:
            operator.launch()  # ready only once the webhook configurations are written
            yield Setup(cluster, kubectl, operator)
        finally:
            operator.stop()


def test_a_gpu_pod_is_gated_in_a_managed_namespace_only(setup: Setup) -> None:
    gated = setup.kubectl.create(gpu_pod("team-managed", "trainer"))
    assert gated["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}]
    assert not setup.kubectl.create(gpu_pod("team-plain", "trainer")).get("spec", {}).get("schedulingGates")
    assert not setup.kubectl.create(gpu_pod("team-managed", "cpu-only", gpus=0))["spec"].get("schedulingGates")
    shown = setup.kubectl.run("get", "pod", "trainer", "-n", "team-managed", "-o", "json")
    assert json.loads(shown.stdout)["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}]  # stored so


def test_a_gpu_pod_naming_its_node_is_refused_with_the_reason(setup: Setup) -> None:
    pod = gpu_pod("team-managed", "pinned")
    pod["spec"]["nodeName"] = "gpu-1"
    refused = setup.kubectl.run("create", "-f", "-", stdin=json.dumps(pod))
    assert refused.returncode == 1
    assert 'admission webhook "mutate.pods.gpuadmit.io" denied the request' in refused.stderr
    assert "[NodeNameNotAllowed] spec.nodeName" in refused.stderr


def test_a_gpu_job_is_suspended_in_a_managed_namespace_only(setup: Setup) -> None:
    suspended = setup.kubectl.create(gpu_job("team-managed", "finetune"))
    assert suspended["spec"]["suspend"] is True
    assert suspended["metadata"]["annotations"]["gpuadmit.io/suspended-by"] == "admission-webhook"
    untouched = setup.kubectl.create(gpu_job("team-plain", "finetune"))
    assert untouched["spec"].get("suspend") is not True


def test_with_the_operator_down_fail_refuses_pods_of_managed_namespaces_but_not_the_operators(setup: Setup) -> None:
    setup.operator.stop()
    refused = setup.kubectl.run("create", "-f", "-", stdin=json.dumps(gpu_pod("team-managed", "while-down")))
    assert refused.returncode == 1 and "mutate.pods.gpuadmit.io" in refused.stderr
    setup.kubectl.create(gpu_pod("team-plain", "while-down"))  # not a managed namespace: not called
    own = setup.kubectl.create(gpu_pod(OPERATOR_NAMESPACE, "gpuadmit-operator", gpus=0))
    assert own["metadata"]["name"] == "gpuadmit-operator"  # the operator can always come back


def test_kubectl_objects_are_held_by_the_webhooks_and_released_by_the_operator(tmp_path: Path) -> None:
    """The whole path with nothing played but the Job and ReplicaSet controllers: a GPU Job and a
    ReplicaSet written with kubectl as a tenant writes them (no suspend, no gate), held by the
    webhooks, mirrored, admitted and released by the operator onto its reserved node."""
    from gpuadmit.core.pods import pinned_node
    from tests.native_controllers import NativeControllers

    with Cluster.start(tmp_path / "cluster") as cluster:  # its scheduler binds what is released
        kubectl = Kubectl(cluster.kubeconfig)
        cluster.add_gpu_nodes(1, gpus=8)
        cluster.apply_policy({"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0}})
        kubectl.create({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "team-managed", "labels": {MANAGED_LABEL: "true"}}})
        operator = webhook_operator(cluster.kubeconfig, tmp_path / "operator", pod_namespace=None)
        try:
            operator.launch()
            with NativeControllers.from_kubeconfig(cluster.kubeconfig, deployments=False, statefulsets=False):
                job = gpu_job("team-managed", "train")
                job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 2
                assert kubectl.create(job)["spec"]["suspend"] is True
                rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "team-managed"},
                      "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
                          "metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "main", "image": "vllm/vllm-openai:v0.6.0",
                                                   "resources": {"limits": {"nvidia.com/gpu": 2}}}]}}}}
                assert "schedulingGates" not in kubectl.create(rs)["spec"]["template"]["spec"]

                def released(prefix: str, count: int) -> list[dict[str, Any]] | None:
                    pods = [p for p in cluster.all_pods() if p["metadata"]["namespace"] == "team-managed"
                            and p["metadata"]["name"].startswith(prefix)]
                    done = len(pods) == count and all(not p["spec"].get("schedulingGates") and pinned_node(p["spec"])
                                                      and p["spec"].get("nodeName") for p in pods)
                    return pods if done else None

                job_pods = wait_until(lambda: released("train-", 2), 60, what="the Job's pods released and bound")
                web_pods = wait_until(lambda: released("web-", 1), 60, what="the ReplicaSet's pod released and bound")
                shown = json.loads(kubectl.run("get", "job", "train", "-n", "team-managed", "-o", "json").stdout)
                assert shown["spec"]["suspend"] is False  # unsuspended by the operator on admission
                assert {p["spec"]["nodeName"] for p in job_pods + web_pods} == {"gpu-node-0"}
        finally:
            operator.stop()
