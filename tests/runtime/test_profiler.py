"""`statmux profile`: a real group measured, written in the profile format a ModelSet reads."""

from __future__ import annotations

import pytest
import yaml

from statmux.placement.profile import ParallelConfig
from statmux.placement.profiles import load_profile_file
from statmux.runtime.profiler import profile_main


def test_unknown_preset_exits_2(tmp_path, capsys):
    assert profile_main(["--preset", "bert-huge", "-o", str(tmp_path / "p.yaml")]) == 2
    assert "--preset 'bert-huge' is unknown" in capsys.readouterr().err


def test_an_unwritable_output_exits_2_before_measuring(tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("")
    assert profile_main(["--preset", "bert-tiny", "--pp", "1", "-o", str(out / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"-o {out / 'p.yaml'}: cannot create the folder {out}" in err
    assert profile_main(["--preset", "bert-tiny", "--pp", "1", "-o", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


@pytest.mark.slow
def test_profile_of_a_real_group_loads_as_a_profile_file(tmp_path):
    out = tmp_path / "bert.yaml"
    argv = ["--preset", "bert-tiny", "--pp", "1,2", "--batch", "1,2"]
    assert profile_main([*argv, "--repeats", "3", "--warmup", "1", "-o", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["numLayers"] == 4 and doc["weightBytes"] > 0
    assert doc["overheads"]["requestSeconds"] >= 0 and doc["overheads"]["stageSeconds"] > 0
    profile = load_profile_file(out, "bert-a")
    for pp in (1, 2):
        config = profile.get(pp, 1)
        assert config is not None and config.measured
        assert config.stage_latency.shape[1] == pp and (config.stage_latency > 0).all()
        measured = doc["configs"][pp - 1]["stageLatencyS"]["2"]
        assert list(config.stage_latency[config.batch_sizes.index(2)]) == measured
    assert ParallelConfig(1, 1) in profile.configs
    assert profile.overheads.stage_seconds == doc["overheads"]["stageSeconds"]


def test_emulated_profile_measures_the_emulated_serving_path(tmp_path):
    """--emulate-device: every stage takes the 1 ms placeholder (so the measured stages are
    at least that) and the overheads are those of the emulated ranks' serving path."""
    out = tmp_path / "emulated.yaml"
    argv = ["--preset", "bert-tiny", "--pp", "2", "--batch", "1", "--emulate-device"]
    assert profile_main([*argv, "--repeats", "3", "--warmup", "1", "-o", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["hardware"].startswith("emulated devices (1 ms per stage)")
    (config,) = doc["configs"]
    assert all(x >= 1e-3 for x in config["stageLatencyS"]["1"])
    assert doc["overheads"]["requestSeconds"] >= 0 and doc["overheads"]["stageSeconds"] > 0
