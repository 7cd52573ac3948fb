"""`python -m bge_engine ...`: the `bge-engine` command line."""

import sys

from .cli import main

sys.exit(main())
