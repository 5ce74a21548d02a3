"""The catalogue of bad inputs: each ends in one line naming the problem and how to fix it, exit status 2, and nothing
written (no output_dir, no merged model, no plot, no other file).

A case is a config, command-line flags and input files, run through a script's real `__main__` in this process
(`runpy`), which costs a fraction of a second where a subprocess costs seconds of imports; one test checks that a
subprocess ends the same. Subprocesses run where the process matters: the hub settings are read when the libraries
are imported, and `accelerate launch` starts processes of its own.
"""

import contextlib
import hashlib
import io
import json
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from tests.helpers import REPO, accelerate_command, accelerate_launch, error_lines, run_command, script_env

PAIRS = [{"prompt": f"Review {i}:", "chosen": " great.", "rejected": " awful."} for i in range(40)]
MESSAGES = [{"role": "user", "content": "Review a film."}]
REPLY = [{"role": "assistant", "content": "A great film."}]
UNPAIRED = [{"prompt": "Review:", "completion": " great.", "label": True}]
CHAT = {"prompt": MESSAGES, "chosen": REPLY, "rejected": [{"role": "assistant", "content": "An awful film."}]}
SHAREGPT = {
    "conversations": [{"from": "human", "value": "Review a film."}],
    "chosen": {"from": "gpt", "value": "A great film."},
    "rejected": {"from": "gpt", "value": "An awful film."},
}
ALPACA = {"instruction": "Translate to French.", "input": "Good morning", "output": ["Bonjour", "Bonsoir"]}
LONG = {"prompt": "very long " * 40, "chosen": " b", "rejected": " c"}  # 82 tokens with the demo tokenizer


@dataclass(frozen=True)
class Case:
    message: str  # what follows "error: "
    config: dict | str = field(default_factory=dict)  # keys over BASE_CONFIG (None removes one), or the YAML itself
    flags: tuple[str, ...] = ()  # after --config config.yaml, unless they hold a --config of their own
    # path -> its text, or a function writing it given the path and the demo model's directory
    files: dict[str, str | Callable[[Path, Path], None]] = field(default_factory=dict)
    script: str = "dpo"
    env: dict[str, str] = field(default_factory=dict)  # e.g. what accelerate's launcher sets in each process


def base_config(model_dir: Path) -> dict:
    """A run that would train on `data.jsonl` if nothing were wrong, writing only under its directory."""
    return {
        "model_name_or_path": str(model_dir),
        "dataset_name": "data.jsonl",
        "output_dir": "outputs/run",
        "merged_model_dir": "models/run",
        "images_dir": "images",
        "eval_strategy": "no",
        "max_length": 64,
        "max_steps": 1,
        "bf16": False,
        "report_to": "none",
    }


def jsonl(rows: list) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def latin1(text: str) -> Callable[[Path, Path], None]:
    """A file writer: `text` in Latin-1, where é is one byte that UTF-8 cannot decode."""
    return lambda path, model_dir: path.write_bytes(text.encode("latin-1"))


def truncated_parquet(path: Path, model_dir: Path) -> None:
    Dataset.from_list(PAIRS).to_parquet(str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def model_without_chat_template(directory: Path, model_dir: Path) -> None:
    directory.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).symlink_to(model_dir / name)


def copy_of_model(directory: Path, model_dir: Path) -> None:
    shutil.copytree(model_dir, directory)


def model_cut_short(directory: Path, model_dir: Path) -> None:
    copy_of_model(directory, model_dir)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def model_of_unknown_type(directory: Path, model_dir: Path) -> None:
    copy_of_model(directory, model_dir)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "llama_next"}))


