"""Operator settings and the entry point's argument handling."""

from __future__ import annotations

import pytest

from statmux.operator.config import ConfigError, OperatorConfig
from statmux.operator.main import build_parser, operator_main, watched_namespaces


def test_config_from_env() -> None:
    cfg = OperatorConfig.from_env(
        {"STATMUX_RUNTIME_IMAGE": "r:2", "STATMUX_GANG": "Kueue", "STATMUX_RESYNC_SECONDS": "2"}
    )
    assert (cfg.runtime_image, cfg.gang, cfg.resync_seconds) == ("r:2", "kueue", 2.0)
    assert OperatorConfig.from_env({}) == OperatorConfig()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"STATMUX_GANG": "slurm"}, ["STATMUX_GANG", "kueue", "volcano"]),
        ({"STATMUX_WORKLOAD": "pods"}, ["STATMUX_WORKLOAD", "statefulset"]),
        ({"STATMUX_RESYNC_SECONDS": "soon"}, ["STATMUX_RESYNC_SECONDS", "number"]),
        ({"STATMUX_MASTER_PORT": "0"}, ["STATMUX_MASTER_PORT", "at least"]),
    ],
)
def test_bad_settings_name_the_variable(env: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        OperatorConfig.from_env(env)
    assert all(n in str(err.value) for n in names)


def test_operator_main_rejects_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STATMUX_GANG", "slurm")
    assert operator_main(["-n", "x"]) == 2
    err = capsys.readouterr().err
    assert "STATMUX_GANG" in err and "Traceback" not in err


def test_namespaces() -> None:
    p = build_parser()
    assert watched_namespaces(p.parse_args(["-n", "a", "-n", "b"]), {}) == ["a", "b"]
    assert watched_namespaces(p.parse_args([]), {"STATMUX_WATCH_NAMESPACES": "x, y"}) == ["x", "y"]
    assert watched_namespaces(p.parse_args(["-A"]), {"STATMUX_WATCH_NAMESPACES": "x"}) == []
    with pytest.raises(SystemExit):
        p.parse_args(["-A", "-n", "a"])


# The kopf handlers (operator/handlers.py) are checked where kopf really runs them, against
# a real API server: tests/e2e/test_operator.py plans and readies a ModelSet (reconcile and
# the resync timer), replans on edit, and recreates a whole group when one pod is deleted
# (gang_restart). kopf has no public API to list registered handlers.
