"""Requests <-> one padded batch, and each family's ModelInfo (its inputs and outputs).

Requests are concatenated along the batch dimension and right-padded to the longest
sequence. BERT gets an attention mask that hides the padding; decoders need none because
attention is causal, so the real positions of a right-padded row are exact. Outputs are split
back per request and cut to each request's own sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from statmux.runtime.engine import EngineError, ModelInfo, Request, Response, TensorSpec
from statmux.runtime.presets import BertConfig, GPT2Config, ModelConfig


class InputError(EngineError):
    """A request the model cannot take; the message names the input and what is allowed."""


def output_name(cfg: ModelConfig) -> str:
    return "last_hidden_state" if isinstance(cfg, BertConfig) else "logits"


def model_info(
    name: str,
    arch: str,
    cfg: ModelConfig,
    max_batch_size: int = 1,
    slo_seconds: float | None = None,
    stage_latency_s: dict[int, list[float]] | None = None,
) -> ModelInfo:
    ids = TensorSpec("input_ids", "INT64", (-1, -1))
    if isinstance(cfg, BertConfig):
        inputs = [
            ids,
            TensorSpec("attention_mask", "INT64", (-1, -1), optional=True),
            TensorSpec("token_type_ids", "INT64", (-1, -1), optional=True),
        ]
        outputs = [TensorSpec("last_hidden_state", "FP32", (-1, -1, cfg.hidden_size))]
    else:
        inputs = [ids]
        outputs = [TensorSpec("logits", "FP32", (-1, -1, cfg.vocab_size))]
    return ModelInfo(
        name=name,
        platform=f"statmux-{arch}",
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        slo_seconds=slo_seconds,
        stage_latency_s=dict(stage_latency_s or {}),
    )


def _max_positions(cfg: ModelConfig) -> int | None:
    if isinstance(cfg, BertConfig):
        return cfg.max_position_embeddings
    if isinstance(cfg, GPT2Config):
        return cfg.n_positions
    return None  # rotary positions have no table to run past


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


def make_batch(cfg: ModelConfig, batch: list[Request]) -> tuple[list[torch.Tensor], list[Split]]:
    """The first stage's input tensors for the whole batch, and how to split the output."""
    if not batch:
        raise InputError("the batch holds no request")
    allowed = {"input_ids", "attention_mask", "token_type_ids"}
    if not isinstance(cfg, BertConfig):
        allowed = {"input_ids"}
    vocab = cfg.vocab_size
    limit = _max_positions(cfg)
    ids_list, masks, types, splits = [], [], [], []
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
        if limit is not None and length > limit:
            raise InputError(
                f"request {i}: sequence length {length} exceeds the model's {limit} positions"
            )
        if ids.min() < 0 or ids.max() >= vocab:
            raise InputError(f"request {i}: input_ids must be in [0, {vocab})")
        ids_list.append(ids)
        splits.append(Split(rows, length))
        if isinstance(cfg, BertConfig):
            mask = (
                _int_array(req, "attention_mask", i, ids.shape)
                if "attention_mask" in req
                else np.ones_like(ids)
            )
            tt = (
                _int_array(req, "token_type_ids", i, ids.shape)
                if "token_type_ids" in req
                else np.zeros_like(ids)
            )
            if tt.min() < 0 or tt.max() >= cfg.type_vocab_size:
                raise InputError(
                    f"request {i}: token_type_ids must be in [0, {cfg.type_vocab_size})"
                )
            masks.append(mask)
            types.append(tt)
    width = max(s.length for s in splits)
    pad = _pad_id(cfg)

    def stack(arrays: list[np.ndarray], fill: int) -> torch.Tensor:
        out = np.full((sum(a.shape[0] for a in arrays), width), fill, dtype=np.int64)
        row = 0
        for a in arrays:
            out[row : row + a.shape[0], : a.shape[1]] = a
            row += a.shape[0]
        return torch.from_numpy(out)

    tensors = [stack(ids_list, pad)]
    if isinstance(cfg, BertConfig):
        tensors += [stack(masks, 0), stack(types, 0)]
    return tensors, splits


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
