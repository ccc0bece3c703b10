"""A rank's shard (stage slice + TP slice) is exactly its part of the full model's weights,
for HF checkpoints read with get_slice and for synthetic weights alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from statmux.placement.spec import WeightSource
from statmux.runtime.checkpoint import build_full_model, build_stage, load_state
from statmux.runtime.presets import resolve_config
from statmux.runtime.tensor_parallel import TPInfo, shard_of

transformers = pytest.importorskip("transformers")


def _check_shards(weights: WeightSource, pp: int, tp: int) -> int:
    cfg = resolve_config(weights)
    full = dict(build_full_model(cfg, weights).named_parameters())
    checked = 0
    for stage in range(pp):
        for rank in range(tp):
            model = build_stage(cfg, stage, pp, TPInfo(rank, tp, None))
            state = load_state(model, weights)
            for name, tensor in state.items():
                shard = shard_of(model, name)
                want = full[name]
                if shard is not None:
                    pieces = [
                        want.narrow(shard.dim, a, b - a)
                        for a, b in shard.ranges(want.shape[shard.dim])
                    ]
                    want = torch.cat(pieces, dim=shard.dim)
                assert torch.equal(tensor, want), f"stage {stage} rank {rank}: {name}"
                checked += 1
    return checked


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_huggingface_shards_are_slices_of_the_full_model(arch: str, tmp_path: Path) -> None:
    if arch == "bert":
        hf = transformers.BertModel(
            transformers.BertConfig(
                vocab_size=64,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=32,
            ),
            add_pooling_layer=False,
        )
    elif arch == "gpt2":
        hf = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4)
        )
    else:
        hf = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=64,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        )
    hf.save_pretrained(tmp_path)
    weights = WeightSource(
        source="huggingface", architecture=arch, path=str(tmp_path), dtype="float32"
    )
    assert _check_shards(weights, pp=2, tp=2) > 0


def test_synthetic_shards_are_slices_of_the_full_model() -> None:
    weights = WeightSource(architecture="gpt2", preset="tiny", dtype="float32")
    assert _check_shards(weights, pp=2, tp=2) > 0


def test_stage_holds_only_its_layers() -> None:
    cfg = resolve_config(WeightSource(architecture="llama", preset="tiny"))
    middle = build_stage(cfg, 1, 4)
    names = {n for n, _ in middle.named_parameters()}
    assert all(n.startswith("model.layers.1.") for n in names)
    last = build_stage(cfg, 3, 4)
    assert "lm_head.weight" in dict(last.named_parameters())
