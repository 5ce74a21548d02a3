"""A killed run resumes to the same result, whatever it was doing when killed; two runs never write to the same place.

The kill tests run each script three times with SIGKILL in between: killed in the middle of writing a checkpoint,
resumed and killed between two saves, resumed to the end. A test hook (`pause_hook/sitecustomize.py`, on the
runs' PYTHONPATH only) holds the run at the chosen moment until the test kills it, so that the moment is hit every
time however loaded the machine is.
"""

import os
import signal
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

from prefopt.checkpoints import checkpoint_problem, resume_checkpoint
from prefopt.locking import lock_outputs
from tests.helpers import (
    REPO,
    read_jsonl,
    run_script,
    start_paused,
    train_losses,
    training_args,
    write_checkpoint,
    write_jsonl,
)

STEPS, SAVE_STEPS = 12, 4
# One thread: two threads per run spun against each other on this loaded 2-core machine (a 12-step DPO run took 37 s
# of training instead of 1 s).
THREADS = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small_data(demo_assets, tmp_path_factory):
    """STEPS batches of 4 pairs: a whole epoch for DPO and SimPO (KTO unpairs them into twice as many examples)."""
    directory = tmp_path_factory.mktemp("small_data")
    write_jsonl(directory / "train.jsonl", read_jsonl(demo_assets.data_dir / "train.jsonl")[: STEPS * 4])
    return directory


def kill_test_args(algorithm, assets, data, run_dir, *extra):
    return training_args(
        algorithm, assets, run_dir, STEPS,
        "--dataset_name", data,
        "--per_device_train_batch_size", "4",
        "--logging_steps", "1",
        "--save_steps", str(SAVE_STEPS),
        "--eval_strategy", "no",
        "--merge", "false",
        *extra,
    )  # fmt: skip


def run_until_killed(script: str, args: list, moment: str, log: Path) -> None:
    """Run `script` until it pauses at `moment` (see pause_hook), then SIGKILL it."""
    process = start_paused([sys.executable, str(REPO / script), *map(str, args)], moment, log, **THREADS)
    process.send_signal(signal.SIGKILL)
    process.wait()


def checkpoint_names(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.iterdir() if "checkpoint-" in path.name)


