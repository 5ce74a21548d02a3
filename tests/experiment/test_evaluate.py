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
    load_reward_model,
    reward_model_scores,
    distinct_fraction,
    evaluate_models,
    load_pairs,
    mean_stderr,
    pair_logprobs,
    preference_scores,
    sample_completions,
    steps_to_stable_loss,
    tokenize_pairs,
    train_tokens_per_epoch,
    training_cost,
    win_outcomes,
)
from prefopt.errors import UserError
from prefopt.run import RESOURCE_USAGE_FILE
from prefopt.run_logs import read_log_history
from tests.helpers import read_jsonl, run_command, run_script, training_args


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


def test_model_preferring_chosen_everywhere_has_both_accuracies_one(base):
    tokenizer, base_model = base
    (great,) = tokenizer(" great", add_special_tokens=False)["input_ids"]
    model = FavouriteTokenModel(len(tokenizer), great)
    triples = [("The film was", " great great", " dull"), ("The plot of this movie", " great", " awful and dull")]
    prompts, chosen, rejected = map(list, zip(*triples))
    pairs = list(zip(tokenize_pairs(tokenizer, prompts, chosen), tokenize_pairs(tokenizer, prompts, rejected)))
    base_logps, _ = pair_logprobs(base_model, pairs)

    def accuracies(pairs, reference):
        scores = preference_scores(*pair_logprobs(model, pairs), reference)
        return scores["implicit_reward_accuracy"]["mean"], scores["length_normalised_accuracy"]["mean"]

    uniform = torch.zeros_like(base_logps)  # a reference that scores every response alike
    assert accuracies(pairs, uniform) == (1.0, 1.0)
    assert accuracies([(rejected, chosen) for chosen, rejected in pairs], uniform) == (0.0, 0.0)
    assert accuracies([(chosen, chosen) for chosen, _ in pairs], uniform) == (0.5, 0.5)


def test_both_accuracies_on_known_log_probabilities():
    logps = torch.tensor([[-10.0, -12.0], [-20.0, -12.0], [-6.0, -9.0]])  # (chosen, rejected), summed
    counts = torch.tensor([[5, 4], [10, 3], [2, 3]])
    base_logps = torch.tensor([[-11.0, -12.0], [-19.0, -14.0], [-6.0, -9.0]])
    scores = preference_scores(logps, counts, base_logps)
    # Implicit rewards chosen - rejected: (1 - 0), (-1 - 2), (0 - 0): a win, a loss and a tie.
    assert scores["implicit_reward_accuracy"]["mean"] == 0.5
    assert scores["implicit_reward_margin"]["mean"] == pytest.approx((1 - 3 + 0) / 3)
    # Per token: -2 against -3, -2 against -4, -3 against -3: two wins and a tie.
    assert scores["length_normalised_accuracy"]["mean"] == pytest.approx(2.5 / 3)
    assert scores["length_normalised_margin"]["mean"] == pytest.approx((1 + 2 + 0) / 3)


def test_accuracy_gains_are_paired_differences_with_the_base_on_the_same_pairs():
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -2.0], [-1.0, -2.0], [-1.0, -2.0]])  # one token per response
    base_logps = torch.tensor([[-2.0, -1.0], [-3.0, -2.0], [-1.0, -2.0], [-2.0, -2.0]])
    scores = preference_scores(logps, torch.ones_like(logps), base_logps)
    # Per token, the model wins, loses, wins, wins; the base loses, loses, wins, ties: differences 1, 0, 0, 0.5.
    assert scores["length_normalised_accuracy"]["mean"] == 0.75
    assert scores["length_normalised_accuracy_gain"]["mean"] == 0.375
    assert scores["length_normalised_accuracy_gain"]["stderr"] == pytest.approx((0.6875 / 3 / 4) ** 0.5)
    # Implicit-reward margins 2, 0, 0, 1 against the base's ties at 0.5: differences 0.5, 0, 0, 0.5.
    assert scores["implicit_reward_accuracy_gain"] == pytest.approx({"mean": 0.25, "stderr": (1 / 12 / 4) ** 0.5})


