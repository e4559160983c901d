"""A native unit admitted onto GPUs a preempted Job's pods still hold waits for them to go.

gpuadmit suspends a preempted Job and leaves the deleting of its pods to the Job controller (no
retry budget burnt), so in the cycle that preempts it those pods still run. A pod released then
would be pinned beside them: more GPUs asked of the node than it has, a pod kube-scheduler
reports Unschedulable, and one `tests/invariants.py` counts as an overcommit. It is released once
they are gone (the pod events trigger the next cycle)."""

from __future__ import annotations

from gpuadmit.controller.cache import JOB, POD, WORKLOAD
from gpuadmit.core.native import ADMISSION_GATE
from gpuadmit.core.pods import pinned_node
from tests.controller.test_native import MANAGED, base, gated_pod, job

REPLICASET = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "serve", "uid": "uid-rs", "controller": True}


async def test_a_pod_admitted_onto_a_preempted_jobs_gpus_waits_for_its_pods_to_go() -> None:
    cluster = base((JOB, job("train", parallelism=2, gpus=2)))
    await cluster.cycle()
    cluster.job_controller_creates_pods("train", 2, gpus=2)
    await cluster.cycle()
    assert all(pinned_node(cluster.get(POD, f"{MANAGED}/train-{i}")["spec"]) == "gpu-a" for i in range(2))

    serve = gated_pod("serve-x", 4, owner=REPLICASET)
    serve["spec"]["containers"][0].update(image="vllm/vllm-openai", command=["vllm", "serve", "m"])
    cluster.add(POD, serve)
    await cluster.cycle()  # the oracle is checked after every cycle
    assert cluster.get(WORKLOAD, f"{MANAGED}/job-train")["status"]["phase"] == "Preempted"
    assert cluster.get(WORKLOAD, f"{MANAGED}/pod-serve-x")["status"]["phase"] == "Admitted"
    waiting = cluster.get(POD, f"{MANAGED}/serve-x")
    assert waiting["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}] and pinned_node(waiting["spec"]) is None

    cluster.job_controller_removes_pods("train")
    await cluster.cycle()
    released = cluster.get(POD, f"{MANAGED}/serve-x")
    assert not released["spec"].get("schedulingGates") and pinned_node(released["spec"]) == "gpu-a"
