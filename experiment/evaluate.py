"""Held-out evaluation of merged models, with measures that mean the same thing for DPO, KTO and SimPO.

    python -m experiment.evaluate --reward_fn experiment.gold_reward:gold_reward    # the demo: every model in models/
    python -m experiment.evaluate models/dpo_v1 models/kto_v1 --base_model models/demo-base --dataset data/demo
    python -m experiment.evaluate models/my_dpo --base_model my-org/base --dataset my_pairs.jsonl --split train
    python -m experiment.evaluate models/a models/b --base_model B --dataset D --reward_model my-org/reward-model

For each model, and for the base model where it applies:
- two preference accuracies on the held-out pairs, how often the chosen response scores above the rejected one (ties
  count half), each with its mean margin:
  - implicit-reward accuracy: the score is log pi(y|x) - log pi_base(y|x), summed over the response's tokens, the
    implicit reward that DPO and KTO optimise (up to their beta). The base model scores 0 on every response: all its
    pairs tie, and its accuracy is exactly 0.5;
  - length-normalised accuracy: the score is the mean per-token log pi(y|x), what SimPO optimises;
- with a reward, samples for the held-out prompts, drawn with the model's generation config from a fixed seed and
  scored by it; their win rate against the base model's samples for the same prompts (ties count half); and the KL
  divergence from the base, estimated on the policy's own samples as the mean of log pi(y|x) - log pi_base(y|x).
  The reward is either `--reward_fn module:function` (a function text -> float; the demo's is
  `experiment.gold_reward:gold_reward`), which sees the prompt followed by the completion as text without special
  tokens; or `--reward_model`, a sequence-classification reward model (a directory or a hub id) that scores the
  prompt and completion as a conversation rendered with its own tokenizer's chat template, in batches, on the GPU
  when there is one;
- with `--fluency_fn module:function` (text -> bool; the demo's is `experiment.review_grammar:is_review`), the share
  of samples that ended (EOS before the token limit) and that the function accepts;
- the training cost, from the run's output_dir (`<runs_dir>/<model name>`, the scripts' default): train time, train
  tokens per second, the training process's CPU time (which, unlike wall time, a shared machine barely changes)
  and peak memory, and the step from which the smoothed loss is stable (`steps_to_stable_loss`).

Means come with their standard error over examples. Everything is written to one JSON file (results/results.json).
"""

import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
from accelerate import PartialState
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, ScriptArguments
from trl.data_utils import maybe_extract_prompt

from experiment.convergence import smooth, steps_to_stable_loss
from experiment.results import model_card_evaluation
from experiment.commands import command_parser, log_progress
from prefopt.atomic import atomic_file
from prefopt.data import check_columns, load_preference_dataset
from prefopt.errors import UserError, exit_on_user_error
from prefopt.model_card import CARD_FILE, set_card_section
from prefopt.modeling import load_model, load_tokenizer
from prefopt.run import RESOURCE_USAGE_FILE
from prefopt.run_logs import TRAINER_STATE, loss_curves, read_trainer_state

logger = logging.getLogger(__name__)

EXAMPLES = 3  # samples (prompt and completion) kept per model in the results, to read what the numbers describe

# A sequence to score: the prompt's token ids and the completion's (scored) token ids.
PromptCompletion = tuple[list[int], list[int]]


# --- Log-probabilities ----------------------------------------------------------------------------------------------
def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | list], completions: Sequence[str | list]
) -> list[PromptCompletion]:
    """Prompt and completion token ids of each prompt and completion, as TRL's DPO and KTO trainers build them.

    Text completions end with EOS, and texts are tokenized in one batch; conversations go through the chat template.
    The completion starts where the tokenized prompt and prompt + completion diverge, which is not always the prompt's
    end.
    """
    if any(isinstance(prompt, list) for prompt in prompts):
        prompt_ids = [
            tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
            for prompt in prompts
        ]
        full_ids = [
            tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)
            for prompt, completion in zip(prompts, completions)
        ]
    else:
        eos = tokenizer.eos_token
        completions = [completion if completion.endswith(eos) else completion + eos for completion in completions]
        prompt_ids = tokenizer(list(prompts))["input_ids"]
        full_ids = tokenizer([prompt + completion for prompt, completion in zip(prompts, completions)])["input_ids"]
    return [_split_at_divergence(prompt, full) for prompt, full in zip(prompt_ids, full_ids)]


