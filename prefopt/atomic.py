"""Outputs that are either whole or absent: written beside their destination, then moved into place."""

import contextlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

# What a scheduler sends on preemption, and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def atomic_directory(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `destination`; on success it replaces `destination` in one rename.

    If the body fails, or SIGTERM or SIGINT stops the process meanwhile, the temporary directory is removed and an
    existing `destination` is left untouched. A process killed outright (SIGKILL) leaves it behind, under the name
    that `remove_leftovers` recognises.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging, previous = _sibling(destination, "tmp"), _sibling(destination, "old")
    shutil.rmtree(staging, ignore_errors=True)
    with _StopSignals() as stop_signals:
        staging.mkdir()
        try:
            yield staging
            with stop_signals.held():  # between the two renames `destination` is missing
                if destination.exists():
                    destination.rename(previous)
                staging.rename(destination)
                shutil.rmtree(previous, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def remove_leftovers(destination: str | Path) -> list[Path]:
    """Remove what writers of `destination` killed outright in `atomic_directory` left beside it, and return it:
    unfinished temporary directories, and the earlier version set aside, which is put back if `destination` is missing.

    Only for a caller holding `destination`'s lock (`prefopt.locking.lock_outputs`), as every writer of it does: a
    live writer's temporary directory looks the same as a dead one's.
    """
    destination = Path(destination)
    leftover = re.compile(rf"\.{re.escape(destination.name)}\.(old|tmp)-\d+")
    matches = filter(None, (leftover.fullmatch(path.name) for path in destination.parent.glob(".*")))
    removed = []
    for match in sorted(matches, key=lambda match: (match.group(1), match.string)):  # old before tmp
        path = destination.parent / match.string
        if match.group(1) == "old" and not destination.exists():
            path.rename(destination)  # killed between the two renames: the earlier version comes back
        else:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def _sibling(destination: Path, kind: str) -> Path:
    return destination.parent / f".{destination.name}.{kind}-{os.getpid()}"


class _StopSignals:
    """Within: SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt, so that cleanup runs (by default SIGTERM
    ends the process at once), unless `held()` defers them. Outside the main thread, which alone runs Python's signal
    handlers, nothing changes; so it is for signals ignored, or handled outside Python."""

    def __init__(self) -> None:
        self.previous = {}
        self.deferred: list[int] | None = None

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                handler = signal.getsignal(number)
                if handler not in (signal.SIG_IGN, None):
                    self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.deferred is not None:
            self.deferred.append(number)
        elif number == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + number)  # the status a shell reports for a process the signal ended

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.deferred = []
        try:
            yield
        finally:
            deferred, self.deferred = self.deferred, None
            if deferred:
                self._handle(deferred[0], None)


@contextlib.contextmanager
def atomic_file(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `destination`; on success it replaces `destination` with `os.replace`."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.stem}.tmp-{os.getpid()}{destination.suffix}"
    try:
        yield staging
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, destination)
