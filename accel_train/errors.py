"""The one exception type for a user's own mistake, and how it reaches the terminal.

A `UserError` names the problem and the fix in one message. The command line prints it without a traceback and
exits with status 2; `fit()` raises it so that scripts and tests can catch it, and `install_excepthook()` makes an
uncaught one print the same single message in a user's own `train.py`.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem in the user's configuration, data, model or launch setup, with the fix in the message."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' Did you mean `x`?' for the closest of `choices`, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean `{match[0]}`?" if match else ""


def report(error: UserError) -> None:
    """Print the message once (rank 0 only under a launcher, so N processes do not repeat it)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"accel_train: error: {error}", file=sys.stderr, flush=True)


def _excepthook(kind, error, tb):  # pragma: no cover - exercised through subprocess tests
    if issubclass(kind, UserError):
        report(error)
        sys.exit(EXIT_USER_ERROR)
    sys.__excepthook__(kind, error, tb)


def install_excepthook() -> None:
    """Make an uncaught `UserError` print one clear line and exit 2 instead of a traceback."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