def _split_at_divergence(prompt_ids: list[int], full_ids: list[int]) -> PromptCompletion:
    start = next(
        (i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), min(len(prompt_ids), len(full_ids))
    )
    return prompt_ids[:start], full_ids[start:]


def completion_logprobs(
    model: PreTrainedModel, sequences: Sequence[PromptCompletion], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(completion | prompt), summed over the completion's tokens, and the number of those tokens.

    Batched by length, so that little of each batch is padding; returned in the order of `sequences`.
    """
    order = sorted(range(len(sequences)), key=lambda index: sum(map(len, sequences[index])))
    sums, counts = torch.zeros(len(sequences)), torch.zeros(len(sequences), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [sequences[index] for index in rows]
        width = max(len(prompt) + len(completion) for prompt, completion in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        completion_mask = torch.zeros_like(input_ids)
        for row, (prompt, completion) in enumerate(batch):  # right padding: positions count from 0 as in training
            end = len(prompt) + len(completion)
            input_ids[row, :end] = torch.tensor(prompt + completion)
            attention_mask[row, :end] = 1
            completion_mask[row, len(prompt) : end] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
        token_logps = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:, None].to(model.device))
        mask = completion_mask[:, 1:].to(model.device)
        sums[rows] = (token_logps.squeeze(-1) * mask).sum(-1).cpu()
        counts[rows] = mask.sum(-1).cpu()
    return sums, counts


def outcomes(margins: torch.Tensor) -> list[float]:
    """Per pair: 1 where the margin (chosen minus rejected) is positive, 0 where negative, 0.5 on a tie."""
    return ((margins > 0).float() + 0.5 * (margins == 0).float()).tolist()


def pair_logprobs(
    model: PreTrainedModel, pairs: Sequence[tuple[PromptCompletion, PromptCompletion]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities and token counts of each pair's chosen and rejected completion, shaped (pairs, 2)."""
    logps, counts = completion_logprobs(model, [sequence for pair in pairs for sequence in pair])
    return logps.view(-1, 2), counts.view(-1, 2)


def preference_scores(logps: torch.Tensor, counts: torch.Tensor, base_logps: torch.Tensor) -> dict:
    """Both held-out preference accuracies, with their margins, from `pair_logprobs` of a model and of the base.

    The implicit reward is the summed log-ratio to the base (DPO's and KTO's, without beta); the length-normalised
    score is the mean per-token log-probability (SimPO's, without beta). Each `*_accuracy_gain` is the accuracy minus
    the base's on the same pairs, with the standard error of that paired difference: smaller than either accuracy's,
    since both models face the same pairs.
    """
    per_token, base_per_token = logps / counts.clamp(min=1), base_logps / counts.clamp(min=1)
    implicit_margins = _chosen_minus_rejected(logps - base_logps)
    measures = {
        # The base's implicit reward is 0 on every response: every pair ties.
        "implicit_reward": (implicit_margins, torch.zeros_like(implicit_margins)),
        "length_normalised": (_chosen_minus_rejected(per_token), _chosen_minus_rejected(base_per_token)),
    }
    scores = {}
    for name, (margins, base_margins) in measures.items():
        accuracy, base_accuracy = outcomes(margins), outcomes(base_margins)
        scores[f"{name}_accuracy"] = mean_stderr(accuracy)
        scores[f"{name}_accuracy_gain"] = mean_stderr([ours - base for ours, base in zip(accuracy, base_accuracy)])
        scores[f"{name}_margin"] = mean_stderr(margins.tolist())
    return scores


def _chosen_minus_rejected(scores: torch.Tensor) -> torch.Tensor:
    return scores[:, 0] - scores[:, 1]


# --- Samples --------------------------------------------------------------------------------------------------------
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    samples_per_prompt: int,
    seed: int,
    batch_size: int = 256,
    max_new_tokens: int | None = None,
) -> list[PromptCompletion]:
    """`samples_per_prompt` completions of each prompt (token ids, EOS included when generated), grouped by prompt.

    Drawn with the model's generation config from `seed`, up to `max_new_tokens` tokens if given: models evaluated with
    the same seed draw from the same random numbers, so that the comparison with the base model's samples is paired.
    """
    eos_ids = eos_token_ids(model)
    pad_id = tokenizer.pad_token_id
    requests = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    samples = []
    transformers.set_seed(seed)
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([[pad_id] * (width - len(prompt)) + prompt for prompt in batch])  # left padding
        attention_mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in batch])
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                # An explicit None would replace the generation config's limit with transformers' default max_length.
                **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}),
            )
        for prompt, generated in zip(batch, output[:, width:].tolist()):
            end = next((i + 1 for i, token in enumerate(generated) if token in eos_ids), len(generated))
            samples.append((prompt, generated[:end]))
    return samples


