"""QLoRA end to end: the adapter trains on a 4-bit (nf4) base; the merge applies it to the base in full precision.

bitsandbytes runs 4-bit layers on the CPU too, so this is the path a GPU run takes, on the demo model.
"""

import json

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from experiment.evaluate import tokenize_pair
from prefopt.modeling import load_model
from tests.conftest import assert_merged_is_base_plus_adapter, run_script, training_args

MAX_STEPS = 6
PER_DEVICE = 8  # half the shipped config's: 4-bit layers are slow on a CPU
BETA = 0.1  # dpo_v1.yaml's


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
    run_script("dpo.py", *flags)
    return run_dir / "outputs" / "dpo_test", run_dir / "models" / "dpo_test"


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
    adapter_dir, merged_dir = qlora_run
    assert not hasattr(AutoConfig.from_pretrained(merged_dir), "quantization_config")
    merged = load_full_precision(merged_dir)
    assert {parameter.dtype for parameter in merged.parameters()} == {torch.float32}

    assert_merged_is_base_plus_adapter(merged_dir, demo_assets.model_dir, adapter_dir)


def test_merging_into_full_precision_keeps_what_was_trained(qlora_run, demo_assets):
    """The merged model differs from the trained 4-bit one by the base's rounding only, and evaluates the same.

    Measured on this run: mean |logit difference| merged vs trained 0.043, base vs 4-bit base 0.041; held-out DPO
    loss 0.6942 (4-bit base + adapter, as trained) vs 0.6941 (merged).
    """
    adapter_dir, merged_dir = qlora_run
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    rows = [json.loads(line) for line in (demo_assets.data_dir / "test.jsonl").read_text().splitlines()]
    pairs = [tokenize_pair(tokenizer, row["prompt"], row[key]) for row in rows for key in ("chosen", "rejected")]

    trained = PeftModel.from_pretrained(load_4bit(demo_assets.model_dir), adapter_dir)  # as in training
    base = load_full_precision(demo_assets.model_dir)
    merged = load_full_precision(merged_dir)
    with trained.disable_adapter():
        base_4bit_logps, base_4bit_logits = score(trained, pairs)
    trained_logps, trained_logits = score(trained, pairs)
    base_logps, base_logits = score(base, pairs)
    merged_logps, merged_logits = score(merged, pairs)

    log_history = json.loads((adapter_dir / "trainer_state.json").read_text())["log_history"]
    (evaluation,) = [entry for entry in log_history if "eval_loss" in entry]
    # TRL evaluated the model it trained, on the 4-bit base: its mean chosen log-probability is the 4-bit model's,
    # not the merged model's (measured: 0.0003 and 0.044 apart).
    assert abs(chosen_mean(trained_logps) - evaluation["eval_logps/chosen"]) < 5e-3
    assert abs(chosen_mean(merged_logps) - evaluation["eval_logps/chosen"]) > 5e-3

    trained_loss = dpo_loss(trained_logps, base_4bit_logps)
    assert trained_loss == pytest.approx(evaluation["eval_loss"], abs=1e-3)  # the held-out loss as TRL defines it
    assert dpo_loss(merged_logps, base_logps) == pytest.approx(trained_loss, abs=5e-3)

    merge_error = (merged_logits - trained_logits).abs().mean()
    quantization_error = (base_logits - base_4bit_logits).abs().mean()
    assert 0 < merge_error < 2 * quantization_error


def score(model, pairs):
    """One forward pass over the right-padded (prompt, completion) sequences: each one's summed completion
    log-probability, and the logits at every position that is not padding."""
    lengths = [len(prompt) + len(completion) for prompt, completion in pairs]
    input_ids = torch.zeros(len(pairs), max(lengths), dtype=torch.long)
    attention_mask, completion_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for row, ((prompt, completion), length) in enumerate(zip(pairs, lengths)):
        input_ids[row, :length] = torch.tensor(prompt + completion)
        attention_mask[row, :length] = 1
        completion_mask[row, len(prompt) : length] = 1
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(-1), logits[attention_mask.bool()]


def chosen_mean(logps):
    return logps.view(-1, 2)[:, 0].mean().item()


def dpo_loss(policy_logps, reference_logps):
    """DPO's loss over (chosen, rejected) pairs laid out as consecutive rows."""
    margins = (policy_logps - reference_logps).view(-1, 2)
    return F.softplus(-BETA * (margins[:, 0] - margins[:, 1])).mean().item()
