"""The `recipes` suite: the shipped GPU recipes, as they are and over the settings that may make them faster.

    python -m benchmark recipes                  # every recipe; about 8 min on one H100 or H200 (estimate below)
    python -m benchmark recipes --quick          # the 0.5B DPO recipe's main settings; about 2 min
    python -m benchmark recipes --scale tiny     # the same at a CPU's size: the default without a GPU

For each recipe of `RECIPES` it builds, without a hub:
- a model of the recipe's exact architecture, from `benchmark/architectures/<model>.json` (the model's config.json;
  sources named below), with random weights;
- a byte-level tokenizer without merges, so that a text of n characters is n tokens;
- synthetic data in the recipe's format (pairs; unpaired completions for KTO) with the token lengths of `LENGTHS`,
  one epoch of `--max_steps` steps at the recipe's effective batch.
Then it runs `--max_steps` steps of TRL's example script on the recipe as it is, of ours as it is, and of ours with
the micro-batch raised (accumulation lowered to keep the effective batch) and, at the largest micro-batch, with each
setting of the recipe's grid. Every run logs each step's loss and gradient norm: settings that keep the math keep
them equal within noise, and a setting that changes it (`group_by_length` changes the batches) shows.

At `--scale tiny` the architectures keep their family and shape but not their size (`TINY_ARCHITECTURE`), the
lengths and `max_length` shrink by `TINY_LENGTH_DIVISOR`, and the runs use float32 and no LoRA dropout, so that the
settings that keep the math give the same numbers to float precision. Its speeds say nothing about a GPU's.

Not in the grids:
- `padding_free`: TRL 1.16's DPOTrainer turns it off again with a warning; KTO and CPO have none, and none of the
  three has packing;
- `group_by_length` for KTO: KTOTrainer's KL term needs sequential sampling and refuses any other;
- `torch_compile`: one compile of the forward and backward, and a second for the varying sequence lengths, cost more
  than the rest of a recipe's grid, and 3 steps show only the compiling. `--settings` adds it (or any setting) to
  the grids of `--recipes`.

Time budget, by arithmetic and not measured (no GPU was at hand when it was written). Assumptions: a run's fixed
cost (imports, loading, tokenizing, the trainer) is 10 s, 25 s for the 8B model (reading 16 GB, quantizing it);
building the assets 10 s, and 25 s for the 8B model; a recipe as it is trains 4,000 tokens/s on the 0.5B model (the
issue's measurement of the DPO recipe on an H200: 5.9 s per step of 23,700 tokens, 1.2% MFU) and 1,900 tokens/s on
the 8B (9% MFU, a guess: its larger matrix products use the card better); half the micro-batches take half the time;
the largest micro-batch runs at 25% MFU. At 3 steps a 0.5B run then takes 28 s as it is and 11 s at the largest micro-batch, an
8B run 62 s and 39 s: `--quick`, 5 runs, 1.6 min; the full grid, 21 runs, 8.0 min.
"""

import argparse
import json
import math
import random
import string
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from benchmark.configs import training_config
from benchmark.runs import PREFOPT, TRL, Variant, in_fresh_process
from benchmark.summaries import Reference

ARCHITECTURES_DIR = Path(__file__).resolve().parent / "architectures"

# The hub's own pages were not reachable where the architectures' files were written. Their values are those of the
# mirrors named here, which differ only where the architecture does not (transformers_version; Qwen's sliding_window,
# unused with use_sliding_window false), and give the models' published sizes: 494.0M and 8,030.3M parameters.
# - qwen2.5-0.5b-instruct.json: https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/blob/main/config.json, as copied by
#   https://huggingface.co/unsloth/Qwen2.5-0.5B-Instruct/blob/00bafb7cd8d700177637919923d0e579fe0cfa5f/config.json
# - llama-3.1-8b-instruct.json: https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json, as
#   copied by https://huggingface.co/NaniDAO/Meta-Llama-3.1-8B-Instruct-ablated/blob/
#   c4e4c2b4bfa8c8423b5364ad65eeef8f64b93e8b/config.json

# Same family, the same ratios of heads and of hidden to MLP width, a CPU's size.
TINY_ARCHITECTURE = {
    "qwen2.5-0.5b-instruct": {
        "hidden_size": 56, "intermediate_size": 304, "num_hidden_layers": 2, "num_attention_heads": 7,
        "num_key_value_heads": 1, "head_dim": 8, "vocab_size": 2048,
    },
    "llama-3.1-8b-instruct": {
        "hidden_size": 64, "intermediate_size": 224, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 2048,
    },
}  # fmt: skip
TINY_LENGTH_DIVISOR = 8


