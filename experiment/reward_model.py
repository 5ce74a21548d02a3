"""A sequence-classification reward model, loaded and scoring prompts and completions as TRL's RewardTrainer
tokenizes them."""

from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prefopt.errors import UserError


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
