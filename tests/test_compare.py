"""Comparison figures from runs' logs and evaluation results, on synthetic logs."""

import json
import math
from pathlib import Path

import pytest

from prefopt.compare import logged, main
from prefopt.errors import UserError


def write_run(run_dir: Path, steps_per_epoch: int = 10, **metrics: list[float]) -> Path:
    """A trainer_state.json logging `metrics` (each a list, one value per logged step) every step."""
    num_steps = len(next(iter(metrics.values())))
    history = [
        {"step": step, "epoch": step / steps_per_epoch, **{key: values[step - 1] for key, values in metrics.items()}}
        for step in range(1, num_steps + 1)
    ]
    run_dir.mkdir(parents=True)
    (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return run_dir


def results_with_rewards(*names: str) -> dict:
    metric = {"mean": 0.6, "stderr": 0.01}
    return {
        "setup": {"reward_fn": "prefopt.sentiment:gold_reward"},
        "base": {"reward": {"mean": 0.5, "stderr": 0.01}},
        "models": {name: {"reward": metric, "kl": {"mean": 3.0, "stderr": 0.1}} for name in names},
    }


def test_figures_are_written(tmp_path):
    losses = [math.log(2) * (1 - 0.5 * (1 - math.exp(-step / 5))) for step in range(1, 21)]
    runs = [
        write_run(tmp_path / "dpo", loss=losses, **{"rewards/margins": [0.1] * 20, "rewards/accuracies": [0.6] * 20}),
        write_run(tmp_path / "kto", steps_per_epoch=20, loss=losses, **{"rewards/margins": [0.2] * 20}),
    ]
    (tmp_path / "results.json").write_text(json.dumps(results_with_rewards("dpo", "kto")))
    main(["--runs", *map(str, runs), "--results", str(tmp_path / "results.json"), "--sweep", str(tmp_path / "none"),
          "--images_dir", str(tmp_path / "images")])  # fmt: skip

    for name in ("comparison_train_loss", "comparison_rewards", "comparison_reward_vs_kl"):
        assert (tmp_path / "images" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_no_reward_kl_figure_without_rewards(tmp_path):
    run = write_run(tmp_path / "dpo", loss=[0.69, 0.6, 0.5])
    none = str(tmp_path / "none")
    main(["--runs", str(run), "--results", none, "--sweep", none, "--images_dir", str(tmp_path / "images")])
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == [
        "comparison_rewards.png",
        "comparison_train_loss.png",
    ]


def test_a_metric_the_trainer_does_not_log_is_empty(tmp_path):
    history = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4, "rewards/margins": 0.3}]
    assert logged(history, "rewards/margins") == ([2], [0.3])
    assert logged(history, "rewards/accuracies") == ([], [])


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no trainer_state.json"):
        main(["--runs", str(tmp_path / "absent"), "--images_dir", str(tmp_path)])
