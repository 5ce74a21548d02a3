"""Two nodes on one machine: `accelerate_configs/multi_node.yaml` as shipped, its address and port overridden on the
command line as on a cluster, two launchers (`--machine_rank 0` and `1`) with one CPU process each, over gloo.

One DPO run goes through what a cluster does to it: SIGTERM to one node only (the other processes stop with it), a
kill during a two-process save (a scheduler's SIGKILL after a grace period shorter than the save), and a resume to
the end with one checked merge. A copy of the run resumes with one process instead of two. Every leg is compared,
step by step, with one process training 8 examples a step from the start: 2 processes x 4 examples see the same
examples at each step (`test_distributed.py`), so the loss curve must not change whatever happened in between.
"""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from prefopt.checkpoints import checkpoint_problem
from tests.helpers import (
    REPO,
    accelerate_command,
    assert_merged_is_base_plus_adapter,
    paused_env,
    run_script,
    script_env,
    train_losses,
    training_args,
)

STEPS, SAVE_STEPS = 6, 2


def run_args(assets, run_dir: Path, per_device: int, *extra: str) -> list:
    return training_args(
        "dpo", assets, run_dir, STEPS,
        "--per_device_train_batch_size", str(per_device),
        "--logging_steps", "1",
        "--save_steps", str(SAVE_STEPS),
        "--eval_strategy", "no",
        "--use_cpu", "true",
        "--resume_from_checkpoint", "true",
        *extra,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nodes:
    """Two launchers of one run, started together; node 0 hosts the rendezvous."""

    def __init__(self, args: list, log_dir: Path, **env: str):
        port, self.logs = free_port(), [log_dir / "node0.log", log_dir / "node1.log"]
        env = script_env(**env)
        self.launchers = []
        for rank, log in enumerate(self.logs):
            node = ["--num_processes", "2", "--machine_rank", str(rank)]
            node += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
            with log.open("w") as output:
                command = accelerate_command("multi_node.yaml", node, "dpo.py", *args)
                self.launchers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=output))

    def wait(self) -> list[int]:
        return [launcher.wait(timeout=600) for launcher in self.launchers]

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text()

    def wait_until(self, paused: Path) -> None:
        deadline = time.monotonic() + 300
        while not paused.exists() or not paused.read_text():
            if any(launcher.poll() is not None for launcher in self.launchers) or time.monotonic() > deadline:
                for launcher in self.launchers:
                    launcher.kill()
                raise AssertionError(f"the run did not pause:\n{self.log(0)[-3000:]}")
            time.sleep(0.05)


def checkpoints(output_dir: Path) -> dict[str, list[str]]:
    """{checkpoint: its RNG state files}, for every checkpoint and staging directory."""
    return {
        path.name: sorted(rng.name for rng in path.rglob("rng_state*"))
        for path in sorted(output_dir.iterdir())
        if "checkpoint-" in path.name
    }


def assert_same_losses(output_dir: Path, expected: dict[int, float]) -> None:
    losses = train_losses(output_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in expected.items():
        # Measured: within 3e-7 (float32 sums over differently shaped batches)
        assert losses[step] == pytest.approx(loss, abs=1e-5), f"step {step}"


def test_two_nodes_stop_together_survive_a_kill_during_a_save_and_resume_with_one_or_two_processes(
    demo_assets, tmp_path
):
    single = tmp_path / "single"
    run_script("dpo.py", *run_args(demo_assets, single, 8, "--merge", "false"))
    expected = train_losses(single / "outputs" / "dpo_test")
    assert max(expected.values()) - min(expected.values()) > 1e-3, "the loss did not move: nothing to compare"

    run_dir = tmp_path / "two_nodes"
    output_dir, merged_dir = run_dir / "outputs" / "dpo_test", run_dir / "models" / "dpo_test"
    args = run_args(demo_assets, run_dir, 4)

    # SIGTERM to node 0's launcher only, while its process is in step 3: torch's launcher passes it on; node 1's
    # process, which had no signal, stops and saves with it.
    paused = tmp_path / "signal.paused"
    nodes = Nodes(args, tmp_path, **paused_env("signal 3", paused))
    nodes.wait_until(paused)
    nodes.launchers[0].send_signal(signal.SIGTERM)
    assert nodes.wait() == [1, 1]  # torch's launchers report the signal, and the exit status 143 of the processes
    stopped = (
        f"WARNING prefopt.stopping: SIGTERM: stopped after step 3 and saved {output_dir / 'checkpoint-3'}; to go on "
        "from there, run the same command with resume_from_checkpoint: true (or --resume_from_checkpoint true)"
    )
    assert (nodes.log(0).count(stopped), nodes.log(1).count(stopped)) == (1, 0)
    assert checkpoints(output_dir) == {
        "checkpoint-2": ["rng_state_0.pth", "rng_state_1.pth"],
        "checkpoint-3": ["rng_state_0.pth", "rng_state_1.pth"],
    }
    assert checkpoint_problem(output_dir / "checkpoint-3") is None
    assert not merged_dir.exists()

    # Resumed, then killed while saving checkpoint-4: SIGTERM to both launchers, which kill their processes a second
    # later, the main one paused halfway through the save, the other waiting for it.
    paused = tmp_path / "save.paused"
    nodes = Nodes(args, tmp_path, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="1", **paused_env(f"save {2 * SAVE_STEPS}", paused))
    nodes.wait_until(paused)
    for launcher in nodes.launchers:
        launcher.send_signal(signal.SIGTERM)
    assert nodes.wait() == [1, 1]
    assert f"resuming from {output_dir / 'checkpoint-3'}" in nodes.log(0)
    assert checkpoints(output_dir) == {
        "_staging-checkpoint-4": ["rng_state_1.pth"],  # node 1's process had written its part and was waiting
        "checkpoint-2": ["rng_state_0.pth", "rng_state_1.pth"],
        "checkpoint-3": ["rng_state_0.pth", "rng_state_1.pth"],
    }
    one_process = tmp_path / "one_process"
    shutil.copytree(run_dir, one_process, ignore=shutil.ignore_patterns("*.lock"))

    # Resumed to the end: checkpoints of both processes, one merge on node 0, checked against base + adapter.
    nodes = Nodes(args, tmp_path)
    assert nodes.wait() == [0, 0], nodes.log(0)[-3000:]
    assert f"resuming from {output_dir / 'checkpoint-3'}" in nodes.log(0)
    assert checkpoints(output_dir) == {
        "checkpoint-4": ["rng_state_0.pth", "rng_state_1.pth"],
        "checkpoint-6": ["rng_state_0.pth", "rng_state_1.pth"],
    }
    assert_same_losses(output_dir, expected)
    merge_lines = [f"merged {output_dir} into", "INFO prefopt.merge: merge check (float32, 8 examples of "]
    assert [nodes.log(0).count(line) for line in merge_lines] == [1, 1]
    assert [nodes.log(1).count(line) for line in merge_lines] == [0, 0]
    assert_merged_is_base_plus_adapter(merged_dir, demo_assets.model_dir, output_dir)

    # The copy taken after the kill, resumed by one process with 8 examples a step: the same examples at each step,
    # so the same losses. Its RNG state is not restored (transformers looks for rng_state.pth), which DPO does not use.
    result = run_script("dpo.py", *run_args(demo_assets, one_process, 8, "--merge", "false"))
    copy_dir = one_process / "outputs" / "dpo_test"
    assert f"resuming from {copy_dir / 'checkpoint-3'}" in result.stderr
    assert_same_losses(copy_dir, expected)
