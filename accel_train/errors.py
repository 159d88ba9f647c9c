"""The one exception type for a user's own mistake, and how it reaches the terminal.

A `UserError` names the problem and the fix in one message. The command line prints it without a traceback and
exits with status 2; `fit()` raises it so that scripts and tests can catch it. A script gets the command line's
behaviour with `exit_on_user_error` (a context manager and decorator): library code never installs a process-wide
hook.

    if __name__ == "__main__":
        with exit_on_user_error():
            main()
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Iterable, Iterator

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem in the user's configuration, data, model or launch setup, with the fix in the message."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' Did you mean `x`?' for the closest of `choices`, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean `{match[0]}`?" if match else ""


ERROR_FILE = "ACCEL_TRAIN_ERROR_FILE"  # set by `accel-train launch`: it prints the line again after the launcher


def report(error: UserError) -> None:
    """Print the message once (rank 0 only under a launcher, so N processes do not repeat it)."""
    if os.environ.get("RANK", "0") == "0":
        line = f"accel_train: error: {error}"
        print(line, file=sys.stderr, flush=True)
        if os.environ.get(ERROR_FILE):
            with open(os.environ[ERROR_FILE], "a") as handle:
                handle.write(line.replace("\n", " ") + "\n")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For scripts: a `UserError` raised inside ends the process with its one line and exit status 2."""
    try:
        yield
    except UserError as error:
        report(error)
        sys.exit(EXIT_USER_ERROR)
