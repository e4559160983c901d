"""The process harness (gpuadmit.localcluster): start, readiness, failure to start, stop.

Stand-in commands (a few lines of Python) play the operator here, so each test takes about a
second; the real emulator is started where its own failure mode is the point. The real
`gpuadmit run` goes through the same harness in every end-to-end test.
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpuadmit.localcluster import ChildProcess, EmulatorProcess, LocalClusterError, OperatorProcess

# Serves /readyz on the --health-port it is given (as `gpuadmit run` does), answering 503 until
# the file named by the first argument exists; exits 0 on SIGTERM.
FAKE_OPERATOR = textwrap.dedent("""
    import http.server, json, os, signal, sys
    gate = sys.argv[1]
    port = int(sys.argv[sys.argv.index("--health-port") + 1])
    class Readyz(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready = os.path.exists(gate)
            body = json.dumps({"cycles": 3 if ready else 0}).encode()
            self.send_response(200 if ready else 503)
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", port), Readyz)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("fake operator listening", flush=True)
    server.serve_forever()
""")


def fake_operator(tmp_path: Path, gate: Path) -> OperatorProcess:
    return OperatorProcess(tmp_path / "kubeconfig", tmp_path, command=(sys.executable, "-c", FAKE_OPERATOR, str(gate)))


def test_the_operator_is_ready_only_once_readyz_says_so_and_stops_cleanly(tmp_path: Path) -> None:
    gate = tmp_path / "ready"
    operator = fake_operator(tmp_path, gate)
    operator.launch(wait_ready=False)
    try:
        with pytest.raises(LocalClusterError, match=r"gave up waiting for gpuadmit run to be ready \(/readyz\) after 1 s"):
            operator.wait_ready(timeout=1.0)  # it answers, but 503
        assert operator.readiness() == {"status": 503, "cycles": 0}
        gate.touch()
        operator.wait_ready(timeout=30.0)
        assert operator.is_ready() and operator.cycles() == 3
    finally:
        assert operator.stop() == 0  # SIGTERM was enough
    assert not operator.is_ready()
    assert "fake operator listening" in operator.log_path.read_text()


def test_a_restart_gets_a_fresh_process_and_log_and_keeps_the_metrics_port(tmp_path: Path) -> None:
    gate = tmp_path / "ready"
    gate.touch()
    operator = fake_operator(tmp_path, gate)
    try:
        first = operator.launch(timeout=30.0)
        metrics_port, first_log = operator.metrics_port, operator.log_path
        operator.restart(timeout=30.0)
        assert operator.child is not None and operator.child.pid != first.pid and not first.running()
        assert operator.metrics_port == metrics_port and operator.log_path != first_log
        assert operator.starts == 2 and operator.is_ready()
    finally:
        operator.stop()


def test_a_process_that_exits_at_start_fails_with_its_exit_code_and_log(tmp_path: Path) -> None:
    crash = "import sys; print('cannot load the kubeconfig: no such file'); sys.exit(3)"
    operator = OperatorProcess(tmp_path / "kubeconfig", tmp_path, command=(sys.executable, "-c", crash))
    with pytest.raises(LocalClusterError, match=r"the operator \(gpuadmit run\) exited with code 3") as raised:
        operator.launch(timeout=30.0)
    assert "cannot load the kubeconfig: no such file" in str(raised.value)  # the log's end, on the screen


def test_the_emulator_refusing_its_arguments_is_a_clear_error(tmp_path: Path) -> None:
    emulator = EmulatorProcess(tmp_path, (tmp_path / "no-such-crds",))
    with pytest.raises(LocalClusterError, match="the emulated API server exited with code 2") as raised:
        with emulator.running(timeout=30.0):
            pass
    assert "--crds: no such file or directory" in str(raised.value)
    assert emulator.child is not None and not emulator.child.running()


async def test_readiness_can_be_awaited_from_an_event_loop(tmp_path: Path) -> None:
    gate = tmp_path / "ready"
    gate.touch()
    operator = fake_operator(tmp_path, gate)
    operator.launch(wait_ready=False)
    try:
        await operator.wait_ready_async(timeout=30.0)
        assert operator.is_ready()
    finally:
        operator.stop()


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    child = ChildProcess.spawn("stubborn", [sys.executable, "-c", stubborn], tmp_path / "stubborn.log")
    deadline = time.monotonic() + 30
    while "up" not in child.log_tail() and time.monotonic() < deadline:  # its handler is installed
        time.sleep(0.05)
    started = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10
