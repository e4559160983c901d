"""Hypothesis strategies for malformed, extreme and adversarial GPUWorkload and MarginPolicy objects.

Each object starts from something plausible and is then broken in one or more places, so the
examples reach deep into the parsers instead of bouncing off the first type check: huge and
negative numbers, NaN and infinities, wrong types, empty and enormous strings, unicode (right-to-
left marks, NUL, emoji, combining characters), missing templates, unknown and conflicting fields,
nested junk, reserved ``gpuadmit.io/`` keys and a status brought along on create.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NASTY_STRINGS = (
    "", " ", "\x00", "\u202e", "💥" * 3, "e\u0301", "a" * 64, "x" * 10_000, "${jndi:ldap://x}",
    "'; DROP TABLE gw; --", "../../etc/passwd", "\n\t", "NaN", "Infinity", "-1", "1e309", "true", "null",
    "Traceback (most recent call last):",
)
HUGE_NUMBERS = (2**31, 2**63, 2**64 + 1, 10**30, -(2**63), 1e308, -1e308, 1e-320, 65, 1025, 0, -1)

nasty_text = st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=40))
numbers = st.one_of(
    st.sampled_from(HUGE_NUMBERS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 70),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4),
    max_leaves=16,
)


def sometimes(value: st.SearchStrategy[Any], broken: st.SearchStrategy[Any] = junk) -> st.SearchStrategy[Any]:
    """Mostly the plausible value, sometimes junk in its place."""
    return st.one_of(value, value, broken)


reserved_keys = st.sampled_from(
    ["gpuadmit.io/class", "gpuadmit.io/tier", "gpuadmit.io/price", "GPUADMIT.IO/priority", "x.gpuadmit.io/margin",
     "gpuadmit.io/workload", "gpuadmit.io/replica"])
label_maps = st.dictionaries(st.one_of(nasty_text, reserved_keys, st.sampled_from(["app", "team"])), sometimes(nasty_text),
                             max_size=4)

containers = st.fixed_dictionaries(
    {"name": sometimes(st.sampled_from(["main", "trainer", "server"])),
     "image": sometimes(st.sampled_from(["pytorch/pytorch:latest", "vllm/vllm-openai:latest", ""]), nasty_text)},
    optional={
        "command": sometimes(st.lists(st.sampled_from(["torchrun", "python", "train.py", "serve", "--port"]), max_size=4)),
        "args": junk,
        "ports": sometimes(st.lists(st.fixed_dictionaries({"containerPort": sometimes(st.integers(1, 65535))}), max_size=2)),
        "resources": sometimes(st.fixed_dictionaries({}, optional={
            "limits": sometimes(st.dictionaries(st.sampled_from(["nvidia.com/gpu", "cpu", "memory"]), scalars, max_size=3)),
            "requests": sometimes(st.dictionaries(st.sampled_from(["nvidia.com/gpu", "cpu"]), scalars, max_size=2)),
        })),
        "env": junk,
    },
)
tolerations = st.lists(
    sometimes(st.fixed_dictionaries({}, optional={
        "key": sometimes(st.sampled_from(["dedicated", "", "maintenance"])),
        "operator": sometimes(st.sampled_from(["Equal", "Exists", "", "In"])),
        "value": sometimes(st.sampled_from(["inference", "true"])),
        "effect": sometimes(st.sampled_from(["NoSchedule", "NoExecute", "", "Sometimes"])),
    })),
    max_size=3,
)
templates = st.one_of(
    st.none(),
    junk,
    st.fixed_dictionaries({}, optional={
        "metadata": sometimes(st.fixed_dictionaries({}, optional={"labels": label_maps, "annotations": label_maps})),
        "spec": sometimes(st.fixed_dictionaries({}, optional={
            "containers": sometimes(st.lists(sometimes(containers), max_size=3)),
            "tolerations": sometimes(tolerations),
            "nodeName": nasty_text,
            "restartPolicy": nasty_text,
        })),
    }),
)

SPEC_FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "class": sometimes(st.sampled_from(["auto", "training", "inference", "Training", ""])),
    "gpus": sometimes(st.integers(1, 64), numbers),
    "replicas": sometimes(st.integers(1, 1024), numbers),
    "gpuProducts": sometimes(st.lists(sometimes(st.sampled_from(["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100"]), nasty_text),
                                      max_size=40)),
    "minGpuMemoryMiB": sometimes(st.integers(0, 10**6), numbers),
    "preemptible": sometimes(st.booleans()),
    "maxQueueSeconds": sometimes(st.integers(0, 10**9), numbers),
    "template": templates,
    # Not spec fields at all: what a tenant might try to buy priority with.
    "price": numbers, "pricePerGPUHour": numbers, "priority": numbers, "marginPerGPUHour": numbers, "tier": nasty_text,
}
specs = st.fixed_dictionaries(
    {"gpus": SPEC_FIELD_STRATEGIES["gpus"], "template": templates},
    optional={key: value for key, value in SPEC_FIELD_STRATEGIES.items() if key not in ("gpus", "template")},
)
statuses = st.one_of(
    st.just({}),
    st.fixed_dictionaries({}, optional={
        "phase": sometimes(st.sampled_from(["Admitted", "Running", "Queued", "Preempted", "Rejected", "Paused"])),
        "placement": junk, "admittedAt": junk, "queuedSince": junk, "preemptions": numbers,
        "marginPerGPUHour": numbers, "conditions": junk,
    }),
)
names = sometimes(st.sampled_from(["train-a", "serve-b", "w"]), nasty_text)


@st.composite
def workload_objects(draw: st.DrawFn) -> Any:
    """A GPUWorkload object, mostly plausible, broken somewhere; sometimes not an object at all."""
    if draw(st.integers(0, 30)) == 0:
        return draw(junk)
    obj: dict[str, Any] = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "GPUWorkload"}
    obj["metadata"] = draw(sometimes(st.fixed_dictionaries(
        {"name": names, "namespace": sometimes(st.sampled_from(["team-a", "team-b"]))},
        optional={"labels": label_maps, "annotations": label_maps, "creationTimestamp": sometimes(
            st.sampled_from(["2026-01-01T00:00:00Z", "yesterday"]))})))
    spec = draw(st.one_of(specs, specs, specs, junk))
    if isinstance(spec, dict) and draw(st.booleans()) and draw(st.booleans()):
        spec.pop(draw(st.sampled_from(["gpus", "template"])), None)
    obj["spec"] = spec
    if draw(st.integers(0, 3)) == 0:
        obj["status"] = draw(statuses)
    if draw(st.integers(0, 10)) == 0:
        obj.pop(draw(st.sampled_from(["spec", "metadata", "kind"])), None)
    return obj


def _maps(keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return sometimes(st.dictionaries(keys, sometimes(st.floats(0, 100), numbers), max_size=5))


policy_specs = st.fixed_dictionaries({}, optional={
    "gpuCostPerHour": _maps(st.one_of(st.sampled_from(["default", "NVIDIA-H100-80GB-HBM3"]), nasty_text)),
    "pricePerGPUHour": _maps(st.one_of(st.sampled_from(["training", "inference"]), nasty_text)),
    "tierMultipliers": _maps(st.one_of(st.sampled_from(["gold", "bronze"]), nasty_text)),
    "minMarginPerGPUHour": sometimes(st.floats(0, 10), numbers),
    "inferenceReserveFraction": sometimes(st.floats(0, 1), numbers),
    "preemption": sometimes(st.fixed_dictionaries({}, optional={
        "enabled": sometimes(st.booleans()), "minRuntimeSeconds": sometimes(st.floats(0, 3600), numbers),
        "minMarginGainPerGPUHour": sometimes(st.floats(0, 5), numbers), "bogus": junk})),
    "agingPerHour": sometimes(st.floats(0, 5), numbers),
    "defaultMaxQueueSeconds": sometimes(st.floats(0, 86400), numbers),
    "maxQueuedPerNamespace": sometimes(st.integers(1, 10_000), numbers),
    "surprise": junk,
})


@st.composite
def policy_objects(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(junk)
    return {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "default"},
            "spec": draw(st.one_of(policy_specs, policy_specs, policy_specs, junk))}
