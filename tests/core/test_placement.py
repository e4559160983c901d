"""status.placement: one reader for the parser, the loop and the invariant checker."""

from __future__ import annotations

import pytest

from gpuadmit.core.model import PlacementEntry
from gpuadmit.core.placement import placement_of, read_placement


def test_a_placement_that_accounts_for_every_replica_has_no_problem() -> None:
    recorded = read_placement([{"node": "a", "gpus": 4, "replicas": 2}, {"node": "b", "gpus": 2}], 2, 3)
    assert recorded.entries == (PlacementEntry("a", 4, 2), PlacementEntry("b", 2, 1))  # b's replicas: 2 // 2
    assert (recorded.problem, recorded.replicas) == (None, 3)
    assert read_placement([{"node": "a", "gpus": 4.0}], 4, 1).problem is None  # JSON does not tell 4 from 4.0


@pytest.mark.parametrize(
    ("value", "gpus", "replicas", "entries", "problem"),
    [
        (None, 1, 1, (), "status.placement is empty"),
        ([], 1, 1, (), "status.placement is empty"),
        ({"node": "a", "gpus": 1}, 1, 1, (), "status.placement is a dict, not a list"),
        ([{"node": "a", "gpus": 2, "replicas": 1}], 2, 2, (PlacementEntry("a", 2, 1),), "places 1 of the 2 replicas"),
        ([{"node": "a", "gpus": 3, "replicas": 1}], 2, 1, (PlacementEntry("a", 3, 1),), "holds 3 GPUs on a for 1 replicas of 2"),
        ([{"node": "a", "gpus": "2"}, {"node": "b", "gpus": 2}], 2, 2, (PlacementEntry("b", 2, 1),), "status.placement[0] is not"),
        (["x", {"node": "", "gpus": 2}, {"node": "b", "gpus": 0}], 2, 1, (), "places 0 of the 1 replicas"),
        ([{"node": "a", "gpus": 2}, {"node": "a", "gpus": 2}], 2, 2, (PlacementEntry("a", 2, 1),) * 2, "lists node a twice"),
        ([{"node": "a", "gpus": 2, "replicas": "two"}], 2, 1, (PlacementEntry("a", 2, 1),), "replicas is not a positive"),
        ([{"node": "a", "gpus": 2}], None, 1, (PlacementEntry("a", 2, 2),), "spec.gpus is not a positive whole number"),
    ],
)
def test_a_placement_that_does_not_add_up_says_why(value, gpus, replicas, entries, problem) -> None:
    recorded = read_placement(value, gpus, replicas)
    assert recorded.entries == entries
    assert recorded.problem is not None and problem in recorded.problem


def test_placement_of_an_object_checks_against_its_spec_with_the_crd_default_of_one_replica() -> None:
    obj = {"spec": {"gpus": 2}, "status": {"phase": "Running", "placement": [{"node": "a", "gpus": 2}]}}
    assert placement_of(obj).problem is None
    obj["spec"]["replicas"] = 2
    assert "places 1 of the 2 replicas" in (placement_of(obj).problem or "")
    assert placement_of({"status": "junk"}).entries == ()
