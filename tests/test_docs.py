"""The docs name what the code really does."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))


def test_runtime_doc_metric_names_are_what_the_server_exposes() -> None:
    from live_metrics import scrape_live_server

    doc = (ROOT / "docs" / "runtime.md").read_text()
    names = set(re.findall(r"`((?:nv_inference|statmux)_[a-z_]+)", doc))
    assert len(names) >= 10, names
    exposed = scrape_live_server()
    on_gpu_only = {n for n in names if "gpu_memory" in n}  # exported only with CUDA
    missing = sorted(n for n in names - on_gpu_only if not exposed.queryable(n))
    assert not missing, f"docs/runtime.md names metrics the server does not expose: {missing}"
