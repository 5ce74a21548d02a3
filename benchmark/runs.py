"""One benchmark run: a training script in a subprocess under `benchmark.probe`, and what it measured.

Every run trains a config of `training_configs/` (`<algorithm>_v1.yaml` unless the variant names another), by our
script or TRL's, for `--max_steps` steps, evaluation and checkpoints off, from an empty datasets cache. The runs of a
suite are interleaved (A B A B ...), so that changes in the machine's load hit every variant alike. A run that runs
out of GPU memory is recorded as such: how large a micro-batch fits is one of the things a suite finds out.
"""

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmark.configs import training_config
from benchmark.probe import REPORTER
from benchmark.trl_baseline import trl_config, trl_target
from prefopt.errors import UserError
from prefopt.launch import run_logged, training_script

logger = logging.getLogger(__name__)

PREFOPT, TRL = "prefopt", "TRL"
BASELINE = "v1 config"
OUT_OF_MEMORY = "OutOfMemoryError"  # what torch raises when an accelerator's memory runs out

# Dense peak TFLOPS from NVIDIA's datasheets by compute dtype; a key matches as a substring of the device name, first
# match wins. --peak_tflops sets it for other cards.
PEAK_TFLOPS = {
    "H100 PCIe": {"bfloat16": 756, "float16": 756, "tf32": 378, "float32": 51},
    "H100": {"bfloat16": 989, "float16": 989, "tf32": 495, "float32": 67},
    "H200": {"bfloat16": 989, "float16": 989, "tf32": 495, "float32": 67},
    "A100": {"bfloat16": 312, "float16": 312, "tf32": 156, "float32": 19.5},
    "L40S": {"bfloat16": 362, "float16": 362, "tf32": 183, "float32": 91.6},
    "L4": {"bfloat16": 121, "float16": 121, "tf32": 60, "float32": 30.3},
}


@dataclass(frozen=True)
class Variant:
    """One thing to measure: an algorithm run by one runner, with flags and environment on top of a config.

    `config` names a config of `training_configs/` without its extension; empty, the algorithm's v1 config.
    """

    algorithm: str
    runner: str = PREFOPT
    label: str = BASELINE
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    config: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.algorithm, self.runner, self.label, self.config

    @property
    def config_name(self) -> str:
        return self.config or f"{self.algorithm}_v1"

    def __str__(self) -> str:
        return f"{self.config or self.algorithm} {self.runner} ({self.label})"


