"""A killed or stopped run resumes to the same result, whatever it was doing; a diverging run stops before it saves
anything broken; two runs never write to the same place.

The kill tests run each script three times with SIGKILL in between: killed in the middle of writing a checkpoint,
resumed and killed between two saves, resumed to the end. The signal test sends SIGTERM to `run_script.bash` during a
step, and resumes. A test hook (`pause_hook/sitecustomize.py`, on the runs' PYTHONPATH only) holds the run at the
chosen moment until the test kills or signals it, so that the moment is hit every time however loaded the machine is.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from transformers import TrainingArguments

from prefopt.checkpoints import checkpoint_problem, resume_checkpoint
from prefopt.locking import lock_outputs
from tests.helpers import (
    REPO,
    accelerate_launch,
    assert_unlocked,
    error_lines,
    paused_env,
    read_jsonl,
    run_script,
    script_env,
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


@pytest.fixture(scope="module")
def uninterrupted_losses(demo_assets, small_data, tmp_path_factory):
    """The losses of an algorithm's run with `kill_test_args` left alone, trained once when a test first needs them."""
    losses = {}

    def of(algorithm: str) -> dict[int, float]:
        if algorithm not in losses:
            run_dir = tmp_path_factory.mktemp(f"{algorithm}_uninterrupted")
            run_script(f"{algorithm}.py", *kill_test_args(algorithm, demo_assets, small_data, run_dir), **THREADS)
            losses[algorithm] = train_losses(run_dir / "outputs" / f"{algorithm}_test")
        return losses[algorithm]

    return of


def start_paused(command: list, moment: str, log: Path) -> tuple[subprocess.Popen, int]:
    """Start `command` and wait until its run pauses at `moment` (see pause_hook): the process and the paused run's
    process id."""
    paused = log.with_suffix(".paused")
    env = script_env(**paused_env(moment, paused), **THREADS)
    with log.open("w") as output:
        process = subprocess.Popen(list(map(str, command)), cwd=REPO, env=env, stdout=output, stderr=output)
    deadline = time.monotonic() + 300
    while not paused.exists() or not paused.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{command[1]} did not pause at '{moment}':\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return process, int(paused.read_text())


def run_until_killed(script: str, args: list, moment: str, log: Path) -> None:
    """Run `script` until it pauses at `moment`, then SIGKILL it."""
    process, _ = start_paused([sys.executable, REPO / script, *args], moment, log)
    process.send_signal(signal.SIGKILL)
    process.wait()


def is_running(pid: int) -> bool:
    """Whether process `pid` runs (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def checkpoint_names(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.iterdir() if "checkpoint-" in path.name)


@pytest.mark.parametrize(
    "algorithm, left_by_older_trainer", [("dpo", True), ("kto", False), ("simpo", False)], ids=["dpo", "kto", "simpo"]
)
def test_run_killed_during_a_save_and_between_saves_resumes_to_the_same_losses(
    algorithm, left_by_older_trainer, demo_assets, small_data, uninterrupted_losses, tmp_path
):
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
    expected, resumed = uninterrupted_losses(algorithm), train_losses(output_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # the checkpoint brings back the earlier history
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-4), f"step {step}"


def stop_run_script(algorithm: str, signum: int, step: int, assets, data: Path, run_dir: Path) -> list:
    """Signal `bash run_script.bash` during `step` of a run of `kill_test_args` (merging, resuming if it can) and
    check that the run saved that step, published nothing and ended before the script did; the run's arguments."""
    # A config of its own: the shipped one names the demo assets, which run_script.bash would build in the repository.
    config = yaml.safe_load((REPO / "training_configs" / f"{algorithm}_v1.yaml").read_text())
    config.update(model_name_or_path=str(assets.model_dir), dataset_name=str(data))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    args = kill_test_args(algorithm, assets, data, run_dir, "--resume_from_checkpoint", "true", "--merge", "true")
    assert args[0] == "--config"
    command = ["bash", REPO / "run_script.bash", algorithm, run_dir / "config.yaml", "accelerate_configs/cpu.yaml"]
    process, training_pid = start_paused([*command, "--", *args[2:]], f"signal {step}", run_dir / "stopped.log")
    process.send_signal(signum)
    assert process.wait(timeout=300) == 128 + signum

    name = signal.Signals(signum).name
    output_dir, merged_dir = run_dir / "outputs" / f"{algorithm}_test", run_dir / "models" / f"{algorithm}_test"
    log = (run_dir / "stopped.log").read_text()
    assert f"run_script: {name}: passing it to the running command's processes and waiting for them to end" in log
    stopped = (
        f"WARNING prefopt.stopping: {name}: stopped after step {step} and saved {output_dir / f'checkpoint-{step}'}; "
        "to go on from there, run the same command with resume_from_checkpoint: true (or --resume_from_checkpoint true)"
    )
    assert log.count(stopped) == 1
    assert not is_running(training_pid)  # the script waited for it
    assert checkpoint_problem(output_dir / f"checkpoint-{step}") is None
    assert not (output_dir / "adapter_model.safetensors").exists() and not merged_dir.exists()
    assert_unlocked(output_dir, merged_dir)
    return args


