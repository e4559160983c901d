"""The request handler: kmock's ``KubernetesScaffold`` (discovery, request log, reaction DSL)
with a real API server's behaviour on top, backed by ``ObjectStore``.

Why not kmock's ``KubernetesEmulator``: it keeps objects as plain merged dicts, mutating them
before any reaction runs, and has no resourceVersion, subresources, selectors or schemas; its
path parser also mistakes ``/api/v1/namespaces/NAME`` for a namespace prefix. So we keep
kmock's scaffold and DSL (reactions such as ``handler['patch', kmock.resource('v1/pods')] << 500``
still take precedence over our fallbacks) and replace the stateful half.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

# kmock's request model, which our reactions are matched against
from kmock._internal import parsing, rendering

from kubeapi_emulator import errors, openapi, protobuf, tables
from kubeapi_emulator.admission import Attributes, WebhookAdmission, warning_headers
from kubeapi_emulator.audit import AuditLog, audit_record
from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.faults import FaultPlan
from kubeapi_emulator.fieldmanagers import record_update, server_side_apply
from kubeapi_emulator.patching import APPLY_PATCH, apply_patch
from kubeapi_emulator.resources import (
    BUILTIN_RESOURCES,
    KOPF_PEERING_CRDS,
    VERBS,
    ResourceSpec,
    specs_from_crd,
)
from kubeapi_emulator.scheduler import POD_STORAGE, bind
from kubeapi_emulator.schema import unknown_fields
from kubeapi_emulator.selectors import object_selector
from kubeapi_emulator.store import (
    DEFAULT_HISTORY_LIMIT,
    ObjectStore,
    StorageKey,
    StoredEvent,
)
from kubeapi_emulator.strategies import JOB_STORAGE, SCALABLE, STRATEGIES, apply_defaults, scale_of

logger = logging.getLogger(__name__)

CRD_STORAGE: StorageKey = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_STORAGE: StorageKey = ("", "namespaces")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_OBJECT_SUBRESOURCES = {"status", "finalize"}
FIELD_VALIDATION_DIRECTIVES = ("Ignore", "Warn", "Strict")


def parse_api_path(path: str) -> parsing.ParsedPath:
    """kmock's path parser, except that ``/api/v1/namespaces[/NAME[/status]]`` is the Namespace
    resource itself (kmock reads it as a namespace prefix and fails)."""
    parts = [part for part in path.strip("/").split("/") if part]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return parsing.parse_path(path)  # discovery paths and non-API paths: kmock reads them right
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and not (group == "" and rest[2] in _OBJECT_SUBRESOURCES):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return parsing.ParsedPath(group, version, plural, namespace, name, subresource)


_PARSE_CACHE_LIMIT = 1024  # names a client may invent (bad paths, odd methods) are looked up, not kept past this


@attrs.define
class RequestVocabulary:
    """kmock's method and resource objects, built once per name for one server (building a
    ``kmock.resource`` costs far more than looking one up, on every request)."""

    methods: dict[str, kmock.method] = attrs.field(factory=dict)
    resources: dict[tuple[str, str | None, str | None], kmock.resource] = attrs.field(factory=dict)

    def method(self, name: str) -> kmock.method:
        method = self.methods.get(name)
        if method is None:
            method = kmock.method(name)
            if len(self.methods) < _PARSE_CACHE_LIMIT:
                self.methods[name] = method
        return method

    def resource(self, group: str, version: str | None, plural: str | None) -> kmock.resource:
        key = (group, version, plural)
        resource = self.resources.get(key)
        if resource is None:
            resource = kmock.resource(group=group, version=version, plural=plural)
            if len(self.resources) < _PARSE_CACHE_LIMIT:
                self.resources[key] = resource
        return resource


def _refuse_non_json_constant(name: str) -> Any:
    """NaN and Infinity are Python's extensions, not JSON: a real API server refuses such a body."""
    raise ValueError(f"{name} is not valid JSON")


async def parse_request(raw_request: aiohttp.web.BaseRequest, *, id: int,
                        vocabulary: RequestVocabulary | None = None) -> rendering.Request:
    """Build kmock's ``Request`` (so its filters and assertions work) with our path parsing;
    PUT counts as the UPDATE action, as PATCH does, and a POST to a subresource as CREATE."""
    body = await raw_request.read()
    text = body.decode("utf-8", errors="replace")
    data: Any
    if body and raw_request.headers.get("Content-Type", "").startswith(protobuf.PROTOBUF):
        data = protobuf.decode(body)  # kubectl's typed clients: create namespace, configmap, ...
    else:
        try:
            data = json.loads(text, parse_constant=_refuse_non_json_constant) if text.strip() else None
        except ValueError:
            data = None
    parsed = parse_api_path(raw_request.path)
    vocabulary = vocabulary or RequestVocabulary()
    resource = None if parsed.group is None else vocabulary.resource(parsed.group, parsed.version, parsed.plural)
    method = vocabulary.method(raw_request.method)
    params = dict(raw_request.query)
    action = parsing.guess_k8s(parsed, method, params)
    if action is None and method == kmock.method.PUT and parsed.name is not None:
        action = kmock.action.UPDATE
    if action is None and method == kmock.method.POST and parsed.name is not None and parsed.subresource:
        action = kmock.action.CREATE  # POST to an object's subresource creates it (pods/binding)
    return rendering.Request(
        id=id, raw_request=raw_request, url=raw_request.url, method=method,
        params=params, headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
        data=data, body=body, text=text,
        action=action, resource=resource, namespace=parsed.namespace, name=parsed.name,
        subresource=parsed.subresource,
    )