def tokenizer_without_eos(directory: Path, model_dir: Path) -> None:
    copy_of_model(directory, model_dir)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["eos_token"], config["pad_token"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def symlink_to(target: str) -> Callable[[Path, Path], None]:
    return lambda path, model_dir: path.symlink_to(target, target_is_directory=True)


def incomplete_checkpoint(directory: Path, model_dir: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "trainer_state.json").write_text("{}")


CONFIG_CASES = {
    "typo in a key": Case(
        "config.yaml: unknown key 'learnig_rate'; did you mean 'learning_rate'?", {"learnig_rate": 1e-4}
    ),
    "another algorithm's key": Case("config.yaml: unknown key 'simpo_gamma'", {"simpo_gamma": 0.5}, script="kto"),
    "not a number": Case(
        "config.yaml: argument --learning_rate/--learning-rate: invalid float value: 'fast'", {"learning_rate": "fast"}
    ),
    "negative learning rate": Case("config.yaml: learning_rate must be > 0, got -0.0001", {"learning_rate": -1e-4}),
    "beta of zero": Case("config.yaml: beta must be > 0, got 0.0", {"beta": 0.0}),
    "LoRA rank of zero": Case("config.yaml: lora_r must be >= 1, got 0", {"lora_r": 0}),
    "batch of zero": Case(
        "config.yaml: per_device_train_batch_size must be >= 1, got 0", {"per_device_train_batch_size": 0}
    ),
    "unknown merged_dtype": Case(
        "config.yaml: merged_dtype must be one of float32, bfloat16, float16, got 'fp16'", {"merged_dtype": "fp16"}
    ),
    "bf16 on a CPU": Case(
        "config.yaml: Your setup doesn't support bf16/gpu. You need to assign use_cpu if you want to train the model "
        "on CPU.",
        {"bf16": True},
    ),
    "not YAML": Case(
        "config.yaml: not valid YAML (while parsing a flow sequence in \"config.yaml\", line 1, column 16 expected ',' "
        "or ']', but got '<stream end>' in \"config.yaml\", line 2, column 1)",
        "learning_rate: [1e-4\n",
    ),
    "YAML that is not a mapping": Case(
        "config.yaml: Config file config.yaml must contain a YAML mapping.", "- a\n- b\n"
    ),
    "token in a config": Case(
        "config.yaml: 'hub_token' does not belong in a config file; log in with `hf auth login` or set the HF_TOKEN "
        "environment variable",
        {"hub_token": "hf_secret"},
    ),
    "template in the config": Case(
        "config.yaml: 'chat_template' is not a key; a template in the config is not read here: save it to a .jinja "
        "file and set chat_template_path to it",
        {"chat_template": "{{ messages }}"},
    ),
    "logging_dir": Case(
        "config.yaml: 'logging_dir' is not a key; transformers 5 removed it: set the TENSORBOARD_LOGGING_DIR "
        "environment variable instead",
        {"logging_dir": "logs"},
    ),
    "old and new name of a key": Case(
        "config.yaml: 'warmup_ratio' is the old name of 'warmup_steps', and both are set; keep one",
        {"warmup_ratio": 0.1, "warmup_steps": 100},
    ),
    "dataset_mixer that is not a mapping": Case(
        "config.yaml: dataset_mixer [org/a, org/b]: expected {id: fraction, ...}", {"dataset_mixer": ["org/a", "org/b"]}
    ),
    "streaming a data set": Case(
        "config.yaml: dataset_streaming is not supported: every row is checked before training, and KTO's examples "
        "are shuffled, which needs the whole data set; remove it",
        {"dataset_streaming": True},
    ),
    "streaming TRL's mixture": Case(
        "config.yaml: streaming is not supported: every row is checked before training, and KTO's examples are "
        "shuffled, which needs the whole data set; remove it",
        {"streaming": True, "datasets": [{"path": "data.jsonl"}]},
    ),
    "both kinds of mixture": Case(
        "config.yaml: datasets (TRL's mixture) and dataset_mixture (alignment-handbook's) are both set; keep one",
        {"datasets": [{"path": "data.jsonl"}], "dataset_mixture": {"datasets": [{"id": "data.jsonl"}]}},
    ),
    "test_split_size without a mixture": Case(
        "config.yaml: test_split_size holds out part of a datasets mixture, and none is set; for dataset_name, set "
        "test_size",
        {"test_split_size": 0.1},
    ),
    "test_size below zero": Case(
        "config.yaml: test_size must be a fraction or a number of rows above 0, got -0.1", {"test_size": -0.1}
    ),
    "unknown dataset_format": Case(
        "config.yaml: dataset_format must be one of auto, trl, sharegpt, llamafactory_kto, alpaca, openai, hh, got "
        "'sharegpt_v2'",
        {"dataset_format": "sharegpt_v2"},
    ),
    "unknown key in TRL's mixture": Case(
        "config.yaml: datasets[0]: unknown key 'fractin' (keys: path, name, data_dir, data_files, split, columns, "
        "fraction)",
        {"datasets": [{"path": "data.jsonl", "fractin": 0.5}]},
    ),
    "unknown key in the handbook's mixture": Case(
        "config.yaml: dataset_mixture.datasets[0]: unknown key 'weigth' (keys: id, config, split, columns, weight)",
        {"dataset_mixture": {"datasets": [{"id": "data.jsonl", "weigth": 0.5}]}},
    ),
    "handbook weight above one": Case(
        "config.yaml: dataset_mixture.datasets[0]: weight must be a fraction of the data set's rows in (0, 1], got 2",
        {"dataset_mixture": {"datasets": [{"id": "data.jsonl", "weight": 2}]}},
    ),
    "handbook mixture without data sets": Case(
        "config.yaml: dataset_mixture: 'datasets' must be a list of data sets, each {id: ..., weight: ...}",
        {"dataset_mixture": {"seed": 1}},
    ),
    "handbook data set without an id": Case(
        "config.yaml: dataset_mixture.datasets[0]: expected {id: ..., config: ..., split: ..., columns: [...], "
        "weight: ...}",
        {"dataset_mixture": {"datasets": [{"path": "data.jsonl"}]}},
    ),
    "unknown key of the handbook's mixture": Case(
        "config.yaml: dataset_mixture: unknown key 'test_size' (keys: datasets, seed, test_split_size)",
        {"dataset_mixture": {"datasets": [{"id": "data.jsonl"}], "test_size": 0.1}},
    ),
    "handbook test_split_size of zero": Case(
        "config.yaml: dataset_mixture: test_split_size must be a fraction or a number of rows above 0, got 0",
        {"dataset_mixture": {"datasets": [{"id": "data.jsonl"}], "test_split_size": 0}},
    ),
    "TRL's data set without a path": Case(
        "config.yaml: datasets[0]: no path (keys: path, name, data_dir, data_files, split, columns, fraction)",
        {"datasets": [{"split": "train"}]},
    ),
    "negative TRL fractions": Case(
        "datasets: fractions must be 0 or more, and one above 0; got [-1, 2]",
        {"datasets": [{"path": "data.jsonl", "fraction": -1}, {"path": "data.jsonl", "fraction": 2}]},
    ),
    "dataset_splits without a train split": Case(
        "config.yaml: dataset_splits [dev, test]: expected one train split and at most one test split; set "
        "dataset_train_split and dataset_test_split instead",
        {"dataset_splits": ["dev", "test"]},
    ),
    "SimPO with another loss": Case(
        "simpo.py trains SimPO: loss_type must be 'simpo', got 'sigmoid'", {"loss_type": "sigmoid"}, script="simpo"
    ),
    "tracker not installed": Case(
        "report_to: wandb is not installed; install it (pip install wandb) or remove it from report_to "
        "(docs/configuration.md, Trackers)",
        {"report_to": "wandb"},
    ),
    "tensorboard not installed": Case(
        "report_to: tensorboard is not installed; install it (pip install tensorboard) or remove it from report_to "
        "(docs/configuration.md, Trackers)",
        {"report_to": ["tensorboard"]},
    ),
    "unknown tracker": Case(
        "report_to: unknown tracker 'wandbb' (transformers knows azure_ml, comet_ml, mlflow, neptune, tensorboard, "
        "trackio, wandb, codecarbon, clearml, dagshub, flyte, dvclive, swanlab, kubeflow)",
        {"report_to": "wandbb"},
    ),
    "resuming checkpoints saved without optimizer": Case(
        "resume_from_checkpoint: checkpoints saved with save_only_model: true hold no optimizer or RNG state to "
        "resume from; set save_only_model: false",
        {"save_only_model": True, "resume_from_checkpoint": True},
    ),
}

COMMAND_LINE_CASES = {
    "typo in a flag": Case("command line: unknown key 'bta'; did you mean 'beta'?", flags=("--bta", "0.3")),
    "not an integer": Case(
        "config.yaml: argument --max_steps/--max-steps: invalid int value: 'many'", flags=("--max_steps", "many")
    ),
    "dataset_mixture that is not a mapping": Case(
        "dataset_mixture must be a mapping, e.g. '{\"prompt\": \"question\"}', got 'a.jsonl'",
        flags=("--dataset_mixture", "a.jsonl"),
    ),
    "dataset_columns that is not a mapping": Case(
        "dataset_columns must be a mapping, e.g. '{\"prompt\": \"question\"}', got 'question'",
        flags=("--dataset_columns", "question"),
    ),
    "config file not found": Case("config file not found: nowhere.yaml", flags=("--config", "nowhere.yaml")),
    "--config without a path": Case("--config needs a path to a YAML file", flags=("--config",)),
}

PATH_CASES = {
    "no model directory": Case(
        "model_name_or_path: no model at 'no/such/model' (expected a directory holding config.json)",
        {"model_name_or_path": "no/such/model"},
    ),
    "model directory without config.json": Case(
        "model_name_or_path: no model at 'model' (expected a directory holding config.json)",
        {"model_name_or_path": "model"},
        files={"model/tokenizer.json": "{}"},
    ),
    "model without safetensors weights": Case(
        "model_name_or_path: no .safetensors weights in 'model'; weights are read as safetensors only, never "
        "unpickled: convert the model once with transformers' from_pretrained and save_pretrained",
        {"model_name_or_path": "model"},
        files={"model/config.json": "{}", "model/pytorch_model.bin": "pickled"},
    ),
    "no model given": Case(
        "model_name_or_path is required (a local model directory or a hub id)", {"model_name_or_path": None}
    ),
    "no data file": Case("dataset_name: no such file or directory: 'missing.jsonl'", {"dataset_name": "missing.jsonl"}),
    "no data given": Case(
        "dataset_name is required (a hub id, a data directory or a .jsonl/.json/.parquet/.csv file), or a mixture: "
        "datasets (TRL's) or dataset_mixture (alignment-handbook's)",
        {"dataset_name": None},
    ),
    "no file of a mixture": Case(
        "datasets[1].path: no such file or directory: 'missing.jsonl'",
        {"datasets": [{"path": "data.jsonl"}, {"path": "missing.jsonl"}]},
    ),
    "merged model exists": Case(
        "merged_model_dir 'models/run' already exists; set overwrite_merged: true (or --overwrite_merged) to replace "
        "it, or choose another merged_model_dir",
        files={"models/run/config.json": "{}"},
    ),
    "checkpoint to resume from does not exist": Case(
        "resume_from_checkpoint: cannot resume from 'outputs/run/checkpoint-8' (no such directory); name a complete "
        "checkpoint, or set resume_from_checkpoint: true to resume from the newest complete one in output_dir",
        flags=("--resume_from_checkpoint", "outputs/run/checkpoint-8"),
    ),
    "checkpoint to resume from is incomplete": Case(
        "resume_from_checkpoint: cannot resume from 'old/checkpoint-8' (no weights); name a complete checkpoint, or "
        "set resume_from_checkpoint: true to resume from the newest complete one in output_dir",
        flags=("--resume_from_checkpoint", "old/checkpoint-8"),
        files={"old/checkpoint-8": incomplete_checkpoint},
    ),
    "output_dir is the base model": Case(
        "output_dir 'base' is model_name_or_path 'base', and the run would write into it; choose an output_dir "
        "outside the run's inputs",
        {"model_name_or_path": "base", "output_dir": "base"},
        files={"base": copy_of_model},
    ),
    "output_dir inside the base model": Case(
        "output_dir 'base/run' is inside model_name_or_path 'base', and the run would write into it; choose an "
        "output_dir outside the run's inputs",
        {"model_name_or_path": "base", "output_dir": "base/run"},
        files={"base": copy_of_model},
    ),
    "output_dir a symlink to the base model": Case(
        "output_dir 'link' (-> '{case_dir}/base') is model_name_or_path 'base', and the run would write into it; "
        "choose an output_dir outside the run's inputs",
        {"model_name_or_path": "base", "output_dir": "link"},
        files={"base": copy_of_model, "link": symlink_to("base")},
    ),
    "output_dir inside the data directory": Case(
        "output_dir 'data/run' is inside dataset_name 'data', and the run would write into it; choose an output_dir "
        "outside the run's inputs",
        {"dataset_name": "data", "output_dir": "data/run"},
        files={"data/train.jsonl": jsonl(PAIRS)},
    ),
    "merged_model_dir is the base model": Case(
        "merged_model_dir 'base' is model_name_or_path 'base', and the merge replaces merged_model_dir whole; choose "
        "a merged_model_dir that holds none of the run's other paths",
        {"model_name_or_path": "base", "merged_model_dir": "base", "overwrite_merged": True},
        files={"base": copy_of_model},
    ),
    "merged_model_dir containing output_dir": Case(
        "merged_model_dir 'run' contains output_dir 'run/adapter', and the merge replaces merged_model_dir whole; "
        "choose a merged_model_dir that holds none of the run's other paths",
        {"output_dir": "run/adapter", "merged_model_dir": "run", "images_dir": "images"},
    ),
    "merged_model_dir is output_dir": Case(
        "merged_model_dir 'outputs/run' is output_dir 'outputs/run', and the merge replaces merged_model_dir whole; "
        "choose a merged_model_dir that holds none of the run's other paths",
        {"merged_model_dir": "outputs/run"},
    ),
    "merged_model_dir containing the data": Case(
        "merged_model_dir 'models/run' contains dataset_name 'models/run/data.jsonl', and the merge replaces "
        "merged_model_dir whole; choose a merged_model_dir that holds none of the run's other paths",
        {"dataset_name": "models/run/data.jsonl", "overwrite_merged": True},
        files={"models/run/data.jsonl": jsonl(PAIRS)},
    ),
    "images_dir is merged_model_dir": Case(
        "merged_model_dir 'models/run' is images_dir 'models/run', and the merge replaces merged_model_dir whole; "
        "choose a merged_model_dir that holds none of the run's other paths",
        {"images_dir": "models/run"},
    ),
    "output_dir is a file": Case(
        "output_dir 'outputs/run' is not a directory; choose a directory for output_dir",
        files={"outputs/run": "notes\n"},
    ),
    "images_dir under a file": Case(
        "images_dir 'notes.txt/images' is not a directory: '{case_dir}/notes.txt' is a file; choose a directory for "
        "images_dir",
        {"images_dir": "notes.txt/images"},
        files={"notes.txt": "notes\n"},
    ),
    "transformers' own SIGTERM checkpoint": Case(
        "config.yaml: enable_jit_checkpoint is not used here: on SIGTERM or SIGINT the scripts save a checkpoint of "
        "the step in progress on every process and stop without merging; remove it",
        {"enable_jit_checkpoint": True},
    ),
    "full fine-tune over an adapter": Case(
        "output_dir 'outputs/run' holds a LoRA adapter (adapter_config.json) of an earlier run, which loading the full "
        "fine-tune saved there would apply to it; choose another output_dir for a full fine-tune (use_peft: false)",
        {"use_peft": False, "learning_rate": 1e-6},
        files={"outputs/run/adapter_config.json": "{}\n"},
    ),
    "merged_model_dir is a file": Case(
        "merged_model_dir 'models/run' is not a directory; choose a directory for merged_model_dir",
        {"overwrite_merged": True},
        files={"models/run": "notes\n"},
    ),
    "unsupported file type": Case(
        "dataset_name: cannot read 'pairs.txt' (supported: .jsonl, .json, .parquet, .csv, and .jsonl/.json/.csv "
        "compressed as .gz)",
        {"dataset_name": "pairs.txt"},
        files={"pairs.txt": "hello\n"},
    ),
    "empty data file": Case("dataset_name: 'data.jsonl' is empty", files={"data.jsonl": ""}),
}

DATA_CASES = {
    "line that is not JSON": Case(
        "dataset_name: 'data.jsonl', line 4: not valid JSON (Expecting property name enclosed in double quotes); "
        "each line must hold one JSON object",
        files={"data.jsonl": jsonl(PAIRS[:3]) + "{oops\n" + jsonl(PAIRS[3:])},
    ),
    "line that is not an object": Case(
        "dataset_name: 'data.jsonl', line 11: expected one JSON object per line, got list",
        files={"data.jsonl": jsonl(PAIRS[:10] + [["Review:", " great.", " awful."]])},
    ),
    "truncated parquet": Case(
        "dataset_name: 'pairs.parquet': not a readable Parquet file, truncated or corrupt (Could not open Parquet "
        "input source 'pairs.parquet': Parquet magic bytes not found in footer)",
        {"dataset_name": "pairs.parquet"},
        files={"pairs.parquet": truncated_parquet},
    ),
    "csv header without the columns": Case(
        "pairs.csv [train]: missing column 'chosen' (columns: question, answer; expected prompt/chosen/rejected)",
        {"dataset_name": "pairs.csv"},
        files={"pairs.csv": "question,answer\nWhat?,This.\n"},
    ),
    "csv with a ragged row": Case(
        "dataset_name: 'pairs.csv': not a readable CSV file (Error tokenizing data. C error: Expected 3 fields in "
        "line 3, saw 4)",
        {"dataset_name": "pairs.csv"},
        files={"pairs.csv": "prompt,chosen,rejected\na,b,c\na,b,c,d\n"},
    ),
    "json holding one object": Case(
        "dataset_name: 'pairs.json' holds one JSON object (keys: data), not records; write a list of records "
        "[{...}, {...}], or one record per line in a .jsonl file",
        {"dataset_name": "pairs.json"},
        files={"pairs.json": json.dumps({"data": PAIRS}, indent=2)},
    ),
    "json holding one record": Case(
        "dataset_name: 'pairs.json' holds one JSON object (keys: prompt, chosen, rejected), not records; write a "
        "list of records [{...}, {...}], or one record per line in a .jsonl file",
        {"dataset_name": "pairs.json"},
        files={"pairs.json": json.dumps(PAIRS[0])},
    ),
    "json list cut short": Case(
        "dataset_name: 'pairs.json', line 1: not valid JSON (Unterminated string starting at)",
        {"dataset_name": "pairs.json"},
        files={"pairs.json": json.dumps(PAIRS)[:100]},
    ),
    "a number among strings": Case(
        "data.jsonl [train]: column 'chosen', line 4: expected a string, got int",
        files={"data.jsonl": jsonl(PAIRS[:3] + [{"prompt": "a", "chosen": 5, "rejected": " c"}] + PAIRS[3:])},
    ),
    "messages among strings": Case(
        "data.jsonl [train]: column 'prompt', line 21: expected a string, got list",
        files={"data.jsonl": jsonl(PAIRS[:20] + [{"prompt": MESSAGES, "chosen": REPLY, "rejected": REPLY}])},
    ),
    "missing column": Case(
        "data.jsonl [train]: missing column 'rejected' (columns: prompt, chosen, answer; expected "
        "prompt/chosen/rejected)",
        files={"data.jsonl": jsonl([{"prompt": "a", "chosen": " b", "answer": " c"}])},
    ),
    "label that is not true or false": Case(
        "data.jsonl [train]: column 'label', line 1: expected true or false, got 'yes'",
        files={"data.jsonl": jsonl([{"prompt": "a", "completion": " b", "label": "yes"}])},
        script="kto",
    ),
    "KTO data of one label": Case(
        "KTO needs desirable and undesirable examples; got 1 and 0", files={"data.jsonl": jsonl(UNPAIRED)}, script="kto"
    ),
    "message without a role": Case(
        "data.jsonl [train]: column 'prompt', line 1: expected messages with 'role' and 'content', got "
        "{'content': 'hi'}",
        files={"data.jsonl": jsonl([{"prompt": [{"content": "hi"}], "chosen": REPLY, "rejected": REPLY}])},
    ),
    "prompt longer than max_length, refused as asked": Case(
        "data.jsonl [train]: column 'prompt', line 3: 1 of 3 prompts have max_length (64) tokens or more (longest "
        "82), leaving no room for the completion; raise max_length, filter those rows, or set drop_long_prompts: "
        "true to drop them",
        {"drop_long_prompts": False},
        files={"data.jsonl": jsonl(PAIRS[:2] + [LONG])},
    ),
    "most prompts longer than max_length": Case(
        "data.jsonl [train]: 2 of 3 prompts have max_length (64) tokens or more (longest 82), leaving no room for the "
        "completion; dropping more than half of the rows would leave too little of the data for the run to mean much: "
        "raise max_length, or shorten or filter the prompts",
        files={"data.jsonl": jsonl(PAIRS[:1] + [LONG, LONG])},
    ),
    "bytes that are not UTF-8": Case(
        "dataset_name: 'data.jsonl', line 2: not UTF-8 text (byte 0xe9 at column 19); save the file as UTF-8",
        files={
            "data.jsonl": latin1(jsonl(PAIRS[:1]) + '{"prompt": "Le café:", "chosen": " bon.", "rejected": " non."}\n')
        },
    ),
    "a CSV file that is not UTF-8": Case(
        "dataset_name: 'pairs.csv', line 3: not UTF-8 text (byte 0xe9 at column 4); save the file as UTF-8",
        {"dataset_name": "pairs.csv"},
        files={"pairs.csv": latin1("prompt,chosen,rejected\na,b,c\ncafé,b,c\n")},
    ),
    "test_size larger than the data": Case(
        "test_size 100: data.jsonl [train] has 40 rows, and holding out 100 leaves none to train on; set test_size "
        "to a fraction below 1, or a number of rows below 40",
        {"eval_strategy": "steps", "test_size": 100},
    ),
    "an empty message list": Case(
        "data.jsonl [train]: column 'prompt', line 2: no messages (an empty list); each row needs at least one "
        "message here",
        files={"data.jsonl": jsonl([CHAT, {**CHAT, "prompt": []}])},
    ),
    "an unknown ShareGPT role": Case(
        "data.jsonl [train]: column 'conversations', line 1: unknown ShareGPT role 'bot' (expected human, gpt, "
        "system, observation, function_call)",
        files={"data.jsonl": jsonl([{**SHAREGPT, "conversations": [{"from": "bot", "value": "Hi."}]}])},
    ),
    "an Alpaca ranking of one output": Case(
        "data.jsonl [train]: column 'output', line 2: expected a list of 2 or more outputs, best first; got 1 output",
        files={"data.jsonl": jsonl([ALPACA, {**ALPACA, "output": ["Bonjour"]}])},
    ),
    "HH forced on text that is not a transcript": Case(
        "data.jsonl [train]: column 'chosen', line 1: not an HH transcript: expected 'Human: ...' turns up to a last "
        "'\\n\\nAssistant:' turn",
        {"dataset_format": "hh"},
        files={"data.jsonl": jsonl([{"chosen": "Q: Is it good? A: Yes.", "rejected": "Q: Is it good? A: No."}])},
    ),
    "a forced format whose fields the data lacks": Case(
        "data.jsonl: dataset_format openai needs the columns input/preferred_output/non_preferred_output (columns: "
        "prompt, chosen, rejected)",
        {"dataset_format": "openai"},
    ),
    "LLaMA-Factory KTO data not ending with the rated reply": Case(
        "data.jsonl [train]: column 'messages', line 1: expected the assistant's reply, got a message of role 'user'",
        files={"data.jsonl": jsonl([{"messages": [REPLY[0], MESSAGES[0]], "label": True}])},
        script="kto",
    ),
    "a mixture of standard and conversational data": Case(
        "datasets: the data sets of a mixture must all become the same columns and kind, got datasets[0] "
        "(data.jsonl): prompt, chosen, rejected (standard); datasets[1] (chat.jsonl): prompt, chosen, rejected "
        "(conversational)",
        {"datasets": [{"path": "data.jsonl"}, {"path": "chat.jsonl"}]},
        files={"chat.jsonl": jsonl([CHAT])},
    ),
    "TRL fractions for some data sets only": Case(
        "datasets: set fraction for every data set of the mixture or for none (TRL's rule)",
        {"datasets": [{"path": "data.jsonl", "fraction": 0.5}, {"path": "chat.jsonl"}]},
        files={"chat.jsonl": jsonl([CHAT])},
    ),
    "a split a mixture's directory lacks": Case(
        "datasets[0]: no split 'dev' in 'pairs' (Unknown split \"dev\". Should be one of ['train'].)",
        {"datasets": [{"path": "pairs", "split": "dev"}]},
        files={"pairs/train.jsonl": jsonl(PAIRS)},
    ),
    "a file that is not gzip": Case(
        "dataset_name: 'data.jsonl.gz': not a readable gzip file (Not a gzipped file (b'{\"'))",
        {"dataset_name": "data.jsonl.gz"},
        files={"data.jsonl.gz": jsonl(PAIRS)},
    ),
    "a ShareGPT value that is not text": Case(
        "data.jsonl [train]: column 'chosen', line 1: expected a string, got int",
        files={"data.jsonl": jsonl([{**SHAREGPT, "chosen": {"from": "gpt", "value": 5}}])},
    ),
    "ShareGPT conversations that are not a list": Case(
        "data.jsonl [train]: column 'conversations', line 1: expected a list, got str",
        files={"data.jsonl": jsonl([{**SHAREGPT, "conversations": "Review a film."}])},
    ),
    "a message of neither kind": Case(
        "data.jsonl [train]: column 'messages', line 1: expected a message with role and content (or from and value), "
        "got {'speaker': 'user', 'text': 'Hi.'}",
        files={"data.jsonl": jsonl([{"messages": [{"speaker": "user", "text": "Hi."}], "label": True}])},
        script="kto",
    ),
    "a LLaMA-Factory KTO tag that is not true or false": Case(
        "data.jsonl [train]: column 'kto_tag', line 1: expected true or false, got 'yes'",
        files={"data.jsonl": jsonl([{"messages": MESSAGES + REPLY, "kto_tag": "yes"}])},
        script="kto",
    ),
    "LLaMA-Factory KTO data without messages": Case(
        "data.jsonl [train]: column 'messages', line 2: no messages (an empty list); end the list with the rated "
        "assistant turn",
        files={"data.jsonl": jsonl([{"messages": MESSAGES + REPLY, "label": True}, {"messages": [], "label": False}])},
        script="kto",
    ),
    "an Alpaca history that is not pairs": Case(
        "data.jsonl [train]: column 'history', line 1: expected [instruction, response] pairs, got ['Hi']",
        files={"data.jsonl": jsonl([{**ALPACA, "history": [["Hi"]]}])},
    ),
    "an OpenAI input without messages": Case(
        "data.jsonl [train]: column 'input', line 1: expected {messages: [...]}, got 'Review a film.'",
        files={
            "data.jsonl": jsonl([{"input": "Review a film.", "preferred_output": REPLY, "non_preferred_output": REPLY}])
        },
    ),
    "mixture columns the data set lacks": Case(
        "datasets[0]: columns lists 'answer', which 'data.jsonl' does not have (columns: prompt, chosen, rejected)",
        {"datasets": [{"path": "data.jsonl", "columns": ["prompt", "answer"]}]},
    ),
    "dataset_columns naming no column": Case(
        "data.jsonl [train]: dataset_columns maps 'prompt' to 'question', which is not a column (columns: prompt, "
        "chosen, rejected)",
        {"dataset_columns": {"prompt": "question"}},
    ),
    "no test split to evaluate on": Case(
        "data.jsonl: no split 'test' (splits: train); set dataset_test_split, test_size (to hold out part of train) "
        "or eval_strategy: no",
        {"eval_strategy": "steps"},
    ),
    "unpaired data for a paired trainer": Case(
        "data.jsonl [train]: missing column 'chosen' (columns: prompt, completion, label; expected "
        "prompt/chosen/rejected)",
        files={"data.jsonl": jsonl(UNPAIRED)},
    ),
}

ALTERNATING_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MODEL_CASES = {
    "base weights cut short": Case(
        "model_name_or_path: 'base/model.safetensors' is truncated or corrupt; download or save the model again",
        {"model_name_or_path": "base"},
        files={"base": model_cut_short},
    ),
    "base of an unknown architecture": Case(
        "model_name_or_path: 'base/config.json' has model_type 'llama_next', which this version of transformers does "
        "not know; upgrade transformers, or set trust_remote_code: true if the model ships its own code",
        {"model_name_or_path": "base"},
        files={"base": model_of_unknown_type},
    ),
    "tokenizer without an EOS token": Case(
        "model_name_or_path: the tokenizer of 'base' has no EOS token, which the trainers end each completion with; "
        "set eos_token in its tokenizer_config.json",
        {"model_name_or_path": "base"},
        files={"base": tokenizer_without_eos},
    ),
    "conversational data and no chat template": Case(
        "data.jsonl [train]: the data is conversational but the tokenizer has no chat template; set "
        "chat_template_path to a .jinja file or to a tokenizer directory that has one",
        {"model_name_or_path": "plain_model"},
        files={
            "plain_model": model_without_chat_template,
            "data.jsonl": jsonl([{"prompt": MESSAGES, "chosen": REPLY, "rejected": REPLY}] * 4),
        },
    ),
    "chat template that fails to render": Case(
        "data.jsonl [train]: column 'prompt', line 1: the chat template 'template.jinja' cannot render this row "
        "(list object has no element 3); fix the row, or set chat_template_path to a template that accepts it",
        {"chat_template_path": "template.jinja"},
        files={"template.jinja": "{{ messages[3]['content'] }}", "data.jsonl": jsonl([CHAT])},
    ),
    "roles that do not alternate as the template requires": Case(
        "data.jsonl [train]: column 'prompt', line 2: the chat template 'template.jinja' cannot render this row "
        "(Conversation roles must alternate user/assistant/user/assistant/...); fix the row, or set "
        "chat_template_path to a template that accepts it",
        {"chat_template_path": "template.jinja"},
        files={
            "template.jinja": ALTERNATING_TEMPLATE,
            "data.jsonl": jsonl([CHAT, {**CHAT, "prompt": MESSAGES + MESSAGES}]),
        },
    ),
    "chat template that is not Jinja": Case(
        "the chat template 'template.jinja' is not a valid Jinja template (line 1: unexpected '}'); fix it, or set "
        "chat_template_path to one that is",
        {"chat_template_path": "template.jinja"},
        files={"template.jinja": "{% for m in messages %}{{ m['content'] }{% endfor %}", "data.jsonl": jsonl([CHAT])},
    ),
    "chat template path that is neither": Case(
        "chat_template_path: 'template.txt' is neither a .jinja/.j2 file nor a tokenizer with a chat template",
        {"chat_template_path": "template.txt"},
        files={"template.txt": "{{ messages }}"},
    ),
}

NO_GPU_FOR = (
    "{} shards the model over GPUs, and this process has none (a machine without GPUs, or use_cpu: true); without GPUs "
    "launch with accelerate_configs/cpu.yaml, or for several processes with accelerate_configs/multi_gpu.yaml and "
    "use_cpu: true"
)

# accelerate's launcher tells each process to shard through its environment (accelerate_configs/fsdp.yaml sets
# ACCELERATE_USE_FSDP); DeepSpeed's line is not among these: transformers refuses to parse a DeepSpeed run without the
# deepspeed package, which this machine has not (accelerate's launcher refuses first there).
LAUNCH_CASES = {
    "FSDP on a machine without GPUs": Case(NO_GPU_FOR.format("FSDP"), env={"ACCELERATE_USE_FSDP": "true"}),
    "FSDP asked for by the training config": Case(NO_GPU_FOR.format("FSDP"), {"fsdp": "full_shard auto_wrap"}),
    "LoRA under FSDP with precomputed reference log-probs": Case(
        "precompute_ref_log_probs: TRL 1.16 computes the reference log-probs of a LoRA model before FSDP has placed "
        "it on the GPUs, which fails; under FSDP set precompute_ref_log_probs: false (or --precompute_ref_log_probs "
        "false)",
        {"use_peft": True, "precompute_ref_log_probs": True},
        script="kto",
        env={"ACCELERATE_USE_FSDP": "true"},
    ),
}

CASES = {**CONFIG_CASES, **COMMAND_LINE_CASES, **PATH_CASES, **DATA_CASES, **MODEL_CASES, **LAUNCH_CASES}


def prepare(case: Case, directory: Path, model_dir: Path) -> list[str]:
    """Write the case's config and files into `directory`; the script's arguments."""
    if isinstance(case.config, str):
        config_text = case.config
    else:
        config = {**base_config(model_dir), **case.config}
        config_text = yaml.safe_dump({key: value for key, value in config.items() if value is not None})
    (directory / "config.yaml").write_text(config_text)
    files = {"data.jsonl": jsonl(PAIRS), **case.files}
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path, model_dir)
        else:
            path.write_text(content)
    return list(case.flags) if "--config" in case.flags else ["--config", "config.yaml", *case.flags]


