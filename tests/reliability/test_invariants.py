"""The invariant checker itself: it finds each kind of violation, and stays quiet on a sound cluster."""

from __future__ import annotations

import copy

from tests.invariants import (
    BAD_STATUS, DECIDED_TWICE, FINAL_REVERTED, LOST, NO_DECISION, OVERCOMMIT, POD_DUPLICATED, PODS_MISMATCH,
    ClusterState, DecisionHistory, InvariantChecker, check_state,
)

GPU = "nvidia.com/gpu"


def node(name: str, gpus: int = 8) -> dict:
    return {"metadata": {"name": name}, "status": {"allocatable": {GPU: str(gpus)}}}


def workload(name: str, phase: str | None = None, placement: list | None = None, gpus: int = 4, replicas: int = 1,
             uid: str | None = None, admitted_at: str | None = "2027-01-01T00:00:00Z", **status: object) -> dict:
    obj = {"metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}",
                        "creationTimestamp": "2027-01-01T00:00:00Z"},
           "spec": {"gpus": gpus, "replicas": replicas}}
    if phase:
        obj["status"] = {"phase": phase, "reason": "R", "message": "m", **status}
        if placement:
            obj["status"]["placement"] = [{"node": n, "gpus": g} for n, g in placement]
            obj["status"]["admittedAt"] = admitted_at
    return obj


def pod(workload_name: str, index: int, node_name: str, gpus: int, phase: str = "Running", uid: str | None = None) -> dict:
    return {"metadata": {"name": f"{workload_name}-{index}", "namespace": "ns", "uid": uid or f"pod-{workload_name}-{index}",
                         "labels": {"gpuadmit.io/workload": workload_name},
                         "ownerReferences": [{"uid": f"uid-{workload_name}"}]},
            "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {GPU: str(gpus)}}}]},
            "status": {"phase": phase}}


def kinds(violations: list) -> set[str]:
    return {v.invariant for v in violations}


def sound_state() -> ClusterState:
    workloads = [workload("a", "Running", [("n0", 8)], gpus=4, replicas=2), workload("b", "Admitted", [("n1", 4)]),
                 workload("c", "Queued"), workload("d", "Rejected")]
    pods = [pod("a", 0, "n0", 4), pod("a", 1, "n0", 4), pod("b", 0, "n1", 4), pod("old", 0, "n1", 8, phase="Succeeded")]
    return ClusterState(nodes=[node("n0"), node("n1")], pods=pods, workloads=workloads)


def test_a_sound_cluster_has_no_violations() -> None:
    assert check_state(sound_state(), expected=["ns/a", "ns/b", "ns/c", "ns/d"], settled=True) == []


def test_overcommit_counts_pods_and_the_unfilled_part_of_reservations() -> None:
    state = sound_state()
    state.workloads.append(workload("e", "Admitted", [("n1", 4)]))  # no pods yet: 4 (b) + 4 (e) = 8, fine
    assert kinds(check_state(state, settled=True)) - {PODS_MISMATCH} == set()
    state.pods.append(pod("stranger", 0, "n1", 1))  # a pod that is not ours also takes a GPU
    assert kinds(check_state(state)) == set()  # pods alone fit (5), reservations alone fit (8)...
    found = [v for v in check_state(state, settled=True) if v.invariant == OVERCOMMIT]
    assert [(v.subject, "pods and reservations" in v.message) for v in found] == [("n1", True)]  # ...together not


def test_physical_and_promised_overcommit_are_caught_at_any_time() -> None:
    state = sound_state()
    state.pods.append(pod("c", 0, "n1", 8))  # a queued workload's pod: 4 (b) + 8 > 8
    assert [v.subject for v in check_state(state)] == ["n1"]
    state = sound_state()
    state.workloads.append(workload("e", "Admitted", [("n0", 1)], gpus=1))  # a promise on a full node
    assert [(v.subject, "reservations promise 9" in v.message) for v in check_state(state)] == [("n0", True)]


