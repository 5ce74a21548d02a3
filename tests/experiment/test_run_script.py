"""run_script.bash's one-run mode on a fresh clone: a config that trains on the demo assets builds them first.

The clone is the script and the configs, with a `.venv/bin` whose `python` and `accelerate` record how they were
called: what is checked is what run_script.bash runs, in which order, not the runs themselves.
"""

import os
import shutil
import subprocess

import pytest

from tests.helpers import REPO

RECORDER = '#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "$(dirname "$0")/../../calls.log"\n'


@pytest.fixture
def fresh_clone(tmp_path):
    shutil.copy(REPO / "run_script.bash", tmp_path)
    shutil.copytree(REPO / "training_configs", tmp_path / "training_configs")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for name in ("python", "accelerate"):
        (tmp_path / ".venv" / "bin" / name).write_text(RECORDER)
        (tmp_path / ".venv" / "bin" / name).chmod(0o755)
    return tmp_path


def calls(clone, *args):
    env = {**os.environ, "ACCELERATE_CONFIG": "accelerate_configs/cpu.yaml"}
    subprocess.run(["bash", "run_script.bash", *args], cwd=clone, env=env, check=True, capture_output=True)
    return (clone / "calls.log").read_text().splitlines()


def test_demo_config_builds_the_demo_assets_first(fresh_clone):
    assert calls(fresh_clone, "dpo") == [
        "python -m experiment.demo",
        "accelerate launch --config_file accelerate_configs/cpu.yaml dpo.py --config training_configs/dpo_v1.yaml",
    ]


def test_config_of_a_real_model_builds_nothing(fresh_clone):
    config = "training_configs/qwen2.5-0.5b-instruct/simpo.yaml"
    assert calls(fresh_clone, "simpo", config, "--", "--max_steps", "2") == [
        f"accelerate launch --config_file accelerate_configs/cpu.yaml simpo.py --config {config} --max_steps 2"
    ]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="the refusal is for machines without GPUs")
@pytest.mark.parametrize("accelerate_config", ["deepspeed_zero3.yaml", "fsdp.yaml"])
def test_sharding_configs_are_refused_in_one_line_on_a_machine_without_gpus(fresh_clone, accelerate_config):
    shutil.copytree(REPO / "accelerate_configs", fresh_clone / "accelerate_configs")
    config = f"accelerate_configs/{accelerate_config}"
    result = subprocess.run(["bash", "run_script.bash", "dpo", "training_configs/dpo_v1.yaml", config], cwd=fresh_clone,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"run_script: {config} shards the model over GPUs (DeepSpeed or FSDP), and this machine has none; use "
        "accelerate_configs/cpu.yaml, or accelerate_configs/multi_gpu.yaml with --use_cpu true for several processes"
    ]
    assert not (fresh_clone / "calls.log").exists()  # neither the demo assets nor the launcher
