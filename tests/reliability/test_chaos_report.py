"""``python -m tests.reliability.chaos`` formats the figures the suite gathered, and fails on any violation."""

from __future__ import annotations

from tests.reliability.chaos import format_figures


def test_the_report_lists_the_headline_figures_and_faults_by_kind() -> None:
    figures = {"workloads driven": 2600, "restarts survived": 10, "malformed inputs tried": 9000,
               "violations found": 0, "faults injected: 500 InternalError": 120, "faults injected: 409 Conflict": 130,
               "exhaustion cycle seconds (10,009 workloads)": 1.25}
    report = format_figures(figures, 300.0, 0)
    lines = [line.strip() for line in report.splitlines()]
    assert "workloads driven:           2,600".strip() in lines
    assert any(line.startswith("faults injected:") and line.endswith("250") for line in lines)
    assert lines.index("409 Conflict:" + " " * 31 + "130") < lines.index("500 InternalError:" + " " * 26 + "120")
    assert any(line.endswith("1.25") for line in lines)
    assert report.rstrip().endswith("PASS in 300s (pytest exit status 0)")


def test_a_violation_or_a_failed_run_is_a_fail() -> None:
    assert "FAIL" in format_figures({"violations found": 1}, 1.0, 0)
    assert "FAIL" in format_figures({}, 1.0, 1)
