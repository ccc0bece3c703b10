"""The distribution layout: statmux.* maps onto the top-level folders, nothing shadows stdlib."""

import json
import os
import shutil
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


def _copy_checkout(dest: Path) -> Path:
    """The files a checkout needs to be installed and imported (symlinks kept as links)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "statmux", dest / "statmux", symlinks=True, ignore=ignore)
    for folder in ("placement", "runtime", "operator"):
        shutil.copytree(ROOT / folder, dest / folder, symlinks=True, ignore=ignore)
    return dest


def _module_names(checkout: Path) -> list[str]:
    names = []
    for folder, dirs, files in os.walk(checkout / "statmux", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                parts = Path(folder, f).relative_to(checkout).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


# Where each statmux module loads from, without running the heavy ones (find_spec executes
# only the parent packages: statmux/__init__.py and the namespace subpackages). A few light
# modules are imported for real too.
_WHERE = """
import importlib, importlib.util, json, sys
names = json.loads(sys.argv[1])
importlib.import_module("statmux.cli"); importlib.import_module("statmux.placement.spec")
print(json.dumps({n: importlib.util.find_spec(n).origin for n in names}))
"""


def test_an_editable_install_never_mixes_checkouts(tmp_path):
    """Checkout A installed editable; Python run from checkout B and from elsewhere: every
    statmux module comes from one checkout, the one its `statmux` package came from."""
    a = _copy_checkout(tmp_path / "a")
    b = _copy_checkout(tmp_path / "b")
    venv = tmp_path / "venv"
    # No pip in the venv (offline, fast): the shared environment's pip installs into it,
    # and a .pth lends it the shared environment's dependencies. Only the shared
    # site-packages directory itself goes on the path: its own .pth files (the editable
    # finder of the checkout installed there) are not run.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = venv / "bin" / "python"
    site_dir = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    shared = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site_dir, "shared-deps.pth").write_text(shared + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", "-e", a],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    names = _module_names(a)
    assert "statmux.runtime.group" in names and "statmux.placement.spec" in names
    for cwd, home in ((b, b), (tmp_path, a)):  # the current directory wins, else the install
        out = subprocess.run(
            [py, "-c", _WHERE, json.dumps(names)],
            cwd=cwd, env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        origins = json.loads(out)
        for name, origin in origins.items():
            assert origin is not None, name
            assert Path(origin).resolve().is_relative_to(home.resolve()), (
                f"running from {cwd}: {name} came from {origin}, not from {home}"
            )


def test_the_stdlib_operator_module_is_never_shadowed(tmp_path):
    code = "import statmux.operator, operator; print(operator.itemgetter)"
    for cwd in (tmp_path, ROOT):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
        )
        assert "operator.itemgetter" in out.stdout
