"""`gpuadmit demo --plot DIR`: the Grafana dashboard's main panels as PNGs, for people without Grafana.

While the demo runs, ``MetricsRecorder`` scrapes the operator's /metrics every few seconds (as
Prometheus would); at the end ``plot_panels`` draws from those samples, with the dashboard's own
queries (charts/gpuadmit/files/gpuadmit-dashboard.json):

- GPUs by product and state: ``sum by (product, state) (gpuadmit_gpus{state!="allocatable"})``;
- queue depth by class: ``sum by (class) (gpuadmit_queue_depth)``;
- decisions per second by reason: ``sum by (action, reason) (rate(gpuadmit_decisions_total[...]))``,
  the rate taken between consecutive scrapes;
- margin per hour earned now, by class: ``sum by (class) (gpuadmit_margin_earned_per_hour)``.

The x axis is demo seconds since the operator started. matplotlib comes with the ``sim`` extra.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PANELS = ("gpus-by-product-and-state", "queue-by-class", "decisions-by-reason", "margin-per-hour")
SCRAPE_SECONDS = 2.0
_STATE_STYLES = {"reserved": "-", "free": ":", "used_by_others": "--", "unavailable": "-."}

Labels = tuple[tuple[str, str], ...]


@dataclass
class MetricsRecorder:
    """Samples of the gpuadmit_ series, one scrape at a time: (seconds since start, {(name, labels): value})."""

    url: str
    started: float = field(default_factory=time.monotonic)
    scrapes: list[tuple[float, dict[tuple[str, Labels], float]]] = field(default_factory=list)

    def record(self, text: str, at: float | None = None) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        values: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("gpuadmit_"):
                    values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        self.scrapes.append((time.monotonic() - self.started if at is None else at, values))

    async def scrape_once(self) -> None:
        """One scrape; a failed one is skipped (the operator may be busy)."""
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
                    session.get(self.url) as response:
                if response.status == 200:
                    self.record(await response.text())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            pass

    async def run(self, every: float = SCRAPE_SECONDS) -> None:
        """Scrape every ``every`` seconds until cancelled."""
        while True:
            await self.scrape_once()
            await asyncio.sleep(every)

    def series(self, name: str, key: Callable[[Mapping[str, str]], str | None]) -> dict[str, list[tuple[float, float]]]:
        """``sum by (key)`` of one metric at each scrape; ``key`` returning None leaves a sample out."""
        result: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for at, values in self.scrapes:
            sums: dict[str, float] = collections.defaultdict(float)
            for (sample_name, labels), value in values.items():
                if sample_name == name:
                    group = key(dict(labels))
                    if group is not None:
                        sums[group] += value
            for group, total in sums.items():
                result[group].append((at, total))
        return dict(result)

    def rates(self, name: str, key: Callable[[Mapping[str, str]], str | None]) -> dict[str, list[tuple[float, float]]]:
        """The per-second increase of a counter between consecutive scrapes, summed by ``key``."""
        rates: dict[str, list[tuple[float, float]]] = {}
        for group, points in self.series(name, key).items():
            rates[group] = [(t1, max(0.0, (v1 - v0) / (t1 - t0)))
                            for (t0, v0), (t1, v1) in itertools.pairwise(points) if t1 > t0]
        return rates


def plot_panels(recorder: MetricsRecorder, directory: Path) -> list[Path]:
    """Write one PNG per panel into ``directory``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    panels = {
        "gpus-by-product-and-state": (
            "GPUs by product and state", "GPUs",
            recorder.series("gpuadmit_gpus", lambda labels: None if labels.get("state") == "allocatable"
                            else f"{labels.get('product')} {labels.get('state')}")),
        "queue-by-class": ("Queue depth by class", "workloads waiting",
                           recorder.series("gpuadmit_queue_depth", lambda labels: labels.get("class", ""))),
        "decisions-by-reason": ("Decisions per second by action and reason", "decisions / s",
                                recorder.rates("gpuadmit_decisions_total",
                                               lambda labels: f"{labels.get('action')}: {labels.get('reason')}")),
        "margin-per-hour": ("Margin per hour earned now, by class", "$ per hour",
                            recorder.series("gpuadmit_margin_earned_per_hour", lambda labels: labels.get("class", ""))),
    }
    written = []
    for name in PANELS:
        title, unit, series = panels[name]
        figure, axes = plt.subplots(figsize=(9.5, 4.2), dpi=90)
        shown = {group: points for group, points in sorted(series.items()) if any(value for _, value in points)}
        colours: dict[str, Any] = {}
        for group, points in shown.items():
            # The GPU panel: one colour per product, one line style per state.
            subject, _, state = group.rpartition(" ") if name == PANELS[0] else (group, "", "")
            colour = colours.setdefault(subject, f"C{len(colours) % 10}")
            axes.plot([t for t, _ in points], [v for _, v in points], label=group, linewidth=1.4, color=colour,
                      linestyle=_STATE_STYLES.get(state, "-"))
        if not shown:
            axes.text(0.5, 0.5, "no samples above zero", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(title)
        axes.set_xlabel("demo seconds")
        axes.set_ylabel(unit)
        axes.grid(alpha=0.3)
        if shown:  # beside the plot, where it hides no line
            axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        figure.tight_layout()
        path = directory / f"{name}.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written
