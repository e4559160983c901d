"""Node and Pod dicts -> the GPU inventory: what each node has and what pods already use.

Everything here reads raw Kubernetes objects defensively: a field of the wrong
type counts as absent, and nothing raises. A node the engine cannot use (no
GPUs, no name, more GPUs than a node can have) is ``None``, not an error; a pod
with a nonsense GPU request counts as requesting none of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
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
_EXACT_MULTIPLIER = {
    None: Fraction(1),
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}  # fmt: skip
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


def exact_quantity(value: object) -> Fraction | None:
    """A quantity as an exact fraction (``"0.1"`` is 1/10, ``"1Gi"`` is 2**30), else None: what resource
    sums are counted in, so that ten ``100m`` requests fill exactly one CPU."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    if value.isascii() and value.isdigit():
        return Fraction(int(value))
    match = _QUANTITY.match(value.strip())
    if not match or len(value) > 64:
        return None
    rough = parse_quantity(value)
    if rough is None or abs(rough) > MAX_EXACT_QUANTITY or _exponent_too_large(match.group(1)):
        return None  # "1e999999999" would take an exact power of ten of a billion digits
    try:
        return Fraction(match.group(1)) * _EXACT_MULTIPLIER[match.group(2)]
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


# Past this a quantity is nonsense for any resource (2**80 bytes is a million exbibytes): unreadable.
MAX_EXACT_QUANTITY = float(2**80)


def _exponent_too_large(number: str) -> bool:
    exponent = number.lower().partition("e")[2]
    return len(exponent.lstrip("+-").lstrip("0")) > 2  # beyond e±99


# Resources counted in thousandths (kube-scheduler counts CPU in millicores); every other one in whole units.
MILLI_RESOURCES = frozenset({"cpu"})


def resource_amount(resource: str, value: object) -> int:
    """A request in the unit the ledger counts ``resource`` in (CPU in millicores, the rest in whole
    units, rounded up as the API server does); 0 for anything absent, negative or unreadable."""
    if type(value) is int and resource not in MILLI_RESOURCES:  # the common case of a plain count
        return max(0, value)
    exact = exact_quantity(value)
    if exact is None or exact <= 0:
        return 0
    if resource in MILLI_RESOURCES:
        exact *= 1000
    return math.ceil(exact)


def gpu_count(value: object) -> int:
    """Whole GPUs in a quantity; 0 for anything absent, negative or unreadable."""
    number = parse_quantity(value)
    if number is None or number <= 0:
        return 0
    return int(number)


def node_from_object(
    node: Mapping[str, Any], gpus_used_by_pods: int, resources_used_by_pods: Mapping[str, int] | None = None,
) -> GpuNode | None:
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
        labels=tuple(sorted((k, v) for k, v in labels.items() if isinstance(k, str) and isinstance(v, str))),
        resources=node_resources(node),
        resources_used_by_pods=tuple(sorted(resources_used_by_pods.items())) if resources_used_by_pods else (),
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
    """GPUs a pod holds on its node, computed the way the kube-scheduler does (``pod_requests``)."""
    if not isinstance(pod, _MAPPINGS):
        return 0
    return _pod_total(_mapping(pod.get("spec")), _container_gpus).get(GPU_RESOURCE, 0)


# Resources a node that does not list them in status.allocatable is taken to have without limit:
# hand-written dumps often list GPUs only, and every real node lists these. An extended resource a
# node does not list, it has none of (as kube-scheduler counts it).
BASIC_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "pods"})


def pod_requests(pod_spec: Mapping[str, Any]) -> dict[str, int]:
    """Every resource but GPUs a pod requests, as kube-scheduler counts it: per resource the larger
    of (app containers + sidecar init containers) and the peak of the init sequence (each plain init
    container alongside the sidecars started before it), plus ``spec.overhead``, plus one ``pods``.
    A container's request defaults to its limit. CPU in millicores, everything else in whole units."""
    spec = _mapping(pod_spec)
    total = _pod_total(spec, _container_requests)
    total.pop(GPU_RESOURCE, None)
    for resource, value in _mapping(spec.get("overhead")).items():
        if isinstance(resource, str) and resource != GPU_RESOURCE:
            amount = resource_amount(resource, value)
            if amount:
                total[resource] = total.get(resource, 0) + amount
    total["pods"] = total.get("pods", 0) + 1
    return total


def _pod_total(spec: Mapping[str, Any], read: Callable[[object], dict[str, int]]) -> dict[str, int]:
    app: dict[str, int] = {}
    for container in _list(spec.get("containers")):
        _add(app, read(container))
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for container in _list(spec.get("initContainers")):
        amounts = read(container)
        if isinstance(container, _MAPPINGS) and container.get("restartPolicy") == "Always":
            _add(sidecars, amounts)  # a sidecar keeps running next to everything after it
            _raise_to(init_peak, sidecars)
        else:
            running = dict(sidecars)
            _add(running, amounts)
            _raise_to(init_peak, running)
    _add(app, sidecars)
    _raise_to(app, init_peak)
    return app


def _add(total: dict[str, int], amounts: Mapping[str, int]) -> None:
    for resource, amount in amounts.items():
        total[resource] = total.get(resource, 0) + amount


def _raise_to(total: dict[str, int], amounts: Mapping[str, int]) -> None:
    for resource, amount in amounts.items():
        if amount > total.get(resource, 0):
            total[resource] = amount


def _container_requests(container: object) -> dict[str, int]:
    if not isinstance(container, _MAPPINGS):
        return {}
    resources = _mapping(container.get("resources"))
    merged = {**_mapping(resources.get("limits")), **_mapping(resources.get("requests"))}  # a request wins over its limit
    amounts: dict[str, int] = {}
    for resource, value in merged.items():
        if isinstance(resource, str):
            amount = gpu_count(value) if resource == GPU_RESOURCE else resource_amount(resource, value)
            if amount:
                amounts[resource] = amount
    return amounts


def requests_used_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Non-GPU resources requested by every non-terminal pod bound to a node or, not bound yet,
    pinned to one (``core.pods.pod_node``, as GPUs are counted), by node."""
    used: dict[str, dict[str, int]] = {}
    for pod in pods:
        if pod_is_terminal(pod):
            continue
        node_name = pod_node(pod)
        if node_name:
            _add(used.setdefault(node_name, {}), pod_requests(_mapping(pod.get("spec"))))
    return used


def node_resources(node: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """A node's ``status.allocatable`` of every resource but GPUs, in ledger units, sorted."""
    allocatable = _mapping(_mapping(node.get("status")).get("allocatable")) if isinstance(node, _MAPPINGS) else {}
    return tuple(sorted(
        (resource, resource_amount(resource, value))
        for resource, value in allocatable.items()
        if isinstance(resource, str) and resource != GPU_RESOURCE
    ))


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


def _container_gpus(container: object) -> dict[str, int]:
    if not isinstance(container, _MAPPINGS):
        return {}
    resources = _mapping(container.get("resources"))
    requests = _mapping(resources.get("requests"))
    if GPU_RESOURCE in requests:
        gpus = gpu_count(requests[GPU_RESOURCE])
    else:
        gpus = gpu_count(_mapping(resources.get("limits")).get(GPU_RESOURCE))
    return {GPU_RESOURCE: gpus} if gpus else {}


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
