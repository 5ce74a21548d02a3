"""The results tables, in Markdown, from the JSON the last runs wrote; and the README's results section from them.

    python -m experiment.results                    # results/results.md from results/*.json
    python -m experiment.results --update_readme    # ... and README.md between the results markers

Sources: results/results.json (`experiment.evaluate`), and when present results/simpo_ablation.json
(`experiment.ablation`), results/sweep.json and results/seeds.json (`experiment.sweep`). The README's section between
`<!-- results:start -->` and `<!-- results:end -->` is replaced by the same tables, so that it only ever shows
numbers a run produced.
"""

import json
import logging
import statistics
from pathlib import Path

from experiment.commands import command_parser, log_progress
from prefopt.atomic import atomic_file
from prefopt.errors import UserError, exit_on_user_error
from prefopt.markdown import markdown_table, table_cell

logger = logging.getLogger(__name__)

START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"


def render_markdown(
    results: dict, ablation: dict | None = None, sweep: dict | None = None, seeds: dict | None = None
) -> str:
    """The evaluation table, then the SimPO ablation, seed and sweep tables when given."""
    sections = [_evaluation_table(results)]
    if ablation:
        sections.append(_ablation_table(ablation))
    if seeds:
        sections.append(_seeds_table(seeds))
    if sweep:
        sections.append(_sweep_table(sweep))
    return "\n\n".join(sections) + "\n"


