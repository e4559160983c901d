"""What ships: the wheel carries the operator and the emulator package, and nothing only developers use."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED_PACKAGES = {"gpuadmit", "kubeapi_emulator"}
# Module and folder names that belong to tests, benchmarks or developer tools, never to the wheel.
DEVELOPER_ONLY = re.compile(r"(^|/)(tests?|benchmarks?|bench_\w*|tools|chaos|invariants|processes|conftest)(/|\.py$)")
MACHINE_PATHS = ("/work/", "/home/", "/root/")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built from a copy of the checkout without build leftovers (a stale build/ would
    leak removed modules into it), as from a fresh clone."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(REPO, source, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "out"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
                   check=True, capture_output=True)
    (path,) = dist.glob("gpuadmit-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_carries_the_two_packages_and_nothing_for_developers(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == SHIPPED_PACKAGES
    assert [name for name in names if DEVELOPER_ONLY.search(name)] == []
    for module in ("gpuadmit/cli.py", "gpuadmit/localcluster.py", "gpuadmit/core/engine/__init__.py", "kubeapi_emulator/server.py"):
        assert module in names


def test_the_developer_only_pattern_catches_what_it_must() -> None:
    # Guards the test above against a pattern that would pass on anything.
    for leaked in ("gpuadmit/bench_e2e.py", "gpuadmit/chaos.py", "gpuadmit/invariants.py", "gpuadmit/processes.py",
                   "tools/render_chart.py", "tests/test_demo.py", "benchmarks/e2e.py", "gpuadmit/tools/x.py"):
        assert DEVELOPER_ONLY.search(leaked), leaked
    for shipped in ("gpuadmit/controller/loop.py", "gpuadmit/core/exact.py", "gpuadmit/localcluster.py"):
        assert not DEVELOPER_ONLY.search(shipped), shipped


def test_no_absolute_path_of_a_machine_in_what_ships(wheel: zipfile.ZipFile) -> None:
    found = []
    for name in wheel.namelist():
        if name.endswith(".dist-info/RECORD"):
            continue
        text = wheel.read(name).decode(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if any(path in line for path in MACHINE_PATHS):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []
