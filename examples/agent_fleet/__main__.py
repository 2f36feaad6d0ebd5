"""``python -m examples.agent_fleet``: run the fleet benchmark (see run.py)."""

import sys

from .run import main

sys.exit(main())
