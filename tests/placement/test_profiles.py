"""Model profiles: built-ins, file/inline loading, completion by the analytic model, errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from statmux.placement.analytic_profile import (
    PROFILE_DATA,
    REFERENCE_PROFILE_FILE,
    analytic_error_report,
    fill_batch_curve,
    predict_stage_latency,
    stage_layers,
)
from statmux.placement.profile import ModelProfile, ParallelConfig
from statmux.placement.profiles import (
    STANDARD_BATCH_SIZES,
    STANDARD_CONFIGS,
    builtin_profile,
    builtin_profile_names,
    load_profile_file,
    profiles_for_spec,
)
from statmux.placement.spec import SpecError, parse_spec

REFERENCE_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference"
SHARED_REFERENCE = REFERENCE_DIR / "bert-1.3b-v100-profile.json"
BUNDLED_REFERENCE = PROFILE_DATA / REFERENCE_PROFILE_FILE
EXPECTED_BUILTINS = {"bert-1.3b", "bert-2.6b", "bert-6.7b", "moe-1.3b", "moe-2.4b", "moe-5.3b"}
# The measured grid itself is noisy: pp2×tp2 sums to 5% less than pp1×tp2 at batch 1.
MEASUREMENT_NOISE = 0.06


def reference_grid() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUNDLED_REFERENCE.read_text())
    return data


def small_profile(**top: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "weightBytes": 2e9,
        "configs": [
            {"pipelineStages": 1, "tensorParallel": 1, "stageLatencyS": {"1": [0.1], "4": [0.2]}},
            {
                "pipelineStages": 2,
                "tensorParallel": 1,
                "stageLatencyS": {"1": [0.052, 0.053]},
            },
        ],
    }
    base.update(top)
    return base


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- built-ins
def test_builtin_names() -> None:
    assert set(builtin_profile_names()) == EXPECTED_BUILTINS


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_builtin_is_complete_and_sane(name: str) -> None:
    profile = builtin_profile(name)
    assert profile.name == name
    assert set(STANDARD_CONFIGS) <= set(profile.configs)
    assert_complete_and_sane(profile)


def assert_complete_and_sane(profile: ModelProfile) -> None:
    for config, cp in profile.configs.items():
        assert cp.config == config
        assert set(STANDARD_BATCH_SIZES) <= set(cp.batch_sizes)
        assert list(cp.batch_sizes) == sorted(cp.batch_sizes)
        assert cp.stage_latency.shape == (len(cp.batch_sizes), config.pp)
        assert np.all(np.isfinite(cp.stage_latency)) and np.all(cp.stage_latency > 0)
        # latency grows with batch size
        totals = cp.stage_latency.sum(axis=1)
        assert np.all(np.diff(totals) > 0), f"{config}: {totals}"
        # every GPU holds at least its even share of the weights
        assert cp.weight_bytes_per_gpu >= profile.weight_bytes / config.gpus * (1 - 1e-9)
    for pp in {c.pp for c in profile.configs}:
        tps = sorted(c.tp for c in profile.configs if c.pp == pp)
        lat = [profile.configs[ParallelConfig(pp, tp)].latency(1) for tp in tps]
        assert all(a > b for a, b in itertools.pairwise(lat)), f"pp{pp}: {lat}"
    for config, cp in profile.configs.items():
        single = profile.get(1, config.tp)
        if config.pp == 1 or single is None:
            continue
        # measured (or scaled measured) rows carry the grid's noise; the analytic model
        # alone is checked strictly in test_analytic_pipeline_never_beats_one_stage
        for b in STANDARD_BATCH_SIZES:
            assert cp.latency(b) >= single.latency(b) * (1 - MEASUREMENT_NOISE), (config, b)


def test_builtin_is_shared_and_cached() -> None:
    assert builtin_profile("bert-1.3b") is builtin_profile("bert-1.3b")


def test_unknown_builtin_lists_allowed_names() -> None:
    with pytest.raises(SpecError) as err:
        builtin_profile("bert-13b")
    assert "bert-13b" in str(err.value)
    for name in EXPECTED_BUILTINS:
        assert name in str(err.value)


def test_bert_1_3b_keeps_the_measured_numbers() -> None:
    profile = builtin_profile("bert-1.3b")
    for c in reference_grid()["configs"]:
        cp = profile.get(c["pipeline_stages"], c["tensor_parallel"])
        assert cp is not None and cp.measured
        for key, stages in c["stage_latency_s"].items():
            row = cp.batch_sizes.index(int(key))
            np.testing.assert_allclose(cp.stage_latency[row], stages, rtol=0, atol=0)
    # pp16 was not measured: filled by the analytic model
    pp16 = profile.get(16, 1)
    assert pp16 is not None and not pp16.measured


def test_bundled_grid_is_the_shared_reference() -> None:
    if not SHARED_REFERENCE.exists():
        pytest.skip("shared/reference is not present in this checkout")
    assert json.loads(SHARED_REFERENCE.read_text()) == reference_grid()


def test_derived_bert_sizes_follow_the_paper_latency_ratios() -> None:
    # The paper's single-GPU table: bert-1.3b 151 ms, bert-2.6b 238 ms, bert-6.7b 395 ms.
    base = builtin_profile("bert-1.3b").single_device_latency
    assert builtin_profile("bert-2.6b").single_device_latency / base == pytest.approx(
        238 / 151, rel=1e-3
    )
    assert builtin_profile("bert-6.7b").single_device_latency / base == pytest.approx(
        395 / 151, rel=1e-3
    )
    weights = {n: builtin_profile(n).weight_bytes for n in EXPECTED_BUILTINS}
    assert weights["bert-6.7b"] == 13.4e9 and weights["moe-5.3b"] == 10.6e9
    assert not any(cp.measured for cp in builtin_profile("bert-6.7b").configs.values())


def test_moe_tensor_parallel_gains_less_than_dense() -> None:
    # all-to-all makes tensor (expert) parallelism less effective for MoE
    for name in ("moe-1.3b", "moe-2.4b", "moe-5.3b"):
        moe = builtin_profile(name)
        dense = builtin_profile("bert-1.3b")
        for tp in (2, 4, 8):
            moe_speedup = moe.single_device_latency / moe.configs[ParallelConfig(1, tp)].latency()
            dense_speedup = (
                dense.single_device_latency / dense.configs[ParallelConfig(1, tp)].latency()
            )
            assert 1 < moe_speedup < dense_speedup


# --------------------------------------------------------------------------- files
def test_reference_json_loads_as_is() -> None:
    source = SHARED_REFERENCE if SHARED_REFERENCE.exists() else BUNDLED_REFERENCE
    profile = load_profile_file(source, "bert-a", fill=True)
    assert profile.name == "bert-a"
    assert profile.weight_bytes == reference_grid()["weight_bytes_fp16"]
    assert set(STANDARD_CONFIGS) <= set(profile.configs)
    single = reference_grid()["configs"][0]
    assert (single["pipeline_stages"], single["tensor_parallel"]) == (1, 1)
    assert profile.single_device_latency == single["stage_latency_s"]["1"][0]
    assert_complete_and_sane(profile)


def test_user_profile_keeps_only_measured_configs(tmp_path: Path) -> None:
    """A user's profile is searched on what it measured: no analytic pp16 (issue 10)."""
    grid = reference_grid()
    grid["configs"] = [c for c in grid["configs"] if c["pipeline_stages"] <= 4]
    path = write(tmp_path, "p.json", grid)
    measured = {(c["pipeline_stages"], c["tensor_parallel"]) for c in grid["configs"]}
    profile = load_profile_file(path, "m")
    assert {(c.pp, c.tp) for c in profile.configs} == measured
    assert all(cp.measured for cp in profile.configs.values())
    filled = load_profile_file(path, "m", fill=True)
    assert {(c.pp, c.tp) for c in filled.configs} > measured
    assert not filled.configs[ParallelConfig(16, 1)].measured


