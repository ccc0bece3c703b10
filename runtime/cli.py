"""The runtime's subcommands: runtime (one rank of a serving group) and router.

Imported on every `statmux` start, so torch and the servers load inside the entries only.
Both parse their own flags (`statmux runtime --help`).
"""

from __future__ import annotations

from statmux.commands import Commands


def _runtime(argv: list[str]) -> int:
    from statmux.runtime.main import runtime_main

    return runtime_main(argv)


def _router(argv: list[str]) -> int:
    from statmux.runtime.router import router_main

    return int(router_main(argv))


def register(commands: Commands) -> None:
    commands.add_entry(
        "runtime",
        _runtime,
        help="run one rank of a Plan's group (rank 0 serves OIP REST/gRPC and /metrics)",
    )
    commands.add_entry("router", _router, help="route inference requests to the Plan's groups")
