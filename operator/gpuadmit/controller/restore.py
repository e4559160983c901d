"""Start-up (and resync) state: list everything once, before any decision.

A restarted operator must not decide on half a picture: a cycle that ran
before the pods or the Admitted statuses were known would see free GPUs that
are in fact reserved, and allocate them twice. So every watch stream
(``watch_scopes``) lists first, and the runtime marks the cache seeded only
when all of them have; the loop waits for that. ``seed_cache`` lists
everything again on each resync. Reservations need no separate store: they *are* the statuses
(Admitted/Running with a placement) and the pods, which the snapshot reads.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from gpuadmit.controller import api as kube
from gpuadmit.controller.api import ApiError, KubeApi
from gpuadmit.controller.cache import (
    JOB,
    NAMESPACE,
    NODE,
    POD,
    POLICY,
    PYTORCHJOB,
    QUOTA,
    RAYJOB,
    WORKLOAD,
    ObjectCache,
    object_key,
)
from gpuadmit.core.model import HOLDING_PHASES
from gpuadmit.core.placement import placement_of

logger = logging.getLogger(__name__)

LISTED_KINDS: tuple[tuple[str, kube.Resource], ...] = (
    (NODE, kube.NODES),
    (NAMESPACE, kube.NAMESPACES),
    (POLICY, kube.POLICIES),
    (QUOTA, kube.QUOTAS),
    (POD, kube.PODS),
    (WORKLOAD, kube.WORKLOADS),
    (JOB, kube.JOBS),
)

# Kinds the operator runs without when their CRD is not installed (it came later than the others):
# a cluster upgraded without it decides without quotas rather than never deciding.
# Jobs likewise: a test API server that serves no batch/v1 leaves native Jobs out, nothing else.
OPTIONAL_RESOURCES = frozenset({kube.QUOTAS, kube.JOBS})

# Other projects' kinds gpuadmit holds through their suspend field (controller.native): listed and
# watched only when the cluster serves them (their CRDs installed), found by API discovery at
# start-up and on each resync, so a cluster without them sees neither an error nor a retry.
DISCOVERED_KINDS: tuple[tuple[str, kube.Resource], ...] = (
    (PYTORCHJOB, kube.PYTORCHJOBS),
    (RAYJOB, kube.RAYJOBS),
)
Kinds = Sequence[tuple[str, kube.Resource]]


async def served_kinds(api: KubeApi, candidates: Kinds = DISCOVERED_KINDS,
                       known: Kinds = ()) -> list[tuple[str, kube.Resource]]:
    """The ``candidates`` the API server serves (its discovery document for the group/version
    lists the resource; a group it does not serve answers 404). When discovery fails otherwise,
    a candidate is taken as served if it is in ``known`` (what the last discovery found), so a
    passing API error neither stops a watch nor starts one; the next resync asks again."""
    served: list[tuple[str, kube.Resource]] = []
    for kind, resource in candidates:
        try:
            document = await api.request("discover", "GET", f"/apis/{resource.group}/{resource.version}")
        except ApiError as error:
            if error.status != 404:
                logger.info("Discovery of %s/%s failed (%s); asking again on the next resync",
                            resource.group, resource.version, error)
                if (kind, resource) in known:
                    served.append((kind, resource))
            continue
        names = {entry.get("name") for entry in document.get("resources") or [] if isinstance(entry, dict)}
        if resource.plural in names:
            served.append((kind, resource))
    return served


def watch_scopes(namespaces: Sequence[str] = (), discovered: Kinds = ()) -> list[tuple[str, kube.Resource, str | None]]:
    """(kind, resource, namespace or None for cluster-wide) of every list+watch stream to run
    (``discovered``: the ``DISCOVERED_KINDS`` the cluster serves)."""
    scopes: list[tuple[str, kube.Resource, str | None]] = []
    for kind, resource in (*LISTED_KINDS, *discovered):
        if resource.namespaced and namespaces:
            scopes.extend((kind, resource, namespace) for namespace in namespaces)
        else:
            scopes.append((kind, resource, None))
    return scopes


def log_seeded(cache: ObjectCache) -> None:
    reserved = reserved_gpus_by_node(cache)
    logger.info(
        "Cache seeded: %s; reservations restored on %d nodes (%d GPUs)",
        ", ".join(f"{kind}: {count}" for kind, count in cache.counts().items()),
        len(reserved), sum(reserved.values()),
    )


async def list_kind(api: KubeApi, resource: kube.Resource, namespaces: Sequence[str]) -> tuple[list[dict], int | None]:
    """All objects of a kind in the watched namespaces (cluster-scoped kinds: all of them).

    Pods are listed cluster-wide even with ``--namespace``: GPUs used by any pod count against
    capacity. When that is forbidden, the watched namespaces are listed instead. The second value
    is the oldest list resourceVersion as an integer (None when not an integer).
    """
    if not resource.namespaced or not namespaces:
        items, version = await api.list(resource)
        return items, _as_int(version)
    if resource is kube.PODS:
        try:
            items, version = await api.list(resource)
            return items, _as_int(version)
        except ApiError as error:
            if error.status != 403:
                raise
            logger.warning("Listing pods cluster-wide is forbidden: only the watched namespaces' GPU pods count")
    objects: list[dict] = []
    versions: list[int | None] = []
    for namespace in namespaces:
        items, version = await api.list(resource, namespace)
        objects.extend(items)
        versions.append(_as_int(version))
    known = [v for v in versions if v is not None]
    return objects, (min(known) if known and len(known) == len(versions) else None)


def _as_int(value: object) -> int | None:
    try:
        return int(value) if isinstance(value, str | int) else None
    except ValueError:
        return None


async def seed_cache(api: KubeApi, cache: ObjectCache, namespaces: Sequence[str] = (), discovered: Kinds = ()) -> None:
    """Fill the cache with a full list of every watched kind (``discovered`` too), then mark it seeded.

    On a resync the lists replace what the cache holds, except objects the cache
    saw change after the list was taken (newer resourceVersion): they stay.
    """
    for kind, resource in (*LISTED_KINDS, *discovered):
        try:
            items, list_version = await list_kind(api, resource, namespaces)
        except ApiError as error:
            if error.status != 404 or resource not in OPTIONAL_RESOURCES:
                raise
            items, list_version = [], None
        if cache.seeded:
            merge_listing(cache, kind, items, list_version)
        else:
            cache.replace_all(kind, items)
    if not cache.seeded:
        cache.seeded = True
        log_seeded(cache)


def merge_listing(cache: ObjectCache, kind: str, items: list[dict], list_version: int | None,
                  namespace: str | None = None) -> None:
    """Apply a list (of one namespace, or all): newer objects win (``put``), and what the list
    lacks is gone, unless the cache's copy is newer than the list (created while it was taken)."""
    listed = set()
    for item in items:
        cache.put(kind, item)
        listed.add(object_key(item))
    if list_version is None:
        return  # cannot tell a deleted object from one created after the list: let the watch say
    for key, obj in list(cache.objects[kind].items()):
        if namespace is not None and (obj.get("metadata") or {}).get("namespace") != namespace:
            continue
        version = _as_int((obj.get("metadata") or {}).get("resourceVersion"))
        if key not in listed and version is not None and version <= list_version:
            cache.remove(kind, obj)


def reserved_gpus_by_node(cache: ObjectCache) -> Counter[str]:
    """GPUs the Admitted/Running statuses reserve per node: what a restart must respect."""
    reserved: Counter[str] = Counter()
    for workload in cache.all(WORKLOAD):
        status = workload.get("status") or {}
        if not isinstance(status, dict) or status.get("phase") not in HOLDING_PHASES:
            continue
        for entry in placement_of(workload).entries:
            reserved[entry.node] += entry.gpus
    return reserved
