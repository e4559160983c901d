from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.render_chart import render_chart, rendered_objects

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "gpuadmit"
VALUE_SETS = {
    "defaults": None,
    "everything-on": CHART_DIR / "ci" / "everything-on-values.yaml",
    "namespaced-certmanager": CHART_DIR / "ci" / "namespaced-certmanager-values.yaml",
}


def load_values(name: str) -> dict[str, Any]:
    path = VALUE_SETS[name]
    return yaml.safe_load(path.read_text()) if path else {}


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def rendered_by_value_set() -> dict[str, list[dict[str, Any]]]:
    return {name: rendered_objects(render_chart(CHART_DIR, load_values(name))) for name in VALUE_SETS}


@pytest.fixture(scope="session")
def objects(rendered_by_value_set: dict[str, list[dict[str, Any]]], value_set: str) -> list[dict[str, Any]]:
    return rendered_by_value_set[value_set]
