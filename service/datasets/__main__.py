"""`python -m service.datasets write|metadata` (see service.datasets.cli)."""

import sys

from service.datasets.cli import main

sys.exit(main())
