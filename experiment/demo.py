"""The default experiment's assets, built offline from a seed: a tiny base model and gold-labelled preference pairs.

A toy version of the DPO paper's controlled-sentiment experiment (IMDb):

1. synthetic movie reviews from a template grammar (`experiment.review_grammar`), positive, negative or mixed;
2. a byte-level BPE tokenizer trained on them, with a ChatML-like chat template;
3. a tiny Llama pretrained on them, so that most of its samples are reviews of the grammar, of either sentiment;
4. preference pairs binarised from six samples of the base model per prompt: the one with the highest gold reward
   (`experiment.gold_reward`) is chosen, the lowest rejected, when they are at least 0.2 apart; a fraction of the
   train labels is then flipped, as human labels are noisy.

`python -m experiment.demo` builds whatever is missing under `models/demo-base` and `data/demo`.
"""

import contextlib
import inspect
import json
import logging
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from experiment.commands import command_parser, log_progress
from prefopt.atomic import atomic_directory
from experiment.gold_reward import gold_reward_batch
from experiment.review_grammar import PROMPTS, synthetic_reviews

logger = logging.getLogger(__name__)

# --- Tokenizer and model --------------------------------------------------------------------------------------------
_BOS, _EOS, _PAD, _UNK = "<s>", "</s>", "<pad>", "<unk>"
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_VOCAB_SIZE = 1000  # an upper bound: merges stop once every word of the grammar is a single token
_MAX_POSITIONS = 128  # a review is under 50 tokens
_MODEL_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
_PRETRAIN_BATCH_SIZE = 32
_PRETRAIN_LEARNING_RATE = 3e-3
_MAX_THREADS = 4  # a model this small gains nothing from more

# --- Preference pairs -----------------------------------------------------------------------------------------------
_TEST_PROMPT_FRACTION = 0.15
_MAX_NEW_TOKENS = 32  # room for the longest continuation of the grammar (28 tokens) and its EOS
# The trainers' periodic evaluation reads the first of the held-out pairs: all 1000 would add 40-50% to training time.
_VALIDATION_PAIRS = 200
_SAMPLING_BATCH_SIZE = 512  # samples per `generate` call
_MAX_SAMPLING_ROUNDS = 50  # a prompt whose samples leave no pair is resampled, at most this many times

_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_DATA_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl")


def build_demo_assets(
    model_dir: str | Path = "models/demo-base",
    data_dir: str | Path = "data/demo",
    *,
    seed: int = 0,
    num_train_pairs: int = 4000,
    num_test_pairs: int = 1000,
    pretrain_steps: int = 300,
    samples_per_prompt: int = 6,
    min_margin: float = 0.2,
    label_noise: float = 0.1,
    force: bool = False,
) -> None:
    """Build the base model in `model_dir` and the preference pairs in `data_dir`, each only if missing.

    The model is complete when `config.json`, `model.safetensors` and `tokenizer.json` exist; the data when
    `train.jsonl`, `validation.jsonl` and `test.jsonl` do; `validation.jsonl` is the first 200 test pairs, for the
    trainers' evaluation every `eval_steps`, and nothing is selected on it. `force` rebuilds both. The same seed gives
    the same files on the same machine, and a killed build never leaves a directory that looks complete.

    Args:
        seed: Seeds the corpus, the model's initialisation and training, the sampling and the label noise.
        num_train_pairs: Pairs in `train.jsonl`, sampled from 85% of the prompts.
        num_test_pairs: Pairs in `test.jsonl`, sampled from the other 15%, so that the test prompts are held out. 1000
            resolve a model's accuracy gain over the base to a paired standard error of about 0.014 (2000: 0.010, for
            15 s more of the default experiment; 200: 0.03, as large as the differences the experiment is after).
        pretrain_steps: Optimizer steps of pretraining, each on a batch of reviews not seen before.
        samples_per_prompt: Samples of the base model drawn for each pair; the best is chosen, the worst rejected.
        min_margin: Least gold-reward gap between chosen and rejected, before label noise.
        label_noise: Probability that a train pair's chosen and rejected are swapped. Test labels stay clean, so that
            held-out preference accuracy measures agreement with the gold reward.
        force: Rebuild even what exists.
    """
    if min(num_train_pairs, num_test_pairs, pretrain_steps) < 1 or samples_per_prompt < 2:
        raise ValueError("num_train_pairs, num_test_pairs, pretrain_steps must be at least 1, samples_per_prompt 2")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    build_model = force or not all((model_dir / name).is_file() for name in _MODEL_FILES)
    # A new base model needs new pairs: they are its own samples.
    build_data = build_model or not all((data_dir / name).is_file() for name in _DATA_FILES)
    if not build_data:
        logger.info("demo: %s and %s are complete, nothing to build", model_dir, data_dir)
        return

    # A private RNG state and thread count: building must not change what the caller's code samples or runs on.
    with torch.random.fork_rng(devices=[]), _torch_threads(min(_MAX_THREADS, torch.get_num_threads())):
        if build_model:
            _build_base_model(model_dir, seed=seed, pretrain_steps=pretrain_steps)
        else:
            logger.info("demo: %s is complete, sampling the pairs from it", model_dir)
        _build_preference_data(
            model_dir,
            data_dir,
            seed=seed,
            num_train_pairs=num_train_pairs,
            num_test_pairs=num_test_pairs,
            samples_per_prompt=samples_per_prompt,
            min_margin=min_margin,
            label_noise=label_noise,
        )


