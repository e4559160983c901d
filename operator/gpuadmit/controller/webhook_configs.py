"""The operator's admission webhooks as the API server is told about them: the one list.

``WEBHOOKS`` names every webhook the operator serves (name, path, what it is called for, whether it
is one of the native-workload webhooks). ``webhook_configurations`` turns it into the
ValidatingWebhookConfiguration and MutatingWebhookConfiguration that ``gpuadmit run
--manage-webhook-configurations`` writes; the Helm chart renders the same webhooks itself, and
``tests/packaging/test_chart.py`` checks that it agrees with this list on paths, rules, selectors
and failure policies. Pure: plain dicts in and out (the writing is ``webhook_registration``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from gpuadmit.core.model import API_GROUP, API_VERSION, GPU_RESOURCE
from gpuadmit.core.native import MANAGED_LABEL, MANAGED_VALUE

FailurePolicy = Literal["Fail", "Ignore"]
FAILURE_POLICIES: tuple[FailurePolicy, ...] = ("Fail", "Ignore")
CONFIGURATION_NAME = "gpuadmit"  # both configuration objects; the chart names them after the release
TIMEOUT_SECONDS = 10  # the API server's wait for an answer; every webhook here answers from memory
# Namespaces the native-workload webhooks never match, whatever their labels: the control plane's
# own, and (added by the caller) the operator's, so that a Fail policy can never stop the operator's
# own pods from being created while it is down.
ALWAYS_EXCLUDED_NAMESPACES = ("kube-system",)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every Namespace

VALIDATE_GPUWORKLOAD_PATH = "/validate-gpuworkload"
MUTATE_GPUWORKLOAD_PATH = "/mutate-gpuworkload"
MUTATE_JOB_PATH = "/mutate-job"
MUTATE_POD_PATH = "/mutate-pod"


@dataclass(frozen=True)
class Webhook:
    """One webhook: where it is served and which requests the API server sends it."""

    name: str
    mutating: bool
    path: str
    api_group: str
    api_version: str
    resource: str
    operations: tuple[str, ...]
    # Native workloads (Jobs, pods, PyTorchJobs, RayJobs): only in managed namespaces, with their own
    # failure policy.
    native: bool = False
    # Called only for objects whose pod spec (at this CEL path of ``object``) names nvidia.com/gpu;
    # None: every object (a PyTorchJob's or RayJob's templates sit under maps and lists of roles).
    pod_spec_path: str | None = None

    @property
    def rule(self) -> dict[str, Any]:
        return {
            "apiGroups": [self.api_group],
            "apiVersions": [self.api_version],
            "operations": list(self.operations),
            "resources": [self.resource],
            "scope": "Namespaced",
        }


WEBHOOKS: tuple[Webhook, ...] = (
    Webhook("validate.gpuworkloads.gpuadmit.io", False, VALIDATE_GPUWORKLOAD_PATH, API_GROUP, API_VERSION,
            "gpuworkloads", ("CREATE", "UPDATE")),
    Webhook("mutate.gpuworkloads.gpuadmit.io", True, MUTATE_GPUWORKLOAD_PATH, API_GROUP, API_VERSION,
            "gpuworkloads", ("CREATE", "UPDATE")),
    Webhook("mutate.jobs.gpuadmit.io", True, MUTATE_JOB_PATH, "batch", "v1", "jobs", ("CREATE",),
            native=True, pod_spec_path="object.spec.template.spec"),
    # Kubeflow PyTorchJobs and KubeRay RayJobs are suspended like Jobs (controller.webhooks picks the
    # hold by resource); a rule for a resource the cluster does not serve matches nothing.
    Webhook("mutate.pytorchjobs.gpuadmit.io", True, MUTATE_JOB_PATH, "kubeflow.org", "v1", "pytorchjobs",
            ("CREATE",), native=True),
    Webhook("mutate.rayjobs.gpuadmit.io", True, MUTATE_JOB_PATH, "ray.io", "v1", "rayjobs", ("CREATE",), native=True),
    Webhook("mutate.pods.gpuadmit.io", True, MUTATE_POD_PATH, "", "v1", "pods", ("CREATE",),
            native=True, pod_spec_path="object.spec"),
)
MATCH_CONDITION_NAME = "asks-for-nvidia-gpu"


def asks_for_gpus_condition(pod_spec_path: str) -> str:
    """A CEL expression (a webhook ``matchConditions`` entry) that is true when the pod spec at
    ``pod_spec_path`` names ``nvidia.com/gpu`` in the requests or limits of a container or init container.

    It is true whenever ``core.holds.asks_for_gpus`` is (it ignores the quantity: zero is called
    too, and answered with no patch), so the webhook still sees every object it must hold, while
    the API server skips the call, and with it the failure policy, for pods that ask for no GPU: a
    CPU pod of a managed namespace is created even while the operator is down. Every step is
    guarded with ``has``, so an object without a spec or containers is not an evaluation error (which
    the API server would treat as a webhook failure). Servers before Kubernetes 1.28 drop the field and
    call the webhook for every pod of a managed namespace, which is correct, only stricter.
    """
    parts = pod_spec_path.split(".")
    guards = [f"has({'.'.join(parts[:end])})" for end in range(2, len(parts) + 1)]
    asks = (f'has(c.resources) && ((has(c.resources.limits) && "{GPU_RESOURCE}" in c.resources.limits) || '
            f'(has(c.resources.requests) && "{GPU_RESOURCE}" in c.resources.requests))')
    lists = " || ".join(f"(has({pod_spec_path}.{key}) && {pod_spec_path}.{key}.exists(c, {asks}))"
                        for key in ("containers", "initContainers"))
    return " && ".join([*guards, f"({lists})"])


def native_namespace_selector(excluded_namespaces: Iterable[str] = ()) -> dict[str, Any]:
    """Managed namespaces (``gpuadmit.io/managed: "true"``) other than kube-system and ``excluded_namespaces``."""
    excluded = sorted({*ALWAYS_EXCLUDED_NAMESPACES, *(name for name in excluded_namespaces if name)})
    return {
        "matchLabels": {MANAGED_LABEL: MANAGED_VALUE},
        "matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": excluded}],
    }


def webhook_entry(
    webhook: Webhook, client_config: dict[str, Any], failure_policy: FailurePolicy,
    excluded_namespaces: Iterable[str] = (), timeout_seconds: int = TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """One ``webhooks[]`` item of a configuration object.

    No ``objectSelector`` on the pod webhook: it selects by labels, which the pod's creator writes,
    so any selector that spares some pods would let a tenant spare a GPU pod by labelling it.
    Native webhooks are reinvoked (``IfNeeded``) when a later webhook changes the object: a pod
    that another webhook gives GPUs is gated all the same (the answer for a gated pod is no patch).
    """
    entry: dict[str, Any] = {
        "name": webhook.name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "timeoutSeconds": timeout_seconds,
        "clientConfig": client_config,
        "rules": [webhook.rule],
    }
    if webhook.mutating:
        entry["reinvocationPolicy"] = "IfNeeded" if webhook.native else "Never"
    if webhook.native:
        entry["namespaceSelector"] = native_namespace_selector(excluded_namespaces)
    if webhook.pod_spec_path is not None:
        entry["matchConditions"] = [{"name": MATCH_CONDITION_NAME,
                                     "expression": asks_for_gpus_condition(webhook.pod_spec_path)}]
    return entry


def webhook_configurations(
    url: str,
    ca_bundle: str | None,
    *,
    failure_policy: FailurePolicy = "Fail",
    native_failure_policy: FailurePolicy = "Fail",
    excluded_namespaces: Iterable[str] = (),
    name: str = CONFIGURATION_NAME,
    timeout_seconds: int = TIMEOUT_SECONDS,
) -> list[dict[str, Any]]:
    """The ValidatingWebhookConfiguration and the MutatingWebhookConfiguration for a webhook server
    at ``url`` (``https://host:port``, no path) whose certificate ``ca_bundle`` (base64 PEM) signs."""
    excluded = tuple(excluded_namespaces)
    configurations = []
    for kind, mutating in (("ValidatingWebhookConfiguration", False), ("MutatingWebhookConfiguration", True)):
        webhooks = []
        for webhook in WEBHOOKS:
            if webhook.mutating != mutating:
                continue
            client_config: dict[str, Any] = {"url": url.rstrip("/") + webhook.path}
            if ca_bundle:
                client_config["caBundle"] = ca_bundle
            policy = native_failure_policy if webhook.native else failure_policy
            webhooks.append(webhook_entry(webhook, client_config, policy, excluded, timeout_seconds))
        configurations.append({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "gpuadmit"}},
            "webhooks": webhooks,
        })
    return configurations
