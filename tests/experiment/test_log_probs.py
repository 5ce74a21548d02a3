"""Log-probabilities of completions: tokenized as TRL's trainers tokenize them, batched without changing a score."""

import pytest
import torch
import transformers

from experiment.log_probs import completion_logprobs, tokenize_pairs
from experiment.samples import sample_completions


def test_completion_ends_with_eos_as_trl_adds_it(demo_base):
    tokenizer, _ = demo_base
    [(prompt, completion)] = tokenize_pairs(tokenizer, ["The film was"], [" great."])
    assert prompt == tokenizer("The film was")["input_ids"]
    assert tokenizer.decode(prompt + completion) == "<s>The film was great.</s>"


def test_texts_tokenized_in_one_batch_as_one_by_one(demo_base):
    tokenizer, _ = demo_base
    prompts = ["The film was", "I watched this film last night and", "The plot"]
    completions = [" great.", " it was dull and slow.</s>", " thin"]  # one already ends with EOS: not added twice
    batched = tokenize_pairs(tokenizer, prompts, completions)
    for (prompt_ids, completion_ids), prompt, completion in zip(batched, prompts, completions):
        assert prompt_ids == tokenizer(prompt)["input_ids"]
        assert prompt_ids + completion_ids == tokenizer(prompt + completion.removesuffix("</s>") + "</s>")["input_ids"]


def test_conversations_split_where_the_chat_template_adds_the_answer(demo_base):
    tokenizer, _ = demo_base
    prompt = [{"role": "user", "content": "Review the film."}]
    completion = [{"role": "assistant", "content": "It was great."}]
    [(prompt_ids, completion_ids)] = tokenize_pairs(tokenizer, [prompt], [completion])
    assert prompt_ids == tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
    assert prompt_ids + completion_ids == tokenizer.apply_chat_template(prompt + completion, return_dict=False)
    assert tokenizer.decode(completion_ids) == "It was great.<|im_end|>\n"


def test_logprobs_batched_by_length_come_back_in_input_order(demo_base):
    """Sorted by length into batches, each sequence still gets its own score: the same as scored alone."""
    tokenizer, model = demo_base
    texts = [("The film was", " great."), ("I watched this film last night and", " it was dull."), ("The", " plot")]
    sequences = tokenize_pairs(tokenizer, *map(list, zip(*texts))) * 3
    logps, counts = completion_logprobs(model, sequences, batch_size=2)
    for row, sequence in enumerate(sequences):
        alone_logps, alone_counts = completion_logprobs(model, [sequence], batch_size=1)
        assert logps[row].item() == pytest.approx(alone_logps.item(), abs=1e-4)
        assert counts[row] == alone_counts.item() == len(sequence[1])


def test_sample_logprobs_are_those_generate_sampled_with(demo_base):
    """Scored right-padded, a left-padded sample gets the log-probability generate drew it with: no position shift."""
    tokenizer, model = demo_base
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
