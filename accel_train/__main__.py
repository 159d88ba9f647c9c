"""`python -m accel_train ...` and `accelerate launch -m accel_train ...` run the command line."""

from .cli import main
from .launch import leave

leave(main())
