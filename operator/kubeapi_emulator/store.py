"""The in-memory object store behind the emulated API server: the part that must act like etcd
plus the generic registry of a real API server.

Guarantees, the ones the operator and its tests rely on:
- every write bumps one global ``resourceVersion`` (a decimal string); a no-op write does not;
- ``uid``, ``creationTimestamp`` and ``generation`` are set by the server; ``generation`` grows
  only when something other than ``metadata`` (and ``status``, if a status subresource) changes;
- a write whose body carries a stale ``metadata.resourceVersion`` fails with 409 Conflict;
- with a status subresource, main-resource writes keep the stored status and ``/status`` writes
  change nothing but status;
- deleting an object with finalizers only sets ``deletionTimestamp``; it goes when they are gone;
- watches resume from any resourceVersion still in the bounded event history, else 410 Gone.

All methods are synchronous and called from the server's event loop only: with no ``await``
inside, each operation is atomic without locks, and a watch registers and replays its backlog
in one step, so no event falls between "list" and "watch".
"""

from __future__ import annotations

import asyncio
import builtins  # the store has a method named list, which hides the builtin in annotations
import itertools
import json
import secrets
import string
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubeapi_emulator import errors
from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.metadata import check_metadata
from kubeapi_emulator.resources import ResourceSpec

if TYPE_CHECKING:
    from kubeapi_emulator.strategies import KindStrategy

StorageKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace or "", name)
Predicate = Callable[[Mapping[str, Any]], bool]

