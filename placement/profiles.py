"""Model profiles for the placement engine: load, validate and complete them.

A profile comes from a built-in name, a YAML/JSON file or the spec's inline profile. Every
profile returned here is *complete*: it has every config of STANDARD_CONFIGS (plus any extra
measured ones) at the standard batch sizes (plus any extra measured ones); what was not
measured is filled by the analytic model (ConfigProfile.measured is False for those).

Which configs a profile has: built-ins are completed over STANDARD_CONFIGS by the analytic
model; a user's file or inline profile keeps only its measured configs unless the ModelSet
asks for `profile.fill: analytic`. The fill never exceeds the model's layer count (the
profile's numLayers, or the layers of the model's `weights` when the ModelSet gives them):
a pipeline cannot have more stages than layers.

File format (the spec's inline shape; the reference JSON's snake_case shape is accepted too):

    weightBytes: 2.6e9            # or weight_bytes / weight_bytes_fp16
    numLayers: 24                 # optional: integer layer split across pipeline stages
    embeddingFraction: 0.05       # optional: share of the weights in the embedding table
    configs:
      - pipelineStages: 2         # or pipeline_stages
        tensorParallel: 1         # or tensor_parallel
        stageLatencyS: {"1": [0.048, 0.050], "2": [0.056, 0.059]}   # or stage_latency_s
        weightBytesPerGpu: [1.3e9, 1.3e9]                            # optional
    overheads:                    # optional, measured by `statmux profile` (see docs)
      requestSeconds: 0.011       # added to every request's latency
      stageSeconds: 0.0005        # added to every stage after the first
      stageFraction: 0.0          # every stage x (1 + stageFraction * pp)
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from statmux.placement.analytic_profile import (
    BERT_V100,
    PROFILE_DATA,
    STANDARD_BATCH_SIZES,
    AnalyticConstants,
    fill_batch_curve,
    infer_single_device,
    predict_stage_latency,
    stage_layers,
)
from statmux.placement.profile import (
    NO_OVERHEADS,
    ConfigProfile,
    ModelProfile,
    Overheads,
    ParallelConfig,
)
from statmux.placement.spec import (
    InlineProfile,
    ModelSetSpec,
    ModelSpec,
    ProfileRef,
    SpecError,
    format_validation_error,
)

__all__ = [
    "STANDARD_BATCH_SIZES",
    "STANDARD_CONFIGS",
    "builtin_profile",
    "builtin_profile_names",
    "load_profile_file",
    "profile_from_inline",
    "profiles_for_spec",
    "resolve_profile",
]

MAX_GPUS_PER_GROUP = 16
STANDARD_CONFIGS: tuple[ParallelConfig, ...] = tuple(
    ParallelConfig(pp, tp)
    for pp in (1, 2, 4, 8, 16)
    for tp in (1, 2, 4, 8)
    if pp * tp <= MAX_GPUS_PER_GROUP
)

# Other spellings accepted in files (the reference JSON uses snake_case).
_TOP_ALIASES = {
    "weight_bytes": "weightBytes",
    "weight_bytes_fp16": "weightBytes",
    "num_layers": "numLayers",
    "embedding_fraction": "embeddingFraction",
}
_CONFIG_ALIASES = {
    "pipeline_stages": "pipelineStages",
    "tensor_parallel": "tensorParallel",
    "stage_latency_s": "stageLatencyS",
    "weight_bytes_per_gpu": "weightBytesPerGpu",
}
# Descriptive keys of the reference JSON; they do not affect the profile.
_INFO_KEYS = frozenset(
    {
        "about",
        "description",
        "model",
        "name",
        "hardware",
        "parameters",
        "memory_budget_per_gpu_bytes_used_in_paper",
    }
)


@dataclass
class _RawConfig:
    config: ParallelConfig
    stage_latency: dict[int, np.ndarray]  # batch -> per-stage seconds
    weight_bytes_per_gpu: list[float] | None


@dataclass
class _RawProfile:
    """A validated but incomplete profile: what the user measured."""

    weight_bytes: float
    num_layers: int | None
    embedding_fraction: float
    configs: dict[ParallelConfig, _RawConfig]
    overheads: Overheads = NO_OVERHEADS


# --------------------------------------------------------------------------- validation
def _raw_from_inline(
    inline: InlineProfile, where: str, embedding_fraction: float = 0.0
) -> _RawProfile:
    """Cross-field checks that the schema cannot express; messages name the field."""
    configs: dict[ParallelConfig, _RawConfig] = {}
    for i, c in enumerate(inline.configs):
        at = f"{where}: configs[{i}]"
        config = ParallelConfig(c.pipeline_stages, c.tensor_parallel)
        if config in configs:
            raise SpecError(
                f"{at}: pipelineStages {config.pp} × tensorParallel {config.tp} "
                "appears more than once; give each config once"
            )
        if inline.num_layers is not None and config.pp > inline.num_layers:
            raise SpecError(
                f"{at}.pipelineStages: {config.pp} stages exceed numLayers {inline.num_layers}"
            )
        if not c.stage_latency_s:
            raise SpecError(f"{at}.stageLatencyS: give the latency of at least one batch size")
        rows: dict[int, np.ndarray] = {}
        for key, stages in c.stage_latency_s.items():
            batch = _batch_key(key, f"{at}.stageLatencyS")
            if batch in rows:
                raise SpecError(f"{at}.stageLatencyS: batch size {batch} appears more than once")
            if len(stages) != config.pp:
                raise SpecError(
                    f"{at}.stageLatencyS[{key!r}]: expected {config.pp} stage latencies "
                    f"(one per pipeline stage, pipelineStages is {config.pp}), got {len(stages)}"
                )
            if not all(math.isfinite(s) for s in stages):
                raise SpecError(f"{at}.stageLatencyS[{key!r}]: latencies must be finite seconds")
            rows[batch] = np.array(stages, dtype=float)
        per_gpu = c.weight_bytes_per_gpu
        if per_gpu is not None:
            if len(per_gpu) != config.pp:
                raise SpecError(
                    f"{at}.weightBytesPerGpu: expected {config.pp} values (one per pipeline "
                    f"stage), got {len(per_gpu)}"
                )
            if not all(math.isfinite(w) for w in per_gpu):
                raise SpecError(f"{at}.weightBytesPerGpu: values must be finite byte counts")
        configs[config] = _RawConfig(config, dict(sorted(rows.items())), per_gpu)
    if not math.isfinite(inline.weight_bytes):
        raise SpecError(f"{where}: weightBytes must be a finite byte count")
    o = inline.overheads
    overheads = (
        NO_OVERHEADS
        if o is None
        else Overheads(o.request_seconds, o.stage_seconds, o.stage_fraction)
    )
    return _RawProfile(
        inline.weight_bytes, inline.num_layers, embedding_fraction, configs, overheads
    )


def _batch_key(key: str, at: str) -> int:
    text = key.strip()
    if not text.isdigit() or int(text) < 1:
        raise SpecError(
            f"{at}: batch size {key!r} is not a positive integer; keys are batch sizes "
            'such as "1", "2", "4"'
        )
    return int(text)


def _normalize_file_data(data: Any, where: str) -> tuple[dict[str, Any], float]:
    """Map the accepted spellings onto the inline shape; returns (inline dict, embedding)."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping with weightBytes and configs")
    top = _rename({k: v for k, v in data.items() if k not in _INFO_KEYS}, _TOP_ALIASES, where)
    embedding = top.pop("embeddingFraction", 0.0)
    if (
        isinstance(embedding, bool)
        or not isinstance(embedding, int | float)
        or not 0 <= embedding < 0.5
    ):
        raise SpecError(
            f"{where}: embeddingFraction must be a number in [0, 0.5), got {embedding!r}"
        )
    configs = top.get("configs")
    if isinstance(configs, list):
        fixed = []
        for i, c in enumerate(configs):
            if isinstance(c, dict):
                c = _rename(c, _CONFIG_ALIASES, f"{where}: configs[{i}]")
                lat = c.get("stageLatencyS")
                if isinstance(lat, dict):
                    # YAML reads `1: [...]` with an integer key; the schema wants strings.
                    c["stageLatencyS"] = {str(k): v for k, v in lat.items()}
            fixed.append(c)
        top["configs"] = fixed
    return top, float(embedding)


