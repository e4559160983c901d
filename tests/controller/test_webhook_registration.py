"""`gpuadmit run --manage-webhook-configurations`: the configurations built from the one list, and
written by the real operator to the emulated API server (kept across a stop, replaced on a restart
with a new CA)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuadmit.controller.webhook_configs import WEBHOOKS, webhook_configurations
from gpuadmit.controller.webhook_registration import webhooks_served
from gpuadmit.core.native import MANAGED_LABEL
from gpuadmit.localcluster import OperatorProcess, free_port
from tests.e2e_harness import REAL_CLUSTER_ENV, Cluster

URL = "https://gpuadmit-webhook.gpuadmit.svc:9443"


def by_name(configurations: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {webhook["name"]: webhook for configuration in configurations for webhook in configuration["webhooks"]}


def test_the_log_names_each_webhook_with_its_url_so_a_shared_path_is_not_listed_bare_twice() -> None:
    _, mutating = webhook_configurations(URL, None)
    served = webhooks_served(mutating).split(", ")
    assert len(served) == len(mutating["webhooks"]) == len(set(served))
    assert f"mutate.jobs.gpuadmit.io -> {URL}/mutate-job" in served
    assert f"mutate.rayjobs.gpuadmit.io -> {URL}/mutate-job" in served


def test_each_webhook_of_the_list_is_in_the_configuration_of_its_kind() -> None:
    validating, mutating = webhook_configurations(URL, "Q0E=")
    assert (validating["kind"], mutating["kind"]) == ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
    assert [w["name"] for w in validating["webhooks"]] == [w.name for w in WEBHOOKS if not w.mutating]
    assert [w["name"] for w in mutating["webhooks"]] == [w.name for w in WEBHOOKS if w.mutating]
    for webhook in WEBHOOKS:
        entry = by_name([validating, mutating])[webhook.name]
        assert entry["clientConfig"] == {"url": URL + webhook.path, "caBundle": "Q0E="}
        assert entry["sideEffects"] == "None" and entry["admissionReviewVersions"] == ["v1"]
        assert 1 <= entry["timeoutSeconds"] <= 30


def test_the_job_and_pod_webhooks_match_managed_namespaces_only_and_never_the_operators() -> None:
    webhooks = by_name(webhook_configurations(URL, None, excluded_namespaces=["gpuadmit"]))
    job, pod = webhooks["mutate.jobs.gpuadmit.io"], webhooks["mutate.pods.gpuadmit.io"]
    for entry in (job, pod):
        assert entry["namespaceSelector"] == {
            "matchLabels": {MANAGED_LABEL: "true"},
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                  "values": ["gpuadmit", "kube-system"]}],
        }
        assert "objectSelector" not in entry  # labels are the tenant's: a selector would be a way around
        assert entry["rules"][0]["operations"] == ["CREATE"]
        assert "caBundle" not in entry["clientConfig"]
    assert job["rules"][0]["apiGroups"] == ["batch"] and job["rules"][0]["resources"] == ["jobs"]
    assert pod["rules"][0]["apiGroups"] == [""] and pod["rules"][0]["resources"] == ["pods"]
    assert "namespaceSelector" not in webhooks["validate.gpuworkloads.gpuadmit.io"]


def test_pytorchjobs_and_rayjobs_go_to_the_job_webhook_in_managed_namespaces_without_match_conditions() -> None:
    webhooks = by_name(webhook_configurations(URL, None, excluded_namespaces=["gpuadmit"]))
    job = webhooks["mutate.jobs.gpuadmit.io"]
    for name, group, resource in (("mutate.pytorchjobs.gpuadmit.io", "kubeflow.org", "pytorchjobs"),
                                  ("mutate.rayjobs.gpuadmit.io", "ray.io", "rayjobs")):
        entry = webhooks[name]
        assert entry["clientConfig"] == job["clientConfig"]  # /mutate-job: the hold is chosen by resource
        assert entry["namespaceSelector"] == job["namespaceSelector"]
        assert entry["rules"] == [{"apiGroups": [group], "apiVersions": ["v1"], "operations": ["CREATE"],
                                   "resources": [resource], "scope": "Namespaced"}]
        assert "matchConditions" not in entry  # templates under roles: every object is sent


def test_failure_policies_are_chosen_apart() -> None:
    webhooks = by_name(webhook_configurations(URL, None, failure_policy="Ignore"))
    assert {name: w["failurePolicy"] for name, w in webhooks.items()} == {
        "validate.gpuworkloads.gpuadmit.io": "Ignore", "mutate.gpuworkloads.gpuadmit.io": "Ignore",
        "mutate.jobs.gpuadmit.io": "Fail", "mutate.pods.gpuadmit.io": "Fail",
        "mutate.pytorchjobs.gpuadmit.io": "Fail", "mutate.rayjobs.gpuadmit.io": "Fail",
    }
    native = by_name(webhook_configurations(URL, None, native_failure_policy="Ignore"))
    assert native["mutate.pods.gpuadmit.io"]["failurePolicy"] == "Ignore"
    assert native["validate.gpuworkloads.gpuadmit.io"]["failurePolicy"] == "Fail"


def test_the_flag_without_a_webhook_server_is_one_line_and_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "gpuadmit", "run", "--manage-webhook-configurations", "--webhook-port", "0"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": "/nonexistent"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gpuadmit run: --manage-webhook-configurations needs the webhook server (--webhook-port is 0)"]


def _configurations(cluster: Cluster) -> dict[str, dict[str, Any]] | None:
    found = {}
    for plural in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        items = cluster.raw("GET", f"/apis/admissionregistration.k8s.io/v1/{plural}")["items"]
        found.update(by_name([item for item in items if item["metadata"]["name"] == "gpuadmit"]))
    return found or None


def _ca_bundle(cert_dir: Path) -> str:
    return base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode("ascii")


@pytest.mark.e2e
@pytest.mark.emulator
@pytest.mark.timeout(180)
@pytest.mark.skipif(bool(os.environ.get(REAL_CLUSTER_ENV)), reason="registers a webhook on 127.0.0.1: emulator only")
def test_the_operator_registers_its_webhooks_and_replaces_them_with_a_new_ca_on_restart(tmp_path: Path) -> None:
    with Cluster.start(tmp_path / "cluster") as cluster:
        port = free_port()
        operator = OperatorProcess(
            cluster.kubeconfig, tmp_path / "operator",
            ("--manage-webhook-configurations", "--webhook-cert-dir", str(tmp_path / "certs-1"),
             "--native-webhook-failure-policy", "Ignore"),
            env={"GPUADMIT_WEBHOOK_ADDR": "127.0.0.1", "POD_NAMESPACE": "gpuadmit-system"}, webhook_port=port,
        )
        try:
            operator.launch()  # waits for /readyz, which waits for the configurations
            assert operator.readiness()["webhook_configurations"] is True
            first = _configurations(cluster)
            assert first is not None and set(first) == {webhook.name for webhook in WEBHOOKS}
            for webhook in WEBHOOKS:
                entry = first[webhook.name]
                assert entry["clientConfig"] == {"url": f"https://127.0.0.1:{port}{webhook.path}",
                                                 "caBundle": _ca_bundle(tmp_path / "certs-1")}
                assert entry["failurePolicy"] == ("Ignore" if webhook.native else "Fail")
            assert "gpuadmit-system" in first["mutate.pods.gpuadmit.io"]["namespaceSelector"]["matchExpressions"][0]["values"]

            operator.stop()
            assert _configurations(cluster) == first  # kept while the operator is down: Fail keeps holding

            operator.extra_args = ("--manage-webhook-configurations", "--webhook-cert-dir", str(tmp_path / "certs-2"))
            operator.launch()
            new_ca = _ca_bundle(tmp_path / "certs-2")
            assert new_ca != _ca_bundle(tmp_path / "certs-1")
            second = _configurations(cluster)
            assert second is not None and set(second) == set(first)
            assert all(entry["clientConfig"]["caBundle"] == new_ca for entry in second.values())
            assert all(entry["failurePolicy"] == "Fail" for entry in second.values())
        finally:
            operator.stop()


async def test_a_refused_write_is_logged_with_the_rbac_it_needs_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from gpuadmit.controller import api, webhook_registration

    class NoConnection:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def __aenter__(self) -> NoConnection:
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            pass

    answers = [api.ApiError("create", "/apis/admissionregistration.k8s.io/v1/x", 403, "Forbidden"),
               api.ApiError("replace", "/apis/admissionregistration.k8s.io/v1/x", 409, "Conflict")]
    written: list[str] = []

    async def write(kube: Any, configuration: dict[str, Any]) -> str:
        if answers:
            raise answers.pop(0)
        written.append(configuration["kind"])
        return "created"

    monkeypatch.setattr(webhook_registration, "FIRST_RETRY_S", 0.01)
    monkeypatch.setattr(webhook_registration, "write_configuration", write)
    monkeypatch.setattr(api, "KubeApi", NoConnection)
    monkeypatch.setattr(api, "resolve_credentials", lambda: None)
    registrar = webhook_registration.Registrar()
    with caplog.at_level("INFO", logger="gpuadmit.controller.webhook_registration"):
        registrar.apply_soon({"url": URL, "caBundle": "Q0E="})
        assert not registrar.registered.is_set()
        await asyncio.wait_for(registrar.registered.wait(), 10)
    await registrar.stop()
    assert written == ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "mutatingwebhookconfigurations" in errors[0] and "docs/webhooks.md" in errors[0]
    assert any(r.levelname == "WARNING" and "409" in r.getMessage() for r in caplog.records)
