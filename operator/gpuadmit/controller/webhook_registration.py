"""``gpuadmit run --manage-webhook-configurations``: the operator registers its own webhooks.

Like kopf's managed admission (``settings.admission.managed``), but from ``webhook_configs``'s
list rather than from kopf's handlers: kopf's configurations know no ``namespaceSelector`` and
name webhooks after handler ids, and the Job and pod webhooks are not kopf handlers at all.

Each time the webhook server starts listening (at start-up, and again when kopf reloads a renewed
certificate) it hands over its client config (URL and CA bundle); the registrar then writes both
configuration objects, creating them when absent and replacing them otherwise, and retries with
backoff until the API server takes them (a 403 names the RBAC the service account lacks). They are
left in place when the operator stops, unlike kopf's: removing them would let GPU pods and Jobs
of managed namespaces through unheld while the operator is down, the opposite of ``Fail``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuadmit.controller import api
from gpuadmit.controller.webhook_configs import FailurePolicy, webhook_configurations

logger = logging.getLogger(__name__)

VALIDATING = api.Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", namespaced=False)
MUTATING = api.Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", namespaced=False)
RESOURCES = {"ValidatingWebhookConfiguration": VALIDATING, "MutatingWebhookConfiguration": MUTATING}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
FIRST_RETRY_S = 0.5
LAST_RETRY_S = 30.0


def operator_namespace() -> str | None:
    """The namespace the operator runs in (the chart's ``POD_NAMESPACE``, else the service account's), if any."""
    name = os.environ.get("POD_NAMESPACE", "").strip()
    if name:
        return name
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def webhooks_served(configuration: Mapping[str, Any]) -> str:
    """Each webhook of a configuration with its URL, for the log: several webhooks share a path
    (Jobs, PyTorchJobs and RayJobs all go to /mutate-job), so the URLs alone would repeat."""
    return ", ".join(f"{webhook['name']} -> {webhook['clientConfig']['url']}" for webhook in configuration["webhooks"])


async def write_configuration(kube: api.KubeApi, configuration: Mapping[str, Any]) -> str:
    """Create the configuration object, or replace the one of that name; "created" or "replaced"."""
    resource = RESOURCES[str(configuration["kind"])]
    name = str(configuration["metadata"]["name"])
    try:
        current = await kube.get(resource, name)
    except api.ApiError as error:
        if error.status != 404:
            raise
        await kube.create(resource, configuration)
        return "created"
    body = {**configuration, "metadata": {**configuration["metadata"],
                                          "resourceVersion": (current.get("metadata") or {}).get("resourceVersion")}}
    await kube.request("replace", "PUT", resource.path(name=name), body=body)  # 409 if changed since: retried
    return "replaced"


@dataclass
class Registrar:
    """Writes the configurations for each client config the webhook server reports; the last one wins.
    ``registered`` is set once the first are written (a readiness gate of the runtime)."""

    failure_policy: FailurePolicy = "Fail"
    native_failure_policy: FailurePolicy = "Fail"
    excluded_namespaces: tuple[str, ...] = ()
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def configurations(self, client_config: Mapping[str, Any]) -> list[dict[str, Any]]:
        return webhook_configurations(
            str(client_config["url"]), client_config.get("caBundle"),
            failure_policy=self.failure_policy, native_failure_policy=self.native_failure_policy,
            excluded_namespaces=self.excluded_namespaces,
        )

    def apply_soon(self, client_config: Mapping[str, Any]) -> None:
        """Start writing (in the background) the configurations for this client config, instead of any earlier one."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        # ``registered`` stays set once set: a renewed certificate must not make the replica unready
        # (and drop it from the Service the API server calls) while the new bundle is written.
        self._task = asyncio.get_running_loop().create_task(self._apply(self.configurations(client_config)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _apply(self, configurations: list[dict[str, Any]]) -> None:
        delay = FIRST_RETRY_S
        while True:
            try:
                async with api.KubeApi(api.resolve_credentials(), max_concurrency=2) as kube:
                    for configuration in configurations:
                        how = await write_configuration(kube, configuration)
                        logger.info("Webhook configuration: %s %s %s (%s)", how, configuration["kind"],
                                    configuration["metadata"]["name"], webhooks_served(configuration))
                self.registered.set()
                return
            except api.ApiError as error:
                if error.status == 403:
                    logger.error("Cannot write the webhook configurations (%s): the operator's service account "
                                 "needs create, get and update on validatingwebhookconfigurations and "
                                 "mutatingwebhookconfigurations (docs/webhooks.md); retrying in %.0f s", error, delay)
                else:
                    logger.warning("Cannot write the webhook configurations yet (%s); retrying in %.1f s", error, delay)
            except Exception as error:  # noqa: BLE001 - credentials and transport errors of every kind: retried
                logger.warning("Cannot write the webhook configurations yet (%s: %s); retrying in %.1f s",
                               type(error).__name__, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_RETRY_S)
