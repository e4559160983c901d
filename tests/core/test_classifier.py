"""The training/inference classifier: explicit class, weighing, reasons, junk, and the labelled corpus."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks.classifier import load_corpus, misses
from gpuadmit.core.classifier import FALLBACK_REASON, classify, find_evidence
from gpuadmit.core.model import CLASSES

REQUIRED_ACCURACY = 0.95
CORPUS = load_corpus()  # `make bench` (benchmarks/classifier.py) prints the accuracy on the same corpus


def pod(*containers: dict[str, Any], restart_policy: str | None = None, labels: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return {"metadata": {"labels": labels or {}}, "spec": spec}


VLLM_SERVER = pod(
    {
        "name": "server",
        "image": "vllm/vllm-openai:v0.6.3",
        "command": ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"],
        "ports": [{"containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
    }
)
TORCHRUN_JOB = pod(
    {"name": "worker", "image": "acme/gpt:1", "command": ["torchrun", "--nproc_per_node=8", "train.py", "--max_steps", "1000"]},
    restart_policy="OnFailure",
)


# --- the corpus ---------------------------------------------------------------------------


def test_corpus_is_big_varied_and_well_formed() -> None:
    assert len(CORPUS) >= 80
    for document in CORPUS:
        assert document["expected"] in CLASSES, document["name"]
        assert document["source"].strip(), document["name"]
        assert isinstance(document["template"], dict), document["name"]
    names = [document["name"] for document in CORPUS]
    assert len(names) == len(set(names)), "corpus names must be unique"
    expected = [document["expected"] for document in CORPUS]
    # Both classes well represented, so accuracy cannot come from always answering one class.
    assert min(expected.count("training"), expected.count("inference")) >= 30


def test_corpus_accuracy_and_the_misses() -> None:
    missed = misses(CORPUS)
    assert 1 - len(missed) / len(CORPUS) >= REQUIRED_ACCURACY, "misses:\n" + "\n".join(missed)


def test_every_corpus_reason_is_one_non_empty_sentence() -> None:
    for document in CORPUS:
        _, reason = classify(None, document["template"])
        assert reason and "\n" not in reason, document["name"]


# --- explicit class ------------------------------------------------------------------------


def test_declaring_training_wins_over_a_serving_template() -> None:
    assert classify("training", VLLM_SERVER) == ("training", "spec.class is training")


def test_declaring_inference_wins_where_the_template_is_unclear() -> None:
    unclear = {"spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}
    assert classify("inference", unclear) == ("inference", "spec.class is inference")
    assert classify(" Inference ", VLLM_SERVER) == ("inference", "spec.class is inference")


def test_declaring_inference_cannot_raise_the_price_of_a_clear_training_job() -> None:
    # spec.class is tenant-written and inference earns more: a declaration may lower the price only.
    workload_class, reason = classify("inference", TORCHRUN_JOB)
    assert workload_class == "training"
    assert reason.startswith("spec.class says inference, but ") and "torchrun" in reason


@pytest.mark.parametrize("auto", ["auto", None, "", "AUTO"])
def test_auto_and_absent_class_read_the_template(auto: str | None) -> None:
    assert classify(auto, VLLM_SERVER)[0] == "inference"
    assert classify(auto, TORCHRUN_JOB)[0] == "training"


def test_unknown_class_value_falls_back_to_the_template_and_says_so() -> None:
    workload_class, reason = classify("batch", VLLM_SERVER)
    assert workload_class == "inference"
    assert "spec.class 'batch'" in reason and "vllm serve" in reason


# --- reasons name the evidence ---------------------------------------------------------------


def test_serving_reason_names_container_command_port_and_probe() -> None:
    workload_class, reason = classify("auto", VLLM_SERVER)
    assert workload_class == "inference"
    assert "container 'server'" in reason
    assert "vllm serve" in reason
    assert "port 8000 with a readiness probe" in reason


def test_training_reason_names_the_launcher() -> None:
    workload_class, reason = classify("auto", TORCHRUN_JOB)
    assert workload_class == "training"
    assert "torchrun" in reason and "container 'worker'" in reason


def test_weaker_evidence_is_outweighed_and_the_reason_says_what_lost() -> None:
    # A "trainer" image that runs a server: the command beats the name.
    template = pod({"name": "trainer", "image": "acme/llm-trainer:1", "command": ["vllm", "serve", "/ckpt"]})
    workload_class, reason = classify("auto", template)
    assert workload_class == "inference"
    assert "vllm serve" in reason and "outweighs" in reason and "trainer" in reason


def test_probe_on_a_training_metrics_port_does_not_make_it_serving() -> None:
    worker = {
        "name": "worker",
        "image": "acme/gpt:1",
        "command": ["torchrun", "train.py"],
        "ports": [{"containerPort": 9090, "name": "metrics"}],
        "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}},
    }
    assert classify("auto", pod(worker))[0] == "training"


def test_train_in_a_model_path_is_not_a_training_signal() -> None:
    server = {
        "name": "api",
        "image": "acme/api:1",
        "args": ["--model", "/mnt/train/llama-sft-finetuned", "--port", "8080"],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}},
    }
    assert classify("auto", pod(server))[0] == "inference"


# --- fallback and tenant labels --------------------------------------------------------------


def test_no_signal_falls_back_to_training_and_says_so() -> None:
    assert classify("auto", pod({"name": "x", "image": "busybox"})) == ("training", FALLBACK_REASON)


def test_weak_signals_alone_fall_back_and_name_what_was_seen() -> None:
    template = pod({"name": "x", "image": "acme/thing:1", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]})
    workload_class, reason = classify("auto", template)
    assert workload_class == "training"
    assert "defaulting to training" in reason and "NCCL_DEBUG" in reason


def test_tenant_gpuadmit_labels_never_decide() -> None:
    labelled = pod({"name": "x", "image": "busybox"}, labels={"gpuadmit.io/class": "inference", "gpuadmit.io/tier": "serving"})
    labelled["metadata"]["annotations"] = {"gpuadmit.io/class": "inference"}
    assert classify("auto", labelled) == ("training", FALLBACK_REASON)


def test_tenant_labels_change_no_corpus_decision() -> None:
    for document in CORPUS:
        template = copy.deepcopy(document["template"])
        metadata = template.setdefault("metadata", {})
        metadata.setdefault("labels", {})["gpuadmit.io/class"] = "inference"
        metadata["labels"]["gpuadmit.io/role"] = "predictor-server-inference"
        assert classify("auto", template)[0] == classify("auto", document["template"])[0], document["name"]


# --- robustness ----------------------------------------------------------------------------


JUNK_TEMPLATES: list[Any] = [
    None,
    "vllm serve",
    42,
    [],
    {},
    {"spec": None},
    {"spec": "containers"},
    {"spec": {"containers": None}},
    {"spec": {"containers": "vllm"}},
    {"spec": {"containers": [None, "vllm serve", 7, []]}},
    {"metadata": "x", "spec": {"containers": [{}]}},
    {"metadata": {"labels": ["a"], "annotations": 5}, "spec": {"containers": [{"name": None}]}},
    {"metadata": {"labels": {1: 2, "app": None, "component": 3}}, "spec": {}},
    {
        "spec": {
            "restartPolicy": ["Never"],
            "activeDeadlineSeconds": "soon",
            "containers": [
                {
                    "name": 5,
                    "image": {"repo": "vllm"},
                    "command": 17,
                    "args": {"--epochs": 3},
                    "env": "MASTER_ADDR",
                    "ports": "8000",
                    "readinessProbe": "yes",
                    "livenessProbe": {"httpGet": "x"},
                    "resources": {"limits": "all"},
                    "lifecycle": {"preStop": None},
                },
                {
                    "command": [None, 3, 2.5, {"x": 1}, "--"],
                    "args": ["", "-", "--=", "=", "a=b=c", "-m"],
                    "env": [None, {"name": 5}, {"value": "x"}, "NCCL_DEBUG"],
                    "ports": [None, {"containerPort": "8080"}, {"containerPort": 8000, "name": 7}],
                    "readinessProbe": {"httpGet": {"port": None, "path": 3}},
                    "startupProbe": {"grpc": {"port": [1]}},
                },
            ],
        }
    },
    {"containers": [{"image": "vllm/vllm-openai"}]},  # a bare PodSpec
    {"spec": {"template": {"spec": {"containers": [{"command": ["torchrun", "x.py"]}]}}}},  # a Deployment spec
]


@pytest.mark.parametrize("template", JUNK_TEMPLATES, ids=range(len(JUNK_TEMPLATES)))
@pytest.mark.parametrize("spec_class", [None, "auto", 7, ["inference"]])
def test_malformed_input_never_raises(spec_class: Any, template: Any) -> None:
    workload_class, reason = classify(spec_class, template)
    assert workload_class in CLASSES
    assert isinstance(reason, str) and reason


def test_none_template_falls_back() -> None:
    assert classify(None, None) == ("training", FALLBACK_REASON)


def test_pod_spec_and_deployment_spec_shapes_are_read() -> None:
    assert classify("auto", {"containers": [{"image": "vllm/vllm-openai:latest"}]})[0] == "inference"
    wrapped = {"spec": {"template": {"spec": {"containers": [{"command": ["torchrun", "x.py"]}]}}}}
    assert classify("auto", wrapped)[0] == "training"


def test_read_only_mappings_are_read_like_dicts() -> None:
    # kopf hands out mapping views, not dicts.
    def frozen(value: Any) -> Any:
        if isinstance(value, dict):
            return MappingProxyType({key: frozen(item) for key, item in value.items()})
        if isinstance(value, list):
            return [frozen(item) for item in value]
        return value

    for template in (VLLM_SERVER, TORCHRUN_JOB):
        assert classify("auto", frozen(template)) == classify("auto", template)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
container_keys = st.sampled_from(
    ["name", "image", "command", "args", "env", "ports", "readinessProbe", "livenessProbe", "resources", "lifecycle"]
)
containers = st.dictionaries(container_keys, json_values, max_size=6)
templates = st.fixed_dictionaries(
    {
        "metadata": st.dictionaries(st.sampled_from(["labels", "annotations"]), json_values, max_size=2),
        "spec": st.fixed_dictionaries(
            {"containers": st.lists(containers | json_values, max_size=3)},
            optional={"restartPolicy": json_values},
        ),
    }
)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(template=templates | json_values)
def test_arbitrary_json_never_raises(template: Any) -> None:
    workload_class, reason = classify("auto", template)
    assert workload_class in CLASSES and reason


# Words the tokenizer treats specially, mixed with junk: the evidence reader itself (not only
# classify, which would swallow an exception as "no signal") must never raise on them.
command_words = st.lists(
    st.sampled_from(
        ["", "/", "-", "--", "-m", "--module", "=", "a=b=", "serve", "vllm", "import", ";", "&&", "|", "x/", "/serve",
         "--port", "--host", "0.0.0.0", "train.py", "x.yaml", "--config", "trainer.max_steps=3", "torchrun", "sh", "-c"]
    )
    | st.text(max_size=8),
    max_size=12,
)
commands = st.fixed_dictionaries(
    {"command": command_words, "args": command_words | st.text(max_size=30)},
    optional={"image": st.text(max_size=30), "name": st.text(max_size=10)},
)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(containers=st.lists(commands, min_size=1, max_size=3))
@example(containers=[{"command": ["x/", "serve"], "args": []}])  # a "program" whose basename is empty
def test_command_lines_of_any_shape_are_read_without_error(containers: list[dict[str, Any]]) -> None:
    find_evidence({"spec": {"containers": containers}})


def test_same_input_same_answer() -> None:
    for document in CORPUS[:20]:
        assert classify("auto", document["template"]) == classify("auto", copy.deepcopy(document["template"]))


def test_reason_stays_short_whatever_the_manifest_holds() -> None:
    long_name = "n" * 5000
    template = pod({"name": long_name, "image": "i" * 5000, "command": ["python", "x" * 5000 + "_train.py", "-m", "m" * 5000 + ".train"]})
    workload_class, reason = classify("auto", template)
    assert workload_class == "training"
    assert len(reason) < 1000
