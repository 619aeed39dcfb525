"""Allow ``python -m msgfm``."""

import sys

from msgfm.cli import main

sys.exit(main())
