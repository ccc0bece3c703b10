"""A plain BERT encoder with HF parameter names; output: last_hidden_state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from statmux.runtime.model_base import StageModel
from statmux.runtime.presets import BertConfig

_ACTS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)[None]
        )
        return self.LayerNorm(h)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.head_dim = h // cfg.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, _ = x.shape
        # -1 heads: a tensor-parallel rank holds heads / tp of them
        q, k, v = (
            proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, t, -1)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _ACTS[cfg.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleDict({str(i): BertLayer(cfg) for i in range(cfg.num_hidden_layers)})


class BertModel(StageModel):
    """Stage inputs: first [input_ids, attention_mask, token_type_ids], later [hidden, mask].

    Outputs: [hidden, attention_mask] to the next stage, [last_hidden_state] from the last.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings: BertEmbeddings | None = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def blocks(self) -> nn.ModuleDict:
        return self.encoder.layer

    def drop_embeddings(self) -> None:
        self.embeddings = None

    def drop_head(self) -> None:
        pass  # BERT's output is the last hidden state: there is no head

    def hf_names(self, name: str) -> list[str]:
        # BertFor* checkpoints prefix the encoder with "bert."
        return [name, f"bert.{name}"]

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if self.embeddings is not None:
            input_ids, attention_mask, token_type_ids = xs
            h = self.embeddings(input_ids, token_type_ids)
        else:
            h, attention_mask = xs
        # boolean mask over keys: True = attend; padded keys are ignored by every query
        mask = attention_mask[:, None, None, :].bool()
        for block in self.encoder.layer.values():
            h = block(h, mask)
        if self.last:
            return [h.float()]
        return [h, attention_mask]
