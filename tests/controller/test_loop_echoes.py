"""The scheduling loop's wake-ups and its bounded apply.

The watch often brings the operator's own write back before the write's answer: such echoes
must not wake the loop (one wasted cycle per write), while every change by someone else still
does. A cycle's writes run a bounded number at a time."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from gpuadmit.controller.cache import POD, WORKLOAD, ObjectCache
from gpuadmit.controller.loop import SchedulingLoop
from gpuadmit.controller.writer import Writer
from gpuadmit.core.nodes import gpus_used_by_node


class HeldApi:
    """Answers a write only when the test releases it, so a watch echo can arrive first."""

    async def turn(self, urgency: Any) -> None:
        """No request slots here: every request goes at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.answers: list[dict[str, Any]] = []

    async def patch(self, resource: Any, name: str, body: dict, namespace: str | None = None, **_: Any) -> dict:
        await self.release.wait()
        return self.answers.pop(0)

    async def create(self, resource: Any, body: dict, namespace: str | None = None, **_: Any) -> dict:
        await self.release.wait()
        return self.answers.pop(0)


def workload(version: int, phase: str | None = None, generation: int = 1, labels: dict | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
        "metadata": {"name": "w", "namespace": "team", "uid": "uid-w", "resourceVersion": str(version),
                     "generation": generation, "labels": labels or {}},
        "spec": {"gpus": 1, "template": {"spec": {"containers": [{"name": "c", "image": "vllm/vllm-openai"}]}}},
    }
    if phase:
        obj["status"] = {"phase": phase, "placement": [{"node": "gpu-a", "gpus": 1, "replicas": 1}]}
    return obj


def setup() -> tuple[ObjectCache, HeldApi, SchedulingLoop]:
    cache = ObjectCache()
    api = HeldApi()
    loop = SchedulingLoop(cache, Writer(api, cache))  # type: ignore[arg-type]
    cache.put(WORKLOAD, workload(1))
    return cache, api, loop


def woken(loop: SchedulingLoop) -> bool:
    awake = loop._wakeup.is_set()
    loop._wakeup.clear()
    return awake


async def test_the_echo_of_a_status_write_in_flight_does_not_wake_the_loop() -> None:
    cache, api, loop = setup()
    admitted = workload(2, phase="Admitted")
    api.answers.append(copy.deepcopy(admitted))
    write = asyncio.create_task(loop.writer.write_status(WORKLOAD, workload(1), {"phase": "Admitted"}))
    await asyncio.sleep(0)  # the patch is in flight
    loop.notify(WORKLOAD, "MODIFIED", admitted)  # the watch echo, before the answer
    assert not woken(loop)
    assert cache.get(WORKLOAD, "team/w")["status"]["phase"] == "Admitted"  # the cache has it all the same
    api.release.set()
    await write
    # The same phase change with no write of ours in flight is someone else's: it wakes the loop.
    loop.notify(WORKLOAD, "MODIFIED", workload(3, phase="Running"))
    assert woken(loop)


async def test_label_only_changes_sleep_spec_changes_and_deletions_wake() -> None:
    cache, api, loop = setup()
    loop.notify(WORKLOAD, "MODIFIED", workload(2, labels={"gpuadmit.io/class": "inference"}))
    assert not woken(loop)
    loop.notify(WORKLOAD, "MODIFIED", workload(3, generation=2, labels={"gpuadmit.io/class": "inference"}))
    assert woken(loop)
    deleting = workload(4, generation=2, labels={"gpuadmit.io/class": "inference"})
    deleting["metadata"]["deletionTimestamp"] = "2026-11-26T10:00:00Z"
    loop.notify(WORKLOAD, "MODIFIED", deleting)
    assert woken(loop)
    loop.notify(WORKLOAD, "DELETED", deleting)
    assert woken(loop)
    loop.notify(WORKLOAD, "ADDED", {**workload(9), "metadata": {**workload(9)["metadata"], "name": "new", "uid": "u2"}})
    assert woken(loop)


