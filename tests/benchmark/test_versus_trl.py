"""`python -m benchmark` end to end at a tiny size: every algorithm through our script and TRL's, measured alike."""

import json
import sys

import pytest
import torch

from benchmark.runs import PREFOPT, TRL
from prefopt.launch import ALGORITHMS
from tests.conftest import run_command


@pytest.fixture(scope="module")
def report(demo_assets, tmp_path_factory):
    """`python -m benchmark` on the tiny demo assets: 3 steps, one run per side; its JSON report and Markdown."""
    output_dir = tmp_path_factory.mktemp("benchmark")
    command = [
        sys.executable, "-m", "benchmark",
        "--model", demo_assets.model_dir, "--dataset", demo_assets.data_dir,
        "--max_steps", "3", "--repeats", "1", "--output_dir", output_dir,
    ]  # fmt: skip
    run_command(list(map(str, command)))
    return json.loads((output_dir / "versus_trl.json").read_text()), (output_dir / "versus_trl.md").read_text()


def summary_row(report, algorithm, runner):
    (row,) = [row for row in report["summary"] if (row["algorithm"], row["runner"]) == (algorithm, runner)]
    return row


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("runner", [PREFOPT, TRL])
def test_every_algorithm_and_runner_is_measured(report, algorithm, runner):
    row = summary_row(report[0], algorithm, runner)
    for metric in ("step_s", "cpu_step_s", "tokens_per_step", "tokens_per_s", "peak_rss_train_mib", "wall_s"):
        assert row[metric] > 0, metric
    assert row["train_runtime_s"] > 0 and row["setup_s"] >= 0
    assert row["peak_rss_run_mib"] >= row["peak_rss_train_mib"] * 0.99  # the run's peak includes training's


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ratio_prefopt_over_trl(report, algorithm):
    (ratio,) = [row for row in report[0]["ratios"] if row["algorithm"] == algorithm]
    ours, trl = summary_row(report[0], algorithm, PREFOPT), summary_row(report[0], algorithm, TRL)
    assert ratio["step_s"] == pytest.approx(ours["step_s"] / trl["step_s"])
    assert ratio["tokens_per_s"] > 0 and ratio["peak_rss_train_mib"] > 0


@pytest.mark.parametrize("algorithm", ["dpo", "simpo"])
def test_both_runners_train_on_the_same_batches(report, algorithm):
    """Same data, seed, batch and max_length: the same tokens per step, so the times compare like with like."""
    ours, trl = summary_row(report[0], algorithm, PREFOPT), summary_row(report[0], algorithm, TRL)
    assert ours["tokens_per_step"] == trl["tokens_per_step"]


def test_markdown_has_a_ratio_column_per_algorithm_and_no_gpu_numbers_on_cpu(report):
    _, markdown = report
    ratio_table = markdown.split("## Ratio ours / TRL")[1]
    assert "| step time ratio |" in ratio_table
    for algorithm in ALGORITHMS:
        assert f"\n| {algorithm} |" in ratio_table
    if not torch.cuda.is_available():
        assert "| n/a | n/a |" in markdown.split("## Measurements")[1]  # peak GPU and MFU
