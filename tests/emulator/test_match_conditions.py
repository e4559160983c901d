"""Admission webhooks' ``matchConditions`` (CEL), as kube-apiserver 1.30+ evaluates them: after the
rules and selectors, over ``object``, ``oldObject`` and ``request``; any false condition skips the
webhook (so its failurePolicy never applies), an evaluation error (none false) refuses the request
with 403 ``... is forbidden: expression '...' resulted in error: ...`` under Fail and skips the
webhook under Ignore; a configuration whose conditions are too many, badly named, duplicated, or
do not compile to a bool is refused when written (422 naming the field).

Every test holds on a real cluster too (``GPUADMIT_E2E_KUBECONFIG``, ``GPUADMIT_E2E_WEBHOOK_HOST``):
the configurations are scoped to the test's namespace, and a webhook "down" is a URL on a free port.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from gpuadmit.controller.webhook_configs import asks_for_gpus_condition, webhook_configurations
from gpuadmit.core.native import MANAGED_LABEL
from tests.kubectl_driver import Kubectl

from . import test_admission as admission_tests
from .conftest import api_error, pod, requires_emulator
from .test_admission import WEBHOOK_HOST, Register, WebhookServer, configmap, free_port, needs_kubectl

# The admission tests' webhook server and registration helper, as fixtures here too.
webhooks = admission_tests.webhooks
admission = admission_tests.admission
register = admission_tests.register

pytestmark = [pytest.mark.emulator]

POD_RULE = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
            "scope": "Namespaced"}
ASKS_FOR_GPUS = asks_for_gpus_condition("object.spec")


def gpu_pod(name: str, gpus: int = 1) -> dict[str, Any]:
    return pod(name, spec={"containers": [{"name": "main", "image": "busybox",
                                           "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]})


def down_url() -> str:
    return f"https://{WEBHOOK_HOST}:{free_port()}/allow"  # nothing listens there


# -- which requests reach the webhook --------------------------------------------------------------------

def test_a_webhook_is_called_only_for_the_objects_its_conditions_match(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    register("/mutate/gpu-seen", mutating=True, rules=[POD_RULE],
             matchConditions=[{"name": "asks-for-nvidia-gpu", "expression": ASKS_FOR_GPUS}])
    before = len(webhooks.seen("/mutate/gpu-seen"))
    assert not core.create_namespaced_pod(namespace, pod("cpu")).metadata.labels
    assert core.create_namespaced_pod(namespace, gpu_pod("gpu")).metadata.labels == {"gpu-seen": "yes"}
    assert [review["name"] for review in webhooks.seen("/mutate/gpu-seen")[before:]] == ["gpu"]


def test_every_condition_must_hold(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    register("/mutate/both", mutating=True, matchConditions=[
        {"name": "labelled", "expression": "has(object.metadata.labels) && 'team' in object.metadata.labels"},
        {"name": "example.com/not-scratch", "expression": "!object.metadata.name.startsWith('scratch-')"}])
    assert not core.create_namespaced_config_map(namespace, configmap("unlabelled")).metadata.labels
    assert core.create_namespaced_config_map(namespace, configmap("scratch-a", {"team": "a"})).metadata.labels == \
        {"team": "a"}
    assert core.create_namespaced_config_map(namespace, configmap("kept", {"team": "a"})).metadata.labels == \
        {"team": "a", "both": "yes"}


def test_the_variables_are_the_objects_and_the_request(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    """``oldObject`` is null on CREATE, ``object`` null on DELETE; ``request`` carries the
    operation, namespace, name, kind and resource of the request, and the user."""
    update_rule = {**POD_RULE, "resources": ["configmaps"], "operations": ["CREATE", "UPDATE", "DELETE"]}
    register("/allow", rules=[update_rule], matchConditions=[{"name": "changed-data", "expression":
             "oldObject != null && object != null && object.data.k != oldObject.data.k"}])
    register("/deny-plain", rules=[update_rule], matchConditions=[{"name": "a-delete", "expression": (
        f"object == null && oldObject.metadata.name == 'doomed' && request.operation == 'DELETE' && "
        f"request.namespace == '{namespace}' && request.name == 'doomed' && request.kind.kind == 'ConfigMap' && "
        f"request.resource.resource == 'configmaps' && request.resource.version == 'v1' && "
        f"request.dryRun == false && has(request.userInfo.username)")}])
    before = len(webhooks.seen("/allow"))
    core.create_namespaced_config_map(namespace, configmap("watched"))
    core.patch_namespaced_config_map("watched", namespace, {"metadata": {"labels": {"only": "labels"}}})
    assert len(webhooks.seen("/allow")) == before  # a CREATE (no oldObject), then data unchanged
    core.patch_namespaced_config_map("watched", namespace, {"data": {"k": "changed"}})
    assert [review["operation"] for review in webhooks.seen("/allow")[before:]] == ["UPDATE"]
    core.create_namespaced_config_map(namespace, configmap("doomed"))
    core.delete_namespaced_config_map("watched", namespace)  # another name: not refused
    code, status = api_error(lambda: core.delete_namespaced_config_map("doomed", namespace))
    assert code == 400 and status["message"].endswith("denied the request: not today")


def test_the_authorizer_answers_for_the_requesting_user(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str) -> None:
    """The emulator's user (and, on a real cluster, a test user that may create configmaps and
    webhook configurations) is allowed what these checks ask."""
    register("/mutate/authorized", mutating=True, matchConditions=[
        {"name": "may-create", "expression": "authorizer.requestResource.check('create').allowed()"},
        {"name": "may-read", "expression": f"authorizer.group('').resource('configmaps').namespace('{namespace}')"
                                           ".check('get').allowed()"},
        {"name": "not-errored", "expression": "authorizer.requestResource.check('create').errored() == false"}])
    assert core.create_namespaced_config_map(namespace, configmap("authorized")).metadata.labels == \
        {"authorized": "yes"}


# -- a false condition spares the failure policy; an error meets it -------------------------------------

def test_a_false_condition_skips_a_webhook_that_is_down_even_under_fail(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str) -> None:
    name = register("/allow", url=down_url(), failurePolicy="Fail",
                    matchConditions=[{"name": "held-only", "expression": "object.metadata.name.startsWith('held-')"}])
    core.create_namespaced_config_map(namespace, configmap("free-1"))  # not called, so not failed
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("held-1")))
    assert code == 500 and status["message"].startswith(f'Internal error occurred: failed calling webhook "{name}": ')


def test_an_evaluation_error_refuses_under_fail_with_the_servers_words(
        core: kubernetes.client.CoreV1Api, register: Register, webhooks: WebhookServer, namespace: str) -> None:
    expression = "object.data.missing == 'x'"
    register("/mutate/never", mutating=True, failurePolicy="Fail",
             matchConditions=[{"name": "reads-a-missing-key", "expression": expression}])
    before = len(webhooks.seen("/mutate/never"))
    code, status = api_error(lambda: core.create_namespaced_config_map(namespace, configmap("erring")))
    assert (code, status["reason"]) == (403, "Forbidden")
    assert status["message"] == f'configmaps "erring" is forbidden: expression \'{expression}\' resulted in error: ' \
                                "no such key: missing"
    assert len(webhooks.seen("/mutate/never")) == before
    with pytest.raises(kubernetes.client.ApiException):
        core.read_namespaced_config_map("erring", namespace)  # nothing stored


def test_an_evaluation_error_under_ignore_skips_the_webhook(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str) -> None:
    register("/allow", url=down_url(), failurePolicy="Ignore",
             matchConditions=[{"name": "reads-a-missing-key", "expression": "object.data.missing == 'x'"}])
    assert core.create_namespaced_config_map(namespace, configmap("through")).metadata.name == "through"


def test_a_false_condition_wins_over_an_error(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str) -> None:
    register("/allow", url=down_url(), failurePolicy="Fail", matchConditions=[
        {"name": "errs", "expression": "object.data.missing == 'x'"},
        {"name": "false", "expression": "object.metadata.name == 'someone-else'"}])
    core.create_namespaced_config_map(namespace, configmap("spared"))


# -- configurations checked when written ------------------------------------------------------------------

@pytest.mark.parametrize(("conditions", "field", "words"), [
    ([{"name": "broken", "expression": "object.spec &&& 1"}], "webhooks[0].matchConditions[0].expression",
     "compilation failed: ERROR: <input>:1:"),
    ([{"name": "typo", "expression": "objct.metadata.name == 'a'"}], "webhooks[0].matchConditions[0].expression",
     "undeclared reference to 'objct'"),
    ([{"name": "dynamic", "expression": "object.metadata.name"}], "webhooks[0].matchConditions[0].expression",
     "must evaluate to bool"),
    ([{"name": "blank", "expression": "  "}], "webhooks[0].matchConditions[0].expression", "Required value"),
    ([{"name": "Not A Name", "expression": "true"}], "webhooks[0].matchConditions[0].name", "name part must"),
    ([{"name": "same", "expression": "true"}, {"name": "same", "expression": "false"}],
     "webhooks[0].matchConditions[1].name", 'Duplicate value: "same"'),
    ([{"name": f"c{i}", "expression": "true"} for i in range(65)], "webhooks[0].matchConditions",
     "Too many: 65: must have at most 64 items"),
])
def test_a_configuration_with_bad_conditions_is_refused(
        admission: kubernetes.client.AdmissionregistrationV1Api, webhooks: WebhookServer,
        conditions: list[dict[str, str]], field: str, words: str) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    body = {"metadata": {"name": name}, "webhooks": [{
        "name": f"{name}.admission.gpuadmit.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "clientConfig": {"url": webhooks.url("/allow"), "caBundle": webhooks.ca_bundle},
        "rules": [{**POD_RULE, "resources": ["configmaps"]}],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "no-such-namespace"}},
        "matchConditions": conditions}]}
    code, status = api_error(lambda: admission.create_mutating_webhook_configuration(body))
    assert (code, status["reason"]) == (422, "Invalid"), status
    assert f"{field}: " in status["message"] and words in status["message"], status["message"]
    assert any(cause["field"] == field for cause in status["details"]["causes"])


def test_an_update_that_breaks_a_condition_is_refused(
        admission: kubernetes.client.AdmissionregistrationV1Api, register: Register) -> None:
    name = register("/allow", matchConditions=[{"name": "fine", "expression": "true"}])
    configuration = name.split(".")[0]
    broken = [{"op": "replace", "path": "/webhooks/0/matchConditions/0/expression", "value": "object.("}]
    code, status = api_error(lambda: admission.patch_validating_webhook_configuration(configuration, broken))
    assert code == 422 and "webhooks[0].matchConditions[0].expression" in status["message"]
    stored = admission.read_validating_webhook_configuration(configuration)
    assert stored.webhooks[0].match_conditions[0].expression == "true"


# -- the operator's own configurations ---------------------------------------------------------------------

@pytest.fixture()
def operator_webhooks_down(admission: kubernetes.client.AdmissionregistrationV1Api, webhooks: WebhookServer,
                           core: kubernetes.client.CoreV1Api, namespace: str) -> Iterator[str]:
    """The operator's configurations (webhook_configs, as ``--manage-webhook-configurations``
    writes them; failurePolicy Fail) pointing at a webhook server that is down, with this test's
    namespace managed. The namespaceSelector is narrowed to this namespace so that on a real
    cluster no other managed namespace is touched; the rules and the GPU condition are the operator's."""
    core.patch_namespace(namespace, {"metadata": {"labels": {MANAGED_LABEL: "true"}}})
    name = f"t{uuid.uuid4().hex[:8]}"
    (validating, mutating) = webhook_configurations(f"https://{WEBHOOK_HOST}:{free_port()}", webhooks.ca_bundle,
                                                    name=name)
    assert validating["kind"] == "ValidatingWebhookConfiguration"
    for webhook in mutating["webhooks"]:
        if "namespaceSelector" in webhook:
            webhook["namespaceSelector"]["matchExpressions"].append(
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]})
    assert [w["name"] for w in mutating["webhooks"] if w.get("matchConditions")] == \
        ["mutate.jobs.gpuadmit.io", "mutate.pods.gpuadmit.io"]
    admission.create_mutating_webhook_configuration(mutating)
    yield namespace
    admission.delete_mutating_webhook_configuration(name)


