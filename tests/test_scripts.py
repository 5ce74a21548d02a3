"""End to end: each script trains on the demo data from its shipped config, saves, merges and plots."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import run_script, training_args

ALGORITHMS = ("dpo", "kto", "simpo")
MAX_STEPS = 60


@pytest.fixture(scope="module")
def runs(demo_assets, tmp_path_factory):
    """Each algorithm trained once for MAX_STEPS; tests read what the runs left behind."""
    run_dir = tmp_path_factory.mktemp("runs")
    logs = {
        algorithm: run_script(f"{algorithm}.py", *training_args(algorithm, demo_assets, run_dir, MAX_STEPS))
        for algorithm in ALGORITHMS
    }
    return run_dir, logs


def log_history(run_dir, algorithm):
    state = json.loads((run_dir / "outputs" / f"{algorithm}_test" / "trainer_state.json").read_text())
    return state["log_history"]


def train_logs(run_dir, algorithm):
    return [entry for entry in log_history(run_dir, algorithm) if "loss" in entry]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_output_dir_holds_adapter_state_and_checkpoints(runs, algorithm):
    run_dir, _ = runs
    output_dir = run_dir / "outputs" / f"{algorithm}_test"
    assert (output_dir / "adapter_config.json").is_file()
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert log_history(run_dir, algorithm)[-1]["step"] == MAX_STEPS
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == [
        "checkpoint-50",
        "checkpoint-60",
    ]  # save_steps 50, and the last step


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_merged_model_is_plain_transformers_model_with_chat_template(runs, algorithm):
    run_dir, _ = runs
    merged_dir = run_dir / "models" / f"{algorithm}_test"
    names = {path.name for path in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not any(name.startswith("adapter") for name in names)
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template
    leftovers = [path for path in merged_dir.parent.glob(f".{algorithm}_test.*") if path.suffix != ".lock"]
    assert not leftovers, "a staging directory was left behind"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_merged_logits_equal_base_plus_adapter(runs, demo_assets, algorithm):
    run_dir, _ = runs
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    inputs = tokenizer(["The movie was", "I watched this film last night and it"], return_tensors="pt", padding=True)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "models" / f"{algorithm}_test", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, run_dir / "outputs" / f"{algorithm}_test")
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
        adapted_logits = adapted(**inputs).logits
        with adapted.disable_adapter():
            base_logits = adapted(**inputs).logits
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-4, rtol=0)
    assert (merged_logits - base_logits).abs().max() > 1e-3, "training left the model unchanged"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loss_plot_is_written(runs, algorithm):
    run_dir, _ = runs
    image = run_dir / "images" / f"{algorithm}_test_train_loss.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_effective_batch_is_reported(runs, algorithm):
    _, logs = runs
    assert "effective batch size 16 = 16 per device x 1 process(es) x 1 accumulation step(s)" in logs[algorithm].stderr


def last_logs_mean(run_dir, algorithm, key, count=3):
    """The mean of `key` over the last `count` logged training steps: single steps are noisy."""
    return sum(entry[key] for entry in train_logs(run_dir, algorithm)[-count:]) / count


def test_dpo_learns(runs):
    run_dir, _ = runs
    assert last_logs_mean(run_dir, "dpo", "loss") < train_logs(run_dir, "dpo")[0]["loss"] - 0.05
    assert last_logs_mean(run_dir, "dpo", "rewards/margins") > 0.1


def test_kto_learns_on_paired_data(runs):
    """Paired data unpaired and shuffled: KTO's loss leaves 0.5, where all-desirable batches would keep it."""
    run_dir, _ = runs
    assert last_logs_mean(run_dir, "kto", "loss") < 0.49
    assert last_logs_mean(run_dir, "kto", "rewards/margins") > 0.05


def test_simpo_learns(runs):
    run_dir, _ = runs
    assert last_logs_mean(run_dir, "simpo", "loss") < train_logs(run_dir, "simpo")[0]["loss"] - 0.1
    assert last_logs_mean(run_dir, "simpo", "rewards/accuracies") > 0.55
