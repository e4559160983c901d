"""An import-linter contract type for "this package imports only the standard library and itself".

import-linter's own ``forbidden`` contract takes a list of what may not be imported; the core's
rule is the other way round (everything outside the standard library is refused, including a
package nobody has thought of listing), so it gets a contract of its own. Registered in
``.importlinter`` as ``stdlib_only``; ``make lint`` runs it.

Options:
- ``containers``: the packages the rule holds for (every module under them);
- ``allow``: exceptions, one per line, ``importer -> package`` (e.g. ``gpuadmit.core.exact -> scipy``),
  each stating exactly which module may import what; an exception no longer used breaks the contract;
- ``refused_stdlib``: standard-library modules refused all the same (the core does no I/O and
  starts nothing: sockets, processes and event loops belong to the edge).
"""

from __future__ import annotations

import sys
from typing import Any

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck, InvalidContractOptions


def top_level(module: str) -> str:
    return module.split(".")[0]


class StdlibOnlyContract(Contract):
    type_name = "stdlib_only"

    containers = fields.ListField(subfield=fields.StringField())
    allow = fields.ListField(subfield=fields.StringField(), required=False, default=[])
    refused_stdlib = fields.ListField(subfield=fields.StringField(), required=False, default=[])

    def validate(self) -> None:
        bad = [line for line in self.allow if len(line.split("->")) != 2]
        if bad:
            raise InvalidContractOptions({"allow": f"expected 'importer -> package', got {bad}"})

    def allowed(self) -> set[tuple[str, str]]:
        return {(importer.strip(), package.strip()) for importer, package in (line.split("->") for line in self.allow)}

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        allowed = self.allowed()
        internal = {top_level(container) for container in self.containers}
        offences: list[dict[str, Any]] = []
        used_exceptions: set[tuple[str, str]] = set()
        for container in self.containers:
            if container not in graph.modules:
                raise ValueError(f"{container} is not in the import graph (is it among the root packages?)")
            for importer in sorted({container} | graph.find_descendants(container)):
                for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                    package = top_level(imported)
                    if package in internal and any(imported == c or imported.startswith(c + ".") for c in self.containers):
                        continue  # itself
                    if package in sys.stdlib_module_names and package not in self.refused_stdlib:
                        continue
                    if (importer, package) in allowed:
                        used_exceptions.add((importer, package))
                        continue
                    lines = [f"line {detail['line_number']}: {detail['line_contents']}"
                             for detail in graph.get_import_details(importer=importer, imported=imported)]
                    offences.append({"importer": importer, "imported": imported, "lines": lines})
        stale = sorted(allowed - used_exceptions)
        warnings = [f"the exception '{importer} -> {package}' is not used any more: remove it" for importer, package in stale]
        return ContractCheck(kept=not offences and not stale, warnings=warnings,
                             metadata={"offences": offences, "stale": stale})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for offence in check.metadata["offences"]:
            what = ("refused" if top_level(offence["imported"]) in self.refused_stdlib
                    else f"neither the standard library nor {', '.join(self.containers)}")
            output.print_error(f"{offence['importer']} imports {offence['imported']}, which is {what}:")
            for line in offence["lines"]:
                output.print_error(f"    {line}", bold=False)
            output.new_line()
        for importer, package in check.metadata["stale"]:
            output.print_error(f"the exception '{importer} -> {package}' is not used any more: remove it")
            output.new_line()
