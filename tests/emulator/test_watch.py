"""Watch semantics: initial state, resuming from a resourceVersion, selectors, timeouts, 410, bookmarks."""

from __future__ import annotations

import json
import threading
import time

import aiohttp
import kubernetes
import pytest

from kubeapi_emulator import EmulatedApiServer
from tests.emulator.conftest import eventually, pod, requires_emulator

pytestmark = pytest.mark.emulator


def watch_events(core, namespace: str, **kwargs) -> list[tuple[str, str]]:
    """All events of a watch that the server ends after ``timeout_seconds``."""
    watch = kubernetes.watch.Watch()
    return [(event["type"], event["object"].metadata.name)
            for event in watch.stream(core.list_namespaced_pod, namespace, timeout_seconds=1, **kwargs)]


def test_watch_without_version_starts_with_current_objects(core, namespace):
    core.create_namespaced_pod(namespace, pod("a"))
    core.create_namespaced_pod(namespace, pod("b"))
    assert sorted(watch_events(core, namespace)) == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_from_version_sends_only_later_events(core, namespace):
    core.create_namespaced_pod(namespace, pod("a"))
    core.create_namespaced_pod(namespace, pod("b"))
    version = core.list_namespaced_pod(namespace).metadata.resource_version
    core.create_namespaced_pod(namespace, pod("c"))
    core.patch_namespaced_pod("a", namespace, {"metadata": {"labels": {"touched": "yes"}}})
    core.delete_namespaced_pod("b", namespace, grace_period_seconds=0)
    events = watch_events(core, namespace, resource_version=version)
    assert events[:3] == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]


def test_live_watch_sees_changes_with_their_objects(core, namespace):
    seen: list[tuple[str, str, dict]] = []
    version = core.list_namespaced_pod(namespace).metadata.resource_version
    watch = kubernetes.watch.Watch()

    def consume() -> None:
        for event in watch.stream(core.list_namespaced_pod, namespace, resource_version=version, timeout_seconds=30):
            seen.append((event["type"], event["object"].metadata.name, event["object"].metadata.labels or {}))
            if event["type"] == "DELETED":
                watch.stop()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    core.create_namespaced_pod(namespace, pod("live"))
    eventually(lambda: seen)
    core.patch_namespaced_pod("live", namespace, {"metadata": {"labels": {"step": "2"}}})
    core.delete_namespaced_pod("live", namespace, grace_period_seconds=0)
    thread.join(timeout=30)
    assert [(kind, name) for kind, name, _ in seen] == [("ADDED", "live"), ("MODIFIED", "live"), ("DELETED", "live")]
    assert seen[2][2] == {"step": "2"}  # DELETED carries the last state of the object


def test_watch_honours_label_selectors(core, namespace):
    core.create_namespaced_pod(namespace, pod("x1", metadata={"labels": {"app": "x"}}))
    core.create_namespaced_pod(namespace, pod("y1", metadata={"labels": {"app": "y"}}))
    assert watch_events(core, namespace, label_selector="app=x") == [("ADDED", "x1")]
    version = core.list_namespaced_pod(namespace).metadata.resource_version
    core.patch_namespaced_pod("x1", namespace, {"metadata": {"labels": {"app": "y"}}})  # leaves the selection
    core.patch_namespaced_pod("y1", namespace, {"metadata": {"labels": {"app": "x"}}})  # enters it
    core.create_namespaced_pod(namespace, pod("z1", metadata={"labels": {"app": "z"}}))
    events = watch_events(core, namespace, label_selector="app=x", resource_version=version)
    assert events == [("DELETED", "x1"), ("ADDED", "y1")]


def test_watch_honours_field_selectors(core, namespace):
    core.create_namespaced_pod(namespace, pod("wanted", spec={"nodeName": "gpu-1"}))
    core.create_namespaced_pod(namespace, pod("other", spec={"nodeName": "gpu-2"}))
    assert watch_events(core, namespace, field_selector="metadata.name=wanted") == [("ADDED", "wanted")]
    assert watch_events(core, namespace, field_selector="spec.nodeName=gpu-2") == [("ADDED", "other")]


def test_watch_ends_after_timeout_seconds(core, namespace):
    started = time.monotonic()
    assert watch_events(core, namespace) == []
    assert time.monotonic() - started < 15  # the server closed it (1 s asked), the client did not hang


def test_deletion_with_finalizers_is_modified_then_deleted(core, namespace):
    core.create_namespaced_pod(namespace, pod("held", metadata={"finalizers": ["gpuadmit.io/test"]}))
    version = core.list_namespaced_pod(namespace).metadata.resource_version
    core.delete_namespaced_pod("held", namespace)
    held = core.read_namespaced_pod("held", namespace)
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_pod("held", namespace, {"metadata": {"finalizers": None}})
    events = watch_events(core, namespace, resource_version=version)
    assert events == [("MODIFIED", "held"), ("MODIFIED", "held"), ("DELETED", "held")]


async def read_events(session: aiohttp.ClientSession, url: str) -> list[dict]:
    async with session.get(url) as response:
        assert response.status == 200
        return [json.loads(line) async for line in response.content if line.strip()]


@requires_emulator
async def test_too_old_resource_version_is_gone():
    async with EmulatedApiServer(history_limit=3) as url, aiohttp.ClientSession() as session:
        base = f"{url}/api/v1/namespaces/default/configmaps"
        async with session.post(base, json={"metadata": {"name": "first"}}) as response:
            first_version = (await response.json())["metadata"]["resourceVersion"]
        for index in range(5):
            async with session.post(base, json={"metadata": {"name": f"more-{index}"}}) as response:
                assert response.status == 201
        events = await read_events(session, f"{base}?watch=true&resourceVersion={first_version}&timeoutSeconds=1")
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]

        async with session.get(base) as response:
            fresh_version = (await response.json())["metadata"]["resourceVersion"]
        events = await read_events(session, f"{base}?watch=true&resourceVersion={fresh_version}&timeoutSeconds=1")
        assert events == []  # a current version resumes fine


@requires_emulator
async def test_bookmarks_carry_the_current_version():
    async with EmulatedApiServer(bookmark_interval=0.2) as url, aiohttp.ClientSession() as session:
        base = f"{url}/api/v1/namespaces/default/configmaps"
        async with session.post(base, json={"metadata": {"name": "cm"}}) as response:
            version = (await response.json())["metadata"]["resourceVersion"]
        events = await read_events(
            session, f"{base}?watch=true&resourceVersion={version}&allowWatchBookmarks=true&timeoutSeconds=1")
        bookmarks = [event for event in events if event["type"] == "BOOKMARK"]
        assert bookmarks and all(b["object"]["metadata"]["resourceVersion"] == version for b in bookmarks)
        without = await read_events(session, f"{base}?watch=true&resourceVersion={version}&timeoutSeconds=1")
        assert without == []