@dataclass(frozen=True)
class LogNormal:
    """Token counts drawn as round(median * exp(sigma * N(0, 1))), clipped to [low, high]."""

    median: float
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random, divisor: int = 1) -> int:
        value = round(rng.lognormvariate(math.log(self.median / divisor), self.sigma))
        return min(max(value, math.ceil(self.low / divisor)), self.high // divisor)


# No public source gives UltraFeedback's (or kto-mix-14k's) token lengths; these match an earlier measurement of the
# 0.5B DPO recipe on a GPU, pairs of sequences of about 370 tokens: prompts of 130 tokens on average (median 96), responses of 228 (median
# 200), sequences of 359 with the EOS (95th percentile 659), with the long right tail of text lengths that makes
# padding, and so group_by_length, matter. Prompt plus response stays within max_length (1024), so that no trainer
# truncates and every runner trains the same tokens.
LENGTHS = {
    "prompt": LogNormal(median=96, sigma=0.8, low=8, high=512),
    "response": LogNormal(median=200, sigma=0.6, low=8, high=511),
}


@dataclass(frozen=True)
class Recipe:
    """A shipped recipe, its model, and the grid measured on it: micro-batches, and settings at the largest one."""

    algorithm: str
    architecture: str
    micro_batches: tuple[int, ...]
    settings: tuple[str, ...]


# Flags of each setting and the algorithms whose trainer takes it.
SETTINGS = {
    "gradient_checkpointing=false": (("--gradient_checkpointing", "false"), ("dpo", "kto", "simpo")),
    "precompute_ref_log_probs": (("--precompute_ref_log_probs", "true"), ("dpo", "kto")),
    # DPO's tokenized data has no input_ids to infer lengths from: the sampler reads the data's `length` column,
    # which DPO drops unless told to keep unused columns (CPO keeps them anyway).
    "group_by_length": (
        ("--train_sampling_strategy", "group_by_length", "--remove_unused_columns", "false"),
        ("dpo", "simpo"),
    ),
    "use_fused_lm_head": (("--use_fused_lm_head", "true"), ("simpo",)),
    "torch_compile": (("--torch_compile", "true"), ("dpo", "kto", "simpo")),
}

RECIPES = {
    "qwen2.5-0.5b-instruct/dpo": Recipe(
        "dpo", "qwen2.5-0.5b-instruct", (16, 32),
        ("gradient_checkpointing=false", "precompute_ref_log_probs", "group_by_length"),
    ),
    "qwen2.5-0.5b-instruct/kto": Recipe(
        "kto", "qwen2.5-0.5b-instruct", (32,), ("gradient_checkpointing=false", "precompute_ref_log_probs")
    ),
    "qwen2.5-0.5b-instruct/simpo": Recipe(
        "simpo", "qwen2.5-0.5b-instruct", (32,), ("gradient_checkpointing=false", "use_fused_lm_head", "group_by_length")
    ),
    # A run of the 8B model as it is costs about a minute: the grid holds one candidate.
    "llama-3.1-8b-instruct/dpo_qlora": Recipe("dpo", "llama-3.1-8b-instruct", (32,), ()),
}  # fmt: skip
QUICK = {
    "qwen2.5-0.5b-instruct/dpo": Recipe(
        "dpo", "qwen2.5-0.5b-instruct", (32,), ("gradient_checkpointing=false", "precompute_ref_log_probs")
    ),
}

AS_IS = "as is"
TINY_FLAGS = ("--bf16", "false", "--dtype", "float32", "--lora_dropout", "0")
# One torch thread: a tiny model gains nothing from a second, and on a shared CPU (CI) threads that spin while they
# wait for a core made steps 3-7 times slower.
TINY_ENV = (("OMP_NUM_THREADS", "1"),)
EOS, PAD = "<|endoftext|>", "<|pad|>"
CHARACTERS = string.ascii_letters + string.digits  # none of them starts a special token


# --- Assets ----------------------------------------------------------------------------------------------------------
def build_model(architecture: str, tiny: bool, model_dir: Path) -> None:
    """A random-weight model of `architecture` (tiny: `TINY_ARCHITECTURE`'s size) and its tokenizer, in `model_dir`."""
    published = json.loads((ARCHITECTURES_DIR / f"{architecture}.json").read_text())
    tokenizer = character_tokenizer()
    special_tokens = {
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = AutoConfig.for_model(
        **{**published, **(TINY_ARCHITECTURE[architecture] if tiny else {}), **special_tokens}
    )
    torch.manual_seed(0)
    # Initialised where it will train: 8B parameters take seconds on a GPU and minutes on a CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if tiny else torch.bfloat16)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def character_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: one token per character of `CHARACTERS`, whatever the model's vocabulary.

    transformers loads a qwen2 model's tokenizer as its own Qwen2Tokenizer class, which keeps a byte-level BPE's
    vocabulary and merges but not another model's (a word-level one's): byte-level is what both families load as is.
    """
    vocab = [PAD, EOS, *sorted(pre_tokenizers.ByteLevel.alphabet())]
    tokenizer = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(vocab)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD)


def synthetic_rows(num_rows: int, unpaired: bool, max_length: int, divisor: int, seed: int = 0) -> list[dict]:
    """Prompts and responses of random characters with `LENGTHS`' token counts (divided by `divisor`), each prompt
    and response with the EOS the trainers add within `max_length`.

    Pairs have a `length` column, all the pair's tokens, for `group_by_length`; unpaired rows alternate labels.
    """
    rng = random.Random(seed)

    def text(num_tokens: int) -> str:
        return "".join(rng.choices(CHARACTERS, k=num_tokens))

    rows = []
    for index in range(num_rows):
        prompt = LENGTHS["prompt"].draw(rng, divisor)
        responses = [min(LENGTHS["response"].draw(rng, divisor), max_length - 1 - prompt) for _ in range(2)]
        row = {"prompt": text(prompt), "chosen": text(responses[0])}
        if unpaired:
            rows.append({"prompt": row["prompt"], "completion": row["chosen"], "label": index % 2 == 0})
        else:
            rows.append({**row, "rejected": text(responses[1]), "length": prompt + sum(responses)})
    return rows


def build_assets(recipes: dict[str, Recipe], tiny: bool, steps: int, assets_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Each recipe's model and data directories; a model shared by recipes is built once, in a fresh process, which
    releases the GPU it used."""
    divisor = TINY_LENGTH_DIVISOR if tiny else 1
    assets = {}
    for name, recipe in recipes.items():
        model_dir = assets_dir / recipe.architecture
        if not model_dir.exists():
            in_fresh_process(build_model, recipe.architecture, tiny, model_dir)
        batch, max_length = recipe_shape(name)
        rows = synthetic_rows(batch * steps, recipe.algorithm == "kto", max_length // divisor, divisor)
        data_dir = assets_dir / "data" / name
        data_dir.mkdir(parents=True)
        (data_dir / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        assets[name] = model_dir, data_dir
    return assets


def recipe_shape(recipe: str) -> tuple[int, int]:
    """The recipe's effective batch on one GPU (micro-batch x accumulation steps) and its max_length."""
    config = yaml.safe_load(training_config(recipe).read_text())
    return config["per_device_train_batch_size"] * config["gradient_accumulation_steps"], config["max_length"]


# --- Variants --------------------------------------------------------------------------------------------------------
def recipes_suite(args: argparse.Namespace, work_dir: Path) -> tuple[list[Variant], Reference]:
    """Each recipe by TRL's script and by ours as it is, then ours over its grid; each compared with TRL's."""
    grids = QUICK if args.quick else RECIPES
    recipes = {name: grids[name] for name in (args.recipes or grids)}
    recipes = {
        name: Recipe(recipe.algorithm, recipe.architecture, recipe.micro_batches, (*recipe.settings, *args.settings))
        for name, recipe in recipes.items()
    }
    tiny = args.scale == "tiny"
    assets = build_assets(recipes, tiny, args.max_steps, work_dir / "assets")
    variants = [
        variant for name, recipe in recipes.items() for variant in recipe_variants(name, recipe, *assets[name], tiny)
    ]
    return variants, lambda row: None if row["runner"] == TRL else (row["algorithm"], TRL, AS_IS, row["config"])


def recipe_variants(name: str, recipe: Recipe, model_dir: Path, data_dir: Path, tiny: bool) -> list[Variant]:
    """TRL's script and ours on the recipe as it is, ours at each micro-batch of the grid (accumulation keeping the
    effective batch), and ours at the largest with each setting of the grid that the algorithm's trainer takes."""
    batch, max_length = recipe_shape(name)
    common = ("--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--logging_steps", "1")
    if tiny:
        common += (*TINY_FLAGS, "--max_length", str(max_length // TINY_LENGTH_DIVISOR))
    ours = (*common, "--merge", "false")
    env = TINY_ENV if tiny else ()
    variants = [
        Variant(recipe.algorithm, TRL, AS_IS, common, env, name),
        Variant(recipe.algorithm, PREFOPT, AS_IS, ours, env, name),
    ]
    for micro_batch in recipe.micro_batches:
        flags = (*ours, "--per_device_train_batch_size", str(micro_batch))
        flags += ("--gradient_accumulation_steps", str(batch // micro_batch))
        variants.append(Variant(recipe.algorithm, PREFOPT, f"micro-batch {micro_batch}", flags, env, name))
    largest = variants[-1]
    for setting in recipe.settings:
        setting_flags, algorithms = SETTINGS[setting]
        if recipe.algorithm in algorithms:
            label = f"{largest.label}, {setting}"
            variants.append(Variant(recipe.algorithm, PREFOPT, label, largest.flags + setting_flags, env, name))
    return variants
