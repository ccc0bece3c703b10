"""The runtime's subcommands: runtime (one rank of a serving group), router, and the local
serving tools up (a whole ModelSet on this machine), load (replay its workload) and profile.

Imported on every `statmux` start, so torch and the servers load inside the entries only.
Each parses its own flags (`statmux runtime --help`).
"""

from __future__ import annotations

from statmux.commands import Commands


def _runtime(argv: list[str]) -> int:
    from statmux.runtime.main import runtime_main

    return runtime_main(argv)


def _router(argv: list[str]) -> int:
    from statmux.runtime.router import router_main

    return int(router_main(argv))


def _up(argv: list[str]) -> int:
    from statmux.runtime.up import up_main

    return up_main(argv)


def _load(argv: list[str]) -> int:
    from statmux.runtime.load_cli import load_main

    return load_main(argv)


def _profile(argv: list[str]) -> int:
    from statmux.runtime.profiler import profile_main

    return profile_main(argv)


def register(commands: Commands) -> None:
    commands.add_entry(
        "runtime",
        _runtime,
        help="run one rank of a Plan's group (rank 0 serves OIP REST/gRPC and /metrics)",
    )
    commands.add_entry("router", _router, help="route inference requests to the Plan's groups")
    commands.add_entry(
        "up", _up, help="serve a ModelSet on this machine: every group's ranks and the router"
    )
    commands.add_entry(
        "load", _load, help="replay a ModelSet's workload at an endpoint; measured vs predicted"
    )
    commands.add_entry(
        "profile", _profile, help="measure per-stage latency with the real runtime; a profile file"
    )
