"""Shared fixtures: tiny demo assets built once per test session, and running the scripts as a user does."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefopt.demo import build_demo_assets

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    data_dir: Path


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> DemoAssets:
    """A small version of the default experiment's base model and preference data."""
    root = tmp_path_factory.mktemp("demo")
    assets = DemoAssets(model_dir=root / "demo-base", data_dir=root / "demo-data")
    build_demo_assets(assets.model_dir, assets.data_dir, num_train_pairs=256, num_test_pairs=32, pretrain_steps=150)
    return assets


def run_script(script: str, *args: str | Path, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` in a subprocess, as a user would, and return its completed process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
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
