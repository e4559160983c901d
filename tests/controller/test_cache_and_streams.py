"""The cache (newest wins, tombstones, relevant pods), watch-stream parsing, list merging,
the peering verdict and the placement a restart honours: no server needed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gpuadmit.controller.api import Resource, parse_watch_lines
from gpuadmit.controller.cache import NODE, POD, WORKLOAD, ObjectCache
from gpuadmit.core.placement import placement_of
from gpuadmit.controller.peering import we_lead
from gpuadmit.controller.restore import merge_listing, reserved_gpus_by_node, watch_scopes
from gpuadmit.core.model import PlacementEntry


def workload(name: str = "w", version: int = 1, uid: str = "u1", phase: str | None = None, **status: object) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": str(version)},
            "spec": {"gpus": 2}, "status": {"phase": phase, **status} if phase else {}}


def gpu_pod(name: str, gpus: int = 1, labels: dict | None = None) -> dict:
    container = {"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}} if gpus else {"name": "c"}
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "1", "labels": labels or {}},
            "spec": {"containers": [container]}}


def test_an_older_version_never_replaces_a_newer_one() -> None:
    cache = ObjectCache()
    assert cache.put(WORKLOAD, workload(version=5, phase="Admitted"))
    assert not cache.put(WORKLOAD, workload(version=4, phase="Queued"))  # a late echo
    assert not cache.put(WORKLOAD, workload(version=5, phase="Admitted"))  # the same again: no change
    assert cache.get(WORKLOAD, "ns/w")["status"]["phase"] == "Admitted"
    assert cache.put(WORKLOAD, workload(version=6, phase="Running"))


def test_a_deleted_object_cannot_come_back_from_a_late_event() -> None:
    cache = ObjectCache()
    cache.put(WORKLOAD, workload(version=3))
    assert cache.apply_event(WORKLOAD, "DELETED", workload(version=4))
    assert not cache.apply_event(WORKLOAD, "MODIFIED", workload(version=3))
    assert cache.get(WORKLOAD, "ns/w") is None
    # A new object of the same name is a different uid: welcome.
    assert cache.apply_event(WORKLOAD, "ADDED", workload(version=9, uid="u2"))


def test_only_gpu_pods_and_our_pods_are_kept() -> None:
    cache = ObjectCache()
    assert cache.put(POD, gpu_pod("uses-gpu", gpus=1))
    ours = gpu_pod("ours-no-gpu", gpus=0, labels={"gpuadmit.io/workload": "w"})
    ours["metadata"]["ownerReferences"] = [{"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": "w",
                                            "uid": "uid-w", "controller": True}]
    assert cache.put(POD, ours)
    assert cache.put(POD, gpu_pod("labelled", gpus=0, labels={"gpuadmit.io/workload": "v"}))
    assert not cache.put(POD, gpu_pod("web", gpus=0))
    assert sorted(p["metadata"]["name"] for p in cache.all(POD)) == ["labelled", "ours-no-gpu", "uses-gpu"]
    # Grouped by the controller ownerReference: a label anyone can set makes no pod ours.
    assert {key: [p["metadata"]["name"] for p in pods] for key, pods in cache.pods_by_workload().items()} == {
        "ns/w": ["ours-no-gpu"]}


def test_malformed_objects_are_ignored_not_fatal() -> None:
    cache = ObjectCache()
    for junk in ({}, {"metadata": None}, {"metadata": {"name": ""}}, "text", None):
        assert not cache.put(NODE, junk)  # type: ignore[arg-type]
    assert cache.all(NODE) == []


def test_a_relist_drops_what_is_gone_but_keeps_what_is_newer_than_the_list() -> None:
    cache = ObjectCache()
    cache.put(WORKLOAD, workload("gone", version=3, uid="a"))
    cache.put(WORKLOAD, workload("kept", version=4, uid="b"))
    cache.put(WORKLOAD, workload("born-after-the-list", version=12, uid="c"))
    merge_listing(cache, WORKLOAD, [workload("kept", version=4, uid="b")], list_version=10)
    assert sorted(w["metadata"]["name"] for w in cache.all(WORKLOAD)) == ["born-after-the-list", "kept"]


async def test_watch_lines_are_parsed_whatever_the_chunking() -> None:
    payload = b'{"type":"ADDED","object":{"a":1}}\n{"type":"BOOKMARK","object":{"b":2}}\n{"type":"DELETED","object":{}}'

    async def chunks(size: int):
        for start in range(0, len(payload), size):
            yield payload[start:start + size]

    for size in (1, 7, 1000):
        events = [event async for event in parse_watch_lines(chunks(size))]
        assert [e["type"] for e in events] == ["ADDED", "BOOKMARK", "DELETED"]


def test_resource_paths() -> None:
    workloads = Resource("gpuadmit.io", "v1alpha1", "gpuworkloads", namespaced=True)
    assert workloads.path("ns", "w", "status") == "/apis/gpuadmit.io/v1alpha1/namespaces/ns/gpuworkloads/w/status"
    assert workloads.path() == "/apis/gpuadmit.io/v1alpha1/gpuworkloads"
    assert Resource("", "v1", "nodes", namespaced=False).path(name="n1") == "/api/v1/nodes/n1"


def test_one_stream_per_kind_or_per_watched_namespace() -> None:
    assert [kind for kind, _, _ in watch_scopes()] == [
        "Node", "Namespace", "MarginPolicy", "GPUQuota", "Pod", "GPUWorkload", "Job"]
    scoped = watch_scopes(["a", "b"])
    assert [(kind, ns) for kind, _, ns in scoped if kind in ("GPUWorkload", "Pod")] == [
        ("Pod", "a"), ("Pod", "b"), ("GPUWorkload", "a"), ("GPUWorkload", "b")]
    assert [ns for kind, _, ns in scoped if kind == "Node"] == [None]


def test_reservations_come_from_holding_statuses_only() -> None:
    cache = ObjectCache()
    cache.put(WORKLOAD, workload("a", uid="a", phase="Admitted", placement=[{"node": "n1", "gpus": 4}]))
    cache.put(WORKLOAD, workload("b", uid="b", phase="Running", placement=[{"node": "n1", "gpus": 2}, {"node": "n2", "gpus": 2}]))
    cache.put(WORKLOAD, workload("c", uid="c", phase="Succeeded", placement=[{"node": "n1", "gpus": 8}]))
    assert reserved_gpus_by_node(cache) == {"n1": 6, "n2": 2}


def test_placement_of_a_restored_workload() -> None:
    restored = workload(phase="Admitted", placement=[{"node": "n1", "gpus": 4}, {"node": "n2", "gpus": 2, "replicas": 1}, {"bad": 1}])
    recorded = placement_of(restored)
    assert recorded.entries == (PlacementEntry("n1", 4, 2), PlacementEntry("n2", 2, 1))
    assert recorded.problem is not None and "status.placement[2]" in recorded.problem


def test_peering_verdict() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    fresh = (now - timedelta(seconds=5)).isoformat()
    stale = (now - timedelta(seconds=500)).isoformat()
    assert we_lead({}, "me", 50, now)
    assert we_lead({"me": {"priority": 50, "lastseen": fresh, "lifetime": 60},
                    "other": {"priority": 10, "lastseen": fresh, "lifetime": 60}}, "me", 50, now)
    assert not we_lead({"other": {"priority": 90, "lastseen": fresh, "lifetime": 60}}, "me", 50, now)
    assert not we_lead({"other": {"priority": 50, "lastseen": fresh, "lifetime": 60}}, "me", 50, now)  # a tie pauses
    assert we_lead({"other": {"priority": 90, "lastseen": stale, "lifetime": 60}}, "me", 50, now)  # dead peer
    # kopf writes lastseen without a zone (UTC), with microseconds; Kubernetes style ends in Z
    kopf_fresh = (now - timedelta(seconds=5)).replace(tzinfo=None).isoformat(timespec="microseconds")
    assert not we_lead({"other": {"priority": 90, "lastseen": kopf_fresh, "lifetime": 60}}, "me", 50, now)
    assert not we_lead({"other": {"priority": 90, "lastseen": "2026-01-01T11:59:55Z", "lifetime": 60}}, "me", 50, now)
    assert we_lead({"other": {"priority": 90, "lastseen": "2026-01-01T11:50:00Z", "lifetime": 60}}, "me", 50, now)
    assert we_lead({"other": {"priority": 90, "lastseen": "yesterday", "lifetime": 60}}, "me", 50, now)  # unreadable: ignored


def test_a_node_of_impossibly_many_gpus_is_told_once_not_at_every_heartbeat(caplog) -> None:
    def node(version: int, gpus: str) -> dict:
        return {"metadata": {"name": "huge", "uid": "n1", "resourceVersion": str(version)},
                "status": {"allocatable": {"nvidia.com/gpu": gpus}}}

    cache = ObjectCache()
    caplog.set_level("WARNING", logger="gpuadmit.controller.cache")
    cache.replace_all(NODE, [node(1, "10M")])
    for version in range(2, 6):  # heartbeats
        cache.put(NODE, node(version, "10M"))
    assert [r.getMessage() for r in caplog.records] == [
        "Node huge is left out of every decision: status.allocatable[nvidia.com/gpu]: 10000000 GPUs is more than "
        "the 1024 one node can have"
    ]
    cache.put(NODE, node(6, "8"))  # fixed, then broken again: told again
    cache.put(NODE, node(7, "1G"))
    assert len(caplog.records) == 2 and "1000000000 GPUs" in caplog.records[1].getMessage()


def test_a_cluster_without_the_gpuquota_crd_is_still_decided() -> None:
    """A 404 listing GPUQuotas (CRD not installed) counts as listed, so the loop can start; the
    stream keeps raising, and so retrying. Any other kind's 404 is an error as before."""
    import asyncio

    import pytest

    from gpuadmit.controller import api as kube
    from gpuadmit.controller.api import ApiError
    from gpuadmit.controller.watch import Stream

    class NotServed:
        async def list(self, resource: Resource, namespace: str | None = None) -> tuple[list, str]:
            raise ApiError("list", resource.path(namespace), 404, "NotFound", "the server could not find the resource")

    def noop(*_: object) -> None:
        return None

    async def first_list(resource: Resource) -> Stream:
        stream = Stream(NotServed(), ObjectCache(), "GPUQuota", resource, noop, noop)  # type: ignore[arg-type]
        with pytest.raises(ApiError):
            await stream._list()
        return stream

    assert asyncio.run(first_list(kube.QUOTAS)).listed.is_set()
    assert not asyncio.run(first_list(kube.POLICIES)).listed.is_set()


