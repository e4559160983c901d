"""Admission webhooks for GPUWorkloads: thin kopf handlers over ``core.validation``.

Importing this module registers two handlers on kopf's default registry; kopf
serves each on the path named by its handler id:

- ``POST /validate-gpuworkload``: CREATE and UPDATE, refuses what the CRD schema
  cannot express (``validate_workload``), including templates ``core.podsecurity`` refuses
  at ``--pod-security-level`` or the namespace's stricter enforce label (read from the
  operator's cache of Namespaces), and warns about products no node has;
- ``POST /mutate-gpuworkload``: CREATE and UPDATE, sets the ``gpuadmit.io/class``
  label and the spec defaults (``mutate_workload``).

Two more are answered by ``AdmissionServer`` itself, before kopf (they are not kopf handlers: kopf
would need Jobs and pods in its resource scan, and would answer a crash with its own 500):

- ``POST /mutate-job``: CREATE of a batch/v1 Job (or a Kubeflow PyTorchJob, a KubeRay RayJob) in a
  managed namespace, suspended when a pod template asks for GPUs (``core.holds.job_hold``);
- ``POST /mutate-pod``: CREATE of a pod in a managed namespace, gated with
  ``gpuadmit.io/admission`` when it asks for GPUs (``core.holds.pod_hold``).

``configure_webhook_server`` points kopf at an HTTPS server on ``--webhook-port``
with the certificate from ``--webhook-cert-dir`` (or a generated one). The
Validating/MutatingWebhookConfiguration objects come from the Helm chart, not
from kopf (``settings.admission.managed`` stays None): the operator's service
account then needs no rights on admissionregistration; or, with
``--manage-webhook-configurations``, from the operator itself (``webhook_registration``).
See docs/webhooks.md.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import aiohttp.web
import kopf
from kopf._core.engines import admission as kopf_admission  # the errors kopf's own server maps to HTTP codes

from gpuadmit.controller.webhook_configs import (
    MUTATE_GPUWORKLOAD_PATH,
    MUTATE_JOB_PATH,
    MUTATE_POD_PATH,
    VALIDATE_GPUWORKLOAD_PATH,
)
from gpuadmit.controller.webhook_registration import Registrar, operator_namespace
from gpuadmit.core.holds import Hold, job_hold, pod_hold, pytorchjob_hold, rayjob_hold
from gpuadmit.core.model import API_GROUP, API_VERSION
from gpuadmit.core.podsecurity import DEFAULT_LEVEL, PodSecurity, namespace_rules
from gpuadmit.core.validation import mutate_workload, validate_workload
from gpuadmit.inputs import InputError, decode_utf8, load_json
from gpuadmit.tlsutil import TlsFiles, find_tls_files, generate_self_signed

logger = logging.getLogger(__name__)

PLURAL = "gpuworkloads"
VALIDATE_ID = VALIDATE_GPUWORKLOAD_PATH.lstrip("/")  # kopf serves a handler on /<its id>
MUTATE_ID = MUTATE_GPUWORKLOAD_PATH.lstrip("/")
# The native-workload webhooks: path id -> the (API group, resource) it holds and how.
NATIVE_HOLDS: dict[str, tuple[tuple[str, str], Callable[[object], Hold]]] = {
    MUTATE_JOB_PATH.lstrip("/"): (("batch", "jobs"), job_hold),
    MUTATE_POD_PATH.lstrip("/"): (("", "pods"), pod_hold),
}
# Kubeflow PyTorchJobs and KubeRay RayJobs are suspended like Jobs, through /mutate-job (the hold
# is chosen by the request's resource; webhook_configs sends them there).
_HOLD_BY_RESOURCE = {**dict(NATIVE_HOLDS.values()), ("kubeflow.org", "pytorchjobs"): pytorchjob_hold,
                     ("ray.io", "rayjobs"): rayjob_hold}
OPERATIONS: list[Literal["CREATE", "UPDATE"]] = ["CREATE", "UPDATE"]
# 422 Unprocessable Entity: the code the API server itself answers for an invalid object.
REFUSAL_CODE = 422
DEFAULT_WEBHOOK_ADDR = "0.0.0.0"
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Deepest JSON nesting an AdmissionReview may have. A GPUWorkload's deepest real field (a node
# affinity's match expression values) sits about 15 levels down; past a few hundred, the copies
# and diffs made of the object on its way to the handlers run out of Python's recursion limit.
MAX_REVIEW_DEPTH = 100

# Returns the nvidia.com/gpu.product values the cluster's nodes have, or None when
# not known yet (then no warning is given). The operator's cache supplies it.
KnownProductsProvider = Callable[[], Iterable[str] | None]
_known_products_provider: KnownProductsProvider | None = None


def set_known_products_provider(provider: KnownProductsProvider | None) -> None:
    """Tell the validating webhook where to look up node products (None: no product warnings)."""
    global _known_products_provider
    _known_products_provider = provider


set_product_provider = set_known_products_provider  # the name handlers.py wires the runtime's cache with

# Returns the Namespace object of that name, or None when not known (the operator's cache).
NamespaceProvider = Callable[[str], Mapping[str, Any] | None]
_namespace_provider: NamespaceProvider | None = None
_pod_security_level = DEFAULT_LEVEL


def set_namespace_provider(provider: NamespaceProvider | None) -> None:
    """Tell the validating webhook where to read a namespace's pod-security label and allowances."""
    global _namespace_provider
    _namespace_provider = provider


