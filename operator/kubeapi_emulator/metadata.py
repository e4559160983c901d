"""The object-metadata rules every real API server enforces, whatever the resource.

Malformed types (labels that are not a string map, ...) are 400 BadRequest, as the real
server's decoder answers; well-typed but invalid values (a name with capitals, a label value
with spaces) are 422 Invalid naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubeapi_emulator import errors
from kubeapi_emulator.resources import ResourceSpec

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def check_metadata(spec: ResourceSpec, meta: dict[str, Any], *, creating: bool) -> None:
    """Raise ApiError if ``meta`` breaks a rule; return quietly otherwise."""
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is not None and not (
                isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            raise errors.bad_request(f"metadata.{field} must be a map of strings to strings")
    for field in ("finalizers",):
        value = meta.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise errors.bad_request(f"metadata.{field} must be a list of strings")
    references = meta.get("ownerReferences")
    if references is not None and not (isinstance(references, list) and all(isinstance(r, dict) for r in references)):
        raise errors.bad_request("metadata.ownerReferences must be a list of objects")

    causes: list[dict[str, str]] = []
    name = meta.get("name", "")
    if creating:
        is_label = spec.storage_key == ("", "namespaces")
        pattern, limit = (_DNS_LABEL, 63) if is_label else (_DNS_SUBDOMAIN, 253)
        if not isinstance(name, str) or not pattern.fullmatch(name) or len(name) > limit:
            kind = "RFC 1123 label" if is_label else "RFC 1123 subdomain"
            causes.append(_invalid("metadata.name", name, f"a lowercase {kind} must consist of lower case "
                                   "alphanumeric characters, '-' or '.', and must start and end with an "
                                   "alphanumeric character"))
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label_name = key.rpartition("/")
        if not _LABEL_NAME.fullmatch(label_name) or len(label_name) > 63 or (
                prefix and (not _DNS_SUBDOMAIN.fullmatch(prefix) or len(prefix) > 253)):
            causes.append(_invalid("metadata.labels", key, "name part must consist of alphanumeric characters, "
                                   "'-', '_' or '.', and must start and end with an alphanumeric character"))
        if not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
            causes.append(_invalid("metadata.labels", value, "a valid label must be an empty string or consist "
                                   "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                   "alphanumeric character (at most 63 characters)"))
    for index, reference in enumerate(meta.get("ownerReferences") or []):
        for field in ("apiVersion", "kind", "name", "uid"):
            if not reference.get(field):
                causes.append({"reason": "FieldValueRequired", "field": f"metadata.ownerReferences[{index}].{field}",
                               "message": "Required value"})
    if causes:
        raise errors.invalid(spec.group, spec.kind, name if isinstance(name, str) else "", causes)


def _invalid(field: str, value: Any, message: str) -> dict[str, str]:
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {json.dumps(value)}: {message}"}
