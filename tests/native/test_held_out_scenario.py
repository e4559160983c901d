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

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuadmit.core.native import ADMISSION_GATE
from gpuadmit.core.pods import pinned_node
from tests.native.scenario import (
    MANAGED,
    MARKS,
    NODE,
    PLAIN,
    Scenario,
    gpu_container,
    inference_replicaset,
    started_scenario,
    training_job,
)

pytestmark = MARKS


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    with started_scenario(tmp_path) as started:
        started.controllers.default_node = None  # unpinned pods are bound by the test (the pod elsewhere)
        yield started


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
    described = kubectl.ok("describe", "job", "train", "-n", MANAGED)  # the decisions, told on the Job itself
    assert all(reason in described for reason in ("Admitted", "PreemptedByHigherMargin")), described

    # Mirrors go with their owners.
    kubectl.ok("delete", "job", "train", "huge", "-n", MANAGED, "--cascade=background")
    scenario.until(lambda: scenario.mirror("job-train") is None and scenario.mirror("job-huge") is None, "Job mirrors collected")
    scenario.until(lambda: not scenario.pods_of("Job", "train"), "train's pods collected")

    # Elsewhere untouched throughout.
    solo_now = kubectl.get("pod", "solo", "-n", PLAIN)
    assert solo_now["metadata"]["resourceVersion"] != solo["metadata"]["resourceVersion"]  # the binding only
    assert not solo_now["spec"].get("affinity") and not solo_now["spec"].get("schedulingGates")
    assert scenario.checks > 5
