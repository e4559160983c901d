"""One workload cannot stop the others, and no GPU is held for a pod that cannot exist or is not ours.

The scheduling loop, streams and writer in-process (no kopf) against the emulated API server:
a workload whose pods cannot be built is marked Failed and the cycle goes on; a pod create
refused with 422 fails its workload once (no retry loop) and frees its GPUs; a pod that
squats the name of a replica fails the workload and is left alone; a pod that merely carries
the ``gpuadmit.io/workload`` label is never deleted; cycles that fail as a whole make the loop
unhealthy after ``max_failed_cycles`` in a row, and one good cycle makes it healthy again."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from gpuadmit.controller.api import KubeApi
from gpuadmit.controller.cache import ObjectCache
from gpuadmit.controller.loop import LoopSettings, SchedulingLoop
from gpuadmit.controller.writer import Writer
from gpuadmit.core.model import CycleResult, Snapshot
from kubeapi_emulator import EmulatedApiServer, FaultPlan

from tests.controller.test_loop_faults import (
    GROUP,
    RunningOperator,
    dump,
    eventually,
    seed,
)
from tests.e2e_harness import CRD_DIR, default_template
from tests.invariants import ClusterState, overcommit_violations

pytestmark = [pytest.mark.emulator]


async def create_workload(api: KubeApi, name: str, gpus: int = 8, template: dict[str, Any] | None = None) -> dict:
    return await api.request("create", "POST", f"{GROUP}/namespaces/team/gpuworkloads", body={
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": name},
        "spec": {"class": "training", "gpus": gpus, "template": template or default_template("training")}})


def by_name(state: dict[str, list[dict]]) -> dict[str, dict]:
    return {w["metadata"]["name"]: w.get("status") or {} for w in state["workloads"]}


async def poison_failed_and_good_admitted(api: KubeApi) -> dict[str, list[dict]]:
    """The cluster once "poison" has Failed and "good" is Admitted with its one pod."""
    async def settled() -> dict | None:
        state = await dump(api)
        phases = by_name(state)
        return state if phases["poison"].get("phase") == "Failed" and \
            phases["good"].get("phase") == "Admitted" and len(state["pods"]) == 1 else None
    return await eventually(settled, what="poison Failed and good admitted with its pod")


async def test_a_holding_workload_whose_pods_cannot_be_built_fails_alone() -> None:
    """An Admitted workload with a template build_pods cannot copy (stored before the parser knew
    better): it is marked Failed naming the field, and another tenant's work is still admitted."""
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=1, workloads=0)
            poison = await create_workload(api, "poison", template={
                "spec": {"containers": [{"name": "c", "image": "busybox", "resources": "junk"}]}})
            await api.request("patch", "PATCH", f"{GROUP}/namespaces/team/gpuworkloads/poison/status",
                              content_type="application/merge-patch+json", body={"status": {
                                  "phase": "Admitted", "class": "training",
                                  "placement": [{"node": "node-0", "gpus": 8, "replicas": 1}]}})
            await create_workload(api, "good")
            async with RunningOperator(api) as operator:
                state = await poison_failed_and_good_admitted(api)
                status = by_name(state)["poison"]
                # Judged before its pods are built (podcreator): the field, not a ValueError from build_pods.
                assert status["reason"] == "PodRefused", status
                assert "spec.template.spec.containers[0].resources:" in status["message"], status
                assert [p["metadata"]["name"] for p in state["pods"]] == ["good-0"]
                assert operator.loop.failed_cycles_in_a_row == 0 and operator.loop.healthy()
                assert poison["metadata"]["uid"]  # the same object, failed: not deleted
    assert overcommit_violations(ClusterState.from_dump(state)) == []


