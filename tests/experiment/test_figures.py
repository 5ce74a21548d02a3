"""Comparison figures from runs' logs and evaluation results, on synthetic logs: what each figure plots."""

import json
import math

import pytest
from matplotlib.container import BarContainer

from experiment.convergence import smooth
from experiment.figures import (
    accuracies_figure,
    main,
    normalised_loss_figure,
    reward_metrics_figure,
    reward_vs_kl_figure,
)
from prefopt.errors import UserError
from tests.helpers import write_run

LOSSES = [math.log(2) * (1 - 0.5 * (1 - math.exp(-step / 5))) for step in range(1, 21)]


def accuracies(implicit: float, normalised: float) -> dict:
    return {
        "implicit_reward_accuracy": {"mean": implicit, "stderr": 0.02},
        "length_normalised_accuracy": {"mean": normalised, "stderr": 0.03},
    }


def results_with_rewards(*names: str) -> dict:
    return {
        "setup": {"reward_fn": "experiment.gold_reward:gold_reward", "base_model": "models/demo-base"},
        "base": {"reward": {"mean": 0.5, "stderr": 0.01}, **accuracies(0.5, 0.55)},
        "models": {
            name: {
                "reward": {"mean": 0.6 + 0.1 * index, "stderr": 0.01},
                "kl": {"mean": 3.0 * (index + 1), "stderr": 0.1},
                **accuracies(0.7, 0.6 + 0.1 * index),
            }
            for index, name in enumerate(names)
        },
    }


def line_data(axes, label):
    (line,) = [line for line in axes.get_lines() if line.get_label() == label]
    return list(line.get_xdata()), list(line.get_ydata())


def test_losses_are_drawn_over_epochs_relative_to_their_smoothed_start(tmp_path):
    dpo = write_run(tmp_path / "dpo", loss=LOSSES)
    kto = write_run(tmp_path / "kto", steps_per_epoch=20, loss=[2 * loss for loss in LOSSES])  # 2 steps per pair
    (axes,) = normalised_loss_figure([dpo, kto]).axes
    dpo_epochs, dpo_curve = line_data(axes, "dpo")
    kto_epochs, kto_curve = line_data(axes, "kto")
    assert dpo_epochs[-1] == 2.0 and kto_epochs[-1] == 1.0
    expected = [value / smooth(LOSSES)[0] for value in smooth(LOSSES)]
    assert dpo_curve == pytest.approx(expected) and kto_curve == pytest.approx(expected)  # the scale divides out
    assert dpo_curve[0] == 1.0 and dpo_curve[-1] < 0.6


def test_reward_metrics_are_each_trainers_own_and_missing_ones_are_empty(tmp_path):
    dpo = write_run(tmp_path / "dpo", loss=LOSSES, **{"rewards/margins": [0.1] * 20, "rewards/accuracies": [0.6] * 20})
    kto = write_run(tmp_path / "kto", steps_per_epoch=20, loss=LOSSES, **{"rewards/margins": [0.2] * 20})
    margins, accuracies = reward_metrics_figure([dpo, kto]).axes
    assert line_data(margins, "dpo")[1] == [0.1] * 20 and line_data(margins, "kto")[1] == [0.2] * 20
    assert line_data(accuracies, "dpo")[1] == [0.6] * 20
    assert line_data(accuracies, "kto") == ([], [])  # KTO's batches are unpaired: it logs no accuracies


def test_reward_vs_kl_places_each_model_each_seeds_frontier_and_their_mean_at_matched_kl(tmp_path):
    results = results_with_rewards("dpo_v1", "kto_v1")
    runs = [
        {"algorithm": "dpo", "label": f"beta {beta}", "overrides": {"seed": seed}, "kl": {"mean": kl},
         "reward": {"mean": reward}}
        for seed, beta, kl, reward in ((42, 0.3, 9.0, 0.66), (42, 0.1, 25.0, 0.70), (1, 0.1, 20.0, 0.60),
                                       (1, 0.3, 10.0, 0.50))
    ]  # fmt: skip
    matched = {"reward": {"dpo": [{"kl": 10.0, "mean": 0.58, "stdev": 0.1}, {"kl": 20.0, "mean": 0.65, "stdev": 0.1},
                                  {"kl": 30.0, "mean": None, "stdev": None}]}}  # fmt: skip
    sweep = {"setup": results["setup"], "base": results["base"], "runs": runs, "matched_kl": matched}
    (axes,) = reward_vs_kl_figure(results, sweep).axes
    seed_lines = [line for line in axes.get_lines() if line.get_linewidth() < 1]
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in seed_lines] == [
        ([9.0, 25.0], [0.66, 0.70]),
        ([10.0, 20.0], [0.50, 0.60]),
    ]
    assert line_data(axes, "dpo (mean over seeds at matched KL)") == ([10.0, 20.0], [0.58, 0.65])
    assert line_data(axes, "base model") == ([0.0], [0.5])
    annotations = {text.get_text(): text.xy for text in axes.texts}
    assert annotations["dpo_v1"] == (3.0, 0.6) and annotations["kto_v1"] == (6.0, pytest.approx(0.7))


def test_accuracies_figure_shows_both_measures_of_each_model():
    (axes,) = accuracies_figure(results_with_rewards("dpo_v1", "simpo_v1")).axes
    implicit, normalised = [container for container in axes.containers if isinstance(container, BarContainer)]
    assert [bar.get_height() for bar in implicit] == [0.5, 0.7, 0.7]
    assert [bar.get_height() for bar in normalised] == pytest.approx([0.55, 0.6, 0.7])
    assert [label.get_text() for label in axes.get_xticklabels()] == ["base (demo-base)", "dpo_v1", "simpo_v1"]
    assert "implicit reward" in implicit.get_label() and "length-normalised" in normalised.get_label()


def test_main_writes_the_reward_kl_figure_only_with_rewards(tmp_path):
    run = write_run(tmp_path / "dpo", loss=LOSSES, **{"rewards/margins": [0.1] * 20})
    (tmp_path / "results.json").write_text(json.dumps(results_with_rewards("dpo")))
    none = str(tmp_path / "none")
    main(["--runs", str(run), "--results", none, "--sweep", none, "--images_dir", str(tmp_path / "without")])
    main(["--runs", str(run), "--results", str(tmp_path / "results.json"), "--sweep", none,
          "--images_dir", str(tmp_path / "with")])  # fmt: skip
    figures = ["comparison_rewards.png", "comparison_train_loss.png"]
    assert sorted(path.name for path in (tmp_path / "without").iterdir()) == figures
    with_rewards = sorted(["comparison_accuracies.png", "comparison_reward_vs_kl.png", *figures])
    assert sorted(path.name for path in (tmp_path / "with").iterdir()) == with_rewards


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no trainer_state.json"):
        main(["--runs", str(tmp_path / "absent"), "--images_dir", str(tmp_path)])
