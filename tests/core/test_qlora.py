"""QLoRA end to end: the adapter trains on a 4-bit (nf4) base; the merge applies it to the base in full precision.

bitsandbytes runs 4-bit layers on the CPU too, so this is the path a GPU run takes, on the demo model.
"""

import json

import bitsandbytes as bnb
import pytest
import torch
from datasets import load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from prefopt.merge_check import CheckBatch, example_logits
from prefopt.modeling import load_model
from tests.helpers import assert_merged_is_base_plus_adapter, run_script, training_args

MAX_STEPS = 6
PER_DEVICE = 8  # half the shipped config's: 4-bit layers are slow on a CPU


@pytest.fixture(scope="module")
def qlora_run(demo_assets, tmp_path_factory):
    """dpo.py from its shipped config with `load_in_4bit: true`, evaluated on the test split after the last step."""
    run_dir = tmp_path_factory.mktemp("qlora")
    flags = training_args(
        "dpo", demo_assets, run_dir, MAX_STEPS,
        "--load_in_4bit", "true",
        "--per_device_train_batch_size", str(PER_DEVICE),
        "--eval_steps", str(MAX_STEPS),
        "--learning_rate", "2e-3",  # the v1 configs' earlier rate, at which the distances below were measured
    )  # fmt: skip
    log = run_script("dpo.py", *flags)
    return run_dir / "outputs" / "dpo_test", run_dir / "models" / "dpo_test", log.stderr


def load_4bit(model_dir):
    return load_model(ModelConfig(model_name_or_path=str(model_dir), dtype="float32", load_in_4bit=True))


def load_full_precision(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def test_load_model_quantizes_every_projection_to_nf4(demo_assets):
    model = load_4bit(demo_assets.model_dir)
    quantized = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up and down of each decoder layer
    assert {module.weight.quant_type for module in quantized} == {"nf4"}
    assert {module.compute_dtype for module in quantized} == {torch.float32}  # the config's dtype
    assert type(model.lm_head) is torch.nn.Linear  # transformers keeps the output layer unquantized


def test_merged_model_is_full_precision_base_plus_adapter(qlora_run, demo_assets):
    adapter_dir, merged_dir, _ = qlora_run
    assert not hasattr(AutoConfig.from_pretrained(merged_dir), "quantization_config")
    merged = load_full_precision(merged_dir)
    assert {parameter.dtype for parameter in merged.parameters()} == {torch.float32}

    assert_merged_is_base_plus_adapter(merged_dir, demo_assets.model_dir, adapter_dir)


def test_report_gives_the_gap_between_the_model_trained_and_the_merged_one(qlora_run, demo_assets):
    """The merge is exact in float32; what separates it from the 4-bit model training saw is the base's quantization.

    Measured on this run: a QLoRA gap of 1.1 (max |logit diff|), against 0.69 for the base quantized alone.
    """
    adapter_dir, merged_dir, stderr = qlora_run
    report = json.loads((merged_dir / "merge_report.json").read_text())
    gap = report["qlora_gap"]
    assert report["max_abs_logit_diff"] < 1e-4 < gap["max_abs_logit_diff"]
    assert report["mean_kl"] < 1e-9 < gap["mean_kl"]
    assert "; QLoRA gap (4-bit base + adapter, as trained): max |logit diff| " in stderr

    test_split = load_dataset("json", data_files=str(demo_assets.data_dir / "test.jsonl"), split="train")
    token_ids = CheckBatch.from_dataset(test_split, "demo", "test").token_ids(
        AutoTokenizer.from_pretrained(adapter_dir)
    )
    quantization_error = max(
        (full - quantized).abs().max().item()
        for full, quantized in zip(
            example_logits(load_full_precision(demo_assets.model_dir), token_ids),
            example_logits(load_4bit(demo_assets.model_dir), token_ids),
        )
    )
    assert quantization_error / 3 < gap["max_abs_logit_diff"] < 3 * quantization_error
