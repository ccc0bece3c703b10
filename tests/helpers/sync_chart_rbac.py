"""Write the chart's RBAC rules (charts/statmux/files/rbac.yaml) from operator/rbac.py.

    python tests/helpers/sync_chart_rbac.py           # print
    python tests/helpers/sync_chart_rbac.py --write   # rewrite the chart's file

tests/charts/test_chart.py fails when the two differ, so they cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

CHART_RBAC = Path(__file__).resolve().parents[2] / "charts" / "statmux" / "files" / "rbac.yaml"
HEADER = """\
# The operator's RBAC rules, generated from operator/rbac.py by
# `python tests/helpers/sync_chart_rbac.py --write`; do not edit by hand.
#   namespaced: granted in each watched namespace (a Role), or cluster-wide (ClusterRole)
#   cluster:    cluster-scoped resources (always a ClusterRole)
"""


def operator_rules() -> dict[str, list[dict[str, Any]]]:
    from statmux.operator.rbac import rules

    return {"namespaced": rules(cluster_scoped=False), "cluster": rules(cluster_scoped=True)}


def render() -> str:
    return HEADER + yaml.safe_dump(operator_rules(), sort_keys=False, default_flow_style=None)


def main(argv: list[str]) -> int:
    text = render()
    if "--write" in argv:
        CHART_RBAC.write_text(text)
        print(f"wrote {CHART_RBAC}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
