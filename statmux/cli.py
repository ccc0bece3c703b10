"""The `statmux` command line. Each part registers its own subcommands (statmux/commands.py).

    placement  plan, simulate, experiment, bench           placement/cli.py
    runtime    runtime, router                             runtime/cli.py
    operator   operator, crd                               operator/cli.py

Only argparse and the parts' light cli.py modules load before a subcommand runs; each
handler imports what it needs (numba, torch, kopf, ...) when it is called.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from statmux.commands import Commands, Register, UsageError, first_command
from statmux.operator import cli as operator_cli
from statmux.placement import cli as placement_cli
from statmux.runtime import cli as runtime_cli

# The order of `statmux --help`.
PARTS: tuple[Register, ...] = (
    placement_cli.register,
    runtime_cli.register,
    operator_cli.register,
)

# Third-party modules that come with an extra: a missing one is an installation choice.
EXTRA_OF_MODULE = {
    "torch": "runtime",
    "safetensors": "runtime",
    "aiohttp": "runtime",
    "grpc": "runtime",
    "tritonclient": "runtime",
    "prometheus_client": "runtime",
    "kopf": "operator",
    "kubernetes": "operator",
}


def build_parser() -> tuple[argparse.ArgumentParser, Commands]:
    parser = argparse.ArgumentParser(
        prog="statmux",
        description="Statistical multiplexing with model parallelism: place and serve many "
        "models on shared GPU groups.",
    )
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for register in PARTS:
        register(commands)
    return parser, commands


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    name = first_command(words)
    try:
        if name in commands.entries:  # it parses its own flags, --help included
            return int(commands.entries[name](words[1:]))
        args = parser.parse_args(words)  # exits 2 with usage on a bad flag
        return int(args.handler(args))
    except UsageError as e:
        return _error(str(e))
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing.startswith("statmux."):  # a part this checkout or build does not have
            return _error(f"statmux {name}: not available in this installation ({e})")
        extra = EXTRA_OF_MODULE.get(missing.split(".")[0])
        if extra is None:
            raise
        return _error(
            f"statmux {name}: needs {e.name!r}, which this installation lacks; "
            f"install the extra: pip install 'statmux[{extra}]'"
        )
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
