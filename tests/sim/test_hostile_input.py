"""`gpuadmit simulate` on hostile and broken files: one line on stderr, exit 2, within a time and
memory limit (see tests/bounded_run.py), never a traceback nor an all-zero report."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpuadmit.core.nodes import MAX_GPUS_PER_NODE
from gpuadmit.sim.trace import ALIBABA_NODES_FILE, MAX_NODES, MAX_TRACE_SECONDS, MAX_WORKLOADS
from tests.bounded_run import assert_refused_in_one_line, run_gpuadmit

PROG = "gpuadmit simulate"
CLUSTER = b"name,gpus,product\nn1,8,A100\n"
WORKLOADS = b"name,submit_time,duration_s,gpus\nw1,0,100,1\nw2,10,100,2\n"
ALIBABA_NODES = b"sn,cpu_milli,memory_mib,gpu,model\nnode-1,96000,786432,8,V100M32\n"
ALIBABA_POD_HEADER = b"name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"


def simulate(
    tmp_path: Path, workloads: bytes = WORKLOADS, cluster: bytes = CLUSTER, *extra: str, suffix: str = ".csv"
) -> subprocess.CompletedProcess[str]:
    (tmp_path / f"w{suffix}").write_bytes(workloads)
    (tmp_path / "c.csv").write_bytes(cluster)
    return run_gpuadmit(["simulate", "--workloads", str(tmp_path / f"w{suffix}"), "--cluster", str(tmp_path / "c.csv"),
                         "--progress", "off", *extra])  # fmt: skip


def test_the_well_formed_files_replay(tmp_path: Path) -> None:
    result = simulate(tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "workloads, cluster, expected",
    [
        (b"name,submit_time,duration_s,gpus\nw1,0,100,1\nw\xff2,10,100,2\n", CLUSTER, "w.csv: line 3: not UTF-8"),
        (WORKLOADS, b"name,gpus,product\nn\xe91,8,A100\n", "c.csv: line 2: not UTF-8"),
        (WORKLOADS, b"name,gpus,product,count\nn,8,A100,10000000\n", f"at most {MAX_NODES:,} nodes"),
        (WORKLOADS, b"name,gpus,product\nn,100000000,A100\n", f"more than the {MAX_GPUS_PER_NODE} one node can have"),
        (WORKLOADS, b"name,gpus,product\nn,1e19,A100\n", "1e+19"),
        (b"name,submit_time,duration_s,gpus\nw1,1e308,100,1\n", CLUSTER, f"0..{MAX_TRACE_SECONDS:.0f} seconds"),
        (b"name,submit_time,duration_s,gpus\nw1,0,1e308,1\n", CLUSTER, f"0..{MAX_TRACE_SECONDS:.0f} seconds"),
        (b"name,submit_time,duration_s,gpus\nw1,0,nan,1\n", CLUSTER, "must be finite"),
        (b"", CLUSTER, "w.csv: is empty"),
        (b"name,submit_time,duration_s,gpus\n", CLUSTER, "w.csv: no workload in it"),
        (WORKLOADS, b"name,gpus,product\nn,0,A100\n", "c.csv: no node with GPUs"),
    ],
    ids=["workloads-not-utf8", "cluster-not-utf8", "count-10M", "node-100M-gpus", "node-1e19-gpus", "submit-1e308",
         "duration-1e308", "duration-nan", "empty", "header-only", "no-gpus"],
)
def test_broken_csv_is_one_line_and_exit_2(tmp_path: Path, workloads: bytes, cluster: bytes, expected: str) -> None:
    assert_refused_in_one_line(simulate(tmp_path, workloads, cluster), PROG, expected)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"workloads": [{"name": "a", "submit_time": 0, "gpus": ' + b"1" * 5000 + b"}]}", "not valid JSON"),
        (b'{"workloads": [\xff]}', "not UTF-8"),
        (b'{"workloads": [', "not valid JSON"),
        (b'{"workloads": [{"name": "a\\udfff", "submit_time": 0, "duration_s": 10, "gpus": 1}]}', "lone UTF-16 surrogate"),
        # From the hostile-tenant run: an integer Python reads but no float holds ended in OverflowError.
        (b'{"workloads": [{"name": "a", "submit_time": 0, "duration_s": 10, "gpus": ' + b"9" * 400 + b"}]}",
         "column 'gpus' must be finite"),
    ],
    ids=["deep", "5000-digits", "not-utf8", "truncated", "lone-surrogate", "400-digits"],
)
def test_broken_json_is_one_line_and_exit_2(tmp_path: Path, content: bytes, expected: str) -> None:
    assert_refused_in_one_line(simulate(tmp_path, content, CLUSTER, suffix=".json"), PROG, "w.json", expected)


@pytest.mark.parametrize(
    "policy, expected",
    [
        (b"spec: " + b"{a: " * 50_000 + b"1" + b"}" * 50_000 + b"\n", "nesting depth"),
        (b'{"spec": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, "nested too deeply"),
        (b"kind: MarginPolicy\nspec:\n  minMarginPerGPUHour: \xc3\x28\n", "line 3: not UTF-8"),
        (b"", "is empty"),
        (b"kind: ConfigMap\n", "no MarginPolicy"),
    ],
    ids=["nested-yaml", "nested-json", "not-utf8", "empty", "no-policy"],
)
def test_a_broken_policy_file_is_one_line_and_exit_2(tmp_path: Path, policy: bytes, expected: str) -> None:
    (tmp_path / "policy.yaml").write_bytes(policy)
    result = simulate(tmp_path, WORKLOADS, CLUSTER, "--policy", str(tmp_path / "policy.yaml"))
    assert_refused_in_one_line(result, PROG, "--policy", expected)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--horizon", "1e308"), "--horizon"),
        (("--time-compression", "1e-300"), "the replay would last"),
        (("--resample", "1e12"), f"more than {MAX_WORKLOADS:,}"),
    ],
)
def test_load_shapes_that_would_never_end_are_refused(tmp_path: Path, flags: tuple[str, ...], expected: str) -> None:
    assert_refused_in_one_line(simulate(tmp_path, WORKLOADS, CLUSTER, *flags), PROG, expected)


def test_a_plot_directory_that_cannot_be_made_is_one_line_before_the_replay(tmp_path: Path) -> None:
    result = simulate(tmp_path, WORKLOADS, CLUSTER, "--plot", str(tmp_path / "w.csv" / "plots"))
    assert_refused_in_one_line(result, PROG, "--plot", "cannot create the directory")
    assert result.stdout == ""


def test_missing_files_are_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(CLUSTER)
    result = run_gpuadmit(["simulate", "--workloads", str(tmp_path / "nope.csv"), "--cluster", str(tmp_path / "c.csv")])
    assert_refused_in_one_line(result, PROG, "nope.csv: cannot read")
    result = run_gpuadmit(["simulate", "--workloads", str(tmp_path), "--cluster", str(tmp_path / "c.csv")])
    assert_refused_in_one_line(result, PROG, "cannot read")
    result = run_gpuadmit(["simulate", "--trace", str(tmp_path / "absent")])
    assert_refused_in_one_line(result, PROG, "no Alibaba 2023 trace found")


def alibaba_dir(tmp_path: Path, pods_name: str, pods: bytes) -> Path:
    (tmp_path / ALIBABA_NODES_FILE).write_bytes(ALIBABA_NODES)
    (tmp_path / pods_name).write_bytes(pods)
    return tmp_path / pods_name


def test_a_pod_list_without_time_columns_names_them_and_the_file(tmp_path: Path) -> None:
    # The shape of the trace's openb_pod_list_multigpu50.csv: resources, no times.
    pods = alibaba_dir(tmp_path, "openb_pod_list_multigpu50.csv",
                       b"name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\npod-1,8000,30000,2,1000,\n")  # fmt: skip
    result = run_gpuadmit(["simulate", "--trace", str(pods), "--progress", "off"])
    line = assert_refused_in_one_line(result, PROG, str(pods), "creation_time", "scheduled_time", "deletion_time")
    assert "lacks the columns" in line
    assert result.stdout == ""  # no all-zero report


def test_a_pod_list_with_no_replayable_pod_is_an_error_not_an_all_zero_report(tmp_path: Path) -> None:
    pods = alibaba_dir(tmp_path, "openb_pod_list_default.csv",
                       ALIBABA_POD_HEADER + b"p1,1000,100,1,1000,,LS,Pending,10,,\np2,1000,100,0,0,,BE,Running,0,50,5\n")  # fmt: skip
    result = run_gpuadmit(["simulate", "--trace", str(tmp_path), "--progress", "off"])
    assert_refused_in_one_line(result, PROG, str(pods), "no pod to replay", "never scheduled")
    assert result.stdout == ""


def test_a_pod_list_with_one_replayable_pod_replays(tmp_path: Path) -> None:
    alibaba_dir(tmp_path, "openb_pod_list_default.csv", ALIBABA_POD_HEADER + b"p1,1000,100,1,1000,,LS,Running,0,500,10\n")
    result = run_gpuadmit(["simulate", "--trace", str(tmp_path), "--nodes", "all", "--progress", "off", "-o", "json"])
    assert result.returncode == 0, result.stderr
