"""Print statmux's dependencies for one extra (the base list plus that extra), one a line,
read from pyproject.toml: the images install them in a layer of their own before the statmux
wheel, so a source edit rebuilds only the wheel's small layer.

    python deps.py PYPROJECT EXTRA
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extra = sys.argv[2]
extras = project.get("optional-dependencies", {})
if extra not in extras:
    sys.exit(f"deps.py: no optional-dependencies.{extra} in {sys.argv[1]} (have {sorted(extras)})")
print("\n".join([*project.get("dependencies", []), *extras[extra]]))