@pytest.mark.parametrize(
    "algorithm, left_by_older_trainer", [("dpo", True), ("kto", False), ("simpo", False)], ids=["dpo", "kto", "simpo"]
)
def test_run_killed_during_a_save_and_between_saves_resumes_to_the_same_losses(
    algorithm, left_by_older_trainer, demo_assets, small_data, tmp_path
):
    uninterrupted = tmp_path / "uninterrupted"
    run_script(f"{algorithm}.py", *kill_test_args(algorithm, demo_assets, small_data, uninterrupted), **THREADS)

    killed = tmp_path / "killed"
    args = kill_test_args(algorithm, demo_assets, small_data, killed, "--resume_from_checkpoint", "true")
    output_dir = killed / "outputs" / f"{algorithm}_test"
    run_until_killed(f"{algorithm}.py", args, f"save {2 * SAVE_STEPS}", tmp_path / "first.log")
    # Killed while writing checkpoint-8: its files so far, the last cut short, are under a staging name only.
    assert checkpoint_names(output_dir) == ["_staging-checkpoint-8", "checkpoint-4"]
    assert (output_dir / "_staging-checkpoint-8" / "checkpoint-8" / "optimizer.pt").is_file()

    run_until_killed(f"{algorithm}.py", args, f"step {2 * SAVE_STEPS + 2}", tmp_path / "second.log")
    assert "resuming from " + str(output_dir / "checkpoint-4") in (tmp_path / "second.log").read_text()
    assert checkpoint_names(output_dir) == ["checkpoint-4", "checkpoint-8"]

    if left_by_older_trainer:  # what transformers' own Trainer leaves when killed during a save: no trainer state yet
        (output_dir / "checkpoint-8" / "trainer_state.json").unlink()
    result = run_script(f"{algorithm}.py", *args, **THREADS)

    resumed_from = 4 if left_by_older_trainer else 8
    line = f"resuming from {output_dir / f'checkpoint-{resumed_from}'}"
    if left_by_older_trainer:
        line += "; checkpoint-8 is incomplete (no trainer_state.json), moved aside to _incomplete-checkpoint-8"
    assert line in result.stderr
    # save_total_limit 2 keeps the newest two; rotation leaves the checkpoint set aside alone.
    expected_names = ["checkpoint-12", "checkpoint-8"] + ["_incomplete-checkpoint-8"] * left_by_older_trainer
    assert checkpoint_names(output_dir) == sorted(expected_names)
    expected, resumed = train_losses(uninterrupted / "outputs" / f"{algorithm}_test"), train_losses(output_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # the checkpoint brings back the earlier history
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-4), f"step {step}"


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data, which is most of the file
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda c: (c / "adapter_model.safetensors").unlink(), "no weights"),
        (lambda c: (c / "optimizer.pt").unlink(), "no optimizer state"),
        (lambda c: (c / "scheduler.pt").unlink(), "no scheduler state"),
        (lambda c: (c / "rng_state.pth").rename(c / "rng_state_0.pth"), None),  # a multi-process run's RNG state
        (lambda c: (c / "rng_state.pth").unlink(), "no RNG state"),
        (lambda c: cut_short(c / "adapter_model.safetensors"), "adapter_model.safetensors is truncated or corrupt"),
        (lambda c: cut_short(c / "optimizer.pt"), "optimizer.pt is truncated or corrupt"),
        (lambda c: flip_a_byte(c / "scheduler.pt"), "scheduler.pt fails its CRC check"),
        (lambda c: cut_short(c / "trainer_state.json"), "trainer_state.json is truncated or corrupt"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_checkpoint_problem_names_the_missing_or_damaged_part(tmp_path, damage, problem):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-4")
    assert checkpoint_problem(checkpoint) is None
    damage(checkpoint)
    assert checkpoint_problem(checkpoint) == problem


def resume_args(output_dir: Path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(output_dir), resume_from_checkpoint=True, use_cpu=True)


def test_resume_takes_the_newest_complete_checkpoint_and_sets_the_others_aside(tmp_path, caplog):
    for step in (4, 8, 12):
        write_checkpoint(tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-12" / "optimizer.pt").unlink()
    cut_short(tmp_path / "checkpoint-8" / "rng_state.pth")
    (tmp_path / "_incomplete-checkpoint-12").mkdir()  # set aside by an earlier resume: kept, not overwritten
    write_checkpoint(tmp_path / "_staging-checkpoint-16" / "checkpoint-16")  # a save that never finished
    with caplog.at_level("INFO"):
        assert resume_checkpoint(resume_args(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "_incomplete-checkpoint-12",
        "_incomplete-checkpoint-12-2",
        "_incomplete-checkpoint-8",
        "checkpoint-4",
    ]
    assert caplog.messages == [
        f"resuming from {tmp_path / 'checkpoint-4'}; "
        "checkpoint-12 is incomplete (no optimizer state), moved aside to _incomplete-checkpoint-12-2; "
        "checkpoint-8 is incomplete (rng_state.pth is truncated or corrupt), moved aside to _incomplete-checkpoint-8"
    ]


def test_resume_with_no_complete_checkpoint_trains_from_scratch(tmp_path, caplog):
    write_checkpoint(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    with caplog.at_level("INFO"):
        assert resume_checkpoint(resume_args(tmp_path)) is None
        assert resume_checkpoint(resume_args(tmp_path / "never_written")) is None
    assert caplog.messages[0].startswith(f"no complete checkpoint in {tmp_path}: training from scratch; checkpoint-4")
    assert caplog.messages[1] == f"no complete checkpoint in {tmp_path / 'never_written'}: training from scratch"


def test_second_run_on_the_same_output_dir_refuses(demo_assets, tmp_path):
    args = training_args("dpo", demo_assets, tmp_path, 2)
    output_dir = args[args.index("--output_dir") + 1]
    lock_outputs(output_dir)  # as a running first run holds it
    result = run_script("dpo.py", *args, check=False)
    assert result.returncode == 2
    assert f"error: another run is writing to '{output_dir}'" in result.stderr
    assert not os.path.exists(output_dir)