def split_prompts(seed: int) -> tuple[list[str], list[str]]:
    """All review openings, split into train and held-out test prompts (about 85% and 15%)."""
    prompts = [prompt for prompt, _ in PROMPTS]
    _rng(seed, "split").shuffle(prompts)
    num_test = round(_TEST_PROMPT_FRACTION * len(prompts))
    return prompts[num_test:], prompts[:num_test]


def document_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, reviews: list[str]) -> float:
    """Mean next-token loss (nats) of `model` on `reviews` as `<bos>review<eos>` documents."""
    with torch.no_grad():
        return model(**_document_batch(tokenizer, reviews)).loss.item()


def _rng(seed: int, purpose: str) -> random.Random:
    """An RNG per purpose, so that e.g. changing the number of pairs leaves the prompt split unchanged."""
    return random.Random(f"{purpose}-{seed}")


# --- Tokenizer and base model ---------------------------------------------------------------------------------------
def _build_base_model(model_dir: Path, *, seed: int, pretrain_steps: int) -> None:
    """Train the tokenizer and pretrain the tiny Llama on synthetic reviews; save both to `model_dir`."""
    start = time.perf_counter()
    reviews = synthetic_reviews(pretrain_steps * _PRETRAIN_BATCH_SIZE, seed)
    tokenizer = _train_tokenizer(reviews)
    logger.info(
        "demo: generated %d reviews and trained a tokenizer (vocab %d) in %.1fs",
        len(reviews),
        len(tokenizer),
        time.perf_counter() - start,
    )

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=_MAX_POSITIONS,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **_MODEL_SHAPE,
        )
    )
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,  # plain ancestral sampling: transformers would otherwise default to top_k=50
        top_p=1.0,
        max_new_tokens=_MAX_NEW_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    loss = _pretrain(model, tokenizer, reviews)
    with atomic_directory(model_dir) as staging_dir:
        model.save_pretrained(staging_dir)
        tokenizer.save_pretrained(staging_dir)
    logger.info(
        "demo: pretrained base model (%.2fM parameters, %d steps, final loss %.2f) in %.1fs -> %s",
        model.num_parameters() / 1e6,
        pretrain_steps,
        loss,
        time.perf_counter() - start,
        model_dir,
    )