def owned_pod(name: str, owner: str, version: int = 1) -> dict:
    pod = gpu_pod(name)
    pod["metadata"]["resourceVersion"] = str(version)
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "name": owner,
                                           "uid": f"uid-{owner}", "controller": True}]
    return pod


def test_the_cache_tells_which_workloads_changed_and_keeps_their_pods_grouped() -> None:
    cache = ObjectCache()
    assert cache.take_changes() is None  # nothing taken yet: look at everything
    cache.put(WORKLOAD, workload("a", uid="a"))
    cache.put(POD, owned_pod("a-0", "a"))
    cache.put(POD, owned_pod("b-0", "b"))
    assert cache.take_changes() == {"ns/a", "ns/b"}
    assert cache.take_changes() == set()  # taken: forgotten
    cache.put(POD, owned_pod("a-1", "a"))
    moved = owned_pod("b-0", "a", version=2)  # its controller changed: both workloads are told
    cache.put(POD, moved)
    assert cache.take_changes() == {"ns/a", "ns/b"}
    assert {key: [p["metadata"]["name"] for p in pods] for key, pods in cache.pods_by_workload().items()} == {
        "ns/a": ["a-0", "a-1", "b-0"]}
    assert cache.apply_event(POD, "DELETED", owned_pod("a-0", "a", version=3))
    assert [p["metadata"]["name"] for p in cache.pods_of("ns/a")] == ["a-1", "b-0"]
    assert cache.take_changes() == {"ns/a"}
    assert cache.take_nodes_changed()  # nothing taken yet
    assert not cache.take_nodes_changed()
    cache.put(NODE, {"metadata": {"name": "n1", "resourceVersion": "1"}})
    # A node changed: told apart (the loop looks at every workload only if it became usable or not).
    assert cache.take_changes() == set() and cache.take_nodes_changed() and not cache.take_nodes_changed()
    cache.replace_all(POD, [owned_pod("c-0", "c")])
    assert cache.take_changes() is None and list(cache.pods_by_workload()) == ["ns/c"]
