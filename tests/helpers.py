"""Plain helpers of the tests (no fixtures): running the scripts as a user does, writing and reading small files,
preference pairs relabelled and as conversations, synthetic runs, and the check that a merged model is base + adapter.
Fixtures live in `conftest.py`."""

import fcntl
import gzip
import json
import os
import re
import subprocess
import sys
import time
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


def paused_env(moment: str, paused: Path) -> dict[str, str]:
    """Environment variables for a run that pauses at `moment` and says so in the file `paused` (the test hook in
    `tests/core/pause_hook`, on the run's PYTHONPATH only)."""
    return {
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "core" / "pause_hook"), str(REPO)]),
        "PREFOPT_TEST_PAUSE_AT": moment,
        "PREFOPT_TEST_PAUSED": str(paused),
    }


def run_script(
    script: str, *args: str | Path, cwd: Path = REPO, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` in a subprocess, as a user would, with `env` added to `script_env`."""
    return run_command([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, check=check, **env)


def accelerate_launch(script: str, *args: str | Path, num_processes: int, check: bool = True, cwd: Path = REPO):
    """`accelerate launch` with the shipped multi-GPU config, as a user would run it on a GPU machine."""
    command = accelerate_command("multi_gpu.yaml", ["--num_processes", str(num_processes)], script, *args)
    return run_command(command, cwd=cwd, check=check)


def accelerate_command(config: str, launcher_flags: list[str], script: str, *args: str | Path) -> list[str]:
    """`accelerate launch --config_file accelerate_configs/<config> <launcher_flags> <script> <args>`, on any free
    port unless the flags name one: other runs may share this machine."""
    port = [] if "--main_process_port" in launcher_flags else ["--main_process_port", "0"]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / config), *port, *launcher_flags,
    ]  # fmt: skip
    return [*launch, str(REPO / script), *map(str, args)]


def run_command(command: list[str], cwd: Path = REPO, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run `command` with `script_env`; with `check`, a failure shows the end of its output."""
    result = subprocess.run(command, cwd=cwd, env=script_env(**env), capture_output=True, text=True)
    if check and result.returncode != 0:
        name = command_name(command)
        raise AssertionError(f"{name} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def error_lines(stderr: str) -> list[str]:
    """The lines a script's user errors printed; a progress bar may precede one on its line."""
    return re.findall(r"error: .*", stderr)


def run_with_mount(
    mount: str, directory: Path, command: list[str | Path], snapshot: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run `command` in a mount namespace of its own where `directory` is a small tmpfs (`mount` is "tmpfs:SIZE", e.g.
    "tmpfs:1m") or read-only ("ro"), as a full or read-only disk would be; then copy what `directory` holds to
    `snapshot`, since the mount ends with the namespace. Needs the right to mount (root, as in CI)."""
    mount_command = (
        'mount --bind "$D" "$D" && mount -o remount,bind,ro "$D"'
        if mount == "ro"
        else f'mount -t tmpfs -o size={mount.removeprefix("tmpfs:")} tmpfs "$D"'
    )
    script = (
        f'set -e; D="$1"; S="$2"; shift 2; {mount_command}; set +e; "$@"; status=$?; '
        '[ -z "$S" ] || cp -a "$D"/. "$S"/; exit $status'
    )
    directory.mkdir(parents=True, exist_ok=True)
    if snapshot:
        snapshot.mkdir(parents=True)
    shell = ["unshare", "--mount", "sh", "-c", script, "sh", directory, snapshot or ""]
    return run_command([*map(str, shell), *map(str, command)], check=False, **env)


def can_mount() -> bool:
    """Whether `run_with_mount` can mount here."""
    command = ["unshare", "--mount", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/mnt"]
    return subprocess.run(command, capture_output=True).returncode == 0


def command_name(command: list[str]) -> str:
    """The script or module a Python command runs."""
    return Path(command[1] if command[1] != "-m" else command[2]).name


def start_paused(command: list, moment: str, log: Path, **env: str) -> tuple[subprocess.Popen, int]:
    """Start `command` with the pause hook (`paused_env`) and wait until its run pauses at `moment`; its output goes
    to `log`. Returns the process and the paused process's id (the script's, under a launcher)."""
    paused = log.with_suffix(".paused")
    command = list(map(str, command))
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=script_env(**paused_env(moment, paused), **env), stdout=output, stderr=output
        )
    deadline = time.monotonic() + 300
    while not paused.exists() or not paused.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{command_name(command)} did not pause at '{moment}':\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return process, int(paused.read_text())


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


def write_json(path: Path, rows: list[dict]) -> Path:
    """`rows` as one JSON list, as LLaMA-Factory writes its data files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return path


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    """`rows` as gzip-compressed JSON Lines, as Anthropic publishes HH-RLHF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode()))
    return path


def in_format(format: str, pairs: list[dict]) -> list[dict]:
    """The demo's pairs (prompt, chosen and rejected strings) as rows of a format other projects write (docs/data.md):
    a row per pair, or two for LLaMA-Factory's KTO format, a desirable and an undesirable one. Alpaca rows rank three
    outputs, best first, in every other row."""
    rows = []
    for index, pair in enumerate(pairs):
        prompt, chosen, rejected = pair["prompt"], pair["chosen"].strip(), pair["rejected"].strip()
        if format == "sharegpt":
            conversation = [{"from": "system", "value": "You write film reviews."}, {"from": "human", "value": prompt}]
            rows.append(
                {
                    "conversations": conversation,
                    "chosen": {"from": "gpt", "value": chosen},
                    "rejected": {"from": "gpt", "value": rejected},
                }
            )
        elif format == "llamafactory_kto":
            rows += [
                {
                    "messages": [{"content": prompt, "role": "user"}, {"content": text, "role": "assistant"}],
                    "label": label,
                }
                for text, label in ((chosen, True), (rejected, False))
            ]
        elif format == "alpaca":
            outputs = [chosen, rejected] if index % 2 else [chosen, "It is a film.", rejected]
            rows.append({"instruction": "Continue the film review.", "input": prompt, "output": outputs})
        elif format == "openai":
            request = {"messages": [{"role": "user", "content": prompt}], "tools": [], "parallel_tool_calls": True}
            rows.append(
                {
                    "input": request,
                    "preferred_output": [{"role": "assistant", "content": chosen}],
                    "non_preferred_output": [{"role": "assistant", "content": rejected}],
                }
            )
        elif format == "hh":
            dialogue = f"\n\nHuman: Review a film for me.\n\nAssistant: Which one?\n\nHuman: {prompt}\n\nAssistant: "
            rows.append({"chosen": dialogue + chosen, "rejected": dialogue + rejected})
        else:
            raise ValueError(f"no such format: {format}")
    return rows


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


def assert_unlocked(*directories: Path) -> None:
    """No process holds the run lock beside each directory (`prefopt.locking`), so another run could start there."""
    for directory in directories:
        lock_path = directory.parent / f".{directory.name}.lock"
        assert lock_path.is_file(), f"no lock was taken for {directory}"
        with lock_path.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while a process holds it


def front_matter(card_path: Path) -> dict:
    """The YAML front matter of a model card (README.md), parsed."""
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", card_path.read_text(), re.DOTALL).group(1))
