"""Nodes and pods -> GPU inventory: allocatable, labels, readiness, taints, GPUs in use."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuadmit.core.errors import show_number
from gpuadmit.core.model import GpuNode, Taint
from gpuadmit.core.nodes import (
    MAX_GPUS_PER_NODE,
    advertised_gpu_problem,
    gpus_used_by_node,
    node_from_object,
    parse_quantity,
    pod_gpu_request,
    pod_is_terminal,
)
from gpuadmit.core.snapshot import build_snapshot


def a_node(
    name: str = "gpu-1",
    gpus: Any = "8",
    labels: dict[str, Any] | None = None,
    ready: str | None = "True",
    **spec: Any,
) -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready, "reason": "KubeletReady" if ready == "True" else "NodeStatusUnknown"})
    allocatable = {"cpu": "64", "memory": "512Gi"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = gpus
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": labels if labels is not None else {}},
        "spec": spec,
        "status": {"allocatable": allocatable, "conditions": conditions},
    }


def a_pod(gpus: Any = None, node: str | None = "gpu-1", phase: str = "Running", limits_only: bool = False, **spec: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if gpus is not None:
        resources = {"limits": {"nvidia.com/gpu": gpus}} if limits_only else {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}}
    pod_spec: dict[str, Any] = {"containers": [{"name": "main", "image": "x", "resources": resources}], **spec}
    if node:
        pod_spec["nodeName"] = node
    return {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "spec": pod_spec, "status": {"phase": phase}}


def test_a_gpu_node_is_read_with_its_labels() -> None:
    node = node_from_object(
        a_node(labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}), 3
    )
    assert node == GpuNode(
        name="gpu-1", allocatable=8, product="NVIDIA-H100-80GB-HBM3", memory_mib=81559, schedulable=True,
        taints=(), gpus_used_by_pods=3, unschedulable_reason="",
    )  # fmt: skip


@pytest.mark.parametrize("quantity, expected", [("8", 8), (8, 8), ("4.0", 4), (" 2 ", 2), ("1k", 1000), ("0", None), (None, None), ("eight", None), (-2, None), (True, None)])
def test_allocatable_quantities(quantity: Any, expected: int | None) -> None:
    node = node_from_object(a_node(gpus=quantity), 0)
    assert (node.allocatable if node else None) == expected


def test_a_node_without_gpus_or_name_is_none() -> None:
    assert node_from_object(a_node(gpus=None), 0) is None
    assert node_from_object({"metadata": {}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}}, 0) is None
    assert node_from_object({"metadata": {"name": "x"}}, 0) is None


def test_unlabelled_or_odd_labels_give_empty_product_and_zero_memory() -> None:
    for odd in ("80GB", "80Gi", "1e5", "-1", "", True):
        node = node_from_object(a_node(labels={"nvidia.com/gpu.memory": odd}), 0)
        assert node is not None and (node.product, node.memory_mib) == ("", 0), odd
    node = node_from_object(a_node(labels={"nvidia.com/gpu.memory": 40960, "nvidia.com/gpu.product": 7}), 0)
    assert node is not None and (node.product, node.memory_mib) == ("", 40960)


def test_cordoned_and_not_ready_nodes_are_unschedulable_with_a_reason() -> None:
    cordoned = node_from_object(a_node(unschedulable=True), 0)
    assert cordoned is not None and not cordoned.schedulable and cordoned.unschedulable_reason == "cordoned"
    not_ready = node_from_object(a_node(ready="Unknown"), 0)
    assert not_ready is not None and not not_ready.schedulable
    assert not_ready.unschedulable_reason == "not Ready (NodeStatusUnknown)"
    both = node_from_object(a_node(ready="False", unschedulable=True), 0)
    assert both is not None and both.unschedulable_reason.startswith("cordoned, not Ready")


def test_readiness_without_any_condition_is_assumed_but_a_missing_ready_condition_is_not() -> None:
    bare = a_node()
    del bare["status"]["conditions"]
    assert node_from_object(bare, 0).schedulable  # type: ignore[union-attr]
    no_ready = a_node(ready=None)
    assert not node_from_object(no_ready, 0).schedulable  # type: ignore[union-attr]


def test_taints_are_read_and_junk_taints_skipped() -> None:
    node = node_from_object(
        a_node(taints=[
            {"key": "dedicated", "value": "batch", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "effect": "NoExecute"},
            {"key": "broken"},
            "junk",
        ]),
        0,
    )  # fmt: skip
    assert node is not None
    assert node.taints == (Taint("dedicated", "batch", "NoSchedule"), Taint("nvidia.com/gpu", None, "NoExecute"))


@pytest.mark.parametrize("value, expected", [("500m", 0.5), ("2Ki", 2048.0), ("1e3", 1000.0), ("1.5M", 1.5e6), (3, 3.0), ("x1", None), ("", None), ([], None)])
def test_parse_quantity(value: Any, expected: float | None) -> None:
    assert parse_quantity(value) == expected


def test_pod_gpu_request_uses_requests_else_limits() -> None:
    assert pod_gpu_request(a_pod(gpus="2")) == 2
    assert pod_gpu_request(a_pod(gpus=4, limits_only=True)) == 4
    assert pod_gpu_request(a_pod()) == 0


def test_pod_gpu_request_sums_containers_and_applies_the_init_container_rules() -> None:
    pod = a_pod(gpus=2)
    pod["spec"]["containers"].append({"name": "side", "resources": {"limits": {"nvidia.com/gpu": "1"}}})
    assert pod_gpu_request(pod) == 3
    # A plain init container runs alone before the app: the max of the two counts.
    pod["spec"]["initContainers"] = [{"name": "warmup", "resources": {"limits": {"nvidia.com/gpu": "5"}}}]
    assert pod_gpu_request(pod) == 5
    pod["spec"]["initContainers"] = [{"name": "warmup", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    assert pod_gpu_request(pod) == 3
    # A sidecar (restartPolicy Always) keeps running beside the app: it adds.
    pod["spec"]["initContainers"] = [{"name": "proxy", "restartPolicy": "Always", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    assert pod_gpu_request(pod) == 4
    # ... and beside every init container started after it.
    pod["spec"]["initContainers"].append({"name": "warmup", "resources": {"limits": {"nvidia.com/gpu": "6"}}})
    assert pod_gpu_request(pod) == 7


def test_pod_gpu_request_never_raises_on_junk() -> None:
    for pod in ({}, None, "pod", {"spec": []}, {"spec": {"containers": "x"}}, {"spec": {"containers": [None, {"resources": []}]}},
                {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "lots"}}}]}}):  # fmt: skip
        assert pod_gpu_request(pod) == 0  # type: ignore[arg-type]


def test_terminal_pods() -> None:
    assert pod_is_terminal(a_pod(phase="Succeeded"))
    assert pod_is_terminal(a_pod(phase="Failed"))
    assert not pod_is_terminal(a_pod(phase="Running"))
    assert not pod_is_terminal(a_pod(phase="Pending"))
    terminating = a_pod(phase="Running")
    terminating["metadata"]["deletionTimestamp"] = "2026-11-26T10:00:00Z"
    assert not pod_is_terminal(terminating)  # still holds its GPUs until it is gone


def test_gpus_used_by_node_counts_bound_non_terminal_pods_only() -> None:
    pods = [
        a_pod(gpus=2, node="a"),
        a_pod(gpus=3, node="a"),
        a_pod(gpus=4, node="b"),
        a_pod(gpus=8, node="b", phase="Succeeded"),
        a_pod(gpus=8, node=None, phase="Pending"),  # not bound yet: holds nothing
        a_pod(node="c"),
    ]
    assert gpus_used_by_node(pods) == {"a": 5, "b": 4}


@settings(max_examples=100, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["metadata", "name", "spec", "status", "allocatable", "nvidia.com/gpu", "conditions", "type", "status", "labels", "taints"]), children, max_size=4),
    max_leaves=12,
))  # fmt: skip
def test_node_parsing_never_raises(junk: Any) -> None:
    node = node_from_object(junk, 1)
    assert node is None or node.allocatable > 0


@pytest.mark.parametrize("advertised", ["100M", "1G", 1e19, "10E", str(MAX_GPUS_PER_NODE + 1)])
def test_a_node_advertising_more_gpus_than_a_node_can_have_is_left_out_and_says_why(advertised: object) -> None:
    obj = {"metadata": {"name": "huge"}, "status": {"allocatable": {"nvidia.com/gpu": advertised}}}
    assert node_from_object(obj, 0) is None
    problem = advertised_gpu_problem(obj)
    assert problem is not None and f"more than the {MAX_GPUS_PER_NODE} one node can have" in problem
    assert len(problem) < 200  # a number abbreviated, never hundreds of digits
    snapshot = build_snapshot(nodes=[obj], pods=[], namespaces=[], workloads=[], policies=[], now=0.0)
    assert snapshot.nodes == ()


def test_a_node_at_the_cap_is_a_node() -> None:
    obj = {"metadata": {"name": "big"}, "status": {"allocatable": {"nvidia.com/gpu": str(MAX_GPUS_PER_NODE)}}}
    parsed = node_from_object(obj, 0)
    assert parsed is not None and parsed.allocatable == MAX_GPUS_PER_NODE
    assert advertised_gpu_problem(obj) is None
    assert advertised_gpu_problem({"metadata": {"name": "none"}, "status": {}}) is None


@pytest.mark.parametrize(
    "value, shown",
    [(8, "8"), (8.0, "8"), (0.5, "0.5"), (10**19, "1e+19"), (1e308, "1e+308"), (10**400, "about 1e+400"), (float("inf"), "inf")],
)
def test_numbers_in_messages_are_abbreviated_when_huge(value: float, shown: str) -> None:
    assert show_number(value) == shown
