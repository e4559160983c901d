"""controller/podcreator.py: pods are created in the background, never twice at once, and never onto
GPUs a node does not physically have free (cached pods + pods in flight + pods landed since)."""

from __future__ import annotations

import asyncio
from typing import Any

from gpuadmit.controller.cache import NODE, POD, WORKLOAD, ObjectCache
from gpuadmit.controller.podcreator import PodCreator
from gpuadmit.controller.writer import PodCreation
from gpuadmit.core.model import PlacementEntry
from gpuadmit.core.nodes import gpus_used_by_node


def node(name: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "1"},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "capacity": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def workload(name: str, gpus: int, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload",
            "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "resourceVersion": "1"},
            "spec": {"gpus": gpus, "replicas": replicas,
                     "template": {"spec": {"containers": [{"name": "main", "image": "vllm/vllm-openai"}]}}},
            "status": {"phase": "Admitted", "class": "inference"}}


def running_pod(name: str, node_name: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "other", "resourceVersion": "1", "uid": f"uid-{name}"},
            "spec": {"nodeName": node_name, "containers": [
                {"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": "Running"}}


class FakeWriter:
    """Creates pods into the cache when the test lets it (``gate``), or fails them."""

    def __init__(self, cache: ObjectCache) -> None:
        self.cache = cache
        self.gate = asyncio.Event()
        self.fail = False
        self.refuse = False
        self.calls: list[str] = []
        self.turns = 0

    async def pods_turn(self) -> None:
        self.turns += 1

    async def create_pod(self, pod: dict[str, Any]) -> PodCreation:
        self.calls.append(pod["metadata"]["name"])
        await self.gate.wait()
        if self.refuse:
            return PodCreation(False, "PodRefused", f"pod {pod['metadata']['name']} is invalid")
        if self.fail:
            return PodCreation(False)
        self.cache.put(POD, {**pod, "metadata": {**pod["metadata"], "resourceVersion": "2"}})
        return PodCreation(True)


FAILED: list[tuple[str, str, str, str]] = []


async def record_failure(key: str, uid: str, reason: str, message: str) -> None:
    FAILED.append((key, uid, reason, message))


def setup(node_gpus: int = 8, used: int = 0, writer_class: type[FakeWriter] = FakeWriter,
          ) -> tuple[ObjectCache, Any, PodCreator, list[float]]:
    cache = ObjectCache()
    cache.put(NODE, node("gpu-a", node_gpus))
    if used:
        cache.put(POD, running_pod("busy", "gpu-a", used))
    writer = writer_class(cache)
    retries: list[float] = []
    FAILED.clear()
    creator = PodCreator(cache, writer, retries.append, record_failure)  # type: ignore[arg-type]
    creator.recount(gpus_used_by_node(cache.all(POD)))
    return cache, writer, creator, retries


async def test_pods_are_created_in_the_background_and_a_busy_workload_is_not_started_twice() -> None:
    cache, writer, creator, _ = setup()
    first = workload("infer", gpus=2, replicas=2)
    cache.put(WORKLOAD, first)
    assert creator.start(first, (PlacementEntry("gpu-a", 4, 2),), []) == 2  # returns before any pod exists
    assert creator.busy(first) and cache.all(POD) == []
    assert creator.start(first, (PlacementEntry("gpu-a", 4, 2),), []) == 0  # in flight: not again
    writer.gate.set()
    await creator.drain()
    assert not creator.busy(first)
    assert sorted(p["metadata"]["name"] for p in cache.all(POD)) == ["infer-0", "infer-1"]
    assert writer.calls == ["infer-0", "infer-1"] and creator.created == 2


async def test_pods_in_flight_and_landed_count_until_the_cache_is_recounted() -> None:
    cache, writer, creator, retries = setup(node_gpus=8, used=4)
    one, two = workload("one", gpus=4), workload("two", gpus=4)
    assert creator.start(one, (PlacementEntry("gpu-a", 4, 1),), []) == 1  # 4 used + 4 = 8: fits
    creator.recount(gpus_used_by_node(cache.all(POD)))  # a new cycle while one's pod is still in flight
    assert creator.start(two, (PlacementEntry("gpu-a", 4, 1),), []) == 0  # 4 + 4 in flight + 4 > 8
    assert retries == [2.0]
    writer.gate.set()
    await creator.drain()
    # Landed, the cache holds it, no recount yet: still counted exactly once.
    assert creator.start(two, (PlacementEntry("gpu-a", 4, 1),), []) == 0
    cache.remove(POD, running_pod("busy", "gpu-a", 4))  # the other tenant's pod ends
    creator.recount(gpus_used_by_node(cache.all(POD)))
    assert creator.start(two, (PlacementEntry("gpu-a", 4, 1),), []) == 1  # 4 (one's pod) + 4 = 8
    await creator.drain()
    assert sorted(p["metadata"]["name"] for p in cache.all(POD)) == ["one-0", "two-0"]


async def test_a_failed_creation_frees_its_gpus_and_asks_for_a_retry() -> None:
    cache, writer, creator, retries = setup(node_gpus=4)
    writer.fail = True
    writer.gate.set()
    failing = workload("flaky", gpus=4)
    assert creator.start(failing, (PlacementEntry("gpu-a", 4, 1),), []) == 1
    await creator.drain()
    assert cache.all(POD) == [] and retries == [1.0]
    writer.fail = False
    assert creator.start(failing, (PlacementEntry("gpu-a", 4, 1),), []) == 1  # nothing left reserved
    await creator.drain()
    assert [p["metadata"]["name"] for p in cache.all(POD)] == ["flaky-0"]


async def test_existing_pods_are_kept_and_a_missing_node_waits() -> None:
    cache, writer, creator, retries = setup()
    writer.gate.set()
    two_replicas = workload("pair", gpus=1, replicas=2)
    existing = [{"metadata": {"name": "pair-0"}}]
    assert creator.start(two_replicas, (PlacementEntry("gpu-a", 2, 2),), existing) == 1
    await creator.drain()
    assert writer.calls == ["pair-1"]
    assert creator.start(workload("elsewhere", gpus=1), (PlacementEntry("gone", 1, 1),), []) == 0
    assert retries == [2.0]


async def test_a_refused_pod_fails_its_workload_once_instead_of_retrying() -> None:
    _, writer, creator, retries = setup(node_gpus=4)
    writer.refuse = True
    writer.gate.set()
    refused = workload("refused", gpus=2, replicas=2)
    assert creator.start(refused, (PlacementEntry("gpu-a", 4, 2),), []) == 2
    await creator.drain()
    assert retries == [] and writer.calls == ["refused-0", "refused-1"]
    assert [(key, uid, reason) for key, uid, reason, _ in FAILED] == [("team/refused", "uid-refused", "PodRefused")]
    assert "refused-0 is invalid" in FAILED[0][3] or "refused-1 is invalid" in FAILED[0][3]
    assert creator.start(workload("other", gpus=4), (PlacementEntry("gpu-a", 4, 1),), []) == 1  # nothing held in flight


class TurnWriter(FakeWriter):
    """Pods get their turn only when the test gives it (a status write waits for a slot until then)."""

    def __init__(self, cache: ObjectCache) -> None:
        super().__init__(cache)
        self.turn_given = asyncio.Event()

    async def pods_turn(self) -> None:
        await self.turn_given.wait()


async def test_pods_hold_their_gpus_at_once_but_are_built_and_sent_only_on_their_turn() -> None:
    cache, writer, creator, _ = setup(writer_class=TurnWriter)
    assert creator.start(workload("first", gpus=8, replicas=2), (PlacementEntry("gpu-a", 8, 2),), []) == 2
    assert creator.creating("team/first-0") and creator.creating("team/first-1")  # their echoes are recognised
    # Not built yet, yet the node's 8 GPUs are held: nothing else fits there meanwhile.
    assert creator.start(workload("second", gpus=1), (PlacementEntry("gpu-a", 1, 1),), []) == 0
    await asyncio.sleep(0.01)
    assert writer.calls == []
    writer.turn_given.set()
    writer.gate.set()
    await creator.drain()
    assert sorted(writer.calls) == ["first-0", "first-1"]
    assert cache.get(POD, "team/first-0") is not None and not creator.creating("team/first-0")


async def test_a_template_refused_on_its_turn_fails_the_workload_and_frees_its_gpus() -> None:
    cache, writer, creator, _ = setup(writer_class=TurnWriter)
    privileged = workload("privileged", gpus=8)
    privileged["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    assert creator.start(privileged, (PlacementEntry("gpu-a", 8, 1),), []) == 1
    writer.turn_given.set()
    await creator.drain()
    assert writer.calls == []  # never sent
    assert [(key, reason) for key, _, reason, _ in FAILED] == [("team/privileged", "PodRefused")]
    assert "privileged" in FAILED[0][3]
    assert not creator.creating("team/privileged-0")
    assert creator.start(workload("next", gpus=8), (PlacementEntry("gpu-a", 8, 1),), []) == 1  # its GPUs are free
