"""Admission webhooks called by the API server: a small HTTPS webhook server (aiohttp, a throwaway
CA from ``gpuadmit.tlsutil``) registered through Mutating/ValidatingWebhookConfigurations, then
objects written through the API (the official client, raw HTTP, and the real ``kubectl`` when it
is on the PATH).

Every behaviour asserted here is the real kube-apiserver's (staging/src/k8s.io/apiserver/pkg/
admission/plugin/webhook): patches applied and stored, watch events carrying the mutated object,
a denial answered with the webhook's code (raised to 400 at least) and ``admission webhook "NAME"
denied the request: MESSAGE``, a failed call answered 500 ``Internal error occurred: failed
calling webhook "NAME": ...`` under ``failurePolicy: Fail`` and skipped under ``Ignore``, a
timeout and an unverifiable certificate being failed calls, ``rules`` matching only the named
operations and resources (``pods`` is not ``pods/status``), namespaceSelector, objectSelector and
matchConditions (CEL; an error refuses under Fail), warnings as ``Warning`` headers, mutating
configurations called in name order and IfNeeded ones reinvoked, dry runs sent with ``dryRun:
true`` and not stored, and configurations validated when written. So these tests pass on
a real cluster too (``GPUADMIT_E2E_KUBECONFIG``, with ``GPUADMIT_E2E_WEBHOOK_HOST`` set to an
address of this machine the cluster's API server can reach; every configuration is scoped to the
test's own namespace). The parts that need the emulator (``clientConfig.service`` routed with
``webhook_services``, a CRD of two versions for matchPolicy, a write around the API to race an
update, a binding without a scheduler) are marked ``requires_emulator``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kubernetes
import pytest

from gpuadmit.tlsutil import generate_self_signed
from kubeapi_emulator import EmulatedApiServer, write_kubeconfig
from kubeapi_emulator.admission import Attributes, Rule
from tests.kubectl_driver import KUBECTL, Kubectl

from .conftest import api_error, eventually, pod, requires_emulator

pytestmark = [pytest.mark.emulator]

WEBHOOK_HOST = os.environ.get("GPUADMIT_E2E_WEBHOOK_HOST", "127.0.0.1")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on the PATH: the kubectl half of the "
                                                           "admission checks is skipped (the API half still runs)")
SLOW_SECONDS = 3.0


class WebhookServer:
    """HTTPS admission webhooks on a background thread; every review received is kept.

    ``POST /mutate/LABEL`` adds the label ``LABEL: "yes"``; ``/deny`` refuses names starting with
    ``bad-`` (code 403); ``/deny-plain`` refuses everything with a message and no code; ``/allow``
    allows with a warning; ``/slow`` answers after ``SLOW_SECONDS``; ``/wrong-uid`` answers another uid.
    """

    def __init__(self, cert_dir: Path, hostnames: tuple[str, ...] = ()) -> None:
        self.files = generate_self_signed(cert_dir, ("localhost", "127.0.0.1", WEBHOOK_HOST, *hostnames))
        self.reviews: list[tuple[str, dict[str, Any]]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: aiohttp.web.AppRunner | None = None

    @property
    def ca_bundle(self) -> str:
        assert self.files.cafile is not None
        return base64.b64encode(self.files.cafile.read_bytes()).decode()

    def url(self, path: str) -> str:
        return f"https://{WEBHOOK_HOST}:{self.port}{path}"

    def seen(self, path: str) -> list[dict[str, Any]]:
        return [request for where, request in self.reviews if where == path]

    async def _answer(self, http: aiohttp.web.Request) -> aiohttp.web.Response:
        review = await http.json()
        request = review["request"]
        self.reviews.append((http.path, request))
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        obj = request.get("object") or {}
        name = (obj.get("metadata") or {}).get("name") or request.get("name") or ""
        if http.path.startswith("/mutate/"):
            label = http.path.removeprefix("/mutate/")
            labels = (obj.get("metadata") or {}).get("labels")
            patch = ([{"op": "add", "path": f"/metadata/labels/{label}", "value": "yes"}] if labels is not None
                     else [{"op": "add", "path": "/metadata/labels", "value": {label: "yes"}}])
            response.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(patch).encode()).decode())
        elif http.path == "/deny" and name.startswith("bad-"):
            response.update(allowed=False, status={"code": 403, "reason": "Forbidden",
                                                   "message": "names starting with bad- are refused"})
        elif http.path == "/deny-plain":
            response.update(allowed=False, status={"message": "not today"})
        elif http.path == "/allow":
            response["warnings"] = ["configmap looks fine, but be careful"]
        elif http.path == "/slow":
            await asyncio.sleep(SLOW_SECONDS)
        elif http.path == "/wrong-uid":
            response["uid"] = "not-" + request["uid"]
        return aiohttp.web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                          "response": response})

    def __enter__(self) -> WebhookServer:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.files.certfile, self.files.keyfile)
        app = aiohttp.web.Application()
        app.router.add_post("/{path:.*}", self._answer)
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._runner = aiohttp.web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = aiohttp.web.TCPSite(self._runner, "0.0.0.0" if WEBHOOK_HOST != "127.0.0.1" else "127.0.0.1", 0,
                                       ssl_context=context)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        started.wait(30)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def webhooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookServer]:
    with WebhookServer(tmp_path_factory.mktemp("webhook-certs")) as server:
        yield server


@pytest.fixture()
def admission(cluster: kubernetes.client.ApiClient) -> kubernetes.client.AdmissionregistrationV1Api:
    return kubernetes.client.AdmissionregistrationV1Api(cluster)


Register = Callable[..., str]


@pytest.fixture()
def register(admission: kubernetes.client.AdmissionregistrationV1Api, webhooks: WebhookServer,
             namespace: str) -> Iterator[Register]:
    """``register(path, mutating=False, **fields)``: a configuration with one webhook calling
    ``path`` for configmaps in this test's namespace; returns the webhook's name. Deleted after."""
    made: list[tuple[bool, str]] = []

    def make(path: str, *, mutating: bool = False, name: str | None = None, url: str | None = None,
             ca_bundle: str | None = None, **fields: Any) -> str:
        name = name or f"t{uuid.uuid4().hex[:8]}"
        webhook: dict[str, Any] = {
            "name": f"{name}.admission.gpuadmit.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {"url": url or webhooks.url(path),
                             "caBundle": webhooks.ca_bundle if ca_bundle is None else ca_bundle},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["configmaps"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            **fields,
        }
        body = {"metadata": {"name": name}, "webhooks": [webhook]}
        if mutating:
            admission.create_mutating_webhook_configuration(body)
        else:
            admission.create_validating_webhook_configuration(body)
        made.append((mutating, name))
        return str(webhook["name"])

    yield make
    for mutating, name in made:
        delete = (admission.delete_mutating_webhook_configuration if mutating
                  else admission.delete_validating_webhook_configuration)
        try:
            delete(name)
        except kubernetes.client.ApiException:
            pass


def configmap(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, **({"labels": labels} if labels else {})}, "data": {"k": "v"}}


def raw(cluster: kubernetes.client.ApiClient, method: str, path: str, body: Any = None,
        query: list[tuple[str, Any]] | None = None) -> tuple[int, Any, Any]:
    """A raw call through the official client: (status, JSON body, headers), errors included."""
    serialized = cluster.param_serialize(method, path, query_params=query or [], body=body,
                                         auth_settings=["BearerToken"],
                                         header_params={"Content-Type": "application/json",
                                                        "Accept": "application/json"})
    response = cluster.call_api(*serialized)
    response.read()
    return response.status, json.loads(response.data), response.getheaders()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- mutating -----------------------------------------------------------------------------------------

def test_a_mutating_webhooks_patch_is_stored_answered_and_watched(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    register("/mutate/stamped", mutating=True)
    version = core.list_namespaced_config_map(namespace).metadata.resource_version
    created = core.create_namespaced_config_map(namespace, configmap("plain"))
    assert created.metadata.labels == {"stamped": "yes"}
    assert core.read_namespaced_config_map("plain", namespace).metadata.labels == {"stamped": "yes"}
    stream = core.list_namespaced_config_map(namespace, watch=True, resource_version=version, timeout_seconds=5,
                                             _preload_content=False)
    first = json.loads(stream.readline())
    stream.close()
    assert (first["type"], first["object"]["metadata"]["labels"]) == ("ADDED", {"stamped": "yes"})

    review = webhooks.seen("/mutate/stamped")[-1]
    assert review["operation"] == "CREATE" and review["namespace"] == namespace and review["name"] == "plain"
    assert review["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert review["resource"] == {"group": "", "version": "v1", "resource": "configmaps"}
    assert review["requestResource"] == review["resource"] and review["dryRun"] is False
    assert review["object"]["data"] == {"k": "v"} and review["oldObject"] is None
    assert review["userInfo"]["username"] and review["uid"]
    assert review["options"]["kind"] == "CreateOptions"

    core.patch_namespaced_config_map("plain", namespace, {"data": {"k": "w"}})
    update = webhooks.seen("/mutate/stamped")[-1]
    assert update["operation"] == "UPDATE" and update["oldObject"]["data"] == {"k": "v"}
    assert update["object"]["data"] == {"k": "w"}


def test_mutating_configurations_are_called_in_name_order(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    suffix = uuid.uuid4().hex[:6]
    register("/mutate/second", mutating=True, name=f"zz{suffix}")
    register("/mutate/first", mutating=True, name=f"aa{suffix}")
    created = core.create_namespaced_config_map(namespace, configmap("ordered"))
    assert created.metadata.labels == {"first": "yes", "second": "yes"}
    assert webhooks.seen("/mutate/second")[-1]["object"]["metadata"]["labels"] == {"first": "yes"}


def test_an_if_needed_webhook_is_called_again_after_a_later_change(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    suffix = uuid.uuid4().hex[:6]
    register("/mutate/again", mutating=True, name=f"aa{suffix}", reinvocationPolicy="IfNeeded")
    register("/mutate/later", mutating=True, name=f"zz{suffix}")
    before = len(webhooks.seen("/mutate/again"))
    assert core.create_namespaced_config_map(namespace, configmap("twice")).metadata.labels == \
        {"again": "yes", "later": "yes"}
    calls = webhooks.seen("/mutate/again")[before:]
    assert [call["object"]["metadata"].get("labels") for call in calls] == [None, {"again": "yes", "later": "yes"}]


def test_a_dry_run_is_reviewed_as_one_and_not_stored(
        cluster: kubernetes.client.ApiClient, core: kubernetes.client.CoreV1Api, register: Register,
        webhooks: WebhookServer, namespace: str) -> None:
    register("/mutate/dry", mutating=True)
    status, body, _ = raw(cluster, "POST", f"/api/v1/namespaces/{namespace}/configmaps", configmap("dry"),
                          [("dryRun", "All")])
    assert status == 201 and body["metadata"]["labels"] == {"dry": "yes"}
    assert webhooks.seen("/mutate/dry")[-1]["dryRun"] is True
    assert api_error(lambda: core.read_namespaced_config_map("dry", namespace))[0] == 404


# -- validating: denials and their messages --------------------------------------------------------------

def test_a_denial_answers_the_webhooks_code_and_message(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str) -> None:
    name = register("/deny")
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("bad-one")))
    assert code == 403 and status["code"] == 403 and status["reason"] == "Forbidden"
    assert status["message"] == f'admission webhook "{name}" denied the request: names starting with bad- are refused'
    core.create_namespaced_config_map(namespace, configmap("good-one"))
    assert api_error(lambda: core.read_namespaced_config_map("bad-one", namespace))[0] == 404


def test_a_denial_without_a_code_is_a_400(core: kubernetes.client.CoreV1Api, register: Register,
                                          namespace: str) -> None:
    name = register("/deny-plain")
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("any")))
    assert code == 400 and status["message"] == f'admission webhook "{name}" denied the request: not today'


def test_warnings_come_back_as_warning_headers(cluster: kubernetes.client.ApiClient, register: Register,
                                               namespace: str) -> None:
    register("/allow")
    status, _, headers = raw(cluster, "POST", f"/api/v1/namespaces/{namespace}/configmaps", configmap("warned"))
    assert status == 201
    assert "configmap looks fine, but be careful" in headers.get("Warning", "")


# -- rules and selectors -----------------------------------------------------------------------------------

def test_rules_match_only_the_named_operations_and_resources(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    rule = {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"], "scope": "Namespaced"}
    name = register("/deny-plain", rules=[{**rule, "operations": ["DELETE"]}])
    register("/deny-plain", rules=[{**rule, "resources": ["secrets"], "operations": ["*"]}])
    core.create_namespaced_config_map(namespace, configmap("kept"))  # neither matches a configmap CREATE
    core.patch_namespaced_config_map("kept", namespace, {"data": {"k": "x"}})
    code, status = api_error(lambda: core.delete_namespaced_config_map("kept", namespace))
    assert code == 400 and status["message"].startswith(f'admission webhook "{name}" denied')
    review = webhooks.seen("/deny-plain")[-1]
    assert review["operation"] == "DELETE" and review["object"] is None
    assert review["oldObject"]["metadata"]["name"] == "kept" and review["options"]["kind"] == "DeleteOptions"
    assert core.read_namespaced_config_map("kept", namespace).data == {"k": "x"}


def test_pods_is_not_pods_status(core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer,
                                 namespace: str) -> None:
    rule = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "scope": "Namespaced"}
    register("/deny-plain", rules=[{**rule, "resources": ["pods"]}])
    register("/allow", rules=[{**rule, "resources": ["pods/status"]}])
    core.create_namespaced_pod(namespace, pod("p"))
    before = len(webhooks.seen("/allow"))
    core.patch_namespaced_pod_status("p", namespace, {"status": {"message": "checked"}})  # not refused
    reviews = webhooks.seen("/allow")[before:]
    assert [(r["subResource"], r["resource"]["resource"], r["kind"]["kind"]) for r in reviews] == \
        [("status", "pods", "Pod")]
    assert api_error(lambda: core.patch_namespaced_pod("p", namespace, {"metadata": {"labels": {"a": "b"}}}))[0] \
        == 400


def test_the_namespace_selector_reads_the_namespaces_labels(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    team = uuid.uuid4().hex[:8]
    register("/mutate/team", mutating=True, namespaceSelector={"matchLabels": {"team": team}})
    assert not core.create_namespaced_config_map(namespace, configmap("before")).metadata.labels
    core.patch_namespace(namespace, {"metadata": {"labels": {"team": team}}})
    assert core.create_namespaced_config_map(namespace, configmap("after")).metadata.labels == {"team": "yes"}
    expression = {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": [team]}]}
    register("/deny-plain", namespaceSelector=expression)
    core.create_namespaced_config_map(namespace, configmap("still-allowed"))


def test_the_object_selector_reads_the_new_and_the_old_labels(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    register("/mutate/selected", mutating=True, objectSelector={"matchLabels": {"webhook": "on"}})
    assert not core.create_namespaced_config_map(namespace, configmap("unlabelled")).metadata.labels
    labelled = core.create_namespaced_config_map(namespace, configmap("labelled", {"webhook": "on"}))
    assert labelled.metadata.labels == {"webhook": "on", "selected": "yes"}
    before = len(webhooks.seen("/mutate/selected"))
    # The old object matches: the update is reviewed though the new one drops the label.
    core.patch_namespaced_config_map("labelled", namespace, {"metadata": {"labels": {"webhook": None}}})
    assert len(webhooks.seen("/mutate/selected")) == before + 1


def test_match_conditions_decide_the_call_after_the_selectors(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    pytest.importorskip("celpy", reason="cel-python (the test extra) evaluates matchConditions in the emulator")
    wanted = "has(object.metadata.labels) && 'want' in object.metadata.labels && request.operation == 'CREATE'"
    register("/mutate/conditioned", mutating=True, matchConditions=[{"name": "wants-it", "expression": wanted}])
    assert not core.create_namespaced_config_map(namespace, configmap("unwanted")).metadata.labels
    assert core.create_namespaced_config_map(namespace, configmap("wanted", {"want": "1"})).metadata.labels == \
        {"want": "1", "conditioned": "yes"}
    before = len(webhooks.seen("/mutate/conditioned"))
    core.patch_namespaced_config_map("wanted", namespace, {"data": {"k": "u"}})  # request.operation is UPDATE
    assert len(webhooks.seen("/mutate/conditioned")) == before


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_a_match_condition_that_errs_refuses_under_fail_and_skips_under_ignore(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str,
        policy: str) -> None:
    pytest.importorskip("celpy", reason="cel-python (the test extra) evaluates matchConditions in the emulator")
    erring = [{"name": "no-such-key", "expression": "object.data.missing == 'x'"}]  # no such key: an error
    register("/mutate/erring", mutating=True, failurePolicy=policy, matchConditions=erring)
    before = len(webhooks.seen("/mutate/erring"))
    if policy == "Fail":
        assert api_error(lambda: core.create_namespaced_config_map(namespace, configmap("erring")))[0] == 403
    else:
        assert not core.create_namespaced_config_map(namespace, configmap("erring")).metadata.labels
    assert len(webhooks.seen("/mutate/erring")) == before  # never called either way


# -- failed calls -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_a_webhook_that_is_down_fails_by_its_failure_policy(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str,
        policy: str) -> None:
    name = register("/allow", url=f"https://{WEBHOOK_HOST}:{free_port()}/allow", failurePolicy=policy)
    if policy == "Ignore":
        core.create_namespaced_config_map(namespace, configmap("through"))
        return
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("through")))
    assert code == 500 and status["reason"] == "InternalError"
    assert status["message"].startswith(f'Internal error occurred: failed calling webhook "{name}": ')


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_a_webhook_slower_than_its_timeout_is_a_failed_call(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str, policy: str) -> None:
    name = register("/slow", timeoutSeconds=1, failurePolicy=policy)
    if policy == "Ignore":
        core.create_namespaced_config_map(namespace, configmap("late"))
        return
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("late")))
    assert code == 500 and f'failed calling webhook "{name}"' in status["message"]


def test_a_certificate_the_ca_bundle_does_not_sign_is_refused(
        tmp_path: Path, core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer,
        namespace: str) -> None:
    other = generate_self_signed(tmp_path / "other-ca", ["localhost"])
    assert other.cafile is not None
    name = register("/mutate/never", mutating=True, ca_bundle=base64.b64encode(other.cafile.read_bytes()).decode())
    before = len(webhooks.seen("/mutate/never"))
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("untrusted")))
    assert code == 500 and f'failed calling webhook "{name}"' in status["message"]
    assert len(webhooks.seen("/mutate/never")) == before  # the handshake failed: no review was sent


def test_a_response_for_another_request_is_a_failed_call(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str) -> None:
    name = register("/wrong-uid")
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("mismatched")))
    assert code == 500 and f'failed calling webhook "{name}"' in status["message"]
    assert "uid" in status["message"]


def test_configurations_are_checked_when_written(
        admission: kubernetes.client.AdmissionregistrationV1Api, webhooks: WebhookServer) -> None:
    def configuration(**changes: Any) -> dict[str, Any]:
        webhook = {"name": "check.admission.gpuadmit.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                   "clientConfig": {"url": webhooks.url("/allow")}, **changes}
        return {"metadata": {"name": f"t{uuid.uuid4().hex[:8]}"}, "webhooks": [webhook]}

    for changes, field in (({"name": "unqualified"}, "webhooks[0].name"),
                           ({"clientConfig": {"url": "http://127.0.0.1:1/x"}}, "webhooks[0].clientConfig.url"),
                           ({"sideEffects": "Some"}, "webhooks[0].sideEffects"),
                           ({"timeoutSeconds": 31}, "webhooks[0].timeoutSeconds"),
                           ({"matchConditions": [{"name": "a", "expression": "x"}, {"name": "a", "expression": "y"}]},
                            "webhooks[0].matchConditions[1].name")):
        code, status = api_error(lambda c=changes: admission.create_validating_webhook_configuration(  # type: ignore[misc]
            configuration(**c)))
        assert code == 422 and field in status["message"], status
    if importlib.util.find_spec("celpy") is not None:  # the emulator compiles CEL with cel-python
        code, status = api_error(lambda: admission.create_validating_webhook_configuration(configuration(
            matchConditions=[{"name": "broken", "expression": "object.spec &&& 1"}])))
        assert code == 422 and "webhooks[0].matchConditions[0].expression" in status["message"], status
    stored = admission.create_validating_webhook_configuration(configuration())
    try:
        hook = stored.webhooks[0]
        assert (hook.failure_policy, hook.match_policy, hook.timeout_seconds) == ("Fail", "Equivalent", 10)
    finally:
        admission.delete_validating_webhook_configuration(stored.metadata.name)


# -- kubectl --------------------------------------------------------------------------------------------------

@needs_kubectl
def test_kubectl_prints_the_denial_and_the_mutation(
        kubeconfig: Path, register: Register, namespace: str) -> None:
    name = register("/deny")
    register("/mutate/by-kubectl", mutating=True)
    register("/allow")
    def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return Kubectl(kubeconfig).run("-n", namespace, *args, stdin=stdin)

    refused = kubectl("create", "configmap", "bad-by-kubectl", "--from-literal=k=v")
    assert refused.returncode == 1
    assert f'admission webhook "{name}" denied the request: names starting with bad- are refused' in refused.stderr
    manifest = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
                           "data": {"k": "v"}})
    applied = kubectl("apply", "-f", "-", stdin=manifest)
    assert applied.returncode == 0, applied.stderr
    assert "Warning: configmap looks fine, but be careful" in applied.stderr
    shown = kubectl("get", "configmap", "applied", "-o", "json")
    assert json.loads(shown.stdout)["metadata"]["labels"] == {"by-kubectl": "yes"}


# -- the matcher, and emulator-only set-ups --------------------------------------------------------------------

def test_rules_follow_the_real_matcher_for_subresources_and_scope() -> None:
    def rule(*resources: str, scope: str = "*") -> Rule:
        return Rule(frozenset({"UPDATE"}), frozenset({""}), frozenset({"v1"}),
                    tuple((r.partition("/")[0], r.partition("/")[2]) for r in resources), scope)

    status = Attributes("UPDATE", "", "v1", "pods", "Pod", "status", "team", "p")
    assert rule("pods/status").matches(status, "v1") and rule("pods/*").matches(status, "v1")
    assert rule("*/*").matches(status, "v1") and rule("*/status").matches(status, "v1")
    assert not rule("pods").matches(status, "v1") and not rule("*").matches(status, "v1")
    assert not rule("pods/status", scope="Cluster").matches(status, "v1")
    assert not rule("pods/status").matches(status, "v2")
    namespace = Attributes("UPDATE", "", "v1", "namespaces", "Namespace", "", "team", "team")
    assert rule("namespaces", scope="Cluster").matches(namespace, "v1")
    assert not rule("namespaces", scope="Namespaced").matches(namespace, "v1")


@requires_emulator
@pytest.mark.parametrize("policy", ["Equivalent", "Exact"])
def test_an_equivalent_version_is_matched_and_sent_in_the_webhooks_version(
        tmp_path: Path, webhooks: WebhookServer, policy: str) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                    "versions": [{"name": name, "served": True, "storage": name == "v1", "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}} for name in ("v1", "v2")]}}
    with EmulatedApiServer(crd_objects=[crd]) as url:
        client = kubernetes.config.new_client_from_config(config_file=str(write_kubeconfig(url, tmp_path / "kc")))
        kubernetes.client.AdmissionregistrationV1Api(client).create_mutating_webhook_configuration({
            "metadata": {"name": "widgets"}, "webhooks": [{
                "name": "widgets.admission.gpuadmit.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "matchPolicy": policy, "clientConfig": {"url": webhooks.url("/mutate/widget"),
                                                        "caBundle": webhooks.ca_bundle},
                "rules": [{"apiGroups": ["example.com"], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["widgets"]}]}]})
        before = len(webhooks.seen("/mutate/widget"))
        created = kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object(
            "example.com", "v2", "default", "widgets", {"apiVersion": "example.com/v2", "kind": "Widget",
                                                        "metadata": {"name": "w"}})
        calls = webhooks.seen("/mutate/widget")[before:]
        if policy == "Exact":
            assert not calls and "labels" not in created["metadata"]
            return
        assert created["apiVersion"] == "example.com/v2" and created["metadata"]["labels"] == {"widget": "yes"}
        assert calls[0]["resource"]["version"] == "v1" and calls[0]["requestResource"]["version"] == "v2"
        assert calls[0]["object"]["apiVersion"] == "example.com/v1"


# -- emulator only: services routed to a host ------------------------------------------------------------------

@requires_emulator
def test_a_service_webhook_is_reached_through_its_route(tmp_path: Path) -> None:
    with WebhookServer(tmp_path / "certs", ("hooks.tests.svc",)) as hooks:
        routes = {"tests/hooks": f"127.0.0.1:{hooks.port}"}
        with EmulatedApiServer(webhook_services=routes) as url:
            client = kubernetes.config.new_client_from_config(
                config_file=str(write_kubeconfig(url, tmp_path / "kubeconfig")))
            core = kubernetes.client.CoreV1Api(client)
            admission = kubernetes.client.AdmissionregistrationV1Api(client)
            rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]
            admission.create_mutating_webhook_configuration({"metadata": {"name": "routed"}, "webhooks": [
                {"name": "routed.admission.gpuadmit.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "rules": rules, "clientConfig": {"service": {"namespace": "tests", "name": "hooks",
                                                              "path": "/mutate/routed"},
                                                  "caBundle": hooks.ca_bundle}},
                {"name": "unrouted.admission.gpuadmit.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "rules": rules, "failurePolicy": "Ignore",
                 "clientConfig": {"service": {"namespace": "tests", "name": "elsewhere"}}},
            ]})
            created = core.create_namespaced_config_map("default", configmap("routed"))
            assert created.metadata.labels == {"routed": "yes"}
            assert eventually(lambda: hooks.seen("/mutate/routed"))
            stored = admission.read_mutating_webhook_configuration("routed")
            assert stored.webhooks[0].client_config.service.port == 443  # defaulted, as the real server does


def test_the_webhook_service_flag_names_a_route_or_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from kubeapi_emulator.__main__ import main, webhook_services

    assert webhook_services(["gpuadmit/gpuadmit-webhook=127.0.0.1:9443"]) == \
        {"gpuadmit/gpuadmit-webhook": "127.0.0.1:9443"}
    for bad in ("gpuadmit-webhook=127.0.0.1:9443", "gpuadmit/webhook=127.0.0.1", "gpuadmit/webhook"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--webhook-service", bad])
        assert exit_info.value.code == 2
        assert "expected NAMESPACE/NAME=HOST:PORT" in capsys.readouterr().err


@requires_emulator
def test_a_binding_is_admitted_as_a_create_of_pods_binding(tmp_path: Path, webhooks: WebhookServer) -> None:
    with EmulatedApiServer(scheduler=False) as url:
        client = kubernetes.config.new_client_from_config(config_file=str(write_kubeconfig(url, tmp_path / "kc")))
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespaced_pod("default", pod("unbound", spec={"nodeName": None}))
        kubernetes.client.AdmissionregistrationV1Api(client).create_validating_webhook_configuration({
            "metadata": {"name": "bindings"}, "webhooks": [{
                "name": "bindings.admission.gpuadmit.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"url": webhooks.url("/deny-plain"), "caBundle": webhooks.ca_bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods/binding"]}]}]})
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "unbound"},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}}
        status, body, _ = raw(client, "POST", "/api/v1/namespaces/default/pods/unbound/binding", binding)
        assert status == 400 and body["message"].endswith("denied the request: not today")
        review = webhooks.seen("/deny-plain")[-1]
        assert (review["kind"]["kind"], review["subResource"], review["object"]["target"]["name"]) == \
            ("Binding", "binding", "node-a")
        assert not core.read_namespaced_pod("unbound", "default").spec.node_name


@requires_emulator
def test_an_update_whose_object_changes_while_its_webhooks_answer_starts_again(
        tmp_path: Path, webhooks: WebhookServer) -> None:
    """The real server's optimistic retry: the patch is applied again to what is stored now, and
    the webhooks see that; nothing written meanwhile is lost."""
    emulator = EmulatedApiServer()
    with emulator as url:
        client = kubernetes.config.new_client_from_config(config_file=str(write_kubeconfig(url, tmp_path / "kc")))
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespaced_config_map("default", configmap("raced"))
        kubernetes.client.AdmissionregistrationV1Api(client).create_validating_webhook_configuration({
            "metadata": {"name": "slow"}, "webhooks": [{
                "name": "slow.admission.gpuadmit.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"url": webhooks.url("/slow"), "caBundle": webhooks.ca_bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                           "resources": ["configmaps"]}]}]})
        before = len(webhooks.seen("/slow"))
        patched: list[Any] = []
        writer = threading.Thread(target=lambda: patched.append(
            core.patch_namespaced_config_map("raced", "default", {"data": {"k": "patched"}})))
        writer.start()
        eventually(lambda: len(webhooks.seen("/slow")) > before)
        spec = emulator.handler.spec_for("", "v1", "configmaps")
        emulator.call(lambda: emulator.handler.store.update(  # around the API: no webhook sees this write
            spec, "default", "raced", lambda obj: {**obj, "data": {**obj["data"], "other": "meanwhile"}}))
        writer.join(30)
        assert patched and patched[0].data == {"k": "patched", "other": "meanwhile"}
        reviews = webhooks.seen("/slow")[before:]
        assert len(reviews) == 2 and reviews[1]["oldObject"]["data"] == {"k": "v", "other": "meanwhile"}
