"""Outputs are whole or absent: a failure midway leaves what was there before."""

import pytest

from prefopt.atomic import atomic_directory, atomic_file


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
