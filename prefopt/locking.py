"""One run per output directory: a second run pointed at the same place refuses instead of corrupting the first."""

import fcntl
from pathlib import Path

from accelerate import PartialState

from prefopt.errors import UserError

_held_locks = []  # open lock files, kept for the life of the process; the OS releases them when it dies


def lock_outputs(*directories: str | Path) -> None:
    """Take an exclusive lock beside each directory, on the main process, for as long as the run lives.

    The lock is a `flock` on `.<name>.lock` next to the directory, symlinks followed, so that two paths to one
    directory take one lock; a killed run leaves no stale lock behind.
    """
    if not PartialState().is_main_process:
        return
    for directory in map(Path, directories):
        resolved = directory.resolve()
        resolved.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(resolved.parent / f".{resolved.name}.lock", "w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise UserError(
                f"another run is writing to '{directory}'; wait for it or choose another directory"
            ) from None
        _held_locks.append(lock_file)