_EVENTS_PER_WRITE = 256  # watch events joined into one write at most
# The watch event types the server sends, each line's start encoded once.
_EVENT_PREFIXES: Mapping[str, bytes] = {
    event_type: ('{"type": ' + json.dumps(event_type) + ', "object": ').encode()
    for event_type in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
}


def _event_line(event_type: str, encoded_object: bytes) -> bytes:
    """``json.dumps({"type": event_type, "object": obj}) + "\\n"`` from ``obj``'s encoding."""
    prefix = _EVENT_PREFIXES.get(event_type) or ('{"type": ' + json.dumps(event_type) + ', "object": ').encode()
    return prefix + encoded_object + b"}\n"


def _merged(headers: Mapping[str, str] | None, warnings: list[str]) -> dict[str, str] | None:
    """Response headers with the admission webhooks' warnings joined to any ``Warning`` already there."""
    merged = dict(headers or {})
    extra = warning_headers(warnings).get("Warning")
    if extra:
        merged["Warning"] = f"{merged['Warning']}, {extra}" if merged.get("Warning") else extra
    return merged or None


def _dry_run(request: rendering.Request) -> bool:
    """``?dryRun=All``: the write is checked and answered, not stored (kubectl diff, --dry-run=server)."""
    value = request.params.get("dryRun")
    if value in (None, ""):
        return False
    if value != "All":
        raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return True


JOB_ORPHANS_WARNING = ("child pods are preserved by default when jobs are deleted; set propagationPolicy=Background "
                       "to remove them or set propagationPolicy=Orphan to suppress this warning")


def _default_propagation(spec: ResourceSpec, options: dict[str, Any]) -> dict[str, str] | None:
    """batch/v1 Jobs orphan their pods unless the delete says otherwise (the real server's
    default for that API, with its warning); every other kind deletes them in the background."""
    if spec.storage_key != JOB_STORAGE or "propagationPolicy" in options or "orphanDependents" in options:
        return None
    options["propagationPolicy"] = "Orphan"
    return {"Warning": "299 - " + json.dumps(JOB_ORPHANS_WARNING)}


def _version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' order of versions: GA before beta before alpha, higher numbers first."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (0, 0, 0, version)
    stability = {"alpha": 1, "beta": 2}.get(match.group(2) or "", 3)
    return (stability, int(match.group(1)), int(match.group(3) or 0), version)


def _initial_status(storage_key: StorageKey, obj: dict[str, Any]) -> Any:
    """What status a new object starts with, per the real server's create strategies."""
    if storage_key == ("", "pods"):
        return {"phase": "Pending"}  # the kubelet (or a test playing it) moves it on via /status
    if storage_key == NAMESPACE_STORAGE:
        return {"phase": "Active"}
    if storage_key == JOB_STORAGE or storage_key in SCALABLE:
        return {}  # their controllers fill it
    if storage_key in {("", "nodes"), ("", "services")}:
        return obj.get("status")  # kept as posted (a kubelet registers its node with status)
    if storage_key == CRD_STORAGE:
        spec = obj.get("spec") or {}
        return {
            "acceptedNames": spec.get("names") or {},
            "storedVersions": [v.get("name") for v in spec.get("versions") or [] if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted"},
            ],
        }
    return None  # custom resources: status is dropped on create, set via /status


