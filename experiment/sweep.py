"""The reward-KL frontier: each algorithm trained on the demo over a small grid of beta (and SimPO's gamma), at three
training seeds, so that the algorithms are compared at matched KL and a difference between algorithms is told from a
difference between seeds.

    python -m experiment.sweep                       # the whole grid: 27 trainings, then their evaluation
    python -m experiment.sweep --algorithms dpo kto  # part of it
    python -m experiment.sweep --seeds 42            # one training seed: 9 trainings
    bash run_script.bash sweep                       # the same, then the figures and tables

Flags this module does not know go to every training script, e.g. `--max_steps 50` for a quick look.

Every run is its algorithm's `training_configs/<algorithm>_v1.yaml` with only beta (and simpo_gamma) and the seed
changed, so data and steps are those of the default experiment; evaluation runs are skipped. The training seed sets the
LoRA initialisation and the data order. The merged models go to models/sweep/, the runs to outputs/sweep/. Each model
is then scored as `experiment.evaluate` scores them, with the demo's gold reward and fluency, and the results are
written to results/sweep.json, with:
- `paper_beta`: per algorithm, the runs at its paper's beta (the v1 config's) over the seeds;
- `matched_kl`: per algorithm, each seed's reward-KL frontier (its runs ordered by KL, linearly interpolated, never
  extrapolated) read at common KL values, log-spaced, with the mean and standard deviation over the seeds.
`experiment.figures` draws the frontiers.
"""

import json
import logging
import statistics
import sys
import time
from pathlib import Path

import yaml

from experiment.evaluate import add_evaluation_to_model_cards, evaluate_models
from experiment.figures import reward_vs_kl_figure, scored_with_reward
from experiment.commands import command_parser, log_progress
from prefopt.atomic import atomic_file
from prefopt.errors import exit_on_user_error
from prefopt.launch import REPO_ROOT, run_logged, training_script
from prefopt.plotting import save_figure

logger = logging.getLogger(__name__)

# Overrides of each algorithm's v1 config, from strong to weak regularisation: beta around the DPO and KTO papers'
# 0.1; SimPO at the paper's gamma/beta of 0.5, on both sides of its beta 2. Three points each, at three seeds.
GRID: dict[str, list[dict[str, float]]] = {
    "dpo": [{"beta": 0.3}, {"beta": 0.1}, {"beta": 0.03}],
    "kto": [{"beta": 0.3}, {"beta": 0.1}, {"beta": 0.03}],
    "simpo": [{"beta": 4.0, "simpo_gamma": 2.0}, {"beta": 2.0, "simpo_gamma": 1.0}, {"beta": 1.0, "simpo_gamma": 0.5}],
}
SEEDS = (42, 1, 2)  # 42 is the v1 configs' own
MATCHED_KL_POINTS = 7  # KL values at which the frontiers are compared


def v1_config(algorithm: str) -> Path:
    """The default experiment's config of `algorithm`, `training_configs/<algorithm>_v1.yaml`: the sweep's centre."""
    return REPO_ROOT / "training_configs" / f"{algorithm}_v1.yaml"


def run_name(algorithm: str, overrides: dict[str, float]) -> str:
    """E.g. `simpo_beta2_gamma1`: the name of the run's output_dir and merged model."""
    return "_".join([algorithm, *(f"{key.removeprefix('simpo_')}{value:g}" for key, value in overrides.items())])


def train(algorithm: str, overrides: dict[str, float], extra_args: list[str]) -> Path:
    """Train and merge one grid point with its algorithm's script; returns the merged model's directory."""
    name = run_name(algorithm, overrides)
    output_dir, merged_dir = Path("outputs/sweep") / name, Path("models/sweep") / name
    output_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, str(training_script(algorithm)),
        "--config", str(v1_config(algorithm)),
        *(f"--{key}={value}" for key, value in overrides.items()),
        "--output_dir", str(output_dir),
        "--merged_model_dir", str(merged_dir),
        "--overwrite_merged", "true",
        "--images_dir", str(output_dir),  # the loss plot next to the run: the v1 configs draw into images/
        "--eval_strategy", "no",  # only the final model is scored
        "--save_strategy", "no",
        *extra_args,
    ]  # fmt: skip
    run_logged(command, output_dir / "train.log", what=f"sweep: {name}")
    return merged_dir


