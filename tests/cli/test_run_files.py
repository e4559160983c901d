"""`gpuadmit run` with a missing, empty or garbled file (KUBECONFIG, the webhook certificate): one
line and exit 2 before kopf starts, instead of a traceback and retrying for ever."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubeapi_emulator import write_kubeconfig
from tests.bounded_run import assert_refused_in_one_line, run_gpuadmit

PROG = "gpuadmit run"


def run_with_kubeconfig(kubeconfig: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    # KUBERNETES_SERVICE_HOST emptied: never the in-cluster account, even when the tests run in a pod.
    return run_gpuadmit(["run", "--metrics-port", "0", "--health-port", "0", *args],
                        env={"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""})  # fmt: skip


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "cannot read: No such file or directory"),
        (b"", "is empty"),
        (b"apiVersion: v1\nclusters: []\n\xff\n", "not UTF-8"),
        (b"apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n", "no usable credentials"),
    ],
    ids=["missing", "empty", "not-utf8", "no-context"],
)
def test_a_bad_kubeconfig_is_one_line_and_exit_2(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_bytes(content)
    result = run_with_kubeconfig(path, "--webhook-port", "0")
    line = assert_refused_in_one_line(result, PROG, expected)
    assert "KUBECONFIG" in line


def test_a_garbled_webhook_certificate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig("http://127.0.0.1:1", tmp_path / "kubeconfig")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "tls.crt").write_text("not a certificate\n")
    (certs / "tls.key").write_text("not a key\n")
    result = run_with_kubeconfig(kubeconfig, "--webhook-port", "9443", "--webhook-cert-dir", str(certs))
    assert_refused_in_one_line(result, PROG, "--webhook-cert-dir", "not a usable pair")


def test_no_command_is_a_usage_error() -> None:
    result = run_gpuadmit([])
    assert result.returncode == 2 and "usage" in result.stdout.lower() + result.stderr.lower()
