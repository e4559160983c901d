"""Hostile tenants against the real `gpuadmit run` process on the emulated API server: poison
templates are rejected InvalidSpec one by one while another tenant's work is still admitted, and
a squatted pod name fails its workload instead of holding GPUs for a pod that is not ours."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e_harness import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.emulator]


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels):
        value = {"a": value}
    return value


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "image": "busybox", **fields}


# name -> (template, the field its InvalidSpec message must start with)
POISON: dict[str, tuple[dict[str, Any], str]] = {
    "resources-junk": ({"spec": {"containers": [container(resources="junk")]}}, "spec.template.spec.containers[0].resources"),
    "resources-list": ({"spec": {"containers": [container(resources=["a"])]}}, "spec.template.spec.containers[0].resources"),
    "limits-string": ({"spec": {"containers": [container(resources={"limits": "8"})]}},
                      "spec.template.spec.containers[0].resources.limits"),
    "init-resources": ({"spec": {"containers": [container()], "initContainers": [container(resources="x")]}},
                       "spec.template.spec.initContainers[0].resources"),
    "labels-list": ({"metadata": {"labels": ["a"]}, "spec": {"containers": [container()]}}, "spec.template.metadata.labels"),
    "annotations-list": ({"metadata": {"annotations": ["a"]}, "spec": {"containers": [container()]}},
                         "spec.template.metadata.annotations"),
    "bad-label-value": ({"metadata": {"labels": {"team": "not a value"}}, "spec": {"containers": [container()]}},
                        'spec.template.metadata.labels["team"]'),
    "deep": ({"spec": {"containers": [container()], "affinity": nested(300)}}, "spec.template"),
}
LONG_NAME = "x" * 64
POLICY = {"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0}}


def phase_of(cluster: Cluster, namespace: str, name: str) -> dict:
    return cluster.get_workload(namespace, name).get("status") or {}


def test_poison_workloads_are_rejected_one_by_one_while_another_tenant_is_admitted(cluster, operator_factory) -> None:
    cluster.add_gpu_nodes(1, gpus=8)
    cluster.apply_policy(POLICY)
    operator = operator_factory()
    for name, (template, _) in POISON.items():
        cluster.create_workload("mallory", name, gpus=1, template=template)
    cluster.create_workload("mallory", LONG_NAME, gpus=1)
    cluster.create_workload("alice", "train", gpus=4)

    cluster.wait_for_phase("alice", "train", "Admitted")
    wait_until(lambda: len(cluster.pods_of("alice", "train")) == 1, what="alice's pod")
    for name, (_, field) in POISON.items():
        status = cluster.wait_for_phase("mallory", name, "Rejected")
        assert status["reason"] == "InvalidSpec" and status["message"].startswith(field + ":"), (name, status)
    status = cluster.wait_for_phase("mallory", LONG_NAME, "Rejected")
    assert status["reason"] == "InvalidSpec" and status["message"].startswith("metadata.name:"), status
    assert cluster.pods_of("mallory", LONG_NAME) == []

    # The loop keeps deciding: later work is admitted, the operator stays ready, no cycle failed.
    cluster.create_workload("alice", "eval", gpus=2)
    cluster.wait_for_phase("alice", "eval", "Admitted")
    readiness = operator.readiness()
    assert readiness["status"] == 200 and readiness["failed_cycles_in_a_row"] == 0, readiness
    metrics = operator.metrics()
    assert re.search(r"^gpuadmit_failed_cycles_total 0\.0$", metrics, re.MULTILINE), metrics[:2000]
    assert "Scheduling cycle failed" not in operator.log_tail(200_000)


def test_a_squatted_pod_name_holds_no_gpus_and_foreign_pods_are_left_alone(cluster, operator_factory) -> None:
    cluster.add_gpu_nodes(1, gpus=8)
    cluster.apply_policy(POLICY)
    cluster.ensure_namespace("bob")
    # Mallory's pod takes the name gpuadmit will give bob's replica; a ReplicaSet's pod carries our label.
    cluster.core.create_namespaced_pod("bob", {
        "metadata": {"name": "train-0"}, "spec": {"containers": [container()]}})
    cluster.core.create_namespaced_pod("bob", {
        "metadata": {"name": "web-7d9f-abcde", "labels": {"gpuadmit.io/workload": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f",
                                          "uid": "0c0ffee0-0000-4000-8000-000000000001", "controller": True}]},
        "spec": {"containers": [container()]}})
    operator = operator_factory()
    cluster.create_workload("bob", "train", gpus=8)

    status = cluster.wait_for_phase("bob", "train", "Failed")
    assert status["reason"] == "PodNameTaken" and "bob/train-0" in status["message"], status
    # Its 8 GPUs are free: the next workload gets them (on the only node).
    cluster.create_workload("bob", "after", gpus=8)
    cluster.wait_for_phase("bob", "after", "Admitted")
    wait_until(lambda: len(cluster.pods_of("bob", "after")) == 1, what="the next workload's pod")
    names = {pod.metadata.name: pod.metadata.deletion_timestamp for pod in cluster.core.list_namespaced_pod("bob").items}
    assert names == {"train-0": None, "web-7d9f-abcde": None, "after-0": None}
    assert 'gpuadmit_workloads_failed_total{reason="PodNameTaken"} 1.0' in operator.metrics()
