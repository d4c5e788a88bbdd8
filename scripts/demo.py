"""Run the local demo (`./scripts/demo` runs this); its parts are in scripts/demo_parts/."""

from __future__ import annotations

import sys
from pathlib import Path

# A plain checkout: the repository on the path, for `hub`, `edge` and `scripts`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.demo_parts.main import main

if __name__ == "__main__":
    sys.exit(main())
