"""Every example manifest is accepted by the real API server (the same file works with
`statmux plan` and `kubectl apply`)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_passes_server_side_validation(example, kubectl, chart, namespace):
    res = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example), check=False)
    assert res.returncode == 0, res.stderr
    assert "modelset.statmux.io" in res.stdout