async def test_the_creation_echo_of_a_pod_being_created_does_not_wake_the_loop() -> None:
    cache, api, loop = setup()
    cache.put(WORKLOAD, workload(2, phase="Admitted"))
    cache.put("Node", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-a", "resourceVersion": "1"},
                       "status": {"allocatable": {"nvidia.com/gpu": "8"}}})
    loop.pods.recount(gpus_used_by_node(cache.all(POD)))
    admitted = cache.get(WORKLOAD, "team/w")
    from gpuadmit.core.placement import placement_of
    assert loop.pods.start(admitted, placement_of(admitted).entries, []) == 1
    await asyncio.sleep(0)
    created = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "w-0", "namespace": "team", "uid": "uid-p", "resourceVersion": "5",
                            "labels": {"gpuadmit.io/workload": "w"}},
               "spec": {"nodeName": "gpu-a", "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    api.answers.append(copy.deepcopy(created))
    loop.notify(POD, "ADDED", created)
    assert not woken(loop)
    api.release.set()
    await loop.pods.drain()
    running = copy.deepcopy(created)
    running["metadata"]["resourceVersion"] = "6"
    running["status"] = {"phase": "Running"}
    loop.notify(POD, "MODIFIED", running)  # the pod's life goes on: that matters
    assert woken(loop)


async def test_an_echo_brings_a_cycle_soon_after_to_read_what_it_changed(monkeypatch) -> None:
    """The echo of our own write wakes no cycle at once, but one follows about a second later
    (once for a burst): the next event's cycle is not left to read a burst of them."""
    from gpuadmit.controller import loop as loop_module

    monkeypatch.setattr(loop_module, "CATCH_UP_SECONDS", 0.05)
    cache, _, loop = setup()
    cache.put(WORKLOAD, workload(1))
    for version in range(2, 5):  # a burst of echoes: only our class label changes
        loop.notify(WORKLOAD, "MODIFIED", workload(version, labels={"gpuadmit.io/class": "inference"}))
    assert not woken(loop)
    await asyncio.sleep(0.15)
    assert woken(loop)  # one cycle for the burst
    await asyncio.sleep(0.15)
    assert not woken(loop)


async def test_run_bounded_runs_every_job_with_at_most_limit_started() -> None:
    from gpuadmit.controller.loop import run_bounded

    started: list[int] = []
    finished: list[int] = []
    running = 0
    most = 0

    def job(index: int):
        async def run() -> None:
            nonlocal running, most
            started.append(index)
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.001 * (index % 3))
            running -= 1
            finished.append(index)
        return run

    await run_bounded([job(i) for i in range(50)], 4)
    assert sorted(finished) == list(range(50)) and started == sorted(started)  # all, in order of start
    assert most == 4


class ScriptedApi:
    """Status patches succeed (the answer is the patched object, one version on) except for the
    workloads named in ``refuse``, which get a 409; a re-read returns the stored object."""

    max_concurrency = 8

    async def turn(self, urgency: Any) -> None:
        """No request slots here: every request goes at once."""

    def __init__(self, cache: ObjectCache, refuse: set[str]) -> None:
        self.cache = cache
        self.refuse = refuse
        self.patched: list[str] = []

    async def patch(self, resource: Any, name: str, body: dict, namespace: str | None = None,
                    subresource: str | None = None, **_: Any) -> dict:
        from gpuadmit.controller.api import ApiError
        if subresource != "status":  # the class label: not what this test is about
            return self.cache.get(WORKLOAD, f"{namespace}/{name}")
        if name in self.refuse:
            raise ApiError("patch", f"/{namespace}/{name}", 409, "Conflict", "changed meanwhile")
        self.patched.append(name)
        current = self.cache.get(WORKLOAD, f"{namespace}/{name}")
        version = str(int(current["metadata"]["resourceVersion"]) + 1)
        return {**current, "metadata": {**current["metadata"], "resourceVersion": version},
                "status": {**(current.get("status") or {}), **{k: v for k, v in body["status"].items() if v is not None}}}

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> dict:
        return self.cache.get(WORKLOAD, f"{namespace}/{name}")

    async def create(self, resource: Any, body: dict, namespace: str | None = None, **_: Any) -> dict:
        return {**body, "metadata": {**body["metadata"], "uid": "u-" + body["metadata"]["name"], "resourceVersion": "1"}}

    async def delete(self, resource: Any, name: str, namespace: str | None = None) -> None:
        return None


