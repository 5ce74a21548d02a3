"""Samples of a model for the held-out prompts, and what is read off them: their reward, length, distinct tokens and
fluency, a few to read, and their win rate against the base model's samples."""

from collections.abc import Callable, Sequence

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from experiment.log_probs import PromptCompletion
from experiment.standard_error import mean_stderr

EXAMPLES = 3  # samples (prompt and completion) kept per model in the results, to read what the numbers describe

# Rewards of samples (prompt and completion token ids), given their texts as the policy's tokenizer decodes them.
RewardOfSamples = Callable[[Sequence[PromptCompletion], list[str]], list[float]]


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


def score_samples(
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
