"""Build one rank's shard of a model: meta model -> stage slice -> TP -> only its own weights.

Every rank builds the whole model on the meta device (free), drops what other stages own,
swaps in tensor-parallel layers, and then materializes only the tensors it keeps:

- huggingface: reads the needed tensors from the *.safetensors files with `safe_open`,
  slicing this rank's TP piece with `get_slice` before anything is copied, so no rank ever
  holds the full model;
- synthetic: generates each full parameter from a seed derived from its name and slices it,
  so every rank (and a single-process reference) sees the same full-model weights.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from statmux.placement.spec import WeightSource
from statmux.runtime.families import family_of
from statmux.runtime.model_base import StageModel, stage_layers
from statmux.runtime.model_llama import RMSNorm
from statmux.runtime.presets import ModelConfig, ModelConfigError
from statmux.runtime.tensor_parallel import Shard, TPInfo, shard_of

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_stage(
    cfg: ModelConfig, stage: int = 0, pp: int = 1, tp: TPInfo | None = None
) -> StageModel:
    """This rank's stage of the model, on the meta device (no memory)."""
    tp = tp or TPInfo()
    for field, heads in cfg.tp_heads.items():
        if heads % tp.size:
            raise ModelConfigError(
                f"{field} ({heads}) must be a multiple of the tensor-parallel degree {tp.size}"
            )
    layers = stage_layers(cfg.num_layers, pp, stage)
    family = family_of(cfg)
    with torch.device("meta"):
        model = family.model(cfg)
        model.keep_stage(layers.start, layers.stop, stage == 0, stage == pp - 1)
        if tp.size > 1:
            for block in model.blocks().values():
                family.apply_tp(block, tp)
    return model.eval()


def _full_shape(local: torch.Size, shard: Shard | None) -> list[int]:
    shape = list(local)
    if shard is not None:
        shape[shard.dim] *= shard.size
    return shape


def _take(full: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    if shard is None:
        return full
    pieces = [full.narrow(shard.dim, a, b - a) for a, b in shard.ranges(full.shape[shard.dim])]
    return torch.cat(pieces, dim=shard.dim) if len(pieces) > 1 else pieces[0].contiguous()


def _is_norm(model: nn.Module, name: str) -> bool:
    module_name = name.rpartition(".")[0]
    return isinstance(model.get_submodule(module_name), nn.LayerNorm | RMSNorm)


def synthetic_state(
    model: StageModel, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Deterministic random weights: same full tensor on every rank, then this rank's slice."""
    state: dict[str, torch.Tensor] = {}
    std = model.init_std()
    for name, param in model.named_parameters():
        shard = shard_of(model, name)
        source = model.tied_to(name)
        gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{source}".encode()))
        full = torch.randn(_full_shape(param.shape, shard), generator=gen) * std
        if _is_norm(model, name) and name.endswith("weight"):
            full += 1.0  # a norm's scale near 1 keeps activations in range through deep stacks
        state[name] = _take(full, shard).to(dtype)
    return state


def _safetensors_index(path: Path) -> dict[str, Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelConfigError(f"weights.path: {path} holds no *.safetensors file")
    index: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                index[key] = f
    return index


def huggingface_state(
    model: StageModel, path: str | Path, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Read this rank's tensors (and only its TP slice of each) from HF safetensors files."""
    root = Path(path)
    index = _safetensors_index(root)
    wanted: dict[Path, list[tuple[str, str]]] = {}
    for name, _ in model.named_parameters():
        key = next((k for k in model.hf_names(name) if k in index), None)
        if key is None:
            raise ModelConfigError(
                f"weights.path: {root} has no tensor {name!r} "
                f"(tried {', '.join(model.hf_names(name))})"
            )
        wanted.setdefault(index[key], []).append((name, key))
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for file, entries in wanted.items():
        with safe_open(str(file), framework="pt") as handle:
            for name, key in entries:
                state[name] = _read_slice(handle, key, name, model, params[name]).to(dtype)
    return state


def _read_slice(
    handle: Any, key: str, name: str, model: StageModel, param: torch.Tensor
) -> torch.Tensor:
    shard = shard_of(model, name)
    transposed = model.hf_transposed(name)
    expected = _full_shape(param.shape, shard)
    if transposed:
        expected = expected[::-1]
    sl = handle.get_slice(key)
    got = list(sl.get_shape())
    if got != expected:
        raise ModelConfigError(
            f"weights.path: tensor {key!r} has shape {got}, the config implies {expected}"
        )
    if shard is None:
        tensor = sl[:]
    else:
        dim = 1 - shard.dim if transposed else shard.dim
        pieces = [sl[a:b] if dim == 0 else sl[:, a:b] for a, b in shard.ranges(got[dim])]
        tensor = torch.cat(pieces, dim=dim) if len(pieces) > 1 else pieces[0]
    return tensor.t().contiguous() if transposed else tensor


def load_state(model: StageModel, weights: WeightSource, seed: int = 0) -> dict[str, torch.Tensor]:
    """This rank's weights for a stage built by `build_stage`, as a CPU state dict."""
    dtype = DTYPES[weights.dtype]
    if weights.source == "huggingface":
        return huggingface_state(model, weights.path or "", dtype)
    return synthetic_state(model, dtype, seed)


def materialize(model: StageModel, state: dict[str, torch.Tensor]) -> StageModel:
    """Give the meta model real tensors (no copy: the module uses the state's storage)."""
    model.load_state_dict(state, strict=True, assign=True)
    return model


def build_full_model(cfg: ModelConfig, weights: WeightSource, seed: int = 0) -> StageModel:
    """The single-process model (pp = tp = 1): the reference the parallel runs must equal."""
    model = build_stage(cfg)
    return materialize(model, load_state(model, weights, seed))


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())
