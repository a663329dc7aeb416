"""`python -m handover.probe`."""

import sys

from .cli import main

sys.exit(main())
