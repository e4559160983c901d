"""Trace readers: the Alibaba 2023 format, the plain format, and load shaping."""

from __future__ import annotations

import json

import pytest

from gpuadmit.sim.trace import (
    LoadShape,
    TraceError,
    read_alibaba,
    read_nodes,
    read_plain,
    resample_workloads,
    subset_nodes,
)
from tests.sim.synthetic import CLUSTER_ROWS, HEADER, write_csv

ALIBABA_NODES = [
    {"sn": "n0", "cpu_milli": 64000, "memory_mib": 262144, "gpu": 8, "model": "G2"},
    {"sn": "n1", "cpu_milli": 64000, "memory_mib": 262144, "gpu": 2, "model": "T4"},
]
ALIBABA_POD_HEADER = ["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time"]
TRACE_END = 10000


def alibaba_pod(name, num_gpu, qos, created, scheduled, deleted, gpu_milli=1000, gpu_spec="", phase="Running"):
    return {
        "name": name, "cpu_milli": 1000, "memory_mib": 1024, "num_gpu": num_gpu, "gpu_milli": gpu_milli,
        "gpu_spec": gpu_spec, "qos": qos, "pod_phase": phase, "creation_time": created,
        "deletion_time": deleted, "scheduled_time": scheduled,
    }


@pytest.fixture
def alibaba_dir(tmp_path):
    pods = [
        alibaba_pod("serve", 1, "LS", 100, 110, 1110),
        alibaba_pod("batch", 2, "BE", 200, 200, 500, gpu_spec="T4|G2"),
        alibaba_pod("share", 1, "Burstable", 300, 300, 400, gpu_milli=460),
        alibaba_pod("cpu-only", 0, "LS", 50, 50, 60),
        alibaba_pod("never-ran", 1, "BE", 400, "", "", phase="Pending"),
        alibaba_pod("forever", 1, "LS", 600, 600, TRACE_END),
    ]
    write_csv(tmp_path / "openb_pod_list_default.csv", pods, ALIBABA_POD_HEADER)
    write_csv(tmp_path / "openb_node_list_gpu_node.csv", ALIBABA_NODES, list(ALIBABA_NODES[0]))
    return tmp_path


def test_alibaba_reader_keeps_gpu_pods_that_ran_with_class_proxy_and_durations(alibaba_dir):
    trace = read_alibaba(alibaba_dir)
    by_name = {w.name: w for w in trace.workloads}
    assert set(by_name) == {"serve", "batch", "share", "forever"}
    assert by_name["serve"].workload_class == "inference"
    assert by_name["batch"].workload_class == "training"
    assert by_name["share"].workload_class == "training"  # Burstable is not LS
    assert by_name["serve"].submit_time == 100 and by_name["serve"].duration_s == 1000  # deletion - scheduled
    assert by_name["batch"].gpus == 2 and by_name["batch"].products == ("T4", "G2")
    assert by_name["share"].gpus == 1  # a 0.46 GPU share takes a whole GPU
    assert by_name["forever"].duration_s is None  # still running at the trace end
    assert trace.end_time == TRACE_END
    assert trace.skipped["never scheduled (no scheduled_time)"] == 1
    assert any("proxy" in note for note in trace.notes)
    assert any("skipped 1 pods" in note for note in trace.notes)
    assert [node.name for node in trace.nodes] == ["n0", "n1"]
    assert [(n.allocatable, n.product) for n in trace.nodes] == [(8, "G2"), (2, "T4")]
    # cpu_milli and memory_mib (host memory) of nodes and pods: millicores and bytes
    assert [n.resources for n in trace.nodes] == [(("cpu", 64000), ("memory", 262144 * 2**20))] * 2
    assert by_name["serve"].requests == (("cpu", 1000), ("memory", 2**30))


def test_a_pod_list_file_reads_with_the_node_list_beside_it(alibaba_dir):
    from gpuadmit.sim.trace import find_trace_dir

    other = alibaba_dir / "openb_pod_list_gpuspec33.csv"
    other.write_text((alibaba_dir / "openb_pod_list_default.csv").read_text())
    assert find_trace_dir(str(other)) == other
    assert read_alibaba(other).workloads == read_alibaba(alibaba_dir).workloads
    assert find_trace_dir(str(alibaba_dir / "absent.csv")) is None


def test_time_compression_divides_inter_arrival_times_and_optionally_run_times(alibaba_dir):
    plain = read_alibaba(alibaba_dir)
    fast = read_alibaba(alibaba_dir, LoadShape(time_compression=10))
    both = read_alibaba(alibaba_dir, LoadShape(time_compression=10, compress_durations=True))
    start = plain.workloads[0].submit_time
    for original, compressed, scaled in zip(plain.workloads, fast.workloads, both.workloads):
        assert compressed.submit_time == pytest.approx(start + (original.submit_time - start) / 10)
        assert compressed.duration_s == original.duration_s
        if original.duration_s is not None:
            assert scaled.duration_s == pytest.approx(original.duration_s / 10)
    assert fast.end_time == pytest.approx(start + (plain.end_time - start) / 10)


