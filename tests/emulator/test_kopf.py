"""`kopf run` works against the emulator: discovery, watching, status patches, events, peering."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import kubernetes
import pytest

from kubeapi_emulator import EmulatedApiServer, write_kubeconfig
from tests.emulator.conftest import crd_documents, eventually, requires_emulator, workload

pytestmark = [pytest.mark.emulator, pytest.mark.slow, requires_emulator]

OPERATOR = textwrap.dedent("""
    import kopf

    @kopf.on.create("gpuadmit.io", "v1alpha1", "gpuworkloads")
    def decide(spec, body, patch, **_):
        patch.status["phase"] = "Queued"
        patch.status["message"] = f"{spec['gpus']} GPUs seen by kopf"
        kopf.info(body, reason="Queued", message="posted as a Kubernetes Event")
""")


def run_kopf(tmp_path: Path, url: str, *options: str) -> subprocess.Popen[str]:
    script = tmp_path / "tiny_operator.py"
    script.write_text(OPERATOR)
    kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    return subprocess.Popen([sys.executable, "-m", "kopf", "run", "-A", *options, str(script)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


@pytest.mark.parametrize("mode", ["standalone", "peering"])
def test_kopf_handles_a_workload_and_patches_its_status(tmp_path, mode):
    with EmulatedApiServer(crd_objects=crd_documents()) as url:
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=url))
        custom = kubernetes.client.CustomObjectsApi(client)
        options = ["--standalone"]
        if mode == "peering":
            custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", {
                "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "gpuadmit"}})
            options = ["--peering", "gpuadmit"]
        process = run_kopf(tmp_path, url, *options)
        try:
            custom.create_namespaced_custom_object("gpuadmit.io", "v1alpha1", "default", "gpuworkloads",
                                                   workload("seen", gpus=3))

            def status():
                obj = custom.get_namespaced_custom_object("gpuadmit.io", "v1alpha1", "default", "gpuworkloads", "seen")
                return obj.get("status", {}).get("phase") == "Queued" and obj["status"]

            assert eventually(status, timeout=60)["message"] == "3 GPUs seen by kopf"
            core = kubernetes.client.CoreV1Api(client)
            events = eventually(lambda: [e for e in core.list_namespaced_event("default").items
                                         if e.involved_object.name == "seen"], timeout=30)
            assert events[0].reason == "Queued"
            if mode == "peering":
                peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "gpuadmit")
                assert peering.get("status"), "kopf announces itself in the peering object"
        finally:
            output = stop(process)
        assert "Traceback" not in output, output
