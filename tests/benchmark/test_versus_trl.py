"""`python -m benchmark` end to end at a tiny size: every algorithm through our script and TRL's, measured alike."""

import json
import sys

import pytest
import torch
from transformers import AutoTokenizer

from benchmark.runs import PREFOPT, TRL
from prefopt.launch import ALGORITHMS
from tests.helpers import read_jsonl, run_command


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


@pytest.fixture(scope="module")
def demo_lengths(demo_assets):
    """Token lengths of every prompt + completion of the demo's train pairs, as the trainers tokenize them."""
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    rows = read_jsonl(demo_assets.data_dir / "train.jsonl")
    texts = [row["prompt"] + row[key] + tokenizer.eos_token for row in rows for key in ("chosen", "rejected")]
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


def summary_row(report, algorithm, runner):
    (row,) = [row for row in report["summary"] if (row["algorithm"], row["runner"]) == (algorithm, runner)]
    return row


def the_run(report, algorithm, runner):
    """The one run (one repeat) of an algorithm by a runner."""
    (run,) = [run for run in report["runs"] if (run["algorithm"], run["runner"]) == (algorithm, runner)]
    return run


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("runner", [PREFOPT, TRL])
def test_every_algorithm_and_runner_is_measured_consistently(report, demo_lengths, algorithm, runner):
    row = the_run(report[0], algorithm, runner)
    assert row["tokens_per_s"] == pytest.approx(row["tokens_per_step"] / row["step_s"])
    # 16 pairs per step (DPO, SimPO: chosen and rejected; KTO: 16 completions), each within the data's lengths
    sequences = 16 if algorithm == "kto" else 32
    assert sequences * min(demo_lengths) <= row["tokens_per_step"] <= sequences * max(demo_lengths)
    assert row["cpu_step_s"] <= row["step_s"] * row["torch_threads"] * 1.2  # CPU time cannot outrun the threads
    # The wall time is the time before training, training itself and the time after, measured by the same clocks.
    parts = row["before_training_s"] + row["train_runtime_s"] + row["after_training_s"]
    assert parts <= row["wall_s"] * 1.01 and row["train_runtime_s"] >= 2 * row["step_s"] * 0.9
    assert row["peak_rss_run_mib"] >= row["peak_rss_train_mib"] * 0.99  # the run's peak includes training's


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ratio_prefopt_over_trl(report, algorithm):
    """With one repeat, each ratio is that of the repeat's two runs; test_suites.py checks the median over repeats."""
    (ratio,) = [row for row in report[0]["ratios"] if row["algorithm"] == algorithm]
    ours, trl = the_run(report[0], algorithm, PREFOPT), the_run(report[0], algorithm, TRL)
    for metric in ("step_s", "tokens_per_s", "peak_rss_train_mib"):
        assert ratio[metric] == pytest.approx(ours[metric] / trl[metric])


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
