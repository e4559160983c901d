"""Issue 12, "Reliability", driven with kubectl (the setting of ``tests.native.scenario``):

- work that waits while the operator is down is decided after the restart: a Job held (suspended)
  and queued before the outage is admitted once the operator is back, as room freed during the
  outage allows; a ReplicaSet's pod whose create the webhook refused during the outage
  (``failurePolicy: Fail``, no answer) is created when the operator is back, gated, and released;
- a gate removed by hand: the pod runs unmanaged, its GPUs count as used capacity (a Job needing
  them stays queued until it goes), it gets one Warning Event ``RunsUnmanaged``, and its mirror
  is Rejected with that reason (reserving nothing);
- a suspend removed by hand: the Job controller's pods arrive gated and stay at their gate until
  the Job's mirror is admitted.
- with ``--native-webhook-failure-policy Ignore``, a pod made during an outage is stored unheld:
  back, the operator counts it as used capacity, warns once and makes no mirror for it.

That a restart releases nothing twice is tested by tests/controller/test_native_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpuadmit.core.native import ADMISSION_GATE
from gpuadmit.core.pods import pinned_node
from tests.native.scenario import (
    MANAGED,
    MARKS,
    NODE,
    PLAIN,
    gpu_container,
    inference_replicaset,
    started_scenario,
    training_job,
)

pytestmark = MARKS


def blocker(gpus: int) -> dict[str, object]:
    """A GPU pod of the plain namespace (no webhook there): used capacity gpuadmit does not decide."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "blocker", "namespace": PLAIN},
            "spec": {"containers": [gpu_container(gpus, "busybox", ["sleep", "3600"])]}}


def test_work_waiting_through_an_operator_outage_is_decided_after_the_restart(tmp_path: Path) -> None:
    with started_scenario(tmp_path, gpus=4) as scenario:
        kubectl = scenario.kubectl
        kubectl.bind(kubectl.create(blocker(4)), NODE)
        kubectl.create(training_job("train", parallelism=2, gpus=1))
        queued = scenario.until(scenario.mirror_in("job-train", {"Queued"}), "job-train queued")
        assert queued["status"]["reason"] == "InsufficientCapacity"
        assert scenario.job("train")["spec"]["suspend"] is True

        scenario.operator.stop()
        kubectl.ok("delete", "pod", "blocker", "-n", PLAIN)  # room returns while nobody decides
        kubectl.create(inference_replicaset("serve", gpus=2))  # the ReplicaSet is stored; its pod is refused
        for _ in range(3):
            scenario.controllers.step()
            scenario.check_invariants()
        assert scenario.job("train")["spec"]["suspend"] is True  # nothing decided while down
        assert not scenario.pods_of("ReplicaSet", "serve")
        assert scenario.controllers.refused and "mutate.pods.gpuadmit.io" in scenario.controllers.refused[-1]

        scenario.operator.launch()
        scenario.until(lambda: scenario.job("train")["spec"].get("suspend") is False, "train unsuspended after the restart")
        scenario.until(scenario.bound("Job", "train", 2), "train's pods bound")
        served = scenario.until(scenario.bound("ReplicaSet", "serve", 1), "serve's pod bound")
        created = next(p for p in scenario.controllers.created if p["metadata"]["name"] == served[0]["metadata"]["name"])
        assert created["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}]  # held at create, as before the outage
        assert pinned_node(served[0]["spec"]) == NODE


def test_a_gate_or_a_suspend_removed_by_hand(tmp_path: Path) -> None:
    with started_scenario(tmp_path, gpus=4) as scenario:
        kubectl = scenario.kubectl
        kubectl.bind(kubectl.create(blocker(4)), NODE)
        sneaky = kubectl.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky", "namespace": MANAGED},
                                 "spec": {"containers": [gpu_container(2, "pytorch/pytorch:2.4.0", ["python", "x.py"])]}})
        assert sneaky["spec"]["schedulingGates"] == [{"name": ADMISSION_GATE}]
        scenario.until(scenario.mirror_in("pod-sneaky", {"Queued"}), "sneaky's mirror queued")

        # The gate removed by hand: the pod runs unmanaged (kube-scheduler binds it where it fits).
        kubectl.ok("patch", "pod", "sneaky", "-n", MANAGED, "--type=json",
                   "-p", json.dumps([{"op": "remove", "path": "/spec/schedulingGates"}]))
        kubectl.ok("delete", "pod", "blocker", "-n", PLAIN)
        scenario.until(lambda: kubectl.get("pod", "sneaky", "-n", MANAGED)["spec"].get("nodeName"), "sneaky bound")
        scenario.until(lambda: ("Warning", "RunsUnmanaged") in scenario.events(MANAGED, "Pod", "sneaky"), "the Warning")
        let_go = scenario.until(scenario.mirror_in("pod-sneaky", {"Rejected"}), "sneaky's mirror rejected")
        assert let_go["status"]["reason"] == "RunsUnmanaged" and not let_go["status"].get("placement")

        # Its GPUs count as used: a Job needing all four waits, its suspend then removed by hand:
        # the Job controller's pods arrive gated and stay at the gate.
        kubectl.create(training_job("train", parallelism=2, gpus=2))
        scenario.until(scenario.mirror_in("job-train", {"Queued"}), "job-train queued behind the unmanaged pod")
        kubectl.ok("patch", "job", "train", "-n", MANAGED, "--type=merge", "-p", json.dumps({"spec": {"suspend": False}}))
        for _ in range(5):
            scenario.controllers.step()
            scenario.check_invariants()
        pods = scenario.pods_of("Job", "train")
        assert len(pods) == 2 and all(p["spec"].get("schedulingGates") == [{"name": ADMISSION_GATE}] for p in pods)
        assert (scenario.mirror("job-train") or {}).get("status", {}).get("phase") == "Queued"
        assert scenario.events(MANAGED, "Pod", "sneaky").count(("Warning", "RunsUnmanaged")) == 1  # told once

        # The unmanaged pod goes: the Job is admitted, and its waiting pods released.
        kubectl.ok("delete", "pod", "sneaky", "-n", MANAGED)
        scenario.until(scenario.bound("Job", "train", 2), "train's pods released and bound")
        assert scenario.mirror("pod-sneaky") is None  # collected with its pod


def test_with_failure_policy_ignore_a_pod_made_during_an_outage_runs_unmanaged(tmp_path: Path) -> None:
    """The other side of the knob (docs/webhooks.md): with ``Ignore`` the API server stores a GPU
    pod unheld while no webhook answers; back, the operator counts it as used and warns once."""
    with started_scenario(tmp_path, gpus=4, operator_args=("--native-webhook-failure-policy", "Ignore")) as scenario:
        kubectl = scenario.kubectl
        scenario.operator.stop()
        kubectl.create(inference_replicaset("serve", gpus=2))
        pods = scenario.until(scenario.bound("ReplicaSet", "serve", 1), "serve's pod stored unheld and bound")
        assert not pods[0]["spec"].get("schedulingGates") and pinned_node(pods[0]["spec"]) is None

        scenario.operator.launch()
        name = pods[0]["metadata"]["name"]
        scenario.until(lambda: ("Warning", "RunsUnmanaged") in scenario.events(MANAGED, "Pod", name), "the Warning")
        kubectl.create(training_job("train", parallelism=2, gpus=2))  # needs all four GPUs: two are the pod's
        queued = scenario.until(scenario.mirror_in("job-train", {"Queued"}), "job-train queued")
        assert queued["status"]["reason"] == "InsufficientCapacity"
        assert scenario.mirror(f"pod-{name}") is None  # no mirror for what runs unmanaged
