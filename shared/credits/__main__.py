"""`python -m credits ...`: the same as the `credits` console script (credits.cli)."""

from __future__ import annotations

import sys

from credits.cli import main

if __name__ == "__main__":
    sys.exit(main())
