"""A killed run resumes to the same result; two runs never write to the same place."""

import os
import signal
import subprocess
import sys
import time

import pytest

from prefopt.locking import lock_outputs
from tests.conftest import REPO, run_script, train_losses, training_args

RESUME_STEPS = 30


def test_killed_run_resumes_with_the_same_loss_curve(demo_assets, tmp_path):
    flags = ["--logging_steps", "1", "--save_steps", "10", "--eval_strategy", "no", "--merge", "false"]
    uninterrupted = tmp_path / "uninterrupted"
    run_script("dpo.py", *training_args("dpo", demo_assets, uninterrupted, RESUME_STEPS, *flags))

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        str(REPO / "dpo.py"),
        *map(str, training_args("dpo", demo_assets, killed, RESUME_STEPS, *flags)),
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = killed / "outputs" / "dpo_test" / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    output_dir = killed / "outputs" / "dpo_test"
    assert not (output_dir / "adapter_model.safetensors").exists(), "the run finished before it was killed"

    run_script(
        "dpo.py", *training_args("dpo", demo_assets, killed, RESUME_STEPS, *flags, "--resume_from_checkpoint", "true")
    )
    expected, resumed = train_losses(uninterrupted / "outputs" / "dpo_test"), train_losses(output_dir)
    assert sorted(resumed) == list(range(1, RESUME_STEPS + 1))  # the checkpoint brings back the earlier history
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-4), f"step {step}"


def test_second_run_on_the_same_output_dir_refuses(demo_assets, tmp_path):
    args = training_args("dpo", demo_assets, tmp_path, 2)
    output_dir = args[args.index("--output_dir") + 1]
    lock_outputs(output_dir)  # as a running first run holds it
    result = run_script("dpo.py", *args, check=False)
    assert result.returncode == 2
    assert f"error: another run is writing to '{output_dir}'" in result.stderr
    assert not os.path.exists(output_dir)
