"""Benchmarks of dpo.py, kto.py and simpo.py: against TRL's own scripts, over speed settings, over batch and length,
the shipped GPU recipes, and the memory of merging an adapter into a 1 GB model.

    python -m benchmark                            # versus_trl: ours vs TRL, DPO/KTO/SimPO
    python -m benchmark settings                   # precompute_ref_log_probs, checkpointing, workers, threads
    python -m benchmark scaling                    # step time over max_length and batch size
    python -m benchmark recipes [--quick]          # the GPU recipes on random models of their architectures
    python -m benchmark merge                      # peak memory of prefopt.merge and its check, random 1 GB Llama
    python -m benchmark --algorithms dpo --max_steps 40 --repeats 5

Every training run is a subprocess that trains `training_configs/<algorithm>_v1.yaml` on the demo (or --model and
--dataset; the recipes suite: a recipe on the model and data it builds, see `benchmark/recipes.py`) for --max_steps
steps, evaluation and checkpoints off, from an empty datasets cache, measured by
`benchmark.probe`. The runs of a suite are interleaved (A B A B ...), so that changes in the machine's load hit every
variant alike, and each number is a median over --repeats runs. In `versus_trl`, TRL's side is its example script
(trl/scripts/dpo.py, kto.py: what `trl dpo` and `trl kto` launch) on the same YAML without our keys; TRL has no SimPO
script, `benchmark.trl_baseline:trl_simpo` plays it.

Measured per run:
- step time: the median time between optimizer steps, the first (warm-up) step left out; step CPU time: the same in
  CPU time of the training process (its threads, not dataloader workers);
- train tokens/s: non-padding tokens of the policy's forward passes with gradients, per second of step time;
- loss and gradient norm at the last step, and the batch the Trainer ran (micro-batch x accumulation steps);
- peak RSS: of the training process when training ends, and of the whole run (ours also merges and plots);
- setup: from the trainer's construction to its first step, where reference log-probs are precomputed;
  train runtime: the Trainer's own `train_runtime`; wall: the whole subprocess, imports and saving included;
- on a GPU, peak allocated memory and MFU: 6 x linear-layer parameters x tokens/s over the card's dense peak for
  the run's compute dtype. 6N is the usual convention; LoRA's backward skips frozen weights and DPO and KTO add a
  reference forward, so compare MFU between runners of one algorithm. On a CPU both are "n/a".

Each suite writes <output_dir>/<name>.json (every run) and <name>.md (the tables), <name> being the suite unless
--name says otherwise, with the machine: CPU, cores, load average during the runs and library versions. Both are
rewritten after every run, and --resume continues an interrupted benchmark from them. The runs inherit the
environment: `OMP_NUM_THREADS=1 python -m benchmark --name versus_trl_1thread` measures with one torch thread.
"""

import argparse
import logging
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmark.merge_memory import merge_suite
from benchmark.recipes import QUICK, RECIPES, SETTINGS, recipes_suite
from benchmark.report import machine_description, resumed, write_report
from benchmark.runs import measure_interleaved
from benchmark.summaries import ratios, summarise
from benchmark.suites import TRAINING_SUITES
from prefopt.errors import UserError, exit_on_user_error
from prefopt.launch import ALGORITHMS

logger = logging.getLogger("benchmark")

REPORTS_DIR = Path(__file__).resolve().parent / "reports"


