"""A CRD's ``openAPIV3Schema`` applied as the real API server applies it: prune, default, validate.

The schema is a structural OpenAPI v3 schema with Kubernetes extensions. We prune fields the
schema does not declare (unless ``x-kubernetes-preserve-unknown-fields``), fill ``default``s,
then validate with ``jsonschema`` (Draft 4, whose boolean ``exclusiveMinimum`` is OpenAPI 3.0's)
after translating the extensions: ``nullable`` admits ``null``, ``x-kubernetes-int-or-string``
admits an integer or a string. Errors are worded like the real server's, field first, e.g.
``spec.gpus: Invalid value: 0: spec.gpus in body should be greater than or equal to 1``.

Validation has a fast path: the same translated schema compiled once with ``fastjsonschema``.
When it accepts an object there are no causes; only when it rejects one does ``jsonschema``
run, to word the causes (and if ``jsonschema`` finds nothing wrong, it is trusted: no causes).
So ``jsonschema`` stays the judge; the fast path only spares it the objects that are valid.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema
import jsonschema

# The top-level keys every object keeps; the server manages them, the schema does not prune them.
_ALWAYS_KEPT = ("apiVersion", "kind", "metadata")


class ObjectSchema:
    """One served version's schema, compiled once; ``admit`` prunes, defaults and lists the errors."""

    def __init__(self, openapi_schema: Mapping[str, Any]) -> None:
        self.structural = dict(openapi_schema)
        properties = dict(self.structural.get("properties") or {})
        properties.pop("metadata", None)  # object metadata is checked by the store, not by the CRD
        self.structural["properties"] = properties
        translated = _to_jsonschema(self.structural)
        try:
            jsonschema.Draft4Validator.check_schema(translated)
        except jsonschema.SchemaError as e:
            raise ValueError(f"the openAPIV3Schema is not a valid schema: {e.message}") from e
        self._validator = jsonschema.Draft4Validator(translated)
        self._fast_valid = _fast_validator(translated)
        self._status_schema = {"type": "object", "properties": {"status": properties.get("status", {})}}
        translated_status = _to_jsonschema(self._status_schema)
        self._status_validator = jsonschema.Draft4Validator(translated_status)
        self._fast_status_valid = _fast_validator(translated_status)
        self._prune_and_default = compile_prune_and_default(self.structural)
        self._prune_and_default_status = compile_prune_and_default(self._status_schema)

    def admit(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Return the pruned, defaulted object and the causes (empty when valid)."""
        kept = {key: obj[key] for key in _ALWAYS_KEPT if key in obj}
        body = {key: value for key, value in obj.items() if key not in _ALWAYS_KEPT}
        body = self._prune_and_default(body)
        result = {**kept, **body}
        return result, _check(body, self._fast_valid, self._validator)

    def admit_status(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Like ``admit``, for a ``/status`` write: only ``status`` is pruned, defaulted and checked."""
        if "status" not in obj:
            return obj, []
        status_part = self._prune_and_default_status({"status": obj["status"]})
        return {**obj, "status": status_part["status"]}, _check(status_part, self._fast_status_valid,
                                                                 self._status_validator)


def _fast_validator(translated: Mapping[str, Any]) -> Callable[[Any], bool]:
    """``translated`` compiled by ``fastjsonschema`` (Draft 4, no defaults, no formats): a
    function telling whether an instance is valid. Any failure to compile or to run it means
    "not known to be valid", which sends the instance to ``jsonschema``."""
    try:
        validate = fastjsonschema.compile({**translated, "$schema": "http://json-schema.org/draft-04/schema#"},
                                          use_default=False, use_formats=False, detailed_exceptions=False)
    except Exception:  # noqa: BLE001 - a schema it cannot compile: jsonschema alone decides, as before
        return lambda instance: False

    def valid(instance: Any) -> bool:
        try:
            validate(instance)
        except Exception:  # noqa: BLE001 - JsonSchemaValueException, or anything odd: let jsonschema decide
            return False
        return True

    return valid


def _check(instance: Any, fast_valid: Callable[[Any], bool],
           validator: jsonschema.protocols.Validator) -> list[dict[str, str]]:
    """The causes of ``instance``'s invalidity, worded by ``jsonschema`` (none when valid)."""
    if fast_valid(instance):
        return []
    causes: list[dict[str, str]] = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        causes.extend(_causes(error))
    return causes


def prune(value: Any, schema: Mapping[str, Any]) -> Any:
    """Drop the fields the schema does not declare, as the server does before storing."""
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        result = {}
        for key, item in value.items():
            if properties is not None and key in properties:
                result[key] = prune(item, properties[key])
            elif isinstance(additional, Mapping):
                result[key] = prune(item, additional)
            elif preserve or additional is True or (properties is None and not _is_typed_leaf(schema)):
                result[key] = item
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(item, schema["items"]) for item in value]
    return value


