"""Comparison figures from runs' logs and evaluation results, on synthetic logs: what each figure plots."""

import json
import math

import pytest

from experiment.convergence import smooth
from experiment.figures import main, normalised_loss_figure, reward_metrics_figure, reward_vs_kl_figure
from prefopt.errors import UserError
from tests.conftest import write_run

LOSSES = [math.log(2) * (1 - 0.5 * (1 - math.exp(-step / 5))) for step in range(1, 21)]


def results_with_rewards(*names: str) -> dict:
    return {
        "setup": {"reward_fn": "experiment.gold_reward:gold_reward"},
        "base": {"reward": {"mean": 0.5, "stderr": 0.01}},
        "models": {
            name: {
                "reward": {"mean": 0.6 + 0.1 * index, "stderr": 0.01},
                "kl": {"mean": 3.0 * (index + 1), "stderr": 0.1},
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


def test_reward_vs_kl_places_each_model_and_the_base(tmp_path):
    results = results_with_rewards("dpo_v1", "kto_v1")
    sweep = {
        "setup": results["setup"],
        "base": results["base"],
        "runs": [
            {"algorithm": "dpo", "label": f"beta {beta}", "kl": {"mean": kl}, "reward": {"mean": reward}}
            for beta, kl, reward in ((0.3, 9.0, 0.66), (0.1, 25.0, 0.70))
        ],
    }
    (axes,) = reward_vs_kl_figure(results, sweep).axes
    assert line_data(axes, "dpo") == ([9.0, 25.0], [0.66, 0.70])
    assert line_data(axes, "base model") == ([0.0], [0.5])
    annotations = {text.get_text(): text.xy for text in axes.texts}
    assert annotations["dpo_v1"] == (3.0, 0.6) and annotations["kto_v1"] == (6.0, pytest.approx(0.7))


def test_main_writes_the_reward_kl_figure_only_with_rewards(tmp_path):
    run = write_run(tmp_path / "dpo", loss=LOSSES, **{"rewards/margins": [0.1] * 20})
    (tmp_path / "results.json").write_text(json.dumps(results_with_rewards("dpo")))
    none = str(tmp_path / "none")
    main(["--runs", str(run), "--results", none, "--sweep", none, "--images_dir", str(tmp_path / "without")])
    main(["--runs", str(run), "--results", str(tmp_path / "results.json"), "--sweep", none,
          "--images_dir", str(tmp_path / "with")])  # fmt: skip
    figures = ["comparison_rewards.png", "comparison_train_loss.png"]
    assert sorted(path.name for path in (tmp_path / "without").iterdir()) == figures
    assert sorted(path.name for path in (tmp_path / "with").iterdir()) == ["comparison_reward_vs_kl.png", *figures]


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no trainer_state.json"):
        main(["--runs", str(tmp_path / "absent"), "--images_dir", str(tmp_path)])
