"""The server itself: both context managers, the process with its kubeconfig, fault injection, GC."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import kmock
import kubernetes
import pytest
import yaml

from gpuadmit.localcluster import EmulatorProcess
from kubeapi_emulator import ApiError, EmulatedApiServer, FaultPlan, write_kubeconfig
from tests.emulator.conftest import REPO, crd_documents, eventually, requires_emulator

pytestmark = [pytest.mark.emulator, requires_emulator]

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


async def eventually_async(read: Callable[[], Awaitable[Any]], expect: Any, timeout: float = 20.0) -> Any:
    """Poll ``read()`` until it returns ``expect`` or the (generous) deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = await read()
    while value != expect and loop.time() < deadline:
        await asyncio.sleep(0.02)
        value = await read()
    return value


async def test_async_context_manager_serves_from_the_running_loop():
    async with EmulatedApiServer() as url, aiohttp.ClientSession() as session:
        async with session.post(url + CONFIGMAPS, json={"metadata": {"name": "cm"}, "data": {"k": "v"}}) as response:
            assert response.status == 201
        async with session.get(url + CONFIGMAPS + "/cm") as response:
            assert (await response.json())["data"] == {"k": "v"}
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.get(url + CONFIGMAPS):
            pass


def test_thread_context_manager_serves_a_sync_client(tmp_path):
    with EmulatedApiServer() as url:
        kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
        assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
        core = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
        core.create_node({"metadata": {"name": "gpu-1"}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}})
        assert core.read_node("gpu-1").status.allocatable == {"nvidia.com/gpu": "8"}  # kept, as a kubelet posts it


def test_process_writes_a_kubeconfig_and_serves(tmp_path):
    emulator = EmulatorProcess(tmp_path, (REPO / "crds",))
    with emulator.running():
        client = kubernetes.config.new_client_from_config(config_file=str(emulator.kubeconfig))
        groups = [group.name for group in kubernetes.client.ApisApi(client).get_api_versions().groups]
        assert {"gpuadmit.io", "kopf.dev", "coordination.k8s.io", "events.k8s.io"} <= set(groups)
        names = [ns.metadata.name for ns in kubernetes.client.CoreV1Api(client).list_namespace().items]
        assert "default" in names
    assert emulator.stop() == 0, emulator.log_path.read_text()  # SIGTERM: a clean exit
    assert f"emulated Kubernetes API server at {emulator.url}" in emulator.log_path.read_text()


async def test_a_share_of_writes_fails_with_a_status():
    faults = FaultPlan(write_failure_rate=0.5, write_failure_codes=(409, 429, 500), seed=7)
    async with EmulatedApiServer(faults=faults) as url, aiohttp.ClientSession() as session:
        codes = []
        for index in range(40):
            async with session.post(url + CONFIGMAPS, json={"metadata": {"name": f"cm-{index}"}}) as response:
                body = await response.json()
                codes.append(response.status)
                if response.status != 201:
                    assert body["kind"] == "Status" and body["code"] == response.status
                    assert "injected" in body["message"]
        async with session.get(url + CONFIGMAPS) as response:
            stored = len((await response.json())["items"])
        assert 0 < faults.injected < 40 and stored == codes.count(201) == 40 - faults.injected
        assert set(codes) - {201} <= {409, 429, 500}
        async with session.get(url + CONFIGMAPS) as response:
            assert response.status == 200  # reads are never broken


async def test_fail_next_writes_then_recover_and_resource_filter():
    faults = FaultPlan(fail_next_writes=2, write_failure_codes=(503,), resources={"configmaps"})
    async with EmulatedApiServer(faults=faults) as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/api/v1/namespaces/default/secrets", json={"metadata": {"name": "s"}}) as r:
            assert r.status == 201  # not a filtered resource
        statuses = []
        for index in range(3):
            async with session.post(url + CONFIGMAPS, json={"metadata": {"name": f"c{index}"}}) as response:
                statuses.append((response.status, response.headers.get("Retry-After")))
        assert statuses == [(503, "1"), (503, "1"), (201, None)]


async def test_watch_streams_can_be_cut():
    async with EmulatedApiServer(faults=FaultPlan(cut_watches_after=2)) as url, aiohttp.ClientSession() as session:
        for index in range(5):
            async with session.post(url + CONFIGMAPS, json={"metadata": {"name": f"c{index}"}}):
                pass
        async with session.get(url + CONFIGMAPS + "?watch=true&timeoutSeconds=30") as response:
            lines = [line async for line in response.content if line.strip()]
        assert len(lines) == 2  # ended after two of the five ADDED events, long before the timeout


