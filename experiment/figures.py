"""Comparison figures: DPO, KTO and SimPO side by side, from their runs' logs and from `experiment.evaluate`'s results.

    python -m experiment.figures                  # the default runs in outputs/, results/results.json, results/sweep.json
    python -m experiment.figures --runs outputs/dpo_v1 outputs/simpo_v1 --results results/results.json

- images/comparison_train_loss.png: each run's train loss divided by its smoothed initial value, the losses being
  on different scales (DPO's starts at log 2, SimPO's at softplus(gamma)), with the point from which it is stable;
- images/comparison_rewards.png: `rewards/margins` and `rewards/accuracies` over epochs as each trainer logs them,
  in its own implicit reward (DPO and KTO: beta x log-ratio to the reference; SimPO: beta x per-token
  log-probability). KTO logs no accuracies: its batches are unpaired;
- images/comparison_reward_vs_kl.png: the reward of each model's samples against their KL from the base model
  (the DPO paper's Figure 2): a point per evaluated model and, after a sweep, each seed's frontier per algorithm and
  their mean at matched KL;
- images/comparison_accuracies.png: both held-out preference accuracies of each evaluated model.
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from experiment.convergence import smooth, steps_to_stable_loss
from experiment.commands import command_parser, log_progress
from experiment.results import by_algorithm, reward_name
from prefopt.errors import exit_on_user_error
from prefopt.plotting import pyplot, save_figure
from prefopt.run_logs import epochs_at, logged, loss_curves, read_log_history

logger = logging.getLogger(__name__)

DEFAULT_RUNS = ("outputs/dpo_v1", "outputs/kto_v1", "outputs/simpo_v1")


def normalised_loss_figure(run_dirs: Sequence[str | Path]):
    """Train loss / its smoothed start for each run over epochs: logged (faint) and smoothed, the stable step marked.

    Epochs, not steps: KTO takes two steps per pair where DPO and SimPO take one.
    """
    figure, axes = pyplot().subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        history = read_log_history(run_dir)
        steps, losses = loss_curves(history)["train"]
        epochs = epochs_at(history, steps)
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
    return _finish(figure)


def reward_metrics_figure(run_dirs: Sequence[str | Path]):
    """`rewards/margins` and `rewards/accuracies` of each run over epochs, in two panels."""
    figure, panels = pyplot().subplots(1, 2, figsize=(12, 4.5))
    for run_dir in run_dirs:
        history = read_log_history(run_dir)
        for axes, key in zip(panels, ("rewards/margins", "rewards/accuracies")):
            steps, values = logged(history, key)
            axes.plot(epochs_at(history, steps), values, label=Path(run_dir).name)
    panels[0].set(title="Reward margin, chosen - rejected (each trainer's own reward)", xlabel="epoch", ylabel="margin")
    panels[1].set(
        title="Accuracy on train batches, each in its own reward (KTO logs none)", xlabel="epoch", ylabel="accuracy"
    )
    panels[1].axhline(0.5, color="gray", linewidth=0.8, linestyle=":")
    return _finish(figure)


def reward_vs_kl_figure(results: dict | None, sweep: dict | None):
    """Mean reward of samples against KL from the base: evaluated models as points; after a sweep, each seed's
    frontier as a thin line and the mean over seeds at matched KL as a thick one, its band one standard deviation.

    `results` (experiment.evaluate's) and `sweep` (experiment.sweep's) must have been scored with a reward; either
    may be None.
    """
    setup_and_base = results or sweep
    figure, axes = pyplot().subplots(figsize=(7, 5))
    for algorithm, runs in by_algorithm(sweep["runs"] if sweep else []).items():
        color = None
        for seed in dict.fromkeys(run["overrides"].get("seed") for run in runs):
            frontier = sorted(
                (run["kl"]["mean"], run["reward"]["mean"]) for run in runs if run["overrides"].get("seed") == seed
            )
            (line,) = axes.plot(*zip(*frontier), "o-", color=color, alpha=0.35, linewidth=0.8, markersize=3)
            color = line.get_color()
        matched = [cell for cell in sweep["matched_kl"]["reward"][algorithm] if cell["mean"] is not None]
        kls, means = [cell["kl"] for cell in matched], [cell["mean"] for cell in matched]
        spreads = [cell["stdev"] or 0.0 for cell in matched]
        axes.plot(kls, means, "-", color=color, linewidth=2.5, label=f"{algorithm} (mean over seeds at matched KL)")
        axes.fill_between(kls, [m - d for m, d in zip(means, spreads)], [m + d for m, d in zip(means, spreads)],
                          color=color, alpha=0.15)  # fmt: skip
    axes.plot(0.0, setup_and_base["base"]["reward"]["mean"], "k*", markersize=12, label="base model")
    for name, model in (results["models"] if results else {}).items():
        point = (model["kl"]["mean"], model["reward"]["mean"])
        axes.errorbar(*point, xerr=model["kl"]["stderr"], yerr=model["reward"]["stderr"], fmt="ks", markersize=5)
        axes.annotate(name, point, xytext=(5, 4), textcoords="offset points", fontsize=8)
    axes.set(
        title="Reward against KL from the base model (thin: one training seed each)",
        xlabel="KL(policy || base), nats per sample",
        ylabel=f"mean reward of samples ({reward_name(setup_and_base['setup']).replace('`', '')})",
    )
    return _finish(figure)


def accuracies_figure(results: dict):
    """Both held-out preference accuracies of each model, side by side, with their standard errors."""
    setup = results["setup"]
    models = {f"base ({Path(setup['base_model']).name})": results["base"], **results["models"]}
    figure, axes = pyplot().subplots(figsize=(9, 4.5))
    width = 0.38
    for offset, (key, label) in zip((-width / 2, width / 2), ACCURACIES):
        positions = [index + offset for index in range(len(models))]
        means = [scores[key]["mean"] for scores in models.values()]
        errors = [scores[key]["stderr"] for scores in models.values()]
        axes.bar(positions, means, width, yerr=errors, capsize=3, label=label)
    axes.axhline(0.5, color="gray", linewidth=0.8, linestyle=":")
    axes.set_xticks(range(len(models)), list(models), fontsize=8)
    axes.set(title="Held-out preference accuracy, two measures", ylabel="accuracy (ties count half)", ylim=(0.3, 1.0))
    return _finish(figure)


ACCURACIES = (
    ("implicit_reward_accuracy", "implicit reward: summed log π − log π_base (DPO's, KTO's)"),
    ("length_normalised_accuracy", "length-normalised: mean per-token log π (SimPO's)"),
)


def scored_with_reward(path: str | Path) -> dict | None:
    """The results (of experiment.evaluate or experiment.sweep) in `path` if it exists and they include rewards."""
    path = Path(path)
    results = json.loads(path.read_text()) if path.is_file() else None
    return results if results and reward_name(results["setup"]) else None


def _finish(figure):
    for axes in figure.axes:
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("experiment.figures", __doc__)
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="output_dirs of the runs to compare")
    parser.add_argument("--results", default="results/results.json", help="experiment.evaluate's results")
    parser.add_argument("--sweep", default="results/sweep.json", help="experiment.sweep's results, drawn when present")
    parser.add_argument("--images_dir", default="images", help="where the figures go")
    args = parser.parse_args(argv)
    log_progress()

    images = Path(args.images_dir)
    written = [
        save_figure(normalised_loss_figure(args.runs), images / "comparison_train_loss.png"),
        save_figure(reward_metrics_figure(args.runs), images / "comparison_rewards.png"),
    ]
    results, sweep = scored_with_reward(args.results), scored_with_reward(args.sweep)
    if results or sweep:
        written.append(save_figure(reward_vs_kl_figure(results, sweep), images / "comparison_reward_vs_kl.png"))
    if results:
        written.append(save_figure(accuracies_figure(results), images / "comparison_accuracies.png"))
    else:
        logger.info("figures: neither %s nor %s holds rewards: no reward-KL figure", args.results, args.sweep)
    logger.info("figures: %s", ", ".join(map(str, written)))


if __name__ == "__main__":
    with exit_on_user_error():
        main()
