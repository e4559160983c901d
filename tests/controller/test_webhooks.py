"""The admission webhooks over real HTTPS: kopf's WebhookServer and admission engine, real AdmissionReviews.

The server is kopf's own (configured by ``configure_webhook_server``) and every
request goes through kopf's admission engine to our handlers, exactly as in
``gpuadmit run``; only the cluster scan that tells kopf which resources exist is
replaced by declaring GPUWorkloads directly, so these tests need no API server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import functools
import json
import ssl
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import kopf
import pytest
from kopf._cogs.structs import references
from kopf._core.engines import admission
from kopf._core.engines.indexing import OperatorIndexers
from kopf._core.reactor.inventory import ResourceMemories

from gpuadmit.controller import webhooks
from gpuadmit.core.model import CLASS_LABEL
from gpuadmit.tlsutil import generate_self_signed
from gpuadmit.localcluster import free_port

GPUWORKLOADS = references.Resource(
    group="gpuadmit.io",
    version="v1alpha1",
    plural="gpuworkloads",
    kind="GPUWorkload",
    singular="gpuworkload",
    namespaced=True,
    preferred=True,
    verbs=["create", "update", "patch", "get", "list", "watch", "delete"],
)
DEADLINE = 30.0


class WebhookClient:
    def __init__(self, base_url: str, cafile: Path) -> None:
        self.base_url = base_url
        self.ssl = ssl.create_default_context(cafile=str(cafile))
        self.session = aiohttp.ClientSession()

    async def review(self, path: str, obj: dict[str, Any], old: dict[str, Any] | None = None, operation: str = "CREATE") -> dict[str, Any]:
        request = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "gpuadmit.io", "version": "v1alpha1", "kind": "GPUWorkload"},
                "resource": {"group": "gpuadmit.io", "version": "v1alpha1", "resource": "gpuworkloads"},
                "requestKind": {"group": "gpuadmit.io", "version": "v1alpha1", "kind": "GPUWorkload"},
                "name": obj.get("metadata", {}).get("name", ""),
                "namespace": obj.get("metadata", {}).get("namespace", ""),
                "operation": operation,
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": obj,
                "oldObject": old,
                "dryRun": False,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
        async with self.session.post(f"{self.base_url}/{path}", json=request, ssl=self.ssl) as response:
            assert response.status == 200, await response.text()
            review = await response.json()
        assert review["kind"] == "AdmissionReview"
        assert review["response"]["uid"] == request["request"]["uid"]
        return review["response"]


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[WebhookClient]:
    """kopf's webhook server with our handlers, on a free port with a generated certificate."""
    settings = kopf.OperatorSettings()
    args = argparse.Namespace(webhook_port=free_port(), webhook_cert_dir=str(tmp_path / "certs"), webhook_addr="127.0.0.1")
    server = webhooks.configure_webhook_server(settings, args)
    assert server is not None and settings.admission.server is server
    insights = references.Insights()
    insights.webhook_resources.add(GPUWORKLOADS)
    webhookfn = functools.partial(
        admission.serve_admission_request,
        settings=settings,
        registry=kopf.get_default_registry(),
        insights=insights,
        memories=ResourceMemories(),
        memobase=kopf.Memo(),
        indices=OperatorIndexers().indices,
    )
    listening: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async for client_config in server(webhookfn):
            if not listening.done():
                listening.set_result(dict(client_config))

    task = asyncio.create_task(serve())
    client_config = await asyncio.wait_for(asyncio.shield(listening), DEADLINE)
    client = WebhookClient(f"https://127.0.0.1:{args.webhook_port}", tmp_path / "certs" / "ca.crt")
    assert client_config["url"].startswith("https://")
    assert base64.b64decode(client_config["caBundle"]) == (tmp_path / "certs" / "ca.crt").read_bytes()
    try:
        yield client
    finally:
        await client.session.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        webhooks.set_known_products_provider(None)
        webhooks.set_namespace_provider(None)
        webhooks.set_pod_security_level("baseline")


