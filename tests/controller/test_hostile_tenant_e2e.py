"""A hostile tenant against the real `gpuadmit run` on the emulated API server, with the variants
the first poison and pod-security tests did not try: every template is rejected InvalidSpec naming
its field, none becomes a pod, a template's forged owner reference is not copied, two squatted
replica names hold no GPUs, and another tenant's work keeps being decided. The invariant checker
then finds no GPU held without a pod of its workload and no overcommit."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e_harness import Cluster, wait_until
from tests.invariants import ApiReader, check_state

pytestmark = [pytest.mark.e2e, pytest.mark.emulator]

C0 = "spec.template.spec.containers[0]"
POLICY = {"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0}}


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "c", "image": "busybox", **fields}


def pod_spec(**fields: Any) -> dict[str, Any]:
    return {"spec": {"containers": [container()], **fields}}


def deep_list(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


# name -> (template, the field its InvalidSpec message must start with)
HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    # Accounting bypasses.
    "envfrom-no-prefix": ({"spec": {"containers": [container(envFrom=[{"configMapRef": {"name": "devices"}}])]}},
                          f"{C0}.envFrom[0].prefix"),
    "device-mount": ({"spec": {"containers": [container(volumeMounts=[
        {"name": "v", "mountPath": "/var/run/nvidia-container-devices/all"}])], "volumes": [{"name": "v", "emptyDir": {}}]}},
        f"{C0}.volumeMounts[0].mountPath"),
    "cdi-annotation": ({"metadata": {"annotations": {"cdi.k8s.io/gpus": "nvidia.com/gpu=all"}}, **pod_spec()},
                       'spec.template.metadata.annotations["cdi.k8s.io/gpus"]'),
    "init-gpu-limits": (pod_spec(initContainers=[container(name="i", resources={"limits": {"nvidia.com/gpu": "8"}})]),
                        'spec.template.spec.initContainers[0].resources.limits["nvidia.com/gpu"]'),
    "container-claims": ({"spec": {"containers": [container(resources={"claims": [{"name": "gpu"}]})]}},
                         f"{C0}.resources.claims"),
    "gpu-key-space": ({"spec": {"containers": [container(resources={"limits": {" nvidia.com/gpu": "8"}})]}},
                      f'{C0}.resources.limits[" nvidia.com/gpu"]'),
    # Escalation.
    "privileged-ephemeral": (pod_spec(ephemeralContainers=[container(name="e", securityContext={"privileged": True})]),
                             "spec.template.spec.ephemeralContainers[0].securityContext.privileged"),
    "init-caps": (pod_spec(initContainers=[container(name="i", securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})]),
                  "spec.template.spec.initContainers[0].securityContext.capabilities.add[0]"),
    "caps-string": ({"spec": {"containers": [container(securityContext={"capabilities": {"add": "SYS_ADMIN"}})]}},
                    f"{C0}.securityContext.capabilities.add"),
    # Poison shapes.
    "quantity-dict": ({"spec": {"containers": [container(resources={"limits": {"cpu": {"a": 1}}})]}},
                      f'{C0}.resources.limits["cpu"]'),
    "quantity-1e400": ({"spec": {"containers": [container(resources={"limits": {"memory": "1e400"}})]}},
                       f'{C0}.resources.limits["memory"]'),
    "quantity-400-digits": ({"spec": {"containers": [container(resources={"requests": {"cpu": 10**400}})]}},
                            f'{C0}.resources.requests["cpu"]'),
    "env-map": ({"spec": {"containers": [container(env={"A": "1"})]}}, f"{C0}.env"),
    "ports-string": ({"spec": {"containers": [container(ports="80")]}}, f"{C0}.ports"),
    "volumes-map": (pod_spec(volumes={"v": {"emptyDir": {}}}), "spec.template.spec.volumes"),
    "containers-map": ({"spec": {"containers": {"name": "c", "image": "busybox"}}}, "spec.template.spec.containers"),
    "metadata-list": ({"metadata": ["a"], **pod_spec()}, "spec.template.metadata"),
    "label-chars": ({"metadata": {"labels": {"team": "a/b"}}, **pod_spec()}, 'spec.template.metadata.labels["team"]'),
    "env-deep": ({"spec": {"containers": [container(env=[{"name": "A", "value": deep_list(40)}])]}}, "spec.template"),
    "huge-annotation": ({"metadata": {"annotations": {"a": "x" * 300_000}}, **pod_spec()}, "spec.template.metadata.annotations"),
}


def test_a_hostile_tenant_gets_no_pod_no_gpu_and_stops_nobody(cluster: Cluster, operator_factory) -> None:
    cluster.add_gpu_nodes(1, gpus=8)
    cluster.apply_policy(POLICY)
    cluster.ensure_namespace("mallory")
    cluster.ensure_namespace("alice")
    cluster.core.create_namespaced_config_map("mallory", {"metadata": {"name": "devices"},
                                                          "data": {"NVIDIA_VISIBLE_DEVICES": "all"}})
    for squatted in ("gang-0", "gang-1"):  # both names gpuadmit would give a 2-replica workload
        cluster.core.create_namespaced_pod("mallory", {"metadata": {"name": squatted}, "spec": {"containers": [container()]}})
    operator = operator_factory()
    alice = cluster.create_workload("alice", "train", gpus=4)
    for name, (template, _) in HOSTILE.items():
        cluster.create_workload("mallory", name, gpus=1, template=template)
    cluster.create_workload("mallory", "x" * 64, gpus=1)
    cluster.create_workload("mallory", "gang", gpus=1, replicas=2)
    # An owner reference forged in the template, pointing at alice's workload: not copied to the pod.
    forged = [{"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": "train",
               "uid": alice["metadata"]["uid"], "controller": True}]
    cluster.create_workload("mallory", "forger", gpus=1, template={"metadata": {"ownerReferences": forged}, **pod_spec()})

    for name, (_, field) in HOSTILE.items():
        status = cluster.wait_for_phase("mallory", name, "Rejected")
        assert status["reason"] == "InvalidSpec" and status["message"].startswith(field + ":"), (name, status)
    status = cluster.wait_for_phase("mallory", "x" * 64, "Rejected")
    assert status["message"].startswith("metadata.name:"), status
    status = cluster.wait_for_phase("mallory", "gang", "Failed")
    assert status["reason"] == "PodNameTaken", status

    cluster.wait_for_phase("alice", "train", "Admitted")
    cluster.wait_for_phase("mallory", "forger", "Admitted")
    wait_until(lambda: len(cluster.pods_of("mallory", "forger")) == 1, what="the forger's pod")
    (forger_pod,) = cluster.pods_of("mallory", "forger")
    owners = forger_pod["metadata"]["ownerReferences"]
    assert [(o["name"], o["uid"]) for o in owners] == [("forger", cluster.get_workload("mallory", "forger")["metadata"]["uid"])]

    # The gang's 2 GPUs came back: 4 + 1 held, 3 free, and alice's next 3-GPU workload fits.
    cluster.create_workload("alice", "eval", gpus=3)
    cluster.wait_for_phase("alice", "eval", "Admitted")
    wait_until(lambda: len(cluster.pods_of("alice", "eval")) == 1 and len(cluster.pods_of("alice", "train")) == 1,
               what="alice's pods")
    mallory_pods = {pod.metadata.name for pod in cluster.core.list_namespaced_pod("mallory").items}
    assert mallory_pods == {"gang-0", "gang-1", "forger-0"}

    violations = check_state(ApiReader(cluster.core.api_client).state(), settled=True)
    assert violations == [], violations
    readiness = operator.readiness()
    assert readiness["status"] == 200 and readiness["failed_cycles_in_a_row"] == 0, readiness
    assert re.search(r"^gpuadmit_failed_cycles_total 0\.0$", operator.metrics(), re.MULTILINE)
    assert "Traceback" not in operator.log_tail(500_000)


def test_a_template_edited_after_admission_is_judged_before_its_missing_pod_is_built(cluster: Cluster, operator_factory) -> None:
    """The emulator calls no webhook, as a cluster whose webhook is down or not installed: the edits
    are stored. The parser leaves holding workloads alone, so the pod creator judges the template:
    an escalation and a poison shape each fail their workload naming the field (the poison ended
    as an InternalError with a traceback before), and their GPUs come back."""
    cluster.add_gpu_nodes(1, gpus=8)
    cluster.apply_policy(POLICY)
    operator_factory()
    edits = {
        "sleeper": ({"spec": {"containers": [container(securityContext={"privileged": True})]}},
                    f"{C0}.securityContext.privileged"),
        "poisoned": ({"spec": {"containers": [container(resources="junk")]}}, f"{C0}.resources"),
    }
    for name in edits:
        cluster.create_workload("mallory", name, gpus=4)
    for name in edits:
        cluster.wait_for_phase("mallory", name, "Admitted")
        wait_until(lambda name=name: len(cluster.pods_of("mallory", name)) == 1, what=f"{name}'s pod")
    for name, (template, _) in edits.items():
        cluster.custom.patch_namespaced_custom_object("gpuadmit.io", "v1alpha1", "mallory", "gpuworkloads", name,
                                                      {"spec": {"template": template}})
        cluster.core.delete_namespaced_pod(f"{name}-0", "mallory", grace_period_seconds=0)

    for name, (_, field) in edits.items():
        status = cluster.wait_for_phase("mallory", name, "Failed")
        assert status["reason"] == "PodRefused" and f"{field}:" in status["message"], status
        wait_until(lambda name=name: cluster.pods_of("mallory", name) == [], what=f"no pod of {name}")
    cluster.create_workload("alice", "train", gpus=8)  # every GPU is free again
    cluster.wait_for_phase("alice", "train", "Admitted")
    assert check_state(ApiReader(cluster.core.api_client).state(), settled=True) == []
