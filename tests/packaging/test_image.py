"""The image definition: hadolint-clean, and the wheel installs and runs the way the Dockerfile does it."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_numeric_non_root_with_no_build_tools_in_final_stage() -> None:
    text = (REPO / "Dockerfile").read_text()
    final_stage = text.split("AS runtime", 1)[1]
    user_lines = [line.split()[1] for line in final_stage.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split(":")[0].isdigit() and user_lines[-1] != "0"
    assert "pip install" not in final_stage and "apt-get" not in final_stage and "build" not in final_stage.split("COPY --from")[0]
    assert 'ENTRYPOINT ["gpuadmit", "run"]' in final_stage


@pytest.mark.slow
def test_wheel_installs_into_a_clean_virtualenv_and_runs(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(REPO)], check=True)
    (wheel,) = (tmp_path / "dist").glob("gpuadmit-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    venv_python = tmp_path / "venv" / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([str(venv_python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, env=env)
    result = subprocess.run([str(tmp_path / "venv" / "bin" / "gpuadmit"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("decide", "run", "demo", "simulate"):
        assert command in result.stdout
    # The operator's own dependencies came with the wheel: `run --help` imports kopf.
    result = subprocess.run([str(tmp_path / "venv" / "bin" / "gpuadmit"), "run", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--metrics-port" in result.stdout
