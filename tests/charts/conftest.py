"""Make tests/helpers importable (k8s_tools, sync_chart_rbac)."""

import sys
from pathlib import Path

HELPERS = str(Path(__file__).resolve().parents[1] / "helpers")
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)
