"""The model-family registry: every ModelSet architecture is served, each from one entry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from statmux.placement.spec import ARCHITECTURES, WeightSource
from statmux.runtime.batching import make_batch, model_info, output_name
from statmux.runtime.checkpoint import build_stage
from statmux.runtime.families import FAMILIES, family_of
from statmux.runtime.presets import ModelConfigError, config_from_dict, resolve_config


def tiny(arch: str):
    return resolve_config(WeightSource(architecture=arch, preset="tiny"))


def test_every_modelset_architecture_has_one_family() -> None:
    assert tuple(FAMILIES) == ARCHITECTURES
    for arch in ARCHITECTURES:
        assert family_of(tiny(arch)) is FAMILIES[arch]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_served_interface_comes_from_the_family(arch: str) -> None:
    cfg = tiny(arch)
    family = FAMILIES[arch]
    info = model_info("m", arch, cfg)
    assert [t.name for t in info.inputs] == list(family.inputs)
    assert [t.optional for t in info.inputs] == [False] + [True] * len(family.optional_inputs)
    assert [t.name for t in info.outputs] == [family.output] == [output_name(cfg)]
    assert info.outputs[0].shape[-1] == cfg.output_width
    ids = np.array([[1, 2, 3]])
    tensors, _ = make_batch(cfg, [{"input_ids": ids}, {"input_ids": ids[:, :2]}])
    assert len(tensors) == len(family.inputs)
    for t, name in zip(tensors[1:], family.optional_inputs, strict=True):
        # a missing optional input is filled with the family's value, padding with 0
        assert t[0].tolist() == [family.optional_inputs[name]] * 3
        assert t[1].tolist() == [family.optional_inputs[name]] * 2 + [0]
    model = build_stage(cfg)
    assert isinstance(model, family.model)


def test_an_unknown_architecture_lists_the_families() -> None:
    with pytest.raises(ModelConfigError, match="allowed: bert, gpt2, llama"):
        config_from_dict("t5", {}, "weights")


def test_configs_resolve_without_torch() -> None:
    """The placement engine reads a ModelSet's model configs (layer counts) without torch."""
    code = (
        "import sys\n"
        "from statmux.placement.spec import ARCHITECTURES, WeightSource\n"
        "from statmux.runtime.presets import resolve_config\n"
        "for a in ARCHITECTURES: resolve_config(WeightSource(architecture=a, preset='tiny'))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
