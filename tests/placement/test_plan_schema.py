"""docs/plan.md embeds the Plan's JSON Schema generated from placement/plan.py: no drift."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from statmux.placement import plan_schema
from statmux.placement.plan import Plan, plan_json_schema

ROOT = Path(__file__).resolve().parents[2]


def _block(doc: str) -> str:
    start = doc.index(plan_schema.BEGIN) + len(plan_schema.BEGIN)
    return doc[start : doc.index(plan_schema.END)]


def test_docs_embed_the_current_schema() -> None:
    doc = (ROOT / plan_schema.DOC).read_text()
    embedded = _block(doc).strip().removeprefix("```json").removesuffix("```")
    assert json.loads(embedded) == plan_json_schema(), "run `statmux plan-schema --write`"
    assert plan_schema.plan_schema_main(["--check", "--root", str(ROOT)]) == 0


def test_schema_names_the_contract_fields() -> None:
    schema = plan_json_schema()
    model = schema["$defs"]["PlanModel"]
    assert {"name", "sloSeconds", "maxBatchSize", "stageLatencySeconds", "weights"} <= set(
        model["properties"]
    )
    assert model["properties"]["maxBatchSize"]["default"] == 1
    assert {"modelSet", "policy", "cluster", "groups", "predicted"} <= set(schema["required"])
    assert "planHash" in schema["properties"]


def test_check_fails_on_drift_and_write_repairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / plan_schema.DOC
    doc.parent.mkdir()
    shutil.copy(ROOT / plan_schema.DOC, doc)
    text = doc.read_text()
    doc.write_text(text.replace('"maxBatchSize": {', '"maxBatch": {', 1))
    root = ["--root", str(tmp_path)]
    assert plan_schema.plan_schema_main(["--check", *root]) == 1
    assert "out of date" in capsys.readouterr().err
    assert plan_schema.plan_schema_main(["--write", *root]) == 0
    assert doc.read_text() == text
    doc.write_text("# no markers\n")
    assert plan_schema.plan_schema_main(["--check", *root]) == 2
    assert "needs the lines" in capsys.readouterr().err


def test_the_runtime_docs_example_is_a_valid_plan() -> None:
    doc = (ROOT / "docs" / "runtime.md").read_text()
    text = doc.split("cat > plan.json <<'EOF'\n", 1)[1].split("\nEOF", 1)[0]
    plan = Plan.parse_json(text, "docs/runtime.md")
    assert {m.name: m.max_batch_size for m in plan.group("g0").models} == {
        "bert-a": 4,
        "gpt2-a": 1,
    }


def test_unplaced_advice_tells_memory_bound_models_from_those_that_fit() -> None:
    """Plan.unplaced_advice: more memory for the models memory keeps out; GPUs for those
    the planner's warning says fit (placing them lowered the attainment)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
    from plans import make_test_plan

    from statmux.placement.plan import left_out_warning

    base = make_test_plan([(1, 1, ["a"])])
    plan = base.model_copy(
        update={
            "unplaced": ["b", "c"],
            "warnings": [f"{left_out_warning('c')} beside the models of g0: ..."],
        }
    )
    assert plan.unplaced_advice() == (
        "raise cluster.gpuMemory or cluster.gpus for b; add GPUs for c (they fit: memory is "
        "not what keeps them out, see the warnings), or drop models"
    )
    only_memory = base.model_copy(update={"unplaced": ["b"]})
    assert only_memory.unplaced_advice() == (
        "raise cluster.gpuMemory or cluster.gpus for b, or drop models"
    )
