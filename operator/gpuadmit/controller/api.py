"""A small async Kubernetes REST client for the writes and lists the operator makes.

Every request the operator makes to the API server: lists, status patches, pod
creation and deletion, Events, and the watches (watch.py drives them). It uses the
same credentials kopf resolves (``kopf.ConnectionInfo``: kubeconfig or in-cluster
service account). Single requests go over a pool of keep-alive connections
(``http1.Http1Pool``, a fraction of aiohttp's CPU per request; aiohttp when a proxy
is configured), watches over aiohttp; thousands of status patches run concurrently
within ``max_concurrency`` in-flight requests instead of one by one.

Requests queue for a slot by urgency (``Urgency``): a decision's status write goes
before a pod creation, which goes before an Event, so a burst's decisions are not held
behind the writes that follow from them.

Transient failures (429 with Retry-After, 5xx, connection errors, timeouts) are
retried a few times with backoff; everything else raises ``ApiError`` carrying
the HTTP status, so the caller decides (409: re-read and retry next cycle; 404
on delete: already gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import json
import logging
import random
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf

from gpuadmit.controller.http1 import Answer, ConnectionFailed, Http1Pool

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
WATCH_CONNECTIONS = 16


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a kind lives in the API: enough to build its URLs."""

    group: str
    version: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


WORKLOADS = Resource("gpuadmit.io", "v1alpha1", "gpuworkloads", namespaced=True)
POLICIES = Resource("gpuadmit.io", "v1alpha1", "marginpolicies", namespaced=False)
QUOTAS = Resource("gpuadmit.io", "v1alpha1", "gpuquotas", namespaced=False)
NODES = Resource("", "v1", "nodes", namespaced=False)
PODS = Resource("", "v1", "pods", namespaced=True)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
JOBS = Resource("batch", "v1", "jobs", namespaced=True)
PYTORCHJOBS = Resource("kubeflow.org", "v1", "pytorchjobs", namespaced=True)
RAYJOBS = Resource("ray.io", "v1", "rayjobs", namespaced=True)
EVENTS = Resource("", "v1", "events", namespaced=True)
CLUSTER_PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)
NAMESPACED_PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings", namespaced=True)


class Urgency(enum.IntEnum):
    """Which waiting request gets the next free slot: the lowest value first."""

    DECISION = 0     # reads, status writes, deleting a preempted victim's pods
    MATERIALISE = 1  # creating the pods of an admitted workload
    EXPLAIN = 2      # Events and the class label


