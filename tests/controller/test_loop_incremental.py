"""The operator's loop on the incremental engine (issue 16): one engine for the loop's life,
whole cycles at start and on resync, incremental ones for single events, and statuses after each
event what a whole-cycle ``decide()`` of the same cluster says."""

from __future__ import annotations

import asyncio
import time

import kopf
import pytest

from gpuadmit.controller.api import KubeApi
from gpuadmit.controller.cache import NAMESPACE, NODE, POD, WORKLOAD, ObjectCache
from gpuadmit.controller.loop import LoopSettings, SchedulingLoop
from gpuadmit.controller.queueview import shown_position
from gpuadmit.controller.writer import Writer
from gpuadmit.core.model import Action
from gpuadmit.core.snapshot import build_snapshot
from kubeapi_emulator import EmulatedApiServer
from tests.controller.test_inflight import HeldStatusApi, workload
from tests.controller.test_loop_faults import GROUP, RunningOperator, dump, eventually, seed
from tests.controller.test_podcreator import node
from tests.e2e_harness import CRD_DIR, default_template, expected_decisions
from tests.invariants import ClusterState, overcommit_violations


def gw(name: str, gpus: int, workload_class: str = "training") -> dict:
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": name},
            "spec": {"class": workload_class, "gpus": gpus, "template": default_template(workload_class)}}


async def matches_a_whole_cycle(api: KubeApi, loop: SchedulingLoop) -> None:
    """Every status as a whole-cycle decide() of the dumped cluster would have it: nothing it
    would admit left waiting, each queued workload at its position (as shown), each rejection
    with its reason, and the on-demand queue exact."""
    state = await dump(api)
    statuses = {f"team/{w['metadata']['name']}": w.get("status") or {} for w in state["workloads"]}
    expected = expected_decisions(state)
    assert [key for key, d in expected.items() if d.action == Action.ADMIT] == []  # nothing left that fits
    exact = {}
    for key, decision in expected.items():
        status = statuses[key]
        if decision.action == Action.REJECT:
            assert (status.get("phase"), status.get("reason")) == ("Rejected", decision.reason.value), key
            continue
        shown = shown_position(decision.queue_position or 0)
        assert (status.get("phase"), status.get("queuePosition"), status.get("queue")) == (
            "Queued", shown.value, shown.text), key
        exact[key] = decision.queue_position
    code, body = loop.queue_view.answer({"namespace": "team"})  # type: ignore[union-attr]
    assert code == 200 and {f"team/{i['name']}": i["position"] for i in body["items"]} == exact
    assert overcommit_violations(ClusterState.from_dump(state)) == []


@pytest.mark.emulator
async def test_statuses_after_single_events_are_what_a_whole_cycle_decides() -> None:
    """4 nodes x 8 GPUs, 60 workloads of 1-4 GPUs x 1-2 replicas (many queued): then one event at
    a time -- pods finishing, a workload created, a queued one deleted, one that can never fit --
    each decided by an incremental cycle, and the cluster after each what decide() would make it."""
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url), max_concurrency=16) as api:
            await seed(api, nodes=4, workloads=60)
            async with RunningOperator(api, run_loop=False) as operator:
                loop, cache = operator.loop, operator.cache
                await loop.run_cycle()
                assert loop.last_cycle_whole and loop.engine is not None and loop.engine.full_cycles == 1
                await loop.pods.drain()
                await matches_a_whole_cycle(api, loop)

                async def finish_one_pod() -> None:
                    pod = next(p for p in cache.all(POD) if (p.get("status") or {}).get("phase") != "Succeeded")
                    name = pod["metadata"]["name"]
                    await api.request("patch", "PATCH", f"/api/v1/namespaces/team/pods/{name}/status",
                                      content_type="application/merge-patch+json", body={"status": {"phase": "Succeeded"}})

                    async def seen() -> bool:
                        return (cache.get(POD, f"team/{name}") or {}).get("status", {}).get("phase") == "Succeeded"
                    await eventually(seen, what="the pod's success in the cache")

                async def create(body: dict) -> None:
                    await api.request("create", "POST", f"{GROUP}/namespaces/team/gpuworkloads", body=body)
                    await eventually(lambda: asyncio.sleep(0, cache.get(WORKLOAD, f"team/{body['metadata']['name']}")),
                                     what="the new workload in the cache")

                async def delete_a_queued_one() -> None:
                    key = next(iter(loop.engine.queued()))  # type: ignore[union-attr]
                    await api.request("delete", "DELETE", f"{GROUP}/namespaces/team/gpuworkloads/{key.split('/')[1]}")
                    await eventually(lambda: asyncio.sleep(0, cache.get(WORKLOAD, key) is None), what="the deletion in the cache")

                events = [finish_one_pod, lambda: create(gw("late-1", 1)), delete_a_queued_one, finish_one_pod,
                          lambda: create(gw("too-big", 64)), lambda: create(gw("late-2", 3, "inference")), finish_one_pod]
                whole: list[str] = []  # why any cycle after the first was whole (none should be)
                cluster_objects = len(cache.all(WORKLOAD)) + len(cache.all(POD)) + len(cache.all(NODE))
                for number, event in enumerate(events):
                    await event()
                    first = await loop.run_cycle()  # the pod's workload Succeeded: holding no longer
                    second = await loop.run_cycle()  # and its GPUs to whoever waits
                    for report in (first, second):
                        whole += [report.whole_reason or "?"] if report.whole else []
                    # Read again: the event's object, what the last event's cycles wrote and started,
                    # the nodes their pods are on -- not the cluster (the first event's cycle also
                    # reads what the first whole cycle wrote: 60 statuses and their pods).
                    if number > 0:
                        assert 1 <= first.objects_read <= 6 < cluster_objects, first.objects_read
                    await loop.pods.drain()
                    await loop.writer.follow_ups.drain()  # the class labels and Events too: the next event's cycle reads only it
                    await matches_a_whole_cycle(api, loop)
                    # The snapshot kept current is the one a fresh read of the cache makes.
                    now = time.time()
                    policy = loop._last_good_policy
                    assert loop._snapshot(policy, now) == build_snapshot(
                        cache.all(NODE), cache.all(POD), cache.all(NAMESPACE), cache.all(WORKLOAD),
                        [policy] if policy is not None else [], now)
                assert (loop.engine.full_cycles, whole) == (1, [])  # type: ignore[union-attr]


async def test_a_resync_runs_a_whole_cycle() -> None:
    """Between resyncs the loop's cycles are incremental; the one after a resync is whole."""
    cache = ObjectCache()
    api = HeldStatusApi(cache)
    api.release.set()
    resyncs = 0

    async def resync() -> None:
        nonlocal resyncs
        resyncs += 1

    loop = SchedulingLoop(cache, Writer(api, cache), LoopSettings(debounce_seconds=0.01, resync_seconds=0.5),  # type: ignore[arg-type]
                          resync=resync)
    cache.put(NODE, node("gpu-1", 8))
    for name in ("first", "second", "third"):
        cache.put(WORKLOAD, workload(name, 8))
    cache.seeded = True
    assert loop.engine is not None
    await loop.run_cycle()  # the start: whole
    assert loop.engine.full_cycles == 1 and loop.engine.last_full_reason == "first cycle"
    await loop.run_cycle()
    assert not loop.last_cycle_whole and loop.engine.incremental_cycles == 1
    task = asyncio.create_task(loop.run())
    try:
        deadline = time.monotonic() + 10
        while loop.engine.full_cycles < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert resyncs >= 1 and loop.engine.full_cycles >= 2 and loop.engine.last_full_reason == "resync"
