"""The pure core imports nothing from the edge: no kopf, client, aiohttp or prometheus code."""

from __future__ import annotations

import ast
from pathlib import Path

import gpuadmit.core

CORE_DIR = Path(gpuadmit.core.__file__).parent
FORBIDDEN_TOP_LEVEL = {"kopf", "kubernetes", "aiohttp", "prometheus_client", "kmock", "requests", "socket", "subprocess"}


def imported_top_level_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def test_core_modules_import_no_edge_library() -> None:
    paths = sorted(CORE_DIR.rglob("*.py"))  # the engine and the classifier are packages
    assert {"engine/passes.py", "classifier/signals.py"} <= {str(path.relative_to(CORE_DIR)) for path in paths}
    offenders = {
        str(path.relative_to(CORE_DIR)): sorted(imported_top_level_modules(path.read_text()) & FORBIDDEN_TOP_LEVEL)
        for path in paths
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_the_checker_sees_imports() -> None:
    # Guards the test above against a checker that would pass on anything.
    assert imported_top_level_modules("import kopf\nfrom aiohttp import web\nfrom . import model") == {"kopf", "aiohttp"}