def compile_prune_and_default(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """``lambda value: apply_defaults(prune(value, schema), schema)`` in one pass, with the
    schema's lookups done once here rather than at every node of every object."""
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or additional is True or (
        properties is None and not _is_typed_leaf(schema))
    declared = {key: compile_prune_and_default(sub) for key, sub in (properties or {}).items()}
    defaults = [(key, sub) for key, sub in (properties or {}).items() if "default" in sub]
    for_additional = compile_prune_and_default(additional) if isinstance(additional, Mapping) else None
    items = schema.get("items")
    for_items = compile_prune_and_default(items) if isinstance(items, Mapping) else None

    def prune_and_default(value: Any) -> Any:
        if isinstance(value, dict):
            result = {}
            for key, item in value.items():
                declared_key = declared.get(key)
                if declared_key is not None:
                    result[key] = declared_key(item)
                elif for_additional is not None:
                    result[key] = for_additional(item)
                elif keep_unknown:
                    result[key] = item
            for key, sub in defaults:
                if key not in result:  # a default is defaulted within, not pruned (as apply_defaults does)
                    result[key] = apply_defaults(copy.deepcopy(sub["default"]), sub)
            return result
        if for_items is not None and isinstance(value, list):
            return [for_items(item) for item in value]
        return value

    return prune_and_default


def _is_typed_leaf(schema: Mapping[str, Any]) -> bool:
    # An ``object`` without properties/additionalProperties/preserve keeps nothing in a real server.
    return schema.get("type") == "object"


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Fill each absent property that has a ``default``, recursively into what is present."""
    if isinstance(value, dict):
        result = dict(value)
        for key, subschema in (schema.get("properties") or {}).items():
            if key not in result and "default" in subschema:
                result[key] = copy.deepcopy(subschema["default"])
            if key in result:
                result[key] = apply_defaults(result[key], subschema)
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            declared = schema.get("properties") or {}
            for key in result:
                if key not in declared:
                    result[key] = apply_defaults(result[key], additional)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def _to_jsonschema(schema: Any) -> Any:
    """Translate the Kubernetes extensions into plain JSON Schema (Draft 4)."""
    if isinstance(schema, list):
        return [_to_jsonschema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("default", "example", "description", "format") or key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            result[key] = {name: _to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            result[key] = _to_jsonschema(value)
        else:
            result[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        result["type"] = ["integer", "string"]
    if schema.get("nullable") and "type" in result:
        types = result["type"] if isinstance(result["type"], list) else [result["type"]]
        result["type"] = [*types, "null"]
        if "enum" in result:
            result["enum"] = [*result["enum"], None]
    result.pop("nullable", None)
    return result


def _field_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "object" if isinstance(value, dict) else "array"
    return json.dumps(value)


def _causes(error: jsonschema.ValidationError) -> list[dict[str, str]]:
    field = _field_path(error.absolute_path)
    value, rule, limit = error.instance, error.validator, error.validator_value
    where = f"{field} in body" if field else "body"
    if rule == "required":
        missing = [key for key in limit if isinstance(value, dict) and key not in value]
        return [
            {"reason": "FieldValueRequired", "field": f"{field}.{key}" if field else key, "message": "Required value"}
            for key in missing
        ]
    if rule == "enum":
        supported = ", ".join(_shown(item) for item in limit)
        return [{
            "reason": "FieldValueNotSupported", "field": field,
            "message": f"Unsupported value: {_shown(value)}: supported values: {supported}",
        }]
    if rule == "type":
        wanted = limit if isinstance(limit, str) else "/".join(t for t in limit if t != "null")
        detail = f"{where} must be of type {wanted}: {_shown(value)}"
    elif rule == "minimum":
        strict = (error.schema or {}).get("exclusiveMinimum") is True
        detail = f"{where} should be greater than {'' if strict else 'or equal to '}{limit}"
    elif rule == "maximum":
        strict = (error.schema or {}).get("exclusiveMaximum") is True
        detail = f"{where} should be less than {'' if strict else 'or equal to '}{limit}"
    elif rule == "pattern":
        detail = f"{where} should match '{limit}'"
    elif rule == "minLength":
        detail = f"{where} should be at least {limit} chars long"
    elif rule == "maxLength":
        detail = f"{where} should be at most {limit} chars long"
    elif rule == "minItems":
        detail = f"{where} should have at least {limit} items"
    elif rule == "maxItems":
        detail = f"{where} should have at most {limit} items"
    elif rule == "minProperties":
        detail = f"{where} should have at least {limit} properties"
    else:
        detail = f"{where}: {error.message}"
    return [{"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {_shown(value)}: {detail}"}]


# The fields of ObjectMeta a client may send; anything else in ``metadata`` is an unknown field.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
})


def unknown_fields(obj: Any, schema: Mapping[str, Any] | None) -> list[str]:
    """The fields of ``obj`` that ``schema`` does not declare, as the real server names them for
    ``fieldValidation`` (``spec.foo``, ``spec.items[0].bar``); pruning would drop each of them.

    Without a schema (a built-in kind here) only ``metadata`` is checked."""
    if not isinstance(obj, Mapping):
        return []
    found = [f"metadata.{key}" for key in (obj.get("metadata") or {}) if key not in OBJECT_META_FIELDS] \
        if isinstance(obj.get("metadata"), Mapping) else []
    if schema is not None:
        body = {key: value for key, value in obj.items() if key not in _ALWAYS_KEPT}
        _collect_unknown(body, schema, "", found)
    return found


def _collect_unknown(value: Any, schema: Mapping[str, Any], path: str, found: list[str]) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or additional is True or (
            properties is None and not _is_typed_leaf(schema))
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if properties is not None and key in properties:
                _collect_unknown(item, properties[key], where, found)
            elif isinstance(additional, Mapping):
                _collect_unknown(item, additional, where, found)
            elif not keep_unknown:
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            _collect_unknown(item, schema["items"], f"{path}[{index}]", found)
