"""The SimPO ablation: TRL's CPOConfig defaults (beta 0.1, simpo_gamma 0.5) next to the SimPO paper's values.

    python -m experiment.ablation    # after training both configs and running experiment.evaluate

TRL's SimPO loss is softplus(gamma - beta * margin) = -logsigmoid(beta * margin - gamma), where margin is the mean
per-token log-probability of the chosen response minus the rejected one (TRL logs both means as `logps/*`). At
margin 0 the loss is softplus(gamma), and its slope in the margin is -beta * sigmoid(gamma - beta * margin). This
module measures, for each config, what that predicts:
- where the (smoothed) loss starts and ends against softplus(gamma), and the loss the final train margin predicts;
- how far the margin itself moved (train batches, and the held-out pairs from `experiment.evaluate`), and where the
  per-token log-probability of the chosen responses went;
- the first logged gradient norm, whose ratio between the two configs should be the ratio of beta * sigmoid(gamma)
  if the gradient is the slope times the same margin gradient.
It writes results/simpo_ablation.json and images/simpo_ablation_comparison.png.
"""

import json
import logging
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import yaml

from experiment.convergence import smooth
from experiment.commands import command_parser, log_progress
from prefopt.atomic import atomic_file
from prefopt.errors import UserError, exit_on_user_error
from prefopt.plotting import pyplot, save_figure
from prefopt.run_logs import logged, loss_curves, read_log_history

logger = logging.getLogger(__name__)

DEFAULT_CONFIGS = ("training_configs/simpo_v1.yaml", "training_configs/simpo_trl_defaults.yaml")


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def analyse_run(config_path: str | Path, results: dict | None) -> dict:
    """The ablation's measures for the SimPO run of one config, from its log and its evaluation in `results`."""
    config = yaml.safe_load(Path(config_path).read_text())
    missing = [key for key in ("beta", "simpo_gamma", "output_dir") if key not in config]
    if missing:
        raise UserError(f"{config_path}: the ablation needs {', '.join(missing)} set in the config")
    beta, gamma = config["beta"], config["simpo_gamma"]
    history = read_log_history(config["output_dir"])
    steps, losses = loss_curves(history)["train"]
    _, chosen = logged(history, "logps/chosen")
    _, rejected = logged(history, "logps/rejected")
    margins = [c - r for c, r in zip(chosen, rejected)]
    smoothed_losses, smoothed_margins, smoothed_chosen = smooth(losses), smooth(margins), smooth(chosen)
    _, grad_norms = logged(history, "grad_norm")
    run = {
        "config": str(config_path),
        "output_dir": config["output_dir"],
        "beta": beta,
        "simpo_gamma": gamma,
        "zero_margin_loss": softplus(gamma),
        "initial_loss": smoothed_losses[0],
        "final_loss": smoothed_losses[-1],
        "initial_train_margin": smoothed_margins[0],
        "final_train_margin": smoothed_margins[-1],
        "predicted_final_loss": softplus(gamma - beta * smoothed_margins[-1]),
        "initial_chosen_logp": smoothed_chosen[0],
        "final_chosen_logp": smoothed_chosen[-1],
        "initial_slope": beta * sigmoid(gamma),
        "first_grad_norm": grad_norms[0],
        "curves": {"steps": steps, "loss": losses, "margin": margins, "chosen_logp": chosen, "grad_norm": grad_norms},
    }
    merged = Path(config.get("merged_model_dir", Path("models") / Path(config["output_dir"]).name)).name
    evaluated = (results or {}).get("models", {}).get(merged)
    if evaluated:
        run["heldout_preference_accuracy"] = evaluated["length_normalised_accuracy"]
        run["heldout_margin"] = evaluated["length_normalised_margin"]
    return run


def ablation_figure(runs: Sequence[dict]):
    """Each run over steps: loss (softplus(gamma) dashed), per-token margin and chosen log-prob, gradient norm."""
    figure, panels = pyplot().subplots(2, 2, figsize=(12, 8))
    loss_axes, margin_axes, logp_axes, grad_axes = panels.flat
    for run in runs:
        label = f"{Path(run['output_dir']).name} (beta {run['beta']:g}, gamma {run['simpo_gamma']:g})"
        curves = run["curves"]
        (line,) = loss_axes.plot(curves["steps"], curves["loss"], label=label)
        loss_axes.axhline(run["zero_margin_loss"], color=line.get_color(), linestyle="--", linewidth=1)
        margin_axes.plot(curves["steps"], curves["margin"], label=label)
        logp_axes.plot(curves["steps"], curves["chosen_logp"], label=label)
        grad_axes.plot(curves["steps"], curves["grad_norm"], label=label)
    loss_axes.set(title="Train loss (dashed: softplus(gamma), the loss at margin 0)", ylabel="loss")
    margin_axes.set(title="Per-token log-prob margin, chosen - rejected", ylabel="nats per token")
    logp_axes.set(title="Per-token log-prob of the chosen responses", ylabel="nats per token")
    grad_axes.set(title="Gradient norm (before clipping)", ylabel="norm", yscale="log")
    for axes in panels.flat:
        axes.set(xlabel="train step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("experiment.ablation", __doc__)
    parser.add_argument("--configs", nargs=2, default=list(DEFAULT_CONFIGS), help="the paper's and TRL's SimPO configs")
    parser.add_argument("--results", default="results/results.json", help="experiment.evaluate's results, if any")
    parser.add_argument("--output", default="results/simpo_ablation.json", help="where the measures are written")
    parser.add_argument("--image", default="images/simpo_ablation_comparison.png", help="where the figure goes")
    args = parser.parse_args(argv)
    log_progress()

    results = json.loads(Path(args.results).read_text()) if Path(args.results).is_file() else None
    runs = [analyse_run(config, results) for config in args.configs]
    save_figure(ablation_figure(runs), args.image)
    paper, defaults = runs
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [{key: value for key, value in run.items() if key != "curves"} for run in runs],
        "predicted_grad_ratio": paper["initial_slope"] / defaults["initial_slope"],
        "measured_grad_ratio": paper["first_grad_norm"] / defaults["first_grad_norm"],
    }
    with atomic_file(args.output) as staging:
        staging.write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("ablation: %s and %s", args.output, args.image)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
