"""controller/status.py: decisions become statuses and conditions; only changes are written."""

from __future__ import annotations

from gpuadmit.controller import status as st
from gpuadmit.core.model import Action, Decision, PlacementEntry, Preemption, Reason
from gpuadmit.core.timefmt import format_rfc3339

NOW = 1_700_000_000.0


def workload(status: dict | None = None, generation: int = 3) -> dict:
    return {"metadata": {"name": "w", "namespace": "ns", "generation": generation}, "status": status or {}}


def queue(position: int = 2) -> Decision:
    return Decision("ns", "w", Action.QUEUE, Reason.INSUFFICIENT_CAPACITY, "waiting for 4 GPUs",
                    workload_class="training", class_reason="torchrun", margin_per_gpu_hour=0.8000000001,
                    queue_position=position)


def admit() -> Decision:
    return Decision("ns", "w", Action.ADMIT, Reason.ADMITTED, "admitted on node-a",
                    workload_class="inference", class_reason="vllm", margin_per_gpu_hour=3.6,
                    placement=(PlacementEntry("node-a", 4, 1),))


def condition(status: dict, condition_type: str) -> dict | None:
    return next((c for c in status.get("conditions", []) if c["type"] == condition_type), None)


def test_admit_status_carries_placement_time_and_conditions() -> None:
    desired = st.decision_status(workload(), admit(), NOW)
    assert desired["phase"] == "Admitted"
    assert desired["placement"] == [{"node": "node-a", "gpus": 4, "replicas": 1}]
    assert desired["admittedAt"] == format_rfc3339(NOW)
    assert desired["observedGeneration"] == 3
    assert desired["class"] == "inference" and desired["marginPerGPUHour"] == 3.6
    assert condition(desired, "Admitted")["status"] == "True"
    assert condition(desired, "Running")["status"] == "False"


def test_queue_status_clears_placement_and_keeps_position() -> None:
    held = workload({"phase": "Admitted", "placement": [{"node": "x", "gpus": 1}], "admittedAt": "2024-01-01T00:00:00Z"})
    desired = st.decision_status(held, queue(5), NOW)
    patch = st.status_patch(held["status"], desired)
    assert patch["phase"] == "Queued" and patch["queuePosition"] == 5
    assert patch["placement"] is None and patch["admittedAt"] is None  # merge patch null: removed
    assert desired["marginPerGPUHour"] == 0.8  # rounded: float noise is not a change
    assert condition(desired, "Admitted") == {
        "type": "Admitted", "status": "False", "reason": "InsufficientCapacity", "message": "waiting for 4 GPUs",
        "lastTransitionTime": format_rfc3339(NOW), "observedGeneration": 3,
    }


def test_reject_status_finishes_the_workload() -> None:
    decision = Decision("ns", "w", Action.REJECT, Reason.NO_NODE_CAN_FIT, "no node has 128 GPUs")
    desired = st.decision_status(workload(), decision, NOW)
    assert desired["phase"] == "Rejected"
    assert condition(desired, "Finished")["reason"] == "NoNodeCanFit"


def test_the_same_decision_twice_writes_nothing() -> None:
    first = st.decision_status(workload(), queue(), NOW)
    written = workload({k: v for k, v in first.items() if v is not None})
    again = st.decision_status(written, queue(), NOW + 100)
    assert st.status_patch(written["status"], again) == {}


def test_a_new_queue_position_writes_only_what_moved() -> None:
    first = st.decision_status(workload(), queue(7), NOW)
    written = workload({k: v for k, v in first.items() if v is not None})
    patch = st.status_patch(written["status"], st.decision_status(written, queue(6), NOW + 5))
    assert patch == {"queuePosition": 6, "queue": "6"}


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    conditions = st.set_condition([], "Admitted", False, "InsufficientCapacity", "a", NOW)
    same = st.set_condition(conditions, "Admitted", False, "InferenceReserve", "b", NOW + 60)
    flipped = st.set_condition(same, "Admitted", True, "Admitted", "c", NOW + 120)
    assert same[0]["lastTransitionTime"] == format_rfc3339(NOW) and same[0]["reason"] == "InferenceReserve"
    assert flipped[0]["lastTransitionTime"] == format_rfc3339(NOW + 120)
    assert len(flipped) == 1


def test_preemption_counts_names_the_preemptor_and_restarts_the_wait() -> None:
    held = workload({"phase": "Running", "preemptions": 2, "placement": [{"node": "n", "gpus": 8}]})
    desired = st.preempted_status(held, Preemption("ns", "w", preempted_by="ns2/chat"), NOW)
    assert desired["phase"] == "Preempted" and desired["preemptions"] == 3
    assert desired["preemptedBy"] == "ns2/chat" and "ns2/chat" in desired["message"]
    assert desired["placement"] is None and desired["queuedSince"] == format_rfc3339(NOW)
    assert condition(desired, "Admitted")["reason"] == "PreemptedByHigherMargin"


def pod(name: str, phase: str, deleting: bool = False) -> dict:
    metadata = {"name": name, **({"deletionTimestamp": "2024-01-01T00:00:00Z"} if deleting else {})}
    return {"metadata": metadata, "status": {"phase": phase}}