def test_plain_csv_and_json_read_the_same(tmp_path):
    rows = [
        {"name": "b", "submit_time": 20, "duration_s": 60, "gpus": 2, "replicas": 2, "class": "training", "products": "T4|A10", "tier": "gold", "namespace": "ml"},
        {"name": "a", "submit_time": 10, "duration_s": "", "gpus": 1, "replicas": 1, "class": "inference", "products": "", "tier": "", "namespace": ""},
    ]
    write_csv(tmp_path / "w.csv", rows, HEADER)
    write_csv(tmp_path / "c.csv", CLUSTER_ROWS, ["name", "gpus", "product", "memory_mib", "count"])
    json_rows = [dict(rows[0], products=["T4", "A10"]), {k: v for k, v in rows[1].items() if v != ""}]
    (tmp_path / "w.json").write_text(json.dumps({"workloads": json_rows}))
    from_csv = read_plain(tmp_path / "w.csv", tmp_path / "c.csv")
    from_json = read_plain(tmp_path / "w.json", tmp_path / "c.csv")
    assert from_csv.workloads == from_json.workloads
    first, second = from_csv.workloads
    assert (first.name, first.duration_s, first.namespace, first.tier) == ("a", None, "default", None)
    assert (second.key, second.total_gpus, second.products, second.tier) == ("ml/b", 4, ("T4", "A10"), "gold")
    assert len(from_csv.nodes) == 6 and from_csv.total_gpus == 24  # "count" expands alike nodes
    assert from_csv.end_time == 80  # last submit + its run time, when no horizon is given
    # One JSON file may hold both lists.
    (tmp_path / "both.json").write_text(json.dumps({"workloads": json_rows, "nodes": [{"name": "n", "gpus": 4, "product": "T4"}]}))
    both = read_plain(tmp_path / "both.json", tmp_path / "both.json")
    assert both.workloads == from_csv.workloads and [n.name for n in both.nodes] == ["n"]


@pytest.mark.parametrize(
    ("row", "complaint"),
    [
        ({"class": "serving"}, "column 'class'"),
        ({"gpus": "two"}, "column 'gpus' must be a number"),
        ({"gpus": 0}, "must be 1..1024 and 1..100,000, got 0 and 1"),
        ({"gpus": 10**9}, "got 1000000000 and 1"),
        ({"submit_time": ""}, "column 'submit_time' is missing"),
        ({"duration_s": "-5"}, "must be 0..31536000000 seconds"),
        ({"submit_time": "1e308"}, "must be 0..31536000000 seconds"),
        ({"name": ""}, "column 'name' is empty"),
    ],
)
def test_plain_format_errors_name_the_file_row_and_column(tmp_path, row, complaint):
    good = {"name": "x", "submit_time": 0, "duration_s": 10, "gpus": 1, "replicas": 1, "class": "training", "products": "", "tier": "", "namespace": ""}
    bad = dict(good, name="y")
    bad.update(row)
    write_csv(tmp_path / "w.csv", [good, bad], HEADER)
    write_csv(tmp_path / "c.csv", CLUSTER_ROWS, ["name", "gpus", "product", "memory_mib", "count"])
    with pytest.raises(TraceError, match=complaint) as raised:
        read_plain(tmp_path / "w.csv", tmp_path / "c.csv")
    assert "w.csv:3" in str(raised.value)


def test_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        read_nodes(tmp_path / "absent.csv")


def test_node_subset_is_deterministic_and_keeps_the_product_mix(tmp_path):
    rows = [{"name": f"{product}-{i:02d}", "gpus": gpus, "product": product} for product, gpus, count in (("A", 8, 60), ("B", 2, 30), ("C", 4, 10)) for i in range(count)]
    write_csv(tmp_path / "c.csv", rows, ["name", "gpus", "product"])
    nodes = read_nodes(tmp_path / "c.csv")
    subset = subset_nodes(nodes, 10)
    assert subset == subset_nodes(tuple(reversed(nodes)), 10)
    products = sorted(node.product for node in subset)
    assert products == ["A"] * 6 + ["B"] * 3 + ["C"]


def test_resample_is_seeded_and_inflates_by_the_factor(alibaba_dir):
    workloads = read_alibaba(alibaba_dir).workloads
    once = resample_workloads(workloads, 3, seed=1)
    again = resample_workloads(workloads, 3, seed=1)
    other = resample_workloads(workloads, 3, seed=2)
    assert once == again and once != other
    assert len(once) == 3 * len(workloads)
    assert len({w.name for w in once}) == len(once)
    shapes = {(w.gpus, w.workload_class, w.duration_s) for w in workloads}
    assert all((w.gpus, w.workload_class, w.duration_s) in shapes for w in once)
    submits = {w.submit_time for w in workloads}
    assert all(w.submit_time in submits for w in once)


def test_bad_load_shape_is_refused(alibaba_dir):
    with pytest.raises(TraceError, match="compression"):
        read_alibaba(alibaba_dir, LoadShape(time_compression=0))
    with pytest.raises(TraceError, match="resample"):
        read_alibaba(alibaba_dir, LoadShape(resample=0.5))


def test_the_shared_trace_reads_as_its_readme_says():
    from gpuadmit.sim.trace import find_trace_dir

    directory = find_trace_dir()
    if directory is None:
        pytest.skip("the Alibaba 2023 trace is not here (set GPUADMIT_TRACE_DIR to its directory)")
    trace = read_alibaba(directory)
    assert (len(trace.nodes), trace.total_gpus) == (1213, 6212)
    never_ran = trace.skipped["never scheduled (no scheduled_time)"]
    assert len(trace.workloads) + never_ran == 7064  # the README's GPU pods
    assert all(w.gpus >= 1 and w.replicas == 1 for w in trace.workloads)
    assert {node.product for node in trace.nodes} == {"G2", "G3", "T4", "P100", "V100M16", "V100M32", "A10"}