def run_command(variant: Variant, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """The child's command line: the runner's script under `benchmark.probe`, with the flags common to both runners."""
    common = [
        "--model_name_or_path", str(args.model),
        "--dataset_name", str(args.dataset),
        "--output_dir", str(run_dir / "output"),
        "--max_steps", str(args.max_steps),
        "--eval_strategy", "no",  # evaluation and checkpoints are not training: neither runner does them
        "--save_strategy", "no",
        "--report_to", REPORTER,
    ]  # fmt: skip
    if variant.runner == PREFOPT:
        target = str(training_script(variant.algorithm))
        config = training_config(variant.config_name)
        common += ["--merged_model_dir", str(run_dir / "merged"), "--images_dir", str(run_dir / "images")]
    else:
        target = trl_target(variant.algorithm)
        config = trl_config(variant.config_name, run_dir / "trl_config.yaml")
    probe = [sys.executable, "-m", "benchmark.probe", str(run_dir / "probe.json"), target]
    return [*probe, "--config", str(config), *common, *variant.flags]


def measure_run(variant: Variant, run_dir: Path, args: argparse.Namespace) -> dict:
    """Run one variant in a subprocess and return what it measured."""
    run_dir.mkdir(parents=True)
    # Every run starts from an empty datasets cache: TRL caches precomputed reference log-probs there, and a run that
    # found an earlier run's would not pay for computing them.
    env = {"HF_DATASETS_CACHE": str(run_dir / "datasets_cache"), **dict(variant.env)}
    load_1min = os.getloadavg()[0]
    start, start_unix = time.perf_counter(), time.time()
    log_path = run_dir / "log.txt"
    try:
        # ru_maxrss is the peak RSS of the child or of any process it waited for (dataloader workers).
        usage = run_logged(
            run_command(variant, run_dir, args), log_path, what=f"benchmark: {variant}", env=env, cwd=run_dir
        )
    except UserError:
        if OUT_OF_MEMORY not in log_path.read_text():
            raise
        logger.warning("benchmark: %s ran out of GPU memory", variant)
        return {"failed": "out of memory", "wall_s": time.perf_counter() - start, "load_1min": load_1min}
    wall_s, end_unix = time.perf_counter() - start, time.time()

    probe = json.loads((run_dir / "probe.json").read_text())
    accelerator = probe["accelerator_name"]
    peak_flops = peak_tflops(accelerator, probe["compute_dtype"], args.peak_tflops) * 1e12 if accelerator else None
    flops_per_token = 6 * probe["matmul_parameters"]
    step_s = median_interval(probe["step_end_s"])
    tokens_per_step = probe["train_tokens"] / len(probe["step_end_s"])
    return {
        "failed": None,
        "step_s": step_s,
        "cpu_step_s": median_interval(probe["step_end_cpu_s"]),
        "first_step_s": probe["step_end_s"][0] - probe["train_begin_s"],
        "step_times_s": [later - earlier for earlier, later in itertools.pairwise(probe["step_end_s"])],
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s,
        "mfu": flops_per_token * tokens_per_step / step_s / peak_flops if peak_flops else None,
        "loss": probe["losses"][-1] if probe["losses"] else None,
        "grad_norm": probe["grad_norms"][-1] if probe["grad_norms"] else None,
        "losses": probe["losses"],
        "grad_norms": probe["grad_norms"],
        "micro_batch": probe["micro_batch"],
        "accumulation_steps": probe["accumulation_steps"],
        "effective_batch": probe["micro_batch"] * probe["accumulation_steps"] * probe["processes"],
        "peak_rss_train_mib": probe["peak_rss_bytes"] / 2**20,
        "peak_rss_run_mib": usage.ru_maxrss / 2**10,  # KiB on Linux
        "peak_gpu_gib": probe["peak_accelerator_bytes"] / 2**30 if accelerator else None,
        "flops_per_token": flops_per_token,
        "peak_flops": peak_flops,
        "setup_s": probe["train_begin_s"] - probe["init_end_s"],
        "train_runtime_s": probe["train_runtime_s"],
        "wall_s": wall_s,
        # The rest of the wall time: imports, data, model and trainer before training; saving (and ours: merging
        # and plotting) after.
        "before_training_s": probe["train_begin_unix_s"] - start_unix,
        "after_training_s": end_unix - probe["train_end_unix_s"],
        "load_1min": load_1min,
        "device": accelerator or "cpu",
        "compute_dtype": probe["compute_dtype"],
        "torch_threads": probe["torch_threads"],
    }


def in_fresh_process(function: Callable, *args):
    """`function(*args)` in a new interpreter: its ru_maxrss is its own, and what it holds (a GPU) it releases."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def median_interval(times: list[float]) -> float:
    """The median time between consecutive steps; the first step, timed from the start of training, is left out."""
    return statistics.median(later - earlier for earlier, later in itertools.pairwise(times))


def peak_tflops(device_name: str, compute_dtype: str, override: float | None) -> float:
    if override:
        return override
    for name, peaks in PEAK_TFLOPS.items():
        if name in device_name:
            return peaks[compute_dtype]
    raise UserError(f"benchmark: no peak TFLOPS known for {device_name}; pass --peak_tflops")


def measure_interleaved(
    variants: list[Variant],
    args: argparse.Namespace,
    work_dir: Path,
    done: list[dict],
    after_each: Callable[[list[dict]], None],
) -> list[dict]:
    """Each variant --repeats times, in the order A B C A B C ...: a drift in load hits all variants alike.

    Runs in `done` (of a resumed report) are kept, not repeated; `after_each` sees the runs so far after every run.
    """
    done = {(*variant_key(run), run["repeat"]): run for run in done}
    runs = []
    for repeat in range(args.repeats):
        for variant in variants:
            if (*variant.key, repeat) in done:
                runs.append(done[(*variant.key, repeat)])
                continue
            metrics = measure_run(variant, work_dir / f"run{len(runs):03d}", args)
            runs.append({**asdict(variant), "repeat": repeat, **metrics})
            after_each(runs)
            if metrics["failed"]:
                continue
            logger.info(
                "benchmark: %d/%d %s: %.3f s/step (%.3f s CPU), wall %.1f s, load %.2f",
                len(runs), len(variants) * args.repeats, variant, metrics["step_s"], metrics["cpu_step_s"],
                metrics["wall_s"], metrics["load_1min"],
            )  # fmt: skip
    return runs


def variant_key(row: dict) -> tuple[str, str, str, str]:
    """The (algorithm, runner, label, config) of a run or summary row, as `Variant.key` gives it."""
    return row["algorithm"], row["runner"], row["label"], row.get("config", "")