def test_the_operators_conditions_let_cpu_pods_and_jobs_through_while_it_is_down(
        cluster: kubernetes.client.ApiClient, core: kubernetes.client.CoreV1Api, operator_webhooks_down: str) -> None:
    namespace = operator_webhooks_down
    created = core.create_namespaced_pod(namespace, pod("cpu"))
    assert not created.spec.scheduling_gates  # not held: the webhook was not called
    code, status = api_error(lambda: core.create_namespaced_pod(namespace, gpu_pod("gpu")))
    assert code == 500 and 'failed calling webhook "mutate.pods.gpuadmit.io"' in status["message"]
    batch = kubernetes.client.BatchV1Api(cluster)
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}
    cpu_job = {"metadata": {"name": "cpu-job"}, "spec": {"suspend": True, "template": template}}
    assert batch.create_namespaced_job(namespace, cpu_job).metadata.name == "cpu-job"
    template["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "1"},
                                                      "limits": {"nvidia.com/gpu": "1"}}
    gpu_job = {"metadata": {"name": "gpu-job"}, "spec": {"suspend": True, "template": template}}
    code, status = api_error(lambda: batch.create_namespaced_job(namespace, gpu_job))
    assert code == 500 and 'failed calling webhook "mutate.jobs.gpuadmit.io"' in status["message"]