def _train_tokenizer(reviews: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text round-trips) that adds BOS, as TRL expects of a base model's tokenizer."""
    tokenizer = Tokenizer(models.BPE(unk_token=_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=[_PAD, _BOS, _EOS, _UNK, _IM_START, _IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(reviews, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{_BOS} $A", pair=f"{_BOS} $A $B:1", special_tokens=[(_BOS, tokenizer.token_to_id(_BOS))]
    )
    # Saved as PreTrainedTokenizerFast ("TokenizersBackend" in transformers 5), AutoTokenizer loads tokenizer.json as
    # is; saved as a LlamaTokenizer, it would be rebuilt from the vocabulary with Llama's own pre-tokenizer.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_PAD,
        unk_token=_UNK,
        extra_special_tokens=[_IM_START, _IM_END],
        chat_template=_CHAT_TEMPLATE,
        model_max_length=_MAX_POSITIONS,
    )


def _pretrain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, reviews: list[str]) -> float:
    """One pass over `reviews` as `<bos>review<eos>` documents (so it learns to stop); returns the last loss."""
    num_steps = len(reviews) // _PRETRAIN_BATCH_SIZE
    optimizer = torch.optim.AdamW(model.parameters(), lr=_PRETRAIN_LEARNING_RATE, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_steps // 10, num_training_steps=num_steps)
    model.train()
    for step in range(num_steps):
        batch = _document_batch(tokenizer, reviews[step * _PRETRAIN_BATCH_SIZE : (step + 1) * _PRETRAIN_BATCH_SIZE])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    return loss.item()


def _document_batch(tokenizer: PreTrainedTokenizerFast, reviews: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded `<bos>review<eos>` token ids, with labels that ignore the padding."""
    batch = tokenizer([review + tokenizer.eos_token for review in reviews], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}


# --- Preference pairs -----------------------------------------------------------------------------------------------
def _build_preference_data(
    model_dir: Path,
    data_dir: Path,
    *,
    seed: int,
    num_train_pairs: int,
    num_test_pairs: int,
    samples_per_prompt: int,
    min_margin: float,
    label_noise: float,
) -> None:
    """Sample and label the train and test pairs with the base model in `model_dir`; write them to `data_dir`."""
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    train_prompts, test_prompts = split_prompts(seed)

    sampling = dict(samples_per_prompt=samples_per_prompt, min_margin=min_margin)
    # Each split from its own seed: the held-out pairs stay the same whatever the number of train pairs.
    torch.manual_seed(_rng(seed, "train-sampling").getrandbits(63))
    train_pairs, train_margins, train_rewards = _sample_preference_pairs(
        model, tokenizer, train_prompts, num_train_pairs, **sampling
    )
    torch.manual_seed(_rng(seed, "test-sampling").getrandbits(63))
    test_pairs, test_margins, test_rewards = _sample_preference_pairs(
        model, tokenizer, test_prompts, num_test_pairs, **sampling
    )
    num_flipped = _flip_labels(train_pairs, label_noise, _rng(seed, "label-noise"))
    validation_pairs = test_pairs[:_VALIDATION_PAIRS]

    base_rewards = train_rewards + test_rewards
    metadata = {
        "seed": seed,
        "num_train_pairs": num_train_pairs,
        "num_test_pairs": num_test_pairs,
        "num_validation_pairs": len(validation_pairs),
        "num_train_prompts": len(train_prompts),
        "num_test_prompts": len(test_prompts),
        "samples_per_prompt": samples_per_prompt,
        "min_margin": min_margin,
        "label_noise": label_noise,
        "train_chosen_better_fraction": 1 - num_flipped / num_train_pairs,
        "test_chosen_better_fraction": 1.0,
        "train_margin": _distribution(train_margins),
        "test_margin": _distribution(test_margins),
        "num_base_samples": len(base_rewards),
        "base_mean_gold_reward": sum(base_rewards) / len(base_rewards),
        "base_fluent_fraction": sum(reward > 0 for reward in base_rewards) / len(base_rewards),
        "base_positive_fraction": sum(reward > 0.5 for reward in base_rewards) / len(base_rewards),
        "base_negative_fraction": sum(0 < reward < 0.5 for reward in base_rewards) / len(base_rewards),
        "sampling": {
            "temperature": model.generation_config.temperature,
            "max_new_tokens": model.generation_config.max_new_tokens,
        },
    }
    with atomic_directory(data_dir) as staging_dir:
        (staging_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        splits = {"train": train_pairs, "validation": validation_pairs, "test": test_pairs}
        for split, pairs in splits.items():
            (staging_dir / f"{split}.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    logger.info(
        "demo: sampled %d train and %d test pairs, median gold margin %.2f (base samples: %.0f%% reviews of the "
        "grammar, mean gold reward %.2f) in %.1fs -> %s",
        num_train_pairs,
        num_test_pairs,
        metadata["train_margin"]["median"],
        100 * metadata["base_fluent_fraction"],
        metadata["base_mean_gold_reward"],
        time.perf_counter() - start,
        data_dir,
    )


def _sample_preference_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    num_pairs: int,
    *,
    samples_per_prompt: int,
    min_margin: float,
) -> tuple[list[dict[str, str]], list[float], list[float]]:
    """`num_pairs` pairs over `prompts` in turn; their gold margins; and every sample's gold reward.

    Binarised as UltraFeedback is, from `samples_per_prompt` samples of `model` for the prompt: the best by gold reward
    is chosen; the rejected is the worst, as in SimPO's on-policy data, rather than UltraFeedback's random other one.
    Measured at the v1 configs' learning rate (one seed, four samples per prompt): with a random worse rejected, KTO's
    and SimPO's samples were less often reviews than the base's; with pairs of two reviews, almost none of the three
    policies' samples were. A pair needs a gold margin of at least `min_margin`; a prompt whose samples leave none (all
    alike, or none a review) is sampled again, and so is a sample that is empty or does not start with a space.
    """
    pairs: list[dict[str, str] | None] = [None] * num_pairs
    margins: list[float] = [0.0] * num_pairs
    rewards: list[float] = []
    prompts_per_batch = max(1, _SAMPLING_BATCH_SIZE // samples_per_prompt)
    for _ in range(_MAX_SAMPLING_ROUNDS):
        pending = [index for index, pair in enumerate(pairs) if pair is None]
        if not pending:
            return pairs, margins, rewards
        for batch_start in range(0, len(pending), prompts_per_batch):
            indices = pending[batch_start : batch_start + prompts_per_batch]
            batch_prompts = [prompts[index % len(prompts)] for index in indices for _ in range(samples_per_prompt)]
            completions = _sample_completions(model, tokenizer, batch_prompts)
            completion_rewards = gold_reward_batch(map(str.__add__, batch_prompts, completions))
            rewards += completion_rewards
            for position, index in enumerate(indices):
                group = slice(position * samples_per_prompt, (position + 1) * samples_per_prompt)
                scored = [
                    (completion, reward)
                    for completion, reward in zip(completions[group], completion_rewards[group])
                    if _is_continuation(completion)
                ]
                if not scored:
                    continue
                chosen, best = max(scored, key=lambda sample: sample[1])
                rejected, worst = min(scored, key=lambda sample: sample[1])
                if worst <= best - min_margin:
                    pairs[index] = {"prompt": batch_prompts[group.start], "chosen": chosen, "rejected": rejected}
                    margins[index] = best - worst
    raise RuntimeError(
        f"{sum(pair is None for pair in pairs)} of {num_pairs} prompts still have no pair {min_margin} apart after "
        f"{_MAX_SAMPLING_ROUNDS} rounds of sampling: lower min_margin, or pretrain the base model for more steps"
    )


def _distribution(values: list[float]) -> dict[str, float]:
    """Mean, extremes and quartiles (with the 10th and 90th percentiles) of `values`."""
    ordered = sorted(values)
    quantiles = statistics.quantiles(ordered, n=20, method="inclusive")
    return {
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "p10": quantiles[1],
        "p25": statistics.quantiles(ordered, n=4, method="inclusive")[0],
        "median": statistics.median(ordered),
        "p75": statistics.quantiles(ordered, n=4, method="inclusive")[2],
        "p90": quantiles[17],
        "max": ordered[-1],
    }


def _sample_completions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> list[str]:
    """One sample per prompt with the model's generation config, as text without special tokens."""
    batch = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**batch)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def _is_continuation(completion: str) -> bool:
    """Starts a new word (so the prompt's tokens are a prefix of prompt + completion's) and holds some text."""
    return completion.startswith(" ") and bool(completion.strip())


def _flip_labels(pairs: list[dict[str, str]], label_noise: float, rng: random.Random) -> int:
    """Swap chosen and rejected of each pair with probability `label_noise`; returns how many were swapped."""
    num_flipped = 0
    for pair in pairs:
        if rng.random() < label_noise:
            pair["chosen"], pair["rejected"] = pair["rejected"], pair["chosen"]
            num_flipped += 1
    return num_flipped


# --- Files and runtime ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> None:
    """`python -m experiment.demo [--force] [--seed N] [--model_dir DIR] [--data_dir DIR] ...`"""
    parser = command_parser("experiment.demo", __doc__)
    parser.add_argument("--model_dir", help="where the base model goes")
    parser.add_argument("--data_dir", help="where the preference pairs go")
    parser.add_argument("--seed", type=int, help="seed of the whole build")
    parser.add_argument("--num_train_pairs", type=int, help="pairs in train.jsonl")
    parser.add_argument("--num_test_pairs", type=int, help="pairs in test.jsonl")
    parser.add_argument("--pretrain_steps", type=int, help="pretraining steps of the base model")
    parser.add_argument(
        "--samples_per_prompt", type=int, help="base samples per pair; the best is chosen, the worst rejected"
    )
    parser.add_argument("--min_margin", type=float, help="least gold-reward gap between chosen and rejected")
    parser.add_argument("--label_noise", type=float, help="probability of flipping a train label")
    parser.add_argument("--force", action="store_true", help="rebuild the model and the data even if they exist")
    # The defaults are those of `build_demo_assets`, so that they are written down once.
    parser.set_defaults(**{name: p.default for name, p in inspect.signature(build_demo_assets).parameters.items()})
    args = parser.parse_args(argv)
    log_progress()
    transformers.utils.logging.disable_progress_bar()  # one line per step
    build_demo_assets(**vars(args))


if __name__ == "__main__":
    main()
