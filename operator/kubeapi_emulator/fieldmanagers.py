"""Field managers: ``metadata.managedFields`` and server-side apply (``kubectl apply --server-side``).

A field set is a set of paths (tuples of keys). What is simplified, and why it suffices here:
every list is atomic (owned and replaced whole, as ``x-kubernetes-list-type: atomic``), so a list
of containers is one field; a field owned by a manager is reported in ``fieldsV1`` form
(``{"f:spec": {"f:gpus": {}}}``) without the ``.`` entries of the maps it created.

- Server-side apply (a PATCH of type ``application/apply-patch+yaml``, with ``fieldManager``):
  creates the object if absent; otherwise sets the fields applied, removes the fields this
  manager applied before and no longer applies (unless another manager owns them), and refuses
  with 409 Conflict a field that another manager owns with a different value, unless ``force``
  (then the field changes hands).
- Any other write that names a ``fieldManager`` (kubectl always does) records the fields it
  changed as that manager's ``Update``, and takes them away from the other managers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.store import copy_json, rfc3339_now

Path = tuple[str, ...]
APPLY, UPDATE = "Apply", "Update"
_MANAGED_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")


def field_paths(obj: Mapping[str, Any], *, with_status: bool = True) -> set[Path]:
    """The leaf fields of an object that managers own: its body and labels/annotations/finalizers/owners."""
    paths: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind") or (key == "status" and not with_status):
            continue
        if key == "metadata":
            if isinstance(value, Mapping):
                for meta_key in _MANAGED_METADATA:
                    if meta_key in value:
                        _leaves(value[meta_key], ("metadata", meta_key), paths)
            continue
        _leaves(value, (key,), paths)
    return paths


def _leaves(value: Any, prefix: Path, paths: set[Path]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _leaves(item, (*prefix, str(key)), paths)
    else:
        paths.add(prefix)


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def from_fields_v1(tree: Any, prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    if not isinstance(tree, Mapping):
        return paths
    for key, child in tree.items():
        if not isinstance(key, str) or not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        if isinstance(child, Mapping) and any(isinstance(k, str) and k.startswith("f:") for k in child):
            paths |= from_fields_v1(child, path)
        else:
            paths.add(path)
    return paths


_MISSING = object()


def value_at(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            child = obj[key] = {}
        obj = child
    obj[path[-1]] = copy_json(value)


def _remove(obj: dict[str, Any], path: Path) -> None:
    parents = []
    for key in path[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            return
        parents.append((obj, key))
        obj = child
    obj.pop(path[-1], None)
    for parent, key in reversed(parents):  # maps left empty by the removal go too
        if parent[key] == {} and key not in ("metadata", "spec"):
            del parent[key]
        else:
            break


def _entries(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(e) for e in ((obj.get("metadata") or {}).get("managedFields") or []) if isinstance(e, Mapping)]


def _entry(manager: str, operation: str, api_version: str, paths: set[Path], subresource: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"manager": manager, "operation": operation, "apiVersion": api_version,
                             "time": rfc3339_now(), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}
    if subresource:
        entry["subresource"] = subresource
    return entry


def _same_owner(entry: Mapping[str, Any], manager: str, operation: str, subresource: str | None) -> bool:
    return (entry.get("manager"), entry.get("operation"), entry.get("subresource") or None) == (
        manager, operation, subresource or None)


def record_update(old: Mapping[str, Any] | None, new: dict[str, Any], manager: str, api_version: str,
                  subresource: str | None = None) -> list[dict[str, Any]]:
    """The managedFields after ``manager`` wrote ``new`` over ``old`` (None: created)."""
    changed = {path for path in field_paths(new, with_status=subresource == "status" or old is None)
               if old is None or value_at(old, path) != value_at(new, path)}
    if old is not None:  # fields removed by the write are nobody's now
        changed |= {path for path in field_paths(old) if value_at(new, path) is _MISSING}
    present = field_paths(new)
    entries = []
    mine: set[Path] = set()
    for entry in _entries(old or {}):
        fields = from_fields_v1(entry.get("fieldsV1"))
        if _same_owner(entry, manager, UPDATE, subresource):
            mine = fields
            continue
        fields -= changed
        if fields:
            entries.append({**entry, "fieldsV1": to_fields_v1(fields)})
    mine = (mine | changed) & present
    if mine:
        entries.append(_entry(manager, UPDATE, api_version, mine, subresource))
    return entries


def server_side_apply(live: Mapping[str, Any] | None, applied: Mapping[str, Any], manager: str, *,
                      force: bool, api_version: str, subresource: str | None = None) -> dict[str, Any]:
    """The object after ``manager`` applied ``applied`` (``live`` None: it is created)."""
    applied_paths = field_paths(applied, with_status=subresource == "status")
    if live is None:
        result = copy_json(dict(applied))
        result.setdefault("metadata", {})["managedFields"] = [
            _entry(manager, APPLY, api_version, applied_paths, subresource)]
        return result
    conflicts: list[tuple[str, Path]] = []
    others: list[tuple[dict[str, Any], set[Path]]] = []
    previously_applied: set[Path] = set()
    for entry in _entries(live):
        fields = from_fields_v1(entry.get("fieldsV1"))
        if _same_owner(entry, manager, APPLY, subresource):
            previously_applied = fields
            continue
        for path in sorted(fields & applied_paths):
            if value_at(live, path) != value_at(applied, path):
                conflicts.append((str(entry.get("manager")), path))
        others.append((entry, fields))
    if conflicts and not force:
        raise _conflict(conflicts, api_version)
    taken = {path for _, path in conflicts}
    result = copy_json(dict(live))
    for path in applied_paths:
        _set(result, path, value_at(applied, path))
    still_owned = set().union(*(fields - taken for _, fields in others)) if others else set()
    for path in sorted(previously_applied - applied_paths - still_owned, key=len, reverse=True):
        _remove(result, path)
    entries = [{**entry, "fieldsV1": to_fields_v1(fields - taken)} for entry, fields in others if fields - taken]
    entries.append(_entry(manager, APPLY, api_version, applied_paths, subresource))
    result["metadata"]["managedFields"] = entries
    return result


def _conflict(conflicts: list[tuple[str, Path]], api_version: str) -> ApiError:
    def field(path: Path) -> str:
        return "".join(f".{key}" for key in path)

    texts = [f'conflict with "{manager}" using {api_version}: {field(path)}' for manager, path in conflicts]
    count = f"{len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}"
    return ApiError(409, "Conflict", f"Apply failed with {count}: " + "\n".join(texts), {
        "causes": [{"reason": "FieldManagerConflict", "message": text, "field": field(path)}
                   for text, (_, path) in zip(texts, conflicts, strict=True)]})