def test_a_reservation_seen_in_only_one_of_two_reads_is_not_counted() -> None:
    state = sound_state()
    state.workloads.append(workload("e", "Admitted", [("n1", 8)]))
    state.workloads_again = [w for w in state.workloads if w["metadata"]["name"] != "e"]  # e finished in between
    assert OVERCOMMIT not in kinds(check_state(state))
    state.workloads_again = copy.deepcopy(state.workloads)
    assert OVERCOMMIT in kinds(check_state(state))


def test_status_and_pods_and_loss_are_checked() -> None:
    state = sound_state()
    state.workloads[1]["status"]["placement"] = [{"node": "n1", "gpus": 2}]  # 2 placed for 4 requested
    state.workloads[2]["status"]["message"] = 'Traceback (most recent call last):\n  File "x.py"'
    state.workloads.append(workload("undecided"))
    found = check_state(state, expected=["ns/a", "ns/gone"], settled=True)
    assert {(v.invariant, v.subject) for v in found} >= {
        (BAD_STATUS, "ns/b"), (BAD_STATUS, "ns/c"), (NO_DECISION, "ns/undecided"), (LOST, "ns/gone"), (PODS_MISMATCH, "ns/b")}
    # Before the cluster settles, a young undecided workload is fine.
    assert NO_DECISION not in kinds(check_state(state, decision_grace_seconds=10**12))


def test_history_catches_a_second_decision_for_the_same_state() -> None:
    history = DecisionHistory()
    history.record_workload(workload("a", "Admitted", [("n0", 4)]))
    history.record_workload(workload("a", "Running", [("n0", 4)]))
    assert history.violations == []
    history.record_workload(workload("a", "Admitted", [("n1", 4)]))
    history.record_workload(workload("a", "Admitted", [("n1", 4)], admitted_at="2027-01-01T00:05:00Z"))
    assert [v.invariant for v in history.violations] == [DECIDED_TWICE, DECIDED_TWICE]


def test_history_allows_readmission_after_preemption_and_catches_revived_finals() -> None:
    history = DecisionHistory()
    for version in (workload("a", "Admitted", [("n0", 4)]), workload("a", "Preempted"), workload("a", "Queued"),
                    workload("a", "Admitted", [("n1", 4)], admitted_at="2027-01-01T01:00:00Z"),
                    workload("a", "Succeeded"), workload("a", "Queued")):
        history.record_workload(version)
    assert [v.invariant for v in history.violations] == [FINAL_REVERTED]
    history.record_workload(workload("a", "Admitted", [("n0", 4)], uid="a-recreated"))  # a new object: fine
    assert len(history.violations) == 1


def test_pods_created_more_often_than_admitted_are_duplicates() -> None:
    history = DecisionHistory()
    history.record_pod(pod("a", 0, "n0", 4, uid="first"))  # the pod watch may deliver before the workload's
    history.record_workload(workload("a", "Admitted", [("n0", 4)]))
    history.record_pod(pod("a", 0, "n0", 4, uid="first"))
    assert history.duplicated_pods() == []
    history.record_pod(pod("a", 0, "n0", 4, uid="second"))
    assert [v.invariant for v in history.duplicated_pods()] == [POD_DUPLICATED]
    history.record_workload(workload("a", "Queued"))
    history.record_workload(workload("a", "Admitted", [("n1", 4)], admitted_at="later"))
    assert history.duplicated_pods() == []  # two admissions may create the pod twice


def test_checker_accumulates_across_checks() -> None:
    states = [sound_state(), sound_state()]
    states[1].workloads.pop(0)
    checker = InvariantChecker(read_state=lambda: states.pop(0))
    checker.expect(["ns/a"])
    assert checker.check() == []
    assert [v.invariant for v in checker.check()] == [LOST]
    assert checker.checks_run == 2 and len(checker.violations) == 1
