"""Megatron-style tensor parallelism, applied by small functions over the plain models.

A column-parallel Linear holds a slice of the output features (no communication: its input is
replicated); a row-parallel Linear holds a slice of the input features and all-reduces its
partial output over the stage's TP group. Attention is split by heads (q/k/v column-parallel,
the output projection row-parallel) and the MLP by its hidden width (up column, down row), so
each block costs exactly two all-reduces. The models reshape with -1 heads, so a rank with
heads/tp heads needs no other change.

The parallel layers record which slice of the full weight they hold (`Shard`), which is all
the checkpoint loader needs to read only this rank's part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TPInfo:
    """This rank's place in its stage's tensor-parallel group."""

    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class Shard:
    """Which slice of the full tensor a rank holds: `dim` is split in `size` equal pieces.

    `parts` > 1 is a fused weight (GPT-2's c_attn holds q, k and v): each of the `parts`
    equal blocks along `dim` is split separately, so rank r holds [q_r, k_r, v_r].
    """

    dim: int
    rank: int
    size: int
    parts: int = 1

    def ranges(self, full: int) -> list[tuple[int, int]]:
        if full % (self.parts * self.size):
            raise ValueError(
                f"dimension {full} does not split into {self.parts} part(s) x {self.size} ranks"
            )
        part = full // self.parts
        piece = part // self.size
        return [
            (p * part + self.rank * piece, p * part + (self.rank + 1) * piece)
            for p in range(self.parts)
        ]


class ColumnParallelLinear(nn.Module):
    """y[..., out/tp] = x @ W_r^T + b_r; the input is the same on every TP rank."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, tp: TPInfo, parts: int = 1
    ) -> None:
        super().__init__()
        if out_features % (tp.size * parts):
            raise ValueError(
                f"{out_features} output features do not split over tensor-parallel degree {tp.size}"
            )
        local = out_features // tp.size
        self.weight = nn.Parameter(torch.empty(local, in_features))
        self.bias = nn.Parameter(torch.empty(local)) if bias else None
        self.shards = {"weight": Shard(0, tp.rank, tp.size, parts)}
        if bias:
            self.shards["bias"] = Shard(0, tp.rank, tp.size, parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x[..., in/tp] @ W_r^T) + b; the bias is added once, after the sum."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPInfo) -> None:
        super().__init__()
        if in_features % tp.size:
            raise ValueError(
                f"{in_features} input features do not split over tensor-parallel degree {tp.size}"
            )
        self.tp = tp
        self.weight = nn.Parameter(torch.empty(out_features, in_features // tp.size))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.shards = {"weight": Shard(1, tp.rank, tp.size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.tp.size > 1:
            dist.all_reduce(y, group=self.tp.group)
        return y + self.bias if self.bias is not None else y


def colwise(linear: nn.Linear, tp: TPInfo, parts: int = 1) -> ColumnParallelLinear:
    return ColumnParallelLinear(
        linear.in_features, linear.out_features, linear.bias is not None, tp, parts
    )


def rowwise(linear: nn.Linear, tp: TPInfo) -> RowParallelLinear:
    return RowParallelLinear(linear.in_features, linear.out_features, linear.bias is not None, tp)


def shard_of(model: nn.Module, param_name: str) -> Shard | None:
    """The slice of the full parameter this rank holds, or None when it is replicated."""
    module_name, _, leaf = param_name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    shards: dict[str, Shard] = getattr(module, "shards", {})
    return shards.get(leaf)


# The apply_tp_* functions swap a block's Linears for parallel ones. They run on the model
# built on the meta device, before any weight exists, so they only change shapes.


def apply_tp_bert(block: Any, tp: TPInfo) -> None:
    attn = block.attention
    attn.self.query = colwise(attn.self.query, tp)
    attn.self.key = colwise(attn.self.key, tp)
    attn.self.value = colwise(attn.self.value, tp)
    attn.output.dense = rowwise(attn.output.dense, tp)
    block.intermediate.dense = colwise(block.intermediate.dense, tp)
    block.output.dense = rowwise(block.output.dense, tp)


def apply_tp_gpt2(block: Any, tp: TPInfo) -> None:
    block.attn.c_attn = colwise(block.attn.c_attn, tp, parts=3)
    block.attn.c_proj = rowwise(block.attn.c_proj, tp)
    block.mlp.c_fc = colwise(block.mlp.c_fc, tp)
    block.mlp.c_proj = rowwise(block.mlp.c_proj, tp)


def apply_tp_llama(block: Any, tp: TPInfo) -> None:
    attn, mlp = block.self_attn, block.mlp
    attn.q_proj = colwise(attn.q_proj, tp)
    attn.k_proj = colwise(attn.k_proj, tp)
    attn.v_proj = colwise(attn.v_proj, tp)
    attn.o_proj = rowwise(attn.o_proj, tp)
    mlp.gate_proj = colwise(mlp.gate_proj, tp)
    mlp.up_proj = colwise(mlp.up_proj, tp)
    mlp.down_proj = rowwise(mlp.down_proj, tp)
