"""The reward-KL frontier: each algorithm trained on the demo over a small grid of beta (and SimPO's gamma); and the
v1 configs at three training seeds, to tell a difference between algorithms from a difference between seeds.

    python -m experiment.sweep                       # the whole grid: nine trainings, then their evaluation
    python -m experiment.sweep --algorithms dpo kto  # part of it
    python -m experiment.sweep --grid seeds          # the v1 configs at training seeds 42 (theirs), 1 and 2
    bash run_script.bash sweep                    # the same, then the figures and tables

Measured on 2 idle CPU cores: either grid, nine trainings and their evaluation, takes about 5 minutes (510 CPU-seconds);
a KTO run takes about 40 s, a DPO run 33 s, a SimPO run 21 s. Flags this module does not know go to every training
script, e.g. `--max_steps 50` for a quick look.

Every run is its algorithm's `training_configs/<algorithm>_v1.yaml` with only beta (and simpo_gamma), or only the
seed, changed, so data and steps are those of the default experiment; evaluation runs are skipped. The merged
models go to models/sweep/, the runs to outputs/sweep/. Each model is then scored as `experiment.evaluate` scores
them, with the demo's gold reward, and the results are written to results/sweep.json (results/seeds.json for the
seeds); `experiment.figures` draws the frontier as one reward-KL curve per algorithm.
"""

import json
import logging
import sys
import time
from pathlib import Path

from experiment.evaluate import evaluate_models
from experiment.figures import reward_vs_kl_figure, scored_with_reward
from experiment.commands import command_parser, log_progress
from prefopt.atomic import atomic_file
from prefopt.errors import exit_on_user_error
from prefopt.launch import run_logged, training_config, training_script
from prefopt.plotting import save_figure

logger = logging.getLogger(__name__)

# Overrides of each algorithm's v1 config, from strong to weak regularisation: beta around the DPO and KTO papers'
# 0.1; SimPO at the paper's gamma/beta of 0.5, on both sides of its beta 2. Three points each keep the sweep to
# nine runs.
GRID: dict[str, list[dict[str, float]]] = {
    "dpo": [{"beta": 0.3}, {"beta": 0.1}, {"beta": 0.03}],
    "kto": [{"beta": 0.3}, {"beta": 0.1}, {"beta": 0.03}],
    "simpo": [{"beta": 4.0, "simpo_gamma": 2.0}, {"beta": 2.0, "simpo_gamma": 1.0}, {"beta": 1.0, "simpo_gamma": 0.5}],
}


# Each v1 config at its own seed and two more: the training seed sets the LoRA initialisation and the data order.
SEEDS: dict[str, list[dict[str, float]]] = {algorithm: [{"seed": 42}, {"seed": 1}, {"seed": 2}] for algorithm in GRID}
GRIDS = {"frontier": GRID, "seeds": SEEDS}
OUTPUTS = {"frontier": "results/sweep.json", "seeds": "results/seeds.json"}


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
        "--config", str(training_config(f"{algorithm}_v1")),
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


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(
        "experiment.sweep", __doc__, allow_abbrev=False
    )  # unknown flags go to the training scripts, whole
    parser.add_argument("--grid", choices=list(GRIDS), default="frontier", help="beta (and gamma), or seeds")
    parser.add_argument("--algorithms", nargs="+", choices=list(GRID), default=list(GRID), help="what to sweep")
    parser.add_argument("--results", default="results/results.json", help="the default runs' evaluation, drawn too")
    parser.add_argument("--output", help="where the sweep's results are written (default: per grid, see above)")
    parser.add_argument("--samples_per_prompt", type=int, default=8, help="samples per held-out prompt and model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation's sampling")
    args, extra_args = parser.parse_known_args(argv)  # the rest goes to every training script
    log_progress()

    start = time.perf_counter()
    output = args.output or OUTPUTS[args.grid]
    points = [(algorithm, overrides) for algorithm in args.algorithms for overrides in GRIDS[args.grid][algorithm]]
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
        samples_per_prompt=args.samples_per_prompt,
        seed=args.seed,
    )
    sweep = {
        "grid": args.grid,
        "created": evaluation["created"],
        "setup": evaluation["setup"],
        "base": evaluation["base"],
        "runs": [
            {
                "algorithm": algorithm,
                "label": ", ".join(f"{key.removeprefix('simpo_')} {value:g}" for key, value in overrides.items()),
                "overrides": overrides,
                **evaluation["models"][model.name],
            }
            for (algorithm, overrides), model in zip(points, models)
        ],
        "wall_time_s": time.perf_counter() - start,
    }
    with atomic_file(output) as staging:
        staging.write_text(json.dumps(sweep, indent=2) + "\n")
    if args.grid == "frontier":
        save_figure(reward_vs_kl_figure(scored_with_reward(args.results), sweep), "images/comparison_reward_vs_kl.png")
    logger.info("sweep: %d runs in %.1f min -> %s", len(points), sweep["wall_time_s"] / 60, output)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
