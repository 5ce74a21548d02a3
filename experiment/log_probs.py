"""Log-probabilities of completions, tokenized as TRL's trainers tokenize them: what both held-out preference
accuracies and the KL of samples read."""

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A sequence to score: the prompt's token ids and the completion's (scored) token ids.
PromptCompletion = tuple[list[int], list[int]]


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


def pair_logprobs(
    model: PreTrainedModel, pairs: Sequence[tuple[PromptCompletion, PromptCompletion]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities and token counts of each pair's chosen and rejected completion, shaped (pairs, 2)."""
    logps, counts = completion_logprobs(model, [sequence for pair in pairs for sequence in pair])
    return logps.view(-1, 2), counts.view(-1, 2)
