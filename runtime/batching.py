"""Requests <-> one padded batch, and each family's ModelInfo (its inputs and outputs).

Requests are concatenated along the batch dimension and right-padded to the longest
sequence. BERT gets an attention mask that hides the padding; decoders need none because
attention is causal, so the real positions of a right-padded row are exact. What each
family takes and returns comes from runtime/families.py. Outputs are split
back per request and cut to each request's own sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from statmux.runtime.engine import EngineError, ModelInfo, Request, Response, TensorSpec
from statmux.runtime.families import family_of
from statmux.runtime.presets import ModelConfig, ModelConfigError


class InputError(EngineError):
    """A request the model cannot take; the message names the input and what is allowed."""


def output_name(cfg: ModelConfig) -> str:
    return family_of(cfg).output


def model_info(
    name: str,
    arch: str,
    cfg: ModelConfig,
    max_batch_size: int = 1,
    slo_seconds: float | None = None,
    stage_latency_s: dict[int, list[float]] | None = None,
    max_sequence: int | None = None,
    request_overhead_s: float = 0.0,
    admission_seconds: float | None = None,
) -> ModelInfo:
    family = family_of(cfg)
    inputs = [TensorSpec("input_ids", "INT64", (-1, -1))] + [
        TensorSpec(name, "INT64", (-1, -1), optional=True) for name in family.optional_inputs
    ]
    outputs = [TensorSpec(family.output, "FP32", (-1, -1, cfg.output_width))]
    return ModelInfo(
        name=name,
        platform=f"statmux-{arch}",
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        slo_seconds=slo_seconds,
        stage_latency_s=dict(stage_latency_s or {}),
        max_sequence_length=max_sequence or cfg.max_positions,
        request_overhead_s=request_overhead_s,
        admission_seconds=admission_seconds,
    )


def max_sequence_length(cfg: ModelConfig, explicit: int | None = None) -> int:
    """The longest sequence a request may carry: the ModelSet's explicit limit
    (weights.maxSequenceLength), else the config's position limit."""
    positions = cfg.max_positions
    if explicit is None:
        return positions
    if explicit > positions:
        raise ModelConfigError(
            f"maxSequenceLength {explicit} is more than the model's {positions} positions "
            "(max_position_embeddings / n_positions)"
        )
    return explicit


def _int_array(req: Request, key: str, index: int, ids_shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(req[key])
    if arr.dtype.kind not in "iub":
        raise InputError(f"request {index}: input {key!r} must be integers, got {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(
            f"request {index}: input {key!r} must have shape [batch, sequence], "
            f"got {list(arr.shape)}"
        )
    if ids_shape is not None and arr.shape != ids_shape:
        raise InputError(
            f"request {index}: input {key!r} has shape {list(arr.shape)}, "
            f"input_ids has {list(ids_shape)}"
        )
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True)
class Split:
    rows: int
    length: int


def make_batch(
    cfg: ModelConfig, batch: list[Request], limit: int | None = None
) -> tuple[list[torch.Tensor], list[Split]]:
    """The first stage's input tensors for the whole batch, and how to split the output.

    `limit`: the longest sequence accepted (default: the config's position limit)."""
    if not batch:
        raise InputError("the batch holds no request")
    optional = family_of(cfg).optional_inputs
    allowed = {"input_ids", *optional}
    bounds = cfg.input_bounds
    limit = limit or cfg.max_positions
    ids_list: list[np.ndarray] = []
    extras: dict[str, list[np.ndarray]] = {name: [] for name in optional}
    splits = []
    for i, req in enumerate(batch):
        unknown = sorted(set(req) - allowed)
        if unknown:
            raise InputError(
                f"request {i}: unknown input(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        if "input_ids" not in req:
            raise InputError(f"request {i}: input 'input_ids' is required")
        ids = _int_array(req, "input_ids", i, None)
        rows, length = ids.shape
        if rows < 1 or length < 1:
            raise InputError(f"request {i}: input_ids is empty (shape {list(ids.shape)})")
        if length > limit:
            raise InputError(
                f"request {i}: sequence length {length} exceeds the model's {limit} positions"
            )
        _check_bounds(ids, "input_ids", i, bounds)
        ids_list.append(ids)
        splits.append(Split(rows, length))
        for name, fill in optional.items():
            arr = _int_array(req, name, i, ids.shape) if name in req else np.full_like(ids, fill)
            _check_bounds(arr, name, i, bounds)
            extras[name].append(arr)
    width = max(s.length for s in splits)
    pad = _pad_id(cfg)

    def stack(arrays: list[np.ndarray], fill: int) -> torch.Tensor:
        out = np.full((sum(a.shape[0] for a in arrays), width), fill, dtype=np.int64)
        row = 0
        for a in arrays:
            out[row : row + a.shape[0], : a.shape[1]] = a
            row += a.shape[0]
        return torch.from_numpy(out)

    tensors = [stack(ids_list, pad)] + [stack(arrays, 0) for arrays in extras.values()]
    return tensors, splits


def _check_bounds(arr: np.ndarray, name: str, index: int, bounds: dict[str, int]) -> None:
    bound = bounds.get(name)
    if bound is not None and (arr.min() < 0 or arr.max() >= bound):
        raise InputError(f"request {index}: {name} must be in [0, {bound})")


def _pad_id(cfg: ModelConfig) -> int:
    pad = cfg.pad_token_id
    return pad if pad is not None and 0 <= pad < cfg.vocab_size else 0


def split_output(name: str, output: torch.Tensor, splits: list[Split]) -> list[Response]:
    out = output.detach().to("cpu", torch.float32).numpy()
    responses: list[Response] = []
    row = 0
    for s in splits:
        responses.append({name: np.ascontiguousarray(out[row : row + s.rows, : s.length])})
        row += s.rows
    return responses