class RequestSlots:
    """At most ``limit`` requests in flight; a freed slot goes to the most urgent waiter,
    first come first served among equals."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, urgency: Urgency) -> AsyncIterator[None]:
        await self._acquire(urgency)
        try:
            yield
        finally:
            self._release()

    async def turn(self, urgency: Urgency) -> None:
        """Wait until a request of this urgency would get a slot (every more urgent waiter got one
        first), without keeping it: for work worth doing only then, such as building a request."""
        await self._acquire(urgency)
        self._release()

    async def _acquire(self, urgency: Urgency) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(urgency), next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # handed a slot just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(None)
                return
        self._free += 1


class ApiError(Exception):
    """A request the API server refused (or that never got an answer: status 0)."""

    def __init__(self, verb: str, path: str, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{verb} {path}: {status} {reason}: {message}".strip())
        self.verb = verb
        self.path = path
        self.status = status
        self.reason = reason
        self.message = message


def resolve_credentials() -> kopf.ConnectionInfo:
    """The credentials kopf itself would use: the in-cluster service account, else KUBECONFIG."""
    settings = kopf.OperatorSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("No credentials: neither an in-cluster service account nor KUBECONFIG/~/.kube/config.")
    return info


class KubeApi:
    """Async REST calls against one API server; open with ``async with`` or ``open()``."""

    def __init__(
        self,
        credentials: kopf.ConnectionInfo,
        *,
        max_concurrency: int = 48,
        attempts: int = 4,
        request_timeout_s: float = 30.0,
        on_error: Callable[[str, int], None] | None = None,
    ) -> None:
        self.credentials = credentials
        self.server = credentials.server.rstrip("/")
        self.attempts = attempts
        self.request_timeout_s = request_timeout_s
        self.on_error = on_error  # (verb, status) of every failed attempt: the metrics hook
        self._slots = RequestSlots(max_concurrency)
        self._max_concurrency = max_concurrency
        self._session: aiohttp.ClientSession | None = None
        self._pool: Http1Pool | None = None

    @property
    def max_concurrency(self) -> int:
        """Requests in flight at most (``--max-concurrent-writes``)."""
        return self._max_concurrency

    async def turn(self, urgency: Urgency) -> None:
        """Wait until a request of ``urgency`` would be sent (``RequestSlots.turn``)."""
        await self._slots.turn(urgency)

    async def open(self) -> KubeApi:
        info = self.credentials
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            auth = info.as_aiohttp_basic_auth()
        ssl_context = info.as_ssl_context() if self.server.startswith("https") else None
        self._session = aiohttp.ClientSession(
            # Room for the long-lived watch connections on top of the bounded requests.
            connector=aiohttp.TCPConnector(limit=self._max_concurrency + WATCH_CONNECTIONS, ssl=ssl_context or False),
            headers={**info.as_http_headers(), "User-Agent": "gpuadmit"},
            auth=auth,
            proxy=info.proxy_url,
            trust_env=info.trust_env,
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
        )
        if not info.proxy_url and not info.trust_env:  # the pool speaks to the server directly only
            headers = {**info.as_http_headers(), "User-Agent": "gpuadmit"}
            if auth is not None:
                headers["Authorization"] = auth.encode()
            self._pool = Http1Pool(self.server, ssl_context, headers)
        return self

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> KubeApi:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- verbs ---------------------------------------------------------------------------

    async def list(
        self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """All objects of a kind (one namespace or all) and the list's resourceVersion."""
        query = {"labelSelector": label_selector} if label_selector else None
        body = await self.request("list", "GET", resource.path(namespace), query=query)
        items = body.get("items") or []
        kind = resource_kind(body)
        for item in items:  # list items carry no apiVersion/kind; callers like whole objects
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", body.get("apiVersion", ""))
        return items, str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.request("get", "GET", resource.path(namespace, name))

    async def create(self, resource: Resource, body: Mapping[str, Any], namespace: str | None = None,
                     urgency: Urgency = Urgency.DECISION) -> dict[str, Any]:
        return await self.request("create", "POST", resource.path(namespace), body=body, urgency=urgency)

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        subresource: str | None = None,
        urgency: Urgency = Urgency.DECISION,
    ) -> dict[str, Any]:
        """A JSON merge patch; put ``metadata.resourceVersion`` in it for optimistic concurrency."""
        return await self.request(
            "patch", "PATCH", resource.path(namespace, name, subresource), body=patch, content_type=MERGE_PATCH,
            urgency=urgency,
        )

    async def delete(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """Delete; the answer (the object, terminating, or a Status), None when it was already gone."""
        try:
            return await self.request("delete", "DELETE", resource.path(namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def watch(
        self, resource: Resource, namespace: str | None, resource_version: str | None, timeout_s: int,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR) until the
        server ends it. Not retried here: the caller resumes from the last resourceVersion."""
        if self._session is None:
            raise RuntimeError("KubeApi is not open")
        query = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_s)}
        if resource_version:
            query["resourceVersion"] = resource_version
        path = resource.path(namespace)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_s + 60)
        async with self._session.get(self.server + path + "?" + urlencode(query), timeout=timeout) as response:
            if response.status >= 400:
                reason, message = _status_reason(await response.text())
                self._report("watch", response.status)
                raise ApiError("watch", path, response.status, reason or response.reason or "", message)
            async for event in parse_watch_lines(response.content.iter_any()):
                yield event

    # -- transport -----------------------------------------------------------------------

    async def request(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        urgency: Urgency = Urgency.DECISION,
    ) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("KubeApi is not open")
        target = path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        last_error: ApiError | None = None
        for attempt in range(self.attempts):
            retry_after: float | None = None
            try:
                async with self._slots.slot(urgency):
                    answer = await asyncio.wait_for(self._send(method, target, headers, data), self.request_timeout_s)
                if answer.status < 400:
                    return json.loads(answer.body) if answer.body else {}
                reason, message = _status_reason(answer.body.decode("utf-8", errors="replace"))
                last_error = ApiError(verb, path, answer.status, reason or answer.reason, message)
                retry_after = _retry_after_seconds(answer.headers.get("retry-after"))
            except (TimeoutError, ConnectionFailed, aiohttp.ClientError, OSError) as error:
                last_error = ApiError(verb, path, 0, type(error).__name__, str(error))
            self._report(verb, last_error.status)
            if last_error.status and last_error.status not in RETRYABLE_STATUSES:
                raise last_error
            if attempt + 1 < self.attempts:
                # Jittered backoff, so a burst of refused writes does not come back as one burst.
                delay = retry_after if retry_after is not None else 0.1 * 2**attempt
                await asyncio.sleep(min(delay, 5.0) * (0.5 + random.random()))
        assert last_error is not None
        raise last_error

    async def _send(self, method: str, target: str, headers: Mapping[str, str], data: bytes | None) -> Answer:
        if self._pool is not None:
            return await self._pool.request(method, target, headers, data)
        assert self._session is not None
        async with self._session.request(method, self.server + target, data=data, headers=headers) as response:
            return Answer(response.status, response.reason or "",
                          {name.lower(): value for name, value in response.headers.items()}, await response.read())

    def _report(self, verb: str, status: int) -> None:
        if self.on_error is not None:
            try:
                self.on_error(verb, status)
            except Exception:  # metrics must never break a write
                logger.debug("on_error hook failed", exc_info=True)


async def parse_watch_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """Newline-delimited JSON objects out of a byte stream, however the chunks are cut."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\n" not in chunk:
            continue
        *lines, buffer = buffer.split(b"\n")  # one split per chunk: a chunk may hold hundreds of events
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)


def resource_kind(list_body: Mapping[str, Any]) -> str:
    kind = str(list_body.get("kind", ""))
    return kind[: -len("List")] if kind.endswith("List") else kind


def _status_reason(text: str) -> tuple[str, str]:
    try:
        status = json.loads(text)
    except ValueError:
        return "", text[:500]
    if not isinstance(status, dict):
        return "", text[:500]
    return str(status.get("reason", "")), str(status.get("message", ""))


def _retry_after_seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
