"""The demo assets: a tiny base model that learned the review grammar, and gold-labelled, held-out preference pairs."""

import json
import logging
import math
import statistics
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from experiment.demo import build_demo_assets, document_loss, main
from experiment.gold_reward import gold_reward
from experiment.review_grammar import is_review, synthetic_reviews
from tests.helpers import read_jsonl

TINY = dict(num_train_pairs=64, num_test_pairs=16, pretrain_steps=150)  # fewer steps leave too few reviews to pair
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
DATA_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "metadata.json")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny build without label noise, so that every chosen is truly better."""
    root = tmp_path_factory.mktemp("demo")
    build_demo_assets(root / "model", root / "data", label_noise=0.0, **TINY)
    return root / "model", root / "data"


def test_build_writes_complete_directories_and_nothing_else(assets):
    model_dir, data_dir = assets
    for name in MODEL_FILES:
        assert (model_dir / name).is_file(), name
    for name in DATA_FILES:
        assert (data_dir / name).is_file(), name
    assert sorted(path.name for path in model_dir.parent.iterdir()) == ["data", "model"]  # no staging left behind


def test_model_and_tokenizer_load_with_auto_classes(assets):
    model_dir, _ = assets
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "llama"
    assert model.num_parameters() < 5_000_000

    review = synthetic_reviews(1, seed=1)[0]
    ids = tokenizer(review).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == review
    assert tokenizer(review + tokenizer.eos_token).input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)

    assert tokenizer.chat_template
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "The movie was"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s><|im_start|>user\nThe movie was<|im_end|>\n<|im_start|>assistant\n"

    assert model.generation_config.do_sample
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_pretraining_learned_the_reviews(assets):
    model_dir, _ = assets
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    loss = document_loss(model, tokenizer, synthetic_reviews(128, seed=1))
    assert loss < 0.5 * math.log(len(tokenizer))  # a uniform guess scores log(vocab)


def test_rows_are_preference_pairs_in_trl_format(assets):
    _, data_dir = assets
    for name, num_rows in (("train.jsonl", TINY["num_train_pairs"]), ("test.jsonl", TINY["num_test_pairs"])):
        rows = read_jsonl(data_dir / name)
        assert len(rows) == num_rows
        for row in rows:
            assert set(row) == {"prompt", "chosen", "rejected"}
            assert all(isinstance(value, str) and value.strip() for value in row.values())
            assert row["chosen"] != row["rejected"]
            assert row["chosen"].startswith(" ") and row["rejected"].startswith(" ")
            assert "<" not in row["chosen"] + row["rejected"]  # no special tokens


def test_test_prompts_are_held_out(assets):
    _, data_dir = assets
    train_prompts = {row["prompt"] for row in read_jsonl(data_dir / "train.jsonl")}
    test_prompts = {row["prompt"] for row in read_jsonl(data_dir / "test.jsonl")}
    assert train_prompts and test_prompts and not train_prompts & test_prompts


def test_the_validation_split_is_the_head_of_the_held_out_pairs(assets, tmp_path):
    """The trainers evaluate on at most 200 held-out pairs; held-out evaluation reads all of them."""
    model_dir, data_dir = assets
    assert read_jsonl(data_dir / "validation.jsonl") == read_jsonl(data_dir / "test.jsonl")  # 16 pairs: all of them
    build_demo_assets(model_dir, tmp_path, label_noise=0.0, **{**TINY, "num_train_pairs": 8, "num_test_pairs": 230})
    test_rows = read_jsonl(tmp_path / "test.jsonl")
    assert len(test_rows) == 230
    assert read_jsonl(tmp_path / "validation.jsonl") == test_rows[:200]
    assert json.loads((tmp_path / "metadata.json").read_text())["num_validation_pairs"] == 200


def test_without_label_noise_chosen_is_a_review_a_clear_margin_above_rejected(assets):
    _, data_dir = assets
    margins = []
    for name in ("train.jsonl", "test.jsonl"):
        for row in read_jsonl(data_dir / name):
            assert is_review(row["prompt"] + row["chosen"])
            margins.append(gold_reward(row["prompt"] + row["chosen"]) - gold_reward(row["prompt"] + row["rejected"]))
    metadata = json.loads((data_dir / "metadata.json").read_text())
    assert min(margins) >= metadata["min_margin"] == 0.2
    assert metadata["train_margin"]["min"] == min(margins[: TINY["num_train_pairs"]])
    assert metadata["test_margin"]["median"] == pytest.approx(statistics.median(margins[TINY["num_train_pairs"] :]))


def test_metadata_describes_the_pairs(assets):
    _, data_dir = assets
    metadata = json.loads((data_dir / "metadata.json").read_text())
    assert metadata["seed"] == 0 and metadata["label_noise"] == 0.0
    assert metadata["num_train_pairs"] == TINY["num_train_pairs"]
    assert metadata["train_chosen_better_fraction"] == metadata["test_chosen_better_fraction"] == 1.0
    assert metadata["num_base_samples"] >= 4 * (TINY["num_train_pairs"] + TINY["num_test_pairs"])  # 4 per pair
    assert 0.0 < metadata["base_positive_fraction"] < 1.0 and 0.0 < metadata["base_negative_fraction"] < 1.0
    assert 0.0 < metadata["base_fluent_fraction"] < 1.0


def test_label_noise_swaps_train_labels_only(assets, tmp_path):
    model_dir, clean_dir = assets
    build_demo_assets(model_dir, tmp_path, label_noise=0.5, **TINY)  # reuses the model: same samples, same pairs

    clean_rows, noisy_rows = read_jsonl(clean_dir / "train.jsonl"), read_jsonl(tmp_path / "train.jsonl")
    num_swapped = sum(noisy["chosen"] == clean["rejected"] for clean, noisy in zip(clean_rows, noisy_rows))
    assert 0 < num_swapped < len(clean_rows)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["train_chosen_better_fraction"] == 1 - num_swapped / len(clean_rows)
    assert (tmp_path / "test.jsonl").read_bytes() == (clean_dir / "test.jsonl").read_bytes()


def test_held_out_pairs_do_not_depend_on_the_number_of_train_pairs(assets, tmp_path):
    model_dir, data_dir = assets
    build_demo_assets(model_dir, tmp_path, label_noise=0.0, **{**TINY, "num_train_pairs": 24})

    assert len(read_jsonl(tmp_path / "train.jsonl")) == 24
    assert (tmp_path / "test.jsonl").read_bytes() == (data_dir / "test.jsonl").read_bytes()


def test_same_seed_rebuilds_identical_data(assets, tmp_path):
    _, data_dir = assets
    build_demo_assets(tmp_path / "model", tmp_path / "data", label_noise=0.0, **TINY)
    for name in DATA_FILES:
        assert (tmp_path / "data" / name).read_bytes() == (data_dir / name).read_bytes(), name


def test_complete_assets_are_not_rebuilt(assets, caplog):
    model_dir, data_dir = assets
    modified = (model_dir / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="experiment.demo"):
        main(["--model_dir", str(model_dir), "--data_dir", str(data_dir)])
    assert "nothing to build" in caplog.text
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == modified