@needs_kubectl
def test_kubectl_creates_a_cpu_pod_and_is_refused_a_gpu_pod_while_the_operator_is_down(
        kubeconfig: Path, operator_webhooks_down: str) -> None:
    def apply(manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return Kubectl(kubeconfig).run("-n", operator_webhooks_down, "apply", "-f", "-", stdin=json.dumps(manifest))

    applied = apply(pod("cpu-by-kubectl"))
    assert applied.returncode == 0 and "pod/cpu-by-kubectl created" in applied.stdout, applied.stderr
    refused = apply(gpu_pod("gpu-by-kubectl"))
    assert refused.returncode == 1
    assert 'Internal error occurred: failed calling webhook "mutate.pods.gpuadmit.io"' in refused.stderr


# -- the compiler's checks and the evaluation, without a server ------------------------------------------

@pytest.mark.parametrize("expression", [
    ASKS_FOR_GPUS, asks_for_gpus_condition("object.spec.template.spec"), "has(object.metadata.labels)",
    "object.metadata.name == 'a'", "!has(object.spec)", "request.dryRun", "object.a ? true : false",
    "object.metadata.labels.all(k, k.startsWith('a'))", "size(object.spec.containers) > 1",
    "namespaceObject.metadata.name == 'a'", "(object.x == 1) || (oldObject.x == 1)",
])
def test_expressions_the_real_compiler_accepts_compile(expression: str) -> None:
    from kubeapi_emulator.cel import compile_expression

    compile_expression(expression)


@pytest.mark.parametrize(("expression", "words"), [
    ("object.metadata.name", "must evaluate to bool"), ("1 + 1", "must evaluate to bool"),
    ("object.spec.containers.map(c, c.name)", "must evaluate to bool"), ("request.name", "must evaluate to bool"),
    ("params.x == 1", "undeclared reference to 'params'"), ("c.name == 'a'", "undeclared reference to 'c'"),
    ("object.(", "Syntax error"),
])
def test_expressions_the_real_compiler_refuses_do_not_compile(expression: str, words: str) -> None:
    from kubeapi_emulator.cel import CompileError, compile_expression

    with pytest.raises(CompileError, match=words.replace("(", r"\(")):
        compile_expression(expression)


def test_equality_across_types_is_false_not_an_error() -> None:
    from kubeapi_emulator.cel import compile_conditions, evaluate

    def result(expression: str) -> Any:
        return evaluate(compile_conditions([{"name": "c", "expression": expression}]), {"data": {"k": "v"}}, None, {})

    assert result("object != null && oldObject == null").matches
    assert result("object.data.k == 1").failed_condition == "c"
    assert result("namespaceObject == null").error == "expression 'namespaceObject == null' resulted in error: " \
                                                      "no such attribute(s): namespaceObject"


@requires_emulator
def test_an_expression_is_compiled_once_not_per_request(
        core: kubernetes.client.CoreV1Api, register: Register, namespace: str) -> None:
    from kubeapi_emulator.cel import compile_expression

    expression = f"object.metadata.name != '{uuid.uuid4().hex}'"  # text no other test compiles
    misses = compile_expression.cache_info().misses
    register("/allow", matchConditions=[{"name": "unique", "expression": expression}])
    for index in range(3):
        core.create_namespaced_config_map(namespace, configmap(f"c{index}"))
    assert compile_expression.cache_info().misses == misses + 1
