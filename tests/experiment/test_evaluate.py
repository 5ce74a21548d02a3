"""The evaluation as a whole: a model against itself, and the command on a trained model with its training cost."""

import json
import sys

import pytest
from transformers import AutoTokenizer

from experiment.evaluate import evaluate_models, load_pairs
from experiment.training_cost import train_tokens_per_epoch
from prefopt.errors import UserError
from prefopt.run import RESOURCE_USAGE_FILE
from prefopt.run_logs import read_log_history
from tests.helpers import run_command, run_script, training_args


def test_model_against_itself_has_kl_zero_and_win_rate_one_half(demo_assets):
    model = str(demo_assets.model_dir)
    results = evaluate_models(
        [model],
        model,
        str(demo_assets.data_dir),
        runs_dir=None,
        reward_fn="experiment.gold_reward:gold_reward",
        fluency_fn="experiment.review_grammar:is_review",
        num_prompts=4,
        samples_per_prompt=2,
    )
    scores = results["models"]["demo-base"]
    assert scores["kl"] == {"mean": 0.0, "stderr": 0.0}
    assert scores["win_rate"] == {"mean": 0.5, "stderr": 0.0}
    assert (
        scores["implicit_reward_accuracy"]
        == results["base"]["implicit_reward_accuracy"]
        == {"mean": 0.5, "stderr": 0.0}
    )
    assert scores["length_normalised_accuracy"] == results["base"]["length_normalised_accuracy"]
    assert scores["fluency"] == results["base"]["fluency"]
    assert results["setup"]["num_prompts"] == 4 and "training" not in scores


@pytest.fixture(scope="module")
def dpo_epoch(demo_assets, tmp_path_factory):
    """One epoch of DPO on the demo pairs (16 steps of 16), logged at its last step, then evaluated from the CLI."""
    run_dir = tmp_path_factory.mktemp("evaluate")
    flags = ["--logging_steps", "4", "--eval_strategy", "no", "--save_strategy", "no"]
    run_script("dpo.py", *training_args("dpo", demo_assets, run_dir, 16, *flags))
    command = [
        sys.executable, "-m", "experiment.evaluate", run_dir / "models" / "dpo_test",
        "--base_model", demo_assets.model_dir,
        "--dataset", demo_assets.data_dir,
        "--runs_dir", run_dir / "outputs",
        "--reward_fn", "experiment.gold_reward:gold_reward",
        "--num_prompts", "4",
        "--samples_per_prompt", "2",
        "--output", run_dir / "results.json",
    ]  # fmt: skip
    run_command(list(map(str, command)))
    return run_dir, json.loads((run_dir / "results.json").read_text())


def test_train_tokens_are_those_trl_counts(dpo_epoch, demo_assets):
    run_dir, results = dpo_epoch
    history = read_log_history(run_dir / "outputs" / "dpo_test")
    trl_count = next(entry["num_tokens"] for entry in reversed(history) if "num_tokens" in entry)
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    assert train_tokens_per_epoch(load_pairs(tokenizer, str(demo_assets.data_dir), "train")) == trl_count
    assert results["models"]["dpo_test"]["training"]["train_tokens"] == trl_count


def test_cli_scores_a_trained_model_with_its_training_cost(dpo_epoch):
    run_dir, results = dpo_epoch
    scores = results["models"]["dpo_test"]
    assert set(scores) >= {"implicit_reward_accuracy", "length_normalised_accuracy", "reward", "win_rate", "kl"}
    assert "training" in scores and "fluency" not in scores  # no --fluency_fn
    assert scores["kl"]["mean"] != 0.0, "the trained model sampled what the base did"
    training = scores["training"]
    usage = json.loads((run_dir / "outputs" / "dpo_test" / RESOURCE_USAGE_FILE).read_text())  # saved by the script
    assert training["peak_memory_mb"] == usage["peak_memory_bytes"] / 2**20
    assert training["process_cpu_time_s"] == usage["cpu_time_s"]
    assert training["steps"] == 16 and training["epochs"] == 1.0
    assert training["tokens_per_second"] == pytest.approx(training["train_tokens"] / training["train_runtime_s"])


def test_cli_adds_the_evaluation_to_the_merged_models_card(dpo_epoch):
    run_dir, results = dpo_epoch
    card = (run_dir / "models" / "dpo_test" / "README.md").read_text()
    evaluation = card.split("## Evaluation\n")[1]
    accuracy = results["models"]["dpo_test"]["implicit_reward_accuracy"]
    assert f"| dpo_test | {accuracy['mean']:.3f} ± {accuracy['stderr']:.3f} |" in evaluation
    assert "| base (" in evaluation and "## Merge check" in card.split("## Evaluation")[0]


def test_a_reward_function_and_a_reward_model_together_are_a_user_error(demo_assets):
    with pytest.raises(UserError, match="--reward_fn or --reward_model, not both"):
        evaluate_models([str(demo_assets.model_dir)], str(demo_assets.model_dir), str(demo_assets.data_dir),
                        reward_fn="experiment.gold_reward:gold_reward", reward_model="my-org/reward-model")  # fmt: skip
