"""`python -m hub.cli`: the same as the `outpost-hub` command."""

import sys

from hub.cli import main

sys.exit(main())
