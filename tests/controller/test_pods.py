"""core/pods.py: the pods an admitted GPUWorkload gets are pinned, sized, owned and labelled."""

from __future__ import annotations

import copy

from gpuadmit.core.model import Action, Decision, PlacementEntry, Reason
from gpuadmit.core.pods import build_pods, replica_nodes


def workload(replicas: int = 2, gpus: int = 4, template: dict | None = None) -> dict:
    return {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUWorkload",
        "metadata": {"name": "train", "namespace": "team-a", "uid": "uid-123"},
        "spec": {
            "gpus": gpus,
            "replicas": replicas,
            "template": template if template is not None else {
                "metadata": {"labels": {"app": "llm"}, "annotations": {"note": "x"}},
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "busybox"},
                        {"name": "trainer", "image": "pytorch", "command": ["torchrun", "train.py"],
                         "resources": {"limits": {"nvidia.com/gpu": "4", "memory": "8Gi"}}},
                    ],
                    "nodeSelector": {"pool": "gpu"},
                },
            },
        },
    }


def admit(placement: tuple[PlacementEntry, ...], workload_class: str = "training") -> Decision:
    return Decision(namespace="team-a", name="train", action=Action.ADMIT, reason=Reason.ADMITTED,
                    message="admitted", workload_class=workload_class, placement=placement)


def gpus_of(container: dict) -> dict:
    resources = container.get("resources", {})
    return {section: resources.get(section, {}).get("nvidia.com/gpu") for section in ("limits", "requests")}


def test_one_pod_per_replica_named_by_index_and_pinned_to_its_node() -> None:
    decision = admit((PlacementEntry("node-a", 4, 1), PlacementEntry("node-b", 8, 2)))
    pods = build_pods(workload(replicas=3), decision)
    assert [p["metadata"]["name"] for p in pods] == ["train-0", "train-1", "train-2"]
    assert [p["spec"]["nodeName"] for p in pods] == ["node-a", "node-b", "node-b"]
    assert all("nodeSelector" not in p["spec"] for p in pods)
    assert all(p["metadata"]["namespace"] == "team-a" for p in pods)


def test_gpus_go_to_the_container_that_asked_for_them_and_nowhere_else() -> None:
    pods = build_pods(workload(), admit((PlacementEntry("node-a", 8, 2),)))
    for pod in pods:
        sidecar, trainer = pod["spec"]["containers"]
        assert gpus_of(trainer) == {"limits": "4", "requests": "4"}
        assert gpus_of(sidecar) == {"limits": None, "requests": None}
        assert trainer["resources"]["limits"]["memory"] == "8Gi"  # other resources kept


def test_first_container_gets_the_gpus_when_none_asked() -> None:
    template = {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}
    pods = build_pods(workload(replicas=1, gpus=2, template=template), admit((PlacementEntry("n", 2, 1),)))
    first, second = pods[0]["spec"]["containers"]
    assert gpus_of(first) == {"limits": "2", "requests": "2"}
    assert gpus_of(second) == {"limits": None, "requests": None}


def test_owned_by_the_workload_so_garbage_collection_removes_them() -> None:
    pods = build_pods(workload(replicas=1), admit((PlacementEntry("n", 4, 1),)))
    assert pods[0]["metadata"]["ownerReferences"] == [{
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": "train", "uid": "uid-123",
        "controller": True, "blockOwnerDeletion": True,
    }]


def test_labels_are_the_templates_plus_ours() -> None:
    pods = build_pods(workload(), admit((PlacementEntry("n", 8, 2),), "training"))
    assert pods[1]["metadata"]["labels"] == {
        "app": "llm", "gpuadmit.io/workload": "train", "gpuadmit.io/replica": "1", "gpuadmit.io/class": "training",
    }
    assert pods[1]["metadata"]["annotations"] == {"note": "x"}


def test_restart_policy_defaults_by_class_and_keeps_an_explicit_one() -> None:
    placement = (PlacementEntry("n", 4, 1),)
    assert build_pods(workload(replicas=1), admit(placement, "training"))[0]["spec"]["restartPolicy"] == "OnFailure"
    assert build_pods(workload(replicas=1), admit(placement, "inference"))[0]["spec"]["restartPolicy"] == "Always"
    explicit = workload(replicas=1)
    explicit["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    assert build_pods(explicit, admit(placement, "inference"))[0]["spec"]["restartPolicy"] == "Never"


def test_the_workload_object_is_not_modified() -> None:
    original = workload()
    kept = copy.deepcopy(original)
    build_pods(original, admit((PlacementEntry("n", 8, 2),)))
    assert original == kept


def test_every_pod_requests_exactly_its_share_of_the_placement() -> None:
    decision = admit((PlacementEntry("a", 6, 3), PlacementEntry("b", 2, 1)))
    assert replica_nodes(decision) == [("a", 2), ("a", 2), ("a", 2), ("b", 2)]
    pods = build_pods(workload(replicas=4, gpus=2), decision)
    per_node: dict[str, int] = {}
    for pod in pods:
        trainer = pod["spec"]["containers"][1]
        per_node[pod["spec"]["nodeName"]] = per_node.get(pod["spec"]["nodeName"], 0) + int(trainer["resources"]["requests"]["nvidia.com/gpu"])
    assert per_node == {entry.node: entry.gpus for entry in decision.placement}


def test_a_malformed_template_never_crashes() -> None:
    broken = workload(replicas=1, template={"spec": {"containers": "not a list"}})
    pods = build_pods(broken, admit((PlacementEntry("n", 4, 1),)))
    assert len(pods) == 1 and pods[0]["spec"]["containers"]