def test_phase_follows_the_pods() -> None:
    assert st.phase_from_pods([pod("a", "Running"), pod("b", "Running")], 2)[0] == "Running"
    assert st.phase_from_pods([pod("a", "Running"), pod("b", "Pending")], 2) is None
    assert st.phase_from_pods([pod("a", "Running")], 2) is None  # one replica still missing
    assert st.phase_from_pods([pod("a", "Succeeded"), pod("b", "Running")], 2)[0] == "Running"
    assert st.phase_from_pods([pod("a", "Succeeded"), pod("b", "Succeeded")], 2)[0] == "Succeeded"
    # One replica reads as English ("its pod", not "all 1 pods"), as kubectl describe shows it.
    assert st.phase_from_pods([pod("a", "Running")], 1)[2] == "its pod is running"
    assert st.phase_from_pods([pod("a", "Succeeded")], 1)[2] == "its pod succeeded"
    assert st.phase_from_pods([pod("a", "Running"), pod("b", "Running")], 2)[2] == "all 2 pods are running"
    failed = st.phase_from_pods([pod("a", "Failed"), pod("b", "Running")], 2)
    assert failed[0] == "Failed" and failed[1] == "PodFailed" and "a" in failed[2]
    assert st.phase_from_pods([pod("a", "Running", deleting=True), pod("b", "Running")], 2) is None


def test_pod_phase_status_finishes_terminal_phases_only() -> None:
    running = st.pods_phase_status(workload({"phase": "Admitted"}), "Running", "PodsRunning", "ok", NOW)
    assert condition(running, "Running")["status"] == "True" and condition(running, "Finished") is None
    done = st.pods_phase_status(workload({"phase": "Running"}), "Succeeded", "PodsSucceeded", "ok", NOW)
    assert condition(done, "Running")["status"] == "False" and condition(done, "Finished")["status"] == "True"


def test_policy_condition_names_the_bad_field() -> None:
    policy = {"metadata": {"name": "default", "generation": 4}, "status": {}}
    bad = st.policy_status(policy, "spec.pricePerGPUHour.training", "must be >= 0", NOW)
    accepted = condition(bad, "Accepted")
    assert accepted["status"] == "False" and "spec.pricePerGPUHour.training" in accepted["message"]
    good = st.policy_status(policy, None, "", NOW)
    assert condition(good, "Accepted")["status"] == "True" and good["observedGeneration"] == 4


def test_messages_are_bounded() -> None:
    decision = Decision("ns", "w", Action.REJECT, Reason.INVALID_SPEC, "x" * 10_000)
    desired = st.decision_status(workload(), decision, NOW)
    assert len(desired["message"]) <= st.MESSAGE_LIMIT


def test_an_invalid_spec_message_names_the_field() -> None:
    decision = Decision("ns", "w", Action.REJECT, Reason.INVALID_SPEC, "must list at least one container",
                        field="spec.template.spec.containers")
    desired = st.decision_status(workload(), decision, NOW)
    assert desired["message"] == "spec.template.spec.containers: must list at least one container"
    assert condition(desired, "Admitted")["message"] == desired["message"]


def test_an_accepted_policy_spec_is_recorded_and_survives_a_restart_while_the_spec_is_invalid() -> None:
    from gpuadmit.controller.loop import SchedulingLoop
    from gpuadmit.controller.status import policy_status

    good = {"metadata": {"name": "default", "generation": 1},
            "spec": {"pricePerGPUHour": {"inference": 9.0, "training": 3.0}}}
    accepted = policy_status(good, None, "", now=1000.0)
    assert accepted["acceptedSpec"] == good["spec"]
    broken = {"metadata": {"name": "default", "generation": 2}, "spec": {"pricePerGPUHour": {"inference": -1}},
              "status": accepted}
    refused = policy_status(broken, "spec.pricePerGPUHour.inference", "must not be negative", now=1001.0)
    assert "acceptedSpec" not in refused  # the record of the good spec is left as it is
    restored = SchedulingLoop._accepted_before_restart(broken)
    assert restored is not None and restored.price_per_gpu_hour["inference"] == 9.0
    assert SchedulingLoop._accepted_before_restart({**broken, "status": {}}) is None


def test_a_gpuquota_status_reports_usage_conflicts_and_overcommitment() -> None:
    from gpuadmit.core.errors import SpecError
    from gpuadmit.core.guarantee import ProductUsage, QuotaReport
    from gpuadmit.core.quota import Conflict

    obj = {"metadata": {"name": "research", "generation": 3}}
    report = QuotaReport("research", (ProductUsage("NVIDIA-H100", 8, 6, 2),), overcommitted=("NVIDIA-H100",))
    status = st.quota_status(obj, report, ["r1", "r2"], [], None, 1_800_000_000.0)
    assert (status["guaranteedGPUs"], status["usedGPUs"], status["lentGPUs"]) == (8, 6, 2)
    assert status["products"] == [{"product": "NVIDIA-H100", "guaranteed": 8, "used": 6, "lent": 2}]
    assert status["namespaces"] == ["r1", "r2"] and status["observedGeneration"] == 3
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "InForce")
    assert (conditions["Overcommitted"]["status"], conditions["Overcommitted"]["reason"]) == ("True", "GuaranteesExceedCapacity")
    assert "NVIDIA-H100" in conditions["Overcommitted"]["message"]

    conflict = Conflict("shared", kept="research", lost="everyone")
    status = st.quota_status(obj, report, ["r1"], [conflict], None, 1_800_000_000.0)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NamespaceConflict")
    assert "namespace shared is also matched by GPUQuota everyone, which is newer: this one applies there" in ready["message"]
    lost = st.quota_status({"metadata": {"name": "everyone"}}, None, [], [conflict], None, 1_800_000_000.0)
    assert "GPUQuota research, which is older and applies there" in lost["conditions"][0]["message"]

    invalid = st.quota_status(obj, None, [], [], SpecError("spec.maxGPUs", "must be a whole number"), 1_800_000_000.0)
    assert invalid["conditions"][0]["reason"] == "InvalidSpec" and "spec.maxGPUs" in invalid["conditions"][0]["message"]
    assert "usedGPUs" not in invalid
