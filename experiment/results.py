"""The results tables, in Markdown, from the JSON the last runs wrote; and the README's results section from them.

    python -m experiment.results                    # results/results.md from results/*.json
    python -m experiment.results --update_readme    # ... and README.md between the results markers

Sources: results/results.json (`experiment.evaluate`), and when present results/simpo_ablation.json
(`experiment.ablation`) and results/sweep.json (`experiment.sweep`). The README's section between
`<!-- results:start -->` and `<!-- results:end -->` is replaced by the same tables, so that it only ever shows
numbers a run produced.
"""

import json
import logging
import statistics
from collections.abc import Callable, Hashable
from pathlib import Path

from experiment.commands import command_parser, log_progress
from prefopt.atomic import atomic_file
from prefopt.errors import UserError, exit_on_user_error
from prefopt.markdown import markdown_table, table_cell

logger = logging.getLogger(__name__)

START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"


def render_markdown(results: dict, ablation: dict | None = None, sweep: dict | None = None) -> str:
    """The evaluation table, then the SimPO ablation and, from a sweep, the seeds, matched-KL and sweep tables."""
    sections = [_evaluation_table(results)]
    if ablation:
        sections.append(_ablation_table(ablation))
    if sweep:
        sections += [_seeds_table(sweep), _matched_kl_table(sweep), _sweep_table(sweep)]
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
    sampled = bool(reward_name(setup))
    what = [f"{setup['num_pairs']} held-out pairs of `{setup['dataset']}` [{setup['split']}]"]
    if sampled:
        what.append(
            f"{setup['num_prompts']} prompts x {setup['samples_per_prompt']} samples per model, seed {setup['seed']}, "
            f"reward {reward_name(setup)}" + (f", fluency `{setup['fluency_fn']}`" if setup.get("fluency_fn") else "")
        )
    what.append(f"{setup['device']}, {results['created']}")

    lines = [
        "### Held-out evaluation",
        "",
        "; ".join(what) + ". Means ± standard error.",
        "",
        held_out_table(results),
        "",
        ACCURACIES_NOTE,
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
        models = {f"base ({Path(setup['base_model']).name})": results["base"], **results["models"]}
        rows = [[name, *(table_cell(text) for text in scores["examples"])] for name, scores in models.items()]
        lines.append(markdown_table(["model", *(f"prompt {index + 1}" for index in range(len(rows[0]) - 1))], rows))
    return "\n".join(lines)


def held_out_table(results: dict, names: list[str] | None = None) -> str:
    """The held-out evaluation's table: the base model, then the evaluated models named (all by default)."""
    setup = results["setup"]
    sampled = bool(reward_name(setup))
    header = ["model", "implicit-reward accuracy", "length-normalised accuracy"]
    if sampled:
        header += [
            "reward", "fluency", "win rate vs base", "KL from base (nats)", "sample length (tokens)",
            "distinct tokens per sample",
        ]  # fmt: skip
    models = {
        f"base ({Path(setup['base_model']).name})": results["base"],
        **{name: results["models"][name] for name in names or results["models"]},
    }
    return markdown_table(header, [_evaluation_row(name, scores, sampled) for name, scores in models.items()])


def model_card_evaluation(results: dict, name: str) -> str:
    """The held-out evaluation of one model beside its base, as its model card's Evaluation section shows it."""
    setup = results["setup"]
    scored = f"; samples scored by {reward_name(setup)}" if reward_name(setup) else ""
    return "\n\n".join(
        [
            f"On {setup['num_pairs']} held-out pairs of `{setup['dataset']}` [{setup['split']}]{scored} "
            f"(`experiment.evaluate`, {results['created']}). Means ± standard error.",
            held_out_table(results, [name]),
            ACCURACIES_NOTE,
        ]
    )


ACCURACIES_NOTE = (
    "Implicit-reward accuracy: how often the chosen response has the higher log π − log π_base, summed over its "
    "tokens, the implicit reward that DPO and KTO optimise; the base scores 0 on every response, so all its pairs tie "
    "and its accuracy is exactly 0.5. Length-normalised accuracy: how often the chosen response has the higher mean "
    "per-token log π, what SimPO optimises."
)


def reward_name(setup: dict) -> str:
    """How the samples were scored, for a caption: the reward function or the reward model; '' without samples."""
    if setup.get("reward_model"):
        return f"model `{setup['reward_model']}`"
    return f"`{setup['reward_fn']}`" if setup.get("reward_fn") else ""


def _evaluation_row(name: str, scores: dict, sampled: bool) -> list[str]:
    row = [name, _pm(scores["implicit_reward_accuracy"]), _pm(scores["length_normalised_accuracy"])]
    if sampled:
        is_base = "win_rate" not in scores
        row += [
            _pm(scores["reward"]),
            _pm(scores["fluency"], digits=2) if "fluency" in scores else "",
            "" if is_base else _pm(scores["win_rate"]),
            "" if is_base else _pm(scores["kl"], digits=1),
            f"{scores['sample_length']['mean']:.1f}",
            _pm(scores["distinct_fraction"], digits=2),
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
        "held-out length-normalised accuracy",
        "held-out length-normalised margin (nats/token)",
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


# The held-out accuracy each algorithm's loss optimises: its "native" measure.
NATIVE_ACCURACY = {
    "dpo": "implicit_reward_accuracy",
    "kto": "implicit_reward_accuracy",
    "simpo": "length_normalised_accuracy",
}
SEED_MEASURES = (
    ("implicit-reward accuracy", "implicit_reward_accuracy", 3),
    ("length-normalised accuracy", "length_normalised_accuracy", 3),
    ("reward", "reward", 3),
    ("fluency", "fluency", 2),
    ("win rate vs base", "win_rate", 3),
    ("KL (nats)", "kl", 1),
)


def by_algorithm(runs: list[dict], key: Callable[[dict], Hashable] = lambda run: run["algorithm"]) -> dict:
    """`runs` grouped by `key`, in order of first appearance."""
    grouped: dict = {}
    for run in runs:
        grouped.setdefault(key(run), []).append(run)
    return grouped


def native_gain(run: dict) -> float:
    """How far a run's native accuracy (its algorithm's own measure) is above the base model's on the same pairs."""
    return run[f"{NATIVE_ACCURACY[run['algorithm']]}_gain"]["mean"]


def _seeds_table(sweep: dict) -> str:
    """At the papers' beta: per algorithm, each measure's mean over the training seeds ± their standard deviation."""
    rows = []
    for algorithm, runs in by_algorithm([run for run in sweep["runs"] if run["paper_beta"]]).items():
        gains = [native_gain(run) for run in runs]
        row = [f"{algorithm} ({runs[0]['label']})", ", ".join(str(run["overrides"]["seed"]) for run in runs)]
        row.append(_spread(gains, 3))
        row += [_spread([run[key]["mean"] for run in runs], digits) for _, key, digits in SEED_MEASURES]
        rows.append(row)
    base = sweep["base"]
    rows.append(
        ["base", "", ""]
        + [f"{base[key]['mean']:.{digits}f}" if key in base else "" for _, key, digits in SEED_MEASURES]
    )
    what = (
        "Each algorithm at its paper's beta (the v1 configs) and three training seeds (LoRA initialisation and data "
        "order); each cell is the mean over the seeds ± their standard deviation (lowest–highest), the samples scored "
        f"as above (seed {sweep['setup']['seed']}). Native accuracy gain: the algorithm's own measure (implicit reward "
        "for DPO and KTO, length-normalised for SimPO) minus the base model's on it."
    )
    header = ["algorithm", "training seeds", "native accuracy gain over base", *(name for name, _, _ in SEED_MEASURES)]
    return "\n".join(
        ["### Seeds: the papers' hyperparameters at three training seeds", "", what, "", markdown_table(header, rows)]
    )


def _matched_kl_table(sweep: dict) -> str:
    """Each algorithm's reward at common KL values, mean ± standard deviation over the seeds' frontiers."""
    matched = sweep["matched_kl"]
    num_seeds = len(sweep["seeds"])
    rows = []
    for algorithm, cells in matched["reward"].items():
        row = [algorithm]
        for cell in cells:
            if cell["mean"] is None:
                row.append("")
                continue
            text = f"{cell['mean']:.3f}" + (f" ± {cell['stdev']:.3f}" if cell["stdev"] is not None else "")
            row.append(text + (f" ({cell['num_seeds']} of {num_seeds} seeds)" if cell["num_seeds"] < num_seeds else ""))
        rows.append(row)
    what = (
        "Each seed's frontier is the line through its three runs of the sweep below, ordered by KL; it is read at the "
        "same KL values for every algorithm, log-spaced over the range all frontiers cover, or the whole range when "
        "they share none, never beyond a frontier's ends. Each cell: mean reward over the seeds whose frontier reaches "
        "that KL ± their standard deviation."
    )
    header = ["algorithm", *(f"reward at KL {kl:.2f}" for kl in matched["kl_values"])]  # the shared range can be narrow
    return "\n".join(["### The algorithms at matched KL", "", what, "", markdown_table(header, rows)])


def _sweep_table(sweep: dict) -> str:
    """Per algorithm and hyperparameters, each measure's mean over the seeds ± their standard deviation."""
    rows = []
    for (algorithm, label), runs in by_algorithm(sweep["runs"], lambda run: (run["algorithm"], run["label"])).items():
        row = [algorithm, label]
        row += [
            _spread([run[key]["mean"] for run in runs], digits, with_range=False) for _, key, digits in SEED_MEASURES
        ]
        row.append(f"{statistics.fmean(run['training']['process_cpu_time_s'] for run in runs):.0f}")
        rows.append(row)
    what = (
        f"{len(sweep['runs'])} runs of the v1 configs, only beta (and gamma) and the training seed "
        f"({', '.join(map(str, sweep['seeds']))}) changed; each cell is the mean over the seeds ± their standard "
        f"deviation; the samples scored as above (seed {sweep['setup']['seed']}); {sweep['wall_time_s'] / 60:.1f} min "
        f"in all, {sweep['created']}."
    )
    header = ["algorithm", "hyperparameters", *(name for name, _, _ in SEED_MEASURES), "process CPU time per run (s)"]
    return "\n".join(["### Sweep: the reward-KL frontier", "", what, "", markdown_table(header, rows)])


def _spread(values: list[float], digits: int, with_range: bool = True) -> str:
    """`mean ± standard deviation (lowest–highest)` of `values`."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    mean, low, high = (f"{value:.{digits}f}" for value in (statistics.fmean(values), min(values), max(values)))
    return f"{mean} ± {spread:.{digits}f}" + (f" ({low}–{high})" if with_range else "")


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
        for name in ("results", "simpo_ablation", "sweep")
    }
    markdown = render_markdown(loaded["results"], loaded["simpo_ablation"], loaded["sweep"])
    with atomic_file(results_dir / "results.md") as staging:
        staging.write_text(markdown)
    logger.info("results: %s", results_dir / "results.md")
    if args.update_readme:
        update_readme(args.update_readme, markdown)
        logger.info("results: updated the results section of %s", args.update_readme)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
