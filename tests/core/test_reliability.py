"""A killed or stopped run resumes to the same result, whatever it was doing; a diverging run stops before it saves
anything broken; two runs never write to the same place.

The kill tests run each script three times with SIGKILL in between: killed in the middle of writing a checkpoint,
resumed and killed between two saves, resumed to the end. The signal test sends SIGTERM to `run_script.bash` during a
step, and resumes. A test hook (`pause_hook/sitecustomize.py`, on the runs' PYTHONPATH only) holds the run at the
chosen moment until the test kills or signals it, so that the moment is hit every time however loaded the machine is.
"""

import contextlib
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainingArguments
from trl import ModelConfig, ScriptArguments

from prefopt.checkpoints import checkpoint_problem, resume_checkpoint
from prefopt.errors import UserError, exit_on_user_error
from prefopt.locking import lock_outputs
from prefopt.run_record import RunRecord, run_settings
from tests.helpers import (
    REPO,
    accelerate_launch,
    assert_merged_is_base_plus_adapter,
    assert_unlocked,
    can_mount,
    error_lines,
    paused_env,
    read_jsonl,
    run_script,
    run_with_mount,
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


def run_until_killed(script: str, args: list, moment: str, log: Path) -> None:
    """Run `script` until it pauses at `moment`, then SIGKILL it."""
    process, _ = start_paused([sys.executable, REPO / script, *args], moment, log, **THREADS)
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
    log = run_dir / "stopped.log"
    process, training_pid = start_paused([*command, "--", *args[2:]], f"signal {step}", log, **THREADS)
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
    # The first process to exit with status 2 makes the launcher stop the other, which may not have exited yet.
    assert result.stderr.count("exitcode  : 2 ") >= 1 and result.returncode == 1
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


@pytest.mark.parametrize("ending", ["return", "user error", "exit on a signal"])
def test_a_script_ends_its_process_group_however_it_ends(ending, tmp_path):
    """Left to the interpreter's shutdown, gloo sometimes aborted one of the two processes of the test above (SIGABRT
    in 1 of 21 runs on a loaded 2-core machine), and the launcher reported the abort instead of exit status 2."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        exits = pytest.raises(SystemExit) if ending != "return" else contextlib.nullcontext()
        with exits, exit_on_user_error():
            if ending == "user error":
                raise UserError("a user error")
            if ending == "exit on a signal":
                raise SystemExit(128 + signal.SIGTERM)
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


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


def resume_configs(output_dir: Path) -> tuple:
    """The configs of a run in `output_dir` with resume_from_checkpoint: true."""
    return (
        ScriptArguments(dataset_name="data.jsonl"),
        TrainingArguments(output_dir=str(output_dir), resume_from_checkpoint=True, use_cpu=True),
        ModelConfig(model_name_or_path="models/base", use_peft=True),
    )


def record_run(output_dir: Path, *checkpoints: Path, **settings) -> RunRecord:
    """A run of `resume_configs` (with `settings` changed) recorded in `output_dir` and in the checkpoints it saved."""
    run = RunRecord.new({**run_settings(*resume_configs(output_dir)), **settings})
    for directory in (output_dir, *checkpoints):
        run.write(directory)
    return run


def test_resume_takes_the_runs_newest_complete_checkpoint_and_sets_its_others_aside(tmp_path, caplog):
    checkpoints = [write_checkpoint(tmp_path / f"checkpoint-{step}") for step in (4, 8, 12)]
    run = record_run(tmp_path, *checkpoints)
    (tmp_path / "checkpoint-12" / "optimizer.pt").unlink()
    cut_short(tmp_path / "checkpoint-8" / "rng_state.pth")
    (tmp_path / "_incomplete-checkpoint-12").mkdir()  # set aside by an earlier resume: kept, not overwritten
    write_checkpoint(tmp_path / "_staging-checkpoint-16" / "checkpoint-16")  # a save that never finished
    record_run(tmp_path / "elsewhere", write_checkpoint(tmp_path / "checkpoint-20"))  # complete, another run's
    write_checkpoint(tmp_path / "checkpoint-24")  # complete, of no recorded run
    with caplog.at_level("INFO"):
        assert resume_checkpoint(*resume_configs(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert sorted(path.name for path in tmp_path.iterdir() if "checkpoint" in path.name) == [
        "_incomplete-checkpoint-12",
        "_incomplete-checkpoint-12-2",
        "_incomplete-checkpoint-8",
        "checkpoint-20",
        "checkpoint-24",
        "checkpoint-4",
    ]
    assert caplog.messages == [
        f"resuming from {tmp_path / 'checkpoint-4'}; "
        "checkpoint-12 is incomplete (no optimizer state), moved aside to _incomplete-checkpoint-12-2; "
        "checkpoint-8 is incomplete (rng_state.pth is truncated or corrupt), moved aside to _incomplete-checkpoint-8; "
        "checkpoint-20 saved by another run, not resumed; "
        "checkpoint-24 record no run (saved by an older version or another program), not resumed: name one in "
        "resume_from_checkpoint to resume from it"
    ]
    assert RunRecord.read(tmp_path) == run  # the run continues under its id


def test_resume_with_no_complete_checkpoint_of_the_run_starts_a_new_run(tmp_path, caplog):
    old_run = record_run(tmp_path, write_checkpoint(tmp_path / "checkpoint-4"))
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    with caplog.at_level("INFO"):
        assert resume_checkpoint(*resume_configs(tmp_path)) is None
        assert resume_checkpoint(*resume_configs(tmp_path / "never_written")) is None
    assert caplog.messages[0].startswith(
        f"no complete checkpoint of this run in {tmp_path}: training from scratch; checkpoint-4 is incomplete"
    )
    assert (
        caplog.messages[1]
        == f"no complete checkpoint of this run in {tmp_path / 'never_written'}: training from scratch"
    )
    assert RunRecord.read(tmp_path).run_id != old_run.run_id
    assert RunRecord.read(tmp_path / "never_written").settings == run_settings(*resume_configs(tmp_path / "x"))


@pytest.mark.parametrize(
    "changed, refusal",
    [
        (
            {"lora_r": 8},
            "was trained with lora_r 8 (config: 16); set them back to resume it, or start a new run (without "
            "resume_from_checkpoint, or in another output_dir)",
        ),
        (
            {"learning_rate": 0.001, "seed": 1},
            "was saved by a run with learning_rate 0.001 (config: 5e-05); seed 1 (config: 42); set them back to "
            "continue that run, name the checkpoint (resume_from_checkpoint: {checkpoint}) to continue it with these "
            "settings, or start a new run (without resume_from_checkpoint, or in another output_dir)",
        ),
    ],
    ids=["lora shape", "training settings"],
)
def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, changed, refusal):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-4")
    record_run(tmp_path, checkpoint, **changed)
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(UserError) as error:
        resume_checkpoint(*resume_configs(tmp_path))
    assert str(error.value) == f"resume_from_checkpoint: {checkpoint} " + refusal.format(checkpoint=checkpoint)
    assert (tmp_path / "run.json").read_text() == before


@pytest.mark.parametrize("through_a_symlink", [False, True], ids=["same path", "through a symlink"])
def test_second_run_on_the_same_output_dir_refuses(demo_assets, tmp_path, through_a_symlink):
    args = training_args("dpo", demo_assets, tmp_path, 2)
    output_dir = Path(args[args.index("--output_dir") + 1])
    lock_outputs(output_dir)  # as a running first run holds it
    if through_a_symlink:  # the second run reaches the same directory through a symlink
        (tmp_path / "link").symlink_to(output_dir, target_is_directory=True)
        args[args.index("--output_dir") + 1] = tmp_path / "link"
    result = run_script("dpo.py", *args, check=False)
    assert result.returncode == 2
    assert f"error: another run is writing to '{args[args.index('--output_dir') + 1]}'" in result.stderr
    assert not output_dir.exists()


def short_run_args(run_dir: Path, assets, data, *extra) -> list:
    """4 steps of DPO, a checkpoint every 2, with every output under `run_dir`."""
    return training_args(
        "dpo", assets, run_dir, 4,
        "--dataset_name", data,
        "--per_device_train_batch_size", "4",
        "--logging_steps", "1",
        "--save_steps", "2",
        "--eval_strategy", "no",
        *extra,
    )  # fmt: skip


def test_resume_continues_its_own_run_not_another_ones_in_the_same_output_dir(demo_assets, small_data, tmp_path):
    """Run A finishes with checkpoint-2 and -4; run B, in the same output_dir with another learning rate, saves
    checkpoint-2 (replacing A's) and is killed; resumed, B continues from its own checkpoint-2, not A's newer -4."""
    run_a = short_run_args(tmp_path, demo_assets, small_data, "--merge", "false")
    run_script("dpo.py", *run_a, **THREADS)
    output_dir = tmp_path / "outputs" / "dpo_test"
    adapter_a = load_file(output_dir / "adapter_model.safetensors")

    run_b = short_run_args(tmp_path, demo_assets, small_data, "--learning_rate", "1e-3")
    run_until_killed("dpo.py", run_b, "step 4", tmp_path / "b.log")
    assert checkpoint_names(output_dir) == ["checkpoint-2", "checkpoint-4"]  # B's checkpoint-2, A's checkpoint-4
    result = run_script("dpo.py", *run_b, "--resume_from_checkpoint", "true", **THREADS)
    assert (
        f"resuming from {output_dir / 'checkpoint-2'}; checkpoint-4 saved by another run, not resumed" in result.stderr
    )
    assert sorted(train_losses(output_dir)) == [1, 2, 3, 4]
    adapter_b = load_file(output_dir / "adapter_model.safetensors")
    assert adapter_b.keys() == adapter_a.keys()
    assert all(not torch.equal(adapter_b[name], adapter_a[name]) for name in adapter_a if "lora_B" in name)
    merged_dir = tmp_path / "models" / "dpo_test"
    assert_merged_is_base_plus_adapter(merged_dir, demo_assets.model_dir, output_dir)
    assert RunRecord.read(output_dir / "checkpoint-4") == RunRecord.read(output_dir)  # B's own now

    # Resuming B with another LoRA shape is refused in one line, before anything is written.
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    changed = ("--resume_from_checkpoint", "true", "--lora_r", "8", "--overwrite_merged", "true")
    result = run_script("dpo.py", *run_b, *changed, check=False)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: resume_from_checkpoint: {output_dir / 'checkpoint-4'} was trained with lora_r 16 (config: 8); set "
        "them back to resume it, or start a new run (without resume_from_checkpoint, or in another output_dir)"
    ]
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs the right to mount a file system (root)")


def run_on_small_disk(size: str, assets, data, tmp_path: Path, **env: str) -> tuple:
    """`short_run_args` without the merge, output_dir on a tmpfs of `size`: the result, output_dir, and what
    output_dir held when the run ended."""
    disk, snapshot = tmp_path / "disk", tmp_path / "snapshot"
    output_dir = disk / "outputs" / "dpo_test"
    args = short_run_args(tmp_path, assets, data, "--merge", "false", "--output_dir", output_dir)
    result = run_with_mount(size, disk, [sys.executable, REPO / "dpo.py", *args], snapshot, **THREADS, **env)
    return result, output_dir, snapshot / "outputs" / "dpo_test"


def assert_one_full_disk_line(result, before_free: str, after_free: str) -> None:
    """The run exited with status 2 and one error line: `before_free`, the space left ("0.0 MB free"), `after_free`."""
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1, errors
    assert re.fullmatch(re.escape(before_free) + r"\d\.\d MB free" + re.escape(after_free), errors[0]), errors[0]


@needs_mount
def test_a_full_disk_during_a_save_stops_the_run_in_one_line_keeping_the_earlier_checkpoints(
    demo_assets, small_data, tmp_path
):
    hook = paused_env("full 4", tmp_path / "paused")  # fills the disk as checkpoint-4's save begins, without pausing
    result, output_dir, saved = run_on_small_disk("tmpfs:8m", demo_assets, small_data, tmp_path, **hook)
    assert_one_full_disk_line(
        result,
        f"error: checkpoint-4 could not be saved: no space left on device in '{output_dir}' (a checkpoint needs about "
        "0.8 MB, ",
        "); the earlier checkpoints are whole: free space, then resume with resume_from_checkpoint: true",
    )
    assert checkpoint_names(saved) == ["checkpoint-2"]  # no staging directory left, nothing of checkpoint-4
    assert checkpoint_problem(saved / "checkpoint-2") is None
    assert not (saved / "adapter_model.safetensors").exists()


@needs_mount
def test_a_full_disk_at_the_final_save_stops_the_run_in_one_line_and_a_resume_saves_the_model(
    demo_assets, small_data, tmp_path
):
    hook = paused_env("full model", tmp_path / "paused")  # fills the disk as the trained model's save begins
    result, output_dir, saved = run_on_small_disk("tmpfs:8m", demo_assets, small_data, tmp_path, **hook)
    assert_one_full_disk_line(
        result,
        f"error: the trained model could not be saved: no space left on device in '{output_dir}' (it needs about "
        "0.3 MB, ",
        "); checkpoint-4, of the last step, is whole: free space, then run the same command with "
        "resume_from_checkpoint: true to save the model from it",
    )
    assert sorted(path.name for path in saved.iterdir()) == ["checkpoint-2", "checkpoint-4", "run.json"]
    assert checkpoint_problem(saved / "checkpoint-4") is None

    shutil.copytree(saved, output_dir)  # the disk freed
    args = short_run_args(
        tmp_path, demo_assets, small_data, "--output_dir", output_dir, "--resume_from_checkpoint", "true"
    )
    result = run_script("dpo.py", *args, **THREADS)
    assert f"resuming from {output_dir / 'checkpoint-4'}" in result.stderr
    adapter, last = (
        load_file(directory / "adapter_model.safetensors") for directory in (output_dir, saved / "checkpoint-4")
    )
    assert adapter.keys() == last.keys() and all(torch.equal(adapter[name], last[name]) for name in last)
    assert (tmp_path / "models" / "dpo_test" / "merge_report.json").is_file()


@needs_mount
def test_an_output_dir_without_room_for_the_checkpoints_is_refused_before_the_first_step(
    demo_assets, small_data, tmp_path
):
    result, output_dir, saved = run_on_small_disk("tmpfs:1m", demo_assets, small_data, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    # 69,632 LoRA weights in float32 (0.28 MB): checkpoint-2 and -4 of three copies each, and the adapter.
    assert error_lines(result.stderr) == [
        f"error: output_dir '{output_dir}': 1.0 MB free on its file system, and the run needs about 1.9 MB (2 "
        "checkpoint(s) of 0.8 MB and the adapter of 0.3 MB); free space, lower save_total_limit, or choose another "
        "output_dir"
    ]
    assert "Running training" not in result.stderr
    assert sorted(path.name for path in saved.iterdir()) == ["run.json"]
