"""core/pods.py: the pods an admitted GPUWorkload gets are pinned, sized, owned and labelled."""

from __future__ import annotations

import copy
from typing import Any

from gpuadmit.core.model import Action, Decision, PlacementEntry, Reason
from gpuadmit.core.pods import build_pods, pinned_affinity, pinned_node, pod_node, replica_nodes


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
    assert [pod_node(p) for p in pods] == ["node-a", "node-b", "node-b"]
    assert all("nodeName" not in p["spec"] for p in pods)  # kube-scheduler binds them
    assert all(p["spec"]["nodeSelector"] == {"pool": "gpu"} for p in pods)  # the template's, kept
    assert [p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] for p in pods] == [
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}
        for node in ("node-a", "node-b", "node-b")]
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



def test_the_pods_share_nothing_with_the_workload_object() -> None:
    """Changing a built pod (the API server's defaulting does, on the way) never changes the cached workload."""
    template = workload()["spec"]["template"]
    template["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
    template["spec"]["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}]}}
    template["spec"]["initContainers"] = [{"name": "init", "image": "busybox", "env": [{"name": "A", "value": "1"}]}]
    original = workload(replicas=2, template=template)
    kept = copy.deepcopy(original)

    def scribble(value: Any) -> None:
        if isinstance(value, dict):
            for item in list(value.values()):
                scribble(item)
            value["scribbled"] = True
        elif isinstance(value, list):
            for item in value:
                scribble(item)
            value.append("scribbled")

    for pod in build_pods(original, admit((PlacementEntry("n", 8, 2),))):
        scribble(pod)
    assert original == kept

def test_every_pod_requests_exactly_its_share_of_the_placement() -> None:
    decision = admit((PlacementEntry("a", 6, 3), PlacementEntry("b", 2, 1)))
    assert replica_nodes(decision) == [("a", 2), ("a", 2), ("a", 2), ("b", 2)]
    pods = build_pods(workload(replicas=4, gpus=2), decision)
    per_node: dict[str, int] = {}
    for pod in pods:
        trainer = pod["spec"]["containers"][1]
        per_node[pod_node(pod)] = per_node.get(pod_node(pod), 0) + int(trainer["resources"]["requests"]["nvidia.com/gpu"])
    assert per_node == {entry.node: entry.gpus for entry in decision.placement}


def test_a_malformed_template_never_crashes() -> None:
    broken = workload(replicas=1, template={"spec": {"containers": "not a list"}})
    pods = build_pods(broken, admit((PlacementEntry("n", 4, 1),)))
    assert len(pods) == 1 and pods[0]["spec"]["containers"]


def test_the_pin_is_anded_into_every_required_term_and_the_rest_of_the_affinity_is_kept() -> None:
    zone_a = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    big = {"matchExpressions": [{"key": "size", "operator": "Gt", "values": ["4"]}],
           "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["bad"]}]}
    preferred = [{"weight": 1, "preference": zone_a}]
    template = workload()["spec"]["template"]
    template["spec"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [zone_a, big]},
                         "preferredDuringSchedulingIgnoredDuringExecution": preferred},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    template["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
    template["spec"]["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]
    template["spec"]["schedulerName"] = "default-scheduler"
    original = copy.deepcopy(template)
    (pod,) = build_pods(workload(replicas=1, template=template), admit((PlacementEntry("node-a", 4, 1),)))
    pin = {"key": "metadata.name", "operator": "In", "values": ["node-a"]}
    affinity = pod["spec"]["affinity"]
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {**zone_a, "matchFields": [pin]}, {**big, "matchFields": [*big["matchFields"], pin]}]
    assert affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    assert affinity["podAntiAffinity"] == original["spec"]["affinity"]["podAntiAffinity"]
    for kept in ("tolerations", "topologySpreadConstraints", "schedulerName", "nodeSelector"):
        assert pod["spec"][kept] == original["spec"][kept], kept
    assert template == original  # the workload's template is not modified
    assert pinned_node(pod["spec"]) == "node-a" and pod_node(pod) == "node-a"


def test_pinning_twice_adds_one_requirement_and_a_bound_pod_counts_where_it_is_bound() -> None:
    once = pinned_affinity(None, "n1")
    assert pinned_affinity(once, "n1") == once
    assert pinned_node({"affinity": once}) == "n1"
    # Terms that disagree, or one without the pin, do not pin the pod to one node.
    assert pinned_node({"affinity": pinned_affinity(once, "n2")}) is None
    mixed = copy.deepcopy(once)
    mixed["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].append({})
    assert pinned_node({"affinity": mixed}) is None
    assert pod_node({"spec": {"nodeName": "n9", "affinity": once}}) == "n9"
    assert pod_node({"spec": {}}) is None and pod_node({}) is None