def test_the_base_against_itself_ties_every_pair_on_the_implicit_reward():
    logps = torch.tensor([[-10.0, -12.0], [-20.0, -12.0]])
    scores = preference_scores(logps, torch.ones_like(logps), logps)
    assert scores["implicit_reward_accuracy"] == {"mean": 0.5, "stderr": 0.0}
    assert scores["implicit_reward_margin"] == {"mean": 0.0, "stderr": 0.0}
    for measure in ("implicit_reward", "length_normalised"):
        assert scores[f"{measure}_accuracy_gain"] == {"mean": 0.0, "stderr": 0.0}


def test_completion_ends_with_eos_as_trl_adds_it(base):
    tokenizer, _ = base
    [(prompt, completion)] = tokenize_pairs(tokenizer, ["The film was"], [" great."])
    assert prompt == tokenizer("The film was")["input_ids"]
    assert tokenizer.decode(prompt + completion) == "<s>The film was great.</s>"


def test_texts_tokenized_in_one_batch_as_one_by_one(base):
    tokenizer, _ = base
    prompts = ["The film was", "I watched this film last night and", "The plot"]
    completions = [" great.", " it was dull and slow.</s>", " thin"]  # one already ends with EOS: not added twice
    batched = tokenize_pairs(tokenizer, prompts, completions)
    for (prompt_ids, completion_ids), prompt, completion in zip(batched, prompts, completions):
        assert prompt_ids == tokenizer(prompt)["input_ids"]
        assert prompt_ids + completion_ids == tokenizer(prompt + completion.removesuffix("</s>") + "</s>")["input_ids"]


def test_conversations_split_where_the_chat_template_adds_the_answer(base):
    tokenizer, _ = base
    prompt = [{"role": "user", "content": "Review the film."}]
    completion = [{"role": "assistant", "content": "It was great."}]
    [(prompt_ids, completion_ids)] = tokenize_pairs(tokenizer, [prompt], [completion])
    assert prompt_ids == tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
    assert prompt_ids + completion_ids == tokenizer.apply_chat_template(prompt + completion, return_dict=False)
    assert tokenizer.decode(completion_ids) == "It was great.<|im_end|>\n"


def test_logprobs_batched_by_length_come_back_in_input_order(base):
    """Sorted by length into batches, each sequence still gets its own score: the same as scored alone."""
    tokenizer, model = base
    texts = [("The film was", " great."), ("I watched this film last night and", " it was dull."), ("The", " plot")]
    sequences = tokenize_pairs(tokenizer, *map(list, zip(*texts))) * 3
    logps, counts = completion_logprobs(model, sequences, batch_size=2)
    for row, sequence in enumerate(sequences):
        alone_logps, alone_counts = completion_logprobs(model, [sequence], batch_size=1)
        assert logps[row].item() == pytest.approx(alone_logps.item(), abs=1e-4)
        assert counts[row] == alone_counts.item() == len(sequence[1])


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


def test_samples_run_to_the_generation_configs_limit(base):
    """Not to transformers' default max_length of 20 tokens, prompt included."""
    tokenizer, model = base
    samples = sample_completions(model, tokenizer, [tokenizer("The film was")["input_ids"]], 64, seed=0)
    limit = model.generation_config.max_new_tokens
    assert max(len(completion) for _, completion in samples) > 20 and limit > 20
    assert all(len(completion) <= limit for _, completion in samples)


def test_model_against_itself_has_kl_zero_and_win_rate_one_half(demo_assets):
    model = str(demo_assets.model_dir)
    results = evaluate_models(
        [model],
        model,
        str(demo_assets.data_dir),
        runs_dir=None,
        reward_fn="experiment.gold_reward:gold_reward",
        fluency_fn="experiment.review_grammar:is_review",
        num_prompts=4,
        samples_per_prompt=2,
    )
    scores = results["models"]["demo-base"]
    assert scores["kl"] == {"mean": 0.0, "stderr": 0.0}
    assert scores["win_rate"] == {"mean": 0.5, "stderr": 0.0}
    assert (
        scores["implicit_reward_accuracy"]
        == results["base"]["implicit_reward_accuracy"]
        == {"mean": 0.5, "stderr": 0.0}
    )
    assert scores["length_normalised_accuracy"] == results["base"]["length_normalised_accuracy"]
    assert scores["fluency"] == results["base"]["fluency"]
    assert results["setup"]["num_prompts"] == 4 and "training" not in scores


