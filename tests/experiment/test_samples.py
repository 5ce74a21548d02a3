"""Samples and what is read off them: their length limit, fluency, distinct tokens and win rate."""

import pytest

from experiment.evaluate import evaluate_models
from experiment.samples import distinct_fraction, sample_completions, win_outcomes
from experiment.standard_error import mean_stderr
from tests.helpers import read_jsonl


def test_samples_run_to_the_generation_configs_limit(demo_base):
    """Not to transformers' default max_length of 20 tokens, prompt included."""
    tokenizer, model = demo_base
    samples = sample_completions(model, tokenizer, [tokenizer("The film was")["input_ids"]], 64, seed=0)
    limit = model.generation_config.max_new_tokens
    assert max(len(completion) for _, completion in samples) > 20 and limit > 20
    assert all(len(completion) <= limit for _, completion in samples)


def test_fluency_counts_only_samples_that_ended_and_that_the_function_accepts(demo_base, demo_assets, tmp_path):
    """`builtins:bool` accepts any text: fluency is then the share of samples that ended before the token limit."""
    tokenizer, model = demo_base
    prompts = list(dict.fromkeys(row["prompt"] for row in read_jsonl(demo_assets.data_dir / "test.jsonl")))[:4]
    samples = sample_completions(model, tokenizer, [tokenizer(p)["input_ids"] for p in prompts], 4, seed=0)
    ended = sum(completion[-1] == tokenizer.eos_token_id for _, completion in samples) / len(samples)
    ended_within_8 = sum(
        completion[-1] == tokenizer.eos_token_id and len(completion) <= 8 for _, completion in samples
    ) / len(samples)

    def fluency(max_new_tokens=None, fluency_fn="builtins:bool"):
        results = evaluate_models(
            [str(demo_assets.model_dir)], str(demo_assets.model_dir), str(demo_assets.data_dir), runs_dir=None,
            reward_fn="experiment.gold_reward:gold_reward", fluency_fn=fluency_fn, num_prompts=4,
            samples_per_prompt=4, max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return results["base"]["fluency"]["mean"]

    assert fluency() == ended > 0
    assert fluency(max_new_tokens=8) == ended_within_8 < ended  # the same draws, cut at 8 tokens
    assert fluency(fluency_fn="experiment.review_grammar:is_review") <= ended


def test_distinct_fraction_falls_as_a_sample_repeats_itself():
    assert distinct_fraction([5, 6, 7]) == 1.0
    assert distinct_fraction([5, 5, 5, 5]) == 0.25
    assert distinct_fraction([5, 6, 5, 6, 5, 6]) == pytest.approx(1 / 3)
    assert distinct_fraction([]) == 1.0  # an empty completion repeats nothing


def test_win_rate_counts_ties_half():
    outcomes = win_outcomes([0.9, 0.5, 0.2, 0.7], [0.1, 0.5, 0.7, 0.6])
    assert outcomes == [1.0, 0.5, 0.0, 1.0]
    assert mean_stderr(outcomes)["mean"] == 0.625
