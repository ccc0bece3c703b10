import sys

from statmux.cli import main

sys.exit(main())
