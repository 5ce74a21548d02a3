"""Evaluation on known cases: preference accuracy, the KL of samples, the win rate, the training cost."""

import json
import sys
from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from experiment.evaluate import (
    completion_logprobs,
    distinct_fraction,
    evaluate_models,
    load_pairs,
    mean_stderr,
    preference_outcomes,
    sample_completions,
    steps_to_stable_loss,
    tokenize_pair,
    train_tokens_per_epoch,
    training_cost,
    win_outcomes,
)
from prefopt.run import RESOURCE_USAGE_FILE
from prefopt.run_logs import read_log_history
from tests.conftest import run_command, run_script, training_args


@pytest.fixture(scope="module")
def base(demo_assets):
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    return tokenizer, AutoModelForCausalLM.from_pretrained(demo_assets.model_dir).eval()


class FavouriteTokenModel(torch.nn.Module):
    """Whatever the input, most of the probability on one token: prefers completions made of it."""

    def __init__(self, vocab_size: int, token_id: int):
        super().__init__()
        self.logits = torch.zeros(vocab_size)
        self.logits[token_id] = 10.0
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_model_preferring_chosen_everywhere_has_accuracy_one(base):
    tokenizer, _ = base
    (great,) = tokenizer(" great", add_special_tokens=False)["input_ids"]
    model = FavouriteTokenModel(len(tokenizer), great)
    triples = [("The film was", " great great", " dull"), ("The plot of this movie", " great", " awful and dull")]
    pairs = [(tokenize_pair(tokenizer, p, c), tokenize_pair(tokenizer, p, r)) for p, c, r in triples]

    assert preference_outcomes(model, pairs)[0] == [1.0, 1.0]
    assert preference_outcomes(model, [(rejected, chosen) for chosen, rejected in pairs])[0] == [0.0, 0.0]
    assert preference_outcomes(model, [(chosen, chosen) for chosen, _ in pairs])[0] == [0.5, 0.5]


def test_completion_ends_with_eos_as_trl_adds_it(base):
    tokenizer, _ = base
    prompt, completion = tokenize_pair(tokenizer, "The film was", " great.")
    assert prompt == tokenizer("The film was")["input_ids"]
    assert tokenizer.decode(prompt + completion) == "<s>The film was great.</s>"


def test_sample_logprobs_are_those_generate_sampled_with(base):
    """Scored right-padded, a left-padded sample gets the log-probability generate drew it with: no position shift."""
    tokenizer, model = base
    prompts = [tokenizer(text)["input_ids"] for text in ("The film was", "I watched this film last night and")]
    samples = sample_completions(model, tokenizer, prompts, samples_per_prompt=2, seed=3)
    logps, counts = completion_logprobs(model, samples)

    transformers.set_seed(3)  # the same draw again, keeping generate's logits
    requests = [prompt for prompt in prompts for _ in range(2)]
    width = max(map(len, requests))
    output = model.generate(
        input_ids=torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in requests]),
        attention_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in requests]),
        output_logits=True,
        return_dict_in_generate=True,
    )
    step_logps = torch.stack(output.logits, dim=1).log_softmax(-1)
    for row, (_, completion) in enumerate(samples):
        assert output.sequences[row, width : width + len(completion)].tolist() == completion
        expected = sum(step_logps[row, t, token] for t, token in enumerate(completion))
        assert logps[row].item() == pytest.approx(expected.item(), abs=1e-4)
        assert counts[row] == len(completion)


def test_model_against_itself_has_kl_zero_and_win_rate_one_half(demo_assets):
    model = str(demo_assets.model_dir)
    results = evaluate_models(
        [model],
        model,
        str(demo_assets.data_dir),
        runs_dir=None,
        reward_fn="experiment.gold_reward:gold_reward",
        num_prompts=4,
        samples_per_prompt=2,
    )
    scores = results["models"]["demo-base"]
    assert scores["kl"] == {"mean": 0.0, "stderr": 0.0}
    assert scores["win_rate"] == {"mean": 0.5, "stderr": 0.0}
    assert scores["preference_accuracy"] == results["base"]["preference_accuracy"]
    assert results["setup"]["num_prompts"] == 4 and "training" not in scores


def test_distinct_fraction_falls_as_a_sample_repeats_itself():
    assert distinct_fraction([5, 6, 7]) == 1.0
    assert distinct_fraction([5, 5, 5, 5]) == 0.25
    assert distinct_fraction([5, 6, 5, 6, 5, 6]) == pytest.approx(1 / 3)
    assert distinct_fraction([]) == 1.0  # an empty completion repeats nothing


