"""The image definition: hadolint-clean, a final stage holding only the built virtualenv, and the
wheel installs and runs the way the Dockerfile does it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (continuations joined, comments dropped)."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            words = arguments.split()
            words = [word for word in words if not word.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((keyword.upper(), arguments.strip()))
    return stages


def final_stage_problems(text: str) -> list[str]:
    """What breaks "the final image holds the build stage's virtualenv and nothing else of the build":
    it must not start from another stage, run commands, add files from the build context, or copy
    anything from another stage but the virtualenv that stage created; it runs as a numeric
    non-root user."""
    stages = dockerfile_stages(text)
    if len(stages) < 2:
        return ["not a multi-stage build"]
    final, earlier = stages[-1], {stage.name: stage for stage in stages[:-1]}
    problems = []
    if final.base in earlier:
        problems.append(f"the final stage starts FROM the {final.base!r} stage and inherits all of it")
    for keyword, arguments in final.instructions:
        words = arguments.split()
        if keyword in ("RUN", "ADD"):
            problems.append(f"{keyword} in the final stage: {arguments}")
        elif keyword == "COPY":
            source_stage = next((word.split("=", 1)[1] for word in words if word.startswith("--from=")), None)
            paths = [word for word in words if not word.startswith("--")]
            if source_stage is None:
                problems.append(f"COPY from the build context into the final stage: {arguments}")
            elif source_stage not in earlier:
                problems.append(f"COPY from an unknown stage {source_stage!r}")
            else:
                venvs = {path for keyword_, run in earlier[source_stage].instructions if keyword_ == "RUN"
                         for path in re.findall(r"-m venv (\S+)", run)}
                if paths[:-1] != [paths[-1]] or paths[-1] not in venvs:
                    problems.append(f"the final stage copies {paths[:-1]} from {source_stage!r}, not only the virtualenv it built ({sorted(venvs)})")
    users = [arguments for keyword, arguments in final.instructions if keyword == "USER"]
    if not users or not users[-1].split(":")[0].isdigit() or users[-1].split(":")[0] == "0":
        problems.append(f"the final stage does not run as a numeric non-root user: {users}")
    if ("ENTRYPOINT", '["gpuadmit", "run"]') not in final.instructions:
        problems.append("the final stage does not start `gpuadmit run`")
    return problems


def test_final_image_holds_only_the_build_stages_virtualenv_and_runs_as_non_root() -> None:
    assert final_stage_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(("old", "new"), [
    ("COPY --from=build /opt/gpuadmit /opt/gpuadmit", "COPY --from=build /opt/gpuadmit /src /opt/gpuadmit"),
    ("COPY --from=build /opt/gpuadmit /opt/gpuadmit", "COPY --from=build /src /opt/gpuadmit"),
    ("COPY --from=build /opt/gpuadmit /opt/gpuadmit", "COPY --from=build /opt/gpuadmit /opt/gpuadmit\nCOPY operator /src"),
    ("FROM ${PYTHON_IMAGE} AS runtime", "FROM build AS runtime"),
    ("USER 65532:65532", "RUN pip install build \\\n && true\nUSER 65532:65532"),
    ("USER 65532:65532", "USER root"),
])  # fmt: skip
def test_the_check_catches_a_planted_bad_dockerfile(old: str, new: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    assert final_stage_problems(text.replace(old, new)) != []


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
