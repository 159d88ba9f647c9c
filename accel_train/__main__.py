"""`python -m accel_train ...` and `accelerate launch -m accel_train ...` run the command line."""

import sys

from .cli import main

sys.exit(main())