def serving_workload(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpuadmit.io/v1alpha1",
        "kind": "GPUWorkload",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": str(uuid.uuid4())},
        "spec": {
            "gpus": 1,
            "template": {
                "spec": {
                    "containers": [{
                        "name": "vllm",
                        "image": "vllm/vllm-openai:v0.6.0",
                        "args": ["--model", "Qwen/Qwen2-7B"],
                        "ports": [{"containerPort": 8000}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                    }]
                }
            },
            **spec,
        },
    }


def json_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response.get("patchType") == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


async def test_a_valid_workload_is_allowed(webhook: WebhookClient) -> None:
    response = await webhook.review(webhooks.VALIDATE_ID, serving_workload())
    assert response["allowed"] is True
    assert "status" not in response and "warnings" not in response


async def test_a_template_without_containers_is_denied_with_the_field_and_code(webhook: WebhookClient) -> None:
    obj = serving_workload()
    obj["spec"]["template"]["spec"]["containers"] = []
    response = await webhook.review(webhooks.VALIDATE_ID, obj)
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert "spec.template.spec.containers" in response["status"]["message"]
    assert "[InvalidSpec]" in response["status"]["message"]


@pytest.mark.parametrize(("where", "value", "field"), [
    ("resources", "junk", "spec.template.spec.containers[0].resources"),
    ("labels", ["a"], "spec.template.metadata.labels"),
    ("nested", 60, "spec.template"),  # deeper than the template cap (32), within the body cap (100)
])
async def test_a_poison_template_is_denied_over_https_naming_the_field(
        webhook: WebhookClient, where: str, value: Any, field: str) -> None:
    obj = serving_workload()
    template = obj["spec"]["template"]
    if where == "resources":
        template["spec"]["containers"][0]["resources"] = value
    elif where == "labels":
        template["metadata"] = {"labels": value}
    else:
        deep: dict[str, Any] = {"leaf": "x"}
        for _ in range(value):
            deep = {"a": deep}
        template["spec"]["affinity"] = deep
    for path in (webhooks.VALIDATE_ID, webhooks.MUTATE_ID):  # the mutating one must not crash on it either
        response = await webhook.review(path, obj)
        if path == webhooks.VALIDATE_ID:
            assert (response["allowed"], response["status"]["code"]) == (False, 422)
            assert f"[InvalidSpec] {field}:" in response["status"]["message"]
        else:
            assert "allowed" in response


async def test_a_forged_class_label_is_denied(webhook: WebhookClient) -> None:
    obj = serving_workload()
    obj["spec"]["template"]["spec"]["containers"][0] = {
        "name": "t", "image": "pytorch/pytorch", "command": ["torchrun", "train.py"],
    }
    obj["metadata"]["labels"] = {CLASS_LABEL: "inference"}
    response = await webhook.review(webhooks.VALIDATE_ID, obj)
    assert response["allowed"] is False
    assert f'metadata.labels["{CLASS_LABEL}"]' in response["status"]["message"]


async def test_status_on_create_is_denied(webhook: WebhookClient) -> None:
    obj = serving_workload()
    obj["status"] = {"phase": "Admitted"}
    response = await webhook.review(webhooks.VALIDATE_ID, obj)
    assert (response["allowed"], response["status"]["code"]) == (False, 422)
    assert response["status"]["message"].startswith("[StatusNotAllowed] status:")


async def test_growing_an_admitted_workload_is_denied_on_update(webhook: WebhookClient) -> None:
    old = serving_workload(gpus=2)
    old["status"] = {"phase": "Running"}
    new = copy.deepcopy(old)
    new["spec"]["gpus"] = 4
    response = await webhook.review(webhooks.VALIDATE_ID, new, old=old, operation="UPDATE")
    assert response["allowed"] is False
    assert "spec.gpus" in response["status"]["message"] and "Running" in response["status"]["message"]
    new["spec"]["gpus"] = 2
    new["metadata"]["labels"] = {"team": "a"}
    response = await webhook.review(webhooks.VALIDATE_ID, new, old=old, operation="UPDATE")
    assert response["allowed"] is True


async def test_an_unknown_product_is_a_warning_not_a_denial(webhook: WebhookClient) -> None:
    nodes = [{"metadata": {"labels": {"nvidia.com/gpu.product": "Tesla-T4"}}}]
    from gpuadmit.core.validation import known_products_of_nodes

    webhooks.set_known_products_provider(lambda: known_products_of_nodes(nodes))
    response = await webhook.review(webhooks.VALIDATE_ID, serving_workload(gpuProducts=["Tesla-T4", "H100-SXM"]))
    assert response["allowed"] is True
    assert len(response["warnings"]) == 1
    assert "spec.gpuProducts[1]" in response["warnings"][0] and "H100-SXM" in response["warnings"][0]


async def test_a_failing_product_provider_does_not_block_admission(webhook: WebhookClient) -> None:
    def broken() -> list[str]:
        raise RuntimeError("cache not ready")

    webhooks.set_known_products_provider(broken)
    response = await webhook.review(webhooks.VALIDATE_ID, serving_workload(gpuProducts=["X"]))
    assert response["allowed"] is True and "warnings" not in response


async def test_an_escalating_template_is_denied_naming_the_field(webhook: WebhookClient) -> None:
    obj = serving_workload()
    obj["spec"]["template"]["spec"]["hostNetwork"] = True
    response = await webhook.review(webhooks.VALIDATE_ID, obj)
    assert (response["allowed"], response["status"]["code"]) == (False, 422)
    assert response["status"]["message"].startswith("[InvalidSpec] spec.template.spec.hostNetwork: ")
    assert "'baseline'" in response["status"]["message"]


async def test_an_accounting_bypass_is_denied_even_at_the_privileged_level(webhook: WebhookClient) -> None:
    webhooks.set_pod_security_level("privileged")
    obj = serving_workload()
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True}
    assert (await webhook.review(webhooks.VALIDATE_ID, obj))["allowed"] is True
    container["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    response = await webhook.review(webhooks.VALIDATE_ID, obj)
    assert response["allowed"] is False
    assert "spec.template.spec.containers[0].env[0].name" in response["status"]["message"]


async def test_the_namespace_label_and_allowances_come_from_the_namespace_provider(webhook: WebhookClient) -> None:
    namespaces = {
        "team-a": {"metadata": {"name": "team-a", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
        "team-b": {"metadata": {"name": "team-b", "annotations": {"gpuadmit.io/allowed-service-accounts": "trainer"}}},
    }
    webhooks.set_namespace_provider(namespaces.get)
    plain = serving_workload()
    response = await webhook.review(webhooks.VALIDATE_ID, plain)  # team-a enforces restricted
    assert response["allowed"] is False and "'restricted'" in response["status"]["message"]
    with_account = serving_workload()
    with_account["metadata"]["namespace"] = "team-b"
    with_account["spec"]["template"]["spec"]["serviceAccountName"] = "trainer"
    assert (await webhook.review(webhooks.VALIDATE_ID, with_account))["allowed"] is True
    with_account["spec"]["template"]["spec"]["serviceAccountName"] = "deployer"
    response = await webhook.review(webhooks.VALIDATE_ID, with_account)
    assert response["allowed"] is False
    assert "spec.template.spec.serviceAccountName" in response["status"]["message"]


async def test_a_failing_namespace_provider_leaves_the_configured_level(webhook: WebhookClient) -> None:
    def broken(name: str) -> dict[str, Any] | None:
        raise RuntimeError("cache not ready")

    webhooks.set_namespace_provider(broken)
    assert (await webhook.review(webhooks.VALIDATE_ID, serving_workload()))["allowed"] is True
    obj = serving_workload()
    obj["spec"]["template"]["spec"]["serviceAccountName"] = "trainer"  # no allowance known: refused
    assert (await webhook.review(webhooks.VALIDATE_ID, obj))["allowed"] is False


async def test_mutation_answers_with_a_json_patch_of_class_label_and_defaults(webhook: WebhookClient) -> None:
    response = await webhook.review(webhooks.MUTATE_ID, serving_workload())
    assert response["allowed"] is True
    ops = {op["path"]: op for op in json_patch(response)}
    assert ops["/spec/class"]["value"] == "auto"
    assert ops["/spec/replicas"]["value"] == 1
    assert ops["/spec/gpuProducts"]["value"] == []
    assert ops["/spec/minGpuMemoryMiB"]["value"] == 0
    assert ops["/metadata/labels"]["value"] == {CLASS_LABEL: "inference"}
    assert all(op["op"] == "add" for op in ops.values())


async def test_mutation_overrides_a_wrong_class_label_and_leaves_tenant_fields(webhook: WebhookClient) -> None:
    obj = serving_workload(replicas=3, **{"class": "training"})
    obj["metadata"]["labels"] = {"team": "a", CLASS_LABEL: "inference"}
    patch = json_patch(await webhook.review(webhooks.MUTATE_ID, obj))
    changed = {op["path"]: op.get("value") for op in patch}
    assert changed["/metadata/labels/gpuadmit.io~1class"] == "training"
    assert "/spec/replicas" not in changed and "/spec/class" not in changed


async def test_a_complete_object_gets_no_patch(webhook: WebhookClient) -> None:
    obj = serving_workload(replicas=1, gpuProducts=[], minGpuMemoryMiB=0, **{"class": "auto"})
    obj["metadata"]["labels"] = {CLASS_LABEL: "inference"}
    response = await webhook.review(webhooks.MUTATE_ID, obj)
    assert response["allowed"] is True and "patch" not in response


async def test_garbage_in_the_object_is_denied_not_crashed(webhook: WebhookClient) -> None:
    obj = serving_workload()
    obj["spec"] = ["not", "an", "object"]
    response = await webhook.review(webhooks.VALIDATE_ID, obj)
    assert response["allowed"] is False and response["status"]["message"].startswith("[InvalidSpec] spec:")
    response = await webhook.review(webhooks.MUTATE_ID, obj)
    assert response["allowed"] is True and "patch" not in response


def test_an_empty_product_view_means_unknown_not_missing() -> None:
    webhooks.set_known_products_provider(lambda: set())
    try:
        assert webhooks.known_products() is None
        webhooks.set_product_provider(lambda: ["Tesla-T4"])  # the name the operator wires
        assert webhooks.known_products() == {"Tesla-T4"}
    finally:
        webhooks.set_known_products_provider(None)


def test_webhooks_are_off_on_port_zero() -> None:
    settings = kopf.OperatorSettings()
    assert webhooks.configure_webhook_server(settings, argparse.Namespace(webhook_port=0, webhook_cert_dir=None)) is None
    assert settings.admission.server is None


def test_a_mounted_certificate_is_used_as_is(tmp_path: Path) -> None:
    files = generate_self_signed(tmp_path, ["gpuadmit-webhook.gpuadmit.svc"])
    before = files.certfile.read_bytes()
    settings = kopf.OperatorSettings()
    server = webhooks.configure_webhook_server(
        settings, argparse.Namespace(webhook_port=9443, webhook_cert_dir=str(tmp_path))
    )
    assert server is not None
    assert (server.certfile, server.pkeyfile, server.cafile) == (str(files.certfile), str(files.keyfile), str(files.cafile))
    assert files.certfile.read_bytes() == before  # not regenerated
    assert server.addr == "0.0.0.0" and server.port == 9443


async def test_the_generated_certificate_is_refused_without_its_ca(webhook: WebhookClient) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(f"{webhook.base_url}/{webhooks.VALIDATE_ID}", json={}, ssl=ssl.create_default_context())


# --- the same through `gpuadmit run` against the emulated API server ---------------------------


@pytest.mark.emulator
@pytest.mark.timeout(120)
async def test_gpuadmit_run_serves_the_webhooks_over_tls(tmp_path: Path) -> None:
    import time

    from gpuadmit.localcluster import OperatorProcess
    from kubeapi_emulator import EmulatedApiServer, write_kubeconfig

    crds = Path(__file__).resolve().parents[2] / "crds"
    cert_dir = tmp_path / "certs"
    with EmulatedApiServer(crds=[str(crds)]) as url:
        kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
        operator = OperatorProcess(kubeconfig, tmp_path, ("--webhook-cert-dir", str(cert_dir)), webhook_port=free_port())
        try:
            operator.launch(wait_ready=False)
            await operator.wait_ready_async()  # from the event loop: the server above runs in a thread
            deadline = time.monotonic() + 60
            response = None
            while response is None:
                assert operator.child is not None and operator.child.running(), operator.log_tail()
                assert time.monotonic() < deadline, operator.log_tail()
                if (cert_dir / "ca.crt").exists():
                    client = WebhookClient(f"https://localhost:{operator.webhook_port}", cert_dir / "ca.crt")
                    try:
                        obj = serving_workload()
                        obj["metadata"]["labels"] = {CLASS_LABEL: "training"}
                        response = await client.review(webhooks.VALIDATE_ID, obj)
                        mutated = await client.review(webhooks.MUTATE_ID, obj)
                    except aiohttp.ClientConnectionError:
                        pass
                    finally:
                        await client.session.close()
                if response is None:
                    await asyncio.sleep(0.2)  # polling for the server to listen, not synchronising
            assert response["allowed"] is False
            assert f'metadata.labels["{CLASS_LABEL}"]' in response["status"]["message"]
            patch = {op["path"]: op.get("value") for op in json_patch(mutated)}
            assert patch["/metadata/labels/gpuadmit.io~1class"] == "inference"
        finally:
            operator.stop()


def test_the_listening_address_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUADMIT_WEBHOOK_ADDR", "127.0.0.1")
    server = webhooks.configure_webhook_server(
        kopf.OperatorSettings(), argparse.Namespace(webhook_port=9443, webhook_cert_dir=str(tmp_path))
    )
    assert server is not None and server.addr == "127.0.0.1"
    assert (tmp_path / "ca.crt").exists() and (tmp_path / "tls.key").stat().st_mode & 0o077 == 0


def review_body(**request_overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "gpuadmit.io", "version": "v1alpha1", "kind": "GPUWorkload"},
        "resource": {"group": "gpuadmit.io", "version": "v1alpha1", "resource": "gpuworkloads"},
        "operation": "CREATE",
        "userInfo": {"username": "mallory"},
        "object": serving_workload(),
        "oldObject": None,
    }
    request.update(request_overrides)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


MALFORMED_REVIEWS: dict[str, bytes] = {
    "null": b"null",
    "list": b"[]",
    "string": b'"AdmissionReview"',
    "no-request": json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
    "request-null": json.dumps({"kind": "AdmissionReview", "request": None}).encode(),
    "object-string": json.dumps(review_body(object="a GPUWorkload")).encode(),
    "old-object-list": json.dumps(review_body(operation="UPDATE", oldObject=[1])).encode(),
    "no-objects": json.dumps(review_body(object=None)).encode(),
    "metadata-list": json.dumps(review_body(object={"metadata": [], "spec": {}})).encode(),
    "no-uid": json.dumps(review_body(uid=None)).encode(),
    "resource-string": json.dumps(review_body(resource="gpuworkloads")).encode(),
    "user-info-list": json.dumps(review_body(userInfo=[])).encode(),
    "bad-utf8": json.dumps(review_body()).encode().replace(b"mallory", b"mall\xff\xfery"),
    "5000-digits": json.dumps(review_body()).encode().replace(b'"gpus": 1', b'"gpus": ' + b"9" * 5000),
    "deep-nesting": json.dumps(review_body()).encode().replace(b'"gpus": 1', b'"gpus": ' + b"[" * 5000 + b"]" * 5000),
    "deep-but-parsable": json.dumps(review_body()).encode().replace(b'"gpus": 1', b'"gpus": ' + b"[" * 300 + b"]" * 300),
    "not-json": b"{not json",
    # From the hostile-tenant run: half a UTF-16 pair in a name or the uid (which the answer echoes).
    "lone-surrogate-name": json.dumps(review_body()).encode().replace(b'"chat"', b'"ch\\ud800at"'),
    "lone-surrogate-uid": json.dumps(review_body()).encode().replace(b'"uid": "', b'"uid": "\\udfff', 1),
    "empty": b"",
    "utf16": json.dumps(review_body()).encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_REVIEWS))
async def test_a_malformed_admission_review_gets_400_and_one_log_line(
    webhook: WebhookClient, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level("DEBUG")
    for path in (webhooks.VALIDATE_ID, webhooks.MUTATE_ID):
        caplog.clear()
        async with webhook.session.post(
            f"{webhook.base_url}/{path}", data=MALFORMED_REVIEWS[name], ssl=webhook.ssl,
            headers={"Content-Type": "application/json"},
        ) as response:  # fmt: skip
            assert response.status == 400, await response.text()
            assert "malformed AdmissionReview" in await response.text()
        refusals = [r for r in caplog.records if r.name == webhooks.logger.name and r.levelname == "WARNING"]
        assert len(refusals) == 1 and "\n" not in refusals[0].getMessage(), [r.getMessage() for r in caplog.records]
        assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
        assert "Traceback" not in caplog.text


async def test_after_malformed_reviews_a_good_one_is_still_answered(webhook: WebhookClient) -> None:
    for body in MALFORMED_REVIEWS.values():
        async with webhook.session.post(f"{webhook.base_url}/{webhooks.VALIDATE_ID}", data=body, ssl=webhook.ssl) as response:
            assert response.status == 400
    assert (await webhook.review(webhooks.VALIDATE_ID, serving_workload()))["allowed"] is True


def test_parse_admission_review_accepts_what_an_api_server_sends() -> None:
    body = review_body(operation="UPDATE", oldObject=serving_workload())
    assert webhooks.parse_admission_review(json.dumps(body).encode()) == body
    deepest_allowed = json.dumps(review_body()).encode().replace(b'"gpus": 1', b'"gpus": ' + b"[" * 90 + b"]" * 90)
    webhooks.parse_admission_review(deepest_allowed)


def _mangled_reviews(count: int, seed: int = 17) -> list[bytes]:
    """Reviews with one field, anywhere in the request, replaced by a value of another shape."""
    import random

    rng = random.Random(seed)
    odd_values: list[Any] = [None, [], {}, "", "x", 0, -1, 1.5, True, [1, "a"], {"a": [None]}, 10**30]
    bodies = []
    for _ in range(count):
        body = review_body(operation=rng.choice(["CREATE", "UPDATE"]), oldObject=serving_workload())
        target: Any = body
        while isinstance(target, dict) and target and rng.random() < 0.8:
            key = rng.choice(sorted(target))
            if not isinstance(target[key], dict) or rng.random() < 0.3:
                target[key] = rng.choice(odd_values)
                break
            target = target[key]
        bodies.append(json.dumps(body).encode())
    return bodies


async def test_reviews_with_any_field_of_the_wrong_shape_get_an_answer_never_a_500(
    webhook: WebhookClient, caplog: pytest.LogCaptureFixture
) -> None:
    for body in _mangled_reviews(80):
        for path in (webhooks.VALIDATE_ID, webhooks.MUTATE_ID):
            async with webhook.session.post(f"{webhook.base_url}/{path}", data=body, ssl=webhook.ssl) as response:
                assert response.status in (200, 400, 404), (response.status, body[:300])  # 404: a resource not served
    assert not any(record.exc_info for record in caplog.records), "a traceback was logged"
