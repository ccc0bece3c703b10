"""A plain Llama (one forward pass over the prompt) with HF parameter names; output: logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from statmux.runtime.model_base import StageModel
from statmux.runtime.presets import LlamaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # normalize in float32, as HF does, then scale in the model dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(t: int, head_dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin tables [t, head_dim] for positions 0..t-1 (float32, the HF convention)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim)
    )
    freqs = torch.arange(t, device=device).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        hd = cfg.dim_per_head
        self.head_dim = hd
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * hd, cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * hd, cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * hd, cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, cfg.hidden_size, cfg.attention_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (
            proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # grouped-query attention: each kv head serves q_heads / kv_heads query heads
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, i, cfg.mlp_bias)
        self.up_proj = nn.Linear(h, i, cfg.mlp_bias)
        self.down_proj = nn.Linear(i, h, cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaInner(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleDict(
            {str(i): LlamaDecoderLayer(cfg) for i in range(cfg.num_hidden_layers)}
        )
        self.norm: RMSNorm | None = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(StageModel):
    """Stage inputs: first [input_ids], later [hidden]; the last stage returns [logits]."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LlamaInner(cfg)
        self.lm_head: nn.Linear | None = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def blocks(self) -> nn.ModuleDict:
        return self.model.layers

    def drop_embeddings(self) -> None:
        self.model.embed_tokens = None

    def drop_head(self) -> None:
        self.model.norm = None
        self.lm_head = None

    def hf_names(self, name: str) -> list[str]:
        if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
            return ["lm_head.weight", "model.embed_tokens.weight"]
        return [name]

    def tied_to(self, name: str) -> str:
        if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
            return "model.embed_tokens.weight"
        return name

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        inner = self.model
        if inner.embed_tokens is not None:
            (input_ids,) = xs
            h = inner.embed_tokens(input_ids)
        else:
            (h,) = xs
        cos, sin = rotary(h.shape[1], self.cfg.dim_per_head, self.cfg.rope_theta, h.device)
        for block in inner.layers.values():
            h = block(h, cos, sin)
        if inner.norm is not None and self.lm_head is not None:
            return [self.lm_head(inner.norm(h)).float()]
        return [h]