async def test_kmock_reactions_still_take_precedence():
    server = EmulatedApiServer()
    server.handler["patch", kmock.resource("v1/configmaps")] << 500 << {"kind": "Status", "code": 500}
    async with server as url, aiohttp.ClientSession() as session:
        async with session.post(url + CONFIGMAPS, json={"metadata": {"name": "c"}}) as response:
            assert response.status == 201  # other requests still reach the emulated API
        async with session.patch(url + CONFIGMAPS + "/c", json={"data": {"a": "b"}},
                                 headers={"Content-Type": "application/merge-patch+json"}) as response:
            assert response.status == 500


async def test_deleting_a_namespace_deletes_its_objects():
    async with EmulatedApiServer() as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/api/v1/namespaces", json={"metadata": {"name": "doomed"}}):
            pass
        async with session.post(url + "/api/v1/namespaces/doomed/configmaps", json={"metadata": {"name": "c"}}):
            pass
        async with session.delete(url + "/api/v1/namespaces/doomed") as response:
            assert response.status == 200

        async def remaining() -> list:
            async with session.get(url + "/api/v1/configmaps") as response:
                return (await response.json())["items"]

        assert await eventually_async(lambda: remaining(), expect=[]) == []


async def test_orphan_propagation_keeps_dependents():
    async with EmulatedApiServer() as url, aiohttp.ClientSession() as session:
        async with session.post(url + CONFIGMAPS, json={"metadata": {"name": "owner"}}) as response:
            uid = (await response.json())["metadata"]["uid"]
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        async with session.post(url + CONFIGMAPS, json={"metadata": {"name": "child", "ownerReferences": [ref]}}):
            pass
        async with session.delete(url + CONFIGMAPS + "/owner", json={"propagationPolicy": "Orphan"}) as response:
            assert response.status == 200
        async def child_references() -> list:
            async with session.get(url + CONFIGMAPS + "/child") as response:
                assert response.status == 200  # the child stays
                return (await response.json())["metadata"].get("ownerReferences") or []

        assert await eventually_async(child_references, expect=[]) == []


def test_crds_load_from_files(tmp_path):
    path = tmp_path / "crds.yaml"
    path.write_text(yaml.safe_dump_all(crd_documents()))
    server = EmulatedApiServer(crds=[path])
    plurals = {spec.plural for spec in server.handler.specs()}
    assert {"gpuworkloads", "clusterkopfpeerings", "kopfpeerings"} <= plurals


def test_reinstalling_a_crd_keeps_its_objects_and_a_bad_crd_is_refused():
    server = EmulatedApiServer(crd_objects=crd_documents())
    store, handler = server.handler.store, server.handler
    spec = handler.spec_for("gpuadmit.io", "v1alpha1", "gpuworkloads")
    store.create(spec, "default", {"metadata": {"name": "kept"}, "spec": {"gpus": 1, "template": {}}})
    for crd in crd_documents():
        handler.install_crd(crd)
    assert store.get(spec, "default", "kept")["spec"]["gpus"] == 1
    broken = {"metadata": {"name": "broken.example.test"}, "spec": {
        "group": "example.test", "names": {"kind": "Broken", "plural": "brokens"},
        "versions": [{"name": "v1", "served": True,
                      "schema": {"openAPIV3Schema": {"type": "object", "minimum": "not a number"}}}]}}
    with pytest.raises(ApiError) as info:
        handler.install_crd(broken)
    assert info.value.code == 422


def test_cut_watches_ends_open_streams_from_another_thread():
    server = EmulatedApiServer()
    with server as url:
        finished = threading.Event()

        def watch() -> None:
            with urllib.request.urlopen(url + CONFIGMAPS + "?watch=true&timeoutSeconds=60", timeout=90) as response:
                response.read()
            finished.set()

        threading.Thread(target=watch, daemon=True).start()
        eventually(lambda: server.call(server.handler.store.open_watch_count) == 1)
        server.cut_watches()
        assert finished.wait(timeout=30), "the stream should end long before its 60 s timeout"
        assert server.call(server.handler.store.open_watch_count) == 0


def test_the_server_process_freezes_what_survives_a_collection_and_an_in_process_server_does_not() -> None:
    import gc

    from kubeapi_emulator.__main__ import _freeze_survivors

    with EmulatedApiServer():
        assert _freeze_survivors not in gc.callbacks  # the tests' own process is left as it is
    kept = [{"metadata": {"name": str(i)}} for i in range(500)]
    gc.callbacks.append(_freeze_survivors)
    try:
        gc.collect(0)
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.callbacks.remove(_freeze_survivors)
        gc.unfreeze()
