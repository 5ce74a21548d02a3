"""Outputs that are either whole or absent: written beside their destination, then moved into place."""

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(destination: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `destination`; on success it replaces `destination` in one rename.

    If the body fails, the temporary directory is removed and an existing `destination` is left untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = destination.parent / f".{destination.name}.old-{os.getpid()}"
    if destination.exists():
        destination.rename(previous)
    staging.rename(destination)
    shutil.rmtree(previous, ignore_errors=True)


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
