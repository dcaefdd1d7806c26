"""``python -m gcluster.testing serve``: see `gcluster.testing.serve`."""

from __future__ import annotations

import sys

from .serve import main

if __name__ == "__main__":
    sys.exit(main())
