"""`gpuadmit queue`, run as the user runs it, against a stand-in of the operator's health port
serving ``QueueView.answer`` (the operator's own /queue handler calls the same)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gpuadmit.controller.queueview import QueueView
from gpuadmit.core.model import Action, CycleResult, Decision, Reason

VIEW = QueueView.of(CycleResult(decisions=tuple(
    Decision(f"team-{'a' if i % 2 else 'b'}", f"job-{i}", Action.QUEUE, Reason.INSUFFICIENT_CAPACITY,
             f"needs 1 GPU (queue position {i})", workload_class="training", margin_per_gpu_hour=1.25, queue_position=i)
    for i in range(1, 26)), preemptions=()), 1_700_000_000.0, 4)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urllib.parse.urlsplit(self.path)
        status, body = (VIEW.answer(dict(urllib.parse.parse_qsl(url.query))) if url.path == "/queue"
                        else (404, {"message": "not found"}))
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def operator_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def gpuadmit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuadmit", "queue", *args], capture_output=True, text=True, timeout=60)


def test_it_prints_the_exact_queue_of_one_namespace(operator_url: str) -> None:
    result = gpuadmit("--operator", operator_url, "--namespace", "team-a")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["POSITION", "IN-NS", "NAMESPACE", "NAME", "CLASS", "MARGIN", "REASON"]
    rows = [line.split() for line in lines[1:-1]]
    assert [(r[0], r[1], r[3]) for r in rows[:3]] == [("1", "1", "job-1"), ("3", "2", "job-3"), ("5", "3", "job-5")]
    assert len(rows) == 13 and all(r[2] == "team-a" for r in rows)
    assert "namespace team-a: 13 of 25 queued" in lines[-1]


def test_json_output_and_limit(operator_url: str) -> None:
    result = gpuadmit("--operator", operator_url, "--limit", "2", "-o", "json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [i["position"] for i in body["items"]] == [1, 2] and body["queued"] == 25


@pytest.mark.parametrize(("args", "words"), [
    (["--operator", "ftp://x"], "--operator must be an http(s) URL"),
    (["--namespace", "Team_A"], "is not a namespace name"),
    (["--limit", "0"], "--limit must be at least 1"),
])
def test_bad_flags_exit_2_with_one_line(args: list[str], words: str) -> None:
    result = gpuadmit(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr


def test_an_unreachable_operator_exits_1_with_one_line() -> None:
    result = gpuadmit("--operator", "http://127.0.0.1:9")  # discard port: nothing listens
    assert result.returncode == 1
    assert result.stderr.startswith("gpuadmit queue: cannot reach the operator") and len(result.stderr.strip().splitlines()) == 1


def test_something_else_on_the_port_is_named(operator_url: str) -> None:
    result = gpuadmit("--operator", operator_url + "/elsewhere")
    assert result.returncode == 1 and "404" in result.stderr and len(result.stderr.strip().splitlines()) == 1