def test_win_rate_counts_ties_half():
    outcomes = win_outcomes([0.9, 0.5, 0.2, 0.7], [0.1, 0.5, 0.7, 0.6])
    assert outcomes == [1.0, 0.5, 0.0, 1.0]
    assert mean_stderr(outcomes)["mean"] == 0.625


def test_stable_loss_is_where_the_loss_stays_near_its_end():
    steps = [5, 10, 15, 20, 25, 30, 35]
    # Unsmoothed: total change 0.5, so the band is 0.05 around 0.5.
    assert steps_to_stable_loss(steps, [1.0, 0.8, 0.6, 0.52, 0.5, 0.49, 0.5], window_fraction=0) == 20
    assert steps_to_stable_loss(steps[:6], [1.0, 0.5, 0.5, 0.8, 0.5, 0.5], window_fraction=0) == 25
    assert steps_to_stable_loss(steps, [0.7] * 7) == 5


def test_smoothing_keeps_one_noisy_batch_from_delaying_stability():
    steps = list(range(1, 11))
    losses = [1.0, 0.5, 0.5, 0.5, 0.56, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert steps_to_stable_loss(steps, losses, window_fraction=0) == 6
    assert steps_to_stable_loss(steps, losses, window_fraction=0.3) == 3  # a centred window of 3


def test_training_cost_of_a_run(tmp_path):
    history = [{"step": step, "epoch": step / 10, "loss": 1.0 if step < 10 else 0.5} for step in range(2, 21, 2)]
    history.append({"step": 20, "epoch": 2.0, "train_runtime": 10.0})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 20, "epoch": 2.0, "log_history": history}))
    usage = {"cpu_time_s": 30.0, "peak_memory_bytes": 100 * 2**20, "memory_measure": "process resident set"}
    (tmp_path / "resource_usage.json").write_text(json.dumps(usage))

    cost = training_cost(tmp_path, tokens_per_epoch=1000)
    assert cost["train_tokens"] == 2000
    assert cost["tokens_per_second"] == 200.0
    assert cost["peak_memory_mb"] == 100.0 and cost["process_cpu_time_s"] == 30.0
    assert cost["steps_to_stable_loss"] == 10 and cost["epochs_to_stable_loss"] == 1.0


@pytest.fixture(scope="module")
def dpo_epoch(demo_assets, tmp_path_factory):
    """One epoch of DPO on the demo pairs (16 steps of 16), logged at its last step, then evaluated from the CLI."""
    run_dir = tmp_path_factory.mktemp("evaluate")
    flags = ["--logging_steps", "4", "--eval_strategy", "no", "--save_strategy", "no"]
    run_script("dpo.py", *training_args("dpo", demo_assets, run_dir, 16, *flags))
    command = [
        sys.executable, "-m", "experiment.evaluate", run_dir / "models" / "dpo_test",
        "--base_model", demo_assets.model_dir,
        "--dataset", demo_assets.data_dir,
        "--runs_dir", run_dir / "outputs",
        "--reward_fn", "experiment.gold_reward:gold_reward",
        "--num_prompts", "4",
        "--samples_per_prompt", "2",
        "--output", run_dir / "results.json",
    ]  # fmt: skip
    run_command(list(map(str, command)))
    return run_dir, json.loads((run_dir / "results.json").read_text())


def test_train_tokens_are_those_trl_counts(dpo_epoch, demo_assets):
    run_dir, results = dpo_epoch
    history = read_log_history(run_dir / "outputs" / "dpo_test")
    trl_count = next(entry["num_tokens"] for entry in reversed(history) if "num_tokens" in entry)
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    assert train_tokens_per_epoch(load_pairs(tokenizer, str(demo_assets.data_dir), "train")) == trl_count
    assert results["models"]["dpo_test"]["training"]["train_tokens"] == trl_count


def test_cli_scores_a_trained_model_with_its_training_cost(dpo_epoch):
    run_dir, results = dpo_epoch
    scores = results["models"]["dpo_test"]
    assert set(scores) >= {"preference_accuracy", "logp_margin", "reward", "win_rate", "kl", "training"}
    assert scores["kl"]["mean"] != 0.0, "the trained model sampled what the base did"
    training = scores["training"]
    usage = json.loads((run_dir / "outputs" / "dpo_test" / RESOURCE_USAGE_FILE).read_text())  # finish_run's record
    assert training["peak_memory_mb"] == usage["peak_memory_bytes"] / 2**20
    assert training["process_cpu_time_s"] == usage["cpu_time_s"]
    assert training["steps"] == 16 and training["epochs"] == 1.0
    assert training["tokens_per_second"] == pytest.approx(training["train_tokens"] / training["train_runtime_s"])
