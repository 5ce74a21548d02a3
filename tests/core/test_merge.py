"""The merge and its check: tied embeddings, broken saves, bfloat16 rounding, the model card and `python -m prefopt.merge`.

The adapters here are built in code with a random, non-zero update (as a trained adapter's is), except the bfloat16
one, which a real DPO run trains with a deliberately tiny update.
"""

import json
import re
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import ModelConfig

from prefopt import merge_check
from prefopt.errors import UserError
from prefopt.merge import main as merge_command
from prefopt.merge import merge_adapter
from prefopt.merge_check import example_logits, float32_arithmetic
from prefopt.model_card import base_license, set_card_section
from tests.helpers import (
    DemoAssets,
    assert_merged_is_base_plus_adapter,
    front_matter,
    run_command,
    run_script,
    training_args,
)


def make_adapter(base_dir, adapter_dir, **lora):
    """A LoRA adapter of `base_dir` whose update is random and small (scaling 0.25), saved with the tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=1, init_lora_weights=False, **lora)
    get_peft_model(model, config).save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(adapter_dir)
    return adapter_dir


def merge(adapter_dir, merged_dir, base_dir, **kwargs) -> dict:
    return merge_adapter(adapter_dir, merged_dir, ModelConfig(model_name_or_path=str(base_dir)), **kwargs)


@pytest.mark.parametrize("changed, unchanged", [("lm_head", "embed_tokens"), ("embed_tokens", "lm_head")])
def test_adapter_on_one_of_tied_embeddings_unties_them(demo_assets, tmp_path, changed, unchanged):
    """The merged model gets two embedding matrices: the one the adapter changed, and the base's shared one."""
    assert AutoConfig.from_pretrained(demo_assets.model_dir).tie_word_embeddings
    adapter = make_adapter(demo_assets.model_dir, tmp_path / "adapter", target_modules=["q_proj", "v_proj", changed])
    report = merge(adapter, tmp_path / "merged", demo_assets.model_dir)

    assert report["word_embeddings"] == "untied"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not merged.config.tie_word_embeddings
    assert "lm_head.weight" in load_file(tmp_path / "merged" / "model.safetensors")
    base_embeddings = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir).model.embed_tokens.weight
    weights = {"lm_head": merged.lm_head.weight, "embed_tokens": merged.model.embed_tokens.weight}
    assert torch.equal(weights[unchanged], base_embeddings)
    assert not torch.equal(weights[changed], base_embeddings)
    assert_merged_is_base_plus_adapter(tmp_path / "merged", demo_assets.model_dir, adapter)


def test_adapter_that_ties_its_embeddings_stays_tied(demo_assets, tmp_path):
    """ensure_weight_tying gives lm_head and embed_tokens one update: merged once, into the one shared weight."""
    adapter = make_adapter(
        demo_assets.model_dir, tmp_path / "adapter", target_modules=["q_proj", "lm_head"], ensure_weight_tying=True
    )
    report = merge(adapter, tmp_path / "merged", demo_assets.model_dir)

    assert report["word_embeddings"] == "tied"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.config.tie_word_embeddings and merged.lm_head.weight is merged.model.embed_tokens.weight
    assert_merged_is_base_plus_adapter(tmp_path / "merged", demo_assets.model_dir, adapter)


def test_float32_arithmetic_gives_the_logits_of_the_model_upcast_whole(demo_assets, monkeypatch):
    """bfloat16 weights, float32 results: those of the model upcast as a whole, but for float32 rounding (each linear
    layer multiplies by its weight in blocks of rows), where bfloat16 arithmetic is far off; the weights stay bfloat16.

    Measured: 4.8e-7 apart, and 0.027 in bfloat16 arithmetic, on logits up to 11.
    """
    monkeypatch.setattr(merge_check, "BLOCK_BYTES", 4 * 128 * 100)  # blocks of 100 or 50 rows in the demo's layers
    model = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.bfloat16)
    upcast = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.bfloat16).float()
    token_ids = [
        AutoTokenizer.from_pretrained(demo_assets.model_dir)("The acting in this film is brilliant.")["input_ids"]
    ]
    with float32_arithmetic(model):
        (logits,) = example_logits(model, token_ids)
    (expected,) = example_logits(upcast, token_ids)
    (bfloat16_logits,) = example_logits(model, token_ids)
    assert (logits - expected).abs().max() < 1e-5 < 1e-2 < (bfloat16_logits - expected).abs().max()
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def corrupt_a_tensor(directory):
    weights = load_file(directory / "model.safetensors")
    weights["model.layers.0.mlp.down_proj.weight"] *= 2
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


def tie_in_config(directory):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))


@pytest.mark.parametrize(
    "targets, corrupt, problem",
    [
        ("all-linear", corrupt_a_tensor, "a tensor or the config was saved wrong"),
        (
            ["q_proj", "lm_head"],
            tie_in_config,
            "the saved model's word embeddings should be untied: a tie was broken or created on saving",
        ),
    ],
)
def test_a_broken_save_fails_the_merge_and_keeps_the_earlier_model(
    demo_assets, tmp_path, monkeypatch, targets, corrupt, problem
):
    adapter = make_adapter(demo_assets.model_dir, tmp_path / "adapter", target_modules=targets)
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    (merged_dir / "model.safetensors").write_text("an earlier merged model")
    earlier = {path.name: path.read_bytes() for path in merged_dir.iterdir()}
    adapter_files = {path.name: path.read_bytes() for path in adapter.iterdir()}

    save_pretrained = PreTrainedModel.save_pretrained

    def save_then_corrupt(model, directory, *args, **kwargs):
        save_pretrained(model, directory, *args, **kwargs)
        corrupt(directory)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_corrupt)
    with pytest.raises(UserError) as failure:
        merge(adapter, merged_dir, demo_assets.model_dir)
    message = str(failure.value)
    assert message.startswith("merge check failed: ") and "\n" not in message
    assert message.endswith(f"{problem}; the adapter in {adapter} is kept, {merged_dir} is left as it was")
    assert {path.name: path.read_bytes() for path in merged_dir.iterdir()} == earlier
    assert {path.name: path.read_bytes() for path in adapter.iterdir()} == adapter_files
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter", "merged"]  # no staging left behind


