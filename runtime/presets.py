"""Model configs: HF config.json fields -> one small dataclass per family, plus named presets.

The runtime's models read their shapes from these dataclasses. Each also answers the same
few questions under the same names (num_layers, tp_heads, max_positions, output_width,
problems), so code outside the family's own model never asks which family it holds; the
families themselves are listed once, in runtime/families.py. They are built either from a
checkpoint's config.json (source: huggingface) or from a preset whose fields the ModelSet's
`weights.config` overrides (source: synthetic). Field names follow the HF configs so that a
user can paste a config.json fragment into `weights.config`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from statmux.placement.spec import ARCHITECTURES, WeightSource


class ModelConfigError(ValueError):
    """A config or preset the runtime cannot build; the message names the field."""


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int | None = None

    ACTIVATION_FIELD: ClassVar[str] = "hidden_act"
    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("gelu", "gelu_new", "relu")

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def activation(self) -> str:
        return self.hidden_act

    @property
    def tp_heads(self) -> dict[str, int]:
        """Head counts that the tensor-parallel degree must divide, by config field."""
        return {"num_attention_heads": self.num_attention_heads}

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings

    @property
    def output_width(self) -> int:
        return self.hidden_size  # last_hidden_state

    @property
    def input_bounds(self) -> dict[str, int]:
        """Exclusive upper bounds of the integer inputs (every one starts at 0)."""
        return {"input_ids": self.vocab_size, "token_type_ids": self.type_vocab_size}

    def problems(self) -> list[str]:
        return _divisible(self.hidden_size, self.num_attention_heads)


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd, as in HF
    n_positions: int = 1024
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    pad_token_id: int | None = None

    ACTIVATION_FIELD: ClassVar[str] = "activation_function"
    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("gelu_new", "gelu", "relu")

    @property
    def num_layers(self) -> int:
        return self.n_layer

    @property
    def activation(self) -> str:
        return self.activation_function

    @property
    def tp_heads(self) -> dict[str, int]:
        return {"n_head": self.n_head}

    @property
    def max_positions(self) -> int:
        return self.n_positions

    @property
    def output_width(self) -> int:
        return self.vocab_size  # logits

    @property
    def input_bounds(self) -> dict[str, int]:
        return {"input_ids": self.vocab_size}

    def problems(self) -> list[str]:
        return _divisible(self.n_embd, self.n_head)

    @property
    def inner(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    pad_token_id: int | None = None

    ACTIVATION_FIELD: ClassVar[str] = "hidden_act"
    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("silu",)

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def activation(self) -> str:
        return self.hidden_act

    @property
    def tp_heads(self) -> dict[str, int]:
        return {
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads,
        }

    @property
    def max_positions(self) -> int:
        # rotary positions have no table to run past, but the model was trained this far
        # and cost grows with length: the limit bounds what one request may cost
        return self.max_position_embeddings

    @property
    def output_width(self) -> int:
        return self.vocab_size  # logits

    @property
    def input_bounds(self) -> dict[str, int]:
        return {"input_ids": self.vocab_size}

    def problems(self) -> list[str]:
        if self.num_attention_heads % self.kv_heads:
            return [
                f"num_attention_heads ({self.num_attention_heads}) must be a "
                f"multiple of num_key_value_heads ({self.kv_heads})"
            ]
        return []  # head_dim need not divide hidden_size

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


ModelConfig = BertConfig | GPT2Config | LlamaConfig
# The config class of each family: the torch-free half of runtime/families.py's registry,
# so that the placement engine can read model configs without torch.
CONFIGS: dict[str, type[BertConfig] | type[GPT2Config] | type[LlamaConfig]] = {
    "bert": BertConfig,
    "gpt2": GPT2Config,
    "llama": LlamaConfig,
}
if tuple(CONFIGS) != ARCHITECTURES:  # a family added on one side only
    raise ImportError(f"configs {tuple(CONFIGS)} differ from the architectures {ARCHITECTURES}")


def _divisible(hidden: int, heads: int) -> list[str]:
    if hidden % heads:
        return [f"hidden size ({hidden}) must be a multiple of the head count ({heads})"]
    return []


# Named synthetic sizes. `tiny` exists for every architecture (tests); the others mirror the
# sizes of the AlpaServe evaluation (BERT-1.3B/2.6B/6.7B) and common public models.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-tiny": (
        "bert",
        dict(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
    ),
    "bert-small": (
        "bert",
        dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1024),
    ),
    "bert-base": ("bert", {}),
    "bert-1.3b": (
        "bert",
        dict(
            hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, intermediate_size=8192
        ),
    ),
    "bert-2.6b": (
        "bert",
        dict(
            hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240
        ),
    ),
    "bert-6.7b": (
        "bert",
        dict(
            hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384
        ),
    ),
    "gpt2-tiny": (
        "gpt2",
        dict(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=64),
    ),
    "gpt2": ("gpt2", {}),
    "gpt2-medium": ("gpt2", dict(n_embd=1024, n_layer=24, n_head=16)),
    "llama-tiny": (
        "llama",
        dict(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        ),
    ),
    "llama-1b": (
        "llama",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            rope_theta=500000.0,
            tie_word_embeddings=True,
        ),
    ),
    "llama-7b": ("llama", {}),
}


def preset_names(architecture: str) -> list[str]:
    """Names valid for `weights.preset` with this architecture (`tiny` is an alias)."""
    names = [n for n, (arch, _) in PRESETS.items() if arch == architecture]
    return ["tiny", *names]


def config_from_dict(architecture: str, data: dict[str, Any], where: str) -> ModelConfig:
    """Build the family config from HF config fields; unknown HF fields are ignored."""
    if architecture not in CONFIGS:
        raise ModelConfigError(
            f"{where}: architecture {architecture!r} is not supported; "
            f"allowed: {', '.join(ARCHITECTURES)}"
        )
    cls = CONFIGS[architecture]
    if data.get("rope_scaling") is not None:
        raise ModelConfigError(f"{where}: rope_scaling is not supported (set it to null)")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            continue
        default = getattr(cls(), key)
        if value is None and default is None:
            kwargs[key] = None
            continue
        expected = type(default) if default is not None else int
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ModelConfigError(
                f"{where}: field {key!r} must be {expected.__name__}, got {value!r}"
            )
        kwargs[key] = value
    cfg = cls(**kwargs)
    validate_config(cfg, where)
    return cfg


def validate_config(cfg: ModelConfig, where: str) -> None:
    if cfg.activation not in cfg.ACTIVATIONS:
        raise ModelConfigError(
            f"{where}: {cfg.ACTIVATION_FIELD} {cfg.activation!r} is not supported; "
            f"allowed: {', '.join(cfg.ACTIVATIONS)}"
        )
    if cfg.num_layers < 1:
        raise ModelConfigError(f"{where}: the model needs at least one layer")
    for problem in cfg.problems():
        raise ModelConfigError(f"{where}: {problem}")


def resolve_config(weights: WeightSource, where: str = "weights") -> ModelConfig:
    """The config of a model: config.json for huggingface, preset + overrides for synthetic."""
    arch = weights.architecture
    if weights.source == "huggingface":
        path = Path(weights.path or "")
        cfg_file = path / "config.json"
        try:
            data = json.loads(cfg_file.read_text())
        except OSError as err:
            raise ModelConfigError(
                f"{where}.path: cannot read {cfg_file}: {err.strerror}"
            ) from None
        except json.JSONDecodeError as err:
            raise ModelConfigError(f"{where}.path: {cfg_file} is not valid JSON: {err}") from None
        model_type = data.get("model_type")
        if model_type is not None and model_type != arch:
            raise ModelConfigError(
                f"{where}.architecture is {arch!r} but {cfg_file} has model_type {model_type!r}"
            )
        return config_from_dict(arch, data, str(cfg_file))
    base: dict[str, Any] = {}
    if weights.preset is not None:
        key = f"{arch}-tiny" if weights.preset == "tiny" else weights.preset
        if key not in PRESETS or PRESETS[key][0] != arch:
            raise ModelConfigError(
                f"{where}.preset {weights.preset!r} is not a {arch} preset; "
                f"allowed: {', '.join(preset_names(arch))}"
            )
        base = dict(PRESETS[key][1])
    base.update(weights.config or {})
    return config_from_dict(arch, base, f"{where}.config")
