"""Outputs are whole or absent: a failure midway, or SIGTERM, leaves what was there before, and what a writer killed
outright leaves is removed by the next one."""

import os
import signal
import time
from pathlib import Path

import pytest

from prefopt.atomic import atomic_directory, atomic_file, remove_leftovers


def test_directory_replaced_only_on_success(tmp_path):
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(destination) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("killed midway")
    assert (destination / "weights").read_text() == "old"
    with atomic_directory(destination) as staging:
        (staging / "weights").write_text("new")
    assert (destination / "weights").read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_file_replaced_only_on_success(tmp_path):
    destination = tmp_path / "plot.png"
    destination.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(destination) as staging:
            staging.write_text("half")
            raise RuntimeError("killed midway")
    assert destination.read_text() == "old"
    with atomic_file(destination) as staging:
        staging.write_text("new")
    assert destination.read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["plot.png"]


def test_sigterm_while_writing_removes_the_staging_directory(tmp_path):
    """SIGTERM, whose default ends a process with no cleanup, raises SystemExit(143) inside the block instead."""
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "weights").write_text("old")
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with atomic_directory(destination) as staging:
            (staging / "weights").write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert stopped.value.code == 143
    assert (destination / "weights").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    assert signal.getsignal(signal.SIGTERM) is handler


def test_a_stop_signal_during_the_renames_waits_until_they_are_done(tmp_path, monkeypatch):
    """Between the two renames the destination is missing: a SIGTERM there is held until the new version is in place
    and the old one removed, then ends the process as before."""
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "weights").write_text("old")
    rename = Path.rename

    def signalled_rename(self, target):
        os.kill(os.getpid(), signal.SIGTERM)
        return rename(self, target)

    with pytest.raises(SystemExit) as stopped:
        with atomic_directory(destination) as staging:
            (staging / "weights").write_text("new")
            monkeypatch.setattr(Path, "rename", signalled_rename)
    assert stopped.value.code == 143
    assert (destination / "weights").read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_leftovers_of_writers_killed_outright_are_removed(tmp_path):
    destination = tmp_path / "model"
    destination.mkdir()
    leftovers = [tmp_path / ".model.tmp-4242", tmp_path / ".model.old-4243"]
    others = [tmp_path / name for name in (".model.lock", ".model.tmp-abc", ".modelx.tmp-1", ".model.tmp-1.png")]
    for path in leftovers:
        path.mkdir()
        (path / "model.safetensors").write_text("weights")
    for path in others:
        path.write_text("not a leftover")
    assert sorted(remove_leftovers(destination)) == sorted(leftovers)
    assert sorted(tmp_path.iterdir()) == sorted([destination, *others])


def test_an_earlier_version_set_aside_comes_back_when_the_destination_is_missing(tmp_path):
    """Killed between the two renames: the earlier version is put back, the unchecked new one removed."""
    (tmp_path / ".model.old-4243").mkdir()
    (tmp_path / ".model.old-4243" / "weights").write_text("old")
    (tmp_path / ".model.tmp-4243").mkdir()
    assert remove_leftovers(tmp_path / "model") == [tmp_path / ".model.tmp-4243"]
    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    assert (tmp_path / "model" / "weights").read_text() == "old"
    assert remove_leftovers(tmp_path / "never" / "written") == []
