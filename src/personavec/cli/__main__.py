"""``python -m personavec.cli``."""

import sys

from personavec.cli import main

sys.exit(main())
