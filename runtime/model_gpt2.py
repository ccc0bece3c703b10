"""A plain GPT-2 (one forward pass over the prompt) with HF parameter names; output: logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from statmux.runtime.model_base import StageModel
from statmux.runtime.presets import GPT2Config

_ACTS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}
# HF stores these as Conv1D: weight [in, out]; we keep nn.Linear's [out, in]
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class GPT2Attention(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # fused [q; k; v]
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (
            part.view(b, t, -1, self.head_dim).transpose(1, 2)
            for part in self.c_attn(x).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, -1))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.inner)
        self.c_proj = nn.Linear(cfg.inner, cfg.n_embd)
        self.act = _ACTS[cfg.activation_function]

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Transformer(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.wte: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe: nn.Embedding | None = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleDict({str(i): GPT2Block(cfg) for i in range(cfg.n_layer)})
        self.ln_f: nn.LayerNorm | None = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)


class GPT2LMHeadModel(StageModel):
    """Stage inputs: first [input_ids], later [hidden]; the last stage returns [logits].

    Right-padded batches are exact at the real positions: attention is causal.
    """

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = GPT2Transformer(cfg)
        # tied to wte in GPT-2; a separate parameter here so the last stage needs no wte
        self.lm_head: nn.Linear | None = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def blocks(self) -> nn.ModuleDict:
        return self.transformer.h

    def drop_embeddings(self) -> None:
        self.transformer.wte = None
        self.transformer.wpe = None

    def drop_head(self) -> None:
        self.transformer.ln_f = None
        self.lm_head = None

    def hf_names(self, name: str) -> list[str]:
        if name == "lm_head.weight":
            return ["lm_head.weight", "transformer.wte.weight", "wte.weight"]
        # the original hub checkpoints have no "transformer." prefix
        return [name, name.removeprefix("transformer.")]

    def tied_to(self, name: str) -> str:
        return "transformer.wte.weight" if name == "lm_head.weight" else name

    def hf_transposed(self, name: str) -> bool:
        return name.endswith(_CONV1D)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        tr = self.transformer
        if tr.wte is not None and tr.wpe is not None:
            (input_ids,) = xs
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            h = tr.wte(input_ids) + tr.wpe(positions)[None]
        else:
            (h,) = xs
        for block in tr.h.values():
            h = block(h)
        if tr.ln_f is not None and self.lm_head is not None:
            return [self.lm_head(tr.ln_f(h)).float()]
        return [h]
