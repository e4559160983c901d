"""`gpuadmit simulate` end to end: table, JSON, plots, progress, and errors."""

from __future__ import annotations

import io
import json

import pytest

from gpuadmit.cli import main
from gpuadmit.sim.cli import progress_reporter
from tests.sim.synthetic import write_synthetic


@pytest.fixture
def synthetic(tmp_path):
    return write_synthetic(tmp_path, seed=5, hours=8)


def simulate(capsys, *args):
    code = main(["simulate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_output_has_every_figure_per_policy(capsys, synthetic):
    workloads, cluster, policy = synthetic
    code, out, err = simulate(capsys, "--workloads", workloads, "--cluster", cluster, "--policy", policy, "-o", "json", "--progress", "plain")
    assert code == 0, err
    document = json.loads(out)
    assert [p["policy"] for p in document["policies"]] == ["margin", "fifo", "priority", "binpack"]
    for figures in document["policies"]:
        assert {"marginRealized", "marginPerGPUHour", "gpuUtilization", "preemptions", "waitedPastMaxQueue"} <= set(figures)
        for cls in ("inference", "training"):
            by_class = figures["byClass"][cls]
            assert {"admitted", "rejected", "stillQueued", "waitSeconds"} <= set(by_class)
            assert set(by_class["waitSeconds"]) == {"p50", "p95", "max"}
            # Every workload ends in exactly one state; admitted counts those admitted at least once.
            ends = by_class["completed"] + by_class["runningAtEnd"] + by_class["rejected"] + by_class["stillQueued"]
            assert ends == by_class["submitted"]
            assert by_class["completed"] + by_class["runningAtEnd"] <= by_class["admitted"] <= by_class["submitted"]
    assert document["trace"]["gpus"] == 24
    assert document["scenario"]["policy"] == str(policy)
    # Your own data is replayed as given: the Alibaba scenario's shaping is not applied to it.
    assert (document["scenario"]["timeCompression"], document["scenario"]["nodes"]) == (1.0, "all")
    assert "marginGainOverFifo" in document["claim"]
    assert "margin: 100% replayed" in err  # plain progress lines on a non-terminal


def test_table_lists_policies_side_by_side(capsys, synthetic):
    workloads, cluster, policy = synthetic
    code, out, _ = simulate(capsys, "--workloads", workloads, "--cluster", cluster, "--policy", policy, "--policies", "margin,fifo", "--progress", "off")
    assert code == 0
    header = next(line for line in out.splitlines() if "margin" in line and "fifo" in line)
    assert header.split() == ["margin", "fifo"]
    for label in ("margin realized ($)", "GPU utilization", "inference: wait p95", "training: still queued", "waited past max queue"):
        assert any(line.startswith(label) for line in out.splitlines()), label


def test_plot_writes_the_four_charts(capsys, synthetic, tmp_path):
    workloads, cluster, policy = synthetic
    plots = tmp_path / "plots"
    code, _, err = simulate(capsys, "--workloads", workloads, "--cluster", cluster, "--policy", policy, "--plot", plots, "--progress", "off")
    assert code == 0, err
    for name in ("margin.png", "queue.png", "utilization.png", "waits.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--policies", "margin,lottery"], "unknown lottery"),
        (["--nodes", "zero"], "--nodes must be a whole number"),
        (["--time-compression", "0"], "time compression must be a positive number"),
        (["--workloads", "{workloads}"], "--workloads and --cluster go together"),
        (["--policy", "{missing}"], "cannot read"),
        (["--policy", "{bad_policy}"], "spec.pricePerGPUHour"),
        (["--trace", "{empty}"], "no Alibaba 2023 trace found"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(capsys, synthetic, tmp_path, args, complaint):
    workloads, cluster, _ = synthetic
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("kind: MarginPolicy\nspec:\n  pricePerGPUHour: {inference: -1}\n")
    (tmp_path / "empty").mkdir()
    paths = {"workloads": workloads, "missing": tmp_path / "absent.yaml", "bad_policy": bad_policy, "empty": tmp_path / "empty"}
    args = [arg.format(**paths) for arg in args]
    if "--workloads" not in args and "--trace" not in args:
        args += ["--workloads", str(workloads), "--cluster", str(cluster)]
    code, _, err = simulate(capsys, *args, "--progress", "off")
    assert code == 2
    assert complaint in err and "Traceback" not in err


def test_alibaba_trace_gets_the_default_scenario_unless_flags_say_otherwise(capsys, tmp_path):
    from gpuadmit.sim.scenario import DEFAULT_SHAPE
    from tests.sim.test_trace import ALIBABA_NODES, ALIBABA_POD_HEADER, alibaba_pod
    from tests.sim.synthetic import write_csv

    pods = [alibaba_pod(f"p{i}", 1, "LS" if i % 2 else "BE", i * 1000, i * 1000, i * 1000 + 500) for i in range(10)]
    write_csv(tmp_path / "openb_pod_list_default.csv", pods, ALIBABA_POD_HEADER)
    write_csv(tmp_path / "openb_node_list_gpu_node.csv", ALIBABA_NODES, list(ALIBABA_NODES[0]))
    code, out, err = simulate(capsys, "--trace", tmp_path, "-o", "json", "--progress", "off")
    assert code == 0, err
    scenario = json.loads(out)["scenario"]
    assert (scenario["timeCompression"], scenario["nodes"]) == (DEFAULT_SHAPE.time_compression, DEFAULT_SHAPE.node_count)
    assert scenario["gpuCostPerHour"]["T4"] == 0.35  # the scenario policy prices the trace's models
    code, out, err = simulate(capsys, "--trace", tmp_path, "-o", "json", "--progress", "off", "--time-compression", "2", "--nodes", "all")
    document = json.loads(out)
    assert (document["scenario"]["timeCompression"], document["scenario"]["nodes"]) == (2.0, "all")
    assert sum(p["byClass"]["inference"]["submitted"] + p["byClass"]["training"]["submitted"] for p in document["policies"]) == 40


def test_progress_bar_redraws_in_place_and_ends_with_a_newline():
    stream = io.StringIO()
    report = progress_reporter("margin", "bar", stream)
    for share in (0.0, 0.5, 1.0):
        report(share)
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("100%\n")
    assert "#" * 15 + "." * 15 in text


def test_quotas_apply_to_the_trace_namespaces_and_report_the_guaranteed_wait(capsys, synthetic, tmp_path):
    workloads, cluster, policy = synthetic
    quotas = tmp_path / "quotas.yaml"
    quotas.write_text(
        "apiVersion: gpuadmit.io/v1alpha1\nkind: GPUQuota\nmetadata: {name: b}\n"
        "spec: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: team-b}}, guaranteed: {T4: 4}}\n"
    )
    code, out, err = simulate(capsys, "--workloads", workloads, "--cluster", cluster, "--policy", policy,
                              "--quotas", quotas, "--policies", "margin,fifo", "-o", "json", "--progress", "off")
    assert code == 0, err
    by_policy = {entry["policy"]: entry for entry in json.loads(out)["policies"]}
    guaranteed = by_policy["margin"]["guaranteed"]
    assert guaranteed["workloads"]["waitSeconds"]["p95"] is not None
    assert 0 < guaranteed["workloads"]["submitted"] <= guaranteed["tenants"]["submitted"]
    code, out, _ = simulate(capsys, "--workloads", workloads, "--cluster", cluster, "--policy", policy,
                            "--quotas", quotas, "--policies", "margin", "--progress", "off")
    assert code == 0 and "guaranteed workloads: wait p95" in out and "guaranteed tenants, all work: wait p95" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: GPUQuota\nmetadata: {name: b}\nspec: {namespaceSelector: {}, maxGPUs: -1}\n")
    code, _, err = simulate(capsys, "--workloads", workloads, "--cluster", cluster, "--quotas", bad)
    assert code == 2 and "--quotas" in err and "GPUQuota b: spec.maxGPUs" in err and "Traceback" not in err
