"""The one percentile (gpuadmit.sim.report.percentile) that simulate, the demo and the benchmarks print."""

from __future__ import annotations

from gpuadmit.sim.report import percentile


def test_percentile_is_the_nearest_rank_of_the_values_in_any_order() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert [percentile(values, share) for share in (0.0, 0.5, 0.95, 0.99, 1.0)] == [1.0, 50.0, 95.0, 99.0, 100.0]
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None
