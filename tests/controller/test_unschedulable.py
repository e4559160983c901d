"""controller/unschedulable.py: which workloads a stuck pod requeues, when, and what they avoid."""

from __future__ import annotations

from typing import Any

from gpuadmit.controller.unschedulable import UnschedulableTracker, unschedulable_condition
from gpuadmit.core.pods import pinned_affinity
from gpuadmit.core.timefmt import format_rfc3339

NOW = 1_800_000_000.0


def pod(name: str, node: str, *, since: float | None, status: str = "False", reason: str = "Unschedulable",
        bound: bool = False, **metadata: Any) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": "PodScheduled", "status": status, "reason": reason, "message": "0/2 nodes are available: 2 Insufficient cpu."}
    if since is not None:
        condition["lastTransitionTime"] = format_rfc3339(since)
    spec: dict[str, Any] = {"affinity": pinned_affinity(None, node)}
    if bound:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "uid": f"uid-{name}", **metadata}, "spec": spec,
            "status": {"phase": "Pending", "conditions": [condition]}}


def test_only_a_pod_unschedulable_past_the_grace_period_requeues_its_workload() -> None:
    tracker = UnschedulableTracker(grace_seconds=120)
    pods = {"ns/late": [pod("late-0", "n1", since=NOW - 121)],
            "ns/early": [pod("early-0", "n2", since=NOW - 100)],
            "ns/fine": [pod("fine-0", "n3", since=NOW - 500, status="True", reason="")],
            "ns/bound": [pod("bound-0", "n4", since=NOW - 500, bound=True)],
            "ns/going": [pod("going-0", "n5", since=NOW - 500, deletionTimestamp="2027-01-01T00:00:00Z")]}
    overdue, next_due = tracker.overdue(pods, NOW)
    assert set(overdue) == {"ns/late"}
    reason, why = overdue["ns/late"]
    assert reason == "Unschedulable"
    assert why == "pod late-0 could not be scheduled on node n1 for 121s: 0/2 nodes are available: 2 Insufficient cpu."
    assert next_due == 20  # the early one is due in 20 s: the loop asks for a cycle then
    assert tracker.avoided_nodes(NOW) == {"ns/late": frozenset({"n1"})}


def test_the_avoided_node_is_forgotten_after_a_while() -> None:
    tracker = UnschedulableTracker(grace_seconds=10, avoid_seconds=600)
    tracker.overdue({"ns/w": [pod("w-0", "n1", since=NOW - 60)]}, NOW)
    assert tracker.avoided_nodes(NOW + 599) == {"ns/w": frozenset({"n1"})}
    assert tracker.avoided_nodes(NOW + 601) == {}


def test_without_a_readable_time_the_wait_counts_from_when_it_was_first_seen() -> None:
    tracker = UnschedulableTracker(grace_seconds=10)
    stuck = {"ns/w": [pod("w-0", "n1", since=None)]}
    assert tracker.overdue(stuck, NOW) == ({}, 10)
    assert tracker.overdue(stuck, NOW + 5) == ({}, 5)
    assert set(tracker.overdue(stuck, NOW + 11)[0]) == {"ns/w"}


def test_the_condition_is_read_only_from_unbound_pods() -> None:
    assert unschedulable_condition(pod("p", "n", since=NOW)) == (NOW, "0/2 nodes are available: 2 Insufficient cpu.")
    assert unschedulable_condition(pod("p", "n", since=NOW, bound=True)) is None
    assert unschedulable_condition(pod("p", "n", since=NOW, reason="SchedulerError")) is None
    assert unschedulable_condition({"status": {"conditions": "junk"}}) is None
