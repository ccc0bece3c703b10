#!/usr/bin/env bash
# mypy cannot follow setuptools' editable-install mapping (placement/ -> statmux.placement),
# so build a tree of symlinks with the installed layout and check that.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/.typecheck"
rm -rf "$tree" && mkdir -p "$tree/statmux"
for f in "$root"/statmux/*.py; do ln -s "$f" "$tree/statmux/"; done
for d in placement runtime operator; do ln -s "$root/$d" "$tree/statmux/$d"; done
cd "$tree"
exec "${PYTHON:-python3}" -m mypy --config-file "$root/pyproject.toml" -p statmux "$@"