def replace_between_markers(text: str, content: str) -> str:
    """`text` with what lies between START_MARKER and END_MARKER replaced by `content`; the markers stay."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start == -1 or end == -1 or end < start:
        raise UserError(f"README: expected {START_MARKER} followed by {END_MARKER} around the results section")
    return f"{text[: start + len(START_MARKER)]}\n{content.strip()}\n{text[end:]}"


def update_readme(readme_path: str | Path, content: str) -> None:
    readme_path = Path(readme_path)
    if not readme_path.is_file():
        raise UserError(f"{readme_path}: no such file")
    updated = replace_between_markers(readme_path.read_text(), content)
    with atomic_file(readme_path) as staging:
        staging.write_text(updated)


# --- Tables ---------------------------------------------------------------------------------------------------------
def _evaluation_table(results: dict) -> str:
    setup = results["setup"]
    sampled = bool(setup["reward_fn"])
    what = [f"{setup['num_pairs']} held-out pairs of `{setup['dataset']}` [{setup['split']}]"]
    if sampled:
        what.append(
            f"{setup['num_prompts']} prompts x {setup['samples_per_prompt']} samples per model, seed {setup['seed']}, "
            f"reward `{setup['reward_fn']}`"
        )
    what.append(f"{setup['device']}, {results['created']}")

    header = ["model", "preference accuracy", "per-token margin (nats)"]
    if sampled:
        header += [
            "reward", "win rate vs base", "KL from base (nats)", "sample length (tokens)", "distinct tokens per sample",
        ]  # fmt: skip
    models = {f"base ({Path(setup['base_model']).name})": results["base"], **results["models"]}
    rows = [_evaluation_row(name, scores, sampled) for name, scores in models.items()]
    lines = [
        "### Held-out evaluation",
        "",
        "; ".join(what) + ". Means ± standard error.",
        "",
        markdown_table(header, rows),
    ]

    trained = {name: model["training"] for name, model in results["models"].items() if "training" in model}
    if trained:
        header = [
            "run",
            "steps",
            "train time (s)",
            "train tokens/s",
            "process CPU time (s)",
            "peak memory (MB)",
            "loss start → end",
            "stable loss from step (epoch)",
        ]
        rows = [_training_row(name, training) for name, training in trained.items()]
        lines += ["", "### Training cost and convergence", "", markdown_table(header, rows)]
    if sampled and "examples" in results["base"]:
        lines += [
            "",
            "### Samples",
            "",
            "The first sample of the first held-out prompts, as the reward scored them.",
            "",
        ]
        rows = [[name, *(table_cell(text) for text in scores["examples"])] for name, scores in models.items()]
        lines.append(markdown_table(["model", *(f"prompt {index + 1}" for index in range(len(rows[0]) - 1))], rows))
    return "\n".join(lines)


def _evaluation_row(name: str, scores: dict, sampled: bool) -> list[str]:
    row = [name, _pm(scores["preference_accuracy"]), _pm(scores["logp_margin"])]
    if sampled:
        is_base = "win_rate" not in scores
        row += [
            _pm(scores["reward"]),
            "" if is_base else _pm(scores["win_rate"]),
            "" if is_base else _pm(scores["kl"], digits=1),
            f"{scores['sample_length']['mean']:.1f}",
            _pm(scores["distinct_fraction"], digits=2) if "distinct_fraction" in scores else "",
        ]
    return row


def _training_row(name: str, training: dict) -> list[str]:
    cpu_time, peak = training["process_cpu_time_s"], training["peak_memory_mb"]
    return [
        name,
        str(training["steps"]),
        f"{training['train_runtime_s']:.0f}",
        f"{training['tokens_per_second']:,.0f}",
        "" if cpu_time is None else f"{cpu_time:,.0f}",
        "" if peak is None else f"{peak:,.0f}",
        f"{training['initial_loss']:.3f} → {training['final_loss']:.3f}",
        f"{training['steps_to_stable_loss']} ({training['epochs_to_stable_loss']:.2f})",
    ]


def _ablation_table(ablation: dict) -> str:
    header = [
        "run",
        "beta",
        "gamma",
        "softplus(gamma)",
        "train loss start → end",
        "train margin start → end (nats/token)",
        "loss predicted by final margin",
        "train log-prob of chosen start → end (nats/token)",
        "slope beta·sigmoid(gamma)",
        "first grad norm",
        "held-out pref. accuracy",
        "held-out margin",
    ]
    rows = []
    for run in ablation["runs"]:
        rows.append(
            [
                Path(run["output_dir"]).name,
                f"{run['beta']:g}",
                f"{run['simpo_gamma']:g}",
                f"{run['zero_margin_loss']:.3f}",
                f"{run['initial_loss']:.3f} → {run['final_loss']:.3f}",
                f"{run['initial_train_margin']:.3f} → {run['final_train_margin']:.3f}",
                f"{run['predicted_final_loss']:.3f}",
                f"{run['initial_chosen_logp']:.2f} → {run['final_chosen_logp']:.2f}",
                f"{run['initial_slope']:.3f}",
                f"{run['first_grad_norm']:.3f}",
                _pm(run["heldout_preference_accuracy"]) if "heldout_preference_accuracy" in run else "",
                _pm(run["heldout_margin"]) if "heldout_margin" in run else "",
            ]
        )
    ratios = (
        f"Gradient-norm ratio of the first logged step: {ablation['measured_grad_ratio']:.1f} measured, "
        f"{ablation['predicted_grad_ratio']:.1f} predicted by the slopes ({ablation['created']})."
    )
    return "\n".join(
        ["### SimPO: the paper's values against TRL's defaults", "", markdown_table(header, rows), "", ratios]
    )


def _sweep_table(sweep: dict) -> str:
    header = [
        "algorithm",
        "hyperparameters",
        "preference accuracy",
        "reward",
        "win rate vs base",
        "KL (nats)",
        "train time (s)",
        "process CPU time (s)",
    ]
    rows = [
        [
            run["algorithm"],
            run["label"],
            _pm(run["preference_accuracy"]),
            _pm(run["reward"]),
            _pm(run["win_rate"]),
            _pm(run["kl"], digits=1),
            f"{run['training']['train_runtime_s']:.0f}",
            f"{run['training']['process_cpu_time_s']:.0f}",
        ]
        for run in sweep["runs"]
    ]
    what = (
        f"{len(sweep['runs'])} runs of the v1 configs, only beta (and gamma) changed; the samples scored as above "
        f"(seed {sweep['setup']['seed']}); {sweep['wall_time_s'] / 60:.1f} min in all, {sweep['created']}."
    )
    return "\n".join(["### Sweep: the reward-KL frontier", "", what, "", markdown_table(header, rows)])


SEED_MEASURES = (("preference accuracy", "preference_accuracy", 3), ("reward", "reward", 3),
                 ("win rate vs base", "win_rate", 3), ("KL (nats)", "kl", 1))  # fmt: skip


def _seeds_table(seeds: dict) -> str:
    """Per algorithm, each measure's mean over the training seeds, their standard deviation and their range."""
    by_algorithm: dict[str, list[dict]] = {}
    for run in seeds["runs"]:
        by_algorithm.setdefault(run["algorithm"], []).append(run)
    rows = []
    for algorithm, runs in by_algorithm.items():
        row = [algorithm, ", ".join(str(run["overrides"]["seed"]) for run in runs)]
        for _, key, digits in SEED_MEASURES:
            means = [run[key]["mean"] for run in runs]
            spread = statistics.stdev(means) if len(means) > 1 else 0.0
            mean, low, high = (f"{value:.{digits}f}" for value in (statistics.fmean(means), min(means), max(means)))
            row.append(f"{mean} ± {spread:.{digits}f} ({low}–{high})")
        rows.append(row)
    what = (
        "The v1 configs at several training seeds (LoRA initialisation and data order); each cell is the mean over "
        "the seeds ± their standard deviation (lowest–highest), the samples scored as above "
        f"(seed {seeds['setup']['seed']}); {seeds['wall_time_s'] / 60:.1f} min in all, {seeds['created']}."
    )
    header = ["algorithm", "training seeds", *(name for name, _, _ in SEED_MEASURES)]
    return "\n".join(
        ["### Seeds: how much of a difference is the training seed's", "", what, "", markdown_table(header, rows)]
    )


def _pm(metric: dict, digits: int = 3) -> str:
    return f"{metric['mean']:.{digits}f} ± {metric['stderr']:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("experiment.results", __doc__)
    parser.add_argument("--results_dir", default="results", help="where results.json and the others are")
    parser.add_argument("--update_readme", nargs="?", const="README.md", help="also rewrite this README's section")
    args = parser.parse_args(argv)
    log_progress()

    results_dir = Path(args.results_dir)
    if not (results_dir / "results.json").is_file():
        raise UserError(f"{results_dir / 'results.json'}: not found; run python -m experiment.evaluate first")
    loaded = {
        name: json.loads(path.read_text()) if (path := results_dir / f"{name}.json").is_file() else None
        for name in ("results", "simpo_ablation", "sweep", "seeds")
    }
    markdown = render_markdown(loaded["results"], loaded["simpo_ablation"], loaded["sweep"], loaded["seeds"])
    with atomic_file(results_dir / "results.md") as staging:
        staging.write_text(markdown)
    logger.info("results: %s", results_dir / "results.md")
    if args.update_readme:
        update_readme(args.update_readme, markdown)
        logger.info("results: updated the results section of %s", args.update_readme)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