def eos_token_ids(model: PreTrainedModel) -> set[int]:
    """The tokens that end a sample under the model's generation config."""
    eos_ids = model.generation_config.eos_token_id
    return set(eos_ids if isinstance(eos_ids, list) else [eos_ids])


def distinct_fraction(completion: Sequence[int]) -> float:
    """The share of a sample's tokens that are distinct: near 1 for fluent short text, low for a repeated loop."""
    return len(set(completion)) / len(completion) if completion else 1.0


def win_outcomes(rewards: Sequence[float], base_rewards: Sequence[float]) -> list[float]:
    """Per sample: 1 if it scores above the base model's sample for the same prompt, 0 below, 0.5 on a tie."""
    return [1.0 if reward > base else 0.5 if reward == base else 0.0 for reward, base in zip(rewards, base_rewards)]


def load_function(spec: str, flag: str) -> Callable:
    """`module:function` -> the function, e.g. `experiment.gold_reward:gold_reward`; `flag` names it in errors."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"{flag}: cannot load '{spec}' (expected module:function): {error}") from None
    if not callable(function):
        raise UserError(f"{flag}: '{spec}' is not a function")
    return function


# --- Reward model ---------------------------------------------------------------------------------------------------
def load_reward_model(name_or_path: str, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification reward model with one output (the reward), and its own tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype="auto").to(device).eval()
    if model.config.num_labels != 1:
        raise UserError(
            f"--reward_model: '{name_or_path}' has {model.config.num_labels} labels; a reward model has one output"
        )
    if tokenizer.pad_token is None:  # as TRL's RewardTrainer pads
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def reward_model_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | list],
    completions: Sequence[str],
    batch_size: int = 32,
) -> list[float]:
    """The reward model's score of each prompt and completion, tokenized as TRL's RewardTrainer tokenizes its data.

    With a chat template the pair is a conversation (a string prompt becomes the user's message, the completion the
    assistant's); without one, the text prompt + completion + EOS.
    """
    if tokenizer.chat_template:
        sequences = [
            tokenizer.apply_chat_template(
                (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}])
                + [{"role": "assistant", "content": completion}],
                tokenize=True,
                return_dict=False,
            )
            for prompt, completion in zip(prompts, completions)
        ]
    else:
        if any(isinstance(prompt, list) for prompt in prompts):
            raise UserError(
                "--reward_model: conversational prompts need a reward model whose tokenizer has a chat template"
            )
        sequences = [
            tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
            for prompt, completion in zip(prompts, completions)
        ]
    scores = []
    for start in range(0, len(sequences), batch_size):
        batch = tokenizer.pad({"input_ids": sequences[start : start + batch_size]}, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch.to(model.device)).logits
        scores += logits[:, 0].float().tolist()
    return scores


def mean_stderr(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "stderr"}: the mean and its standard error, sample standard deviation / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    variance = sum((value - mean) ** 2 for value in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "stderr": math.sqrt(variance / n)}


# --- Training cost --------------------------------------------------------------------------------------------------
def train_tokens_per_epoch(pairs: Sequence[tuple[PromptCompletion, PromptCompletion]]) -> int:
    """Tokens of one pass over the train pairs: prompt + chosen and prompt + rejected, as all three trainers see them.

    Counted from the data because TRL's CPOTrainer (SimPO) does not log `num_tokens`; on the same data this equals
    what DPOTrainer and KTOTrainer log (without truncation to `max_length`).
    """
    return sum(len(prompt) + len(completion) for pair in pairs for prompt, completion in pair)


def training_cost(run_dir: str | Path, tokens_per_epoch: int) -> dict:
    """Train time, tokens per second, the process's CPU time and peak memory, and loss convergence of a run."""
    run_dir = Path(run_dir)
    state = read_trainer_state(run_dir)
    history = state["log_history"]
    runtime = next(entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry)
    steps, losses = loss_curves(history)["train"]
    smoothed = smooth(losses)
    usage_file = run_dir / RESOURCE_USAGE_FILE  # written by the scripts' finish_run
    usage = json.loads(usage_file.read_text()) if usage_file.is_file() else None
    tokens = state["epoch"] * tokens_per_epoch
    stable_step = steps_to_stable_loss(steps, losses)
    return {
        "run_dir": str(run_dir),
        "steps": state["global_step"],
        "epochs": state["epoch"],
        "train_runtime_s": runtime,
        "train_tokens": round(tokens),
        "tokens_per_second": tokens / runtime,
        "process_cpu_time_s": usage["cpu_time_s"] if usage else None,
        "peak_memory_mb": usage["peak_memory_bytes"] / 2**20 if usage else None,
        "initial_loss": smoothed[0],
        "final_loss": smoothed[-1],
        "steps_to_stable_loss": stable_step,
        "epochs_to_stable_loss": stable_step / state["global_step"] * state["epoch"],  # KTO: 2 steps per pair
    }


# --- Evaluation -----------------------------------------------------------------------------------------------------
# Rewards of samples (prompt and completion token ids), given their texts as the policy's tokenizer decodes them.
RewardOfSamples = Callable[[Sequence[PromptCompletion], list[str]], list[float]]


def load_rows(dataset: str, split: str) -> Dataset:
    """`dataset`'s `split`, checked, with an implicit prompt made explicit."""
    splits = load_preference_dataset(ScriptArguments(dataset_name=dataset, dataset_train_split=split))
    if split not in splits:
        raise UserError(f"{dataset}: no split '{split}' (splits: {', '.join(splits)})")
    rows = splits[split]
    check_columns(rows, f"{dataset} [{split}]")
    return rows.map(maybe_extract_prompt)


def load_pairs(
    tokenizer: PreTrainedTokenizerBase, dataset: str, split: str
) -> list[tuple[PromptCompletion, PromptCompletion]]:
    """The token ids of each (chosen, rejected) pair of `dataset`'s `split`, as the trainers tokenize them."""
    return _tokenize_rows(tokenizer, load_rows(dataset, split))


def evaluate_models(
    model_paths: Sequence[str | Path],
    base_model: str,
    dataset: str,
    split: str = "test",
    train_split: str = "train",
    runs_dir: str | Path | None = "outputs",
    reward_fn: str | None = None,
    reward_model: str | None = None,
    fluency_fn: str | None = None,
    num_prompts: int | None = None,
    samples_per_prompt: int = 8,
    max_new_tokens: int | None = None,
    seed: int = 0,
) -> dict:
    """Score the base model and each of `model_paths` on `dataset`'s `split`; the results as results.json holds them.

    Samples are drawn only with a reward, `reward_fn` or `reward_model`. The training cost of a model is read from
    `<runs_dir>/<model directory name>` when that holds a run.
    """
    if reward_fn and reward_model:
        raise UserError("pass --reward_fn or --reward_model, not both")
    start = time.perf_counter()
    device = PartialState().device
    # The tokenizer the first model was trained with: it carries the chat template that training used, if any.
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(model_paths[0])))
    rows = load_rows(dataset, split)
    pairs = _tokenize_rows(tokenizer, rows)
    # Held-out prompts in order of first appearance, as token ids and as the data holds them; each is sampled once.
    raw_prompts = {}
    for ((prompt, _), _), row in zip(pairs, rows):
        raw_prompts.setdefault(tuple(prompt), row["prompt"])
    prompts = [list(prompt) for prompt in raw_prompts][:num_prompts]
    reward = _reward_of_samples(reward_fn, reward_model, raw_prompts, tokenizer, device)
    fluency = load_function(fluency_fn, "--fluency_fn") if fluency_fn else None
    tokens_per_epoch = None

    base = _load_model(base_model, device)
    base_logps, base_counts = pair_logprobs(base, pairs)
    results = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "setup": {
            "base_model": base_model,
            "dataset": dataset,
            "split": split,
            "num_pairs": len(pairs),
            "reward_fn": reward_fn,
            "reward_model": reward_model,
            "fluency_fn": fluency_fn if reward else None,
            "num_prompts": len(prompts) if reward else 0,
            "samples_per_prompt": samples_per_prompt if reward else 0,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "device": str(device),
        },
        "base": preference_scores(base_logps, base_counts, base_logps),
    }
    if reward:
        base_samples = sample_completions(
            base, tokenizer, prompts, samples_per_prompt, seed, max_new_tokens=max_new_tokens
        )
        sample_scores, base_rewards = _score_samples(base, tokenizer, base_samples, reward, fluency)
        results["base"].update(sample_scores)
    results["models"] = {}
    for path in map(Path, model_paths):
        logger.info("evaluate: %s", path)
        model = _load_model(path, device)
        scores = preference_scores(*pair_logprobs(model, pairs), base_logps)
        if reward:
            samples = sample_completions(
                model, tokenizer, prompts, samples_per_prompt, seed, max_new_tokens=max_new_tokens
            )
            sample_scores, rewards = _score_samples(model, tokenizer, samples, reward, fluency)
            policy_logps, _ = completion_logprobs(model, samples)
            base_sample_logps, _ = completion_logprobs(base, samples)
            scores.update(sample_scores)
            scores["win_rate"] = mean_stderr(win_outcomes(rewards, base_rewards))
            scores["kl"] = mean_stderr((policy_logps - base_sample_logps).tolist())
        run_dir = Path(runs_dir) / path.name if runs_dir else None
        if run_dir and (run_dir / TRAINER_STATE).is_file():
            if tokens_per_epoch is None:
                tokens_per_epoch = train_tokens_per_epoch(load_pairs(tokenizer, dataset, train_split))
            scores["training"] = training_cost(run_dir, tokens_per_epoch)
        results["models"][path.name] = {"path": str(path), **scores}
        del model
    results["evaluation_time_s"] = time.perf_counter() - start
    return results


