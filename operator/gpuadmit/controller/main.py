"""`gpuadmit run`: the operator, against whatever API server KUBECONFIG (or the
in-cluster service account) points to.

The flags are a contract with the Helm chart (docs/architecture.md). This module
only turns them into ``OperatorOptions`` and hands over to kopf, which calls the
handlers in ``handlers.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid

from gpuadmit.controller.peering import random_priority
from gpuadmit.controller.queueview import DEFAULT_EXACT_HEAD
from gpuadmit.controller.runtime import OperatorOptions
from gpuadmit.controller.webhook_configs import FAILURE_POLICIES
from gpuadmit.core.podsecurity import DEFAULT_LEVEL, LEVELS


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=_port, default=8080, help="Prometheus /metrics port (0: off; default 8080)")
    parser.add_argument("--health-port", type=_port, default=8081, help="/healthz and /readyz port (0: off; default 8081)")
    parser.add_argument("--webhook-port", type=_port, default=9443, help="admission webhook HTTPS port (0: off; default 9443)")
    parser.add_argument("--webhook-cert-dir", default=None, help="directory with tls.crt and tls.key (self-signed when absent)")
    parser.add_argument("--manage-webhook-configurations", action="store_true",
                        help="write the Validating/MutatingWebhookConfiguration 'gpuadmit' pointing at this webhook "
                             "server (URL and CA bundle), for clusters without the Helm chart (needs a webhook port)")
    parser.add_argument("--webhook-host", default=os.environ.get("GPUADMIT_WEBHOOK_HOST") or None,
                        help="host name or address the API server reaches the webhook server at, for "
                             "--manage-webhook-configurations (default: the listening address, 127.0.0.1 for all interfaces)")
    parser.add_argument("--webhook-failure-policy", choices=FAILURE_POLICIES, default="Fail",
                        help="failurePolicy of the GPUWorkload webhooks with --manage-webhook-configurations (default Fail)")
    parser.add_argument("--native-webhook-failure-policy", choices=FAILURE_POLICIES, default="Fail",
                        help="failurePolicy of the Job and pod webhooks of managed namespaces with "
                             "--manage-webhook-configurations (default Fail: nothing unheld while the operator is down)")
    parser.add_argument("--resync-seconds", type=_non_negative_float, default=600.0,
                        help="full re-list and whole cycle at least this often (default 600)")
    parser.add_argument("--debounce-seconds", type=_non_negative_float, default=0.2, help="wait after a change to batch a burst into one cycle (default 0.2)")
    parser.add_argument("--peering", metavar="NAME", default=None, help="kopf peering name: one active replica among those sharing it (default: standalone)")
    parser.add_argument("--namespace", dest="namespaces", action="append", default=[], help="watch GPUWorkloads in this namespace (repeatable; default: all)")
    parser.add_argument("--policy-name", default="default", help="the MarginPolicy in force (default: default)")
    parser.add_argument("--max-concurrent-writes", type=int, default=48, help="API requests in flight at once (default 48)")
    parser.add_argument("--pod-security-level", choices=LEVELS, default=DEFAULT_LEVEL,
                        help="Pod Security Standards level GPUWorkload templates must meet; a namespace's stricter "
                             "pod-security.kubernetes.io/enforce label wins (default baseline)")
    parser.add_argument("--max-failed-cycles", type=int, default=5,
                        help="after this many scheduling cycles in a row fail as a whole, /readyz answers 503 "
                             "until one succeeds (0: never; default 5)")
    parser.add_argument("--unschedulable-seconds", type=_non_negative_float, default=120.0,
                        help="how long kube-scheduler may report a pod of an admitted workload Unschedulable before "
                             "the workload's pods are deleted, its GPUs given back and it is requeued (default 120)")
    parser.add_argument("--exact-queue-positions", type=_non_negative_int, default=DEFAULT_EXACT_HEAD,
                        help="statuses carry the exact queue position only for this many at the head of the queue; "
                             "beyond, the band it lies in (11-20, ..., 101-200, ...), so an event does not rewrite "
                             "every queued status; `gpuadmit queue` prints the exact queue "
                             f"(default {DEFAULT_EXACT_HEAD})")
    parser.add_argument("--per-namespace-metrics", action="store_true", help="add per-namespace metric series (off: metrics name no tenant)")
    parser.add_argument("--log-level", default=os.environ.get("GPUADMIT_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING (default INFO)")


def options_from_args(args: argparse.Namespace) -> OperatorOptions:
    return OperatorOptions(
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        webhook_port=args.webhook_port,
        webhook_cert_dir=args.webhook_cert_dir,
        resync_seconds=max(1.0, args.resync_seconds),
        debounce_seconds=args.debounce_seconds,
        peering=args.peering,
        namespaces=tuple(dict.fromkeys(args.namespaces)),
        policy_name=args.policy_name,
        identity=f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}",
        priority=random_priority(),
        max_concurrency=max(1, args.max_concurrent_writes),
        per_namespace_metrics=args.per_namespace_metrics,
        pod_security_level=args.pod_security_level,
        max_failed_cycles=max(0, args.max_failed_cycles),
        unschedulable_seconds=args.unschedulable_seconds,
        exact_queue_positions=args.exact_queue_positions,
    )


def check_files(args: argparse.Namespace) -> None:
    """The files `gpuadmit run` reads, checked before kopf starts: each problem is an ``InputError``.

    Without this a missing, empty or garbled KUBECONFIG or certificate ended in a traceback from
    deep inside kopf, which then kept retrying for ever.
    """
    from gpuadmit.inputs import InputError, decode_utf8, read_bytes

    for path in os.environ.get("KUBECONFIG", "").split(os.pathsep):
        if path:
            decode_utf8(read_bytes(path, "KUBECONFIG"), f"KUBECONFIG {path}")
    from gpuadmit.controller.api import resolve_credentials

    try:
        resolve_credentials()
    except Exception as error:  # noqa: BLE001 - kopf's login raises anything from LoginError to YAML errors
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"no usable credentials (in-cluster service account or KUBECONFIG): {text}") from None
    from gpuadmit.tlsutil import find_tls_files

    files = find_tls_files(args.webhook_cert_dir) if args.webhook_port else None
    if files is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(files.certfile), str(files.keyfile))
        except (OSError, ssl.SSLError) as error:
            raise InputError(f"--webhook-cert-dir {args.webhook_cert_dir}: tls.crt and tls.key are not a usable pair: {error}") from None


def run(args: argparse.Namespace) -> int:
    from gpuadmit.inputs import EXIT_BAD_INPUT, InputError

    if getattr(args, "manage_webhook_configurations", False) and not args.webhook_port:
        print("gpuadmit run: --manage-webhook-configurations needs the webhook server (--webhook-port is 0)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        check_files(args)
    except InputError as error:
        print(f"gpuadmit run: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    import kopf  # imported here so `gpuadmit decide` never loads it

    from gpuadmit.controller import handlers

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per watch event otherwise
    options = options_from_args(args)
    handlers.configure(options, args)
    kopf.run(
        standalone=options.peering is None,
        peering_name=options.peering,
        priority=options.priority,
        identity=options.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        clusterwide=not options.namespaces,
        namespaces=list(options.namespaces),
    )
    return 0
