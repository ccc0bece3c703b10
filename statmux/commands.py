"""How a part of statmux adds subcommands to the `statmux` command line.

Each part (placement, runtime, operator) has a `cli.py` with `register(commands: Commands)`;
statmux/cli.py calls every part's `register` and dispatches. To add a subcommand:

    def _cmd_up(args: argparse.Namespace) -> int:
        from statmux.runtime.up import up       # heavy imports go inside the handler
        return up(args.modelset)

    def register(commands: Commands) -> None:
        p = commands.add("up", _cmd_up, help="plan and serve a ModelSet locally")
        p.add_argument("modelset")

or, for a command that already has its own argparse parser and `main(argv) -> int`:

        commands.add_entry("router", _router_main, help="route requests to the groups")

where `_router_main(argv)` imports the module and calls its main. Registration must stay
cheap: it runs on every `statmux` invocation, `statmux --help` included, so a part's cli.py
imports only argparse and light modules at the top (benchmarks/cli_startup.py measures it).

A handler raises UsageError for a user mistake: statmux prints `error: <message>` and exits
with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]
Entry = Callable[[list[str]], int]


class UsageError(Exception):
    """A user mistake (a missing file, a bad flag value, a bad ModelSet): exit 2, no traceback."""


class Commands:
    """The subcommands of `statmux`, as the parts register them."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._sub = subparsers
        self.names: list[str] = []  # in registration order
        self.entries: dict[str, Entry] = {}

    def add(self, name: str, handler: Handler, *, help: str) -> argparse.ArgumentParser:
        """A subcommand whose flags statmux parses; `handler(args)` returns the exit status."""
        self.names.append(name)
        parser = self._sub.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser

    def add_entry(self, name: str, entry: Entry, *, help: str) -> None:
        """A subcommand with its own parser: `entry(argv)` gets every word after its name."""
        self.names.append(name)
        self._sub.add_parser(name, help=help, add_help=False)
        self.entries[name] = entry


Register = Callable[[Commands], None]


def first_command(argv: Sequence[str]) -> str | None:
    """The subcommand's name: the first word (statmux has no global flags besides --help)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def unwritable(path: str, flag: str, make_parents: bool = False) -> str | None:
    """Why the output file `path` (given as `flag`) cannot be written; None when it can.
    Checked before the work that produces it, so that no result is lost to a bad path."""
    target = Path(path)
    if target.is_dir():
        return f"{flag} {path}: is a folder; give a file name"
    parent = target.parent
    if make_parents:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"{flag} {path}: cannot create the folder {parent}: {e.strerror}"
    if not parent.is_dir():
        return f"{flag} {path}: the folder {parent} does not exist"
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return f"{flag} {path}: not writable"
    return None