def _tokenize_rows(
    tokenizer: PreTrainedTokenizerBase, rows: Dataset
) -> list[tuple[PromptCompletion, PromptCompletion]]:
    prompts = list(rows["prompt"])
    chosen = tokenize_pairs(tokenizer, prompts, list(rows["chosen"]))
    rejected = tokenize_pairs(tokenizer, prompts, list(rows["rejected"]))
    return list(zip(chosen, rejected))


def _reward_of_samples(
    reward_fn: str | None,
    reward_model: str | None,
    raw_prompts: dict[tuple[int, ...], str | list],
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
) -> RewardOfSamples | None:
    """The reward that `--reward_fn` or `--reward_model` gives samples, or None without either."""
    if reward_fn:
        function = load_function(reward_fn, "--reward_fn")
        return lambda samples, texts: [float(function(text)) for text in texts]
    if reward_model:
        model, model_tokenizer = load_reward_model(reward_model, device)
        return lambda samples, texts: reward_model_scores(
            model,
            model_tokenizer,
            [raw_prompts[tuple(prompt)] for prompt, _ in samples],
            tokenizer.batch_decode([completion for _, completion in samples], skip_special_tokens=True),
        )
    return None


def _load_model(path: str | Path, device: torch.device) -> PreTrainedModel:
    model = load_model(ModelConfig(model_name_or_path=str(path))).to(device).eval()
    config = model.generation_config
    if not config.do_sample or config.temperature != 1.0 or config.top_k or config.top_p != 1.0:
        logger.warning("%s: its generation config does not sample from the model as is: the KL is then biased", path)
    return model


