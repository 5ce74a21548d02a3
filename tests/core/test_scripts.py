"""End to end: each script trains on the demo data from its shipped config, saves, merges, checks the merge and plots."""

import json

import pytest
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer

from prefopt.merge import report_line
from prefopt.plotting import loss_figure
from prefopt.run_logs import logged, read_log_history
from tests.helpers import assert_merged_is_base_plus_adapter, front_matter, run_script, training_args

ALGORITHMS = ("dpo", "kto", "simpo")
MAX_STEPS = 60
# The tests that check learning train 60 steps at 2e-3, ten times the v1 configs' rate, where their thresholds were set:
# at 2e-4, which keeps the demo's samples fluent, a loss falls too little in 60 steps to tell learning from noise.
FAST = ("--learning_rate", "2e-3")
# The same schedule for the three, with several evaluations and checkpoints in 60 steps (the v1 configs' are per fifth
# of an epoch).
SCHEDULE = ("--eval_steps", "25", "--save_steps", "50")


@pytest.fixture(scope="module")
def runs(demo_assets, tmp_path_factory):
    """Each algorithm trained once for MAX_STEPS; tests read what the runs left behind."""
    run_dir = tmp_path_factory.mktemp("runs")
    logs = {
        algorithm: run_script(
            f"{algorithm}.py", *training_args(algorithm, demo_assets, run_dir, MAX_STEPS, *FAST, *SCHEDULE)
        )
        for algorithm in ALGORITHMS
    }
    return run_dir, logs


def log_history(run_dir, algorithm):
    return read_log_history(run_dir / "outputs" / f"{algorithm}_test")


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
    assert {"merge_report.json", "README.md"} <= names
    # What vLLM needs: the architecture named, weights as safetensors only, and no adapter to apply.
    assert not any(name.startswith("adapter") or name.endswith((".bin", ".pt", ".pth")) for name in names)
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template
    # The demo base ties its embeddings, and LoRA on all-linear leaves them alone: the merged model stays tied.
    assert config["tie_word_embeddings"]
    with safe_open(merged_dir / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys() and "model.embed_tokens.weight" in weights.keys()
    leftovers = [path for path in merged_dir.parent.glob(f".{algorithm}_test.*") if path.suffix != ".lock"]
    assert not leftovers, "a staging directory was left behind"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_merged_logits_equal_base_plus_adapter(runs, demo_assets, algorithm):
    run_dir, _ = runs
    merged_dir, adapter_dir = run_dir / "models" / f"{algorithm}_test", run_dir / "outputs" / f"{algorithm}_test"
    assert_merged_is_base_plus_adapter(merged_dir, demo_assets.model_dir, adapter_dir)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float32_merge_keeps_the_whole_update_and_reports_it(runs, demo_assets, algorithm):
    run_dir, logs = runs
    report = json.loads((run_dir / "models" / f"{algorithm}_test" / "merge_report.json").read_text())
    assert report["check_batch"]["source"] == f"{demo_assets.data_dir} [validation]"
    assert report["check_batch"]["examples"] == 8
    assert (report["base_dtype"], report["merged_dtype"], report["word_embeddings"]) == ("float32", "float32", "tied")
    # Measured: at most 9e-6 apart, float32 summation order, where the adapter moves logits by 6.2 to 8.5.
    assert report["max_abs_logit_diff"] < 1e-4 < 0.1 < report["adapter_effect_max_abs_logit_diff"]
    assert report["share_kept"] > 0.9999 and report["mean_kl"] < 1e-9
    assert report["qlora_gap"] is None and report["warning"] is None
    assert f"INFO prefopt.merge: {report_line(report)}" in logs[algorithm].stderr


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_model_card_is_in_the_hubs_format(runs, demo_assets, algorithm):
    run_dir, _ = runs
    card = run_dir / "models" / f"{algorithm}_test" / "README.md"
    metadata, text = front_matter(card), card.read_text()
    # The demo base is a local model of no hub id: named in the text by its directory's name, never by its path.
    assert "base_model" not in metadata
    assert text.count("`demo-base` (a local model) with a LoRA adapter, trained with ") == 1
    assert str(demo_assets.model_dir) not in text
    assert metadata["library_name"] == "transformers"
    assert {algorithm, "lora", "trl"} <= set(metadata["tags"])
    assert "datasets" not in metadata and "license" not in metadata  # local data; the demo base has no card
    assert f"| algorithm | {algorithm.upper()}, beta " in text
    assert f", {MAX_STEPS} steps (" in text and f"| data | {demo_assets.data_dir} [train] |" in text
    assert "| share of the adapter's effect on the logits kept | 100.0% |" in text


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loss_plot_draws_the_logged_train_and_eval_losses(runs, algorithm):
    run_dir, _ = runs
    output_dir = run_dir / "outputs" / f"{algorithm}_test"
    with Image.open(run_dir / "images" / f"{algorithm}_test_train_loss.png") as image:
        assert image.size == (840, 540)  # 7 x 4.5 inches at 120 dpi
    train, evaluation = loss_figure(output_dir, "title").axes[0].get_lines()
    history = read_log_history(output_dir)
    assert list(train.get_ydata()) == logged(history, "loss")[1] and len(train.get_ydata()) == MAX_STEPS // 5
    assert list(evaluation.get_xdata()) == logged(history, "eval_loss")[0] == [25, 50, 60]  # eval_steps 25, and the end


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