def tree(directory: Path) -> set[tuple[str, str]]:
    """Each path under `directory` with its content's digest, so that a file changed or deleted counts as written."""
    return {
        (str(path.relative_to(directory)), hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "")
        for path in directory.rglob("*")
    }


def run_in_process(script: str, args: list[str], directory: Path, monkeypatch) -> tuple[int, str]:
    """The script's `__main__` as `python <script> <args>` runs it in `directory`: its exit status and stderr."""
    monkeypatch.chdir(directory)
    monkeypatch.setattr(sys, "argv", [str(REPO / f"{script}.py"), *args])
    monkeypatch.delenv("PREFOPT_DEBUG", raising=False)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(str(REPO / f"{script}.py"), run_name="__main__")
        except SystemExit as exit:
            return exit.code, stderr.getvalue()
    return 0, stderr.getvalue()


def assert_refused(status: int, stderr: str, message: str, written: set[tuple[str, str]]) -> None:
    assert error_lines(stderr) == [f"error: {message}"], stderr[-3000:]
    assert status == 2
    assert written == set(), f"written: {sorted(written)}"


@pytest.fixture
def case_dir(tmp_path) -> Path:
    directory = tmp_path / "case"
    directory.mkdir()
    return directory


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_refused_in_one_line(name, case_dir, demo_assets, monkeypatch):
    case = CASES[name]
    args = prepare(case, case_dir, demo_assets.model_dir)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = tree(case_dir)
    status, stderr = run_in_process(case.script, args, case_dir, monkeypatch)
    message = case.message.replace("{case_dir}", str(case_dir.resolve()))
    assert_refused(status, stderr, message, tree(case_dir) ^ before)


