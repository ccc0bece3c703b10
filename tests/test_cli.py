"""The `statmux` entry point: every part's subcommands, cheap start-up, exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import statmux.cli as cli
from statmux.commands import Commands, UsageError

HEAVY = ("numba", "torch", "kopf", "kubernetes", "matplotlib", "pydantic", "rich", "numpy")


def test_help_lists_every_part_and_imports_nothing_heavy() -> None:
    code = (
        "import json, sys\n"
        "from statmux.cli import build_parser\n"
        "_, commands = build_parser()\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[1])))\n"
        "print(json.dumps({'names': commands.names, 'loaded': loaded}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(HEAVY)], capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["loaded"] == []  # registration must stay cheap: it runs on every start
    placement = ["plan", "simulate", "experiment", "bench"]
    assert got["names"][:4] == placement
    assert {"runtime", "router", "operator", "crd"} <= set(got["names"])
    res = subprocess.run(
        [sys.executable, "-m", "statmux", "--help"], capture_output=True, text=True, check=True
    )
    for name in got["names"]:
        assert f"    {name}" in res.stdout


def test_an_entry_gets_its_words_and_parses_its_own_help(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["crd", "--help"])
    assert e.value.code == 0
    assert "usage: statmux crd" in capsys.readouterr().out


def _with_part(monkeypatch, register) -> None:
    monkeypatch.setattr(cli, "PARTS", (*cli.PARTS, register))


def test_registered_commands_dispatch_and_usage_errors_exit_2(monkeypatch, capsys) -> None:
    seen: list[object] = []

    def run(args) -> int:
        seen.append(args.size)
        if args.size < 0:
            raise UsageError(f"--size must be positive, got {args.size}")
        return 0

    def register(commands: Commands) -> None:
        commands.add("resize", run, help="a test command").add_argument("--size", type=int)
        commands.add_entry("echo", lambda argv: seen.append(argv) or 0, help="words as given")

    _with_part(monkeypatch, register)
    assert cli.main(["resize", "--size", "3"]) == 0
    assert cli.main(["echo", "--size", "x", "-h"]) == 0
    assert seen == [3, ["--size", "x", "-h"]]
    assert cli.main(["resize", "--size", "-1"]) == 2
    err = capsys.readouterr().err
    assert "error: --size must be positive, got -1" in err and "Traceback" not in err


def test_a_missing_extra_names_the_extra(monkeypatch, capsys) -> None:
    def entry(argv: list[str]) -> int:
        raise ModuleNotFoundError("No module named 'kopf'", name="kopf")

    _with_part(monkeypatch, lambda commands: commands.add_entry("needs-kopf", entry, help="x"))
    assert cli.main(["needs-kopf"]) == 2
    assert "pip install 'statmux[operator]'" in capsys.readouterr().err


def test_user_mistakes_in_placement_commands_exit_2(tmp_path, capsys) -> None:
    assert cli.main(["plan", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err