def parse_benchmark_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", nargs="?", default="versus_trl", choices=[*TRAINING_SUITES, "recipes", "merge"])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--model", type=Path, default=Path("models/demo-base"), help="base model directory")
    parser.add_argument("--dataset", type=Path, default=Path("data/demo"), help="preference data directory or file")
    parser.add_argument("--max_steps", type=int, help="optimizer steps per training run (default: 30; recipes: 3)")
    parser.add_argument("--repeats", type=int, help="runs per variant, the median reported (default: 3; recipes: 1)")
    parser.add_argument("--output_dir", type=Path, default=REPORTS_DIR, help="where <name>.json/.md go")
    parser.add_argument(
        "--name",
        help="the report's file name, without extension (default: the suite; recipes at tiny scale: recipes_tiny)",
    )
    parser.add_argument("--resume", action="store_true", help="keep the runs of an unfinished report of that name")
    parser.add_argument("--peak_tflops", type=float, help="the GPU's dense peak, for MFU on cards not known here")
    recipe_options = parser.add_argument_group("recipes suite")
    recipe_options.add_argument("--recipes", nargs="+", choices=RECIPES, help="only these recipes (default: every one)")
    recipe_options.add_argument(
        "--quick", action="store_true", help=f"only the grid of {', '.join(QUICK)}, a third of the time"
    )
    recipe_options.add_argument(
        "--settings", nargs="+", choices=SETTINGS, default=[], help="add these to each recipe's grid"
    )
    recipe_options.add_argument(
        "--scale",
        choices=("full", "tiny"),
        default="full" if torch.cuda.is_available() else "tiny",
        help="the recipes' own architectures, or tiny ones of the same family for a CPU (default: full on a GPU)",
    )
    args = parser.parse_args(argv)
    recipes = args.suite == "recipes"
    if args.max_steps is None:
        args.max_steps = 3 if recipes else 30
    if args.repeats is None:
        args.repeats = 1 if recipes else 3
    if args.max_steps < 3 or args.repeats < 1:
        raise UserError("--max_steps must be at least 3 (the first step is warm-up) and --repeats at least 1")
    if recipes:
        if args.quick and set(args.recipes or ()) - set(QUICK):
            raise UserError(f"--quick has a grid only for {', '.join(QUICK)}; drop --quick for the others")
        return args
    if not (args.model / "config.json").is_file():
        raise UserError(f"--model: no model at '{args.model}'; `python -m experiment.demo` builds the demo's")
    if not args.dataset.exists():
        raise UserError(f"--dataset: '{args.dataset}' not found; `python -m experiment.demo` builds the demo's")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_benchmark_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {
        "suite": args.suite,
        "command": " ".join(["python -m benchmark", *(sys.argv[1:] if argv is None else argv)]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "settings": {
            "max_steps": args.max_steps,
            "repeats": args.repeats,
            **(
                {"scale": args.scale, "recipes": args.recipes, "quick": args.quick, "added_settings": args.settings}
                if args.suite == "recipes"
                else {"model": str(args.model), "dataset": str(args.dataset)}
            ),
        },
    }
    name = args.name or ("recipes_tiny" if args.suite == "recipes" and args.scale == "tiny" else args.suite)
    previous = resumed(args.output_dir / f"{name}.json", report) if args.resume else {}
    report.update(created=previous.get("created", report["created"]), complete=False)
    args.model, args.dataset = args.model.resolve(), args.dataset.resolve()  # each run starts in its own directory
    start = time.perf_counter() - previous.get("duration_s", 0)

    with tempfile.TemporaryDirectory(prefix="prefopt-benchmark-") as work_dir:
        if args.suite == "merge":
            report.update(merge_suite(args, Path(work_dir)))
        else:
            if args.suite == "recipes":  # it builds its models and data first
                variants, reference_of = recipes_suite(args, Path(work_dir))
            else:
                variants, reference_of = TRAINING_SUITES[args.suite](args.algorithms)

            def record(runs: list[dict]) -> None:
                """The report so far, written after every run: an interrupted benchmark keeps what it measured."""
                summary = summarise(variants, runs)
                report.update(runs=runs, summary=summary, ratios=ratios(runs, summary, reference_of))
                report["duration_s"] = time.perf_counter() - start
                write_report(report, args.output_dir, name)

            record(measure_interleaved(variants, args, Path(work_dir), previous.get("runs", []), record))
    report.update(complete=True, duration_s=time.perf_counter() - start)
    paths = write_report(report, args.output_dir, name)
    logger.info("benchmark: %s in %.1f min -> %s, %s", args.suite, report["duration_s"] / 60, *paths)
    return report


if __name__ == "__main__":
    with exit_on_user_error():
        main()