def test_sigterm_to_run_script_saves_the_step_in_progress_and_the_run_resumes_to_the_same_losses(
    demo_assets, small_data, uninterrupted_losses, tmp_path
):
    """SIGTERM to `bash run_script.bash` reaches the training process, though accelerate's single-process launcher
    passes no signal on: the run saves the step it was in and stops, and goes on from there when resumed."""
    args = stop_run_script("dpo", signal.SIGTERM, SAVE_STEPS + 2, demo_assets, small_data, tmp_path)
    output_dir = tmp_path / "outputs" / "dpo_test"
    assert checkpoint_names(output_dir) == ["checkpoint-4", "checkpoint-6"]

    result = run_script("dpo.py", *args, **THREADS)
    assert f"resuming from {output_dir / 'checkpoint-6'}" in result.stderr
    resumed = train_losses(output_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, loss in uninterrupted_losses("dpo").items():
        assert resumed[step] == pytest.approx(loss, abs=1e-4), f"step {step}"
    assert (tmp_path / "models" / "dpo_test" / "merge_report.json").is_file()  # published once the run is whole


def test_sigint_to_run_script_does_the_same(demo_assets, small_data, tmp_path):
    stop_run_script("kto", signal.SIGINT, 3, demo_assets, small_data, tmp_path)
    assert checkpoint_names(tmp_path / "outputs" / "kto_test") == ["checkpoint-3"]


def test_first_non_finite_step_stops_every_process_before_it_is_logged_or_saved(demo_assets, tmp_path):
    """learning_rate 1e3 (measured, as 2 processes of 2 or 1 of 4 examples a step): the gradient norm of step 5 is the
    first number that is not finite (its loss, 1.318, still is), and every later loss is nan. Left alone, the run
    logged those losses as 0 and saved the NaN weights of step 6 as checkpoint-6."""
    args = training_args(
        "dpo", demo_assets, tmp_path, 8,
        "--learning_rate", "1e3",
        "--per_device_train_batch_size", "2",
        "--logging_steps", "1",
        "--save_steps", "2",
        "--eval_strategy", "no",
        "--use_cpu", "true",
    )  # fmt: skip
    result = accelerate_launch("dpo.py", *args, num_processes=2, check=False)

    assert error_lines(result.stderr) == [
        "error: training stopped at step 5: loss 1.318, gradient norm nan; a loss or gradient norm that is not a finite "
        "number usually comes from a learning rate too high (here 1000), fp16 overflow (train in bf16 or float32 "
        "instead) or bad data; the checkpoints saved before step 5 are kept, and nothing was merged"
    ]
    assert result.stderr.count("exitcode  : 2 ") == 2 and result.returncode == 1  # both processes, then the launcher
    output_dir, merged_dir = tmp_path / "outputs" / "dpo_test", tmp_path / "models" / "dpo_test"
    assert checkpoint_names(output_dir) == ["checkpoint-2", "checkpoint-4"]
    assert checkpoint_problem(output_dir / "checkpoint-4") is None
    assert all(
        weight.isfinite().all()
        for weight in load_file(output_dir / "checkpoint-4" / "adapter_model.safetensors").values()
    )
    assert sorted(train_losses(output_dir / "checkpoint-4")) == [1, 2, 3, 4]
    assert not (output_dir / "adapter_model.safetensors").exists() and not merged_dir.exists()
    assert not (tmp_path / "images").exists()
    assert_unlocked(output_dir, merged_dir)


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