@pytest.fixture(scope="module")
def bfloat16_run(demo_assets, tmp_path_factory):
    """dpo.py on a bfloat16 copy of the demo base, 3 steps at lr 5e-6: an update mostly below bfloat16's resolution."""
    root = tmp_path_factory.mktemp("bfloat16")
    base_dir = root / "base-bf16"
    AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.bfloat16).save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(demo_assets.model_dir).save_pretrained(base_dir)
    flags = training_args(
        "dpo", DemoAssets(base_dir, demo_assets.data_dir), root, 3,
        "--learning_rate", "5e-6",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", "1",
    )  # fmt: skip
    log = run_script("dpo.py", *flags)
    return base_dir, root / "outputs" / "dpo_test", root / "models" / "dpo_test", log.stderr


def test_bfloat16_rounding_of_a_tiny_update_is_reported_and_warned_about(bfloat16_run):
    base_dir, adapter_dir, merged_dir, stderr = bfloat16_run
    report = json.loads((merged_dir / "merge_report.json").read_text())
    assert (report["base_dtype"], report["merged_dtype"]) == ("bfloat16", "bfloat16")
    # Measured: 4% of the adapter's effect kept, as in the run on a real model (2%).
    assert report["share_kept"] < 0.9
    # Rounding lost most of the update, so the merged model is about as far from base + adapter as the base is:
    # measured 0.94 of the adapter's effect, which moves with the last bits of the update that training left. A wrong
    # merge would be far off this tiny update's effect.
    effect = report["adapter_effect_max_abs_logit_diff"]
    assert 0.5 * effect < report["max_abs_logit_diff"] < 1.5 * effect
    assert "merged_dtype: float32 keeps all of it, at 1.74 MB instead of 0.87 MB" in report["warning"]
    assert f"WARNING prefopt.merge: merge check: {report['warning']}" in stderr
    assert {tensor.dtype for tensor in load_file(merged_dir / "model.safetensors").values()} == {torch.bfloat16}


def test_bfloat16_merge_rounds_once_and_float32_keeps_the_whole_update(bfloat16_run, tmp_path):
    """The bfloat16 weights are the float32 merge's, rounded once: the closest bfloat16 can hold. The command with
    --merged_dtype float32 keeps the update whole."""
    base_dir, adapter_dir, merged_dir, _ = bfloat16_run
    result = run_command(
        [sys.executable, "-m", "prefopt.merge", str(adapter_dir), "--out", str(tmp_path / "float32"),
         "--merged_dtype", "float32"]
    )  # fmt: skip
    report = json.loads((tmp_path / "float32" / "merge_report.json").read_text())
    assert report["base_model"] == str(base_dir)  # from adapter_config.json
    assert report["check_batch"]["source"] == "fixed texts" and report["warning"] is None
    # Measured 99.8%: float32 summation order, against an adapter effect of 0.003.
    assert report["share_kept"] > 0.99
    assert "merge check (float32, 8 examples of fixed texts): max |logit diff|" in result.stderr

    rounded, float32 = (load_file(directory / "model.safetensors") for directory in (merged_dir, tmp_path / "float32"))
    assert rounded.keys() == float32.keys()
    assert all(torch.equal(rounded[name], float32[name].to(torch.bfloat16)) for name in rounded)


def test_merge_command_refuses_an_existing_output(bfloat16_run):
    _, adapter_dir, merged_dir, _ = bfloat16_run
    message = f"--out '{merged_dir}' already exists; pass --overwrite to replace it, or choose another --out"
    with pytest.raises(UserError, match=re.escape(message)):
        merge_command([str(adapter_dir), "--out", str(merged_dir)])


def test_card_sections_are_added_and_replaced(bfloat16_run, tmp_path):
    _, _, merged_dir, _ = bfloat16_run
    (tmp_path / "README.md").write_text((merged_dir / "README.md").read_text())
    set_card_section(tmp_path, "Evaluation", "| measure | value |\n|---|---|\n| accuracy | 0.51 |")
    set_card_section(tmp_path, "Evaluation", "| measure | value |\n|---|---|\n| accuracy | 0.62 |")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and "0.62" in text and "0.51" not in text
    assert text.index("## Training") < text.index("## Merge check") < text.index("## Evaluation")
    set_card_section(tmp_path, "Training", "Replaced.")
    text = (tmp_path / "README.md").read_text()
    assert "## Training\n\nReplaced.\n\n## Merge check" in text and "| accuracy | 0.62 |" in text
    assert front_matter(tmp_path / "README.md") == front_matter(merged_dir / "README.md")
    assert (
        ModelCard.load(tmp_path / "README.md").data.base_model
        == ModelCard.load(merged_dir / "README.md").data.base_model
    )


def test_license_comes_from_the_base_models_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A base model\n")
    assert base_license(str(tmp_path)) == "apache-2.0"
    assert base_license("prefopt-tests/not-in-the-cache") is None
