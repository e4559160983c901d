"""MarginPolicy objects -> ``Policy``: the prices, costs and rules the engine applies.

``parse_policy`` checks everything the CRD schema checks (so a policy read from a
file is held to the same rules as one the API server accepted) and raises
``SpecError`` naming the field on the first problem. A field left out takes its
value from ``DEFAULT_POLICY``, so an empty spec *is* the default policy; inside
a map that is present, a product without a cost costs ``gpuCostPerHour.default``
(0 when there is none), a class without a price earns 0, and a tier without a
multiplier is priced at 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from gpuadmit.core.errors import SpecError, show_number
from gpuadmit.core.model import CLASSES, DEFAULT_POLICY_NAME, Policy, PreemptionRules

# The README's example policy (examples/policy.yaml carries the same numbers): in
# force when the cluster has no MarginPolicy, and the value of every omitted field.
DEFAULT_POLICY = Policy(
    gpu_cost_per_hour={"NVIDIA-H100-80GB-HBM3": 2.40, "default": 1.20},
    price_per_gpu_hour={"inference": 6.00, "training": 2.00},
    tier_multipliers={"gold": 1.5},
    min_margin_per_gpu_hour=0.0,
    inference_reserve_fraction=0.0,
    preemption=PreemptionRules(enabled=True, min_runtime_seconds=600.0, min_margin_gain_per_gpu_hour=0.5),
    aging_per_hour=0.0,
    default_max_queue_seconds=86400.0,
    max_queued_per_namespace=None,
    name=DEFAULT_POLICY_NAME,
)

SPEC_FIELDS = frozenset(
    {
        "gpuCostPerHour",
        "pricePerGPUHour",
        "tierMultipliers",
        "minMarginPerGPUHour",
        "inferenceReserveFraction",
        "preemption",
        "agingPerHour",
        "defaultMaxQueueSeconds",
        "maxQueuedPerNamespace",
    }
)
PREEMPTION_FIELDS = frozenset({"enabled", "minRuntimeSeconds", "minMarginGainPerGPUHour"})
MAX_MAP_ENTRIES = 256  # the CRD's maxProperties


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A ``Policy`` from a MarginPolicy object, or from just its ``spec``.

    Raises ``SpecError(field, message)`` on the first invalid field; never any
    other exception, whatever ``obj`` holds.
    """
    if not isinstance(obj, Mapping):
        raise SpecError("spec", f"must be a mapping, got {_type_name(obj)}")
    name = DEFAULT_POLICY_NAME
    if "spec" in obj or "kind" in obj or "apiVersion" in obj or "metadata" in obj:
        metadata = obj.get("metadata")
        if isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str) and metadata["name"]:
            name = metadata["name"]
        spec = obj.get("spec")
        if spec is None:
            spec = {}
    else:
        spec = obj
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be a mapping, got {_type_name(spec)}")
    for key in spec:
        if key not in SPEC_FIELDS:
            raise SpecError(f"spec.{key}", f"unknown field (known: {', '.join(sorted(SPEC_FIELDS))})")

    default = DEFAULT_POLICY
    cost = _number_map(spec, "gpuCostPerHour", default.gpu_cost_per_hour)
    price = _number_map(spec, "pricePerGPUHour", default.price_per_gpu_hour)
    for key in price:
        if key not in CLASSES:
            raise SpecError(f"spec.pricePerGPUHour.{key}", f"unknown class (known: {', '.join(CLASSES)})")
    price = {workload_class: price.get(workload_class, 0.0) for workload_class in CLASSES}
    tiers = _number_map(spec, "tierMultipliers", default.tier_multipliers)

    return Policy(
        gpu_cost_per_hour=cost,
        price_per_gpu_hour=price,
        tier_multipliers=tiers,
        min_margin_per_gpu_hour=_number(spec, "minMarginPerGPUHour", default.min_margin_per_gpu_hour),
        inference_reserve_fraction=_number(
            spec, "inferenceReserveFraction", default.inference_reserve_fraction, maximum=1.0
        ),
        preemption=_preemption(spec.get("preemption"), default.preemption),
        aging_per_hour=_number(spec, "agingPerHour", default.aging_per_hour),
        default_max_queue_seconds=_number(spec, "defaultMaxQueueSeconds", default.default_max_queue_seconds),
        max_queued_per_namespace=_max_queued(spec.get("maxQueuedPerNamespace")),
        name=name,
    )


