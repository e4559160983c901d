"""Admission webhooks, called as kube-apiserver calls them.

The emulator reads the MutatingWebhookConfigurations and ValidatingWebhookConfigurations it
stores and calls the webhooks they register on every CREATE, UPDATE and DELETE through the API:
mutating webhooks first, one after the other (configurations in name order, webhooks in the
order listed, as the real server sorts them), their JSON patches applied in turn; then the
server's own checks (schema, metadata); then the validating webhooks, all at once. What the
real server does and this module does too (docs/emulator.md, "Admission webhooks"):

- ``rules``: operations, apiGroups, apiVersions, resources (``*``, ``pods/status``, ``pods/*``,
  ``*/*``), scope; ``matchPolicy: Equivalent`` also matches another served version of the same
  resource (the object is sent in that version);
- ``namespaceSelector`` against the labels of the object's namespace (a Namespace is matched by
  its own labels; cluster-scoped objects always match), ``objectSelector`` against the new or
  the old object's labels; then ``matchConditions`` (CEL over ``object``, ``oldObject`` and
  ``request``, compiled when the configuration is written, see ``kubeapi_emulator.cel``): any
  false skips the webhook, an error refuses the request (403 Forbidden) under Fail and skips the
  webhook under Ignore;
- an AdmissionReview ``admission.k8s.io/v1`` with uid, kind, resource, subResource, requestKind,
  requestResource, name, namespace, operation, userInfo, object, oldObject, dryRun and options,
  POSTed to ``clientConfig.url`` (or a service, see ``service_routes``) with ``?timeout=Ns``;
- TLS verified against ``clientConfig.caBundle`` (the system roots when empty): a certificate
  that does not verify is a failed call, like a refused connection, a timeout
  (``timeoutSeconds``, default 10), an HTTP error or a malformed response (wrong kind, missing
  response, another uid, a patch without patchType or from a validating webhook);
- a failed call refuses the request with 500 ``Internal error occurred: failed calling webhook
  "NAME": ...`` under ``failurePolicy: Fail`` (the default) and is skipped under ``Ignore``;
- a denial answers the webhook's own status, its code raised to at least 400 and its message
  prefixed ``admission webhook "NAME" denied the request: ``;
- ``warnings`` become ``Warning`` headers (kubectl prints them), on success and on refusal;
- ``reinvocationPolicy: IfNeeded`` reinvokes a mutating webhook once if a later one changed the
  object; on a dry run, webhooks whose ``sideEffects`` are not None/NoneOnDryRun refuse the request;
- the webhook configurations themselves are never sent to webhooks (no lock-out), and are
  defaulted and checked when written (a subset of the real validation: names, clientConfig,
  sideEffects, admissionReviewVersions, failurePolicy, timeoutSeconds, rules, selectors);
- an UPDATE or DELETE whose object changed while the webhooks were called starts again from the
  stored object (the real server's optimistic retry), at most ``CONFLICT_RETRIES`` times.

Where the emulator differs: the user is always ``EMULATOR_USER`` (no authentication); writes the
emulator makes itself (garbage collection, the scheduler stand-in's bindings, CRD set-up) are not
sent to webhooks; ``clientConfig.service`` is reachable only through ``service_routes`` (the
emulator has no cluster network): ``namespace/name`` -> ``host:port``, TLS still verified for
``name.namespace.svc``.

The configurations are parsed once and kept until one of them changes (a store listener); with
none stored, a write costs one attribute check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from kubeapi_emulator import errors
from kubeapi_emulator.cel import MatchCondition, compile_conditions, condition_request, match_condition_problems
from kubeapi_emulator.cel import evaluate as evaluate_conditions
from kubeapi_emulator.errors import ApiError
from kubeapi_emulator.patching import json_patch
from kubeapi_emulator.selectors import compile_label_selector, label_selector_problems
from kubeapi_emulator.store import ObjectStore, StorageKey, StoredEvent, copy_json

logger = logging.getLogger(__name__)

GROUP = "admissionregistration.k8s.io"
MUTATING_STORAGE: StorageKey = (GROUP, "mutatingwebhookconfigurations")
VALIDATING_STORAGE: StorageKey = (GROUP, "validatingwebhookconfigurations")
CONFIGURATION_STORAGE = (MUTATING_STORAGE, VALIDATING_STORAGE)
DEFAULT_TIMEOUT_SECONDS = 10
MAX_TIMEOUT_SECONDS = 30
CONFLICT_RETRIES = 5  # an object rewritten this often while its webhooks answer: 409, the client retries
# The emulator authenticates no one; every request is the cluster admin's, as with kubeadm's admin.conf.
EMULATOR_USER: Mapping[str, Any] = {"username": "kubernetes-admin",
                                    "groups": ["system:masters", "system:authenticated"]}
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
_QUALIFIED_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?){2,}$")


# -- what is being admitted ------------------------------------------------------------------------

@dataclass(frozen=True)
class Attributes:
    """One write as admission sees it (the real server's ``admission.Attributes``)."""

    operation: str  # CREATE, UPDATE, DELETE
    group: str
    version: str
    resource: str  # the plural
    kind: str
    subresource: str  # "" for the object itself
    namespace: str  # "" for cluster-scoped objects; a Namespace's own name on its UPDATE and DELETE
    name: str  # "" when the server will generate it
    dry_run: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_namespace(self) -> bool:
        return (self.group, self.resource) == ("", "namespaces") and not self.subresource


@dataclass(frozen=True)
class Rule:
    operations: frozenset[str]
    groups: frozenset[str]
    versions: frozenset[str]
    resources: tuple[tuple[str, str], ...]  # (resource, subresource) as split at the first "/"
    scope: str  # "*", "Cluster" or "Namespaced"

    def matches(self, attrs: Attributes, version: str) -> bool:
        if not ("*" in self.operations or attrs.operation in self.operations):
            return False
        if not ("*" in self.groups or attrs.group in self.groups):
            return False
        if not ("*" in self.versions or version in self.versions):
            return False
        if not any((resource in ("*", attrs.resource)) and (sub in ("*", attrs.subresource))
                   for resource, sub in self.resources):
            return False
        if self.scope == "Namespaced":  # a Namespace is cluster-scoped, whatever its namespace attribute says
            return not attrs.is_namespace and bool(attrs.namespace)
        if self.scope == "Cluster":
            return attrs.is_namespace or not attrs.namespace
        return True


@dataclass(frozen=True)
class Webhook:
    """One webhook of a configuration, parsed and defaulted."""

    configuration: str
    name: str
    mutating: bool
    rules: tuple[Rule, ...]
    namespace_selector: Callable[[Mapping[str, str]], bool] | None
    object_selector: Callable[[Mapping[str, str]], bool] | None
    fail_closed: bool
    equivalent: bool
    timeout: float
    url: str | None
    service: tuple[str, str, str, int] | None  # namespace, name, path, port
    ca_bundle: bytes
    side_effects: str
    review_versions: tuple[str, ...]
    reinvoke_if_needed: bool
    match_conditions: tuple[MatchCondition, ...] = ()  # compiled once per configuration change


class CallFailed(Exception):
    """The webhook could not be called or answered nonsense: its failurePolicy decides."""

    def __init__(self, webhook: str, reason: str) -> None:
        super().__init__(f'failed calling webhook "{webhook}": {reason}')


def internal_error(message: str) -> ApiError:
    """``apierrors.NewInternalError``: 500, the cause repeated in details."""
    return ApiError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


def denied(webhook: str, result: Any) -> ApiError:
    """The webhook's refusal, as kube-apiserver relays it (webhook/errors.ToStatusErr)."""
    status = result if isinstance(result, Mapping) else {}
    prefix = f'admission webhook "{webhook}" denied the request'
    if status.get("message"):
        message = f"{prefix}: {status['message']}"
    elif status.get("reason"):
        message = f"{prefix}: {status['reason']}"
    else:
        message = f"{prefix} without explanation"
    code = status.get("code")
    code = code if isinstance(code, int) and code >= 400 else 400  # never a success code with a refusal
    details = status.get("details") if isinstance(status.get("details"), dict) else None
    return ApiError(code, str(status.get("reason") or ""), message, details)


def warning_headers(warnings: Sequence[str]) -> dict[str, str]:
    """``Warning: 299 - "text"`` for each warning, in one header (a comma-separated list)."""
    return {"Warning": ", ".join("299 - " + json.dumps(text) for text in warnings)} if warnings else {}


# -- configurations: defaults, checks, parsing ------------------------------------------------------

def default_configuration(obj: dict[str, Any], mutating: bool) -> dict[str, Any]:
    """The defaults the real server stores with a webhook configuration (admissionregistration/v1)."""
    webhooks = obj.get("webhooks")
    if not isinstance(webhooks, list):
        return obj
    defaulted = []
    for webhook in webhooks:
        if not isinstance(webhook, dict):
            defaulted.append(webhook)
            continue
        webhook = {key: value for key, value in webhook.items() if value is not None}
        webhook.setdefault("failurePolicy", "Fail")
        webhook.setdefault("matchPolicy", "Equivalent")
        webhook.setdefault("namespaceSelector", {})
        webhook.setdefault("objectSelector", {})
        webhook.setdefault("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
        if mutating:
            webhook.setdefault("reinvocationPolicy", "Never")
        rules = webhook.get("rules")
        if isinstance(rules, list):
            webhook["rules"] = [{"scope": "*", **rule} if isinstance(rule, dict) else rule for rule in rules]
        client = webhook.get("clientConfig")
        if isinstance(client, dict) and isinstance(client.get("service"), dict):
            webhook["clientConfig"] = {**client, "service": {"port": 443, **client["service"]}}
        defaulted.append(webhook)
    return {**obj, "webhooks": defaulted}


def configuration_problems(obj: Mapping[str, Any], mutating: bool) -> list[str]:
    """What the real server's validation would refuse in a (defaulted) configuration, as
    ``"<field>: <problem>"`` texts (a subset: the fields this emulator reads)."""
    webhooks = obj.get("webhooks") or []
    if not isinstance(webhooks, list):
        return ["webhooks: Invalid value: must be a list"]
    problems: list[str] = []
    seen: set[str] = set()
    for index, webhook in enumerate(webhooks):
        at = f"webhooks[{index}]"
        if not isinstance(webhook, Mapping):
            problems.append(f"{at}: Invalid value: must be an object")
            continue
        name = webhook.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{at}.name: Required value")
        elif not _QUALIFIED_NAME.match(name):
            problems.append(f'{at}.name: Invalid value: "{name}": should be a domain with at least three segments '
                            "separated by dots")
        elif name in seen:
            problems.append(f'{at}.name: Duplicate value: "{name}"')
        else:
            seen.add(name)
        versions = webhook.get("admissionReviewVersions")
        if not versions:
            problems.append(f"{at}.admissionReviewVersions: Required value: must specify one of v1, v1beta1")
        elif not any(v in ("v1", "v1beta1") for v in versions):
            problems.append(f"{at}.admissionReviewVersions: Invalid value: {json.dumps(versions)}: must include at "
                            "least one of v1, v1beta1")
        side_effects = webhook.get("sideEffects")
        if side_effects is None:
            problems.append(f"{at}.sideEffects: Required value: must specify one of None, NoneOnDryRun")
        elif side_effects not in ("None", "NoneOnDryRun"):
            problems.append(f'{at}.sideEffects: Unsupported value: "{side_effects}": supported values: "None", '
                            '"NoneOnDryRun"')
        for key, allowed in (("failurePolicy", ("Fail", "Ignore")), ("matchPolicy", ("Exact", "Equivalent")),
                             *((("reinvocationPolicy", ("Never", "IfNeeded")),) if mutating else ())):
            if webhook.get(key) not in allowed:
                problems.append(f'{at}.{key}: Unsupported value: "{webhook.get(key)}": supported values: '
                                + ", ".join(f'"{value}"' for value in allowed))
        timeout = webhook.get("timeoutSeconds")
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
            problems.append(f"{at}.timeoutSeconds: Invalid value: {json.dumps(timeout)}: the timeout value must be "
                            f"between 1 and {MAX_TIMEOUT_SECONDS} seconds")
        problems += _client_config_problems(webhook.get("clientConfig"), f"{at}.clientConfig")
        for rule_index, rule in enumerate(webhook.get("rules") or []):
            problems += _rule_problems(rule, f"{at}.rules[{rule_index}]")
        for selector in ("namespaceSelector", "objectSelector"):
            problems += label_selector_problems(webhook.get(selector), f"{at}.{selector}")
        problems += match_condition_problems(webhook.get("matchConditions"), f"{at}.matchConditions")
    return problems


def _client_config_problems(client: Any, at: str) -> list[str]:
    if not isinstance(client, Mapping) or (client.get("url") is None) == (client.get("service") is None):
        return [f"{at}: Required value: exactly one of url or service is required"]
    problems = []
    if client.get("url") is not None:
        url = str(client["url"])
        parts = urlsplit(url)
        if parts.scheme != "https":
            problems.append(f'{at}.url: Invalid value: "{url}": \'https\' is the only allowed URL scheme')
        if not parts.hostname:
            problems.append(f'{at}.url: Invalid value: "{url}": host must be specified')
        if parts.username or parts.password or parts.fragment or parts.query:
            problems.append(f'{at}.url: Invalid value: "{url}": user information, fragments and query parameters '
                            "are not permitted")
    else:
        service = client["service"]
        if not isinstance(service, Mapping) or not service.get("name") or not service.get("namespace"):
            problems.append(f"{at}.service: Required value: service name and namespace are required")
        elif service.get("path") is not None and not str(service["path"]).startswith("/"):
            problems.append(f'{at}.service.path: Invalid value: "{service["path"]}": must start with a \'/\'')
    if client.get("caBundle"):
        try:
            base64.b64decode(str(client["caBundle"]), validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{at}.caBundle: Invalid value: must be base64")
    return problems


def _rule_problems(rule: Any, at: str) -> list[str]:
    if not isinstance(rule, Mapping):
        return [f"{at}: Invalid value: must be an object"]
    problems = []
    for key in ("operations", "apiGroups", "apiVersions", "resources"):
        if not isinstance(rule.get(key), list) or not rule[key]:
            problems.append(f"{at}.{key}: Required value")
    for operation in rule.get("operations") or []:
        if operation not in ("*", *OPERATIONS):
            problems.append(f'{at}.operations: Unsupported value: "{operation}": supported values: "*", '
                            + ", ".join(f'"{o}"' for o in OPERATIONS))
    if rule.get("scope") not in ("*", "Cluster", "Namespaced"):
        problems.append(f'{at}.scope: Unsupported value: "{rule.get("scope")}": supported values: "*", "Cluster", '
                        '"Namespaced"')
    return problems


def parse_configuration(obj: Mapping[str, Any], mutating: bool) -> list[Webhook]:
    """The webhooks of one stored (defaulted, checked) configuration."""
    configuration = str((obj.get("metadata") or {}).get("name") or "")
    parsed = []
    for webhook in obj.get("webhooks") or []:
        client = webhook.get("clientConfig") or {}
        service = client.get("service")
        parsed.append(Webhook(
            configuration=configuration,
            name=str(webhook.get("name")),
            mutating=mutating,
            rules=tuple(Rule(
                operations=frozenset(rule.get("operations") or ()),
                groups=frozenset(rule.get("apiGroups") or ()),
                versions=frozenset(rule.get("apiVersions") or ()),
                resources=tuple(_split_resource(str(resource)) for resource in rule.get("resources") or ()),
                scope=str(rule.get("scope") or "*"),
            ) for rule in webhook.get("rules") or []),
            namespace_selector=compile_label_selector(webhook.get("namespaceSelector")),
            object_selector=compile_label_selector(webhook.get("objectSelector")),
            fail_closed=webhook.get("failurePolicy", "Fail") != "Ignore",
            equivalent=webhook.get("matchPolicy", "Equivalent") == "Equivalent",
            timeout=float(min(int(webhook.get("timeoutSeconds") or DEFAULT_TIMEOUT_SECONDS), MAX_TIMEOUT_SECONDS)),
            url=client.get("url"),
            service=(str(service["namespace"]), str(service["name"]), str(service.get("path") or ""),
                     int(service.get("port") or 443)) if isinstance(service, Mapping) else None,
            ca_bundle=base64.b64decode(client.get("caBundle") or ""),
            side_effects=str(webhook.get("sideEffects") or ""),
            review_versions=tuple(webhook.get("admissionReviewVersions") or ()),
            reinvoke_if_needed=mutating and webhook.get("reinvocationPolicy") == "IfNeeded",
            match_conditions=compile_conditions(webhook.get("matchConditions")),
        ))
    return parsed


def _split_resource(resource: str) -> tuple[str, str]:
    name, _, sub = resource.partition("/")
    return name, sub


# -- the dispatcher -----------------------------------------------------------------------------------

NamespaceReader = Callable[[str], Mapping[str, Any] | None]
VersionsReader = Callable[[str, str], Sequence[str]]  # (group, plural) -> the served versions


@dataclass
class Invocation:
    """A webhook chosen for a request, and the version the object is sent in."""

    webhook: Webhook
    version: str


class WebhookAdmission:
    """Calls the registered webhooks around the handler's writes (see the module docstring).

    ``create``, ``update`` and ``delete`` take the write itself as a function and return what it
    returned plus the webhooks' warnings; with no webhook for the request they just write.
    """

    def __init__(self, store: ObjectStore, namespace_of: NamespaceReader, versions_of: VersionsReader, *,
                 service_routes: Mapping[str, str] | None = None, require_namespaces: bool = False) -> None:
        self.store = store
        self.namespace_of = namespace_of
        self.versions_of = versions_of
        self.service_routes = dict(service_routes or {})
        self.require_namespaces = require_namespaces
        self._webhooks: tuple[list[Webhook], list[Webhook]] | None = None
        self._contexts: dict[bytes, ssl.SSLContext] = {}
        self._session: Any = None  # an aiohttp.ClientSession, made in the serving loop on first use
        store.listeners.append(self._on_stored_event)

    # -- cache of parsed configurations

    def _on_stored_event(self, event: StoredEvent) -> None:
        if event.storage_key in CONFIGURATION_STORAGE:
            self._webhooks = None

    def webhooks(self) -> tuple[list[Webhook], list[Webhook]]:
        """(mutating, validating), in the order the real server calls them."""
        if self._webhooks is None:
            found: dict[StorageKey, list[tuple[str, dict[str, Any]]]] = {key: [] for key in CONFIGURATION_STORAGE}
            for storage_key, obj in self.store.all_objects():
                if storage_key in found:
                    found[storage_key].append((str(obj["metadata"].get("name")), obj))
            mutating = [hook for _, obj in sorted(found[MUTATING_STORAGE], key=lambda item: item[0])
                        for hook in parse_configuration(obj, True)]
            validating = [hook for _, obj in sorted(found[VALIDATING_STORAGE], key=lambda item: item[0])
                          for hook in parse_configuration(obj, False)]
            self._webhooks = (mutating, validating)
        return self._webhooks

    def _invocations(self, attrs: Attributes, mutating: bool) -> list[Invocation]:
        """The webhooks whose rules match, before the selectors (which need the objects)."""
        if (attrs.group, attrs.resource) in CONFIGURATION_STORAGE:
            return []  # never sent to webhooks, so a broken webhook cannot lock its own configuration
        chosen = []
        for webhook in self.webhooks()[0 if mutating else 1]:
            if any(rule.matches(attrs, attrs.version) for rule in webhook.rules):
                chosen.append(Invocation(webhook, attrs.version))
            elif webhook.equivalent:
                for version in self.versions_of(attrs.group, attrs.resource):
                    if version != attrs.version and any(rule.matches(attrs, version) for rule in webhook.rules):
                        chosen.append(Invocation(webhook, version))
                        break
        return chosen

    def _any_webhook(self, attrs: Attributes) -> bool:
        mutating, validating = self.webhooks()
        return bool((mutating or validating) and (self._invocations(attrs, True) or self._invocations(attrs, False)))

    # -- the three write paths

    async def create(self, attrs: Attributes, body: Any, write: Callable[[Any, bool], Any]) -> tuple[Any, list[str]]:
        """``write(body, dry_run)`` stores the object and returns the answer."""
        body = self._prepare_configuration(attrs, body)
        if not self._any_webhook(attrs) or not isinstance(body, dict):
            return write(body, attrs.dry_run), []
        warnings: list[str] = []
        mutated = await self._mutate(attrs, body, None, warnings)
        proposed = self._with_warnings(warnings, lambda: write(mutated, True))  # as it would be stored
        meta = mutated.setdefault("metadata", {}) if isinstance(mutated.get("metadata"), dict) else {}
        if isinstance(proposed, dict) and not meta.get("name"):
            meta["name"] = (proposed.get("metadata") or {}).get("name")  # generated once, as the real server does
        await self._validate(attrs, proposed, None, warnings)
        return self._with_warnings(warnings, lambda: write(mutated, attrs.dry_run)), warnings

    async def update(self, attrs: Attributes, read: Callable[[], dict[str, Any] | None],
                     propose: Callable[[dict[str, Any]], Any], write: Callable[[Callable[[Any], Any], bool], Any],
                     *, copy_current: bool = False) -> tuple[Any, list[str]]:
        """``propose(current)`` is the change (a patch applied, the PUT body); ``write(change,
        dry_run)`` stores ``change(current)``."""
        if (attrs.group, attrs.resource) in CONFIGURATION_STORAGE:
            mutating = attrs.resource == MUTATING_STORAGE[1]
            inner = propose
            propose = lambda current: self._checked_configuration(attrs, inner(current), mutating)  # noqa: E731
        if not self._any_webhook(attrs):
            return write(propose, attrs.dry_run), []
        warnings: list[str] = []
        for _ in range(CONFLICT_RETRIES):
            warnings = []  # an attempt started again warns again, not twice
            old = read()
            if old is None:
                return write(propose, attrs.dry_run), warnings  # answers 404
            proposed = propose(copy_json(old) if copy_current else old)
            if not isinstance(proposed, dict):
                return write(_replacing(proposed), attrs.dry_run), warnings  # answers 400
            replace = _replacing(await self._mutate(attrs, proposed, old, warnings))
            if read() is not old:
                continue  # written meanwhile: start again from what is stored now
            final = self._with_warnings(warnings, partial(write, replace, True))  # as it would be stored
            await self._validate(attrs, final, old, warnings)
            if read() is old:  # stored objects are replaced on write, never changed in place
                return self._with_warnings(warnings, partial(write, replace, attrs.dry_run)), warnings
        raise self._with_headers(errors.conflict(attrs.group, attrs.resource, attrs.name), warnings)

    async def delete(self, attrs: Attributes, read: Callable[[], dict[str, Any] | None],
                     write: Callable[[bool], Any]) -> tuple[Any, list[str]]:
        if not self._any_webhook(attrs):
            return write(attrs.dry_run), []
        warnings: list[str] = []
        for _ in range(CONFLICT_RETRIES):
            warnings = []
            old = read()
            if old is None:
                return write(attrs.dry_run), warnings  # answers 404
            await self._mutate(attrs, None, old, warnings)
            await self._validate(attrs, None, old, warnings)
            if read() is old:
                return self._with_warnings(warnings, lambda: write(attrs.dry_run)), warnings
        raise self._with_headers(errors.conflict(attrs.group, attrs.resource, attrs.name), warnings)

    def _prepare_configuration(self, attrs: Attributes, body: Any) -> Any:
        if (attrs.group, attrs.resource) not in CONFIGURATION_STORAGE or not isinstance(body, dict):
            return body
        return self._checked_configuration(attrs, body, attrs.resource == MUTATING_STORAGE[1])

    @staticmethod
    def _checked_configuration(attrs: Attributes, body: Any, mutating: bool) -> Any:
        if not isinstance(body, dict):
            return body
        body = default_configuration(body, mutating)
        problems = configuration_problems(body, mutating)
        if problems:
            name = str((body.get("metadata") or {}).get("name") or attrs.name)
            kind = "MutatingWebhookConfiguration" if mutating else "ValidatingWebhookConfiguration"
            raise errors.invalid(GROUP, kind, name, [
                {"reason": "FieldValueInvalid", "field": problem.split(": ", 1)[0],
                 "message": problem.split(": ", 1)[1]} for problem in problems])
        return body

    @staticmethod
    def _with_headers(error: ApiError, warnings: Sequence[str]) -> ApiError:
        error.headers = {**error.headers, **warning_headers(warnings)}
        return error

    def _with_warnings(self, warnings: Sequence[str], action: Callable[[], Any]) -> Any:
        """Run a write; an error it raises carries the warnings gathered so far (as the real
        server sends warnings with a refusal too)."""
        try:
            return action()
        except ApiError as error:
            raise self._with_headers(error, warnings) from None

    # -- selectors

    def _selected(self, invocation: Invocation, attrs: Attributes, obj: dict[str, Any] | None,
                  old: dict[str, Any] | None) -> bool:
        """Whether to call this webhook: its selectors, then its matchConditions."""
        webhook = invocation.webhook
        if not self._selectors_match(webhook, attrs, obj, old):
            return False
        if not webhook.match_conditions:
            return True
        return self._conditions_hold(invocation, attrs, obj, old)

    def _conditions_hold(self, invocation: Invocation, attrs: Attributes, obj: dict[str, Any] | None,
                         old: dict[str, Any] | None) -> bool:
        """matchConditions (``kubeapi_emulator.cel``): all true calls, any false skips; an error
        (none false) refuses the request with 403 under Fail and skips the webhook under Ignore."""
        webhook = invocation.webhook
        review = self._review(invocation, attrs, obj, old, "")["request"]
        result = evaluate_conditions(webhook.match_conditions, review["object"], review["oldObject"],
                                     condition_request(review))
        if result.error is None:
            return result.matches
        if not webhook.fail_closed:
            logger.warning("Failed evaluating match conditions, failing open %s: %s", webhook.name, result.error)
            return False
        raise errors.forbidden(attrs.group, attrs.resource, attrs.name, result.error)

    def _selectors_match(self, webhook: Webhook, attrs: Attributes, obj: Mapping[str, Any] | None,
                         old: Mapping[str, Any] | None) -> bool:
        if webhook.object_selector is not None:
            labelled = [o for o in (obj, old) if isinstance(o, Mapping)]
            if not any(webhook.object_selector((o.get("metadata") or {}).get("labels") or {}) for o in labelled):
                return False
        if webhook.namespace_selector is not None:
            if not attrs.namespace and not attrs.is_namespace:
                return True  # cluster-scoped objects are never exempted by a namespace selector
            labels = self._namespace_labels(attrs, obj)
            if not webhook.namespace_selector(labels):
                return False
        return True

    def _namespace_labels(self, attrs: Attributes, obj: Mapping[str, Any] | None) -> Mapping[str, str]:
        if attrs.is_namespace and attrs.operation in ("CREATE", "UPDATE") and isinstance(obj, Mapping):
            return (obj.get("metadata") or {}).get("labels") or {}  # the namespace being written
        name = attrs.namespace
        namespace = self.namespace_of(name)
        if namespace is None:
            if self.require_namespaces:
                raise ApiError(404, "NotFound", f'namespaces "{name}" not found', {"name": name, "kind": "namespaces"})
            # Without --require-namespaces objects may live in namespaces never created: read them
            # as a real namespace of that name would be labelled.
            return {"kubernetes.io/metadata.name": name}
        return (namespace.get("metadata") or {}).get("labels") or {}

    # -- mutating, then validating

    async def _mutate(self, attrs: Attributes, obj: dict[str, Any] | None, old: dict[str, Any] | None,
                      warnings: list[str]) -> dict[str, Any]:
        invocations = self._invocations(attrs, True)
        called_reinvocable: set[int] = set()
        reinvoke: set[int] = set()
        for index, invocation in enumerate(invocations):
            if not self._selected(invocation, attrs, obj, old):
                continue
            obj, changed = await self._call_mutating(invocation, attrs, obj, old, warnings)
            if changed:  # earlier IfNeeded webhooks see the object again
                reinvoke |= called_reinvocable
                called_reinvocable = set()
            if invocation.webhook.reinvoke_if_needed:
                called_reinvocable.add(index)
        for index, invocation in enumerate(invocations):
            if index in reinvoke and self._selected(invocation, attrs, obj, old):
                obj, _ = await self._call_mutating(invocation, attrs, obj, old, warnings)
        return obj  # type: ignore[return-value]  # None only on DELETE, whose result is not used

    async def _call_mutating(self, invocation: Invocation, attrs: Attributes, obj: dict[str, Any] | None,
                             old: dict[str, Any] | None, warnings: list[str]) -> tuple[dict[str, Any] | None, bool]:
        webhook = invocation.webhook
        try:
            response = await self._call(invocation, attrs, obj, old)
            warnings.extend(str(w) for w in response.get("warnings") or [])
            if not response.get("allowed"):
                raise self._with_headers(denied(webhook.name, response.get("status")), warnings)
            patch = _decode_patch(webhook.name, response)
        except CallFailed as failure:
            if webhook.fail_closed:
                raise self._with_headers(internal_error(str(failure)), warnings) from None
            logger.warning("Failed calling webhook, failing open %s: %s", webhook.name, failure)
            return obj, False
        if not patch:
            return obj, False
        if obj is None:
            raise self._with_headers(internal_error(
                f'admission webhook "{webhook.name}" attempted to modify the object, which is not supported for '
                "this operation"), warnings)
        try:
            patched = json_patch(self._in_version(obj, attrs, invocation.version), patch)
        except ApiError as error:
            raise self._with_headers(internal_error(error.message), warnings) from None
        patched = self._in_version(patched, attrs, attrs.version)
        return patched, patched != obj

    async def _validate(self, attrs: Attributes, obj: dict[str, Any] | None, old: dict[str, Any] | None,
                        warnings: list[str]) -> None:
        chosen = [i for i in self._invocations(attrs, False) if self._selected(i, attrs, obj, old)]
        if not chosen:
            return
        results = await asyncio.gather(*(self._call(i, attrs, obj, old) for i in chosen), return_exceptions=True)
        refusal: ApiError | None = None
        for invocation, result in zip(chosen, results, strict=True):
            if isinstance(result, CallFailed):
                if invocation.webhook.fail_closed:
                    refusal = refusal or internal_error(str(result))
                else:
                    logger.warning("Failed calling webhook, failing open %s: %s", invocation.webhook.name, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                warnings.extend(str(w) for w in result.get("warnings") or [])
                if not result.get("allowed"):
                    refusal = refusal or denied(invocation.webhook.name, result.get("status"))
        if refusal is not None:
            raise self._with_headers(refusal, warnings)

    # -- one call

    def _in_version(self, obj: dict[str, Any] | None, attrs: Attributes, version: str) -> Any:
        if obj is None or version == attrs.version or attrs.subresource not in ("", "status"):
            return obj
        return {**obj, "apiVersion": f"{attrs.group}/{version}" if attrs.group else version}

    def _review(self, invocation: Invocation, attrs: Attributes, obj: Any, old: Any, uid: str) -> dict[str, Any]:
        kind = attrs.kind
        request: dict[str, Any] = {
            "uid": uid,
            "kind": {"group": attrs.group, "version": invocation.version, "kind": kind},
            "resource": {"group": attrs.group, "version": invocation.version, "resource": attrs.resource},
            "requestKind": {"group": attrs.group, "version": attrs.version, "kind": kind},
            "requestResource": {"group": attrs.group, "version": attrs.version, "resource": attrs.resource},
            "name": attrs.name,
            "namespace": attrs.namespace,
            "operation": attrs.operation,
            "userInfo": dict(EMULATOR_USER),
            "object": self._in_version(obj, attrs, invocation.version),
            "oldObject": self._in_version(old, attrs, invocation.version),
            "dryRun": attrs.dry_run,
            "options": dict(attrs.options) or None,
        }
        if attrs.subresource:
            request["subResource"] = request["requestSubResource"] = attrs.subresource
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}

    def _target(self, webhook: Webhook) -> tuple[str, str | None]:
        """The URL to POST to, and the TLS server name when it is not the URL's host."""
        if webhook.url is not None:
            return webhook.url, None
        assert webhook.service is not None
        namespace, name, path, port = webhook.service
        server_name = f"{name}.{namespace}.svc"
        route = self.service_routes.get(f"{namespace}/{name}")
        if route is None:
            raise CallFailed(webhook.name, f'failed to call webhook: Post "https://{server_name}:{port}{path}'
                                           f'?timeout={int(webhook.timeout)}s": no endpoints available for service '
                                           f'"{name}" (the emulated API server reaches services only through '
                                           f"--webhook-service {namespace}/{name}=HOST:PORT)")
        return f"https://{route}{path}", server_name

    def _ssl_context(self, webhook: Webhook) -> ssl.SSLContext:
        context = self._contexts.get(webhook.ca_bundle)
        if context is None:
            try:
                context = ssl.create_default_context(cadata=webhook.ca_bundle.decode("ascii") or None)
            except (ssl.SSLError, ValueError, UnicodeDecodeError) as error:
                raise CallFailed(webhook.name, f"could not get REST client: unable to load root certificates: "
                                               f"{error}") from None
            self._contexts[webhook.ca_bundle] = context
        return context

    async def _call(self, invocation: Invocation, attrs: Attributes, obj: Any, old: Any) -> dict[str, Any]:
        """POST the AdmissionReview; the response part of a well-formed answer, else CallFailed."""
        import aiohttp

        webhook = invocation.webhook
        if attrs.dry_run and webhook.side_effects not in ("None", "NoneOnDryRun"):
            raise errors.bad_request(f'admission webhook "{webhook.name}" does not support dry run')
        if not any(version == "v1" for version in webhook.review_versions):
            raise CallFailed(webhook.name, "could not create admission objects: webhook does not accept known "
                                           "AdmissionReview versions (v1)")
        url, server_name = self._target(webhook)
        context = self._ssl_context(webhook)
        uid = str(uuid.uuid4())
        review = self._review(invocation, attrs, obj, old, uid)
        timeout = int(webhook.timeout)
        target = f"{url}?timeout={timeout}s"
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(webhook.timeout):
                async with self._session.post(target, data=json.dumps(review), ssl=context,
                                              server_hostname=server_name,
                                              headers={"Content-Type": "application/json",
                                                       "Accept": "application/json"}) as response:
                    status, body = response.status, await response.read()
        except TimeoutError:
            raise CallFailed(webhook.name, f'failed to call webhook: Post "{target}": context deadline exceeded') \
                from None
        except aiohttp.ClientConnectorCertificateError as error:
            raise CallFailed(webhook.name, f'failed to call webhook: Post "{target}": tls: failed to verify '
                                           f"certificate: {error.certificate_error}") from None
        except (aiohttp.ClientError, OSError) as error:
            raise CallFailed(webhook.name, f'failed to call webhook: Post "{target}": {error}') from None
        if not 200 <= status < 300:
            raise CallFailed(webhook.name, f"failed to call webhook: {_http_error(status, body)}")
        try:
            answer = json.loads(body)
        except ValueError as error:
            raise CallFailed(webhook.name, f"failed to call webhook: the response is not JSON: {error}") from None
        problem = _response_problem(answer, uid, webhook.mutating)
        if problem:
            raise CallFailed(webhook.name, f"received invalid webhook response: {problem}")
        return dict(answer["response"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _replacing(obj: Any) -> Callable[[Any], Any]:
    """A store change that puts ``obj`` in place of the stored object (a copy each time: the store
    adjusts the top level and metadata of what it is given)."""
    return lambda _current: copy_json(obj)


def _http_error(status: int, body: bytes) -> str:
    """What client-go says about a non-2xx answer without a Status object."""
    text = body.decode("utf-8", errors="replace").strip()[:200]
    if status >= 500:
        return f'an error on the server ("{text or "unknown"}") has prevented the request from succeeding'
    known = {400: "the server rejected our request for an unknown reason",
             404: "the server could not find the requested resource",
             401: "the server has asked for the client to provide credentials",
             403: "forbidden", 413: "the request entity is too large"}
    return known.get(status, f"the server responded with the status code {status} but did not return more "
                             "information") + (f" ({text})" if text else "")


def _response_problem(answer: Any, uid: str, mutating: bool) -> str | None:
    """Why an AdmissionReview response is not acceptable (request/VerifyAdmissionResponse), or None."""
    if not isinstance(answer, Mapping):
        return "expected an AdmissionReview object"
    response = answer.get("response")
    if not isinstance(response, Mapping):
        return "webhook response was absent"
    if response.get("uid") != uid:
        return f'expected response.uid="{uid}", got "{response.get("uid")}"'
    if (answer.get("apiVersion"), answer.get("kind")) != ("admission.k8s.io/v1", "AdmissionReview"):
        return (f"expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got "
                f"{answer.get('apiVersion')}, Kind={answer.get('kind')}")
    patch, patch_type = response.get("patch"), response.get("patchType")
    if mutating:
        if patch and patch_type is None:
            return "webhook returned response.patch but not response.patchType"
        if not patch and patch_type is not None:
            return "webhook returned response.patchType but not response.patch"
    elif patch:
        return "validating webhook may not return response.patch"
    elif patch_type is not None:
        return "validating webhook may not return response.patchType"
    return None


def _decode_patch(webhook: str, response: Mapping[str, Any]) -> list[Any]:
    if not response.get("patch"):
        return []
    if response.get("patchType") != "JSONPatch":
        raise CallFailed(webhook, f'unsupported patch type "{response.get("patchType")}"')
    try:
        patch = json.loads(base64.b64decode(str(response["patch"]), validate=True))
    except (binascii.Error, ValueError) as error:
        raise CallFailed(webhook, f"received undecodable patch in webhook response: {error}") from None
    if not isinstance(patch, list):
        raise CallFailed(webhook, "received undecodable patch in webhook response: a JSON patch is a list")
    return patch

