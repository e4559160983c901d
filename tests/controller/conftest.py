"""Fixtures for the operator's end-to-end tests (see tests/e2e_harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.e2e_harness import Cluster, OperatorProcess


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh emulated API server with the CRDs (or the real cluster GPUADMIT_E2E_KUBECONFIG names)."""
    with Cluster.start(tmp_path / "cluster") as handle:
        yield handle


@pytest.fixture
def operator_factory(cluster: Cluster, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """``start(*extra_args)`` launches `gpuadmit run` against ``cluster`` and waits for /readyz.
    Every operator started is stopped at the end; its log is printed (pytest shows it on failure)."""
    started: list[OperatorProcess] = []

    def start(*extra_args: str, wait_ready: bool = True) -> OperatorProcess:
        operator = OperatorProcess(cluster.kubeconfig, tmp_path / f"operator-{len(started)}", tuple(extra_args))
        started.append(operator)
        operator.launch(wait_ready=wait_ready)
        return operator

    yield start
    for operator in started:
        operator.stop()
        print(f"--- {operator.log_path} ---\n{operator.log_tail()}")