DEFAULT_HISTORY_LIMIT = 100_000
DEFAULT_WATCH_BACKLOG_LIMIT = 100_000
JSON_CACHE_LIMIT = 4096  # encoded objects kept: enough for every watcher to catch up on a burst


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): several times faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def rfc3339(epoch_seconds: float) -> str:
    """``2026-11-26T10:00:00Z``: whole seconds in UTC, as the API server writes ``metav1.Time``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch_seconds)))


def rfc3339_now() -> str:
    """The current UTC time to the second, as the server writes timestamps."""
    return rfc3339(time.time())


@dataclass(frozen=True)
class StoredEvent:
    """One committed change, kept in the history so watches can resume from a resourceVersion."""
    resource_version: int
    storage_key: StorageKey
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    previous: dict[str, Any] | None = None
    orphan_dependents: bool = False


@dataclass(eq=False)
class Watch:
    """One open watch stream: its filter and the events waiting to be sent."""
    storage_key: StorageKey
    namespace: str | None
    matches: Predicate
    backlog_limit: int
    pending: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def offer(self, event: StoredEvent) -> None:
        translated = self.translate(event)
        if translated is None or self.closed:
            return
        self.pending.append(translated)
        if len(self.pending) > self.backlog_limit:
            # A client this far behind would be cut off by a real server too; it re-lists.
            self.pending.clear()
            self.closed = True
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()

    def translate(self, event: StoredEvent) -> tuple[str, dict[str, Any]] | None:
        """The event as this watcher sees it: an object that stops matching the selector is
        DELETED for it, one that starts matching is ADDED (the real server does the same)."""
        meta = event.obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return None
        now_matches = self.matches(event.obj)
        if event.type != "MODIFIED":
            return (event.type, event.obj) if now_matches else None
        was_matching = event.previous is not None and self.matches(event.previous)
        if now_matches and was_matching:
            return ("MODIFIED", event.obj)
        if now_matches:
            return ("ADDED", event.obj)
        if was_matching:
            return ("DELETED", event.obj)
        return None


class ObjectStore:
    def __init__(self, *, history_limit: int = DEFAULT_HISTORY_LIMIT,
                 watch_backlog_limit: int = DEFAULT_WATCH_BACKLOG_LIMIT,
                 require_namespaces: bool = False,
                 strategies: Mapping[StorageKey, KindStrategy] | None = None) -> None:
        self.require_namespaces = require_namespaces
        # Per-kind defaults and validation (kubeapi_emulator.strategies), by storage key.
        self.strategies: Mapping[StorageKey, KindStrategy] = strategies or {}
        self._counter = 0
        self._objects: dict[StorageKey, dict[ObjectKey, dict[str, Any]]] = defaultdict(dict)
        self._history: deque[StoredEvent] = deque()
        self._history_limit = history_limit
        self._history_floor = 0  # events after this resourceVersion are all in the history
        self._watch_backlog_limit = watch_backlog_limit
        self._watches: dict[StorageKey, set[Watch]] = defaultdict(set)
        self.listeners: list[Callable[[StoredEvent], None]] = []
        self._json_cache: dict[int, tuple[dict[str, Any], bytes]] = {}

    # -- reading ----------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self._counter)

    def get(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects[spec.storage_key].get(self._key(spec, namespace, name))
        if obj is None:
            raise errors.not_found(spec.group, spec.plural, name)
        return self.present(spec, obj)

    def find(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects[spec.storage_key].get(self._key(spec, namespace, name))

    def list(self, spec: ResourceSpec, namespace: str | None, matches: Predicate) -> tuple[list[dict[str, Any]], str]:
        items = [
            self.present(spec, obj)
            for (obj_namespace, _), obj in sorted(self._objects[spec.storage_key].items())
            if (namespace is None or obj_namespace == namespace) and matches(obj)
        ]
        return items, self.resource_version

    def all_objects(self) -> builtins.list[tuple[StorageKey, dict[str, Any]]]:
        return [(storage_key, obj) for storage_key, objs in self._objects.items() for obj in objs.values()]

    def watch(self, spec: ResourceSpec, namespace: str | None, matches: Predicate,
              since: str | None) -> tuple[builtins.list[tuple[str, dict[str, Any]]], Watch]:
        """Register a watch; return the events to send first and the live watch."""
        watch = Watch(spec.storage_key, namespace, matches, self._watch_backlog_limit)
        if since in (None, "", "0"):
            # No position: the current state as ADDED events, like a real server.
            objs = self._objects[spec.storage_key]
            initial = [
                ("ADDED", obj) for (obj_namespace, _), obj in sorted(objs.items())
                if (namespace is None or obj_namespace == namespace) and matches(obj)
            ]
        else:
            try:
                position = int(str(since))
            except ValueError:
                raise errors.bad_request(f"invalid resourceVersion: {since!r}") from None
            if position < self._history_floor:
                raise errors.gone(f"too old resource version: {position} ({self._history_floor})")
            initial = []
            for event in self._history:
                if event.resource_version > position and event.storage_key == spec.storage_key:
                    translated = watch.translate(event)
                    if translated is not None:
                        initial.append(translated)
        self._watches[spec.storage_key].add(watch)
        return initial, watch

    def unwatch(self, watch: Watch) -> None:
        self._watches[watch.storage_key].discard(watch)

    def open_watch_count(self) -> int:
        return sum(len(watches) for watches in self._watches.values())

    def close_all_watches(self) -> None:
        for watches in self._watches.values():
            for watch in list(watches):
                watch.close()

    def encoded(self, obj: dict[str, Any]) -> bytes:
        """``json.dumps(obj)`` as bytes, computed once per object and shared by the response and
        every watcher that sends it. Safe because the store never changes an object in place
        once stored (writes store new dicts); the cache holds the object itself, so an ``id``
        cannot be reused while its entry lives."""
        cache = self._json_cache
        entry = cache.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        data = json.dumps(obj).encode("utf-8")
        cache[id(obj)] = (obj, data)
        if len(cache) > JSON_CACHE_LIMIT:
            for stale in list(itertools.islice(cache, len(cache) - JSON_CACHE_LIMIT // 2)):
                del cache[stale]
        return data

    def encoded_as(self, spec: ResourceSpec, obj: dict[str, Any]) -> bytes:
        """A stored object encoded as ``present(spec, obj)`` (cached unless another version shows it)."""
        if obj.get("apiVersion") == spec.api_version:
            return self.encoded(obj)
        return json.dumps(self.present(spec, obj)).encode("utf-8")

    def present(self, spec: ResourceSpec, obj: dict[str, Any]) -> dict[str, Any]:
        """The object as the requested version shows it (same storage for all versions)."""
        if obj.get("apiVersion") == spec.api_version:
            return obj
        return {**obj, "apiVersion": spec.api_version}

    # -- writing ----------------------------------------------------------------------------

    def create(self, spec: ResourceSpec, namespace: str | None, body: Any,
               initial_status: Callable[[dict[str, Any]], Any] | None = None,
               *, copy_body: bool = True,
               managed_fields: Callable[[dict[str, Any]], Any] | None = None,
               dry_run: bool = False) -> dict[str, Any]:
        """Store a new object. ``managed_fields`` (if given) computes its ``metadata.managedFields``
        from the object as admitted (otherwise a client cannot set them on create). ``dry_run``
        (``?dryRun=All``): checked and answered as if created, but not stored."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        # With ``copy_body=False`` (a body parsed for this request alone) only the top level and
        # ``metadata``, which are changed here, are copied; the rest is shared, never modified.
        obj = copy_json(body) if copy_body else dict(body)
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be a JSON object")
        if not copy_body:
            meta = obj["metadata"] = copy_json(meta)
        name = meta.get("name") or ""
        if not name and isinstance(meta.get("generateName"), str) and meta["generateName"]:
            alphabet = string.ascii_lowercase + string.digits
            name = meta["generateName"] + "".join(secrets.choice(alphabet) for _ in range(5))
        if not isinstance(name, str) or not name:
            raise errors.invalid(spec.group, spec.kind, "", [{
                "reason": "FieldValueRequired", "field": "metadata.name",
                "message": "Required value: name or generateName is required",
            }])
        meta["name"] = name
        check_metadata(spec, meta, creating=True)
        if spec.namespaced:
            body_namespace = meta.get("namespace")
            if namespace and body_namespace and body_namespace != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request")
            namespace = namespace or body_namespace or "default"
            meta["namespace"] = namespace
            if self.require_namespaces and not self._objects[("", "namespaces")].get(("", namespace)):
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                               {"name": namespace, "kind": "namespaces"})
        else:
            meta.pop("namespace", None)
        key = self._key(spec, namespace, name)
        if key in self._objects[spec.storage_key]:
            raise errors.already_exists(spec.group, spec.plural, name)

        obj["apiVersion"], obj["kind"] = spec.api_version, spec.kind
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(server_field, None)
        if spec.has_status:
            status = initial_status(obj) if initial_status else None
            obj.pop("status", None) if status is None else obj.__setitem__("status", status)
        meta["uid"] = str(uuid.uuid4())  # before the kind's rules: a Job's generated selector names it
        strategy = self.strategies.get(spec.storage_key)
        if strategy is not None:
            causes = strategy.prepare_create(obj)
            if causes:
                raise errors.invalid(spec.group, spec.kind, name, causes)
        obj = self._admit(spec, obj)
        meta = obj["metadata"]
        if managed_fields is not None:
            meta["managedFields"] = managed_fields(obj)
        meta["creationTimestamp"] = rfc3339_now()
        meta["generation"] = 1
        if dry_run:
            return self.present(spec, obj)
        meta["resourceVersion"] = str(self._next_version())
        self._objects[spec.storage_key][key] = obj
        self._commit(StoredEvent(self._counter, spec.storage_key, "ADDED", obj))
        return self.present(spec, obj)

    def update(self, spec: ResourceSpec, namespace: str | None, name: str,
               change: Callable[[dict[str, Any]], Any], subresource: str | None = None,
               *, copy_current: bool = True, dry_run: bool = False) -> dict[str, Any]:
        """PUT and PATCH alike: ``change`` turns a copy of the stored object into the proposed one.

        ``copy_current=False`` hands ``change`` the stored object itself, for a ``change`` that
        never modifies its argument (a merge patch builds a new object; a PUT ignores it): the
        proposed object may then share unchanged parts with the stored one, which is safe
        because stored objects are never modified in place."""
        # "binding" (pods only: kubeapi_emulator.scheduler.bind) writes spec and status in one go.
        if subresource not in (None, "status", "binding") or (subresource == "status" and not spec.has_status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        key = self._key(spec, namespace, name)
        old = self._objects[spec.storage_key].get(key)
        if old is None:
            raise errors.not_found(spec.group, spec.plural, name)
        proposed = change(copy_json(old) if copy_current else old)
        if not isinstance(proposed, dict):
            raise errors.bad_request("the object must be a JSON object")
        proposed_meta = found if isinstance(found := proposed.get("metadata"), dict) else {}
        precondition = proposed_meta.get("resourceVersion")
        if precondition not in (None, "") and str(precondition) != old["metadata"]["resourceVersion"]:
            raise errors.conflict(spec.group, spec.plural, name)
        if proposed_meta.get("name") not in (None, "", name):
            raise errors.bad_request(
                f"the name of the object ({proposed_meta.get('name')}) does not match the name on the URL ({name})")

        # Below, only the top level and ``metadata`` of ``result`` are modified: the rest may be
        # shared with the stored object (never modified in place, so sharing is safe).
        if subresource == "status":
            result = {**old, "metadata": dict(old["metadata"])}
            if "status" in proposed:
                result["status"] = proposed["status"]
            else:
                result.pop("status", None)
        else:
            result = proposed if proposed is not old else dict(proposed)
            result["metadata"] = dict(proposed_meta)
            if spec.has_status and subresource != "binding":
                if "status" in old:
                    result["status"] = old["status"]
                else:
                    result.pop("status", None)
        # What only the server may set is carried over from the stored object.
        result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
        meta = result["metadata"]
        for server_field in ("name", "namespace", "uid", "creationTimestamp", "generation",
                             "deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            if server_field in old["metadata"]:
                meta[server_field] = old["metadata"][server_field]
            else:
                meta.pop(server_field, None)
        if "managedFields" not in meta and "managedFields" in old["metadata"]:
            meta["managedFields"] = old["metadata"]["managedFields"]  # left out of a write: kept, as the real server does
        check_metadata(spec, meta, creating=False)
        strategy = self.strategies.get(spec.storage_key)
        if strategy is not None and subresource is None:  # status and binding writes keep the spec
            causes = strategy.prepare_update(old, result)
            if causes:
                raise errors.invalid(spec.group, spec.kind, name, causes)
        result = self._admit(spec, result, only_status=subresource == "status")
        if result == old:
            return self.present(spec, old)  # a no-op write changes nothing, not even the version

        if self._spec_part(spec, result) != self._spec_part(spec, old):
            result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if dry_run:
            return self.present(spec, result)
        result["metadata"]["resourceVersion"] = str(self._next_version())
        self._objects[spec.storage_key][key] = result
        self._commit(StoredEvent(self._counter, spec.storage_key, "MODIFIED", result, previous=old))
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            self._remove(spec, key)
        return self.present(spec, result)

    def delete(self, spec: ResourceSpec, namespace: str | None, name: str,
               options: Mapping[str, Any] | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        options = options or {}
        key = self._key(spec, namespace, name)
        old = self._objects[spec.storage_key].get(key)
        if old is None:
            raise errors.not_found(spec.group, spec.plural, name)
        preconditions = options.get("preconditions") or {}
        for field_name in ("uid", "resourceVersion"):
            wanted = preconditions.get(field_name)
            if wanted and wanted != old["metadata"].get(field_name):
                raise ApiError(409, "Conflict",
                               f"Precondition failed: {field_name} in precondition: {wanted}, "
                               f"{field_name} in object meta: {old['metadata'].get(field_name)}",
                               {"name": name, "group": spec.group, "kind": spec.plural})
        orphan = options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") is True
        if dry_run:
            return self.present(spec, old)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return self.present(spec, old)
            marked = copy_json(old)
            marked["metadata"]["deletionTimestamp"] = rfc3339_now()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked["metadata"]["resourceVersion"] = str(self._next_version())
            self._objects[spec.storage_key][key] = marked
            self._commit(StoredEvent(self._counter, spec.storage_key, "MODIFIED", marked, previous=old))
            return self.present(spec, marked)
        return self.present(spec, self._remove(spec, key, orphan_dependents=orphan))

    def drop_resource(self, storage_key: StorageKey) -> builtins.list[dict[str, Any]]:
        """Forget every object of a resource (its CRD is gone); they are reported as DELETED."""
        removed = []
        for key in list(self._objects[storage_key]):
            obj = self._objects[storage_key].pop(key)
            gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._next_version())}}
            self._commit(StoredEvent(self._counter, storage_key, "DELETED", gone))
            removed.append(gone)
        return removed

    # -- internals --------------------------------------------------------------------------

    def _key(self, spec: ResourceSpec, namespace: str | None, name: str) -> ObjectKey:
        return ((namespace or "") if spec.namespaced else "", name)

    def _next_version(self) -> int:
        self._counter += 1
        return self._counter

    def _admit(self, spec: ResourceSpec, obj: dict[str, Any], only_status: bool = False) -> dict[str, Any]:
        if spec.schema is None:
            return obj
        # A /status write changed nothing else, and the rest was valid when stored.
        admitted, causes = spec.schema.admit_status(obj) if only_status else spec.schema.admit(obj)
        if causes:
            raise errors.invalid(spec.group, spec.kind, obj["metadata"].get("name", ""), causes)
        return admitted

    @staticmethod
    def _spec_part(spec: ResourceSpec, obj: Mapping[str, Any]) -> dict[str, Any]:
        skipped = ("metadata", "status") if spec.has_status else ("metadata",)
        return {key: value for key, value in obj.items() if key not in skipped}

    def _remove(self, spec: ResourceSpec, key: ObjectKey, orphan_dependents: bool = False) -> dict[str, Any]:
        obj = self._objects[spec.storage_key].pop(key)
        gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._next_version())}}
        self._commit(StoredEvent(self._counter, spec.storage_key, "DELETED", gone,
                                 orphan_dependents=orphan_dependents))
        return gone

    def _commit(self, event: StoredEvent) -> None:
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._history_floor = self._history.popleft().resource_version
        for watch in list(self._watches.get(event.storage_key, ())):
            watch.offer(event)
        for listener in self.listeners:
            listener(event)
