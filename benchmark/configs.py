"""The training configs the benchmark runs: the demo's v1 configs and the recipes for real models, by name."""

from pathlib import Path

from prefopt.launch import REPO_ROOT


def training_config(name: str) -> Path:
    """`training_configs/<name>.yaml`, e.g. `dpo_v1` or `qwen2.5-0.5b-instruct/dpo`."""
    return REPO_ROOT / "training_configs" / f"{name}.yaml"