def test_a_subprocess_ends_as_the_script_run_in_process(case_dir, demo_assets, monkeypatch):
    case = CASES["typo in a key"]
    args = prepare(case, case_dir, demo_assets.model_dir)
    before = tree(case_dir)
    result = run_command([sys.executable, str(REPO / "dpo.py"), *args], cwd=case_dir, check=False)
    assert_refused(result.returncode, result.stderr, case.message, tree(case_dir) ^ before)
    status, stderr = run_in_process("dpo", args, case_dir, monkeypatch)
    assert (status, error_lines(stderr)) == (result.returncode, error_lines(result.stderr))


HUB_CASES = {
    "dataset id": Case(
        "dataset_name: could not reach the Hugging Face Hub{offline} for 'no-such-org/preference-pairs', and nothing "
        "is cached for it; download it where the hub is reachable (hf download no-such-org/preference-pairs "
        "--repo-type dataset --local-dir DIR) and set dataset_name to DIR",
        {"dataset_name": "no-such-org/preference-pairs"},
    ),
    "model id": Case(
        "model_name_or_path: could not reach the Hugging Face Hub{offline} for 'no-such-org/tiny-model', and nothing "
        "is cached for it; download it where the hub is reachable (hf download no-such-org/tiny-model --local-dir DIR) "
        "and set model_name_or_path to DIR",
        {"model_name_or_path": "no-such-org/tiny-model"},
    ),
}


