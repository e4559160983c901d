"""Pipelined cycles (controller.inflight): the next cycle thinks while the last one's status writes
are in flight, assuming them. An admission in flight holds its GPUs for that cycle, and nothing
it decides about a workload with a write in flight is written."""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter
from typing import Any

from gpuadmit.controller.cache import NODE, WORKLOAD, ObjectCache
from gpuadmit.controller.inflight import InFlight
from gpuadmit.controller.loop import SchedulingLoop
from gpuadmit.controller.writer import Writer
from gpuadmit.core.engine import decide
from gpuadmit.core.model import Action, Decision, PlacementEntry, Reason
from gpuadmit.core.timefmt import format_rfc3339

from tests.controller.test_podcreator import node


def workload(name: str, gpus: int, workload_class: str = "inference") -> dict[str, Any]:
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "resourceVersion": "1", "generation": 1,
                         "creationTimestamp": format_rfc3339(time.time() - 60)},
            "spec": {"class": workload_class, "gpus": gpus,
                     "template": {"spec": {"containers": [{"name": "main", "image": "vllm/vllm-openai"}]}}}}


class HeldStatusApi:
    """Answers status patches (merged into the cached object) only once released; pods are created."""

    max_concurrency = 8

    async def turn(self, urgency: Any) -> None:
        """No request slots here: every request goes at once."""

    def __init__(self, cache: ObjectCache) -> None:
        self.cache = cache
        self.release = asyncio.Event()
        self.status_patches: Counter[str] = Counter()
        self.version = 100

    async def patch(self, resource: Any, name: str, body: dict, namespace: str | None = None,
                    subresource: str | None = None, **_: Any) -> dict:
        current = copy.deepcopy(self.cache.get(WORKLOAD, f"{namespace}/{name}") or {})
        if subresource != "status":  # the class label
            current["metadata"]["labels"] = body["metadata"]["labels"]
        else:
            self.status_patches[f"{namespace}/{name}"] += 1
            await self.release.wait()
            current = copy.deepcopy(self.cache.get(WORKLOAD, f"{namespace}/{name}") or {})
            status = {**(current.get("status") or {}), **body.get("status", {})}
            current["status"] = {k: v for k, v in status.items() if v is not None}
        self.version += 1
        current["metadata"]["resourceVersion"] = str(self.version)
        return current

    async def create(self, resource: Any, body: dict, namespace: str | None = None, **_: Any) -> dict:
        self.version += 1
        return {**body, "metadata": {**body["metadata"], "uid": f"uid-{self.version}", "resourceVersion": str(self.version)}}


def test_an_admission_in_flight_is_seen_holding_its_placement_until_its_answer() -> None:
    in_flight = InFlight()
    pending, other = workload("a", 8), workload("b", 8)
    in_flight.add([Decision("team", "a", Action.ADMIT, Reason.ADMITTED, "ok", placement=(PlacementEntry("gpu-1", 8, 1),)),
                   Decision("team", "b", Action.QUEUE, Reason.INSUFFICIENT_CAPACITY, "wait", queue_position=1)])
    cached = {"team/a": pending, "team/b": other}
    seen = in_flight.assumed_objects(cached, time.time())
    assert set(seen) == {"team/a"}  # a queue write holds nothing: "b" is read as cached
    assert seen["team/a"]["status"]["phase"] == "Admitted" and seen["team/a"]["status"]["placement"] == [
        {"node": "gpu-1", "gpus": 8, "replicas": 1}]
    assert seen["team/a"]["metadata"]["resourceVersion"] != "1"  # never mistaken for the cached version's parse
    assert "status" not in pending  # the cache is untouched
    answered = {**pending, "status": {"phase": "Admitted", "placement": [{"node": "gpu-1", "gpus": 8, "replicas": 1}]}}
    assert in_flight.assumed_objects({"team/a": answered}, time.time()) == {}  # the answer is in: nothing to assume
    in_flight.done("team/a")
    assert in_flight.assumed_objects(cached, time.time()) == {} and in_flight.keys() == {"team/b"}


async def test_a_cycle_overlapping_an_admission_in_flight_neither_reuses_its_gpus_nor_decides_it_again() -> None:
    cache = ObjectCache()
    api = HeldStatusApi(cache)
    loop = SchedulingLoop(cache, Writer(api, cache))  # type: ignore[arg-type]
    cache.put(NODE, node("gpu-1", 8))
    cache.put(WORKLOAD, workload("first", 8, "training"))
    cache.seeded = True
    await loop.run_cycle(pipelined=True)  # returns with its admission's status write in flight
    assert loop.in_flight.keys() == {"team/first"} and cache.get(WORKLOAD, "team/first").get("status") is None

    first_view = loop.queue_view
    # Inference earns more: it would take gpu-1 if "first" were not assumed there.
    cache.put(WORKLOAD, workload("second", 8))
    second_cycle = asyncio.create_task(loop.run_cycle(pipelined=True))
    while loop.queue_view is first_view:
        await asyncio.sleep(0.01)  # it has decided, and waits for the first cycle's writes
    assert [(e.name, e.position) for e in loop.queue_view.entries] == [("second", 1)]  # "first" is holding
    api.release.set()
    await second_cycle
    await loop._applied()
    statuses = {key: (cache.get(WORKLOAD, key) or {}).get("status") or {} for key in ("team/first", "team/second")}
    assert statuses["team/first"]["phase"] == "Admitted" and statuses["team/second"]["phase"] == "Queued"
    assert api.status_patches == Counter({"team/first": 1, "team/second": 1})  # each decided and written once
    assert len(loop.in_flight) == 0


async def test_a_queued_status_that_already_says_its_decision_is_not_rebuilt(monkeypatch) -> None:
    """controller.settled: a queue decision the workload's unchanged object already shows is
    neither built again nor written; a changed object (a new resourceVersion) is looked at again."""
    from gpuadmit.controller import status as desired_status

    cache = ObjectCache()
    api = HeldStatusApi(cache)
    api.release.set()
    # Whole cycles every time (as on a resync): an incremental one does not decide them again at all.
    loop = SchedulingLoop(cache, Writer(api, cache), decide=decide)  # type: ignore[arg-type]
    cache.put(NODE, node("gpu-1", 8))
    for name in ("first", "second", "third"):
        cache.put(WORKLOAD, workload(name, 8))
    cache.seeded = True
    await loop.run_cycle()
    await loop.writer.follow_ups.drain()  # the class labels: new resourceVersions
    await loop.run_cycle()  # looks at each once more, finds nothing to write, and remembers it
    built: list[str] = []
    real = desired_status.decision_status
    monkeypatch.setattr(desired_status, "decision_status",
                        lambda workload, decision, *args: built.append(decision.name) or real(workload, decision, *args))
    report = await loop.run_cycle()
    assert report.by_action == {"queue": 2}
    assert built == [] and report.statuses_written == 0
    changed = copy.deepcopy(cache.get(WORKLOAD, "team/third"))
    changed["metadata"]["resourceVersion"] = "999"
    cache.put(WORKLOAD, changed)
    await loop.run_cycle()
    assert built == ["third"]
