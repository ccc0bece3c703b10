"""The distribution layout: statmux.* maps onto the top-level folders, nothing shadows stdlib."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_folder_is_a_listed_package():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    for d in (ROOT / "statmux").rglob("*"):
        if d.is_dir() and any(d.glob("*.py")) and "__pycache__" not in d.parts:
            name = ".".join(["statmux", *d.relative_to(ROOT / "statmux").parts])
            assert name in listed, f"{d} holds Python files but {name} is not in pyproject"


def test_subpackages_are_symlinks_to_the_top_level_folders():
    for folder in ("placement", "runtime", "operator"):
        link = ROOT / "statmux" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), folder


def test_top_level_folders_have_no_init():
    # An __init__.py would make `operator/` shadow the standard library from the repo root.
    for folder in ("placement", "runtime", "operator"):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_imports_from_any_directory(tmp_path):
    code = (
        "import statmux.operator, statmux.placement, statmux.runtime, operator; "
        "print(operator.itemgetter)"
    )
    for cwd in (tmp_path, ROOT):
        out = subprocess.run(
            [sys.executable, "-S", "-c", "import site; site.main(); " + code],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
        assert "operator.itemgetter" in out.stdout
