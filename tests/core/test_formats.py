"""The scripts on data and models other than the demo's own: conversational data, unpaired KTO data, another
architecture. Each is a real short training run through the trainer's own preprocessing, merged at the end."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from tests.helpers import read_jsonl, run_script, training_args, write_jsonl

STEPS = 4


@pytest.fixture(scope="module")
def conversational_data(demo_assets, tmp_path_factory):
    """The demo pairs as chat messages: the prompt a user turn, chosen and rejected assistant turns."""
    directory = tmp_path_factory.mktemp("conversational")
    for split in ("train", "validation", "test"):
        rows = [
            {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
                "rejected": [{"role": "assistant", "content": row["rejected"].strip()}],
            }
            for row in read_jsonl(demo_assets.data_dir / f"{split}.jsonl")
        ]
        write_jsonl(directory / f"{split}.jsonl", rows)
    return directory


@pytest.mark.parametrize("algorithm", ["dpo", "kto", "simpo"])
def test_conversational_data_trains_and_merges_with_its_template(algorithm, demo_assets, conversational_data, tmp_path):
    args = training_args(algorithm, demo_assets, tmp_path, STEPS, "--dataset_name", conversational_data)
    run_script(f"{algorithm}.py", *args)
    merged = tmp_path / "models" / f"{algorithm}_test"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(demo_assets.model_dir).chat_template
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)


def test_kto_trains_on_unpaired_data_in_one_file(demo_assets, tmp_path):
    rows = [
        {"prompt": row["prompt"], "completion": row[column], "label": column == "chosen"}
        for row in read_jsonl(demo_assets.data_dir / "train.jsonl")
        for column in ("chosen", "rejected")
    ]
    write_jsonl(tmp_path / "unpaired.jsonl", rows)
    args = training_args("kto", demo_assets, tmp_path, STEPS, "--dataset_name", tmp_path / "unpaired.jsonl")
    result = run_script("kto.py", *args, "--eval_strategy", "no")
    assert f"KTO examples: {len(rows) // 2} desirable, {len(rows) // 2} undesirable" in result.stderr


def test_kto_balances_class_weights_of_unbalanced_data(demo_assets, tmp_path):
    pairs = read_jsonl(demo_assets.data_dir / "train.jsonl")
    rows = [{"prompt": row["prompt"], "completion": row["chosen"], "label": True} for row in pairs[:40]]
    rows += [{"prompt": row["prompt"], "completion": row["rejected"], "label": False} for row in pairs]
    write_jsonl(tmp_path / "unbalanced.jsonl", rows)
    args = training_args("kto", demo_assets, tmp_path, STEPS, "--dataset_name", tmp_path / "unbalanced.jsonl")
    result = run_script("kto.py", *args, "--eval_strategy", "no")
    weight = len(pairs) / 40
    assert f"desirable_weight {weight:.3g}, undesirable_weight 1 (weighted ratio 1" in result.stderr


@pytest.fixture(scope="module")
def qwen2_model(demo_assets, tmp_path_factory):
    """A tiny random Qwen2 (another architecture: biased attention projections) with the demo tokenizer."""
    directory = tmp_path_factory.mktemp("qwen2")
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("algorithm", ["dpo", "simpo"])
def test_another_architecture_trains_and_merges(algorithm, demo_assets, qwen2_model, tmp_path):
    run_script(
        f"{algorithm}.py", *training_args(algorithm, demo_assets, tmp_path, STEPS, "--model_name_or_path", qwen2_model)
    )
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / f"{algorithm}_test")
    assert merged.config.model_type == "qwen2"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models" / f"{algorithm}_test")
    text = "The movie was really moving."
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
