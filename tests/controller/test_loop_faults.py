"""The scheduling loop, streams and writer in-process (no kopf) against the emulated API server.

With injected API faults (409, 429, 500 on a share of writes; watch streams cut) every workload
still reaches the engine's decision, every admitted one gets exactly its pods, no node is
overcommitted. A node cordoned, turned NotReady or deleted requeues the workloads on it and
deletes their pods; the others are untouched."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import kopf
import pytest

from gpuadmit.controller import restore
from gpuadmit.controller.api import KubeApi
from gpuadmit.controller.cache import ObjectCache
from gpuadmit.controller.loop import LoopSettings, SchedulingLoop
from gpuadmit.controller.watch import Stream
from gpuadmit.controller.writer import Writer
from kubeapi_emulator import EmulatedApiServer, FaultPlan
from tests.e2e_harness import CRD_DIR, default_template, expected_decisions
from tests.invariants import ClusterState, overcommit_violations

pytestmark = [pytest.mark.emulator]

GROUP = "/apis/gpuadmit.io/v1alpha1"
POLICY = {"pricePerGPUHour": {"inference": 6.0, "training": 2.0}, "gpuCostPerHour": {"default": 1.0}}


async def seed(api: KubeApi, nodes: int, workloads: int) -> None:
    await api.request("create", "POST", "/api/v1/namespaces", body={"metadata": {"name": "team"}})
    for index in range(nodes):
        name = f"node-{index}"
        await api.request("create", "POST", "/api/v1/nodes", body={
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "H100"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "capacity": {"nvidia.com/gpu": "8"},
                       "conditions": [{"type": "Ready", "status": "True"}]}})
    await api.request("create", "POST", f"{GROUP}/marginpolicies",
                      body={"apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "default"}, "spec": POLICY})
    for index in range(workloads):
        workload_class = "inference" if index % 3 == 0 else "training"
        await api.request("create", "POST", f"{GROUP}/namespaces/team/gpuworkloads", body={
            "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": f"w-{index:03d}"},
            "spec": {"class": workload_class, "gpus": 1 + index % 4, "replicas": 1 + index % 2,
                     "template": default_template(workload_class)}})


async def dump(api: KubeApi) -> dict[str, list[dict]]:
    return {"nodes": (await api.request("list", "GET", "/api/v1/nodes"))["items"],
            "pods": (await api.request("list", "GET", "/api/v1/pods"))["items"],
            "workloads": (await api.request("list", "GET", f"{GROUP}/gpuworkloads"))["items"],
            "namespaces": (await api.request("list", "GET", "/api/v1/namespaces"))["items"],
            "policies": (await api.request("list", "GET", f"{GROUP}/marginpolicies"))["items"]}


async def eventually(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_faulty_api_still_gets_every_decision_and_no_overcommit() -> None:
    faults = FaultPlan(seed=7)
    with EmulatedApiServer(crds=[CRD_DIR], faults=faults) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url), max_concurrency=16) as api:
            await seed(api, nodes=3, workloads=60)
            cache = ObjectCache()
            writer = Writer(api, cache)
            loop = SchedulingLoop(cache, writer, LoopSettings(debounce_seconds=0.05, resync_seconds=2.0),
                                  resync=lambda: restore.seed_cache(api, cache))
            streams = [Stream(api, cache, kind, resource, loop.notify, loop.trigger, namespace)
                       for kind, resource, namespace in restore.watch_scopes()]
            tasks = [asyncio.create_task(stream.run()) for stream in streams]
            try:
                await asyncio.gather(*(stream.listed.wait() for stream in streams))
                cache.seeded = True
                # From now on: a third of the writes to workloads and pods fail, and watches get cut.
                faults.write_failure_rate = 0.3
                faults.write_failure_codes = (409, 429, 500)
                faults.resources = {"gpuworkloads", "pods"}
                faults.cut_watches_after = 25
                tasks.append(asyncio.create_task(loop.run()))
                loop.trigger()

                async def all_decided() -> dict | None:
                    state = await dump(api)
                    return state if all((w.get("status") or {}).get("phase") for w in state["workloads"]) else None
                await eventually(all_decided, what="every workload decided despite the faults")

                async def settled() -> dict | None:
                    state = await dump(api)
                    admitted = [w for w in state["workloads"] if w["status"]["phase"] == "Admitted"]
                    pods = Counter(p["metadata"]["labels"]["gpuadmit.io/workload"] for p in state["pods"])
                    complete = all(pods[w["metadata"]["name"]] == w["spec"]["replicas"] for w in admitted)
                    return state if complete and sum(pods.values()) == sum(w["spec"]["replicas"] for w in admitted) else None
                state = await eventually(settled, what="exactly the admitted workloads' pods")
                assert faults.injected > 10 and writer.conflicts > 0  # the faults really happened
                faults.reset()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await loop.pods.close()
                await writer.follow_ups.close()

    assert overcommit_violations(ClusterState.from_dump(state)) == []
    phases = Counter(w["status"]["phase"] for w in state["workloads"])
    assert phases["Admitted"] > 0 and phases["Queued"] > 0
    # Nothing was dropped on the way: on the final state the engine has nothing more to admit.
    assert {d.action.value for d in expected_decisions(state).values()} == {"queue"}


class RunningOperator:
    """The operator's parts without kopf: streams, cache, loop, writer, in the test's event loop."""

    def __init__(self, api: KubeApi, run_loop: bool = True) -> None:
        self.api = api
        self.cache = ObjectCache()
        self.writer = Writer(api, self.cache)
        self.loop = SchedulingLoop(self.cache, self.writer, LoopSettings(debounce_seconds=0.05, resync_seconds=30.0))
        self.run_loop = run_loop  # False: the test runs each cycle itself (loop.run_cycle)
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "RunningOperator":
        streams = [Stream(self.api, self.cache, kind, resource, self.loop.notify, self.loop.trigger, namespace)
                   for kind, resource, namespace in restore.watch_scopes()]
        self.tasks = [asyncio.create_task(stream.run()) for stream in streams]
        await asyncio.gather(*(stream.listed.wait() for stream in streams))
        self.cache.seeded = True
        if self.run_loop:
            self.tasks.append(asyncio.create_task(self.loop.run()))
            self.loop.trigger()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.loop.pods.close()
        await self.writer.follow_ups.close()


@pytest.mark.parametrize("loss", ["cordoned", "not-ready", "deleted"])
async def test_a_lost_node_requeues_its_workloads_and_leaves_the_others(loss: str) -> None:
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=2, workloads=0)
            for name in ("left", "right"):
                await api.request("create", "POST", f"{GROUP}/namespaces/team/gpuworkloads", body={
                    "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": name},
                    "spec": {"class": "inference", "gpus": 8, "template": default_template("inference")}})
            async with RunningOperator(api):
                async def both_admitted() -> dict | None:
                    state = await dump(api)
                    phases = {w["metadata"]["name"]: w.get("status", {}).get("phase") for w in state["workloads"]}
                    return state if set(phases.values()) == {"Admitted"} and len(state["pods"]) == 2 else None
                before = {w["metadata"]["name"]: w["status"] for w in (await eventually(both_admitted))["workloads"]}
                lost_node = before["left"]["placement"][0]["node"]
                if loss == "cordoned":
                    await api.request("patch", "PATCH", f"/api/v1/nodes/{lost_node}", body={"spec": {"unschedulable": True}},
                                      content_type="application/merge-patch+json")
                elif loss == "not-ready":
                    await api.request("patch", "PATCH", f"/api/v1/nodes/{lost_node}/status", content_type="application/merge-patch+json",
                                      body={"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}})
                else:
                    await api.request("delete", "DELETE", f"/api/v1/nodes/{lost_node}")

                async def requeued() -> dict | None:
                    state = await dump(api)
                    left = next(w for w in state["workloads"] if w["metadata"]["name"] == "left")
                    pods = [p["metadata"]["name"] for p in state["pods"]]
                    return state if left["status"]["phase"] == "Queued" and pods == ["right-0"] else None
                state = await eventually(requeued, what=f"the workload on the {loss} node requeued, its pod deleted")
    left = next(w for w in state["workloads"] if w["metadata"]["name"] == "left")["status"]
    right = next(w for w in state["workloads"] if w["metadata"]["name"] == "right")["status"]
    assert not left.get("placement") and left["reason"] in ("NodeUnavailable", "InsufficientCapacity")
    assert (right["phase"], right["placement"], right["admittedAt"]) == \
        ("Admitted", before["right"]["placement"], before["right"]["admittedAt"])


async def test_a_holding_workload_whose_placement_does_not_add_up_is_requeued_not_finished() -> None:
    """Admitted with an empty placement (zero replicas would read as "every pod succeeded") and
    Running with one of its two replicas placed (a gang of one, its missing pod "deleted"): both
    are requeued with reason PlacementInvalid, never Succeeded nor Failed, and decided afresh."""
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=2, workloads=0)
            broken = {"ghost": (1, 1, {"phase": "Admitted", "placement": []}),
                      "half": (2, 2, {"phase": "Running", "placement": [{"node": "node-0", "gpus": 2, "replicas": 1}]})}
            for name, (gpus, replicas, status) in broken.items():
                await api.request("create", "POST", f"{GROUP}/namespaces/team/gpuworkloads", body={
                    "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": name},
                    "spec": {"class": "inference", "gpus": gpus, "replicas": replicas, "template": default_template("inference")}})
                await api.request("patch", "PATCH", f"{GROUP}/namespaces/team/gpuworkloads/{name}/status",
                                  body={"status": {**status, "reason": "Admitted", "message": "restored by hand"}},
                                  content_type="application/merge-patch+json")
            async with RunningOperator(api):
                async def decided_afresh() -> dict | None:
                    state = await dump(api)
                    events = (await api.request("list", "GET", "/api/v1/namespaces/team/events"))["items"]
                    requeued = {e["involvedObject"]["name"] for e in events if e.get("reason") == "PlacementInvalid"}
                    placed = {w["metadata"]["name"]: sum(e["replicas"] for e in w["status"].get("placement") or [])
                              for w in state["workloads"]}
                    if requeued == {"ghost", "half"} and placed == {"ghost": 1, "half": 2} and len(state["pods"]) == 3:
                        return {"state": state, "events": events}
                    return None
                found = await eventually(decided_afresh, what="both requeued (PlacementInvalid) and admitted again in full")
    phases = {w["metadata"]["name"]: w["status"]["phase"] for w in found["state"]["workloads"]}
    assert set(phases.values()) <= {"Admitted", "Running"}
    messages = {e["involvedObject"]["name"]: e["message"] for e in found["events"] if e.get("reason") == "PlacementInvalid"}
    assert messages["ghost"].startswith("status.placement is empty")
    assert "places 1 of the 2 replicas" in messages["half"]
    assert overcommit_violations(ClusterState.from_dump(found["state"])) == []


async def test_a_failed_status_write_is_retried_without_waiting_for_a_resync() -> None:
    """A status write that fails (here an injected 409 on the policy, which did not really change)
    brings no watch event; the loop must still try again soon, not at the next resync (30 s here)."""
    faults = FaultPlan(resources={"marginpolicies"}, write_failure_codes=(409,))
    with EmulatedApiServer(crds=[CRD_DIR], faults=faults) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=1, workloads=0)
            faults.fail_next_writes = 1
            async with RunningOperator(api):
                async def accepted() -> bool:
                    policy = await api.request("get", "GET", f"{GROUP}/marginpolicies/default")
                    conditions = {c["type"]: c for c in (policy.get("status") or {}).get("conditions", [])}
                    return conditions.get("Accepted", {}).get("status") == "True"
                await eventually(accepted, timeout=10.0, what="the policy's Accepted condition, after one failed write")
    assert faults.injected == 1


async def test_quota_statuses_follow_the_tenant_and_their_failure_never_stops_decisions(monkeypatch) -> None:
    """A GPUQuota on the team gets its status (guaranteed, used, Ready); while computing it fails,
    the workloads are still decided and the error is only logged."""
    import gpuadmit.controller.loop as loop_module

    real_reports = loop_module.quota_reports
    calls = {"failing": True}

    def reports(snapshot):
        if calls["failing"]:
            raise RuntimeError("injected: quota report failed")
        return real_reports(snapshot)

    monkeypatch.setattr(loop_module, "quota_reports", reports)
    with EmulatedApiServer(crds=[CRD_DIR]) as url:
        async with KubeApi(kopf.ConnectionInfo(server=url)) as api:
            await seed(api, nodes=1, workloads=2)  # w-000 (1 GPU) and w-001 (2x2 GPUs), both fit
            await api.request("create", "POST", f"{GROUP}/gpuquotas", body={
                "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUQuota", "metadata": {"name": "team"},
                "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team"}}, "guaranteed": {"H100": 4}}})
            async with RunningOperator(api) as operator:
                async def admitted() -> bool:
                    workloads = (await api.request("list", "GET", f"{GROUP}/gpuworkloads"))["items"]
                    phases = [(w.get("status") or {}).get("phase") for w in workloads]
                    return len(phases) == 2 and all(phase in ("Admitted", "Running") for phase in phases)
                await eventually(admitted, what="both workloads admitted while the quota report fails")
                assert operator.loop.cycles >= 1 and operator.loop.failed_cycles_in_a_row == 0  # not a failed cycle
                quota = await api.request("get", "GET", f"{GROUP}/gpuquotas/team")
                assert "usedGPUs" not in (quota.get("status") or {})
                calls["failing"] = False
                await api.request("create", "POST", f"{GROUP}/namespaces/team/gpuworkloads", body={  # a change: a cycle
                    "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload", "metadata": {"name": "late"},
                    "spec": {"class": "inference", "gpus": 1, "template": default_template("inference")}})

                async def reported() -> dict | None:
                    status = (await api.request("get", "GET", f"{GROUP}/gpuquotas/team")).get("status") or {}
                    return status if status.get("usedGPUs", 0) >= 5 else None
                status = await eventually(reported, what="the quota's status counting the team's GPUs")
    assert status["guaranteedGPUs"] == 4 and status["namespaces"] == ["team"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Overcommitted": "False"}