def matched_kl(runs: list[dict], num_points: int = MATCHED_KL_POINTS) -> dict:
    """Each algorithm's reward at common KL values: per seed, read off its runs' reward-KL frontier; over the seeds,
    the mean and standard deviation.

    A seed's frontier is the polyline through its runs ordered by KL. The KL values are spaced evenly on a log scale
    over the range that every frontier covers; where the frontiers share none, over the whole range, and a cell then
    averages only the seeds whose frontier reaches it (`num_seeds`).
    """
    frontiers: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for run in runs:
        points = frontiers.setdefault(run["algorithm"], {}).setdefault(run["overrides"]["seed"], [])
        points.append((run["kl"]["mean"], run["reward"]["mean"]))
    for by_seed in frontiers.values():
        for points in by_seed.values():
            points.sort()
    spans = [(points[0][0], points[-1][0]) for by_seed in frontiers.values() for points in by_seed.values()]
    low, high = max(start for start, _ in spans), min(end for _, end in spans)
    if low >= high:
        low, high = min(start for start, _ in spans), max(end for _, end in spans)
    # Evenly on a log scale, where it can be: most runs sit at a few nats, the loosest ones at tens.
    kl_values = [
        low * (high / low) ** (index / (num_points - 1)) if low > 0 else low + (high - low) * index / (num_points - 1)
        for index in range(num_points)
    ]
    rewards = {}
    for algorithm, by_seed in frontiers.items():
        rewards[algorithm] = []
        for kl in kl_values:
            values = [_interpolate(points, kl) for points in by_seed.values()]
            values = [value for value in values if value is not None]
            rewards[algorithm].append(
                {
                    "kl": kl,
                    "num_seeds": len(values),
                    "mean": statistics.fmean(values) if values else None,
                    "stdev": statistics.stdev(values) if len(values) > 1 else None,
                    "by_seed": values,
                }
            )
    return {"kl_values": kl_values, "reward": rewards}


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """The polyline through `points` (sorted by x) at `x`; None outside their span."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1] if len(points) == 1 and x == points[0][0] else None


def is_paper_point(algorithm: str, overrides: dict[str, float]) -> bool:
    """Whether `overrides` keep the v1 config's own beta (and gamma): the paper's values."""
    config = yaml.safe_load(v1_config(algorithm).read_text())
    return all(config.get(key) == value for key, value in overrides.items() if key != "seed")


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(
        "experiment.sweep", __doc__, allow_abbrev=False
    )  # unknown flags go to the training scripts, whole
    parser.add_argument("--algorithms", nargs="+", choices=list(GRID), default=list(GRID), help="what to sweep")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="training seeds of every grid point")
    parser.add_argument("--results", default="results/results.json", help="the default runs' evaluation, drawn too")
    parser.add_argument("--output", default="results/sweep.json", help="where the sweep's results are written")
    parser.add_argument("--samples_per_prompt", type=int, default=16, help="samples per held-out prompt and model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation's sampling")
    args, extra_args = parser.parse_known_args(argv)  # the rest goes to every training script
    log_progress()

    start = time.perf_counter()
    points = [
        (algorithm, {**overrides, "seed": seed})
        for algorithm in args.algorithms
        for overrides in GRID[algorithm]
        for seed in args.seeds
    ]
    models = []
    for index, (algorithm, overrides) in enumerate(points, 1):
        run_start = time.perf_counter()
        models.append(train(algorithm, overrides, extra_args))
        logger.info("sweep: %d/%d %s in %.0fs", index, len(points), models[-1].name, time.perf_counter() - run_start)

    evaluation = evaluate_models(
        models,
        "models/demo-base",
        "data/demo",
        runs_dir="outputs/sweep",
        reward_fn="experiment.gold_reward:gold_reward",
        fluency_fn="experiment.review_grammar:is_review",
        samples_per_prompt=args.samples_per_prompt,
        seed=args.seed,
    )
    runs = [
        {
            "algorithm": algorithm,
            "label": ", ".join(
                f"{key.removeprefix('simpo_')} {value:g}" for key, value in overrides.items() if key != "seed"
            ),
            "overrides": overrides,
            "paper_beta": is_paper_point(algorithm, overrides),
            **evaluation["models"][model.name],
        }
        for (algorithm, overrides), model in zip(points, models)
    ]
    sweep = {
        "created": evaluation["created"],
        "setup": evaluation["setup"],
        "seeds": args.seeds,
        "base": evaluation["base"],
        "runs": runs,
        "matched_kl": matched_kl(runs),
        "wall_time_s": time.perf_counter() - start,
    }
    with atomic_file(args.output) as staging:
        staging.write_text(json.dumps(sweep, indent=2) + "\n")
    add_evaluation_to_model_cards(evaluation)
    save_figure(reward_vs_kl_figure(scored_with_reward(args.results), sweep), "images/comparison_reward_vs_kl.png")
    logger.info("sweep: %d runs in %.1f min -> %s", len(points), sweep["wall_time_s"] / 60, args.output)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
