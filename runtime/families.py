"""The model families the runtime serves (BERT, GPT-2, Llama): one entry each.

Everything that differs between families and lives outside the family's own model file is
looked up here: the config class (runtime/presets.py's CONFIGS, the torch-free half of this
registry, which the placement engine uses too), the model (runtime/model_*.py), its
tensor-parallel plan (runtime/tensor_parallel.py) and its serving interface (inputs and
output, runtime/batching.py). Shape questions (layers, heads, positions, output width) are
answered by the config object itself under the same names for every family.

To add a family: its config dataclass in presets.py (with the shared properties, listed in
CONFIGS), its model
in model_<name>.py (a StageModel), its apply_tp function, one entry below and its name in
placement/spec.py's ARCHITECTURES (the ModelSet's allowed values; this module refuses to
import when the two lists differ).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from statmux.placement.spec import ARCHITECTURES
from statmux.runtime.model_base import StageModel
from statmux.runtime.model_bert import BertModel
from statmux.runtime.model_gpt2 import GPT2LMHeadModel
from statmux.runtime.model_llama import LlamaForCausalLM
from statmux.runtime.presets import CONFIGS, BertConfig, GPT2Config, LlamaConfig, ModelConfig
from statmux.runtime.tensor_parallel import TPInfo, apply_tp_bert, apply_tp_gpt2, apply_tp_llama


@dataclass(frozen=True)
class ModelFamily:
    name: str
    config: type[BertConfig] | type[GPT2Config] | type[LlamaConfig]
    model: Callable[[Any], StageModel]  # config -> the whole model (on the current device)
    apply_tp: Callable[[Any, TPInfo], None]  # swaps one block's Linears, in place
    output: str  # the name of the model's one output tensor
    # Optional inputs besides input_ids, with the value that fills a missing one
    # (BERT: attention_mask of ones, token_type_ids of zeros). Decoders take input_ids only:
    # attention is causal, so right padding needs no mask.
    optional_inputs: Mapping[str, int]

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("input_ids", *self.optional_inputs)


FAMILIES: dict[str, ModelFamily] = {
    "bert": ModelFamily(
        "bert",
        CONFIGS["bert"],
        BertModel,
        apply_tp_bert,
        "last_hidden_state",
        {"attention_mask": 1, "token_type_ids": 0},
    ),
    "gpt2": ModelFamily("gpt2", CONFIGS["gpt2"], GPT2LMHeadModel, apply_tp_gpt2, "logits", {}),
    "llama": ModelFamily("llama", CONFIGS["llama"], LlamaForCausalLM, apply_tp_llama, "logits", {}),
}

if tuple(FAMILIES) != ARCHITECTURES:  # a family added on one side only
    raise ImportError(
        f"runtime families {tuple(FAMILIES)} differ from the ModelSet's architectures "
        f"{ARCHITECTURES} (placement/spec.py)"
    )

_BY_CONFIG = {f.config: f for f in FAMILIES.values()}


def family_of(cfg: ModelConfig) -> ModelFamily:
    """The family of a config object."""
    return _BY_CONFIG[type(cfg)]
