"""`statmux plan-schema`: the Plan's JSON Schema, generated from the pydantic models.

    statmux plan-schema            # print the JSON Schema
    statmux plan-schema --write    # rewrite the generated block of docs/plan.md
    statmux plan-schema --check    # exit 1 if docs/plan.md's block drifted

docs/plan.md embeds the schema between two marker lines; everything outside them is prose.
tests/placement/test_plan_schema.py fails when the block drifts from placement/plan.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from statmux.placement.plan import plan_json_schema

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = Path("docs/plan.md")
BEGIN = "<!-- BEGIN GENERATED plan-schema: `statmux plan-schema --write`; do not edit -->"
END = "<!-- END GENERATED plan-schema -->"


class DocError(ValueError):
    """docs/plan.md lacks the markers of the generated block."""


def render_schema() -> str:
    return json.dumps(plan_json_schema(), indent=2) + "\n"


def with_schema(doc: str) -> str:
    """`doc` with the block between the markers replaced by the current schema."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise DocError(f"{DOC} needs the lines {BEGIN!r} and {END!r} around the schema")
    block = f"{BEGIN}\n\n```json\n{render_schema()}```\n\n"
    return doc[:start] + block + doc[end:]


def plan_schema_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="statmux plan-schema", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite the block in {DOC}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if {DOC}'s block drifted")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(render_schema())
        return 0
    path = args.root / DOC
    try:
        current = path.read_text()
        wanted = with_schema(current)
    except (OSError, DocError) as err:
        print(f"statmux plan-schema: error: {err}", file=sys.stderr)
        return 2
    if current == wanted:
        return 0
    if args.write:
        path.write_text(wanted)
        print(f"wrote {path}")
        return 0
    print(f"{path} is out of date: run `statmux plan-schema --write`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(plan_schema_main())
