"""`python -m executor`: the same command as the `executor` console script."""

from __future__ import annotations

import sys

from executor.cli import main

if __name__ == "__main__":
    sys.exit(main())