def test_fluency_counts_only_samples_that_ended_and_that_the_function_accepts(base, demo_assets, tmp_path):
    """`builtins:bool` accepts any text: fluency is then the share of samples that ended before the token limit."""
    tokenizer, model = base
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
    assert set(scores) >= {"implicit_reward_accuracy", "length_normalised_accuracy", "reward", "win_rate", "kl"}
    assert "training" in scores and "fluency" not in scores  # no --fluency_fn
    assert scores["kl"]["mean"] != 0.0, "the trained model sampled what the base did"
    training = scores["training"]
    usage = json.loads((run_dir / "outputs" / "dpo_test" / RESOURCE_USAGE_FILE).read_text())  # saved by the script
    assert training["peak_memory_mb"] == usage["peak_memory_bytes"] / 2**20
    assert training["process_cpu_time_s"] == usage["cpu_time_s"]
    assert training["steps"] == 16 and training["epochs"] == 1.0
    assert training["tokens_per_second"] == pytest.approx(training["train_tokens"] / training["train_runtime_s"])


def test_cli_adds_the_evaluation_to_the_merged_models_card(dpo_epoch):
    run_dir, results = dpo_epoch
    card = (run_dir / "models" / "dpo_test" / "README.md").read_text()
    evaluation = card.split("## Evaluation\n")[1]
    accuracy = results["models"]["dpo_test"]["implicit_reward_accuracy"]
    assert f"| dpo_test | {accuracy['mean']:.3f} ± {accuracy['stderr']:.3f} |" in evaluation
    assert "| base (" in evaluation and "## Merge check" in card.split("## Evaluation")[0]


def test_reward_model_ranks_held_out_chosen_above_rejected(tiny_reward_model, demo_assets):
    model, tokenizer = load_reward_model(str(tiny_reward_model), torch.device("cpu"))
    rows = read_jsonl(demo_assets.data_dir / "test.jsonl")
    prompts = [row["prompt"] for row in rows]
    chosen = reward_model_scores(model, tokenizer, prompts, [row["chosen"] for row in rows], batch_size=8)
    rejected = reward_model_scores(model, tokenizer, prompts, [row["rejected"] for row in rows])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(rows)
    assert accuracy >= 0.7  # 23 of 32 pairs or more: under 1% likely by chance


def test_the_reward_column_comes_from_the_reward_model(tiny_reward_model, demo_assets, base):
    tokenizer, model = base
    results = evaluate_models(
        [str(demo_assets.model_dir)], str(demo_assets.model_dir), str(demo_assets.data_dir), runs_dir=None,
        reward_model=str(tiny_reward_model), num_prompts=3, samples_per_prompt=2,
    )  # fmt: skip
    assert results["setup"]["reward_model"] == str(tiny_reward_model) and results["setup"]["reward_fn"] is None

    rows = read_jsonl(demo_assets.data_dir / "test.jsonl")
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))[:3]
    samples = sample_completions(model, tokenizer, [tokenizer(p)["input_ids"] for p in prompts], 2, seed=0)
    reward_model, reward_tokenizer = load_reward_model(str(tiny_reward_model), torch.device("cpu"))
    completions = tokenizer.batch_decode([completion for _, completion in samples], skip_special_tokens=True)
    scores = reward_model_scores(reward_model, reward_tokenizer, [p for p in prompts for _ in range(2)], completions)
    assert results["base"]["reward"]["mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    assert results["models"]["demo-base"]["win_rate"]["mean"] == 0.5


def test_a_reward_function_and_a_reward_model_together_are_a_user_error(demo_assets):
    with pytest.raises(UserError, match="--reward_fn or --reward_model, not both"):
        evaluate_models([str(demo_assets.model_dir)], str(demo_assets.model_dir), str(demo_assets.data_dir),
                        reward_fn="experiment.gold_reward:gold_reward", reward_model="my-org/reward-model")  # fmt: skip
