"""The Job and pod webhooks' ``matchConditions`` (CEL), evaluated with cel-python over the objects as
the API server hands them to CEL (``object`` is dynamic, a JSON map): the API server must call the
webhook for every object ``core.holds`` would hold, and may skip it for objects naming no GPU."""

from __future__ import annotations

import random
from typing import Any

import celpy
import pytest

from gpuadmit.controller.webhook_configs import WEBHOOKS, asks_for_gpus_condition, webhook_configurations
from gpuadmit.core.holds import asks_for_gpus, job_hold, pod_hold

POD_SPEC_PATHS = {"pods": "object.spec", "jobs": "object.spec.template.spec"}


def condition(resource: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(asks_for_gpus_condition(POD_SPEC_PATHS[resource])))


def calls(program: Any, obj: dict[str, Any]) -> bool:
    return bool(program.evaluate({"object": celpy.json_to_cel(obj)}))


def random_container(rng: random.Random, index: int, gpu_chance: float) -> dict[str, Any]:
    container: dict[str, Any] = {"name": f"c{index}", "image": "busybox:1.36"}
    amount = rng.choice([0, 1, 2, "1", "0", "4"])
    choice = rng.random()
    if choice < 0.15:
        return container  # no resources at all
    resources: dict[str, Any] = rng.choice([{}, {"requests": {"cpu": "100m"}}, {"limits": {"memory": "1Gi"}}])
    resources = {key: dict(value) for key, value in resources.items()}
    if rng.random() < gpu_chance:
        for section in rng.choice([["limits"], ["requests"], ["limits", "requests"]]):
            resources.setdefault(section, {})["nvidia.com/gpu"] = amount
    container["resources"] = resources
    if rng.random() < 0.2:
        container["restartPolicy"] = "Always"  # a sidecar, when an init container
    return container


def random_pod_spec(rng: random.Random) -> dict[str, Any]:
    gpu_chance = rng.choice([0.0, 0.3])
    spec: dict[str, Any] = {"containers": [random_container(rng, i, gpu_chance) for i in range(rng.randint(1, 3))]}
    if rng.random() < 0.4:
        spec["initContainers"] = [random_container(rng, 10 + i, gpu_chance) for i in range(rng.randint(0, 2))]
    return spec


@pytest.mark.parametrize("resource", ["pods", "jobs"])
def test_the_api_server_calls_the_webhook_for_every_object_it_would_hold(resource: str) -> None:
    program = condition(resource)
    rng = random.Random(1212)
    called = held = 0
    for _ in range(400):
        spec = random_pod_spec(rng)
        obj = {"metadata": {"name": "x"}, "spec": spec} if resource == "pods" else \
            {"metadata": {"name": "x"}, "spec": {"template": {"spec": spec}}}
        names_a_gpu = any("nvidia.com/gpu" in (c.get("resources") or {}).get(section, {})
                          for c in spec["containers"] + spec.get("initContainers", []) for section in ("limits", "requests"))
        hold = pod_hold(obj) if resource == "pods" else job_hold(obj)
        assert calls(program, obj) == names_a_gpu, spec
        if hold.patch or asks_for_gpus(obj if resource == "pods" else obj["spec"]["template"]):
            assert calls(program, obj), spec
            held += 1
        called += names_a_gpu
    assert held > 50 and called - held > 0 and called < 400  # all three kinds were drawn


@pytest.mark.parametrize(("resource", "obj"), [
    ("pods", {"metadata": {"name": "x"}}),
    ("pods", {"spec": {}}),
    ("pods", {"spec": {"containers": []}}),
    ("jobs", {"spec": {}}),
    ("jobs", {"spec": {"template": {}}}),
    ("jobs", {"spec": {"template": {"spec": {}}}}),
])
def test_an_object_without_spec_or_containers_is_not_an_evaluation_error(resource: str, obj: dict[str, Any]) -> None:
    assert calls(condition(resource), obj) is False


def test_the_configurations_carry_the_condition_on_the_native_webhooks_only() -> None:
    for configuration in webhook_configurations("https://h:1", None):
        for entry in configuration["webhooks"]:
            webhook = next(w for w in WEBHOOKS if w.name == entry["name"])
            if webhook.pod_spec_path is None:
                assert "matchConditions" not in entry
            else:
                assert entry["matchConditions"] == [{"name": "asks-for-nvidia-gpu",
                                                     "expression": asks_for_gpus_condition(webhook.pod_spec_path)}]
