"""GPUQuota objects + namespaces -> the tenants the engine honours.

A GPUQuota is cluster scoped (tenants cannot grant themselves capacity) and covers the
namespaces its ``spec.namespaceSelector`` matches: a Kubernetes LabelSelector with
``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist), where every
namespace also carries ``kubernetes.io/metadata.name`` as the API server sets it. A
namespace matched by two quotas belongs to the older one (creation time, then name);
the conflict is reported on both, so an admin sees it on either object.

``parse_quota`` checks what the CRD schema checks, so a quota read from a dump is held to
the same rules as one the API server accepted, and raises ``SpecError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import ANY_PRODUCT, Quota
from gpuadmit.core.timefmt import parse_rfc3339_or_none

SPEC_FIELDS = frozenset({"namespaceSelector", "guaranteed", "maxGPUs", "lendIdle"})
SELECTOR_FIELDS = frozenset({"matchLabels", "matchExpressions"})
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
MAX_GPUS = 1_000_000  # the CRD's maximum
MAX_ENTRIES = 256  # the CRD's maxProperties / maxItems
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed LabelSelector; the empty selector matches everything, as in Kubernetes."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.requirements
        )


@dataclass(frozen=True, slots=True)
class Conflict:
    """A namespace matched by two quotas: ``kept`` (the older) applies, ``lost`` does not."""

    namespace: str
    kept: str
    lost: str


@dataclass(frozen=True, slots=True)
class Tenancy:
    """What the GPUQuota objects of a cluster amount to."""

    quotas: Mapping[str, Quota] = field(default_factory=dict)  # valid ones, by name
    quota_of_namespace: Mapping[str, str] = field(default_factory=dict)
    invalid: Mapping[str, SpecError] = field(default_factory=dict)  # by quota name
    conflicts: tuple[Conflict, ...] = ()
    selectors: Mapping[str, LabelSelector] = field(default_factory=dict)

    def namespaces_of(self, quota_name: str) -> list[str]:
        return sorted(ns for ns, name in self.quota_of_namespace.items() if name == quota_name)

    def conflicts_of(self, quota_name: str) -> list[Conflict]:
        return [c for c in self.conflicts if quota_name in (c.kept, c.lost)]


def parse_quota(obj: Mapping[str, Any]) -> tuple[Quota, LabelSelector]:
    """A ``Quota`` and its namespace selector from a GPUQuota object.

    Raises ``SpecError(field, message)`` on the first invalid field, never another exception.
    """
    if not isinstance(obj, Mapping):
        raise SpecError("metadata", f"a GPUQuota must be a mapping, got {_type_name(obj)}")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "a GPUQuota needs a name")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be a mapping, got {_type_name(spec)}")
    for key in spec:
        if key not in SPEC_FIELDS:
            raise SpecError(f"spec.{key}", f"unknown field (known: {', '.join(sorted(SPEC_FIELDS))})")
    if "namespaceSelector" not in spec:
        raise SpecError("spec.namespaceSelector", "is required (a LabelSelector; {} matches every namespace)")
    selector = parse_selector(spec["namespaceSelector"], "spec.namespaceSelector")
    guaranteed = _guaranteed(spec.get("guaranteed"))
    max_gpus = spec.get("maxGPUs")
    if max_gpus is not None and not _whole_in_range(max_gpus):
        raise SpecError("spec.maxGPUs", f"must be a whole number from 0 to {MAX_GPUS}, got {max_gpus!r}")
    lend_idle = spec.get("lendIdle", True)
    if lend_idle is None:
        lend_idle = True
    if not isinstance(lend_idle, bool):
        raise SpecError("spec.lendIdle", f"must be true or false, got {lend_idle!r}")
    created = parse_rfc3339_or_none(metadata.get("creationTimestamp")) if isinstance(metadata, Mapping) else None
    quota = Quota(name=name, guaranteed=guaranteed, max_gpus=max_gpus, lend_idle=lend_idle, created_at=created or 0.0)
    return quota, selector


def parse_selector(value: object, where: str) -> LabelSelector:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise SpecError(where, f"must be a LabelSelector mapping, got {_type_name(value)}")
    for key in value:
        if key not in SELECTOR_FIELDS:
            raise SpecError(f"{where}.{key}", f"unknown field (known: {', '.join(sorted(SELECTOR_FIELDS))})")
    labels = value.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or len(labels) > MAX_ENTRIES:
        raise SpecError(f"{where}.matchLabels", f"must be a mapping of at most {MAX_ENTRIES} labels")
    for key, label in labels.items():
        if not isinstance(key, str) or not key or not isinstance(label, str):
            raise SpecError(f"{where}.matchLabels", f"label {key!r}: keys and values must be strings")
    expressions = value.get("matchExpressions") or []
    if not isinstance(expressions, list) or len(expressions) > MAX_ENTRIES:
        raise SpecError(f"{where}.matchExpressions", f"must be a list of at most {MAX_ENTRIES} requirements")
    requirements = []
    for number, expression in enumerate(expressions):
        here = f"{where}.matchExpressions[{number}]"
        if not isinstance(expression, Mapping):
            raise SpecError(here, f"must be a mapping, got {_type_name(expression)}")
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if not isinstance(key, str) or not key:
            raise SpecError(f"{here}.key", "must be a non-empty string")
        if operator not in OPERATORS:
            raise SpecError(f"{here}.operator", f"must be one of {', '.join(OPERATORS)}, got {operator!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SpecError(f"{here}.values", "must be a list of strings")
        # Kubernetes' own rule: In/NotIn need values, Exists/DoesNotExist take none.
        if operator in ("In", "NotIn") and not values:
            raise SpecError(f"{here}.values", f"must not be empty with operator {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SpecError(f"{here}.values", f"must be empty with operator {operator}")
        requirements.append(Requirement(key, operator, frozenset(values)))
    return LabelSelector(dict(labels), tuple(requirements))


def tenancy(quota_objects: Iterable[Any], namespaces: Iterable[Mapping[str, Any]]) -> Tenancy:
    """Which quota each namespace belongs to; invalid quotas and conflicts, for their status."""
    parsed: dict[str, tuple[Quota, LabelSelector]] = {}
    invalid: dict[str, SpecError] = {}
    for obj in quota_objects:
        try:
            quota, selector = parse_quota(obj)
        except SpecError as error:
            metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
            name = metadata.get("name") if isinstance(metadata, Mapping) else None
            if isinstance(name, str) and name:
                invalid[name] = error
                parsed.pop(name, None)
            continue
        parsed[quota.name] = (quota, selector)  # a name listed twice: the later one, as the API server would hold
        invalid.pop(quota.name, None)
    if not parsed:
        return Tenancy(invalid=invalid)  # the common case: no tenants, no namespace to look at
    oldest_first = sorted(parsed.values(), key=lambda qs: (qs[0].created_at, qs[0].name))
    quota_of_namespace: dict[str, str] = {}
    conflicts: list[Conflict] = []
    for namespace, labels in sorted(_namespace_labels(namespaces).items()):
        matching = [quota.name for quota, selector in oldest_first if selector.matches(labels)]
        if matching:
            quota_of_namespace[namespace] = matching[0]
            conflicts.extend(Conflict(namespace, matching[0], other) for other in matching[1:])
    return Tenancy(
        quotas={name: parsed[name][0] for name in sorted(parsed)},
        quota_of_namespace=quota_of_namespace,
        invalid=invalid,
        conflicts=tuple(conflicts),
        selectors={name: parsed[name][1] for name in sorted(parsed)},
    )


def _namespace_labels(namespaces: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    labels_by_name: dict[str, dict[str, str]] = {}
    for namespace in namespaces:
        metadata = namespace.get("metadata") if isinstance(namespace, Mapping) else None
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if not isinstance(name, str) or not name:
            continue
        raw = metadata.get("labels") if isinstance(metadata, Mapping) else None
        labels = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(raw, Mapping) else {}
        labels.setdefault(NAMESPACE_NAME_LABEL, name)
        labels_by_name[name] = labels
    return labels_by_name


def _guaranteed(value: object) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_ENTRIES:
        raise SpecError("spec.guaranteed", f"must be a mapping of at most {MAX_ENTRIES} products to GPUs")
    guaranteed: dict[str, int] = {}
    for product, gpus in value.items():
        if not isinstance(product, str) or not product:
            raise SpecError("spec.guaranteed", f"product {product!r}: must be a product label value or {ANY_PRODUCT!r}")
        if not _whole_in_range(gpus):
            raise SpecError(f"spec.guaranteed.{product}", f"must be a whole number from 0 to {MAX_GPUS}, got {gpus!r}")
        guaranteed[product] = int(gpus)
    return guaranteed


def _whole_in_range(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_GPUS


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__