async def test_no_admit_lands_on_the_node_of_a_victim_that_could_not_be_preempted() -> None:
    """The engine freed a victim's 8 GPUs for a preemptor and, with room to spare, for another
    workload too. The victim's status write is refused: neither may be admitted there (two
    workloads would share GPUs); an admit on another node goes ahead."""
    from gpuadmit.core.model import Action, CycleResult, Decision, PlacementEntry, Preemption, Reason

    cache = ObjectCache()
    for node_name in ("gpu-x", "gpu-y"):
        cache.put("Node", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name, "resourceVersion": "1"},
                           "status": {"allocatable": {"nvidia.com/gpu": "8"}}})
    victim = workload(5, phase="Admitted")
    victim["metadata"]["name"] = "victim"
    victim["status"]["placement"] = [{"node": "gpu-x", "gpus": 8, "replicas": 1}]
    cache.put(WORKLOAD, victim)
    for name in ("preemptor", "sharer", "elsewhere"):
        pending = workload(3)
        pending["metadata"].update(name=name, uid=f"uid-{name}")
        cache.put(WORKLOAD, pending)
    cache.seeded = True

    def admit(name: str, node_name: str, gpus: int) -> Decision:
        return Decision(namespace="team", name=name, action=Action.ADMIT, reason=Reason.ADMITTED, message="ok",
                        workload_class="inference", placement=(PlacementEntry(node_name, gpus, 1),))

    def decide(snapshot: Any) -> CycleResult:
        return CycleResult(
            decisions=(admit("preemptor", "gpu-x", 4), admit("sharer", "gpu-x", 4), admit("elsewhere", "gpu-y", 2)),
            preemptions=(Preemption(namespace="team", name="victim", preempted_by="team/preemptor",
                                    freed=(PlacementEntry("gpu-x", 8, 1),)),))

    api = ScriptedApi(cache, refuse={"victim"})
    loop = SchedulingLoop(cache, Writer(api, cache), decide=decide)  # type: ignore[arg-type]
    report = await loop.run_cycle()
    await loop.pods.close()
    await loop.writer.follow_ups.close()
    assert api.patched == ["elsewhere"]
    assert cache.get(WORKLOAD, "team/victim")["status"]["phase"] == "Admitted"
    assert (cache.get(WORKLOAD, "team/sharer").get("status") or {}).get("phase") is None
    assert report.preemptions == 0


async def test_a_change_after_a_quiet_spell_waits_the_debounce_a_burst_the_last_cycles_thinking() -> None:
    """The pause stretches to the last cycle's thinking time only while changes keep arriving
    during cycles (a burst); a single change on a settled cluster is decided after the debounce."""
    from gpuadmit.controller.loop import CycleReport, LoopSettings

    cache = ObjectCache()
    loop = SchedulingLoop(cache, Writer(HeldApi(), cache), LoopSettings(debounce_seconds=0.05))  # type: ignore[arg-type]
    thinking_s = 0.8
    starts: list[float] = []
    changed_at: list[float] = []

    async def cycle(pipelined: bool = False) -> CycleReport:
        starts.append(time.monotonic())
        loop.last_report = CycleReport(snapshot_s=thinking_s - 0.1, decide_s=0.1)
        if len(starts) == 1:  # a change while the first cycle runs: a burst
            changed_at.append(time.monotonic())
            loop.trigger()
        return loop.last_report

    loop.run_cycle_safely = cycle  # type: ignore[method-assign]
    task = asyncio.create_task(loop.run())
    try:
        changed_at.append(time.monotonic())
        loop.trigger()
        while len(starts) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # quiet: the second cycle saw no change while it ran
        changed_at.append(time.monotonic())
        loop.trigger()
        while len(starts) < 3:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    waits = [start - changed for start, changed in zip(starts, [changed_at[0], changed_at[1], changed_at[2]], strict=True)]
    assert waits[1] >= thinking_s - 0.05, waits  # in a burst: the last cycle's thinking time
    assert waits[0] < thinking_s / 2 and waits[2] < thinking_s / 2, waits  # after quiet: the debounce


async def test_a_node_status_update_is_not_a_reason_to_look_at_every_workload() -> None:
    """A kubelet's status update (a heartbeat) leaves every node usable as it was: the loop looks
    only at what changed. A node cordoned, gone or back is a reason: then every workload."""
    from tests.controller.test_podcreator import node

    cache, _, loop = setup()
    cache.put("Node", node("gpu-a", 8))
    assert loop._to_follow() is None  # the first time: everything
    beat = node("gpu-a", 8)
    beat["metadata"]["resourceVersion"] = "2"
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-12-07T04:00:00Z"
    cache.put("Node", beat)
    cache.put(WORKLOAD, workload(2))
    assert loop._to_follow() == {"team/w"}
    cordoned = copy.deepcopy(beat)
    cordoned["metadata"]["resourceVersion"] = "3"
    cordoned["spec"] = {"unschedulable": True}
    cache.put("Node", cordoned)
    assert loop._to_follow() is None
    assert loop._to_follow() == set()
    cache.remove("Node", cordoned)  # gone while cordoned: unusable either way, nothing to look at again
    assert loop._to_follow() == set()
    cache.put("Node", node("gpu-b", 8))
    assert loop._to_follow() is None
