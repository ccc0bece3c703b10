"""One rank of the tensor-parallel oracle test (run by test_tp_oracle.py, not collected).

usage: tp_oracle_rank.py RANK PORT WORKDIR (or runpy with RANK_ARGV in globals)
Two gloo ranks build the same synthetic BERT twice: once with statmux's hand-written
Megatron layers (runtime/tensor_parallel.py, only this rank's slices materialized) and once
as the plain model parallelized by DTensor's `parallelize_module`. Rank 0 writes both
outputs' max abs errors against the unsharded model to result.json.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from statmux.placement.spec import WeightSource
from statmux.runtime.checkpoint import build_full_model, build_stage, load_state, materialize
from statmux.runtime.presets import resolve_config
from statmux.runtime.tensor_parallel import TPInfo

# the same split as apply_tp_bert: heads for attention, hidden width for the MLP
DTENSOR_PLAN = {
    "attention.self.query": ColwiseParallel(),
    "attention.self.key": ColwiseParallel(),
    "attention.self.value": ColwiseParallel(),
    "attention.output.dense": RowwiseParallel(),
    "intermediate.dense": ColwiseParallel(),
    "output.dense": RowwiseParallel(),
}


def run(rank: int, port: int, workdir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    weights = WeightSource(architecture="bert", preset="tiny", dtype="float32")
    cfg = resolve_config(weights)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 128, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row
    inputs = [ids, mask, torch.randint(0, 2, ids.shape, generator=gen)]

    with torch.no_grad():
        reference = build_full_model(cfg, weights)(inputs)[0]

        megatron = build_stage(cfg, tp=TPInfo(rank, 2, dist.group.WORLD))
        megatron = materialize(megatron, load_state(megatron, weights))
        ours = megatron(inputs)[0]

        oracle_model = build_full_model(cfg, weights)
        mesh = init_device_mesh("cpu", (2,))
        for block in oracle_model.blocks().values():
            parallelize_module(block, mesh, DTENSOR_PLAN)
        oracle = oracle_model(inputs)[0]

    query = next(iter(oracle_model.blocks().values())).attention.self.query.weight
    result = {
        "ours_vs_dtensor": float((ours - oracle).abs().max()),
        "ours_vs_single": float((ours - reference).abs().max()),
        "dtensor_vs_single": float((oracle - reference).abs().max()),
        "oracle_is_dtensor": isinstance(query, DTensor),
        "oracle_local_rows": int(query.to_local().shape[0]) if isinstance(query, DTensor) else 0,
        "ours_local_rows": int(
            next(iter(megatron.blocks().values())).attention.self.query.weight.shape[0]
        ),
        "hidden": cfg.hidden_size,
    }
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        (workdir / "result.json").write_text(json.dumps(result))


def main(argv: list[str]) -> None:
    workdir = Path(argv[2])
    try:
        run(int(argv[0]), int(argv[1]), workdir)
    except BaseException:
        (workdir / f"rank{argv[0]}.err").write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    main(globals().get("RANK_ARGV") or sys.argv[1:])
