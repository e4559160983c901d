"""Shared helpers: where the deploy files are, the real Prometheus tools, and a Prometheus server."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from gpuadmit.localcluster import free_port

REPO = Path(__file__).resolve().parents[2]
ALERTS_FILE = REPO / "charts" / "gpuadmit" / "files" / "gpuadmit-alerts.yaml"
ALERTS_TEST_FILE = REPO / "charts" / "gpuadmit" / "files" / "gpuadmit-alerts.test.yaml"
DASHBOARD_FILE = REPO / "charts" / "gpuadmit" / "files" / "gpuadmit-dashboard.json"
METRICS_DOC = REPO / "docs" / "metrics.md"

# Generous: the test machine is shared, and Prometheus replays its WAL on start.
STARTUP_DEADLINE_S = 60.0


def require_tool(name: str) -> str:
    """The path of a Prometheus tool; a clear failure (not a skip) when it is missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(
            f"`{name}` not found on PATH. The observability tests need Debian's `prometheus` package: "
            "run `bash scripts/ensure-test-tools.sh` (as root or with sudo; `make test` runs it).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


def wait_until(condition: Callable[[], Any], deadline_s: float, what: str, poll_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after the deadline."""
    deadline = time.monotonic() + deadline_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # not up yet, connection refused, ...
            last_error = error
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what} (last error: {last_error!r})")


class PrometheusServer:
    """A real Prometheus on loopback, scraping given targets every second, with our alert rules loaded."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS_FILE)],
            "scrape_configs": [{"job_name": "gpuadmit", "static_configs": [{"targets": targets}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.process.returncode}): {self.log()}")
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200

        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:  # a crash at start-up must fail at once, with the log
            try:
                if ready():
                    return
            except RuntimeError:
                raise
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready after {STARTUP_DEADLINE_S:.0f}s: {self.log()}")
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; a scalar result comes back as one sample without labels."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def start_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """Start Prometheus scraping the given ``host:port`` targets; stopped when the module ends."""
    binary = require_tool("prometheus")
    servers: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), targets)
        servers.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def promql_of_dashboard(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query target of every panel, rows included, with each
    query variable ($quota) replaced by its "All" value, as Grafana sends it with All selected."""
    found: list[tuple[str, str]] = []
    all_values = {
        f"${variable['name']}": variable["allValue"]
        for variable in dashboard.get("templating", {}).get("list", []) if variable.get("allValue")
    }

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    expr = target["expr"]
                    for name, value in all_values.items():
                        expr = expr.replace(name, value)
                    found.append((panel.get("title", ""), expr))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return found
