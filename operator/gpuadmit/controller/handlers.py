"""kopf handlers: a few lines each, all the work is elsewhere.

kopf runs the operator's life cycle: log-in (the same credentials our client
uses), start-up (build the runtime: watch streams, cache, loop; see runtime.py),
clean-up, peering, and the admission webhooks (registered by importing
``gpuadmit.controller.webhooks`` when a webhook port is set). The watch events
themselves do not go through kopf handlers: see watch.py for why.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from gpuadmit.controller import api
from gpuadmit.controller.runtime import OperatorOptions, OperatorRuntime

logger = logging.getLogger(__name__)

_options = OperatorOptions()
_webhook_args: Any = None
runtime: OperatorRuntime | None = None
webhooks: Any = None


def configure(options: OperatorOptions, webhook_args: Any = None) -> None:
    """Called by `gpuadmit run` before kopf starts. With a webhook port, imports the admission
    webhooks module, which registers its @kopf.on.validate/mutate handlers. (Without one they must
    stay unregistered: kopf refuses admission handlers that have no server.)"""
    global _options, _webhook_args, webhooks
    _options, _webhook_args = options, webhook_args
    if options.webhook_port:
        try:
            from gpuadmit.controller import webhooks as webhooks_module
        except ImportError as error:  # written separately; the operator runs without it
            if error.name != "gpuadmit.controller.webhooks":
                raise
            logger.warning("gpuadmit.controller.webhooks is not available: no admission webhooks")
        else:
            webhooks = webhooks_module


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return api.resolve_credentials()  # the same credentials our own client uses


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    global runtime
    settings.posting.enabled = False  # we post our own Events, with the machine reasons
    # CRD scanning stays on (kopf's default): with it off, kopf's discovery task hangs for 5 s at exit.
    server = None
    if webhooks is not None and _options.webhook_port and hasattr(webhooks, "configure_webhook_server"):
        server = webhooks.configure_webhook_server(settings, _webhook_args)
    runtime = OperatorRuntime(_options)
    registrar = getattr(server, "registrar", None)
    if registrar is not None:  # --manage-webhook-configurations: not ready before they are written
        runtime.readiness_gates["webhook_configurations"] = registrar.registered.is_set
    if webhooks is not None and hasattr(webhooks, "set_product_provider"):
        webhooks.set_product_provider(runtime.known_gpu_products)
    if webhooks is not None and hasattr(webhooks, "set_namespace_provider"):
        webhooks.set_namespace_provider(runtime.namespace_object)
    try:
        await runtime.start()
    except api.ApiError as error:
        await runtime.stop()
        raise kopf.TemporaryError(f"cannot read the cluster yet: {error}", delay=2) from error


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if runtime is not None:
        await runtime.stop()