@attrs.define(kw_only=True)
class KubernetesApiEmulator(kmock.KubernetesScaffold):
    """A kmock handler that behaves like a Kubernetes API server (see docs/emulator.md)."""

    history_limit: int = DEFAULT_HISTORY_LIMIT
    require_namespaces: bool = False
    bookmark_interval: float = 5.0
    max_recorded_requests: int = 2000  # kmock keeps every request for assertions; we keep the latest
    faults: FaultPlan = attrs.field(factory=FaultPlan)
    audit: AuditLog | None = None  # when set, every request is recorded as RBAC would see it
    # Where a webhook's clientConfig.service is reached: "namespace/name" -> "host:port" (kubeapi_emulator.admission).
    webhook_services: Mapping[str, str] = attrs.field(factory=dict)
    store: ObjectStore = attrs.field(init=False)
    admission: WebhookAdmission = attrs.field(init=False)
    _specs: dict[tuple[str, str, str], ResourceSpec] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[tuple[StorageKey, str, str]]] = attrs.field(
        factory=lambda: defaultdict(set), init=False)
    _live_uids: set[str] = attrs.field(factory=set, init=False)
    _request_count: int = attrs.field(default=0, init=False)
    _own_reaction_count: int = attrs.field(default=0, init=False)
    _background: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _object_routes: tuple[Any, ...] = attrs.field(default=(), init=False)  # routes answering one stored object
    _openapi_cache: dict[Any, Any] = attrs.field(factory=dict, init=False)  # documents, until a resource changes
    _vocabulary: RequestVocabulary = attrs.field(factory=RequestVocabulary, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store = ObjectStore(history_limit=self.history_limit, require_namespaces=self.require_namespaces,
                                 strategies=STRATEGIES)
        self.store.listeners.append(self._on_stored_event)
        self.admission = WebhookAdmission(
            self.store, lambda name: self.store.find(self.spec_for("", "v1", "namespaces"), None, name),
            lambda group, plural: [s.version for s in self._specs.values() if (s.group, s.plural) == (group, plural)],
            service_routes=self.webhook_services, require_namespaces=self.require_namespaces)
        for spec in BUILTIN_RESOURCES:
            self._register(spec)
        for crd in KOPF_PEERING_CRDS:
            self.install_crd(crd)
        for name in INITIAL_NAMESPACES:
            self._create(self.spec_for("", "v1", "namespaces"), None, {"metadata": {"name": name}})
        self.fallback[kmock.action.LIST] << self._serve_list
        self.fallback[kmock.action.WATCH] << self._serve_watch
        self.fallback[kmock.action.FETCH] << self._serve_fetch
        self.fallback[kmock.action.CREATE] << self._serve_create
        self.fallback[kmock.action.UPDATE] << self._serve_update
        self.fallback[kmock.action.DELETE] << self._serve_delete
        for probe in ("/healthz", "/readyz", "/livez"):
            self.fallback["get", probe] << b"ok"
        self._own_reaction_count = len(self._payloads)
        self._object_routes = (self._serve_fetch, self._serve_create, self._serve_update, self._serve_delete)

    # -- public helpers (also for tests that set up state without HTTP) ---------------------------

    def install_crd(self, crd: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace a CRD object and serve its resource, as ``kubectl apply`` would.
        Replacing keeps the objects of the resource (only deleting a CRD deletes them)."""
        spec = self.spec_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        name = (crd.get("metadata") or {}).get("name", "")
        if self.store.find(spec, None, name) is not None:
            self._check_crd(spec, crd)
            replacement = {key: value for key, value in crd.items() if key != "status"}
            return self.store.update(spec, None, name, lambda current: {**replacement, "status": current.get("status")})
        return self._create(spec, None, dict(crd))

    def spec_for(self, group: str, version: str, plural: str) -> ResourceSpec:
        spec = self._specs.get((group, version, plural))
        if spec is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"group": group, "kind": plural})
        return spec

    def specs(self) -> list[ResourceSpec]:
        return list(self._specs.values())

    # -- kmock entry point -----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        raw_response: aiohttp.web.StreamResponse | None = None
        if self.audit is not None:
            self.audit.add(self._audit_record(raw_request))
        try:
            request = await parse_request(raw_request, id=self._request_count, vocabulary=self._vocabulary)
            self._request_count += 1
            self._record(request)
            fault = self.faults.fault_for(
                request.action.name if request.action else None,
                request.resource.plural if request.resource else None)
            if fault is not None:
                raise fault
            try:
                return await self._dispatch(request)
            except rendering.StreamingError as e:  # kmock wraps errors raised while streaming
                raw_response = e.args[0]
                raise e.__cause__ or e  # noqa: B904 - the original error, as if kmock had not wrapped it
        except Exception as exc:
            if raw_response is not None and raw_response.prepared:
                await self._stream_error(exc, raw_response)
                await raw_response.write_eof()
                return raw_response
            if isinstance(exc, ApiError):
                headers = {**({"Retry-After": "1"} if exc.code in (429, 503) else {}), **exc.headers} or None
                return aiohttp.web.json_response(exc.as_status(), status=exc.code, headers=headers)
            if isinstance(exc, kmock.KubernetesError):
                return await self._render_error(exc)
            logger.exception("The emulated API server failed on %s %s", raw_request.method, raw_request.path)
            return aiohttp.web.json_response(
                ApiError(500, "InternalError", f"{type(exc).__name__}: {exc}",
                         {"causes": [{"message": traceback.format_exc()}]}).as_status(), status=500)

    async def _dispatch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Serve directly unless a test added kmock reactions; then let kmock choose.

        kmock matches a request against each reaction by scanning its whole request log, which
        costs O(requests served) per request; our own routes need no matching at all.
        """
        if len(self._payloads) != self._own_reaction_count:
            return await self._handle(request)
        route = self._route(request)
        if route is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if route == self._serve_watch:  # kmock renders the stream; as JSON, which kubectl's decoder needs
            return await rendering.Response(payload=route, headers={"Content-Type": "application/json"})(request)
        if isinstance(route, bytes):
            return await rendering.Response(payload=route)(request)
        result = await route(request)
        status = 200
        headers: dict[str, str] | None = None
        if isinstance(result, rendering.Response):
            answer = result
            headers = {k: v for k, v in (answer.headers or {}).items() if v is not None}
            result, status = answer.payload, answer.status or 200
        if route in self._object_routes:
            # A stored object: encoded once, the same bytes its watch event will carry.
            # The same bytes and headers as json_response(result) would give.
            response = aiohttp.web.Response(body=self.store.encoded(result), status=status,
                                            content_type="application/json", charset="utf-8")
            response.headers.update(headers or {})
            return response
        return aiohttp.web.json_response(result, status=status, headers=headers)

    def _route(self, request: rendering.Request) -> Any:
        path = request.url.path.rstrip("/") or "/"
        if request.method == kmock.method.DELETE and request.resource is not None and request.resource.plural \
                and request.name is None:
            return self._serve_delete_collection
        if request.action is not None and request.resource is not None and request.resource.plural:
            return {
                kmock.action.LIST: self._serve_list, kmock.action.WATCH: self._serve_watch,
                kmock.action.FETCH: self._serve_fetch, kmock.action.CREATE: self._serve_create,
                kmock.action.UPDATE: self._serve_update, kmock.action.DELETE: self._serve_delete,
            }.get(request.action)
        if request.method != kmock.method.GET:
            return None
        if path in ("/healthz", "/readyz", "/livez"):
            return b"ok"
        fixed = {"/": self._serve_root, "/api": self._serve_api, "/apis": self._serve_apis,
                 "/version": self._serve_server_version, "/openapi/v2": self._serve_openapi_v2,
                 "/openapi/v3": self._serve_openapi_v3_discovery}
        if path in fixed:
            return fixed[path]
        if path.startswith("/openapi/v3/"):
            return self._serve_openapi_v3
        if re.fullmatch(r"/apis/[^/]+", path):
            return self._serve_group
        if re.fullmatch(r"/apis/[^/]+/[^/]+|/api/[^/]+", path):
            return self._serve_version
        return None

    async def _serve_root(self, request: rendering.Request) -> rendering.Payload:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/readyz", "/livez", "/openapi/v2", "/openapi/v3"}
        for spec in self._specs.values():
            if spec.group:
                paths |= {f"/apis/{spec.group}", f"/apis/{spec.group}/{spec.version}"}
        return {"paths": sorted(paths)}

    async def _stream_error(self, exc: Exception, raw_response: aiohttp.web.StreamResponse) -> None:
        status = exc.as_status() if isinstance(exc, ApiError) else ApiError(500, "InternalError", repr(exc)).as_status()
        await raw_response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")

    @staticmethod
    def _audit_record(raw_request: aiohttp.web.BaseRequest) -> dict[str, Any]:
        try:
            parsed = parse_api_path(raw_request.path) if raw_request.path.startswith(("/api/", "/apis/")) else None
        except (ValueError, IndexError, TypeError):
            parsed = None  # a malformed path: recorded as a non-resource URL
        return audit_record(raw_request.method, raw_request.path, parsed, raw_request.query,
                            raw_request.headers.get("User-Agent", ""))

    def _record(self, request: rendering.Request) -> None:
        """Keep kmock's request log (used by its assertions) bounded in long runs."""
        self._requests.append(request)
        if len(self._requests) > self.max_recorded_requests:
            keep = self.max_recorded_requests // 2
            del self._requests[:-keep]
            for payload in self._payloads:
                del payload._requests[:-keep]

    async def __aexit__(self, *exc_info: Any) -> None:
        self.store.close_all_watches()
        await self.admission.close()
        for task in list(self._background):
            task.cancel()
        await super().__aexit__(*exc_info)

    # -- discovery (kmock's, made exact: core groupVersion "v1", sorted, subresource verbs) ---------

    async def _serve_apis(self, request: rendering.Request) -> rendering.Payload:
        groups = sorted({spec.group for spec in self._specs.values() if spec.group})
        return {"apiVersion": "v1", "kind": "APIGroupList", "groups": [self._group_info(g) for g in groups]}

    async def _serve_group(self, request: rendering.Request) -> rendering.Payload:
        group = request.resource.group if request.resource is not None else None
        if not group or not any(spec.group == group for spec in self._specs.values()):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"apiVersion": "v1", "kind": "APIGroup", **self._group_info(group)}

    def _group_info(self, group: str) -> dict[str, Any]:
        versions = sorted({spec.version for spec in self._specs.values() if spec.group == group},
                          key=_version_priority, reverse=True)
        entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        group, version = request.resource.group or "", request.resource.version or ""
        specs = sorted((s for s in self._specs.values() if (s.group, s.version) == (group, version)),
                       key=lambda s: s.plural)
        if not specs:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources: list[dict[str, Any]] = []
        for spec in specs:
            resources.append({
                "name": spec.plural, "singularName": spec.singular or spec.kind.lower(), "kind": spec.kind,
                "namespaced": spec.namespaced, "verbs": list(VERBS), "shortNames": list(spec.short_names),
                "categories": list(spec.categories),
            })
            if spec.has_status:
                resources.append({"name": f"{spec.plural}/status", "singularName": "", "kind": spec.kind,
                                  "namespaced": spec.namespaced, "verbs": ["get", "patch", "update"]})
            if spec.storage_key in SCALABLE:
                resources.append({"name": f"{spec.plural}/scale", "singularName": "", "group": "autoscaling",
                                  "version": "v1", "kind": "Scale", "namespaced": True,
                                  "verbs": ["get", "patch", "update"]})
            if spec.storage_key == POD_STORAGE:
                resources.append({"name": "pods/binding", "singularName": "", "kind": "Binding",
                                  "namespaced": True, "verbs": ["create"]})
        return {"apiVersion": "v1", "kind": "APIResourceList",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    # -- OpenAPI (see kubeapi_emulator.openapi) -------------------------------------------------

    def _group_version_specs(self) -> dict[tuple[str, str], list[ResourceSpec]]:
        grouped: dict[tuple[str, str], list[ResourceSpec]] = defaultdict(list)
        for spec in self._specs.values():
            grouped[(spec.group, spec.version)].append(spec)
        return grouped

    def _openapi_v3_documents(self) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
        cached = self._openapi_cache.get("v3")
        if cached is None:
            cached = {}
            for key, specs in self._group_version_specs().items():
                document = openapi.v3_document(specs)
                cached[key] = (document, openapi.document_hash(document))
            self._openapi_cache["v3"] = cached
        return cached

    async def _serve_openapi_v3_discovery(self, request: rendering.Request) -> rendering.Payload:
        documents = self._openapi_v3_documents()
        return openapi.v3_discovery(documents, {key: digest for key, (_, digest) in documents.items()})

    async def _serve_openapi_v3(self, request: rendering.Request) -> rendering.Payload:
        wanted = request.url.path.rstrip("/").removeprefix("/openapi/v3/")
        for (group, version), (document, _) in self._openapi_v3_documents().items():
            if openapi.group_version_key(group, version) == wanted:
                return document
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    async def _serve_openapi_v2(self, request: rendering.Request) -> rendering.Payload:
        document = self._openapi_cache.get("v2")
        if document is None:
            document = self._openapi_cache["v2"] = openapi.v2_document(self._specs.values())
        return document

    # -- serving ---------------------------------------------------------------------------------

    def _resolve(self, request: rendering.Request) -> ResourceSpec:
        assert request.resource is not None  # only API paths get a k8s action
        spec = self.spec_for(request.resource.group or "", request.resource.version or "",
                             request.resource.plural or "")
        if request.namespace is not None and not spec.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return spec

    def _selector(self, request: rendering.Request) -> Any:
        matches = object_selector(request.params.get("labelSelector"), request.params.get("fieldSelector"))
        if request.name is None:
            return matches
        return lambda obj: (obj.get("metadata") or {}).get("name") == request.name and matches(obj)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        spec = self._resolve(request)
        items, version = self.store.list(spec, request.namespace, self._selector(request))
        if tables.wants_table(request.headers.get("Accept")):
            return tables.table(spec, items, resource_version=version,
                                include_object=request.params.get("includeObject"))
        return {
            "apiVersion": spec.api_version,
            "kind": f"{spec.kind}List",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        spec = self._resolve(request)
        if request.subresource not in (None, "status") and not self._is_scale(spec, request):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        assert request.name is not None
        obj = self.store.get(spec, request.namespace, request.name)
        if request.subresource == "scale":
            return scale_of(obj)
        if tables.wants_table(request.headers.get("Accept")):
            return tables.table(spec, [obj], resource_version=obj["metadata"].get("resourceVersion"),
                                include_object=request.params.get("includeObject"))
        return obj

    @staticmethod
    def _check_media_type(request: rendering.Request, accepted: tuple[str, ...]) -> str:
        """The body's media type; 415 for one the emulator cannot read (protobuf, CBOR), so a
        client that can falls back to JSON, as with a server that lacks the type."""
        media_type = request.headers.get("Content-Type", accepted[0]).split(";")[0].strip().lower() or accepted[0]
        if media_type not in accepted and request.body.strip():
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types include: "
                           f"{', '.join(accepted)}")
        return media_type

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        spec = self._resolve(request)
        self._check_media_type(request, ("application/json", protobuf.PROTOBUF))
        if request.subresource == "binding" and spec.storage_key == POD_STORAGE and request.name:
            # What kube-scheduler calls to bind a pod (kubeapi_emulator.scheduler.bind).
            if request.body.strip() and request.data is None:
                raise errors.bad_request("the request body is not valid JSON")
            namespace, name = request.namespace or "default", request.name
            # Admission sees the Binding (a dry run binds nothing and answers the Binding as admitted).
            bound, binding_warnings = await self.admission.create(
                self._attributes(spec, request, "CREATE", name, namespace, kind="Binding"), request.data,
                lambda body, dry_run: body if dry_run else bind(self.store, spec, namespace, name, body))
            return rendering.Response(status=201, payload=bound, headers=_merged(None, binding_warnings))
        if request.subresource is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        warnings = self._check_fields(spec, request, request.data)
        apply_defaults(spec.storage_key, request.data)  # before admission, as a real server's decoding does
        manager = request.params.get("fieldManager")
        managed = (lambda obj: record_update(None, obj, manager, spec.api_version)) if manager else None
        meta = found if isinstance(request.data, dict) and isinstance(found := request.data.get("metadata"), dict) \
            else {}
        created, admission_warnings = await self.admission.create(
            self._attributes(spec, request, "CREATE", str(meta.get("name") or ""),
                             request.namespace or meta.get("namespace") or "default"),
            request.data,
            lambda body, dry_run: self._create(spec, request.namespace, body, copy_body=False,  # parsed for it alone
                                               managed_fields=managed, dry_run=dry_run))
        return rendering.Response(status=201, payload=created, headers=_merged(warnings, admission_warnings))

    def _attributes(self, spec: ResourceSpec, request: rendering.Request, operation: str, name: str,
                    namespace: str | None, dry_run: bool | None = None,
                    extra_options: Mapping[str, Any] | None = None, kind: str | None = None) -> Attributes:
        """What admission webhooks are told about this write (kubeapi_emulator.admission)."""
        if spec.storage_key == NAMESPACE_STORAGE:
            namespace = "" if operation == "CREATE" else name  # the real server's attribute for a Namespace
        elif not spec.namespaced:
            namespace = ""
        dry_run = _dry_run(request) if dry_run is None else dry_run
        options: dict[str, Any] = {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"}
        if request.params.get("fieldManager") and operation != "DELETE":
            options["fieldManager"] = request.params["fieldManager"]
        if dry_run:
            options["dryRun"] = ["All"]
        options.update(extra_options or {})
        return Attributes(operation, spec.group, spec.version, spec.plural, kind or spec.kind,
                          request.subresource or "", namespace or "", name, dry_run, options)

    @staticmethod
    def _check_fields(spec: ResourceSpec, request: rendering.Request, body: Any,
                      directive: str | None = None) -> dict[str, str] | None:
        """Field validation of a write's body (``?fieldValidation=``, Warn by default): an unknown
        field is refused (Strict), reported in a ``Warning`` header (Warn) or dropped (Ignore)."""
        directive = directive or request.params.get("fieldValidation") or "Warn"
        if directive not in FIELD_VALIDATION_DIRECTIVES:
            raise errors.bad_request(f"fieldValidation must be one of {', '.join(FIELD_VALIDATION_DIRECTIVES)}, "
                                     f"not {directive!r}")
        if directive == "Ignore" or not isinstance(body, dict):
            return None
        unknown = unknown_fields(body, spec.schema.structural if spec.schema is not None else None)
        if not unknown:
            return None
        texts = [f'unknown field "{field}"' for field in unknown]
        if directive == "Strict":
            raise errors.bad_request(f'{spec.kind} in version "{spec.version}" cannot be handled as a {spec.kind}: '
                                     f"strict decoding error: {', '.join(texts)}")
        return {"Warning": ", ".join("299 - " + json.dumps(text) for text in texts)}

    @staticmethod
    def _check_crd(spec: ResourceSpec, body: Any) -> None:
        """A CRD we could not serve is refused (422), not stored."""
        try:
            specs_from_crd(body if isinstance(body, Mapping) else {})
        except (ValueError, TypeError, AttributeError) as e:
            name = str(((body if isinstance(body, Mapping) else {}).get("metadata") or {}).get("name"))
            raise errors.invalid(spec.group, spec.kind, name,
                                 [{"reason": "FieldValueInvalid", "field": "spec", "message": str(e)}]) from e

    def _create(self, spec: ResourceSpec, namespace: str | None, body: Any, copy_body: bool = True,
                managed_fields: Any = None, dry_run: bool = False) -> dict[str, Any]:
        if spec.storage_key == CRD_STORAGE:
            self._check_crd(spec, body)
        if spec.storage_key == ("", "secrets") and isinstance(body, dict) and not body.get("type"):
            body["type"] = "Opaque"  # the real server's default
        if spec.storage_key == NAMESPACE_STORAGE and isinstance(body, dict):
            name = (body.get("metadata") or {}).get("name")
            if name:  # the label every real namespace carries
                meta = body.setdefault("metadata", {})
                meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": name}
        return self.store.create(spec, namespace, body,
                                 initial_status=lambda obj: _initial_status(spec.storage_key, obj),
                                 copy_body=copy_body, managed_fields=managed_fields, dry_run=dry_run)

    @staticmethod
    def _is_scale(spec: ResourceSpec, request: rendering.Request) -> bool:
        return request.subresource == "scale" and spec.storage_key in SCALABLE

    def _update_scale(self, spec: ResourceSpec, request: rendering.Request, content_type: str) -> Any:
        """``PUT``/``PATCH`` of ``/scale`` (autoscaling/v1 Scale): only ``spec.replicas`` is written."""
        assert request.name is not None
        current = scale_of(self.store.get(spec, request.namespace, request.name))
        body = request.data
        wanted = body if request.method == kmock.method.PUT else apply_patch(current, body, content_type)
        replicas = (wanted.get("spec") or {}).get("replicas") if isinstance(wanted, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid("autoscaling", "Scale", request.name, [{
                "reason": "FieldValueInvalid", "field": "spec.replicas",
                "message": f"Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0"}])
        precondition = ((wanted.get("metadata") or {}).get("resourceVersion")
                        if request.method == kmock.method.PUT else None)

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            meta = {**obj["metadata"], "resourceVersion": precondition} if precondition else obj["metadata"]
            return {**obj, "metadata": meta, "spec": {**(obj.get("spec") or {}), "replicas": replicas}}
        return scale_of(self.store.update(spec, request.namespace, request.name, change, copy_current=False,
                                          dry_run=_dry_run(request)))

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        spec = self._resolve(request)
        assert request.name is not None
        body = request.data
        content_type = request.headers.get("Content-Type", "application/merge-patch+json")
        if self._is_scale(spec, request):
            return self._update_scale(spec, request, content_type)
        if request.method != kmock.method.PUT and content_type.split(";")[0].strip() == APPLY_PATCH:
            return await self._server_side_apply(spec, request)  # YAML or JSON
        if request.method == kmock.method.PUT:
            self._check_media_type(request, ("application/json", protobuf.PROTOBUF))
        if request.body.strip() and body is None:
            raise errors.bad_request("the request body is not valid JSON")
        manager = request.params.get("fieldManager")
        warnings = self._check_fields(spec, request, body if request.method == kmock.method.PUT or
                                      content_type.split(";")[0].strip() != "application/json-patch+json" else None)
        def change(current: dict[str, Any]) -> Any:
            result = body if request.method == kmock.method.PUT else apply_patch(
                current, body, content_type, keyed_lists=spec.openapi_schema is None)
            if manager and isinstance(result, dict) and request.subresource is None:
                result = {**result, "metadata": {**(result.get("metadata") or {}), "managedFields": record_update(
                    current, result, manager, spec.api_version)}}
            return result
        # No change modifies the object it is given (apply_patch returns a new one), so the
        # store need not copy the stored object first.
        name = request.name
        updated, admission_warnings = await self.admission.update(
            self._attributes(spec, request, "UPDATE", name, request.namespace),
            lambda: self.store.find(spec, request.namespace, name), change,
            lambda chosen, dry_run: self.store.update(spec, request.namespace, name, chosen, request.subresource,
                                                      copy_current=False, dry_run=dry_run))
        headers = _merged(warnings, admission_warnings)
        return rendering.Response(payload=updated, headers=headers) if headers else updated

    async def _server_side_apply(self, spec: ResourceSpec, request: rendering.Request) -> Any:
        """``kubectl apply --server-side``: see kubeapi_emulator.fieldmanagers."""
        assert request.name is not None
        body = request.data
        if body is None:
            try:
                body = yaml.safe_load(request.text)
            except yaml.YAMLError as e:
                raise errors.bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(body, dict):
            raise errors.bad_request("an applied configuration must be an object")
        manager = request.params.get("fieldManager")
        if not manager:
            raise errors.bad_request("PATCH with apply must specify a fieldManager")
        meta = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
        if meta.get("name") not in (None, request.name):
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name on "
                                     f"the URL ({request.name})")
        if body.get("apiVersion") not in (None, spec.api_version) or body.get("kind") not in (None, spec.kind):
            raise errors.bad_request(f"the applied configuration is for {body.get('apiVersion')}/{body.get('kind')}, "
                                     f"not {spec.api_version}/{spec.kind}")
        # Server-side apply refuses fields the schema does not declare whatever fieldValidation says.
        self._check_fields(spec, request, body, directive="Strict")
        force = request.params.get("force") == "true"
        name = request.name
        if self.store.find(spec, request.namespace, name) is None and request.subresource is None:
            obj = server_side_apply(None, body, manager, force=force, api_version=spec.api_version)
            obj.setdefault("metadata", {})["name"] = name
            managed = obj["metadata"].pop("managedFields")
            created, warnings = await self.admission.create(
                self._attributes(spec, request, "CREATE", name, request.namespace or "default"), obj,
                lambda body, dry_run: self._create(spec, request.namespace, body, copy_body=False,
                                                   managed_fields=lambda _: managed, dry_run=dry_run))
            return rendering.Response(status=201, payload=created, headers=_merged(None, warnings))

        def change(current: dict[str, Any]) -> Any:
            return server_side_apply(current, body, manager, force=force, api_version=spec.api_version,
                                     subresource=request.subresource)
        updated, warnings = await self.admission.update(
            self._attributes(spec, request, "UPDATE", name, request.namespace),
            lambda: self.store.find(spec, request.namespace, name), change,
            lambda chosen, dry_run: self.store.update(spec, request.namespace, name, chosen, request.subresource,
                                                      dry_run=dry_run),
            copy_current=True)
        return rendering.Response(payload=updated, headers=_merged(None, warnings)) if warnings else updated

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        spec = self._resolve(request)
        assert request.name is not None
        options = dict(request.data) if isinstance(request.data, dict) else {}
        for option in ("propagationPolicy", "orphanDependents"):
            if option in request.params:
                options[option] = request.params[option] if option != "orphanDependents" else \
                    request.params[option] == "true"
        dry_run = _dry_run(request) or options.get("dryRun") == ["All"]
        propagation_warning = _default_propagation(spec, options)
        deleted, warnings = await self._admitted_delete(spec, request, request.name, request.namespace, options,
                                                        dry_run)
        headers = _merged(propagation_warning, warnings)
        return rendering.Response(payload=deleted, headers=headers) if headers else deleted

    async def _admitted_delete(self, spec: ResourceSpec, request: rendering.Request, name: str,
                               namespace: str | None, options: dict[str, Any],
                               dry_run: bool) -> tuple[dict[str, Any], list[str]]:
        attributes = self._attributes(spec, request, "DELETE", name, namespace, dry_run, {
            key: value for key, value in options.items()
            if key in ("propagationPolicy", "orphanDependents", "gracePeriodSeconds", "preconditions")})
        result: tuple[dict[str, Any], list[str]] = await self.admission.delete(
            attributes, lambda: self.store.find(spec, namespace, name),
            lambda dry_run: self.store.delete(spec, namespace, name, options, dry_run=dry_run))
        return result

    async def _serve_delete_collection(self, request: rendering.Request) -> rendering.Payload:
        """DELETE on a collection (``kubectl delete --all``): each match is deleted as on its own."""
        spec = self._resolve(request)
        items, _ = self.store.list(spec, request.namespace, self._selector(request))
        options = {key: request.params[key] for key in ("propagationPolicy",) if key in request.params}
        _default_propagation(spec, options)
        deleted = []
        refusal: ApiError | None = None
        for item in items:
            meta = item["metadata"]
            try:
                deleted.append((await self._admitted_delete(spec, request, meta["name"], meta.get("namespace"),
                                                            dict(options), _dry_run(request)))[0])
            except ApiError as error:
                if error.code != 404:  # 404: gone meanwhile; a refusal fails the request, the rest still go
                    refusal = refusal or error
        if refusal is not None:
            raise refusal
        return {"apiVersion": spec.api_version, "kind": f"{spec.kind}List",
                "metadata": {"resourceVersion": self.store.resource_version}, "items": deleted}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        spec = self._resolve(request)
        params = request.params
        loop = asyncio.get_running_loop()
        try:
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError:
            raise errors.bad_request(f"invalid timeoutSeconds: {params['timeoutSeconds']!r}") from None
        bookmarks = params.get("allowWatchBookmarks") == "true"
        try:
            initial, watch = self.store.watch(spec, request.namespace, self._selector(request),
                                              params.get("resourceVersion"))
        except ApiError as e:
            if e.code != 410:
                raise
            yield {"type": "ERROR", "object": e.as_status()}  # inside the stream, as a real server does
            return

        deadline = None if timeout is None else loop.time() + timeout
        cut_after = self.faults.cut_watches_after
        sent = 0
        # Each event is one JSON line, exactly as kmock writes a dict ({"type": ..., "object": ...}
        # through json.dumps), built around the object's cached encoding: an object is encoded once
        # however many watchers send it. Events ready together go out in one write.
        encoded_as = self.store.encoded_as
        if tables.wants_table(request.headers.get("Accept")):
            # kubectl get -w: each event carries a one-row Table; the columns come with the first only.
            include_object = request.params.get("includeObject")
            columns_sent = False

            def encoded_as(spec: ResourceSpec, obj: dict[str, Any]) -> bytes:
                nonlocal columns_sent
                shown = tables.table(spec, [self.store.present(spec, obj)], include_object=include_object,
                                     resource_version=obj["metadata"].get("resourceVersion"),
                                     with_columns=not columns_sent)
                columns_sent = True
                return json.dumps(shown).encode("utf-8")
        try:
            yield b""  # send the headers now: a watch is open even before anything happens
            chunk: list[bytes] = []
            for event_type, obj in initial:
                chunk.append(_event_line(event_type, encoded_as(spec, obj)))
                sent += 1
                if cut_after is not None and sent >= cut_after:
                    yield b"".join(chunk)
                    return
                if len(chunk) >= _EVENTS_PER_WRITE:
                    yield b"".join(chunk)
                    chunk = []
            if chunk:
                yield b"".join(chunk)
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                watch.wakeup.clear()
                while watch.pending:
                    chunk = []
                    cut = False
                    while watch.pending and len(chunk) < _EVENTS_PER_WRITE:
                        event_type, obj = watch.pending.popleft()
                        chunk.append(_event_line(event_type, encoded_as(spec, obj)))
                        sent += 1
                        if cut_after is not None and sent >= cut_after:
                            cut = True
                            break
                    yield b"".join(chunk)
                    if cut:
                        return
                if watch.closed:
                    return
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return
                if bookmarks and now >= next_bookmark:
                    yield {"type": "BOOKMARK", "object": {
                        "apiVersion": spec.api_version, "kind": spec.kind,
                        "metadata": {"resourceVersion": self.store.resource_version},
                    }}
                    next_bookmark = now + self.bookmark_interval
                waits = [deadline - now] if deadline is not None else []
                waits += [next_bookmark - now] if bookmarks else []
                try:
                    await asyncio.wait_for(watch.wakeup.wait(), min(waits) if waits else None)
                except TimeoutError:
                    pass
        finally:
            self.store.unwatch(watch)

    # -- reactions to stored changes: CRDs, garbage collection ------------------------------------

    def _register(self, spec: ResourceSpec) -> None:
        self._openapi_cache.clear()
        self._specs[(spec.group, spec.version, spec.plural)] = spec
        self.resources[kmock.resource(spec.group, spec.version, spec.plural)] = kmock.ResourceInfo(
            namespaced=spec.namespaced, kind=spec.kind, singular=spec.singular or spec.kind.lower(),
            verbs=set(VERBS), shortnames=set(spec.short_names), categories=set(spec.categories),
            subresources=({"status"} if spec.has_status else set()) | ({"scale"} if spec.storage_key in SCALABLE else set()),
        )

    def _unregister(self, group: str, plural: str) -> None:
        self._openapi_cache.clear()
        for key in [key for key in self._specs if (key[0], key[2]) == (group, plural)]:
            del self._specs[key]
            del self.resources[kmock.resource(*key)]

    def _on_stored_event(self, event: StoredEvent) -> None:
        meta = event.obj.get("metadata") or {}
        locator = (event.storage_key, meta.get("namespace") or "", meta.get("name") or "")
        for ref in (event.previous or {}).get("metadata", {}).get("ownerReferences") or []:
            self._dependents[str(ref.get("uid"))].discard(locator)
        if event.type == "ADDED":
            self._live_uids.add(str(meta.get("uid")))
        elif event.type == "DELETED":
            self._live_uids.discard(str(meta.get("uid")))
        if event.type != "DELETED":
            for ref in meta.get("ownerReferences") or []:
                if isinstance(ref, Mapping):
                    self._dependents[str(ref.get("uid"))].add(locator)
        else:
            for ref in meta.get("ownerReferences") or []:
                if isinstance(ref, Mapping):
                    self._dependents[str(ref.get("uid"))].discard(locator)

        if event.storage_key == CRD_STORAGE:
            spec = event.obj.get("spec") or {}
            group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
            self._unregister(group, plural)
            if event.type == "DELETED":
                self.store.drop_resource((group, plural))
            else:
                try:
                    for resource_spec in specs_from_crd(event.obj):
                        self._register(resource_spec)
                except (ValueError, TypeError, AttributeError):
                    logger.warning("CRD %s cannot be served", meta.get("name"))

        if event.type == "DELETED":
            uid = str(meta.get("uid"))
            dependents = self._dependents.pop(uid, set())
            namespace = meta.get("name") if event.storage_key == NAMESPACE_STORAGE else None
            if dependents or namespace:
                self._in_background(self._collect_garbage(uid, dependents, namespace, event.orphan_dependents))

    def _in_background(self, coroutine: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:  # no loop yet (set-up before start): collect right away
            asyncio.run(coroutine)
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _collect_garbage(self, owner_uid: str, dependents: set[tuple[StorageKey, str, str]],
                               namespace: str | None, orphan: bool) -> None:
        """Delete what the deleted object owned unless another owner lives on (then, as when
        orphaning, only drop the reference), and everything in a deleted namespace. Runs after the response, like the real collector."""
        targets = set(dependents)
        if namespace:
            targets |= {
                (storage_key, namespace, obj["metadata"]["name"])
                for storage_key, obj in self.store.all_objects()
                if obj["metadata"].get("namespace") == namespace
            }
        for storage_key, obj_namespace, name in sorted(targets):
            spec = next((s for s in self._specs.values() if s.storage_key == storage_key), None)
            if spec is None or self.store.find(spec, obj_namespace, name) is None:
                continue
            refs = (self.store.find(spec, obj_namespace, name) or {}).get("metadata", {}).get("ownerReferences") or []
            other_owners_alive = any(
                str(ref.get("uid")) != owner_uid and str(ref.get("uid")) in self._live_uids for ref in refs)
            try:
                if (orphan or other_owners_alive) and not namespace:
                    def drop_ref(obj: dict[str, Any]) -> dict[str, Any]:
                        refs = obj["metadata"].get("ownerReferences") or []
                        obj["metadata"]["ownerReferences"] = [r for r in refs if str(r.get("uid")) != owner_uid]
                        return obj
                    self.store.update(spec, obj_namespace, name, drop_ref)
                else:
                    self.store.delete(spec, obj_namespace, name, {"propagationPolicy": "Background"})
            except ApiError:
                logger.debug("Garbage collection skipped %s/%s", obj_namespace, name)