def test_fill_is_bounded_by_the_weights_layers(tmp_path: Path) -> None:
    path = write(tmp_path, "p.json", small_profile())
    models = [
        {
            "name": "a",
            "profile": {"file": str(path), "fill": "analytic"},
            "weights": {"preset": "bert-small"},  # 8 layers
        },
        {"name": "b", "profile": {"file": str(path), "fill": "analytic"}},
        {"name": "c", "profile": {"file": str(path)}},
        {"name": "d", "profile": {"builtin": "bert-1.3b"}, "weights": {"preset": "bert-small"}},
    ]
    profiles = profiles_for_spec(spec_with(models))
    assert max(c.pp for c in profiles["a"].configs) == 8
    assert max(c.pp for c in profiles["b"].configs) == 16
    assert {(c.pp, c.tp) for c in profiles["c"].configs} == {(1, 1), (2, 1)}
    assert max(c.pp for c in profiles["d"].configs) == 8
    # a measured config deeper than the weights' layers is a clear error
    deep = small_profile(
        configs=[{"pipelineStages": 16, "tensorParallel": 1, "stageLatencyS": {"1": [0.01] * 16}}]
    )
    spec = spec_with(
        [
            {
                "name": "e",
                "profile": {"file": str(write(tmp_path, "deep.json", deep))},
                "weights": {"preset": "bert-small"},
            }
        ]
    )
    with pytest.raises(SpecError, match="more stages than the model's 8 layers"):
        profiles_for_spec(spec)


