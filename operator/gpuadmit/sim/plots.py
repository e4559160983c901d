"""PNG charts of a replay (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpuadmit.sim.replay import ReplayResult

MAX_POINTS = 2000  # per line: enough for the eye, small files


def write_plots(results: Sequence[ReplayResult], directory: str | Path) -> list[Path]:
    """Writes margin.png, queue.png, utilization.png and waits.png into ``directory``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(figure, name: str) -> None:
        path = directory / name
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

    figure, axes = plt.subplots(figsize=(9, 5))
    for result in results:
        hours, values = _thin([_hours(t, result) for t in result.series.time], result.series.margin)
        axes.plot(hours, values, label=result.policy_name)
    axes.set(title="Margin realized over the replay", xlabel="hours since start", ylabel="cumulative margin ($)")
    axes.legend()
    axes.grid(alpha=0.3)
    save(figure, "margin.png")

    figure, rows = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for result in results:
        hours = [_hours(t, result) for t in result.series.time]
        for axes, counts, label in (
            (rows[0], result.series.queued_inference, "inference"),
            (rows[1], result.series.queued_training, "training"),
        ):
            xs, ys = _thin(hours, counts)
            axes.step(xs, ys, where="post", label=result.policy_name)
            axes.set(ylabel=f"queued {label}")
    rows[0].set_title("Queue depth by class")
    rows[1].set_xlabel("hours since start")
    for axes in rows:
        axes.legend()
        axes.grid(alpha=0.3)
    save(figure, "queue.png")

    figure, axes = plt.subplots(figsize=(9, 5))
    for result in results:
        hours = [_hours(t, result) for t in result.series.time]
        share = [100.0 * busy / result.total_gpus if result.total_gpus else 0.0 for busy in result.series.busy_gpus]
        xs, ys = _thin(hours, share)
        axes.step(xs, ys, where="post", label=result.policy_name, alpha=0.8)
    axes.set(title="GPU utilization", xlabel="hours since start", ylabel="GPUs busy (%)", ylim=(0, 105))
    axes.legend()
    axes.grid(alpha=0.3)
    save(figure, "utilization.png")

    figure, columns = plt.subplots(1, 2, figsize=(11, 5))
    for axes, workload_class in zip(columns, ("inference", "training"), strict=True):
        for result in results:
            waits = sorted(
                max(job.wait_s, 0.0) / 60.0
                for job in result.jobs
                if job.spec.workload_class == workload_class and job.wait_s is not None
            )
            if not waits:
                continue
            shares = [100.0 * (index + 1) / len(waits) for index in range(len(waits))]
            xs, ys = _thin(waits, shares)
            axes.step(xs, ys, where="post", label=result.policy_name)
        axes.set(title=f"Admission wait, {workload_class}", xlabel="minutes waited", ylabel="workloads admitted (%)")
        axes.set_xscale("symlog", linthresh=1.0)
        axes.legend()
        axes.grid(alpha=0.3)
    save(figure, "waits.png")
    return written


def _hours(t: float, result: ReplayResult) -> float:
    return (t - result.start_s) / 3600.0


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """At most MAX_POINTS points, always keeping the last."""
    if len(xs) <= MAX_POINTS:
        return list(xs), list(ys)
    step = len(xs) / MAX_POINTS
    indexes = sorted({int(i * step) for i in range(MAX_POINTS)} | {len(xs) - 1})
    return [xs[i] for i in indexes], [ys[i] for i in indexes]
