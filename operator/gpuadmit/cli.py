"""The `gpuadmit` command: a thin dispatcher to one module per subcommand.

Each subcommand module offers ``add_arguments(parser)`` and ``run(args) -> int``
and is imported only when chosen, so `gpuadmit decide` never loads kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gpuadmit import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "decide": ("gpuadmit.decide", "what the policy would do with a cluster dump (kubectl get -o yaml)"),
    "run": ("gpuadmit.controller.main", "run the operator against the API server KUBECONFIG points to"),
    "demo": ("gpuadmit.demo", "the whole system on an embedded, emulated cluster"),
    "queue": ("gpuadmit.queuecmd", "the exact queue, as the running operator decided it (its health port's /queue)"),
    "simulate": ("gpuadmit.sim.cli", "replay a GPU trace against the margin policy and peer policies"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuadmit",
        description="Admit, queue or reject GPU workloads by the margin each GPU-hour earns.",
    )
    parser.add_argument("--version", action="version", version=f"gpuadmit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if name in argv:  # only the chosen subcommand's module is imported
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
