"""Comparison figures: DPO, KTO and SimPO side by side, from their runs' logs and from `prefopt.evaluate`'s results.

    python -m prefopt.compare                  # the default runs in outputs/, results/results.json, results/sweep.json
    python -m prefopt.compare --runs outputs/dpo_v1 outputs/simpo_v1 --results results/results.json

- images/comparison_train_loss.png: each run's train loss divided by its smoothed initial value, the losses being
  on different scales (DPO's starts at log 2, SimPO's at softplus(gamma)), with the point from which it is stable;
- images/comparison_rewards.png: `rewards/margins` and `rewards/accuracies` over epochs as each trainer logs them,
  in its own implicit reward (DPO and KTO: beta x log-ratio to the reference; SimPO: beta x per-token
  log-probability). KTO logs no accuracies: its batches are unpaired;
- images/comparison_reward_vs_kl.png: the reward of each model's samples against their KL from the base model
  (the DPO paper's Figure 2): a point per evaluated model and, after a sweep, a curve per algorithm.
"""

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt

from prefopt.atomic import atomic_file
from prefopt.errors import UserError, exit_on_user_error
from prefopt.evaluate import smooth, steps_to_stable_loss
from prefopt.plotting import loss_curves

logger = logging.getLogger(__name__)

DEFAULT_RUNS = ("outputs/dpo_v1", "outputs/kto_v1", "outputs/simpo_v1")


def log_history(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "trainer_state.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no trainer_state.json; train the run first (bash run_script.bash)")
    return json.loads(path.read_text())["log_history"]


def logged(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of a train metric (`rewards/margins`, ...); empty if the trainer does not log it."""
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    return tuple(map(list, zip(*points))) if points else ([], [])


def plot_normalised_losses(run_dirs: Sequence[str | Path], image_path: str | Path) -> Path:
    """Train loss / its smoothed start for each run over epochs: logged (faint) and smoothed, the stable step marked.

    Epochs, not steps: KTO takes two steps per pair where DPO and SimPO take one.
    """
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        history = log_history(run_dir)
        steps, losses = loss_curves(history)["train"]
        epochs = _epochs(history, steps)
        smoothed = smooth(losses)
        stable = steps.index(steps_to_stable_loss(steps, losses))
        (line,) = axes.plot(epochs, [loss / smoothed[0] for loss in smoothed], label=Path(run_dir).name)
        axes.plot(epochs, [loss / smoothed[0] for loss in losses], color=line.get_color(), alpha=0.25, linewidth=0.8)
        axes.plot(epochs[stable], smoothed[stable] / smoothed[0], "o", color=line.get_color(), markersize=7)
    axes.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    axes.set(
        title="Train loss relative to its start (faint: as logged; dot: stable from here)",
        xlabel="epoch",
        ylabel="loss / smoothed initial loss",
    )
    return _save(figure, image_path)


def plot_reward_metrics(run_dirs: Sequence[str | Path], image_path: str | Path) -> Path:
    """`rewards/margins` and `rewards/accuracies` of each run over epochs, in two panels."""
    figure, panels = plt.subplots(1, 2, figsize=(12, 4.5))
    for run_dir in run_dirs:
        history = log_history(run_dir)
        for axes, key in zip(panels, ("rewards/margins", "rewards/accuracies")):
            steps, values = logged(history, key)
            axes.plot(_epochs(history, steps), values, label=Path(run_dir).name)
    panels[0].set(title="Reward margin, chosen - rejected (each trainer's own reward)", xlabel="epoch", ylabel="margin")
    panels[1].set(title="Reward accuracy on train batches (KTO logs none)", xlabel="epoch", ylabel="accuracy")
    panels[1].axhline(0.5, color="gray", linewidth=0.8, linestyle=":")
    return _save(figure, image_path)


def plot_reward_vs_kl(results: dict | None, sweep: dict | None, image_path: str | Path) -> Path:
    """Mean reward of samples against KL from the base: evaluated models as points, sweep runs as curves.

    `results` (prefopt.evaluate's) and `sweep` (prefopt.sweep's) must have been scored with a reward; either may be
    None.
    """
    setup_and_base = results or sweep
    figure, axes = plt.subplots(figsize=(7, 5))
    for algorithm, runs in _by_algorithm(sweep["runs"] if sweep else []).items():
        runs.sort(key=lambda run: run["kl"]["mean"])
        axes.plot([run["kl"]["mean"] for run in runs], [run["reward"]["mean"] for run in runs], "o-", label=algorithm)
        for run in runs:
            point = (run["kl"]["mean"], run["reward"]["mean"])
            axes.annotate(run["label"], point, xytext=(4, -10), textcoords="offset points", fontsize=7)
    axes.plot(0.0, setup_and_base["base"]["reward"]["mean"], "k*", markersize=12, label="base model")
    for name, model in (results["models"] if results else {}).items():
        point = (model["kl"]["mean"], model["reward"]["mean"])
        axes.errorbar(*point, xerr=model["kl"]["stderr"], yerr=model["reward"]["stderr"], fmt="ks", markersize=5)
        axes.annotate(name, point, xytext=(5, 4), textcoords="offset points", fontsize=8)
    axes.set(
        title="Reward against KL from the base model",
        xlabel="KL(policy || base), nats per sample",
        ylabel=f"mean reward of samples ({setup_and_base['setup']['reward_fn']})",
    )
    return _save(figure, image_path)


def scored_with_reward(path: str | Path) -> dict | None:
    """The results (of prefopt.evaluate or prefopt.sweep) in `path` if it exists and they include rewards."""
    path = Path(path)
    results = json.loads(path.read_text()) if path.is_file() else None
    return results if results and results["setup"]["reward_fn"] else None


def _epochs(history: list[dict], steps: list[int]) -> list[float]:
    epoch_at = {entry["step"]: entry["epoch"] for entry in history if "epoch" in entry}
    return [epoch_at[step] for step in steps]


def _by_algorithm(runs: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["algorithm"], []).append(run)
    return grouped


def _save(figure, image_path: str | Path) -> Path:
    for axes in figure.axes:
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    with atomic_file(image_path) as staging:
        figure.savefig(staging, dpi=120)
    plt.close(figure)
    return Path(image_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m prefopt.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="output_dirs of the runs to compare")
    parser.add_argument("--results", default="results/results.json", help="prefopt.evaluate's results")
    parser.add_argument("--sweep", default="results/sweep.json", help="prefopt.sweep's results, drawn when present")
    parser.add_argument("--images_dir", default="images", help="where the figures go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    images = Path(args.images_dir)
    written = [
        plot_normalised_losses(args.runs, images / "comparison_train_loss.png"),
        plot_reward_metrics(args.runs, images / "comparison_rewards.png"),
    ]
    results, sweep = scored_with_reward(args.results), scored_with_reward(args.sweep)
    if results or sweep:
        written.append(plot_reward_vs_kl(results, sweep, images / "comparison_reward_vs_kl.png"))
    else:
        logger.info("compare: neither %s nor %s holds rewards: no reward-KL figure", args.results, args.sweep)
    logger.info("compare: %s", ", ".join(map(str, written)))


if __name__ == "__main__":
    with exit_on_user_error():
        main()
