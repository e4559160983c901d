"""`gpuadmit decide` on hostile and broken files: one line on stderr, exit 2, within a time and
memory limit (see tests/bounded_run.py), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gpuadmit.core.nodes import MAX_GPUS_PER_NODE
from gpuadmit.inputs import MAX_ALIAS_NODES
from tests.bounded_run import assert_refused_in_one_line, run_gpuadmit

PROG = "gpuadmit decide"

# Nine levels of nine: 9**9 (387 million) strings from a file of a few hundred bytes.
BILLION_LAUGHS = "\n".join(
    [
        'lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"lol{level}: &lol{level} [{', '.join([f'*lol{level - 1}'] * 9)}]" for level in range(1, 9)),
    ]
) + "\n"

WORKLOAD = """\
apiVersion: gpuadmit.io/v1alpha1
kind: GPUWorkload
metadata: {name: w, namespace: team-a}
spec:
  gpus: 1
  template:
    spec:
      containers: [{name: c, image: busybox}]
"""


def node_yaml(gpus: str) -> str:
    return f"apiVersion: v1\nkind: Node\nmetadata: {{name: huge}}\nstatus: {{allocatable: {{nvidia.com/gpu: {gpus}}}}}\n"


def decide(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_gpuadmit(["decide", "-f", str(path), *extra])


def test_a_billion_laughs_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    assert_refused_in_one_line(decide(path), PROG, str(path), f"more than {MAX_ALIAS_NODES:,} nodes")


def test_a_billion_laughs_inside_a_valid_workload_template_is_refused(tmp_path: Path) -> None:
    # A valid GPUWorkload whose container args are the last level of the bomb: the anchors sit in
    # an annotation-like field before it, where the schema would only see one big list.
    anchors = "".join(f"    {line}\n" for line in BILLION_LAUGHS.splitlines())
    document = WORKLOAD.replace("spec:\n  gpus: 1\n", f"spec:\n  gpus: 1\n  x-anchors:\n{anchors}")
    document = document.replace("{name: c, image: busybox}", "{name: c, image: busybox, args: *lol8}")
    path = tmp_path / "workload.yaml"
    path.write_text(document)
    assert "args: *lol8" in document and "    lol0: &lol0" in document
    assert_refused_in_one_line(decide(path), PROG, str(path), "YAML aliases")


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    # Two workloads of one List sharing a container through an anchor: ordinary YAML, decided as usual.
    shared = WORKLOAD.replace("containers: [{name: c, image: busybox}]", "containers: [&c {name: c, image: busybox}]")
    second = WORKLOAD.replace("name: w,", "name: w2,").replace("containers: [{name: c, image: busybox}]", "containers: [*c]")
    path = tmp_path / "anchors.yaml"
    path.write_text("kind: List\nitems:\n" + "".join(f"- {doc.replace(chr(10), chr(10) + '  ').rstrip()}\n" for doc in (shared, second)))
    result = decide(path, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert sorted(d["name"] for d in json.loads(result.stdout)["decisions"]) == ["w", "w2"]


@pytest.mark.parametrize("gpus", ['"100M"', '"1G"', "1e19", '"10E"'])
def test_a_node_advertising_impossibly_many_gpus_is_left_out_with_one_line(tmp_path: Path, gpus: str) -> None:
    path = tmp_path / "dump.yaml"
    path.write_text(node_yaml(gpus) + "---\n" + WORKLOAD)
    result = decide(path, "-o", "json")
    line = assert_refused_in_one_line(result, PROG, "skipped Node 'huge'", f"more than the {MAX_GPUS_PER_NODE}")
    assert "digits" not in line and len(line) < 300, line
    decisions = json.loads(result.stdout)["decisions"]
    assert [(d["name"], d["action"], d["placement"]) for d in decisions] == [("w", "reject", [])]


def test_a_node_at_the_cap_is_used(tmp_path: Path) -> None:
    path = tmp_path / "dump.yaml"
    path.write_text(node_yaml(str(MAX_GPUS_PER_NODE)) + "---\n" + WORKLOAD)
    result = decide(path, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decisions"][0]["placement"] == [{"node": "huge", "gpus": 1}]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"kind": "List", "items": [' + b"1" * 5000 + b"]}", "not valid JSON"),
        (b"kind: List\nitems: [" + b"1" * 5000 + b"]\n", "not valid YAML"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nesting depth"),  # libyaml's own cap
        (b"kind: List\nitems:\n- \xff\xfe\n", "line 3: not UTF-8 text"),
        (b"", "is empty"),
        (b"\n\n   \n", "is empty"),
        (b"---\n---\n", "holds no objects"),
        # From the hostile-tenant run: a lone surrogate decoded from JSON ended in a traceback when printed.
        (b'{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n\\ud800"}, '
         b'"status": {"allocatable": {"nvidia.com/gpu": "8"}}}]}', "lone UTF-16 surrogate \\ud800"),
        (b"a: &a {x: 1, y: 1}\n" + b"".join(
            b"%s: &%s {<<: [%s]}\n" % (bytes([98 + i]), bytes([98 + i]), b", ".join([b"*" + bytes([97 + i])] * 9))
            for i in range(9)), "YAML aliases expand"),  # merge keys: the bomb through <<
        (b"!!python/object/apply:os.system [echo pwned]\n", "could not determine a constructor"),
        (b"kind: List\x00\nitems: []\n", "control characters are not allowed"),
    ],
    ids=["json-5000-digits", "yaml-5000-digits", "json-deep", "yaml-deep", "not-utf8", "empty", "blank", "no-documents",
         "json-lone-surrogate", "merge-key-bomb", "python-tag", "nul-byte"],
)
def test_broken_input_is_one_line_and_exit_2(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "dump.yaml"
    path.write_bytes(content)
    assert_refused_in_one_line(decide(path), PROG, str(path), expected)


def test_missing_and_unreadable_files_are_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_refused_in_one_line(decide(tmp_path / "nope.yaml"), PROG, "nope.yaml: cannot read")
    assert_refused_in_one_line(decide(tmp_path), PROG, f"{tmp_path}: cannot read")
    if os.geteuid() != 0:  # root reads a file whatever its mode
        locked = tmp_path / "locked.yaml"
        locked.write_text(WORKLOAD)
        locked.chmod(0)
        assert_refused_in_one_line(decide(locked), PROG, "locked.yaml: cannot read")


def test_an_empty_stdin_is_one_line_and_exit_2() -> None:
    assert_refused_in_one_line(run_gpuadmit(["decide", "-f", "-"], stdin=b""), PROG, "<stdin>: is empty")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"spec: " + b"{a: " * 50_000 + b"1" + b"}" * 50_000 + b"\n", "nesting depth"),
        (b'{"spec": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, "nested too deeply"),
        (b"kind: MarginPolicy\nspec:\n  x: \xc3\x28\n", "not UTF-8"),
        (b"", "is empty"),
        (BILLION_LAUGHS.encode(), "YAML aliases"),
    ],
    ids=["nested-yaml", "nested-json", "not-utf8", "empty", "alias-bomb"],
)
def test_a_broken_policy_file_is_one_line_and_exit_2(tmp_path: Path, content: bytes, expected: str) -> None:
    dump = tmp_path / "dump.yaml"
    dump.write_text(WORKLOAD)
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(content)
    assert_refused_in_one_line(decide(dump, "--policy", str(policy)), PROG, f"--policy {policy}", expected)


def test_a_yaml_flow_mapping_is_yaml_not_broken_json(tmp_path: Path) -> None:
    """From the hostile-tenant run: a file starting with '{' was read as JSON only, so valid YAML in
    flow style was refused; a real JSON error is still reported as one."""
    path = tmp_path / "dump.yaml"
    path.write_text("{kind: List, items: [{kind: Node, metadata: {name: n1}, status: {allocatable: {nvidia.com/gpu: '8'}}}, "
                    "{apiVersion: gpuadmit.io/v1alpha1, kind: GPUWorkload, metadata: {name: w, namespace: team-a}, "
                    "spec: {gpus: 1, template: {spec: {containers: [{name: c, image: busybox}]}}}}]}\n")
    result = decide(path, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decisions"][0]["placement"] == [{"node": "n1", "gpus": 1}]
    path.write_text('{"kind": "List", "items": [}\n')
    assert_refused_in_one_line(decide(path), PROG, "not valid JSON")
    # JSON broken far in is reported as the JSON error it is (and not read again as YAML, far slower).
    items = ", ".join(json.dumps({"kind": "Node", "metadata": {"name": f"n{i}"}}) for i in range(20_000))
    path.write_text('{"kind": "List", "items": [' + items + "]\n")
    assert_refused_in_one_line(decide(path), PROG, "not valid JSON: Expecting ',' delimiter")
