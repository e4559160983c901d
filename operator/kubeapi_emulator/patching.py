"""The patch formats a Kubernetes API server accepts: JSON merge, RFC 6902 JSON patch, strategic merge.

Strategic merge patch is a JSON merge patch (``null`` deletes, maps merge) in which, for the
built-in kinds (``keyed_lists=True``), the lists Kubernetes' Go types merge by a key are merged by
it, by field name (``STRATEGIC_LIST_KEYS``: containers by ``name``, a pod's ``schedulingGates`` by
``name``, conditions by ``type``, ...): an item of the patch replaces-by-merging the item with its
key, or is appended, and ``{"$patch": "delete", KEY: ...}`` removes it; ``$setElementOrder/FIELD``
orders the result. Other lists, and every list of a custom resource (whose strategic patches a real
server refuses), are replaced. ``$patch: replace`` on a map or list replaces it; other directives
(``$retainKeys``, ``$deleteFromPrimitiveList``) are dropped, not interpreted.

Why a second JSON-patch applier beside ``gpuadmit.core.validation.apply_json_patch``: this is
the server side of a test double that imports nothing from gpuadmit (it stands for the API
server, not for the operator), and it implements all of RFC 6902 with the server's errors;
gpuadmit's own applies the webhook's add/replace mutations and nothing else. On the gpuadmit
side that one is the only applier.
"""

from __future__ import annotations

import copy
from typing import Any

from kubeapi_emulator.errors import ApiError, bad_request
from kubeapi_emulator.store import copy_json

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_CONTENT_TYPES = (MERGE_PATCH, JSON_PATCH, STRATEGIC_MERGE_PATCH)


# The lists of the built-in kinds that a strategic merge patch merges by key (patchMergeKey in
# Kubernetes' types), by field name: those of pods, pod templates, metadata and conditions.
STRATEGIC_LIST_KEYS: dict[str, str] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "schedulingGates": "name",
    "volumes": "name", "env": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name",
    "conditions": "type", "ownerReferences": "uid", "readinessGates": "conditionType",
}


def apply_patch(target: dict[str, Any], patch: Any, content_type: str, *, keyed_lists: bool = False) -> dict[str, Any]:
    """Return a patched copy of ``target``; the original is never modified. ``keyed_lists``: the
    target is of a built-in kind, whose strategic merge patches merge the keyed lists."""
    content_type = content_type.split(";")[0].strip().lower()
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("a JSON patch must be a list of operations")
        return json_patch(target, patch)
    if content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH, "application/json", ""):
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be a JSON object")
        if content_type == STRATEGIC_MERGE_PATCH:
            return strategic_merge(target, patch, keyed_lists) if keyed_lists else merge_patch(target, _drop_directives(patch))
        return merge_patch(target, patch)
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy_json(patch)  # JSON data: the same as copy.deepcopy, several times faster
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, keyed_lists: bool = True) -> Any:
    """A strategic merge patch applied to JSON data (see the module docstring)."""
    if not isinstance(patch, dict):
        return copy_json(patch)
    if patch.get("$patch") == "replace":
        return _drop_directives({key: value for key, value in patch.items() if key != "$patch"})
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list) and key in STRATEGIC_LIST_KEYS and keyed_lists:
            result[key] = _merge_keyed(result.get(key), value, STRATEGIC_LIST_KEYS[key],
                                       patch.get(f"$setElementOrder/{key}"))
        elif isinstance(value, dict):
            result[key] = strategic_merge(result.get(key), value, keyed_lists)
        else:
            result[key] = _drop_directives(value)
    return result


def _merge_keyed(current: Any, items: list[Any], key: str, order: Any) -> list[Any]:
    """A list merged by ``key``; a patch item without the key (or ``{"$patch": "replace"}``) makes
    it a plain replacement, as for a list without a merge key."""
    if any(not isinstance(item, dict) or (key not in item and item.get("$patch") != "replace") for item in items) \
            or any(isinstance(item, dict) and item.get("$patch") == "replace" for item in items):
        return [_drop_directives(item) for item in items
                if not (isinstance(item, dict) and item.get("$patch") == "replace")]
    result = [item for item in current if isinstance(item, dict)] if isinstance(current, list) else []
    for item in items:
        position = next((i for i, existing in enumerate(result) if existing.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if position is not None:
                result.pop(position)
        elif position is None:
            result.append(_drop_directives(item))
        else:
            result[position] = strategic_merge(result[position], item)
    if isinstance(order, list):
        ranks = {str(_order_key(entry, key)): rank for rank, entry in enumerate(order)}
        result.sort(key=lambda item: ranks.get(str(item.get(key)), len(ranks)))
    return result


def _order_key(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else entry


def _drop_directives(patch: Any) -> Any:
    if isinstance(patch, dict):
        return {key: _drop_directives(value) for key, value in patch.items() if not key.startswith("$")}
    if isinstance(patch, list):
        return [_drop_directives(item) for item in patch]
    return patch


def json_patch(target: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """RFC 6902 (add, remove, replace, move, copy, test); a failed op is a 422 like the real server."""
    document: Any = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise bad_request(f"invalid JSON patch operation: {operation!r}")
        op, path = operation["op"], _pointer(operation["path"])
        if op == "add":
            document = _add(document, path, copy.deepcopy(_value(operation)))
        elif op == "remove":
            document = _remove(document, path)[0]
        elif op == "replace":
            document = _remove(document, path)[0]
            document = _add(document, path, copy.deepcopy(_value(operation)))
        elif op == "move":
            source = _pointer(operation.get("from", ""))
            document, moved = _remove(document, source)
            document = _add(document, path, moved)
        elif op == "copy":
            source = _pointer(operation.get("from", ""))
            document = _add(document, path, copy.deepcopy(_get(document, source)))
        elif op == "test":
            if _get(document, path) != _value(operation):
                raise _patch_failed(f"testing value {operation['path']} failed")
        else:
            raise bad_request(f"unknown JSON patch operation: {op!r}")
    return document


def _value(operation: dict[str, Any]) -> Any:
    if "value" not in operation:
        raise bad_request(f"JSON patch operation {operation['op']!r} needs a value")
    return operation["value"]


def _patch_failed(message: str) -> ApiError:
    return ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {message}")


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]] if path else []


def _get(document: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            raise _patch_failed(f"path /{'/'.join(path)} does not exist")
    return document


def _add(document: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(document, path[:-1])
    key = path[-1]
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        if key == "-":
            parent.append(value)
        elif key.isdigit() and int(key) <= len(parent):
            parent.insert(int(key), value)
        else:
            raise _patch_failed(f"index {key} is out of range")
    else:
        raise _patch_failed(f"cannot add to /{'/'.join(path)}")
    return document


def _remove(document: Any, path: list[str]) -> tuple[Any, Any]:
    if not path:
        return None, document
    parent = _get(document, path[:-1])
    key = path[-1]
    if isinstance(parent, dict) and key in parent:
        return document, parent.pop(key)
    if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        return document, parent.pop(int(key))
    raise _patch_failed(f"path /{'/'.join(path)} does not exist")