async def test_an_error_while_building_one_workloads_pods_fails_it_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever else raises while one workload is handled (a template the checks pass but
    build_pods cannot copy, say) marks it Failed as an internal error, and the cycle goes on."""
    from gpuadmit.controller import podcreator

    real_build_pods = podcreator.build_pods

    def build_pods(workload: Any, decision: Any) -> Any:
        if workload["metadata"]["name"] == "poison":
            raise ValueError("cannot copy this template")
        return real_build_pods(workload, decision)

    monkeypatch.setattr(podcreator, "build_pods", build_pods)
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=1, workloads=0)
            await create_workload(api, "poison", gpus=4)
            await create_workload(api, "good", gpus=4)
            async with RunningOperator(api) as operator:
                state = await poison_failed_and_good_admitted(api)
                status = by_name(state)["poison"]
                assert status["reason"] == "InternalError" and "cannot copy this template" in status["message"], status
                assert operator.loop.failed_cycles_in_a_row == 0 and operator.loop.healthy()
    assert overcommit_violations(ClusterState.from_dump(state)) == []


async def test_a_pod_refused_with_422_fails_its_workload_once_and_frees_its_gpus() -> None:
    faults = FaultPlan(write_failure_codes=(422,), resources={"pods"})
    with EmulatedApiServer(crds=[CRD_DIR], faults=faults) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=1, workloads=0)
            await create_workload(api, "refused")
            faults.fail_next_writes = 1  # the first pod create: 422 Invalid
            async with RunningOperator(api) as operator:
                async def failed() -> dict | None:
                    state = await dump(api)
                    return state if by_name(state)["refused"].get("phase") == "Failed" else None
                status = by_name(await eventually(failed, what="the workload Failed"))["refused"]
                assert status["reason"] == "PodRefused" and "422" in status["message"], status
                assert faults.injected == 1  # one create, no retry loop
                await create_workload(api, "next")  # the 8 GPUs are free again

                async def next_runs() -> dict | None:
                    state = await dump(api)
                    return state if by_name(state)["next"].get("phase") == "Admitted" and len(state["pods"]) == 1 else None
                state = await eventually(next_runs, what="the next workload admitted onto the freed GPUs")
                assert operator.loop.workloads_failed == 1 and faults.injected == 1
    assert overcommit_violations(ClusterState.from_dump(state)) == []


async def test_a_squatted_pod_name_fails_the_workload_and_the_squatter_is_left_alone() -> None:
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=1, workloads=0)
            for name, owner in (("squat-0", None), ("web-abc12", "web-abc")):
                metadata: dict[str, Any] = {"name": name, "labels": {"gpuadmit.io/workload": "web" if owner else "squat"}}
                if owner:
                    metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                                                    "uid": "uid-rs", "controller": True}]
                await api.request("create", "POST", "/api/v1/namespaces/team/pods", body={
                    "metadata": metadata, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
            await create_workload(api, "squat")
            async with RunningOperator(api):
                async def failed() -> dict | None:
                    state = await dump(api)
                    return state if by_name(state)["squat"].get("phase") == "Failed" else None
                status = by_name(await eventually(failed, what="the squatted workload Failed"))["squat"]
                assert status["reason"] == "PodNameTaken" and "team/squat-0" in status["message"], status
                assert "no controller" in status["message"]
                await create_workload(api, "after")

                async def after_admitted() -> dict | None:
                    state = await dump(api)
                    return state if by_name(state)["after"].get("phase") == "Admitted" and \
                        any(p["metadata"]["name"] == "after-0" for p in state["pods"]) else None
                state = await eventually(after_admitted, what="the GPUs given to the next workload")
                await asyncio.sleep(0.5)  # a few more cycles: nothing of theirs is touched
                state = await dump(api)
                names = sorted(p["metadata"]["name"] for p in state["pods"])
                assert names == ["after-0", "squat-0", "web-abc12"]
                assert all(not p["metadata"].get("deletionTimestamp") for p in state["pods"])


async def test_cycles_failing_as_a_whole_make_the_loop_unhealthy_until_one_succeeds() -> None:
    from gpuadmit.core.engine import decide as engine_decide
    broken = {"on": True}

    def decide(snapshot: Snapshot) -> CycleResult:
        if broken["on"]:
            raise RuntimeError("engine bug")
        return engine_decide(snapshot)

    observed: list[int] = []

    class Sink:
        def observe_cycle(self, *_: Any) -> None: ...
        def observe_status_written(self, *_: Any) -> None: ...
        def observe_preemption(self, *_: Any) -> None: ...
        def observe_cycle_failed(self, in_a_row: int) -> None: observed.append(in_a_row)
        def observe_workload_failed(self, reason: str) -> None: ...
        def observe_native(self, *_: Any) -> None: ...

    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=1, workloads=1)
            cache = ObjectCache()
            from gpuadmit.controller import restore
            await restore.seed_cache(api, cache)
            cache.seeded = True
            writer = Writer(api, cache)
            loop = SchedulingLoop(cache, writer, LoopSettings(max_failed_cycles=3), decide=decide, metrics=Sink())
            try:
                for expected in (1, 2):
                    await loop.run_cycle_safely()
                    assert (loop.failed_cycles_in_a_row, loop.healthy()) == (expected, True)
                await loop.run_cycle_safely()
                assert (loop.failed_cycles_in_a_row, loop.healthy()) == (3, False)
                assert observed == [1, 2, 3]
                broken["on"] = False
                report = await loop.run_cycle_safely()
                assert not report.skipped and report.decisions == 1
                assert (loop.failed_cycles_in_a_row, loop.healthy()) == (0, True)
            finally:
                await loop.pods.close()
                await writer.follow_ups.close()


async def test_readyz_answers_503_while_cycles_keep_failing() -> None:
    import aiohttp
    from gpuadmit.controller.runtime import OperatorOptions, OperatorRuntime
    from gpuadmit.localcluster import free_port

    port = free_port()
    runtime = OperatorRuntime(OperatorOptions(health_port=port, metrics_port=0, max_failed_cycles=2))
    runtime.loop = SchedulingLoop(runtime.cache, Writer(None, runtime.cache),  # type: ignore[arg-type]
                                  LoopSettings(max_failed_cycles=2))
    runtime._loop_task = asyncio.create_task(asyncio.sleep(3600))  # the loop "runs"
    await runtime._start_health_server()
    try:
        async with aiohttp.ClientSession() as session:
            async def readyz() -> tuple[int, dict]:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status, await response.json()
            runtime.loop.attempts = 3
            for failed, code in ((0, 200), (1, 200), (2, 503), (7, 503), (0, 200)):
                runtime.loop.failed_cycles_in_a_row = failed
                status, body = await readyz()
                assert (status, body["ready"], body["failed_cycles_in_a_row"]) == (code, code == 200, failed)
    finally:
        runtime._loop_task.cancel()
        assert runtime._health_runner is not None
        await runtime._health_runner.cleanup()