def set_pod_security_level(level: str) -> None:
    """The configured Pod Security Standards level (``--pod-security-level``)."""
    global _pod_security_level
    _pod_security_level = level


def pod_security_for(namespace: str) -> PodSecurity:
    """The rules for a workload of ``namespace``: the configured level, tightened and extended by
    the Namespace object when the cache has it. An unknown namespace (not cached yet, provider
    failing) gets the configured level and no allowances: the engine judges the workload again
    with its own cache before admitting it, so nothing the namespace forbids gets through."""
    namespace_obj = None
    if _namespace_provider is not None:
        try:
            namespace_obj = _namespace_provider(namespace)
        except Exception:  # a lookup failure means "unknown", judged by the level alone (logged)
            logger.exception("The namespace provider failed; judging %s by the configured level alone.", namespace)
    rules = namespace_rules(namespace_obj, _pod_security_level)
    return PodSecurity(level=_pod_security_level, by_namespace={namespace: rules})


def known_products() -> frozenset[str] | None:
    """The provider's answer; a failing provider means "unknown", never a failed admission."""
    if _known_products_provider is None:
        return None
    try:
        products = _known_products_provider()
    except Exception:  # a warning is not worth refusing a workload over (logged with its traceback)
        logger.exception("The node-product provider failed; admitting without product warnings.")
        return None
    # Empty means "not known": a standby replica (kopf peering) serves webhooks with an empty
    # cache, and warning about every product there would be noise, not news.
    return frozenset(products) if products else None


@kopf.on.validate(API_GROUP, API_VERSION, PLURAL, id=VALIDATE_ID, operations=OPERATIONS)
def validate_gpuworkload(
    *, body: kopf.Body, warnings: list[str], old: kopf.Body | None = None, operation: str | None = None, **_: Any
) -> None:
    """Refuse with the field named (AdmissionError, code 422); add warnings otherwise."""
    stored = _plain(old) if operation == "UPDATE" and old is not None else None
    namespace = (body.get("metadata") or {}).get("namespace") or "default"
    result = validate_workload(_plain(body), stored, known_products(), pod_security_for(str(namespace)))
    if not result.allowed:
        raise kopf.AdmissionError(f"[{result.reason}] {result.message}", code=REFUSAL_CODE)
    warnings.extend(result.warnings)


