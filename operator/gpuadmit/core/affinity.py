"""Where a template's pods may run, besides taints: ``nodeSelector`` and required node affinity.

Parsed once per template into ``NodeConstraints``; matched against a node's name and labels with
kube-scheduler's semantics: every ``nodeSelector`` pair must match; the required affinity's
``nodeSelectorTerms`` are ORed, the requirements inside a term ANDed, a term with no requirements
matches nothing. Operators: In, NotIn (also matches a node without the label), Exists,
DoesNotExist, Gt and Lt (the label and the one value read as integers); ``matchFields`` on
``metadata.name`` with In or NotIn. Preferred affinity is not a constraint and is not read.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpuadmit.core.errors import SpecError
from gpuadmit.core.model import NodeConstraints, NodeSelectorRequirement

_MAPPINGS = (dict, Mapping)
OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"})
FIELD_OPERATORS = frozenset({"In", "NotIn"})
NO_CONSTRAINTS = NodeConstraints()


def node_constraints(pod_spec: object, field: str = "spec.template.spec") -> NodeConstraints:
    """The constraints of a pod spec; ``SpecError`` naming the field when one cannot be read."""
    if not isinstance(pod_spec, _MAPPINGS):
        return NO_CONSTRAINTS
    selector_raw = pod_spec.get("nodeSelector")
    selector: list[tuple[str, str]] = []
    if selector_raw is not None:
        if not isinstance(selector_raw, _MAPPINGS):
            raise SpecError(f"{field}.nodeSelector", "must be a map of label to value")
        for key, value in selector_raw.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise SpecError(f"{field}.nodeSelector", f"must map label names to string values, got {key!r}: {value!r}")
            selector.append((key, value))
    terms = _required_terms(pod_spec.get("affinity"), f"{field}.affinity.nodeAffinity")
    if not selector and terms is None:
        return NO_CONSTRAINTS
    return NodeConstraints(selector=tuple(sorted(selector)), terms=terms)


def _required_terms(affinity: object, field: str) -> tuple[tuple[NodeSelectorRequirement, ...], ...] | None:
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, _MAPPINGS) else None
    required = (
        node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") if isinstance(node_affinity, _MAPPINGS) else None
    )
    if required is None:
        return None
    field = f"{field}.requiredDuringSchedulingIgnoredDuringExecution"
    if not isinstance(required, _MAPPINGS) or not isinstance(required.get("nodeSelectorTerms"), list):
        raise SpecError(f"{field}.nodeSelectorTerms", "must be a list of node selector terms")
    terms = []
    for index, term in enumerate(required["nodeSelectorTerms"]):
        where = f"{field}.nodeSelectorTerms[{index}]"
        if not isinstance(term, _MAPPINGS):
            raise SpecError(where, "must be an object with matchExpressions and/or matchFields")
        requirements = [*_requirements(term.get("matchExpressions"), f"{where}.matchExpressions", False),
                        *_requirements(term.get("matchFields"), f"{where}.matchFields", True)]
        terms.append(tuple(requirements))
    return tuple(terms)


def _requirements(value: object, field: str, on_field: bool) -> list[NodeSelectorRequirement]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(field, "must be a list of requirements")
    parsed = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, _MAPPINGS) or not isinstance(item.get("key"), str):
            raise SpecError(where, "must be an object with a key and an operator")
        operator, values = item.get("operator"), item.get("values") or []
        allowed = FIELD_OPERATORS if on_field else OPERATORS
        if operator not in allowed:
            raise SpecError(f"{where}.operator", f"must be one of {', '.join(sorted(allowed))}, got {operator!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SpecError(f"{where}.values", "must be a list of strings")
        if on_field and item["key"] != "metadata.name":
            raise SpecError(f"{where}.key", f"only metadata.name is supported in matchFields, got {item['key']!r}")
        if operator in ("Gt", "Lt") and (len(values) != 1 or _integer(values[0]) is None):
            raise SpecError(f"{where}.values", f"{operator} takes exactly one integer value")
        parsed.append(NodeSelectorRequirement(item["key"], operator, tuple(values), on_field))
    return parsed


def node_matches(constraints: NodeConstraints, name: str, labels: Mapping[str, str]) -> bool:
    """Whether a node (its name and labels) satisfies the constraints."""
    for key, value in constraints.selector:
        if labels.get(key) != value:
            return False
    if constraints.terms is None:
        return True
    return any(term and all(_satisfied(r, name, labels) for r in term) for term in constraints.terms)


def _satisfied(requirement: NodeSelectorRequirement, name: str, labels: Mapping[str, str]) -> bool:
    operator = requirement.operator
    if requirement.field:
        return (name in requirement.values) == (operator == "In")
    present = requirement.key in labels
    value = labels.get(requirement.key)
    if operator == "In":
        return present and value in requirement.values
    if operator == "NotIn":
        return not present or value not in requirement.values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    number, bound = _integer(value), _integer(requirement.values[0])
    if number is None or bound is None:
        return False
    return number > bound if operator == "Gt" else number < bound


def _integer(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(value)
    except ValueError:
        return None