def _rename(data: dict[str, Any], aliases: dict[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name in out:
            raise SpecError(f"{where}: {name} is given twice (as {key} and {name}); keep one")
        out[name] = value
    return out


# --------------------------------------------------------------------------- completion
def _weights_per_gpu(
    weight_bytes: float, config: ParallelConfig, num_layers: int | None, embedding: float
) -> float:
    """The largest per-GPU weight share: the body is split like the layers; the first
    stage also holds the embedding table and the last its tied copy (the output head)."""
    if config.pp == 1:
        return weight_bytes / config.tp
    if num_layers is None:
        body = np.full(config.pp, 1.0 / config.pp)
    else:
        body = np.array(stage_layers(config.pp, num_layers), dtype=float) / num_layers
    stages = body * weight_bytes * (1.0 - embedding)
    stages[0] += embedding * weight_bytes
    stages[-1] += embedding * weight_bytes
    return float(stages.max()) / config.tp


def _nearest_measured(batch: int, measured: list[int]) -> int:
    return min(measured, key=lambda m: (abs(math.log2(m) - math.log2(batch)), m))


def _complete(
    raw: _RawProfile,
    name: str,
    constants: AnalyticConstants,
    source_measured: bool,
    where: str,
    fill: bool = True,
    max_layers: int | None = None,
) -> ModelProfile:
    """The measured configs at the standard batch sizes; with `fill`, also the standard
    configs the analytic model estimates, up to the model's layer count."""
    batch_sizes = sorted(
        set(STANDARD_BATCH_SIZES) | {b for c in raw.configs.values() for b in c.stage_latency}
    )
    single = ParallelConfig(1, 1)
    if single in raw.configs:
        known = {b: float(s.sum()) for b, s in raw.configs[single].stage_latency.items()}
    else:
        try:
            known = infer_single_device(
                {c: r.stage_latency for c, r in raw.configs.items()}, constants, raw.num_layers
            )
        except ValueError as err:
            raise SpecError(
                f"{where}: cannot derive the single-GPU latency from the configs: {err}"
            ) from None
    l1 = fill_batch_curve(known, batch_sizes)

    layers = min((n for n in (raw.num_layers, max_layers) if n is not None), default=None)
    if max_layers is not None:
        for c in raw.configs:
            if c.pp > max_layers:
                raise SpecError(
                    f"{where}: config pipelineStages {c.pp} × tensorParallel {c.tp} has more "
                    f"stages than the model's {max_layers} layers (from its weights)"
                )
    targets = [c for c in STANDARD_CONFIGS if fill and (layers is None or c.pp <= layers)]
    targets += [c for c in raw.configs if c not in targets]
    profile = ModelProfile(
        name=name,
        weight_bytes=raw.weight_bytes,
        overheads=raw.overheads,
        reference_latency=float(l1[0]),
    )
    for config in sorted(targets):
        predicted = predict_stage_latency(l1, batch_sizes, config, constants, raw.num_layers)
        source = raw.configs.get(config)
        measured = source is not None and source_measured
        if source is not None:
            predicted = _calibrate(predicted, batch_sizes, source.stage_latency)
        if source is not None and source.weight_bytes_per_gpu is not None:
            per_gpu = max(source.weight_bytes_per_gpu)
        else:
            per_gpu = _weights_per_gpu(
                raw.weight_bytes, config, raw.num_layers, raw.embedding_fraction
            )
        profile.configs[config] = ConfigProfile(
            config=config,
            batch_sizes=tuple(batch_sizes),
            stage_latency=predicted,
            weight_bytes_per_gpu=per_gpu,
            measured=measured,
        )
    return profile


def _calibrate(
    predicted: np.ndarray, batch_sizes: list[int], rows: dict[int, np.ndarray]
) -> np.ndarray:
    """Measured rows verbatim; other batch sizes scale the prediction stage by stage by the
    measured/predicted ratio at the nearest measured batch size."""
    out = predicted.copy()
    index = {b: i for i, b in enumerate(batch_sizes)}
    measured = sorted(rows)
    for b, i in index.items():
        if b in rows:
            out[i] = rows[b]
        else:
            near = _nearest_measured(b, measured)
            out[i] = predicted[i] * rows[near] / predicted[index[near]]
    return out


# --------------------------------------------------------------------------- loaders
def profile_from_inline(
    inline: InlineProfile,
    name: str,
    where: str | None = None,
    fill: bool = False,
    max_layers: int | None = None,
) -> ModelProfile:
    """The profile of the spec's inline profile (its measured configs; `fill`: all)."""
    at = where or f"profile {name!r} (inline)"
    return _complete(_raw_from_inline(inline, at), name, BERT_V100, True, at, fill, max_layers)


def _read_raw_file(path: Path) -> _RawProfile:
    where = f"profile file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"cannot read {where}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise SpecError(f"{where} is not valid {kind}: {err}") from None
    fields, embedding = _normalize_file_data(data, where)
    try:
        inline = InlineProfile.model_validate(fields)
    except ValidationError as err:
        message = format_validation_error(err, model=InlineProfile)
        raise SpecError(f"{where} is invalid:\n{message}") from None
    return _raw_from_inline(inline, where, embedding)


def load_profile_file(
    path: str | Path, name: str, fill: bool = False, max_layers: int | None = None
) -> ModelProfile:
    """Read a profile in YAML or JSON (the inline shape or the reference JSON's shape):
    its measured configs, or with `fill` also the analytic estimates of the others."""
    p = Path(path)
    where = f"profile file {p}"
    return _complete(_read_raw_file(p), name, BERT_V100, True, where, fill, max_layers)


# --------------------------------------------------------------------------- built-ins
def _data_file(name: str) -> str:
    return (PROFILE_DATA / name).read_text(encoding="utf-8")


@functools.cache
def _recipes() -> dict[str, dict[str, Any]]:
    recipes: dict[str, dict[str, Any]] = json.loads(_data_file("builtin.json"))["profiles"]
    return recipes


def builtin_profile_names() -> list[str]:
    return sorted(_recipes())


def builtin_profile(name: str, fill: bool = True, max_layers: int | None = None) -> ModelProfile:
    """A built-in profile; the same read-only object on every call with the same arguments.
    `fill` False keeps only the configs of its recipe (measured or scaled from measured)."""
    if name not in _recipes():
        raise SpecError(
            f"unknown built-in profile {name!r}; allowed: {', '.join(builtin_profile_names())}"
        )
    return _builtin(name, fill, max_layers)


@functools.cache
def _builtin_raw(name: str) -> _RawProfile:
    recipe = _recipes()[name]
    where = f"built-in profile {name!r}"
    if "file" in recipe:
        data = json.loads(_data_file(recipe["file"]))
        data["embeddingFraction"] = recipe.get("embeddingFraction", 0.0)
        fields, embedding = _normalize_file_data(data, where)
        if "numLayers" in recipe:
            fields["numLayers"] = recipe["numLayers"]
        inline = InlineProfile.model_validate(fields)
        return _raw_from_inline(inline, where, embedding)
    base = _builtin_raw(recipe["base"])
    scale = float(recipe["latencyScale"])
    keep = (
        base.configs
        if recipe["scale"] == "grid"
        else {ParallelConfig(1, 1): base.configs[ParallelConfig(1, 1)]}
    )
    configs = {
        c: _RawConfig(c, {b: s * scale for b, s in r.stage_latency.items()}, None)
        for c, r in keep.items()
    }
    return _RawProfile(
        weight_bytes=float(recipe["weightBytes"]),
        num_layers=recipe.get("numLayers"),
        embedding_fraction=float(recipe.get("embeddingFraction", 0.0)),
        configs=configs,
    )


@functools.cache
def _builtin(name: str, fill: bool = True, max_layers: int | None = None) -> ModelProfile:
    recipe = _recipes()[name]
    constants = BERT_V100.scaled_comm(float(recipe.get("commScale", 1.0)))
    measured = "file" in recipe  # derived profiles are scaled, not measured
    where = f"built-in profile {name!r}"
    return _complete(_builtin_raw(name), name, constants, measured, where, fill, max_layers)


# --------------------------------------------------------------------------- the spec
def resolve_profile(
    ref: ProfileRef, model_name: str, max_layers: int | None = None
) -> ModelProfile:
    """The profile a model's `profile` field points at, named after the model.

    Built-in profiles share their (read-only) config data between all models that use them.
    """
    fill = (ref.fill or ("analytic" if ref.builtin is not None else "none")) == "analytic"
    if ref.builtin is not None:
        return replace(builtin_profile(ref.builtin, fill, max_layers), name=model_name)
    if ref.file is not None:
        return load_profile_file(ref.file, model_name, fill, max_layers)
    if ref.inline is not None:
        where = f"models[{model_name}].profile.inline"
        return profile_from_inline(ref.inline, model_name, where, fill, max_layers)
    raise SpecError(f"models[{model_name}].profile: set one of builtin, file or inline")


def model_layers(model: ModelSpec) -> int | None:
    """The layer count of the model's weights when the ModelSet gives its weights (a preset,
    a config or a Hugging Face config.json); None when unknown. Bounds the pipeline stages."""
    if "weights" not in model.model_fields_set:
        return None
    from statmux.runtime.presets import ModelConfigError, resolve_config  # no torch

    try:
        return resolve_config(model.weights, f"models[{model.name}].weights").num_layers
    except ModelConfigError:
        return None  # e.g. a checkpoint that only the serving nodes can read


def profiles_for_spec(spec: ModelSetSpec) -> dict[str, ModelProfile]:
    """Every model's profile, keyed by model name; a file read once per (file, fill, layers)
    however many models use it."""
    files: dict[tuple[str, str | None, int | None], ModelProfile] = {}
    out: dict[str, ModelProfile] = {}
    for model in spec.models:
        ref = model.profile
        layers = model_layers(model)
        if ref.file is not None:
            key = (ref.file, ref.fill, layers)
            if key not in files:
                files[key] = resolve_profile(ref, model.name, layers)
            out[model.name] = replace(files[key], name=model.name)
        else:
            out[model.name] = resolve_profile(ref, model.name, layers)
    return out
