"""The Dockerfile cannot be built here (no Docker engine): check its structure instead.

Parses the Dockerfile into stages and checks the targets, the non-root users, the pinned
base images and pip versions, and that everything it COPYs from the build context exists
in the repository and is not excluded by .dockerignore.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
FINAL_TARGETS = ("operator", "runtime")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: comments dropped, backslash continuations joined."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(p for p in buf if p)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = []
    assert not buf, "the Dockerfile ends inside a continued line"
    return out


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            assert len(words) in (1, 3), f"line {ins.line}: FROM {ins.args!r}"
            if len(words) == 3:
                assert words[1].upper() == "AS", f"line {ins.line}: FROM {ins.args!r}"
            stages.append(Stage(words[0], words[2] if len(words) == 3 else None, ins.line))
        elif not stages:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may precede the first FROM"
            name, _, default = ins.args.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(ins)
    return args, stages


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def test_multi_stage_with_operator_runtime_and_builder(dockerfile):
    _, stages = dockerfile
    names = [s.name for s in stages]
    assert all(names), f"every stage is named: {names}"
    assert len(set(names)) == len(names), f"stage names are unique: {names}"
    for target in (*FINAL_TARGETS, "builder"):
        assert target in names, f"no stage named {target!r}: {names}"


def test_base_images_are_pinned(dockerfile):
    args, stages = dockerfile
    names = {s.name for s in stages}
    for stage in stages:
        base = expand(stage.base, args)
        if base in names:
            continue  # built on an earlier stage
        image, _, tag = base.rpartition(":")
        assert image and "@sha256:" not in image, f"stage {stage.name}: {base!r} needs a tag"
        assert tag not in ("", "latest"), f"stage {stage.name}: {base!r} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), (
            f"stage {stage.name}: {base!r} should pin a full version tag (x.y.z)"
        )


def _chain(stage: Stage, stages: list[Stage]) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in stages}
    out = [stage]
    while out[-1].base in by_name:
        out.append(by_name[out[-1].base])
    return out


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stages_run_as_non_root(dockerfile, target):
    _, stages = dockerfile
    stage = next(s for s in stages if s.name == target)
    chain = _chain(stage, stages)
    users = [i.args for s in chain for i in reversed(s.instructions) if i.keyword == "USER"]
    assert users, f"stage {target} never sets USER (it would run as root)"
    user = users[0].split(":")[0]
    assert user not in ("root", "0"), f"stage {target} runs as {users[0]!r}"
    if user.isdigit():
        assert int(user) >= 1000, f"stage {target}: uid {user} looks like a system user"


def test_operator_image_has_no_torch_and_runtime_has_it(dockerfile):
    _, stages = dockerfile
    by_name = {s.name: s for s in stages}

    def pip_installs(name: str) -> str:
        return " ".join(
            i.args
            for s in _chain(by_name[name], stages)
            for i in s.instructions
            if i.keyword == "RUN" and "pip install" in i.args
        )

    assert "[operator]" in pip_installs("operator")
    assert "torch" not in pip_installs("operator").replace("find_spec('torch')", "")
    assert "[runtime]" in pip_installs("runtime")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not any(Requirement(r).name == "torch" for r in extras["operator"])
    assert any(Requirement(r).name == "torch" for r in extras["runtime"])


def test_every_pip_install_uses_the_constraints(dockerfile):
    _, stages = dockerfile
    for stage in stages:
        env = " ".join(i.args for i in stage.instructions if i.keyword == "ENV")
        for ins in stage.instructions:
            if ins.keyword == "RUN" and ("pip install" in ins.args or "pip wheel" in ins.args):
                assert "--constraint" in ins.args or "-c " in ins.args or "PIP_CONSTRAINT" in env, (
                    f"line {ins.line}: pip without the constraints file: {ins.args}"
                )


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = str(req.specifier)
            assert spec.startswith("==") and "," not in spec, f"{line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", req.name).lower()] = spec[2:]
    return pins


def test_constraints_pin_every_dependency_of_the_images():
    pins = _constraints()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("runtime", "operator"):
        wanted += project["optional-dependencies"][extra]
    wanted += ["setuptools"]  # the builder's build backend
    for raw in wanted:
        req = Requirement(raw)
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        assert key in pins, f"{req.name} is not pinned in {CONSTRAINTS.relative_to(ROOT)}"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"{req.name}=={pins[key]} in the constraints does not satisfy pyproject's {raw!r}"
        )


def _ignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            out.append((negate, line.lstrip("!").strip("/")))
    return out


def ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a pattern that matches a
    parent directory excludes everything below it."""
    parts = rel.strip("/").split("/")
    result = False
    for negate, pattern in patterns:
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(parts[depth - 1], pattern[3:])
            ):
                result = not negate
                break
    return result


def test_ignore_rule_semantics():
    patterns = [(False, "tests"), (False, "**/__pycache__"), (False, "*.egg-info")]
    assert ignored("tests/test_x.py", patterns)
    assert ignored("placement/__pycache__/x.pyc", patterns)
    assert ignored("statmux.egg-info/PKG-INFO", patterns)
    assert not ignored("placement/spec.py", patterns)
    assert not ignored("tests", [(False, "tests"), (True, "tests")])


def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile):
    _, stages = dockerfile
    patterns = _ignore_patterns()
    copied = []
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            words = shlex.split(ins.args)
            if any(w.startswith("--from=") for w in words):
                continue  # from another stage, not from the build context
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, f"line {ins.line}: {ins.keyword} without a source"
            for src in sources:
                path = ROOT / src
                assert path.exists(), f"line {ins.line}: COPY source {src!r} does not exist"
                assert not ignored(src, patterns), (
                    f"line {ins.line}: {src!r} is excluded by .dockerignore"
                )
                copied.append(src.rstrip("/"))
    # The wheel needs statmux/ and every top-level folder its subpackage symlinks point to.
    folders = ["statmux"] + [
        os.readlink(p).strip("./") for p in (ROOT / "statmux").iterdir() if p.is_symlink()
    ]
    assert len(folders) > 1, "statmux/ has no symlinked subpackages"
    for folder in folders:
        assert folder in copied, f"the builder does not COPY {folder}/ (a package of the wheel)"
    assert "pyproject.toml" in copied


def test_copied_package_sources_are_not_ignored():
    """Files of the packages must reach the build context (not only their folders)."""
    patterns = _ignore_patterns()
    for folder in ("statmux", "placement", "runtime", "operator"):
        sources = [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
        assert sources, folder
        for p in sources:
            rel = p.relative_to(ROOT).as_posix()
            assert not ignored(rel, patterns), f"{rel} is excluded by .dockerignore"


def test_deps_script_lists_the_base_and_one_extra() -> None:
    # docker/deps.py feeds the images' dependency layers: what pyproject.toml asks for, no more.
    script = ROOT / "docker" / "deps.py"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in ("operator", "runtime"):
        out = subprocess.run(
            [sys.executable, str(script), str(ROOT / "pyproject.toml"), extra],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert out == project["dependencies"] + project["optional-dependencies"][extra]
    bad = subprocess.run(
        [sys.executable, str(script), str(ROOT / "pyproject.toml"), "gpu"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "optional-dependencies.gpu" in bad.stderr