def select_policy(policy_objects: Iterable[Any], name: str = DEFAULT_POLICY_NAME) -> Policy:
    """The policy named ``name`` among MarginPolicy objects (``Policy`` instances pass through).

    ``DEFAULT_POLICY`` when none has that name; ``SpecError`` when the chosen one is
    invalid, so the caller decides whether to keep its last good policy or stop.
    """
    for candidate in policy_objects:
        if isinstance(candidate, Policy):
            if candidate.name == name:
                return candidate
            continue
        if not isinstance(candidate, Mapping):
            continue
        metadata = candidate.get("metadata")
        if isinstance(metadata, Mapping) and metadata.get("name") == name:
            return parse_policy(candidate)
    return DEFAULT_POLICY


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_number(field: str, value: object, maximum: float | None = None) -> float:
    # bool is an int to Python but not a number to Kubernetes.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field, f"must be a number, got {_type_name(value)} {value!r}"[:200])
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise SpecError(field, f"must be a finite number, got {show_number(value)}")
    if number < 0:
        raise SpecError(field, f"must be at least 0, got {show_number(value)}")
    if maximum is not None and number > maximum:
        raise SpecError(field, f"must be at most {maximum:g}, got {show_number(value)}")
    return number


def _number(spec: Mapping[str, Any], key: str, default: float, maximum: float | None = None) -> float:
    if key not in spec:
        return default
    return _check_number(f"spec.{key}", spec[key], maximum)


def _number_map(spec: Mapping[str, Any], key: str, default: Mapping[str, float]) -> dict[str, float]:
    if key not in spec:
        return dict(default)
    value = spec[key]
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{key}", f"must be a mapping of names to numbers, got {_type_name(value)}")
    if len(value) > MAX_MAP_ENTRIES:
        raise SpecError(f"spec.{key}", f"has {len(value)} entries, at most {MAX_MAP_ENTRIES} allowed")
    parsed: dict[str, float] = {}
    for entry_key, entry_value in value.items():
        if not isinstance(entry_key, str):  # YAML allows any key; the API server only strings
            raise SpecError(f"spec.{key}", f"keys must be strings, got {entry_key!r}"[:200])
        parsed[entry_key] = _check_number(f"spec.{key}.{entry_key}", entry_value)
    return parsed


def _preemption(value: object, default: PreemptionRules) -> PreemptionRules:
    if value is None:
        return default
    if not isinstance(value, Mapping):
        raise SpecError("spec.preemption", f"must be a mapping, got {_type_name(value)}")
    for key in value:
        if key not in PREEMPTION_FIELDS:
            raise SpecError(
                f"spec.preemption.{key}", f"unknown field (known: {', '.join(sorted(PREEMPTION_FIELDS))})"
            )
    enabled = value.get("enabled", default.enabled)
    if not isinstance(enabled, bool):
        raise SpecError("spec.preemption.enabled", f"must be true or false, got {enabled!r}"[:200])
    return PreemptionRules(
        enabled=enabled,
        min_runtime_seconds=_number_in("spec.preemption", value, "minRuntimeSeconds", default.min_runtime_seconds),
        min_margin_gain_per_gpu_hour=_number_in(
            "spec.preemption", value, "minMarginGainPerGPUHour", default.min_margin_gain_per_gpu_hour
        ),
    )


def _number_in(prefix: str, mapping: Mapping[str, Any], key: str, default: float) -> float:
    if key not in mapping:
        return default
    return _check_number(f"{prefix}.{key}", mapping[key])


def _max_queued(value: object) -> int | None:
    if value is None:
        return None
    whole = whole_number(value)
    if whole is None:
        raise SpecError("spec.maxQueuedPerNamespace", f"must be a whole number, got {value!r}"[:200])
    if whole < 1:
        raise SpecError("spec.maxQueuedPerNamespace", f"must be at least 1, got {show_number(whole)}")
    return whole


def whole_number(value: object) -> int | None:
    """``value`` as an int when it is one (``4`` or ``4.0``; JSON does not tell them apart), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None
