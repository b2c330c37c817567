"""``python -m workbench.compat SCRIPT [ARGS...]`` is ``workbench compat SCRIPT [ARGS...]``."""

import sys

from ..cli import main

raise SystemExit(main(["compat", *sys.argv[1:]]))
