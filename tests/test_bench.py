"""The benchmark at a tiny size: every algorithm through our script and TRL's, measured alike and compared."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from dataclasses import asdict

import pytest
import torch

from prefopt import bench
from prefopt.bench import ALGORITHMS, PREFOPT, TRL
from prefopt.errors import UserError
from tests.conftest import REPO


@pytest.fixture(scope="module")
def report(demo_assets, tmp_path_factory):
    """`python -m prefopt.bench` on the tiny demo assets: 3 steps, one run per side; its JSON report and Markdown."""
    output_dir = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, "-m", "prefopt.bench",
        "--model", demo_assets.model_dir, "--dataset", demo_assets.data_dir,
        "--max_steps", "3", "--repeats", "1", "--output_dir", output_dir,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(list(map(str, command)), cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads((output_dir / "compare.json").read_text()), (output_dir / "compare.md").read_text()


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
    ratio_table = markdown.split("## Ratio prefopt / TRL")[1]
    assert "| step time ratio |" in ratio_table
    for algorithm in ALGORITHMS:
        assert f"\n| {algorithm} |" in ratio_table
    if not torch.cuda.is_available():
        assert "| n/a | n/a |" in markdown.split("## Measurements")[1]  # peak GPU and MFU


# --- The other suites, on synthetic runs or at a tiny size -----------------------------------------------------------
def synthetic_run(variant, repeat, step_s, tokens_per_step=100.0):
    """What `measure` returns for a run, reduced to what the summaries read."""
    return {
        **asdict(variant), "repeat": repeat, "step_s": step_s, "cpu_step_s": step_s, "first_step_s": step_s,
        "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step / step_s, "mfu": None,
        "peak_rss_train_mib": 500.0, "peak_rss_run_mib": 600.0, "peak_gpu_gib": None,
        "setup_s": 1.0, "train_runtime_s": 10 * step_s, "wall_s": 20.0, "before_training_s": 5.0,
        "after_training_s": 2.0, "load_1min": 0.5, "device": "cpu", "torch_threads": 2, "flops_per_token": 6.0,
        "peak_flops": None,
    }  # fmt: skip


def test_scaling_reports_each_algorithms_step_time_relative_to_dpo_at_the_same_shape():
    variants, reference_of = bench.scaling_suite(list(ALGORITHMS))
    cost = {"dpo": 1.0, "kto": 1.5, "simpo": 0.75}  # step time per algorithm at every shape, times the batch size
    runs = [
        synthetic_run(
            variant,
            repeat,
            cost[variant.algorithm] * float(variant.flags[variant.flags.index("--per_device_train_batch_size") + 1]),
            tokens_per_step=50.0 if variant.algorithm == "kto" else 100.0,  # completions, not pairs
        )
        for repeat in range(2)
        for variant in variants
    ]
    summary = bench.summarise(variants, runs)
    report = {
        "suite": "scaling", "command": "python -m prefopt.bench scaling", "created": "now", "duration_s": 60.0,
        "machine": bench.machine(), "settings": {"model": "m", "dataset": "d", "max_steps": 3, "repeats": 2},
        "runs": runs, "summary": summary, "ratios": bench.ratios(runs, summary, reference_of),
    }  # fmt: skip
    kto_over_dpo = {row["label"]: row["step_s"] for row in report["ratios"] if row["algorithm"] == "kto"}
    assert set(kto_over_dpo) == {variant.label for variant in variants if variant.algorithm == "dpo"}
    assert all(ratio == pytest.approx(1.5) for ratio in kto_over_dpo.values())
    assert not [row for row in report["ratios"] if row["algorithm"] == "dpo"]  # DPO is the reference, not compared

    glance = bench.training_markdown(report).split("## Step time by shape")[1]
    columns = "| kto / dpo per step | simpo / dpo per step | kto / dpo per token | simpo / dpo per token |"
    assert f"| shape | dpo step (s) | kto step (s) | simpo step (s) {columns}" in glance
    # A KTO step trains on half the tokens of a DPO step: 1.5 times the time per step is 3 times per token.
    assert "| batch 32, max_length 64 | 32 | 48 | 24 | 1.5 | 0.75 | 3 | 0.75 |" in glance


def flag(flags, name):
    """The value a flag takes on the command line: its last occurrence, as argparse reads it."""
    return [flags[index + 1] for index, value in enumerate(flags) if value == name][-1]


def test_settings_apply_only_to_the_algorithms_that_have_them():
    variants, reference_of = bench.settings_suite(list(ALGORITHMS))
    labels = {(variant.algorithm, variant.label) for variant in variants}
    assert ("kto", "precompute_ref_log_probs") in labels and ("simpo", "precompute_ref_log_probs") not in labels
    assert ("simpo", "gradient_checkpointing") in labels
    for variant in variants:  # every setting is compared with its own algorithm's v1 config, which does not merge
        assert variant.flags[:2] == ("--merge", "false")
        assert reference_of(asdict(variant)) == (variant.algorithm, PREFOPT, bench.SETTINGS_OFF)


def test_settings_are_measured_against_a_baseline_with_all_of_them_off_whatever_the_config_ships():
    variants, _ = bench.settings_suite(["dpo"])
    by_label = {variant.label: variant for variant in variants}
    baseline = by_label[bench.SETTINGS_OFF].flags
    assert flag(baseline, "--precompute_ref_log_probs") == "false"  # dpo_v1.yaml turns it on
    assert flag(baseline, "--gradient_checkpointing") == "false" and flag(baseline, "--dataloader_num_workers") == "0"
    precompute = by_label["precompute_ref_log_probs"].flags
    assert flag(precompute, "--precompute_ref_log_probs") == "true"
    assert flag(precompute, "--gradient_checkpointing") == "false"  # only the setting measured differs
    assert dict(by_label["OMP_NUM_THREADS=1"].env) == {"OMP_NUM_THREADS": "1"}
    assert by_label["OMP_NUM_THREADS=1"].flags == baseline


def test_resume_measures_only_the_runs_an_interrupted_benchmark_lacks(monkeypatch, tmp_path):
    variants, _ = bench.compare_suite(["dpo"])
    measured = []

    def fake_measure(variant, run_dir, args):
        measured.append((variant.key, run_dir.name))
        return {"step_s": 1.0, "cpu_step_s": 1.0, "wall_s": 1.0, "load_1min": 0.0}

    monkeypatch.setattr(bench, "measure", fake_measure)
    done = [{**asdict(variants[0]), "repeat": 0, "step_s": 2.0}]
    seen = []
    runs = bench.measure_interleaved(
        variants, Namespace(repeats=2), tmp_path, done, lambda runs: seen.append(len(runs))
    )
    assert [run["repeat"] for run in runs] == [0, 0, 1, 1]
    assert runs[0]["step_s"] == 2.0  # kept from the interrupted report, not measured again
    assert [key for key, _ in measured] == [variants[1].key, variants[0].key, variants[1].key]
    assert len({run_dir for _, run_dir in measured}) == 3  # every new run in a directory of its own
    assert seen == [2, 3, 4]  # the report is rewritten after every new run


def test_resume_refuses_the_report_of_another_benchmark(tmp_path):
    report = {"suite": "compare", "settings": {"model": "m", "dataset": "d", "max_steps": 30, "repeats": 3}}
    path = tmp_path / "compare.json"
    path.write_text(json.dumps({**report, "command": "python -m prefopt.bench --max_steps 30", "runs": []}))
    assert bench.resumed(path, report)["runs"] == []
    other = {**report, "settings": {**report["settings"], "max_steps": 40}}
    with pytest.raises(UserError, match="is another benchmark .*--max_steps 30.*; choose another --name"):
        bench.resumed(path, other)
    assert bench.resumed(tmp_path / "missing.json", report) == {}


def test_merge_suite_reports_peak_memory_as_a_ratio_to_the_model_size(demo_assets, tmp_path):
    small = {**bench.MERGE_BASE, "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 704,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip
    args = Namespace(model=demo_assets.model_dir, repeats=1)
    result = bench.merge_suite(args, tmp_path, base_config=small)
    summary = result["summary"]
    parameters = 2 * 4096 * 256 + 2 * (4 * 256 * 256 + 3 * 256 * 704 + 2 * 256) + 256
    assert summary["model_bytes"] == pytest.approx(4 * parameters, rel=0.01)  # float32, plus the safetensors header
    # ru_maxrss is a high-water mark: a 6 MB model may not rise above the peak the imports left
    assert summary["peak_rss_bytes"] >= summary["runtime_rss_bytes"] > 0
    assert summary["peak_over_model"] == pytest.approx(summary["peak_rss_bytes"] / summary["model_bytes"])
    merged = tmp_path / "merged0"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    report = {
        **result, "suite": "merge", "command": "python -m prefopt.bench merge", "created": "now",
        "duration_s": 1.0, "machine": bench.machine(),
    }  # fmt: skip
    markdown = bench.merge_markdown(report)
    assert "hidden_size 256" in markdown and "| peak / model |" in markdown
