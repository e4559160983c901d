"""Node and Pod dicts -> the GPU inventory: what each node has and what pods already use.

Everything here reads raw Kubernetes objects defensively: a field of the wrong
type counts as absent, and nothing raises. A node the engine cannot use (no
GPUs, no name, more GPUs than a node can have) is ``None``, not an error; a pod
with a nonsense GPU request counts as requesting none of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gpuadmit.core.errors import show_number
from gpuadmit.core.model import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, GPU_RESOURCE, GpuNode, Taint
from gpuadmit.core.pods import pod_node

_MAPPINGS = (dict, Mapping)  # dict first: the common case is checked fastest

TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})

# The most GPUs one node may advertise. Real nodes have 1-16 (an NVL72 rack is 18 nodes of 4),
# so this is far above any of them; a node claiming more is broken or hostile, and its count
# would cost the engine bookkeeping in proportion (a "10M" node made every cycle take seconds).
MAX_GPUS_PER_NODE = 1024

_FLOAT_MAX = 2**1023  # ints below it convert to a finite float
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX_MULTIPLIER = {
    None: 1.0,
    "n": 1e-9, "u": 1e-6, "m": 1e-3,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def parse_quantity(value: object) -> float | None:
    """A Kubernetes resource quantity (``8``, ``"8"``, ``"500m"``, ``"2k"``) as a number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) < _FLOAT_MAX else None  # float() of a 400-digit int overflows
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    if value.isascii() and value.isdigit():  # "8": nearly every GPU quantity, without the regex
        return float(value)
    match = _QUANTITY.match(value.strip())
    if not match:
        return None
    number = float(match.group(1)) * _SUFFIX_MULTIPLIER[match.group(2)]
    return number if math.isfinite(number) else None


def gpu_count(value: object) -> int:
    """Whole GPUs in a quantity; 0 for anything absent, negative or unreadable."""
    number = parse_quantity(value)
    if number is None or number <= 0:
        return 0
    return int(number)


def node_from_object(node: Mapping[str, Any], gpus_used_by_pods: int) -> GpuNode | None:
    """The engine's view of a Node, or None when it has no ``nvidia.com/gpu`` allocatable.

    Schedulable means Ready and not cordoned. A node whose status has no
    conditions at all (a hand-written dump) counts as Ready; a Ready condition
    that is not "True" (False or Unknown) does not.
    """
    if not isinstance(node, _MAPPINGS):
        return None
    metadata = _mapping(node.get("metadata"))
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    status = _mapping(node.get("status"))
    allocatable = gpu_count(_mapping(status.get("allocatable")).get(GPU_RESOURCE))
    if allocatable <= 0 or allocatable > MAX_GPUS_PER_NODE:
        return None
    spec = _mapping(node.get("spec"))
    labels = _mapping(metadata.get("labels"))

    product = labels.get(GPU_PRODUCT_LABEL)
    memory = labels.get(GPU_MEMORY_LABEL)
    memory_mib = _mebibytes(memory)

    unschedulable_reasons: list[str] = []
    if spec.get("unschedulable") is True:
        unschedulable_reasons.append("cordoned")
    ready, ready_detail = _readiness(status.get("conditions"))
    if not ready:
        unschedulable_reasons.append(f"not Ready ({ready_detail})" if ready_detail else "not Ready")

    return GpuNode(
        name=name,
        allocatable=allocatable,
        product=product if isinstance(product, str) else "",
        memory_mib=memory_mib,
        schedulable=not unschedulable_reasons,
        taints=_taints(spec.get("taints")),
        gpus_used_by_pods=max(0, int(gpus_used_by_pods)),
        unschedulable_reason=", ".join(unschedulable_reasons),
    )


