"""User errors: one exception type, reported as one line by the scripts' entry points; and the library errors that
are a user's to fix, turned into one."""

import contextlib
import os
import sys
from collections.abc import Iterator

from accelerate import PartialState
from huggingface_hub import is_offline_mode
from huggingface_hub.errors import LocalEntryNotFoundError


class UserError(Exception):
    """A mistake in a config, a path or the data that the user can fix; reported without a traceback.

    `every_process`: every process of the run raises it at the same point, having decided together (a stop during
    training), so the main process alone reports it.
    """

    def __init__(self, message: str, *, every_process: bool = False):
        super().__init__(message)
        self.every_process = every_process


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a `UserError` into one line on stderr and exit status 2; `PREFOPT_DEBUG=1` keeps the traceback."""
    try:
        yield
    except UserError as error:
        if os.environ.get("PREFOPT_DEBUG") == "1":
            raise
        state = PartialState() if error.every_process else None
        if state is None or state.is_main_process:
            print(f"error: {error}", file=sys.stderr)
        if state is not None:
            # The launcher stops a run's other processes as soon as one ends: none ends before the line is out.
            state.wait_for_everyone()
        sys.exit(2)


@contextlib.contextmanager
def reported_if_hub_unreachable(key: str, repo_id: str, repo_type: str = "model") -> Iterator[None]:
    """Turn "the hub could not be reached and nothing is cached for `repo_id`" into a `UserError` saying how to go on.

    datasets raises a `ConnectionError` for it, transformers an `OSError` caused by huggingface_hub's
    `LocalEntryNotFoundError`; both after huggingface_hub's retries, or at once with `HF_HUB_OFFLINE=1`.
    """
    try:
        yield
    except OSError as error:
        if not any(isinstance(cause, (ConnectionError, LocalEntryNotFoundError)) for cause in error_chain(error)):
            raise
        offline = " (HF_HUB_OFFLINE is set)" if is_offline_mode() else ""
        download = f"hf download {repo_id}{' --repo-type dataset' if repo_type == 'dataset' else ''} --local-dir DIR"
        raise UserError(
            f"{key}: could not reach the Hugging Face Hub{offline} for '{repo_id}', and nothing is cached for it; "
            f"download it where the hub is reachable ({download}) and set {key} to DIR"
        ) from None


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors it was raised from or while handling."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__
