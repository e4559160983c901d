"""`gpuadmit demo` from a pip install: what it needs ships as package data, and it runs from the wheel.

The CRDs and the example policy have one source each, at the top of the repository (crds/, which
users apply and the chart copies; examples/policy.yaml, which the README shows); the package
carries copies under gpuadmit/data/, and these tests fail when a copy drifts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuadmit.demo_plan import TRACE_PRODUCTS, package_file, sample_cluster

from .conftest import REPO

SYNC_HINT = "run: cp crds/*.yaml operator/gpuadmit/data/crds/ && cp examples/policy.yaml operator/gpuadmit/data/"


def test_the_shipped_crds_and_policy_are_the_sources_copies() -> None:
    top = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    shipped = {path.name: path.read_bytes() for path in package_file("crds").glob("*.yaml")}
    assert top and shipped == top, SYNC_HINT
    assert package_file("policy.yaml").read_bytes() == (REPO / "examples" / "policy.yaml").read_bytes(), SYNC_HINT


def test_the_sample_cluster_is_package_data_with_the_traces_products() -> None:
    shape = yaml.safe_load(package_file("sample-cluster.yaml").read_text())
    assert {group["product"] for group in shape["nodes"]} <= set(TRACE_PRODUCTS)
    nodes, pods, source = sample_cluster(seed=3)
    assert source == "sample cluster"
    assert sum(node.gpus for node in nodes) == sum(g["gpus"] * g["count"] for g in shape["nodes"])
    assert len(pods) == shape["workloads"]["count"]
    share = sum(pod.qos_inference for pod in pods) / len(pods)
    assert abs(share - shape["workloads"]["inferenceShare"]) < 0.05


def test_a_changed_sample_cluster_file_changes_the_cluster(tmp_path: Path) -> None:
    shape = yaml.safe_load(package_file("sample-cluster.yaml").read_text())
    shape["nodes"] = [{"product": "T4", "gpus": 2, "count": 3}]
    shape["workloads"]["count"] = 10
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(shape))
    nodes, pods, _ = sample_cluster(seed=3, path=path)
    assert [(node.product, node.gpus) for node in nodes] == [("Tesla-T4", 2)] * 3 and len(pods) == 10


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_the_demo_runs_from_a_clean_install_of_the_wheel_in_an_empty_directory(tmp_path: Path) -> None:
    """Build the wheel from a copy of the repository as a fresh clone has it, install it with
    its emulator extra into a new virtual environment (no system site-packages), and run
    `gpuadmit demo` from an empty directory, with nothing from the source tree on the path."""
    clone = tmp_path / "clone"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(clone)],
                   check=True, timeout=300)
    (wheel,) = wheels.glob("gpuadmit-*.whl")
    venv = tmp_path / "venv"
    # Nothing of this checkout or of the test run's environment leaks into the install or the run.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "GPUADMIT_TRACE_DIR")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[emulator]"]
    installed = subprocess.run(pip, check=False, capture_output=True, text=True, timeout=600, env=env)
    if installed.returncode != 0 and "No matching distribution" in installed.stderr:
        pytest.skip(f"the dependencies cannot be installed here: {installed.stderr.strip().splitlines()[-1]}")
    assert installed.returncode == 0, installed.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([str(venv / "bin" / "gpuadmit"), "demo", "--duration", "8", "--no-trace", "--plain"],
                            check=False, cwd=empty, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "from the sample cluster" in result.stdout and "Summary after" in result.stdout
    assert "admitted by class: inference=" in result.stdout
    assert list(empty.iterdir()) == []  # nothing written where it ran
