"""ModelSet validation: good manifests load, bad ones name the field and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from statmux.placement.spec import (
    PlacementSpec,
    SpecError,
    load_modelset,
    parse_modelset,
    parse_quantity,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())


def variant(**changes):
    doc = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return doc


def error_of(doc) -> str:
    with pytest.raises(SpecError) as e:
        parse_modelset(doc)
    return str(e.value)


def test_every_example_loads():
    for f in sorted((ROOT / "examples").glob("*.yaml")):
        ms = load_modelset(f)
        assert ms.kind == "ModelSet" and ms.spec.models


def test_defaults():
    ms = parse_modelset(BASE)
    assert ms.spec.placement.policy == "statmux"
    assert ms.spec.cluster.gpu_memory_bytes == 13 * 2**30
    assert ms.spec.models[0].weights.source == "synthetic"


def test_unknown_policy_lists_allowed_values():
    msg = error_of(variant(spec__placement__policy="fastest"))
    assert "spec.placement.policy" in msg
    for p in ("statmux", "sr", "clockwork++", "alpaserve", "manual"):
        assert p in msg


def test_unknown_field_is_rejected_with_its_path():
    msg = error_of(variant(spec__cluster__gpuz=3))
    assert "spec.cluster.gpuz" in msg


def test_misspelled_field_lists_the_allowed_ones_and_suggests_the_nearest():
    msg = error_of(variant(spec__cluster__gpuMemroy="1Gi"))
    assert (
        "spec.cluster.gpuMemroy: unknown field; allowed: gpus, gpuMemory, gpusPerNode, "
        "gpuProduct; did you mean 'gpuMemory'?"
    ) in msg
    # inside list items and optional sub-objects too
    msg = error_of(variant(spec__models__1__weights__presett="tiny"))
    assert "spec.models.1.weights.presett: unknown field; allowed: source, architecture" in msg
    assert "did you mean 'preset'?" in msg
    # nothing close: no suggestion, still the allowed names
    msg = error_of(variant(spec__placement__zzz=1))
    allowed = ", ".join(f.alias or n for n, f in PlacementSpec.model_fields.items())
    assert f"spec.placement.zzz: unknown field; allowed: {allowed}" in msg
    assert "groups" in allowed
    assert "did you mean" not in msg


def test_workload_needs_exactly_one_source():
    doc = variant(spec__workload__perModel=[{"model": "bert-a", "rate": 1}])
    msg = error_of(doc)
    assert "spec.workload" in msg and "exactly one of perModel, total or trace" in msg


def test_per_model_rate_must_name_known_model():
    doc = variant(
        spec__workload__total=..., spec__workload__perModel=[{"model": "nope", "rate": 1}]
    )
    msg = error_of(doc)
    assert "'nope'" in msg and "bert-a" in msg


def test_slo_needs_one_kind():
    msg = error_of(variant(spec__slo={"sloScale": 2, "latencySeconds": 0.1}))
    assert "spec.slo" in msg and "latencySeconds or sloScale" in msg


def test_profile_ref_needs_exactly_one():
    msg = error_of(variant(spec__models__0__profile={"builtin": "bert-1.3b", "file": "x.json"}))
    assert "spec.models.0.profile" in msg and "builtin, file or inline" in msg


def test_duplicate_model_names():
    doc = variant(spec__models__1__name="bert-a")
    assert "repeated: bert-a" in error_of(doc)


def test_bad_name_and_memory_quantity():
    assert "spec.models.0.name" in error_of(variant(spec__models__0__name="Bad_Name"))
    msg = error_of(variant(spec__cluster__gpuMemory="lots"))
    assert "spec.cluster.gpuMemory: 'lots' is not a byte quantity" in msg
    assert "for example 13Gi" in msg and "pattern" not in msg and "^[0-9]" not in msg


def test_manual_policy_requires_groups_and_known_models():
    assert "needs groups" in error_of(variant(spec__placement={"policy": "manual"}))
    doc = variant(
        spec__placement={
            "policy": "manual",
            "groups": [{"pipelineStages": 2, "tensorParallel": 1, "models": ["ghost"]}],
        }
    )
    assert "'ghost'" in error_of(doc)


def test_quantities():
    assert parse_quantity("13Gi") == 13 * 2**30
    assert parse_quantity("16G") == 16 * 10**9
    assert parse_quantity("1024") == 1024
    with pytest.raises(ValueError, match="byte quantity"):
        parse_quantity("12 GB")


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_modelset(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_modelset(bad)
    other = tmp_path / "other.yaml"
    other.write_text("kind: Deployment\n")
    with pytest.raises(SpecError, match="no document with kind: ModelSet"):
        load_modelset(other)


def test_relative_paths_resolve_against_the_manifest(tmp_path):
    doc = variant(spec__models__0__profile={"file": "profiles/p.json"})
    path = tmp_path / "ms.yaml"
    path.write_text(yaml.safe_dump(doc))
    ms = load_modelset(path)
    assert ms.spec.models[0].profile.file == str(tmp_path / "profiles" / "p.json")


def test_inline_profile_accepts_integer_batch_keys_from_yaml():
    doc = variant()
    doc["spec"]["models"][0]["profile"] = yaml.safe_load(
        """
inline:
  weightBytes: 1.0e9
  configs:
    - {pipelineStages: 1, tensorParallel: 1, stageLatencyS: {1: [0.05], 2: [0.08]}}
"""
    )
    ms = parse_modelset(doc)
    inline = ms.spec.models[0].profile.inline
    assert inline is not None
    assert inline.configs[0].stage_latency_s == {"1": [0.05], "2": [0.08]}


def test_per_model_max_batch_size_defaults_to_the_modelset_value():
    doc = variant(spec__maxBatchSize=4, spec__models__1__maxBatchSize=16)
    spec = parse_modelset(doc).spec
    caps = [spec.max_batch_size_of(m) for m in spec.models]
    assert caps[0] == 4 and caps[1] == 16 and set(caps[2:]) == {4}
    msg = error_of(variant(spec__models__0__maxBatchSize=0))
    assert "spec.models.0.maxBatchSize" in msg and "greater than or equal to 1" in msg
