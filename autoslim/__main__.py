from __future__ import annotations

import sys

from autoslim.cli import main

sys.exit(main())
