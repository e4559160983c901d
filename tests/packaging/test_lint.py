"""`make lint` holds the shape: each import contract and ruff fail on a planted violation, and
`make test` runs lint first. (`make lint` itself passing is what `make test` checks.)

The violations are planted in a temporary copy of the checkout, never in the source tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLANTED = {
    # file in the copy -> an import that breaks one contract each
    "operator/gpuadmit/core/errors.py": "import kopf",
    "operator/gpuadmit/core/model.py": "import socket",
    "operator/gpuadmit/controller/status.py": "from gpuadmit.sim import trace",
    "operator/gpuadmit/decide.py": "from tests import invariants",
    "operator/kubeapi_emulator/errors.py": "from gpuadmit.core import model",
}


@pytest.fixture(scope="module")
def planted_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("checkout")
    for part in ("operator", "tests", "benchmarks", "tools", "pyproject.toml"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, copy / part)
    for path, line in PLANTED.items():
        target = copy / path
        target.write_text(target.read_text() + f"\n{line}  # planted by tests/packaging/test_lint.py\n")
    return copy


def run_in(copy: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{copy / 'operator'}{os.pathsep}{copy}"}
    return subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=300)


def test_every_import_contract_breaks_on_its_planted_violation(planted_copy: Path) -> None:
    result = run_in(planted_copy, str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode != 0
    report = " ".join(result.stdout.split())  # the report wraps long lines
    assert "Contracts: 0 kept, 4 broken." in report, result.stdout
    assert "gpuadmit.core.errors imports kopf, which is neither the standard library nor gpuadmit.core" in report
    assert "gpuadmit.core.model imports socket, which is refused" in report
    assert "gpuadmit.controller.status -> gpuadmit.sim" in report
    assert "gpuadmit.decide -> tests" in report
    assert "kubeapi_emulator.errors -> gpuadmit.core" in report


def test_ruff_fails_on_the_planted_unused_imports(planted_copy: Path) -> None:
    result = run_in(planted_copy, str(BIN / "ruff"), "check", "--no-cache", "--output-format", "concise", "--select", "F401", "operator")
    assert result.returncode == 1
    assert re.search(r"core/errors\.py:\d+:\d+: F401 \[\*\] `kopf` imported but unused", result.stdout), result.stdout


def test_the_makefile_runs_lint_before_the_tests_and_every_phony_target_has_a_rule() -> None:
    makefile = (REPO / "Makefile").read_text()
    rules = set(re.findall(r"^([\w.-]+):", makefile, re.MULTILINE))
    (phony,) = re.findall(r"^\.PHONY:(.*)$", makefile, re.MULTILINE)
    assert set(phony.split()) - rules == set()
    assert re.search(r"^test: .*\blint\b", makefile, re.MULTILINE)
    lint_recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for tool in ("lint-imports", "ruff check", "mypy"):
        assert tool in lint_recipe
