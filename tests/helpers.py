"""Plain helpers of the tests (no fixtures): running the scripts as a user does, writing and reading small files,
preference pairs relabelled and as conversations, synthetic runs, and the check that a merged model is base + adapter.
Fixtures live in `conftest.py`."""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from experiment.gold_reward import gold_reward
from prefopt.launch import REPO_ROOT as REPO
from prefopt.run_logs import logged, read_log_history


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    data_dir: Path


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a script run by a test: the repository importable, tokenizers single-threaded."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **extra}


def run_script(
    script: str, *args: str | Path, cwd: Path = REPO, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` in a subprocess, as a user would, with `env` added to `script_env`."""
    return run_command([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, check=check, **env)


def accelerate_launch(script: str, *args: str | Path, num_processes: int, check: bool = True, cwd: Path = REPO):
    """`accelerate launch` with the shipped multi-GPU config, as a user would run it on a GPU machine."""
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / "multi_gpu.yaml"),
        "--num_processes", str(num_processes),
        "--main_process_port", "0",  # any free port: other runs may share this machine
    ]  # fmt: skip
    return run_command([*launch, str(REPO / script), *map(str, args)], cwd=cwd, check=check)


def run_command(command: list[str], cwd: Path = REPO, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run `command` with `script_env`; with `check`, a failure shows the end of its output."""
    result = subprocess.run(command, cwd=cwd, env=script_env(**env), capture_output=True, text=True)
    if check and result.returncode != 0:
        name = Path(command[1] if command[1] != "-m" else command[2]).name
        raise AssertionError(f"{name} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def training_args(algorithm: str, assets: DemoAssets, run_dir: Path, max_steps: int, *extra: str) -> list[str]:
    """Flags running the shipped `<algorithm>_v1.yaml` on `assets`, with every output under `run_dir`."""
    return [
        "--config", REPO / "training_configs" / f"{algorithm}_v1.yaml",
        "--model_name_or_path", assets.model_dir,
        "--dataset_name", assets.data_dir,
        "--output_dir", run_dir / "outputs" / f"{algorithm}_test",
        "--merged_model_dir", run_dir / "models" / f"{algorithm}_test",
        "--images_dir", run_dir / "images",
        "--max_steps", str(max_steps),
        *extra,
    ]  # fmt: skip


def train_losses(output_dir: Path) -> dict[int, float]:
    """{step: train loss} of a run, from its trainer_state.json."""
    return dict(zip(*logged(read_log_history(output_dir), "loss")))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_checkpoint(directory: Path) -> Path:
    """The files of a LoRA checkpoint, with small contents of the right formats."""
    directory.mkdir(parents=True)
    (directory / "trainer_state.json").write_text('{"global_step": 4}')
    save_file({"lora_A": torch.ones(4, 4)}, directory / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.arange(4096.0)}, directory / name)
    return directory


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def gold_labelled(row: dict) -> dict:
    """A preference pair with the completion of higher gold reward chosen: the demo's train labels without noise."""
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if gold_reward(prompt + chosen) >= gold_reward(prompt + rejected):
        return row
    return {**row, "chosen": rejected, "rejected": chosen}


def as_conversations(rows: list[dict]) -> Dataset:
    """Text preference pairs as conversations: the prompt is the user's message, each completion the assistant's."""
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }
            for row in rows
        ]
    )


HELD_OUT_METRICS = "held_out_metrics.json"  # beside the tiny reward model: its trainer's evaluation of held-out pairs


def write_run(run_dir: Path, steps_per_epoch: int = 10, **metrics: list[float]) -> Path:
    """A synthetic run: a trainer_state.json logging `metrics` (each a list, one value per logged step) every step."""
    num_steps = len(next(iter(metrics.values())))
    history = [
        {"step": step, "epoch": step / steps_per_epoch, **{key: values[step - 1] for key, values in metrics.items()}}
        for step in range(1, num_steps + 1)
    ]
    run_dir.mkdir(parents=True)
    (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return run_dir


def assert_merged_is_base_plus_adapter(merged_dir: Path, base_dir: Path, adapter_dir: Path) -> None:
    """The merged model's float32 logits equal the base's with the adapter applied, and differ from the base's."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    inputs = tokenizer(["The movie was", "I watched this film last night and it"], return_tensors="pt", padding=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir
    )
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
        adapted_logits = adapted(**inputs).logits
        with adapted.disable_adapter():
            base_logits = adapted(**inputs).logits
    # Float32 rounding, which grows with the logits: an adapter on tied embeddings can scale them past 100.
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-4, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-3, "training left the model unchanged"


def front_matter(card_path: Path) -> dict:
    """The YAML front matter of a model card (README.md), parsed."""
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", card_path.read_text(), re.DOTALL).group(1))
