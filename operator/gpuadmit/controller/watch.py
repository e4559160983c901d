"""List-then-watch streams that feed the cache: one task per watched kind (and namespace).

Why not kopf's ``@kopf.on.event``: kopf runs every event through its handler machinery
(per-object workers, diff bases, cause detection, kwargs), a few milliseconds each. A burst
of 2,000 GPUWorkloads brings three events per workload (creation, our status write's echo,
our label write's echo), and measured end to end that machinery, not the API server, bounded
how fast decisions reached the statuses. These streams parse a line, store the object and set
a flag. kopf still runs the operator's life cycle, peering and the admission webhooks.

Each stream lists first (the cache then knows everything that existed), then watches from the
list's resourceVersion, so nothing falls between the two. A watch that ends is resumed from
the last resourceVersion seen (bookmarks included); a 410 Gone means that version is too old,
so the stream lists again and the cache drops what the new list lacks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from gpuadmit.controller import api as kube
from gpuadmit.controller.api import ApiError, KubeApi
from gpuadmit.controller.cache import ObjectCache
from gpuadmit.controller.restore import OPTIONAL_RESOURCES, merge_listing

logger = logging.getLogger(__name__)

WATCH_SECONDS = 290  # the server ends a watch after this; we resume at once
EventSink = Callable[[str, str | None, Mapping[str, Any]], None]


class Stream:
    """One list+watch loop for ``resource`` in ``namespace`` (None: cluster-wide)."""

    def __init__(self, api: KubeApi, cache: ObjectCache, kind: str, resource: kube.Resource,
                 on_event: EventSink, on_relisted: Callable[[], None], namespace: str | None = None) -> None:
        self.api = api
        self.cache = cache
        self.kind = kind
        self.resource = resource
        self.namespace = namespace
        self.on_event = on_event
        self.on_relisted = on_relisted
        self.listed = asyncio.Event()  # set after the first list: the cache has this scope
        self.version: str | None = None
        self.events_seen = 0

    @property
    def name(self) -> str:
        return f"{self.resource.plural}@{self.namespace or 'cluster'}"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.version is None:
                    await self._list()
                await self._watch()
                failures = 0
            except asyncio.CancelledError:
                raise
            except (TimeoutError, ApiError, OSError, ValueError) as error:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * (0.5 + random.random())
                logger.warning("Watch %s interrupted (%s); retrying in %.1fs", self.name, error, delay)
                await asyncio.sleep(delay)
            except Exception:
                failures += 1
                logger.exception("Watch %s failed; retrying", self.name)
                await asyncio.sleep(min(30.0, 2.0 * failures))

    async def _list(self) -> None:
        try:
            items, version = await self.api.list(self.resource, self.namespace)
        except ApiError as error:
            if error.status != 404 or self.resource not in OPTIONAL_RESOURCES or self.listed.is_set():
                raise
            # A cluster upgraded without the GPUQuota CRD: decide without quotas rather than never
            # deciding; the error is raised on the next tries, so the stream keeps asking.
            logger.warning("Watch %s: the resource is not served (CRD not installed?); going on without it", self.name)
            self.listed.set()
            raise
        if self.listed.is_set():
            merge_listing(self.cache, self.kind, items, _as_int(version), namespace=self.namespace)
            self.on_relisted()
        else:
            for item in items:
                self.cache.put(self.kind, item)
            self.listed.set()
        self.version = version or None

    async def _watch(self) -> None:
        async for event in self.api.watch(self.resource, self.namespace, self.version, WATCH_SECONDS):
            event_type = event.get("type")
            obj = event.get("object") or {}
            if event_type == "ERROR":
                if obj.get("code") == 410:
                    logger.info("Watch %s: resourceVersion %s is gone; listing again", self.name, self.version)
                    self.version = None
                    return
                raise ApiError("watch", self.resource.path(self.namespace), int(obj.get("code") or 0),
                               str(obj.get("reason", "")), str(obj.get("message", "")))
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.version = str(version)
            if event_type == "BOOKMARK":
                continue
            self.events_seen += 1
            self.on_event(self.kind, event_type, obj)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