def test_profile_without_single_gpu_config_keeps_its_reference_latency(tmp_path: Path) -> None:
    data = reference_grid()
    data["configs"] = [c for c in data["configs"] if c["pipeline_stages"] == 2]
    profile = load_profile_file(write(tmp_path, "p.json", data), "m")
    assert ParallelConfig(1, 1) not in profile.configs
    assert profile.single_device_latency == pytest.approx(0.099, rel=0.1)


def test_overheads_are_read(tmp_path: Path) -> None:
    data = small_profile(overheads={"requestSeconds": 0.011, "stageFraction": 0.009})
    profile = load_profile_file(write(tmp_path, "p.yaml", data), "m")
    assert profile.overheads.request_seconds == 0.011
    assert profile.overheads.stage_fraction == 0.009
    assert profile.overheads.stage_seconds == 0.0
    bad(tmp_path, small_profile(overheads={"requestSeconds": -1}), "overheads.requestSeconds")


@pytest.mark.parametrize("filename", ["p.yaml", "p.json"])
def test_file_in_inline_shape(tmp_path: Path, filename: str) -> None:
    path = write(tmp_path, filename, small_profile(numLayers=16))
    profile = load_profile_file(path, "m", fill=True)
    assert_complete_and_sane(profile)
    assert profile.single_device_latency == 0.1
    measured = profile.get(2, 1)
    assert measured is not None and measured.measured
    np.testing.assert_array_equal(measured.stage_latency[0], [0.052, 0.053])
    # the (1,1) batch-4 point is kept; batch 2 lies between the measured points
    single = profile.get(1, 1)
    assert single is not None
    assert single.latency(4) == 0.2 and 0.1 < single.latency(2) < 0.2
    unmeasured = profile.get(4, 2)
    assert unmeasured is not None and not unmeasured.measured


def test_yaml_with_integer_batch_keys_and_snake_case(tmp_path: Path) -> None:
    text = """
weight_bytes: 1.0e9
configs:
  - pipeline_stages: 1
    tensor_parallel: 2
    stage_latency_s:
      1: [0.05]
      2: [0.06]
    weight_bytes_per_gpu: [0.6e9]
"""
    path = tmp_path / "p.yml"
    path.write_text(text)
    profile = load_profile_file(path, "m", fill=True)
    cp = profile.get(1, 2)
    assert cp is not None and cp.weight_bytes_per_gpu == 0.6e9
    assert cp.latency(1) == 0.05
    # (1,1) derived through the analytic model: slower than tp2, faster than twice tp2
    assert 0.05 < profile.single_device_latency < 0.1
    assert_complete_and_sane(profile)


def test_profile_without_single_gpu_config_is_derived(tmp_path: Path) -> None:
    data = reference_grid()
    measured_single = data["configs"][0]["stage_latency_s"]
    data["configs"] = [
        c for c in data["configs"] if (c["pipeline_stages"], c["tensor_parallel"]) != (1, 1)
    ]
    profile = load_profile_file(write(tmp_path, "p.json", data), "m", fill=True)
    single = profile.get(1, 1)
    assert single is not None and not single.measured
    for b in STANDARD_BATCH_SIZES:
        assert single.latency(b) == pytest.approx(measured_single[str(b)][0], rel=0.10)


def test_only_one_config_one_batch(tmp_path: Path) -> None:
    data = {
        "weightBytes": 1e9,
        "configs": [{"pipelineStages": 2, "tensorParallel": 4, "stageLatencyS": {"4": [1, 1]}}],
    }
    profile = load_profile_file(write(tmp_path, "p.json", data), "m", fill=True)
    assert_complete_and_sane(profile)


