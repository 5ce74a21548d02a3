"""Shared fixtures: tiny demo assets and a tiny reward model, built once per test session.

Plain helpers live in `tests/helpers.py`: test files import shared code from there, never from each other.
"""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from experiment.demo import build_demo_assets
from tests.helpers import HELD_OUT_METRICS, DemoAssets, as_conversations, gold_labelled, read_jsonl


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> DemoAssets:
    """A small version of the default experiment's base model and preference data."""
    root = tmp_path_factory.mktemp("demo")
    assets = DemoAssets(model_dir=root / "demo-base", data_dir=root / "demo-data")
    build_demo_assets(assets.model_dir, assets.data_dir, num_train_pairs=256, num_test_pairs=32, pretrain_steps=150)
    return assets


@pytest.fixture(scope="session")
def demo_base(demo_assets) -> tuple:
    """The demo base model's tokenizer and the model itself, loaded for inference."""
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    return tokenizer, AutoModelForCausalLM.from_pretrained(demo_assets.model_dir).eval()


@pytest.fixture(scope="session")
def tiny_reward_model(demo_assets, tmp_path_factory) -> Path:
    """A reward model of the demo's architecture, trained for a few steps with TRL's RewardTrainer on the demo's train
    pairs as conversations, so that it is scored through the chat template of its tokenizer.

    The pairs are labelled by the gold reward, without the demo's label noise, so that the model learns more in its few
    steps; the score head's initialisation is seeded, so that the model is the same whatever ran before in the session.
    The trainer's own evaluation of the held-out pairs is saved beside it, in `HELD_OUT_METRICS`.
    """
    import transformers
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    output_dir = tmp_path_factory.mktemp("reward-model")
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    transformers.set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(demo_assets.model_dir, num_labels=1)
    args = RewardConfig(
        output_dir=str(output_dir),
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    train_rows = [gold_labelled(row) for row in read_jsonl(demo_assets.data_dir / "train.jsonl")]
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=as_conversations(train_rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(output_dir))
    metrics = trainer.evaluate(as_conversations(read_jsonl(demo_assets.data_dir / "test.jsonl")))
    (output_dir / HELD_OUT_METRICS).write_text(json.dumps(metrics))
    return output_dir