def advertised_gpu_problem(node: Mapping[str, Any]) -> str | None:
    """Why a node's ``nvidia.com/gpu`` allocatable cannot be used although it is set, else None.

    ``node_from_object`` drops such a node; this says why, for a message.
    """
    if not isinstance(node, _MAPPINGS):
        return None
    raw = _mapping(_mapping(node.get("status")).get("allocatable")).get(GPU_RESOURCE)
    if gpu_count(raw) > MAX_GPUS_PER_NODE:
        return (
            f"status.allocatable[{GPU_RESOURCE}]: {show_number(parse_quantity(raw))} GPUs is more than "
            f"the {MAX_GPUS_PER_NODE} one node can have"
        )
    return None


def pod_gpu_request(pod: Mapping[str, Any]) -> int:
    """GPUs a pod holds on its node, computed the way the kube-scheduler does.

    Per container: ``requests`` or, when absent, ``limits`` (an extended
    resource's request defaults to its limit). Pod total: the larger of (app
    containers + sidecars) and the peak of the init sequence, where each plain
    init container runs alongside the sidecars started before it.
    """
    if not isinstance(pod, _MAPPINGS):
        return 0
    spec = _mapping(pod.get("spec"))
    app_total = sum(_container_gpus(container) for container in _list(spec.get("containers")))
    sidecar_total = 0
    init_peak = 0
    for container in _list(spec.get("initContainers")):
        gpus = _container_gpus(container)
        if isinstance(container, _MAPPINGS) and container.get("restartPolicy") == "Always":
            sidecar_total += gpus  # a sidecar keeps running next to everything after it
            init_peak = max(init_peak, sidecar_total)
        else:
            init_peak = max(init_peak, sidecar_total + gpus)
    return max(app_total + sidecar_total, init_peak)


def pod_is_terminal(pod: Mapping[str, Any]) -> bool:
    """Succeeded or Failed. A terminating pod (deletionTimestamp set) still holds its GPUs."""
    if not isinstance(pod, _MAPPINGS):
        return True
    return _mapping(pod.get("status")).get("phase") in TERMINAL_POD_PHASES


def gpus_used_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GPUs requested by every non-terminal pod bound to a node (``spec.nodeName``) or, not
    bound yet, pinned to one by its node affinity (``core.pods.pod_node``), by node."""
    used: dict[str, int] = {}
    for pod in pods:
        if pod_is_terminal(pod):
            continue
        node_name = pod_node(pod)
        if node_name is None:
            continue
        gpus = pod_gpu_request(pod)
        if gpus:
            used[node_name] = used.get(node_name, 0) + gpus
    return used


def _container_gpus(container: object) -> int:
    if not isinstance(container, _MAPPINGS):
        return 0
    resources = _mapping(container.get("resources"))
    requests = _mapping(resources.get("requests"))
    if GPU_RESOURCE in requests:
        return gpu_count(requests[GPU_RESOURCE])
    return gpu_count(_mapping(resources.get("limits")).get(GPU_RESOURCE))


def _mebibytes(label: object) -> int:
    """GPU Feature Discovery writes memory as plain MiB digits ("81559"); anything else is unknown (0)."""
    if isinstance(label, str) and label.strip().isdigit():
        return int(label.strip())
    if type(label) is int and label > 0:
        return label
    return 0


def _readiness(conditions: object) -> tuple[bool, str]:
    if not isinstance(conditions, list) or not conditions:
        return True, ""
    for condition in conditions:
        if isinstance(condition, _MAPPINGS) and condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return True, ""
            detail = condition.get("reason") or f"Ready={condition.get('status')}"
            return False, str(detail)[:100]
    return False, "no Ready condition"


def _taints(value: object) -> tuple[Taint, ...]:
    taints: list[Taint] = []
    for item in _list(value):
        if not isinstance(item, _MAPPINGS):
            continue
        key, effect, taint_value = item.get("key"), item.get("effect"), item.get("value")
        if not isinstance(key, str) or not isinstance(effect, str):
            continue
        taints.append(Taint(key=key, value=taint_value if isinstance(taint_value, str) else None, effect=effect))
    return tuple(taints)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, _MAPPINGS) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