def test_extra_batch_sizes_propagate_to_every_config(tmp_path: Path) -> None:
    data = small_profile()
    data["configs"][0]["stageLatencyS"]["32"] = [1.7]
    profile = load_profile_file(write(tmp_path, "p.json", data), "m", fill=True)
    for cp in profile.configs.values():
        assert 32 in cp.batch_sizes
    assert_complete_and_sane(profile)


# --------------------------------------------------------------------------- errors
def bad(tmp_path: Path, data: Any, *needles: str, name: str = "bad.json") -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(SpecError) as err:
        load_profile_file(path, "m")
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


def with_config(**fields: Any) -> dict[str, Any]:
    config = {"pipelineStages": 1, "tensorParallel": 1, "stageLatencyS": {"1": [0.1]}}
    config.update(fields)
    return {"weightBytes": 1e9, "configs": [config]}


def test_error_missing_weight_bytes(tmp_path: Path) -> None:
    data = small_profile()
    del data["weightBytes"]
    bad(tmp_path, data, "weightBytes", "Field required")


def test_error_non_positive_latency(tmp_path: Path) -> None:
    bad(tmp_path, with_config(stageLatencyS={"1": [0.0]}), "configs.0.stageLatencyS.1.0")


def test_error_stage_count(tmp_path: Path) -> None:
    bad(
        tmp_path,
        with_config(pipelineStages=2, stageLatencyS={"1": [0.1]}),
        "configs[0].stageLatencyS['1']",
        "expected 2",
    )


def test_error_batch_not_integer(tmp_path: Path) -> None:
    bad(tmp_path, with_config(stageLatencyS={"1.5": [0.1]}), "configs[0].stageLatencyS", "1.5")
    bad(tmp_path, with_config(stageLatencyS={"0": [0.1]}), "configs[0].stageLatencyS", "'0'")


def test_error_duplicate_config(tmp_path: Path) -> None:
    data = with_config()
    data["configs"].append(dict(data["configs"][0]))
    bad(tmp_path, data, "configs[1]", "more than once")


def test_error_weight_list_length(tmp_path: Path) -> None:
    bad(tmp_path, with_config(weightBytesPerGpu=[1.0, 2.0]), "configs[0].weightBytesPerGpu")


def test_error_pp_above_layers(tmp_path: Path) -> None:
    data = with_config(pipelineStages=4, stageLatencyS={"1": [0.1] * 4})
    data["numLayers"] = 2
    bad(tmp_path, data, "configs[0].pipelineStages", "numLayers")


def test_error_unknown_key(tmp_path: Path) -> None:
    bad(tmp_path, with_config(stageLatency={"1": [0.1]}), "configs.0.stageLatency")


def test_error_alias_given_twice(tmp_path: Path) -> None:
    data = small_profile()
    data["weight_bytes"] = 1e9
    bad(tmp_path, data, "weightBytes", "twice")


def test_error_embedding_fraction(tmp_path: Path) -> None:
    bad(tmp_path, small_profile(embeddingFraction=0.7), "embeddingFraction")


def test_error_no_configs_and_not_a_mapping(tmp_path: Path) -> None:
    bad(tmp_path, small_profile(configs=[]), "configs")
    bad(tmp_path, [1, 2], "expected a mapping", name="list.yaml")