@kopf.on.mutate(API_GROUP, API_VERSION, PLURAL, id=MUTATE_ID, operations=OPERATIONS)
def mutate_gpuworkload(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Add the class label and the defaults; kopf turns the change into the response's JSONPatch."""
    ops = mutate_workload(_plain(body))
    if ops:
        patch.fns.append(lambda raw_body: _apply_add_ops(raw_body, ops))


def _apply_add_ops(raw_body: kopf.RawBody, ops: list[dict[str, Any]]) -> None:
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target: Any = raw_body  # nested dicts, whatever the path names
        for part in parts[:-1]:
            target = target[part]
        target[parts[-1]] = json.loads(json.dumps(op["value"]))  # a copy the body owns


def _plain(body: Mapping[str, Any] | None) -> dict[str, Any]:
    """A kopf Body as the plain dict the pure core reads."""
    return json.loads(json.dumps(dict(body or {}), default=str))


class MalformedReview(ValueError):
    """A request body that is not a well-formed AdmissionReview; the text is one line, for the log."""


def parse_admission_review(body: bytes) -> dict[str, Any]:
    """The AdmissionReview in a request body, checked as far as kopf relies on it to answer.

    Raises ``MalformedReview`` naming the first problem; never anything else.
    """
    try:
        review = load_json(decode_utf8(body, "the body"), "the body")
    except InputError as error:
        raise MalformedReview(str(error)) from None
    if _nesting_depth(review) > MAX_REVIEW_DEPTH:
        raise MalformedReview(f"the body is nested deeper than {MAX_REVIEW_DEPTH} levels")
    if not isinstance(review, dict):
        raise MalformedReview(f"the body must be an AdmissionReview object, got {_json_type(review)}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise MalformedReview(f"request: must be an object, got {_json_type(request)}")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise MalformedReview(f"request.uid: must be a non-empty string, got {_json_type(request.get('uid'))}")
    resource = request.get("resource")
    if not isinstance(resource, dict) or not all(isinstance(resource.get(key), str) for key in ("group", "version", "resource")):
        raise MalformedReview("request.resource: must be an object of strings group, version and resource")
    for key in ("operation", "subResource"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise MalformedReview(f"request.{key}: must be a string, got {_json_type(request[key])}")
    if not isinstance(request.get("userInfo"), dict):
        raise MalformedReview(f"request.userInfo: must be an object, got {_json_type(request.get('userInfo'))}")
    for key in ("object", "oldObject"):
        if request.get(key) is not None and not isinstance(request[key], dict):
            raise MalformedReview(f"request.{key}: must be an object or null, got {_json_type(request[key])}")
        metadata = (request.get(key) or {}).get("metadata")
        if metadata is not None and not isinstance(metadata, dict):  # kopf reads it before any handler
            raise MalformedReview(f"request.{key}.metadata: must be an object, got {_json_type(metadata)}")
    if request.get("object") is None and request.get("oldObject") is None:
        raise MalformedReview("request.object and request.oldObject: both are missing")
    return review


def _nesting_depth(value: object) -> int:
    """How deep lists and objects nest in ``value``, without recursion (``1`` for a flat object)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_REVIEW_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def answer_native_review(review: Mapping[str, Any], webhook: str) -> dict[str, Any]:
    """The AdmissionReview answer of ``/mutate-job`` or ``/mutate-pod`` for a parsed review.

    The object's kind is taken from ``request.resource``, not from the path, so a configuration
    that sends pods to ``/mutate-job`` still gates them. Allowed without a patch: anything but a
    CREATE of a Job or pod (the configurations send nothing else), and objects the API server will
    refuse anyway (``core.holds`` gives them no patch). If deciding fails all the same (a bug), the
    request is refused: an answer of "allowed" could let a GPU pod run without gpuadmit.
    """
    request = review["request"]
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    answer = {"apiVersion": review.get("apiVersion") or "admission.k8s.io/v1",
              "kind": review.get("kind") or "AdmissionReview", "response": response}
    resource = request["resource"]
    hold_fn = _HOLD_BY_RESOURCE.get((resource["group"], resource["resource"]))
    if hold_fn is None or request.get("subResource") or request.get("operation") != "CREATE":
        if hold_fn is None:
            logger.warning("/%s was sent a %s/%s request: not a Job or a pod, allowed untouched (check the "
                           "webhook configuration's rules)", webhook, resource["group"], resource["resource"])
        return answer
    try:
        hold = hold_fn(request.get("object"))
        patch = base64.b64encode(json.dumps(hold.patch).encode()).decode("ascii") if hold.patch else ""
    except Exception as error:  # noqa: BLE001 - refused, with one log line: never let a GPU object through unheld
        logger.error("Could not decide whether to hold a %s on /%s (%s: %s); refused it",
                     resource["resource"], webhook, type(error).__name__, str(error)[:200])
        response.update(allowed=False, status={
            "code": 500, "reason": "InternalError",
            "message": "[HoldFailed] gpuadmit could not decide whether this object asks for GPUs, so it was "
                       "refused rather than let through unheld; retry, and see the operator's log",
        })
        return answer
    if not hold.allowed:
        response.update(allowed=False, status={
            "code": REFUSAL_CODE, "reason": "Invalid", "message": f"[{hold.reason}] {hold.field}: {hold.message}",
        })
    elif patch:
        response.update(patchType="JSONPatch", patch=patch)
    return answer


class AdmissionServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server that answers a malformed AdmissionReview 400 with one log line,
    answers the native-workload webhooks itself, and reports where it listens.

    kopf's own ``_serve`` lets anything but a JSON syntax error end in a 500 with a traceback;
    this one parses and checks the review first, and keeps kopf's mapping of its own errors.
    ``on_client_config``, when set, is called with each client config (URL and CA bundle) the
    server yields: at start, and after kopf reloads a renewed certificate.
    """

    on_client_config: Callable[[Mapping[str, Any]], None] | None = None
    registrar: Registrar | None = None  # with --manage-webhook-configurations

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for client_config in super().__call__(fn):
            if self.on_client_config is not None:
                self.on_client_config(client_config)
            yield client_config

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        webhook = request.match_info.get("id")
        try:
            review = parse_admission_review(await request.read())
        except MalformedReview as error:
            logger.warning("Refused a malformed AdmissionReview on /%s from %s: %s", webhook, request.remote, error)
            raise aiohttp.web.HTTPBadRequest(text=f"malformed AdmissionReview: {error}") from None
        if webhook in NATIVE_HOLDS:
            return aiohttp.web.json_response(answer_native_review(review, webhook))
        headers = dict(request.headers)
        sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
        try:
            response = await fn(review, webhook=webhook, sslpeer=sslpeer, headers=headers)
        except kopf_admission.AmbiguousResourceError as error:
            raise aiohttp.web.HTTPConflict(text=str(error)) from None
        except kopf_admission.UnknownResourceError as error:
            raise aiohttp.web.HTTPNotFound(text=str(error)) from None
        except kopf_admission.WebhookError as error:
            logger.warning("Refused an AdmissionReview on /%s from %s: %s", webhook, request.remote, error)
            raise aiohttp.web.HTTPBadRequest(text=str(error)) from None
        except Exception as error:  # noqa: BLE001 - one line per request, never a traceback per request
            logger.error("Could not answer an AdmissionReview on /%s: %s: %s", webhook, type(error).__name__, str(error)[:200])
            raise aiohttp.web.HTTPInternalServerError(text="the admission webhook failed; see the operator's log") from None
        return aiohttp.web.json_response(response)


def configure_webhook_server(settings: kopf.OperatorSettings, args: Any) -> kopf.WebhookServer | None:
    """Serve the admission webhooks over HTTPS on ``args.webhook_port`` (0 or None: off).

    The certificate is ``tls.crt``/``tls.key`` in ``args.webhook_cert_dir`` (kopf
    re-reads them when they change, so cert-manager rotation works). Without
    them a CA and a server certificate for this host are generated, into the cert
    dir when it is writable (so its ``ca.crt`` can be handed to clients), else
    into a private temporary directory.
    """
    port = getattr(args, "webhook_port", None)
    if not port:
        return None
    set_pod_security_level(getattr(args, "pod_security_level", None) or DEFAULT_LEVEL)
    cert_dir = getattr(args, "webhook_cert_dir", None)
    addr = getattr(args, "webhook_addr", None) or os.environ.get("GPUADMIT_WEBHOOK_ADDR") or DEFAULT_WEBHOOK_ADDR
    host = getattr(args, "webhook_host", None) or os.environ.get("GPUADMIT_WEBHOOK_HOST") or None
    files = find_tls_files(cert_dir) or _generate_certificate(cert_dir, addr, host)
    server = AdmissionServer(
        addr=addr,
        port=int(port),
        host=host,
        certfile=str(files.certfile),
        pkeyfile=str(files.keyfile),
        cafile=str(files.cafile) if files.cafile else None,
    )
    settings.admission.server = server
    settings.admission.managed = None  # the chart, or our own Registrar: kopf's would drop namespaceSelector
    if getattr(args, "manage_webhook_configurations", False):
        registrar = Registrar(
            failure_policy=getattr(args, "webhook_failure_policy", None) or "Fail",
            native_failure_policy=getattr(args, "native_webhook_failure_policy", None) or "Fail",
            excluded_namespaces=tuple(filter(None, [operator_namespace()])),
        )
        server.on_client_config = registrar.apply_soon
        server.registrar = registrar
    logger.info("Serving admission webhooks on https://%s:%s/{%s}", addr, port,
                ",".join([VALIDATE_ID, MUTATE_ID, *NATIVE_HOLDS]))
    return server


def _generate_certificate(cert_dir: str | None, addr: str, host: str | None = None) -> TlsFiles:
    hostnames = ["localhost", socket.gethostname(), "127.0.0.1", "::1"]
    if addr not in ("0.0.0.0", "::", ""):
        hostnames.append(addr)
    if host and host not in hostnames:
        hostnames.append(host)
    hostnames += [h.strip() for h in os.environ.get("GPUADMIT_WEBHOOK_HOSTNAMES", "").split(",") if h.strip()]
    if cert_dir:
        try:
            files = generate_self_signed(cert_dir, hostnames)
            logger.warning("No certificate in %s: generated one; clients must trust %s", cert_dir, files.cafile)
            return files
        except OSError as error:
            logger.info("Cannot write a certificate into %s (%s); using a temporary directory", cert_dir, error)
    files = generate_self_signed(tempfile.mkdtemp(prefix="gpuadmit-webhook-"), hostnames)
    logger.warning("No webhook certificate given: generated one; clients must trust %s", files.cafile)
    return files


def ca_bundle(files: TlsFiles) -> str:
    """The base64 CA bundle a webhook configuration's ``clientConfig.caBundle`` takes."""
    source = files.cafile or files.certfile
    return base64.b64encode(Path(source).read_bytes()).decode("ascii")
