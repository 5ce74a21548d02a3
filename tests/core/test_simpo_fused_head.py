"""SimPO's `use_fused_lm_head`: the same loss and gradients as CPO's own full-logits path, on a tiny tied-embedding
model (as Qwen2.5's) under a LoRA adapter whose update is not zero."""

import pytest
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from prefopt.config import parse_args
from prefopt.errors import UserError
from simpo import SimPOConfig, SimPOTrainer, main


def simpo_trainer(demo_assets, tmp_path, use_fused_lm_head: bool, cpo_alpha: float) -> SimPOTrainer:
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    torch.manual_seed(0)  # the same random model and adapter for both paths
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        )
    )  # fmt: skip
    args = SimPOConfig(
        output_dir=str(tmp_path / f"fused{use_fused_lm_head}"),
        use_fused_lm_head=use_fused_lm_head,
        cpo_alpha=cpo_alpha,
        per_device_train_batch_size=8,
        max_length=64,
        bf16=False,
        use_cpu=True,
        report_to="none",
    )
    dataset = load_dataset("json", data_files=str(demo_assets.data_dir / "train.jsonl"), split="train")
    return SimPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset.select(range(16)),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )


@pytest.mark.parametrize("cpo_alpha", [0.0, 1.0])  # SimPO, and CPO-SimPO with its NLL term on the chosen
def test_fused_lm_head_gives_cpos_loss_and_gradients(demo_assets, tmp_path, cpo_alpha):
    results = {}
    for fused in (False, True):
        trainer = simpo_trainer(demo_assets, tmp_path, fused, cpo_alpha)
        batch = next(iter(trainer.get_train_dataloader()))
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
        loss.backward()
        gradients = {name: p.grad for name, p in trainer.model.named_parameters() if p.requires_grad}
        results[fused] = loss, metrics, gradients
    (full_loss, full_metrics, full_gradients), (fused_loss, fused_metrics, fused_gradients) = results.values()
    torch.testing.assert_close(fused_loss, full_loss, rtol=1e-5, atol=1e-6)
    for metric in ("logps/chosen", "logps/rejected", "rewards/margins", "nll_loss"):
        assert fused_metrics[metric] == pytest.approx(full_metrics[metric], rel=1e-5, abs=1e-6), metric
    assert fused_gradients.keys() == full_gradients.keys() and len(full_gradients) == 2 * 7 * 2  # A, B; 7 per layer
    for name, gradient in full_gradients.items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(fused_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lm_head_refuses_an_adapter_on_lm_head_before_loading_anything(demo_assets, tmp_path):
    arguments = parse_args(
        SimPOConfig,
        [
            "--model_name_or_path", str(demo_assets.model_dir), "--dataset_name", str(demo_assets.data_dir),
            "--output_dir", str(tmp_path / "run"), "--merged_model_dir", str(tmp_path / "merged"), "--bf16", "false",
            "--use_peft", "true", "--lora_target_modules", "q_proj", "lm_head", "--use_fused_lm_head", "true",
        ],
    )  # fmt: skip
    with pytest.raises(UserError, match="^use_fused_lm_head reads lm_head's weight directly, so a LoRA adapter on it"):
        main(*arguments)
    assert not (tmp_path / "run").exists()