def test_error_unreadable_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_profile_file(tmp_path / "missing.yaml", "m")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON") as err:
        load_profile_file(broken, "m")
    assert str(broken) in str(err.value)
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("a: [1, 2\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_profile_file(broken_yaml, "m")


# --------------------------------------------------------------------------- via the spec
def spec_with(models: list[dict[str, Any]]) -> Any:
    return parse_spec(
        {
            "models": models,
            "workload": {"total": {"rate": 10}},
            "cluster": {"gpus": 8},
        }
    )


def test_profiles_for_spec(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", small_profile())
    inline = {
        "weightBytes": 1e9,
        "configs": [{"pipelineStages": 1, "tensorParallel": 1, "stageLatencyS": {"1": [0.03]}}],
    }
    spec = spec_with(
        [
            {"name": "a", "profile": {"builtin": "bert-6.7b"}},
            {"name": "b", "profile": {"builtin": "bert-6.7b"}},
            {"name": "c", "profile": {"file": str(path), "fill": "analytic"}},
            {"name": "d", "profile": {"file": str(path), "fill": "analytic"}},
            {"name": "e", "profile": {"inline": inline, "fill": "analytic"}},
        ]
    )
    profiles = profiles_for_spec(spec)
    assert list(profiles) == ["a", "b", "c", "d", "e"]
    assert all(p.name == n for n, p in profiles.items())
    # built-in and same-file profiles share their read-only config data
    assert profiles["a"].configs is profiles["b"].configs
    assert profiles["a"].configs is builtin_profile("bert-6.7b").configs
    assert profiles["c"].configs is profiles["d"].configs
    assert profiles["e"].single_device_latency == 0.03
    for p in profiles.values():
        assert set(STANDARD_CONFIGS) <= set(p.configs)


def test_inline_error_names_the_model() -> None:
    inline = {
        "weightBytes": 1e9,
        "configs": [{"pipelineStages": 2, "tensorParallel": 1, "stageLatencyS": {"1": [0.03]}}],
    }
    spec = spec_with([{"name": "bert-x", "profile": {"inline": inline}}])
    with pytest.raises(SpecError) as err:
        profiles_for_spec(spec)
    assert "models[bert-x].profile.inline" in str(err.value)
    assert "expected 2" in str(err.value)


def test_unknown_builtin_in_spec() -> None:
    spec = spec_with([{"name": "a", "profile": {"builtin": "gpt-9"}}])
    with pytest.raises(SpecError, match="gpt-9"):
        profiles_for_spec(spec)


# --------------------------------------------------------------------------- analytic model
def test_analytic_error_bound() -> None:
    # Each measured config is predicted from the (1,1) row alone. The measured grid itself
    # varies by about ±5% (pp2×tp2 is faster than pp1×tp2), so a mean error below 10% means
    # the model is within about twice the measurement noise; the search compares configs
    # whose latencies differ by 30% or more (each tp step), so that cannot flip a choice.
    rows, summary = analytic_error_report()
    assert summary.rows == len(rows) == summary.configs * len(STANDARD_BATCH_SIZES)
    assert summary.mean_abs_rel_error < 0.10
    assert summary.mean_abs_rel_error_max_stage < 0.10
    assert summary.max_abs_rel_error < 0.25
    assert summary.max_abs_rel_error_max_stage < 0.25
    for r in rows:
        assert r.rel_error == pytest.approx((r.predicted_s - r.measured_s) / r.measured_s)


def test_analytic_single_gpu_prediction_is_identity() -> None:
    l1 = [0.1, 0.12, 0.2, 0.4, 0.8]
    out = predict_stage_latency(l1, STANDARD_BATCH_SIZES, ParallelConfig(1, 1))
    np.testing.assert_allclose(out[:, 0], l1)


def test_analytic_tp_speedup_at_batch_one_matches_reference() -> None:
    # the reference: 1.47x (tp2), 2.44x (tp4), 3.31x (tp8) at batch 1
    l1 = [0.1, 0.12, 0.2, 0.4, 0.8]
    for tp, speedup in ((2, 1.47), (4, 2.44), (8, 3.31)):
        out = predict_stage_latency(l1, STANDARD_BATCH_SIZES, ParallelConfig(1, tp))
        assert l1[0] / out[0].sum() == pytest.approx(speedup, rel=0.05)


@pytest.mark.parametrize("num_layers", [None, 24, 16])
def test_analytic_pipeline_never_beats_one_stage(num_layers: int | None) -> None:
    l1 = [0.1, 0.12, 0.2, 0.4, 0.8]
    for config in STANDARD_CONFIGS:
        single = predict_stage_latency(l1, STANDARD_BATCH_SIZES, ParallelConfig(1, config.tp))
        staged = predict_stage_latency(l1, STANDARD_BATCH_SIZES, config, num_layers=num_layers)
        assert np.all(staged.sum(axis=1) >= single[:, 0]), config
        # the bottleneck stage is at least an even share of the work
        assert np.all(staged.max(axis=1) >= single[:, 0] / config.pp), config


def test_stage_layers_split() -> None:
    assert stage_layers(4, 24) == [6, 6, 6, 6]
    split = stage_layers(16, 24)
    assert sum(split) == 24 and max(split) - min(split) == 1
    assert split[0] == 1 and split[-1] == 1  # the ends carry embedding / head
    with pytest.raises(ValueError):
        stage_layers(8, 4)


def test_fill_batch_curve_passes_through_known_points() -> None:
    curve = fill_batch_curve({1: 0.05, 8: 0.3}, [1, 2, 4, 8, 16])
    assert curve[0] == 0.05 and curve[3] == 0.3
    assert np.all(np.diff(curve) > 0)
