"""Label and field selectors as the API server parses them from ``?labelSelector=`` / ``?fieldSelector=``.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``,
comma-separated (all must hold). Field selectors: ``path=v``, ``path==v``, ``path!=v`` on any
dotted path (``metadata.name``, ``metadata.namespace``, ``spec.nodeName``, ``status.phase``...);
a missing field compares as the empty string, which is how the real server matches
``spec.nodeName=`` (unscheduled pods).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from kubeapi_emulator.errors import bad_request

Predicate = Callable[[Mapping[str, Any]], bool]

_SET_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQUALITY_TERM = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_./-]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split_terms(selector: str) -> list[str]:
    """Split on the commas that are not inside ``( )`` of a set term."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def parse_label_selector(selector: str | None) -> Predicate:
    """A predicate over an object's labels dict; raises a 400 ApiError on a malformed selector."""
    checks: list[Callable[..., bool]] = []  # each called with the labels alone; defaults bind the term
    for term in _split_terms(selector or ""):
        if match := _SET_TERM.match(term):
            negated, key, operator, values_text = match.groups()
            if negated:
                raise bad_request(f"unable to parse requirement: {term!r}")
            values = {value.strip() for value in values_text.split(",") if value.strip()}
            if operator == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif match := _EQUALITY_TERM.match(term):
            key, operator, value = match.groups()
            if operator == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif match := _EXISTS_TERM.match(term):
            negated, key = match.groups()
            if negated:
                checks.append(lambda labels, k=key: k not in labels)
            else:
                checks.append(lambda labels, k=key: k in labels)
        else:
            raise bad_request(f"unable to parse requirement: {term!r}")
    return lambda labels: all(check(labels) for check in checks)


_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def label_selector_problems(selector: Any, field: str) -> list[str]:
    """What is wrong with a ``metav1.LabelSelector`` object (matchLabels, matchExpressions), as
    ``"<field path>: <problem>"`` texts; empty when it is well formed."""
    if selector is None:
        return []
    if not isinstance(selector, Mapping):
        return [f"{field}: Invalid value: must be a label selector object"]
    problems = []
    match_labels = selector.get("matchLabels")
    if match_labels is not None and not (isinstance(match_labels, Mapping)
                                         and all(isinstance(v, str) for v in match_labels.values())):
        problems.append(f"{field}.matchLabels: Invalid value: must map label keys to string values")
    for index, expression in enumerate(selector.get("matchExpressions") or []):
        where = f"{field}.matchExpressions[{index}]"
        if not isinstance(expression, Mapping) or not isinstance(expression.get("key"), str):
            problems.append(f"{where}.key: Required value")
            continue
        operator, values = expression.get("operator"), expression.get("values") or []
        if operator not in _SELECTOR_OPERATORS:
            problems.append(f'{where}.operator: Invalid value: "{operator}": not a valid selector operator')
        elif operator in ("In", "NotIn") and not values:
            problems.append(f"{where}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'")
        elif operator in ("Exists", "DoesNotExist") and values:
            problems.append(f"{where}.values: Forbidden: may not be specified when `operator` is 'Exists' or "
                            "'DoesNotExist'")
    return problems


def compile_label_selector(selector: Mapping[str, Any] | None) -> Callable[[Mapping[str, str]], bool] | None:
    """A predicate over a labels dict for a well-formed ``metav1.LabelSelector``; None for the
    empty selector, which matches everything (callers skip the lookup the labels would need)."""
    selector = selector or {}
    wanted = dict(selector.get("matchLabels") or {})
    expressions = [(e["key"], e["operator"], frozenset(e.get("values") or ()))
                   for e in selector.get("matchExpressions") or []]
    if not wanted and not expressions:
        return None

    def matches(labels: Mapping[str, str]) -> bool:
        if any(labels.get(key) != value for key, value in wanted.items()):
            return False
        for key, operator, values in expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if (operator == "Exists") != present and operator in ("Exists", "DoesNotExist"):
                return False
        return True

    return matches


def field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over a whole object; raises a 400 ApiError on a malformed selector."""
    checks: list[Callable[..., bool]] = []  # each called with the object alone; defaults bind the term
    for term in _split_terms(selector or ""):
        match = _EQUALITY_TERM.match(term)
        if not match:
            raise bad_request(f"invalid field selector: {term!r}")
        path, operator, value = match.groups()
        if operator == "!=":
            checks.append(lambda obj, p=path, v=value: field_value(obj, p) != v)
        else:
            checks.append(lambda obj, p=path, v=value: field_value(obj, p) == v)
    return lambda obj: all(check(obj) for check in checks)


def match_everything(obj: Mapping[str, Any]) -> bool:
    return True


def object_selector(label_selector: str | None, field_selector: str | None) -> Predicate:
    """Both selectors combined into one predicate over whole objects."""
    if not _split_terms(label_selector or "") and not _split_terms(field_selector or ""):
        return match_everything  # no terms: every object matches (stored metadata is always a dict)
    labels_match = parse_label_selector(label_selector)
    fields_match = parse_field_selector(field_selector)

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return labels_match(labels) and fields_match(obj)

    return matches


def format_selector(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as a string (``app=web,tier in (a,b)``), as ``metav1.FormatLabelSelector``
    writes it: Scale's ``status.selector``, the ``Selector`` column of ``kubectl get -o wide``."""
    parts = [f"{key}={value}" for key, value in sorted(_mapping(selector.get("matchLabels")).items())]
    for expression in _sequence(selector.get("matchExpressions")):
        expression = _mapping(expression)
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(sorted(str(v) for v in _sequence(expression.get("values"))))
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": f"{key}", "DoesNotExist": f"!{key}"}.get(str(operator), f"{key} {operator}"))
    return ",".join(parts) or "<none>"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
