"""User errors: one exception type, reported as one line by the scripts' entry points; and the library errors that
are a user's to fix, turned into one."""

import contextlib
import errno
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import PartialState
from huggingface_hub import is_offline_mode
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import SafetensorError


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
    """Turn a `UserError` into one line on stderr and exit status 2; `PREFOPT_DEBUG=1` keeps the traceback.

    However the process ends, its process group (if any) ends first: left to the interpreter's shutdown, torch's gloo
    group sometimes aborts a process whose peers exit at the same moment ("terminate called without an active
    exception", SIGABRT), which the launcher then reports in place of the process's own exit status.
    """
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
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


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


# What stops a save whatever is saved: the disk (a full one, or a quota) or the directory (read-only, no permission).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def reported_if_disk_refuses(what: str, directory: Path, size: str, consequence: str) -> Iterator[None]:
    """Turn a full disk or an unwritable directory met while saving `what` into `directory` into a `UserError`: one
    line naming the directory and, for a full disk, what the save needs (`size`), then `consequence`."""
    try:
        yield
    except Exception as error:
        number = os_error_number(error)
        if number in DISK_FULL:
            problem = f"no space left on its disk, and the save needs {size}; free some space"
        elif number in NOT_WRITABLE:
            problem = f"'{directory.parent}' is not writable ({os.strerror(number)}); make it writable"
        else:
            raise
        raise UserError(
            f"cannot save {what} in '{directory}': {problem} or choose another directory; {consequence}"
        ) from None


def os_error_number(error: BaseException) -> int | None:
    """The OS error behind `error`: an `OSError`'s errno, or the "(os error N)" in the text of safetensors' own
    `SafetensorError`, which carries no errno."""
    if isinstance(error, OSError):
        return error.errno
    if not isinstance(error, SafetensorError):
        return None
    # "(os error 28)" as safetensors 0.8 writes it; older versions wrote "IoError(Os { code: 28, ...".
    found = re.search(r"\(os error (\d+)\)|code: (\d+)", str(error))
    return int(found.group(1) or found.group(2)) if found else None


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors it was raised from or while handling."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__
