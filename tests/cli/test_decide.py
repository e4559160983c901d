"""`gpuadmit decide`, run as the user runs it: a subprocess reading a file or stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CLUSTER = ROOT / "examples" / "cluster.yaml"
DECISION_KEYS = [
    "namespace", "name", "class", "classReason", "action", "reason", "message", "placement",
    "marginPerGPUHour", "queuePosition",
]  # fmt: skip
REASONS = {
    "admit": {"Admitted"},
    "queue": {"InsufficientCapacity", "InferenceReserve"},
    "reject": {"NoNodeCanFit", "MarginBelowFloor", "QueueTimeout", "QueueFull", "InvalidSpec"},
}
TRAINING_TEMPLATE = {
    "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "t", "image": "pytorch", "command": ["torchrun", "train.py"]}]}
}
CREATED = "2026-11-26T09:00:00Z"


def run_decide(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuadmit", "decide", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def decisions_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def node(name: str, gpus: int = 8, product: str = "NVIDIA-A100-SXM4-80GB") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": "81920"}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def workload(name: str, gpus: Any = 2, namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUWorkload",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": CREATED},
        "spec": {"gpus": gpus, "template": TRAINING_TEMPLATE, **spec},
    }


def write_yaml(path: Path, *documents: Any) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def pending_in_example() -> set[tuple[str, str]]:
    dump = yaml.safe_load(EXAMPLE_CLUSTER.read_text())
    return {
        (item["metadata"]["namespace"], item["metadata"]["name"])
        for item in dump["items"]
        if item["kind"] == "GPUWorkload" and (item.get("status") or {}).get("phase") in (None, "Queued", "Preempted")
    }


@pytest.fixture(scope="module")
def example_json() -> dict[str, Any]:
    result = run_decide("-f", str(EXAMPLE_CLUSTER), "-o", "json")
    assert result.returncode == 0, result.stderr
    return decisions_of(result)


def test_example_json_has_the_documented_shape(example_json: dict[str, Any]) -> None:
    assert list(example_json) == ["decisions", "preemptions"]
    for decision in example_json["decisions"]:
        assert list(decision) == DECISION_KEYS
        assert decision["reason"] in REASONS[decision["action"]]
        assert decision["message"], decision
        if decision["action"] == "admit":
            assert decision["placement"] and all(set(entry) == {"node", "gpus"} for entry in decision["placement"])
            assert decision["queuePosition"] is None
        else:
            assert decision["placement"] == []
        if decision["action"] == "queue":
            assert isinstance(decision["queuePosition"], int) and decision["queuePosition"] >= 1
    for preemption in example_json["preemptions"]:
        assert set(preemption) == {"namespace", "name", "preemptedBy", "reason"}
        assert preemption["reason"] == "PreemptedByHigherMargin"


def test_example_gets_exactly_one_decision_per_pending_workload(example_json: dict[str, Any]) -> None:
    decided = [(d["namespace"], d["name"]) for d in example_json["decisions"]]
    assert len(decided) == len(set(decided))
    assert set(decided) == pending_in_example()


def test_example_tells_the_story_it_was_written_for(example_json: dict[str, Any]) -> None:
    by_name = {d["name"]: d for d in example_json["decisions"]}
    assert (by_name["zero-gpus"]["action"], by_name["zero-gpus"]["reason"]) == ("reject", "InvalidSpec")
    assert "spec.gpus" in by_name["zero-gpus"]["message"]
    assert by_name["giant-gang"]["reason"] == "NoNodeCanFit"
    assert by_name["huge-memory"]["reason"] == "NoNodeCanFit"
    assert by_name["stale-eval"]["reason"] == "QueueTimeout"
    assert by_name["h100-only-train"]["reason"] == "MarginBelowFloor"
    # 80 GB of memory per GPU: only the H100 nodes qualify.
    assert [entry["node"].startswith("gpu-h100") for entry in by_name["chat-llama-70b"]["placement"]] == [True]
    assert by_name["chat-llama-70b"]["class"] == "inference" and "vLLM" in by_name["chat-llama-70b"]["classReason"]
    assert "nightly-eval" not in by_name and "pretrain-llm" not in by_name  # finished and running: not pending


def test_example_table_has_the_columns_a_row_per_decision_and_a_summary(example_json: dict[str, Any]) -> None:
    result = run_decide("-f", str(EXAMPLE_CLUSTER))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "CLASS", "ACTION", "REASON", "GPUS", "MARGIN", "POS", "PLACEMENT"]
    rows = [line.split() for line in lines[1 : 1 + len(example_json["decisions"])]]
    assert [(row[0], row[1], row[3], row[4]) for row in rows] == [
        (d["namespace"], d["name"], d["action"], d["reason"]) for d in example_json["decisions"]
    ]
    admitted = [d for d in example_json["decisions"] if d["action"] == "admit"]
    summary = lines[-1]
    assert summary.startswith(f"admitted {len(admitted)} (")
    assert f"{sum(e['gpus'] for d in admitted for e in d['placement'])} GPUs placed" in summary
    assert "at 2026-11-26T09:59:30Z" in summary  # the dump's own time: its latest timestamp


def test_output_is_deterministic_and_yaml_matches_json(example_json: dict[str, Any]) -> None:
    again = run_decide("-f", str(EXAMPLE_CLUSTER), "-o", "json")
    assert decisions_of(again) == example_json
    as_yaml = run_decide("-f", str(EXAMPLE_CLUSTER), "-o", "yaml")
    assert as_yaml.returncode == 0 and yaml.safe_load(as_yaml.stdout) == example_json


def test_stdin_json_list_gives_the_same_decisions(example_json: dict[str, Any]) -> None:
    as_json = json.dumps(yaml.safe_load(EXAMPLE_CLUSTER.read_text()))
    result = run_decide("-f", "-", "-o", "json", stdin=as_json)
    assert result.returncode == 0, result.stderr
    assert decisions_of(result) == example_json


def test_multi_document_yaml_typed_lists_and_json_streams(tmp_path: Path) -> None:
    nodes = {"apiVersion": "v1", "kind": "NodeList", "items": [{k: v for k, v in node("n1").items() if k != "kind"}]}
    path = write_yaml(tmp_path / "dump.yaml", nodes, workload("a"), None, workload("b", gpus=16))
    result = run_decide("-f", str(path), "-o", "json")
    decided = {d["name"]: (d["action"], d["reason"]) for d in decisions_of(result)["decisions"]}
    assert decided == {"a": ("admit", "Admitted"), "b": ("reject", "NoNodeCanFit")}
    stream = "\n".join(json.dumps(document) for document in (nodes, workload("a"), workload("b", gpus=16)))
    from_stream = run_decide("-f", "-", "-o", "json", stdin=stream)
    assert {d["name"]: (d["action"], d["reason"]) for d in decisions_of(from_stream)["decisions"]} == decided


def test_now_decides_queue_timeouts(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "dump.yaml", node("n1", gpus=2), workload("big", gpus=2), workload("waits", gpus=2, maxQueueSeconds=600))
    early = decisions_of(run_decide("-f", str(path), "-o", "json", "--now", "2026-11-26T09:05:00Z"))
    late = decisions_of(run_decide("-f", str(path), "-o", "json", "--now", "2026-11-26T09:30:00+00:00"))
    assert {d["name"]: d["reason"] for d in early["decisions"]}["waits"] == "InsufficientCapacity"
    assert {d["name"]: d["reason"] for d in late["decisions"]}["waits"] == "QueueTimeout"


def test_policy_file_overrides_the_dump_policy(tmp_path: Path) -> None:
    dump = write_yaml(tmp_path / "dump.yaml", node("n1"), workload("train"))
    assert decisions_of(run_decide("-f", str(dump), "-o", "json"))["decisions"][0]["action"] == "admit"
    strict = write_yaml(tmp_path / "policy.yaml", {"minMarginPerGPUHour": 5.0})  # a bare spec will do
    result = run_decide("-f", str(dump), "-o", "json", "--policy", str(strict))
    assert decisions_of(result)["decisions"][0]["reason"] == "MarginBelowFloor"


def test_an_invalid_workload_gets_an_invalid_spec_decision_naming_the_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "dump.yaml", node("n1"), workload("ok"), workload("bad", gpus="four"), workload("bad2", template={"spec": {}}))
    result = run_decide("-f", str(path), "-o", "json")
    assert result.returncode == 0, result.stderr
    by_name = {d["name"]: d for d in decisions_of(result)["decisions"]}
    assert by_name["ok"]["action"] == "admit"
    assert (by_name["bad"]["reason"], by_name["bad2"]["reason"]) == ("InvalidSpec", "InvalidSpec")
    assert "spec.gpus" in by_name["bad"]["message"]
    assert "spec.template.spec" in by_name["bad2"]["message"]


def test_objects_that_cannot_be_named_are_reported_and_the_rest_decided(tmp_path: Path) -> None:
    nameless = workload("x")
    del nameless["metadata"]["name"]
    path = write_yaml(tmp_path / "dump.yaml", node("n1"), workload("ok"), "just text", {"spec": {}}, nameless)
    result = run_decide("-f", str(path), "-o", "json")
    assert result.returncode == 2
    assert [d["name"] for d in decisions_of(result)["decisions"]] == ["ok"]
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 3
    assert all(line.startswith(f"gpuadmit decide: {path}: skipped ") for line in problems)
    assert "a GPUWorkload without metadata.name" in result.stderr


@pytest.mark.parametrize(
    "content, expected",
    [
        ("kind: List\nitems: [1, 2\n", r"line \d+ column \d+: not valid YAML"),
        ("a: b\n  c: d\n", r"line 2 column \d+: not valid YAML"),
        ('{"kind": "List", "items": [}', r"line 1 column 28: not valid JSON"),
        ('{"kind": "Node"} {"kind": ', r"line 1 column \d+: not valid JSON"),
    ],
)
def test_unreadable_input_is_one_line_naming_file_and_position(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    result = run_decide("-f", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"gpuadmit decide: {path}: ")
    assert __import__("re").search(expected, line), line


def test_missing_file_binary_file_and_bad_now(tmp_path: Path) -> None:
    missing = run_decide("-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml: cannot read" in missing.stderr
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"kind: List\n\xff\xfe\x00")
    not_text = run_decide("-f", str(binary))
    assert not_text.returncode == 2 and "line 2: not UTF-8 text" in not_text.stderr
    bad_now = run_decide("-f", str(EXAMPLE_CLUSTER), "--now", "yesterday")
    assert bad_now.returncode == 2 and "--now: not an RFC 3339 timestamp" in bad_now.stderr
    for result in (missing, not_text, bad_now):
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_invalid_policy_in_the_dump_stops_with_the_field(tmp_path: Path) -> None:
    policy = {"apiVersion": "gpuadmit.io/v1alpha1", "kind": "MarginPolicy", "metadata": {"name": "default"},
              "spec": {"inferenceReserveFraction": 1.5}}  # fmt: skip
    result = run_decide("-f", str(write_yaml(tmp_path / "dump.yaml", node("n1"), workload("a"), policy)))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gpuadmit decide: MarginPolicy 'default' is invalid: spec.inferenceReserveFraction: must be at most 1, got 1.5"
    )


@pytest.mark.parametrize("stdin", ["", "\n  \n", "---\n---\n", "# only a comment\n"])
def test_empty_input_is_one_line_and_exit_2(stdin: str) -> None:
    result = run_decide("-f", "-", "-o", "json", stdin=stdin)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gpuadmit decide: <stdin>: ") and ("empty" in line or "no objects" in line), line


def test_exact_solver_decides_every_pending_workload(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "dump.yaml", node("n1", 4), node("n2", 4), *(workload(f"w{i}", gpus=g) for i, g in enumerate([1, 2, 3, 4])))
    result = run_decide("-f", str(path), "-o", "json", "--solver", "exact")
    assert result.returncode == 0, result.stderr
    decided = decisions_of(result)["decisions"]
    assert sorted(d["name"] for d in decided) == ["w0", "w1", "w2", "w3"]
    assert sum(e["gpus"] for d in decided for e in d["placement"]) <= 8


# How long `decide` takes against parsing its input is a benchmark, not a test: `make bench` part
# `decide` (benchmarks/decide.py) prints it for a few hundred and for 100,000 distinct templates.


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**65), max_value=2**65) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
spec_overrides = st.dictionaries(
    st.sampled_from(["class", "gpus", "replicas", "gpuProducts", "minGpuMemoryMiB", "preemptible", "maxQueueSeconds", "template"]),
    json_values,
    max_size=2,
)
node_overrides = st.fixed_dictionaries({
    "gpus": st.one_of(st.integers(-2, 16), st.text(max_size=3), st.none()),
    "unschedulable": st.one_of(st.booleans(), json_values),
    "status": st.one_of(st.just("keep"), json_values),
})  # fmt: skip
# A status is the operator's to write; anything there that is not one of its phases is ignored.
# README: "workloads with no phase, Queued or Preempted are pending and each gets exactly one decision".
NOT_PENDING_PHASES = ("Admitted", "Running", "Succeeded", "Failed", "Rejected")
statuses_strategy = st.one_of(
    json_values,
    st.fixed_dictionaries({"phase": st.sampled_from(("Queued", "Preempted", "", *NOT_PENDING_PHASES))}),
)


def is_pending(obj: dict[str, Any]) -> bool:
    status = obj.get("status")
    return not (isinstance(status, dict) and status.get("phase") in NOT_PENDING_PHASES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    nodes=st.lists(node_overrides, max_size=3),
    specs=st.lists(spec_overrides, max_size=4),
    statuses=st.lists(statuses_strategy, max_size=4),
    junk=st.lists(json_values, max_size=2),
)
def test_arbitrary_dumps_never_crash_and_decide_each_named_pending_workload_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes: list[dict[str, Any]], specs: list[dict[str, Any]],
    statuses: list[Any], junk: list[Any],
) -> None:  # fmt: skip
    items: list[Any] = []
    for index, overrides in enumerate(nodes):
        obj = node(f"n{index}", gpus=8)
        obj["status"]["allocatable"]["nvidia.com/gpu"] = overrides["gpus"]
        obj["spec"] = {"unschedulable": overrides["unschedulable"]}
        if overrides["status"] != "keep":
            obj["status"] = overrides["status"]
        items.append(obj)
    for index, overrides in enumerate(specs):
        obj = workload(f"w{index}", **overrides)
        if index < len(statuses):
            obj["status"] = statuses[index]
        items.append(obj)
    named_pending = {("team-a", obj["metadata"]["name"]) for obj in items if obj["kind"] == "GPUWorkload" and is_pending(obj)}
    items.extend(junk)
    path = tmp_path / "dump.json"
    path.write_text(json.dumps({"kind": "List", "items": items}))
    from gpuadmit.cli import main

    code = main(["decide", "-f", str(path), "-o", "json"])
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err  # 2: some objects were skipped (bad input), the rest decided
    assert "Traceback" not in captured.err
    decided = [(d["namespace"], d["name"]) for d in json.loads(captured.out)["decisions"]]
    assert len(decided) == len(set(decided)), "a workload decided twice"
    assert set(decided) == named_pending, "a pending workload dropped, or one that holds or finished decided"
