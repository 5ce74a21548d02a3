"""Outputs on a read-only or too small file system are refused before anything loads, in one line naming the directory.

The scripts run as a user would, in a mount namespace of their own where a directory is a read-only bind mount or a
small tmpfs (`tests.helpers.run_with_mount`). The path rules that need no mount are in the catalogue of bad inputs.
"""

import sys

import pytest

from tests.helpers import REPO, can_mount, error_lines, run_with_mount, training_args

pytestmark = pytest.mark.skipif(not can_mount(), reason="needs the right to mount a file system (root)")


@pytest.mark.parametrize("key", ["output_dir", "merged_model_dir", "images_dir"])
def test_an_output_on_a_read_only_file_system_is_refused(key, demo_assets, tmp_path):
    read_only = tmp_path / "read_only"
    args = [*training_args("dpo", demo_assets, tmp_path, 2), f"--{key}", read_only / "run"]
    result = run_with_mount("ro", read_only, [sys.executable, REPO / "dpo.py", *args])
    assert error_lines(result.stderr) == [
        f"error: {key} '{read_only / 'run'}' cannot be written: '{read_only}' is on a read-only file system; choose "
        f"another {key}"
    ]
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == [read_only]  # nothing written anywhere: no outputs, models or images


def test_a_merged_model_without_room_is_refused(demo_assets, tmp_path):
    small_disk, snapshot = tmp_path / "small_disk", tmp_path / "snapshot"
    merged_dir = small_disk / "models" / "run"
    args = [*training_args("dpo", demo_assets, tmp_path, 2), "--merged_model_dir", merged_dir]
    result = run_with_mount("tmpfs:1m", small_disk, [sys.executable, REPO / "dpo.py", *args], snapshot)
    # The demo model's files: 1.74 MB of float32 weights, its tokenizer and configs.
    assert error_lines(result.stderr) == [
        f"error: merged_model_dir '{merged_dir}': 1.0 MB free on its file system, and the merged model needs about "
        "1.8 MB (the base model's files at merged_dtype); free space or choose another merged_model_dir"
    ]
    assert result.returncode == 2
    assert list(snapshot.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["small_disk", "snapshot"]
