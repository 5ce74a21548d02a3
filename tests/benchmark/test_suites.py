"""The training suites' variants, and their summaries and reports, on synthetic runs."""

from dataclasses import asdict

import pytest

from benchmark.report import machine_description, training_markdown
from benchmark.runs import PREFOPT, TRL
from benchmark.suites import SETTINGS_OFF, scaling_suite, settings_suite, versus_trl_suite
from benchmark.summaries import ratios, summarise
from prefopt.launch import ALGORITHMS


def synthetic_run(variant, repeat, step_s, tokens_per_step=100.0):
    """What `measure_run` returns for a run, reduced to what the summaries read."""
    return {
        **asdict(variant), "repeat": repeat, "step_s": step_s, "cpu_step_s": step_s, "first_step_s": step_s,
        "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step / step_s, "mfu": None,
        "peak_rss_train_mib": 500.0, "peak_rss_run_mib": 600.0, "peak_gpu_gib": None,
        "setup_s": 1.0, "train_runtime_s": 10 * step_s, "wall_s": 20.0, "before_training_s": 5.0,
        "after_training_s": 2.0, "load_1min": 0.5, "device": "cpu", "torch_threads": 2, "flops_per_token": 6.0,
        "peak_flops": None,
    }  # fmt: skip


def test_scaling_reports_each_algorithms_step_time_relative_to_dpo_at_the_same_shape():
    variants, reference_of = scaling_suite(list(ALGORITHMS))
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
    summary = summarise(variants, runs)
    report = {
        "suite": "scaling", "command": "python -m benchmark scaling", "created": "now", "duration_s": 60.0,
        "machine": machine_description(), "settings": {"model": "m", "dataset": "d", "max_steps": 3, "repeats": 2},
        "runs": runs, "summary": summary, "ratios": ratios(runs, summary, reference_of),
    }  # fmt: skip
    kto_over_dpo = {row["label"]: row["step_s"] for row in report["ratios"] if row["algorithm"] == "kto"}
    assert set(kto_over_dpo) == {variant.label for variant in variants if variant.algorithm == "dpo"}
    assert all(ratio == pytest.approx(1.5) for ratio in kto_over_dpo.values())
    assert not [row for row in report["ratios"] if row["algorithm"] == "dpo"]  # DPO is the reference, not compared

    glance = training_markdown(report).split("## Step time by shape")[1]
    columns = "| kto / dpo per step | simpo / dpo per step | kto / dpo per token | simpo / dpo per token |"
    assert f"| shape | dpo step (s) | kto step (s) | simpo step (s) {columns}" in glance
    # A KTO step trains on half the tokens of a DPO step: 1.5 times the time per step is 3 times per token.
    assert "| batch 32, max_length 64 | 32 | 48 | 24 | 1.5 | 0.75 | 3 | 0.75 |" in glance


def test_a_ratio_is_the_median_of_the_ratios_within_each_repeat_not_the_ratio_of_the_medians():
    """Both sides of a repeat run minutes apart, at the machine's speed of the moment: ratios are taken within a repeat."""
    variants, reference_of = versus_trl_suite(["dpo"])
    step_s = {PREFOPT: [1.0, 3.0, 2.0], TRL: [2.0, 2.5, 1.0]}  # ratios 0.5, 1.2, 2.0; both medians 2.0
    runs = [
        synthetic_run(variant, repeat, step_s[variant.runner][repeat]) for repeat in range(3) for variant in variants
    ]
    summary = summarise(variants, runs)
    ours, trl = (next(row for row in summary if row["runner"] == runner) for runner in (PREFOPT, TRL))
    assert ours["step_s"] == trl["step_s"] == 2.0  # the ratio of the medians would be 1
    (ratio,) = ratios(runs, summary, reference_of)
    assert ratio["step_s"] == pytest.approx(1.2)
    assert ratio["tokens_per_s"] == pytest.approx(1 / 1.2)  # the same tokens per step: the inverse ratio in each repeat
    assert ratio["peak_rss_train_mib"] == 1.0

    report = {
        "suite": "versus_trl", "command": "python -m benchmark", "created": "now", "duration_s": 60.0,
        "machine": machine_description(), "settings": {"model": "m", "dataset": "d", "max_steps": 3, "repeats": 3},
        "runs": runs, "summary": summary, "ratios": [ratio],
    }  # fmt: skip
    assert "| dpo | v1 config | 1.2 | 1.2 | 0.833 | 1 |" in training_markdown(report).split("## Ratio ours / TRL")[1]


def flag(flags, name):
    """The value a flag takes on the command line: its last occurrence, as argparse reads it."""
    return [flags[index + 1] for index, value in enumerate(flags) if value == name][-1]


def test_settings_apply_only_to_the_algorithms_that_have_them():
    variants, reference_of = settings_suite(list(ALGORITHMS))
    labels = {(variant.algorithm, variant.label) for variant in variants}
    assert ("kto", "precompute_ref_log_probs") in labels and ("simpo", "precompute_ref_log_probs") not in labels
    assert ("simpo", "gradient_checkpointing") in labels
    for variant in variants:  # every setting is compared with its own algorithm's v1 config, which does not merge
        assert variant.flags[:2] == ("--merge", "false")
        assert reference_of(asdict(variant)) == (variant.algorithm, PREFOPT, SETTINGS_OFF, "")


def test_settings_are_measured_against_a_baseline_with_all_of_them_off_whatever_the_config_ships():
    variants, _ = settings_suite(["dpo"])
    by_label = {variant.label: variant for variant in variants}
    baseline = by_label[SETTINGS_OFF].flags
    assert flag(baseline, "--precompute_ref_log_probs") == "false"  # dpo_v1.yaml turns it on
    assert flag(baseline, "--gradient_checkpointing") == "false" and flag(baseline, "--dataloader_num_workers") == "0"
    precompute = by_label["precompute_ref_log_probs"].flags
    assert flag(precompute, "--precompute_ref_log_probs") == "true"
    assert flag(precompute, "--gradient_checkpointing") == "false"  # only the setting measured differs
    assert dict(by_label["OMP_NUM_THREADS=1"].env) == {"OMP_NUM_THREADS": "1"}
    assert by_label["OMP_NUM_THREADS=1"].flags == baseline
