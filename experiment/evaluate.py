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
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, ScriptArguments
from trl.data_utils import maybe_extract_prompt

from experiment.commands import command_parser, log_progress
from experiment.log_probs import PromptCompletion, completion_logprobs, pair_logprobs, tokenize_pairs
from experiment.preference_accuracy import preference_scores
from experiment.results import model_card_evaluation
from experiment.reward_model import load_reward_model, reward_model_scores
from experiment.samples import RewardOfSamples, sample_completions, score_samples, win_outcomes
from experiment.standard_error import mean_stderr
from experiment.training_cost import train_tokens_per_epoch, training_cost
from prefopt.atomic import atomic_file
from prefopt.data import check_columns, load_preference_dataset
from prefopt.errors import UserError, exit_on_user_error
from prefopt.model_card import CARD_FILE, set_card_section
from prefopt.modeling import load_model, load_tokenizer
from prefopt.run_logs import TRAINER_STATE

logger = logging.getLogger(__name__)


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
        sample_scores, base_rewards = score_samples(base, tokenizer, base_samples, reward, fluency)
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
            sample_scores, rewards = score_samples(model, tokenizer, samples, reward, fluency)
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


def _load_model(path: str | Path, device: torch.device) -> PreTrainedModel:
    model = load_model(ModelConfig(model_name_or_path=str(path))).to(device).eval()
    config = model.generation_config
    if not config.do_sample or config.temperature != 1.0 or config.top_k or config.top_p != 1.0:
        logger.warning("%s: its generation config does not sample from the model as is: the KL is then biased", path)
    return model


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
