"""Render the Helm chart with Helm's own SDK into a folder, one file per template, for people to read.

    python -m tools.render_chart charts/gpuadmit out/chart [-f values.yaml ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

RELEASE_NAME = "gpuadmit"
RELEASE_NAMESPACE = "gpuadmit-system"


def render_chart(chart_dir: Path, values: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered manifest text, as `helm template` would print them."""
    import helm_python as helm  # the Helm Go SDK; a test/development dependency only

    chart = helm.Chart.load(str(chart_dir))
    chart.validate_schema(dict(values or {}))
    rendered = chart.render(dict(values or {}), name=RELEASE_NAME, namespace=RELEASE_NAMESPACE, is_install=True)
    return {path: text for path, text in sorted(rendered.items()) if text.strip()}


def rendered_objects(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered templates (NOTES.txt left out)."""
    objects: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("chart_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[], help="values file (repeatable)")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for path in args.values:
        values.update(yaml.safe_load(path.read_text()) or {})
    rendered = render_chart(args.chart_dir, values)
    for path, text in rendered.items():
        target = args.out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    crd_dir = args.chart_dir / "crds"
    for crd in sorted(crd_dir.glob("*.yaml")):
        target = args.out_dir / "crds" / crd.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(crd.read_text())
    print(f"rendered {len(rendered)} templates to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
