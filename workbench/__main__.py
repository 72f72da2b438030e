"""`python -m workbench ...` is the same as `kdw ...`."""

import sys

from .cli import main

sys.exit(main())