def start_in_subprocess(args: list[str], directory: Path, **env: str) -> subprocess.Popen:
    """dpo.py in a subprocess with an empty hub cache: the hub settings are read when the libraries are imported."""
    env = script_env(HF_HOME=str(directory.parent / f"{directory.name}_hf_home"), **env)
    command = [sys.executable, str(REPO / "dpo.py"), *args]
    return subprocess.Popen(
        command, cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def stderr_of(process: subprocess.Popen) -> str:
    """The process's stderr once it ends; killed if it has not ended within 5 minutes."""
    try:
        return process.communicate(timeout=300)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.mark.parametrize("name", HUB_CASES)
def test_hub_id_offline_with_nothing_cached(name, case_dir, demo_assets):
    case = HUB_CASES[name]
    args = prepare(case, case_dir, demo_assets.model_dir)
    before = tree(case_dir)
    process = start_in_subprocess(args, case_dir, HF_HUB_OFFLINE="1")
    stderr = stderr_of(process)
    message = case.message.format(offline=" (HF_HUB_OFFLINE is set)")
    assert_refused(process.returncode, stderr, message, tree(case_dir) ^ before)


def test_hub_ids_unreachable_with_nothing_cached(tmp_path, demo_assets):
    """Without HF_HUB_OFFLINE: this machine reaches no hub, and huggingface_hub retries each file for about 25 s
    before it gives up. Both cases run at once; short timeouts keep a blocked connection from hanging the test."""
    timeouts = {"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    runs = {}
    for name, case in HUB_CASES.items():
        directory = tmp_path / name.replace(" ", "_")
        directory.mkdir()
        args = prepare(case, directory, demo_assets.model_dir)
        runs[name] = directory, tree(directory), start_in_subprocess(args, directory, **timeouts)
    for name, (directory, before, process) in runs.items():
        stderr = stderr_of(process)
        message = HUB_CASES[name].message.format(offline="")
        assert_refused(process.returncode, stderr, message, tree(directory) ^ before)


def test_accelerate_processes_that_do_not_join_one_run(case_dir, demo_assets):
    """Two processes on a machine without GPUs, without use_cpu: they refuse before anything is written. accelerate
    launch itself then exits 1, with its own report of the failed processes."""
    args = prepare(Case(""), case_dir, demo_assets.model_dir)
    before = tree(case_dir)
    result = accelerate_launch("dpo.py", *args, num_processes=2, check=False, cwd=case_dir)
    message = (
        "accelerate started 2 processes but they did not join one run; on a machine without GPUs set use_cpu: true "
        "(or --use_cpu true)"
    )
    # Each process refuses, but the launcher stops the other once the first has exited: torch's summary may then name
    # only the first with our exit status, and the other's line may not be out yet (seen in CI).
    assert error_lines(result.stderr) in ([f"error: {message}"], [f"error: {message}"] * 2)
    assert "exitcode  : 2" in result.stderr
    assert result.returncode == 1
    assert tree(case_dir) ^ before == set()


def test_fsdp_config_on_a_machine_without_gpus(case_dir, demo_assets):
    """accelerate_configs/fsdp.yaml as shipped, two processes: one line from each (or from the first, when the launcher
    stops the other before it prints), where every process used to end in accelerate's traceback."""
    args = prepare(Case(""), case_dir, demo_assets.model_dir)
    before = tree(case_dir)
    command = accelerate_command("fsdp.yaml", ["--num_processes", "2"], "dpo.py", *args)
    result = run_command(command, cwd=case_dir, check=False)
    message = NO_GPU_FOR.format("FSDP")
    assert error_lines(result.stderr) in ([f"error: {message}"], [f"error: {message}"] * 2), result.stderr[-3000:]
    assert result.stderr.count("Traceback") == 1  # the launcher's own, ending in its report of the processes
    assert "exitcode  : 2" in result.stderr and result.returncode == 1
    assert tree(case_dir) - before == set()


def test_the_catalogue_covers_every_kind_of_input():
    kinds = [CONFIG_CASES, COMMAND_LINE_CASES, PATH_CASES, DATA_CASES, MODEL_CASES, LAUNCH_CASES, HUB_CASES]
    assert all(kinds)
    assert len(CASES) + 2 * len(HUB_CASES) + 2 >= 43  # in process, offline and unreachable, accelerate launch
