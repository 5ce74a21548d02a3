"""User errors: one exception type, reported as one line by the scripts' entry points."""

import contextlib
import os
import sys
from collections.abc import Iterator


class UserError(Exception):
    """A mistake in a config, a path or the data that the user can fix; reported without a traceback."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a `UserError` into one line on stderr and exit status 2; `PREFOPT_DEBUG=1` keeps the traceback."""
    try:
        yield
    except UserError as error:
        if os.environ.get("PREFOPT_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