def _score_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[PromptCompletion],
    reward: RewardOfSamples,
    fluency: Callable[[str], bool] | None,
) -> tuple[dict, list[float]]:
    """The reward, length, distinct tokens and fluency of `samples`, and a few of them to read; and each reward."""
    texts = tokenizer.batch_decode([prompt + completion for prompt, completion in samples], skip_special_tokens=True)
    rewards = reward(samples, texts)
    scores = {
        "reward": mean_stderr(rewards),
        "sample_length": mean_stderr([len(completion) for _, completion in samples]),
        "distinct_fraction": mean_stderr([distinct_fraction(completion) for _, completion in samples]),
    }
    if fluency:
        eos_ids = eos_token_ids(model)
        # A sample cut off at the token limit is unfinished, however its text reads.
        ended = [bool(completion) and completion[-1] in eos_ids for _, completion in samples]
        scores["fluency"] = mean_stderr([float(end and bool(fluency(text))) for end, text in zip(ended, texts)])
    per_prompt = len(samples) // len({tuple(prompt) for prompt, _ in samples})
    scores["examples"] = texts[: EXAMPLES * per_prompt : per_prompt]
    return scores, rewards


def add_evaluation_to_model_cards(results: dict) -> None:
    """Give each evaluated model that this repository's scripts merged (those have a card) its Evaluation section."""
    for name, model in results["models"].items():
        if (Path(model["path"]) / CARD_FILE).is_file():
            set_card_section(model["path"], "Evaluation", model_card_evaluation(results, name))


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("experiment.evaluate", __doc__)
    parser.add_argument(
        "models", nargs="*", help="merged model directories (default: every model in models/ but the base)"
    )
    parser.add_argument("--base_model", default="models/demo-base", help="the model the others were trained from")
    parser.add_argument("--dataset", default="data/demo", help="preference data, as the scripts' dataset_name")
    parser.add_argument("--split", default="test", help="the held-out split to score on")
    parser.add_argument("--train_split", default="train", help="the split the runs trained on, to count train tokens")
    parser.add_argument("--runs_dir", default="outputs", help="where each model's run (output_dir) is, by model name")
    parser.add_argument("--reward_fn", help="module:function scoring a text; without a reward no samples are drawn")
    parser.add_argument("--reward_model", help="a sequence-classification reward model: a directory or a hub id")
    parser.add_argument("--fluency_fn", help="module:function telling (True/False) whether a sample's text is fluent")
    parser.add_argument("--num_prompts", type=int, help="held-out prompts to sample for (default: all)")
    parser.add_argument("--samples_per_prompt", type=int, default=8, help="samples per prompt and model")
    parser.add_argument("--max_new_tokens", type=int, help="longest sample (default: each model's generation config)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling, the same for every model")
    parser.add_argument("--output", default="results/results.json", help="where the results are written")
    args = parser.parse_args(argv)
    log_progress()

    models = args.models or sorted(
        str(path.parent)
        for path in Path("models").glob("*/config.json")
        if path.parent.resolve() != Path(args.base_model).resolve()
    )
    if not models:
        raise UserError("no models to evaluate: pass merged model directories, or train some into models/")
    for model in models:
        if not (Path(model) / "config.json").is_file():
            raise UserError(f"no model at '{model}' (expected a directory holding config.json)")
    results = evaluate_models(
        models,
        args.base_model,
        args.dataset,
        split=args.split,
        train_split=args.train_split,
        runs_dir=args.runs_dir,
        reward_fn=args.reward_fn,
        reward_model=args.reward_model,
        fluency_fn=args.fluency_fn,
        num_prompts=args.num_prompts,
        samples_per_prompt=args.samples_per_prompt,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    with atomic_file(args.output) as staging:
        staging.write_text(json.dumps(results, indent=2) + "\n")
    add_evaluation_to_model_cards(results)
    logger.info("evaluate: %d models in %.0fs -> %s", len(models), results["evaluation_time_s"], args.output)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
