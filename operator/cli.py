"""The operator's subcommands: operator (the kopf operator) and crd (the generated CRD).

Imported on every `statmux` start, so kopf and the Kubernetes client load inside the
entries only. Both parse their own flags (`statmux operator --help`).
"""

from __future__ import annotations

from statmux.commands import Commands


def _operator(argv: list[str]) -> int:
    from statmux.operator.main import operator_main

    return operator_main(argv)


def _crd(argv: list[str]) -> int:
    from statmux.operator.crd import crd_main

    return crd_main(argv)


def register(commands: Commands) -> None:
    commands.add_entry("operator", _operator, help="run the ModelSet operator (kopf)")
    commands.add_entry(
        "crd", _crd, help="print, write or check the ModelSet CRD generated from the schema"
    )
