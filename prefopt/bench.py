"""Benchmarks of dpo.py, kto.py and simpo.py: against TRL's own scripts, over speed settings, over batch and length,
and the memory of merging an adapter into a 1 GB model.

    python -m prefopt.bench                        # ours vs TRL, DPO/KTO/SimPO: about 15 min on 2 busy CPU cores
    python -m prefopt.bench settings               # precompute_ref_log_probs, checkpointing, workers, threads
    python -m prefopt.bench scaling                # step time over max_length and batch size
    python -m prefopt.bench merge                  # peak memory of prefopt.merge on a random 1 GB Llama
    python -m prefopt.bench --algorithms dpo --max_steps 40 --repeats 5

Every training run is a subprocess that trains `training_configs/<algorithm>_v1.yaml` on the demo (or --model and
--dataset) for --max_steps steps, evaluation and checkpoints off, from an empty datasets cache, measured by
`prefopt.probe`. The runs of a suite are interleaved (A B A B ...), so that changes in the machine's load hit every
variant alike, and each number is a median over --repeats runs. In `compare`, TRL's side is its example script
(trl/scripts/dpo.py, kto.py: what `trl dpo` and `trl kto` launch) on the same YAML without our keys; TRL has no SimPO
script, `trl_simpo` plays it.

Measured per run:
- step time: the median time between optimizer steps, the first (warm-up) step left out; step CPU time: the same in
  CPU time of the training process (its threads, not dataloader workers);
- train tokens/s: non-padding tokens of the policy's forward passes with gradients, per second of step time;
- peak RSS: of the training process when training ends, and of the whole run (ours also merges and plots);
- setup: from the trainer's construction to its first step, where reference log-probs are precomputed;
  train runtime: the Trainer's own `train_runtime`; wall: the whole subprocess, imports and saving included;
- on a GPU, peak allocated memory and MFU: 6 x linear-layer parameters x tokens/s over the card's dense peak for
  the run's compute dtype. 6N is the usual convention; LoRA's backward skips frozen weights and DPO and KTO add a
  reference forward, so compare MFU between runners of one algorithm. On a CPU both are "n/a".

Each suite writes <output_dir>/<name>.json (every run) and <name>.md (the tables), <name> being the suite unless
--name says otherwise, with the machine: CPU, cores, load average during the runs and library versions. Both are
rewritten after every run, and --resume continues an interrupted benchmark from them. The runs inherit the
environment: `OMP_NUM_THREADS=1 python -m prefopt.bench --name compare_1thread` measures with one torch thread.
"""

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path

import yaml

from prefopt.atomic import atomic_file
from prefopt.errors import UserError, exit_on_user_error

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
ALGORITHMS = ("dpo", "kto", "simpo")
PREFOPT, TRL = "prefopt", "TRL"
BASELINE = "v1 config"

SETTINGS_OFF = "v1 config, settings off"


@dataclass(frozen=True)
class SpeedSetting:
    """A setting that may make training faster: the flags (or environment) that turn it on and off, and where."""

    algorithms: tuple[str, ...]
    on: tuple[str, ...] = ()
    off: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


# Each is measured against the v1 config with all of them off, whatever the config ships. Not here: padding_free,
# which TRL 1.16's DPOTrainer turns off again with a warning (KTO and CPO have none), and bf16, tf32 and the Liger
# kernel, which need a GPU.
SPEED_SETTINGS = {
    "precompute_ref_log_probs": SpeedSetting(
        ("dpo", "kto"), ("--precompute_ref_log_probs", "true"), ("--precompute_ref_log_probs", "false")
    ),
    "precompute_ref_log_probs, batch 64": SpeedSetting(
        ("dpo", "kto"), ("--precompute_ref_log_probs", "true", "--precompute_ref_batch_size", "64")
    ),
    "gradient_checkpointing": SpeedSetting(
        ALGORITHMS, ("--gradient_checkpointing", "true"), ("--gradient_checkpointing", "false")
    ),
    "dataloader_num_workers=2": SpeedSetting(
        ALGORITHMS, ("--dataloader_num_workers", "2"), ("--dataloader_num_workers", "0")
    ),
    "OMP_NUM_THREADS=1": SpeedSetting(ALGORITHMS, env=(("OMP_NUM_THREADS", "1"),)),
}
V1_SHAPE = (16, 64)  # per_device_train_batch_size and max_length of the v1 configs
MAX_LENGTHS = (16, 32, 64)  # demo sequences are 10-42 tokens: 16 and 32 truncate, 64 keeps them whole
BATCH_SIZES = (4, 8, 16, 32)

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
    """One thing to measure: an algorithm run by one runner, with flags and environment on top of its v1 config."""

    algorithm: str
    runner: str = PREFOPT
    label: str = BASELINE
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return self.algorithm, self.runner, self.label

    def __str__(self) -> str:
        return f"{self.algorithm} {self.runner} ({self.label})"


# --- TRL's side ------------------------------------------------------------------------------------------------------
def trl_target(algorithm: str) -> str:
    """TRL's example script, which `trl dpo` and `trl kto` run through `accelerate launch`; TRL has none for SimPO."""
    if algorithm == "simpo":
        return "prefopt.bench:trl_simpo"
    return str(resources.files("trl.scripts") / f"{algorithm}.py")


def trl_simpo(arguments: list[str]) -> None:
    """SimPO as a TRL example script would train it: TRL's parser, CPO trainer and config, nothing of prefopt.

    TRL ships dpo.py and kto.py but no CPO script; this is its dpo.py with CPOTrainer in place of DPOTrainer.
    """
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    parser = TrlParser((ScriptArguments, CPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(arguments)
    training_args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    trainer = CPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        processing_class=AutoTokenizer.from_pretrained(model_args.model_name_or_path),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


def trl_config(algorithm: str, path: Path) -> Path:
    """The algorithm's v1 config without the keys that only our scripts know (merge, images_dir, ...)."""
    from prefopt.config import RunArguments

    config = yaml.safe_load((REPO / "training_configs" / f"{algorithm}_v1.yaml").read_text())
    ours = {field.name for field in fields(RunArguments)}
    path.write_text(yaml.safe_dump({key: value for key, value in config.items() if key not in ours}))
    return path


# --- Training runs ---------------------------------------------------------------------------------------------------
def command(variant: Variant, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """The child's command line: the runner's script under `prefopt.probe`, with the flags common to both runners."""
    common = [
        "--model_name_or_path", str(args.model),
        "--dataset_name", str(args.dataset),
        "--output_dir", str(run_dir / "output"),
        "--max_steps", str(args.max_steps),
        "--eval_strategy", "no",  # evaluation and checkpoints are not training: neither runner does them
        "--save_strategy", "no",
        "--report_to", "prefopt_probe",
    ]  # fmt: skip
    if variant.runner == PREFOPT:
        target = str(REPO / f"{variant.algorithm}.py")
        config = REPO / "training_configs" / f"{variant.algorithm}_v1.yaml"
        common += ["--merged_model_dir", str(run_dir / "merged"), "--images_dir", str(run_dir / "images")]
    else:
        target = trl_target(variant.algorithm)
        config = trl_config(variant.algorithm, run_dir / "trl_config.yaml")
    probe = [sys.executable, "-m", "prefopt.probe", str(run_dir / "probe.json"), target]
    return [*probe, "--config", str(config), *common, *variant.flags]


def measure(variant: Variant, run_dir: Path, args: argparse.Namespace) -> dict:
    """Run one variant in a subprocess and return what it measured."""
    run_dir.mkdir(parents=True)
    log_path = run_dir / "log.txt"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
        # Every run starts from an empty datasets cache: TRL caches precomputed reference log-probs there, and a
        # run that found an earlier run's would not pay for computing them.
        "HF_DATASETS_CACHE": str(run_dir / "datasets_cache"),
        **dict(variant.env),
    }
    load_1min = os.getloadavg()[0]
    with log_path.open("w") as log:
        start, start_unix = time.perf_counter(), time.time()
        process = subprocess.Popen(
            command(variant, run_dir, args), cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        # wait4 rather than wait: it also returns the child's resource usage, whose ru_maxrss is the peak RSS of the
        # child or of any process it waited for (dataloader workers).
        _, status, usage = os.wait4(process.pid, 0)
        wall_s, end_unix = time.perf_counter() - start, time.time()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if process.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise UserError(f"bench: {variant} failed (exit {process.returncode}); end of {log_path}:\n{tail}")

    probe = json.loads((run_dir / "probe.json").read_text())
    accelerator = probe["accelerator_name"]
    peak_flops = peak_tflops(accelerator, probe["compute_dtype"], args.peak_tflops) * 1e12 if accelerator else None
    flops_per_token = 6 * probe["matmul_parameters"]
    step_s = median_interval(probe["step_end_s"])
    tokens_per_step = probe["train_tokens"] / len(probe["step_end_s"])
    return {
        "step_s": step_s,
        "cpu_step_s": median_interval(probe["step_end_cpu_s"]),
        "first_step_s": probe["step_end_s"][0] - probe["train_begin_s"],
        "step_times_s": [later - earlier for earlier, later in itertools.pairwise(probe["step_end_s"])],
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s,
        "mfu": flops_per_token * tokens_per_step / step_s / peak_flops if peak_flops else None,
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


def median_interval(times: list[float]) -> float:
    """The median time between consecutive steps; the first step, timed from the start of training, is left out."""
    return statistics.median(later - earlier for earlier, later in itertools.pairwise(times))


def peak_tflops(device_name: str, compute_dtype: str, override: float | None) -> float:
    if override:
        return override
    for name, peaks in PEAK_TFLOPS.items():
        if name in device_name:
            return peaks[compute_dtype]
    raise UserError(f"bench: no peak TFLOPS known for {device_name}; pass --peak_tflops")


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
            metrics = measure(variant, work_dir / f"run{len(runs):03d}", args)
            runs.append({**asdict(variant), "repeat": repeat, **metrics})
            after_each(runs)
            logger.info(
                "bench: %d/%d %s: %.3f s/step (%.3f s CPU), wall %.1f s, load %.2f",
                len(runs), len(variants) * args.repeats, variant, metrics["step_s"], metrics["cpu_step_s"],
                metrics["wall_s"], metrics["load_1min"],
            )  # fmt: skip
    return runs


# --- Summaries -------------------------------------------------------------------------------------------------------
MEDIAN_METRICS = (
    "step_s", "cpu_step_s", "first_step_s", "tokens_per_step", "peak_rss_train_mib", "peak_rss_run_mib",
    "peak_gpu_gib", "setup_s", "train_runtime_s", "wall_s", "before_training_s", "after_training_s",
)  # fmt: skip
RATIO_METRICS = ("step_s", "cpu_step_s", "tokens_per_s", "peak_rss_train_mib", "peak_gpu_gib", "mfu", "wall_s")


def summarise(variants: list[Variant], runs: list[dict]) -> list[dict]:
    """Per variant, the median of each metric over its repeats; tokens/s and MFU follow from the median step time."""
    rows = []
    for variant in variants:
        mine = [run for run in runs if variant_key(run) == variant.key]
        if not mine:  # not measured yet, in the report of an unfinished benchmark
            continue
        row = {**asdict(variant), "repeats": len(mine)}
        for metric in MEDIAN_METRICS:
            values = [run[metric] for run in mine if run.get(metric) is not None]
            row[metric] = statistics.median(values) if values else None
        row["step_s_min_max"] = [min(run["step_s"] for run in mine), max(run["step_s"] for run in mine)]
        row["tokens_per_s"] = row["tokens_per_step"] / row["step_s"]
        peak_flops = mine[0]["peak_flops"]
        row["mfu"] = mine[0]["flops_per_token"] * row["tokens_per_s"] / peak_flops if peak_flops else None
        rows.append(row)
    return rows


# A summary row -> the key (algorithm, runner, label) of the row it is compared with; None for no comparison.
Reference = Callable[[dict], tuple[str, str, str] | None]


def ratios(runs: list[dict], rows: list[dict], reference_of: Reference) -> list[dict]:
    """Each variant's metrics over its reference's, and what a setting costs up front and when it has paid that back.

    Each is the median over repeats of the ratio (or difference) within one repeat: the runs of a repeat are minutes
    apart, so that a drift in the machine's load between repeats cancels out.
    """
    by_key = {(*variant_key(run), run["repeat"]): run for run in runs}
    result = []
    for row in rows:
        reference_key = reference_of(row)
        if reference_key is None or reference_key == variant_key(row):
            continue
        pairs = [
            (run, by_key[(*reference_key, run["repeat"])])
            for run in runs
            if variant_key(run) == variant_key(row) and (*reference_key, run["repeat"]) in by_key
        ]
        if not pairs:
            continue
        extra_setup_s = statistics.median(run["setup_s"] - reference["setup_s"] for run, reference in pairs)
        saved_per_step_s = statistics.median(reference["step_s"] - run["step_s"] for run, reference in pairs)
        result.append(
            {
                "algorithm": row["algorithm"],
                "runner": row["runner"],
                "label": row["label"],
                "reference": "/".join(reference_key),
                **{metric: median_ratio(pairs, metric) for metric in RATIO_METRICS},
                "extra_setup_s": extra_setup_s,
                # Steps after which a setting that costs time up front (more than a step's) has paid it back.
                "break_even_steps": (
                    extra_setup_s / saved_per_step_s if extra_setup_s > row["step_s"] and saved_per_step_s > 0 else None
                ),
            }
        )
    return result


def variant_key(row: dict) -> tuple[str, str, str]:
    return row["algorithm"], row["runner"], row["label"]


def median_ratio(pairs: list[tuple[dict, dict]], metric: str) -> float | None:
    values = [run[metric] / reference[metric] for run, reference in pairs if run[metric] and reference[metric]]
    return statistics.median(values) if values else None


# --- Training suites -------------------------------------------------------------------------------------------------
def compare_suite(algorithms: list[str]) -> tuple[list[Variant], Reference]:
    variants = [Variant(algorithm, runner) for algorithm in algorithms for runner in (PREFOPT, TRL)]
    return variants, lambda row: (row["algorithm"], TRL, BASELINE) if row["runner"] == PREFOPT else None


def settings_suite(algorithms: list[str]) -> tuple[list[Variant], Reference]:
    variants = []
    for algorithm in algorithms:
        settings = {label: setting for label, setting in SPEED_SETTINGS.items() if algorithm in setting.algorithms}
        # Merging is the same whatever the setting; a later flag overrides an earlier one.
        all_off = ("--merge", "false", *(flag for setting in settings.values() for flag in setting.off))
        variants.append(Variant(algorithm, label=SETTINGS_OFF, flags=all_off))
        for label, setting in settings.items():
            variants.append(Variant(algorithm, label=label, flags=all_off + setting.on, env=setting.env))
    return variants, lambda row: (row["algorithm"], PREFOPT, SETTINGS_OFF)


def scaling_suite(algorithms: list[str]) -> tuple[list[Variant], Reference]:
    shapes = [(V1_SHAPE[0], length) for length in MAX_LENGTHS]
    shapes += [(batch, V1_SHAPE[1]) for batch in BATCH_SIZES if batch != V1_SHAPE[0]]
    variants = [
        Variant(
            algorithm,
            label=f"batch {batch}, max_length {length}",
            flags=("--merge", "false", "--per_device_train_batch_size", str(batch), "--max_length", str(length)),
        )
        for algorithm in algorithms
        for batch, length in shapes
    ]
    return variants, lambda row: ("dpo", PREFOPT, row["label"])


TRAINING_SUITES = {"compare": compare_suite, "settings": settings_suite, "scaling": scaling_suite}


# --- Merge memory ----------------------------------------------------------------------------------------------------
# A random Llama of 271M parameters: 1.08 GB in float32, enough that the merge's own copies dwarf the Python runtime.
MERGE_BASE = {
    "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16,
    "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 512, "tie_word_embeddings": False,
}  # fmt: skip
MERGE_LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}  # the v1 configs' LoRA


def build_merge_assets(base_dir: Path, adapter_dir: Path, tokenizer_dir: Path, base_config: dict) -> None:
    """The random base in float32 and a LoRA adapter for it whose update is not zero, as a trained one's is not."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**base_config))
    model.save_pretrained(base_dir)
    adapter = get_peft_model(model, LoraConfig(**MERGE_LORA, init_lora_weights=False))
    adapter.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(adapter_dir)  # merge_adapter saves it with the model


def measure_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path) -> dict:
    """`prefopt.merge.merge_adapter` as the scripts call it, in this (fresh) process: its peak RSS and time."""
    from trl import ModelConfig

    from prefopt.merge import merge_adapter

    runtime_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Python and the libraries, no model yet
    start = time.perf_counter()
    merge_adapter(adapter_dir, merged_dir, ModelConfig(model_name_or_path=str(base_dir), dtype="float32"))
    return {
        "runtime_rss_bytes": runtime_rss,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "merge_s": time.perf_counter() - start,
    }


def in_fresh_process(function: Callable, *args):
    """`function(*args)` in a new interpreter, so that its ru_maxrss is its own and no earlier peak's."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def merge_suite(args: argparse.Namespace, work_dir: Path, base_config: dict = MERGE_BASE) -> dict:
    base_dir, adapter_dir = work_dir / "base", work_dir / "adapter"
    in_fresh_process(build_merge_assets, base_dir, adapter_dir, args.model, base_config)
    model_bytes = sum(path.stat().st_size for path in base_dir.glob("*.safetensors"))
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    runs = []
    for repeat in range(args.repeats):
        load_1min = os.getloadavg()[0]
        run = in_fresh_process(measure_merge, base_dir, adapter_dir, work_dir / f"merged{repeat}")
        runs.append({**run, "repeat": repeat, "load_1min": load_1min})
        logger.info("bench: merge %d/%d: peak RSS %.2f GiB", repeat + 1, args.repeats, run["peak_rss_bytes"] / 2**30)
    peak = statistics.median(run["peak_rss_bytes"] for run in runs)
    runtime = statistics.median(run["runtime_rss_bytes"] for run in runs)
    return {
        "base_config": base_config,
        "runs": runs,
        "summary": {
            "model_bytes": model_bytes,
            "adapter_bytes": adapter_bytes,
            "runtime_rss_bytes": runtime,
            "peak_rss_bytes": peak,
            "peak_over_model": peak / model_bytes,
            "peak_above_runtime_over_model": (peak - runtime) / model_bytes,
            "budget_bytes": 1.3 * model_bytes + adapter_bytes,  # what a merge that fits in memory may take
            "merge_s": statistics.median(run["merge_s"] for run in runs),
        },
    }


# --- Report ----------------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    packages = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
    return {
        "cpu": cpu or platform.processor(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{package: metadata.version(package) for package in packages},
    }


def number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


MEASUREMENT_COLUMNS = (
    ("step (s)", "step_s"), ("step CPU (s)", "cpu_step_s"), ("tokens/step", "tokens_per_step"),
    ("tokens/s", "tokens_per_s"), ("peak RSS train (MiB)", "peak_rss_train_mib"),
    ("peak RSS run (MiB)", "peak_rss_run_mib"), ("peak GPU (GiB)", "peak_gpu_gib"), ("MFU", "mfu"),
    ("setup (s)", "setup_s"), ("train runtime (s)", "train_runtime_s"), ("wall (s)", "wall_s"),
    ("before training (s)", "before_training_s"), ("after training (s)", "after_training_s"),
)  # fmt: skip
RATIO_COLUMNS = (
    ("step time", "step_s"), ("step CPU time", "cpu_step_s"), ("tokens/s", "tokens_per_s"),
    ("peak RSS train", "peak_rss_train_mib"), ("peak GPU", "peak_gpu_gib"), ("MFU", "mfu"), ("wall", "wall_s"),
)  # fmt: skip
RATIO_TITLES = {
    "compare": "Ratio prefopt / TRL",
    "settings": "Ratio to the v1 config with the settings off",
    "scaling": "Ratio to DPO at the same batch and max_length",
}


def header(report: dict) -> list[str]:
    machine, loads = report["machine"], [run["load_1min"] for run in report["runs"]]
    devices = ", ".join(sorted({run.get("device", "cpu") for run in report["runs"]}))
    return [
        f"# prefopt.bench {report['suite']}",
        "",
        f"`{report['command']}`, {report['created']}, {report['duration_s'] / 60:.1f} min.",
        "",
        (
            f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable of {machine['logical_cores']} logical "
            f"cores, {machine['memory_gib']:.0f} GiB; device: {devices}. Load average (1 min) at the start of the "
            f"runs: {min(loads):.2f} to {max(loads):.2f}, median {statistics.median(loads):.2f}."
        ),
        (
            f"- Libraries: Python {machine['python']}, torch {machine['torch']}, transformers "
            f"{machine['transformers']}, trl {machine['trl']}, peft {machine['peft']}, datasets {machine['datasets']}, "
            f"accelerate {machine['accelerate']}."
        ),
    ]


def training_markdown(report: dict) -> str:
    settings = report["settings"]
    threads = "/".join(str(count) for count in sorted({run["torch_threads"] for run in report["runs"]}))
    lines = header(report) + [
        (
            f"- Runs: `training_configs/<algorithm>_v1.yaml` with model `{settings['model']}`, data "
            f"`{settings['dataset']}`, {settings['max_steps']} steps, no evaluation or checkpoints, {threads} torch "
            f"thread(s); each number is the median of {settings['repeats']} interleaved runs, each ratio the median "
            "of the ratios within a repeat."
        ),
        "",
        "## Measurements",
        "",
    ]
    rows = [
        [row["algorithm"], row["runner"], row["label"], *(number(row[metric]) for _, metric in MEASUREMENT_COLUMNS)]
        for row in report["summary"]
    ]
    lines += [table(["algorithm", "runner", "settings", *(name for name, _ in MEASUREMENT_COLUMNS)], rows), ""]
    lines += [f"## {RATIO_TITLES[report['suite']]}", ""]
    rows = [
        [
            row["algorithm"],
            row["label"],
            *(number(row[metric]) for _, metric in RATIO_COLUMNS),
            number(row["extra_setup_s"]),
            number(row["break_even_steps"]),
        ]
        for row in report["ratios"]
    ]
    columns = [f"{name} ratio" for name, _ in RATIO_COLUMNS] + ["extra setup (s)", "break-even steps"]
    lines += [table(["algorithm", "settings", *columns], rows), ""]
    if report["suite"] == "scaling":
        lines += scaling_markdown(report)
    return "\n".join(lines)


def scaling_markdown(report: dict) -> list[str]:
    """The scaling suite at a glance: step time per shape and algorithm, and each algorithm's cost relative to DPO.

    Per step and per trained token: a KTO step trains on `batch` completions, a DPO or SimPO step on `batch` pairs.
    """
    algorithms = [
        algorithm for algorithm in ALGORITHMS if any(row["algorithm"] == algorithm for row in report["summary"])
    ]
    step_s = {(row["label"], row["algorithm"]): row["step_s"] for row in report["summary"]}
    over_dpo = {(row["label"], row["algorithm"]): row for row in report["ratios"]}
    shapes = list(dict.fromkeys(row["label"] for row in report["summary"]))
    others = [algorithm for algorithm in algorithms if algorithm != "dpo"]

    def per_token(ratio: dict | None) -> float | None:
        return 1 / ratio["tokens_per_s"] if ratio and ratio["tokens_per_s"] else None

    rows = [
        [
            shape,
            *(number(step_s.get((shape, algorithm))) for algorithm in algorithms),
            *(number(over_dpo.get((shape, algorithm), {}).get("step_s")) for algorithm in others),
            *(number(per_token(over_dpo.get((shape, algorithm)))) for algorithm in others),
        ]
        for shape in shapes
    ]
    columns = [f"{algorithm} step (s)" for algorithm in algorithms]
    columns += [f"{algorithm} / dpo per step" for algorithm in others]
    columns += [f"{algorithm} / dpo per token" for algorithm in others]
    return ["## Step time by shape", "", table(["shape", *columns], rows), ""]


def merge_markdown(report: dict) -> str:
    summary, gib = report["summary"], 2**30
    lines = header(report) + [
        (
            f"- Model: a random Llama ({', '.join(f'{key} {value}' for key, value in report['base_config'].items())}) "
            "saved in "
            f"float32; adapter: LoRA {', '.join(f'{key} {value}' for key, value in MERGE_LORA.items())}. "
            f"`prefopt.merge.merge_adapter` with dtype float32, each run in a fresh process; median of "
            f"{len(report['runs'])} runs."
        ),
        "",
        table(
            [
                "model (GiB)", "adapter (GiB)", "RSS before loading (GiB)", "peak RSS (GiB)", "peak / model",
                "(peak - before loading) / model", "budget 1.3 x model + adapter (GiB)", "merge time (s)",
            ],
            [[
                number(summary["model_bytes"] / gib), number(summary["adapter_bytes"] / gib),
                number(summary["runtime_rss_bytes"] / gib), number(summary["peak_rss_bytes"] / gib),
                number(summary["peak_over_model"]), number(summary["peak_above_runtime_over_model"]),
                number(summary["budget_bytes"] / gib), number(summary["merge_s"]),
            ]],
        ),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def write_report(report: dict, output_dir: Path, name: str) -> tuple[Path, Path]:
    json_path, markdown_path = output_dir / f"{name}.json", output_dir / f"{name}.md"
    text = merge_markdown(report) if report["suite"] == "merge" else training_markdown(report)
    with atomic_file(json_path) as staging:
        staging.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_file(markdown_path) as staging:
        staging.write_text(text)
    return json_path, markdown_path


# --- Entry point -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m prefopt.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", nargs="?", default="compare", choices=[*TRAINING_SUITES, "merge"])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--model", type=Path, default=Path("models/demo-base"), help="base model directory")
    parser.add_argument("--dataset", type=Path, default=Path("data/demo"), help="preference data directory or file")
    parser.add_argument("--max_steps", type=int, default=30, help="optimizer steps per training run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks"), help="where <name>.json/.md go")
    parser.add_argument("--name", help="the report's file name, without extension (default: the suite)")
    parser.add_argument("--resume", action="store_true", help="keep the runs of an unfinished report of that name")
    parser.add_argument("--peak_tflops", type=float, help="the GPU's dense peak, for MFU on cards not in PEAK_TFLOPS")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        raise UserError(f"--model: no model at '{args.model}'; `python -m prefopt.demo` builds the demo's")
    if not args.dataset.exists():
        raise UserError(f"--dataset: '{args.dataset}' not found; `python -m prefopt.demo` builds the demo's")
    if args.max_steps < 3 or args.repeats < 1:
        raise UserError("--max_steps must be at least 3 (the first step is warm-up) and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {
        "suite": args.suite,
        "command": " ".join(["python -m prefopt.bench", *(sys.argv[1:] if argv is None else argv)]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "model": str(args.model),
            "dataset": str(args.dataset),
            "max_steps": args.max_steps,
            "repeats": args.repeats,
        },
    }
    name = args.name or args.suite
    previous = resumed(args.output_dir / f"{name}.json", report) if args.resume else {}
    report.update(created=previous.get("created", report["created"]), complete=False)
    args.model, args.dataset = args.model.resolve(), args.dataset.resolve()  # each run starts in its own directory
    start = time.perf_counter() - previous.get("duration_s", 0)

    with tempfile.TemporaryDirectory(prefix="prefopt-bench-") as work_dir:
        if args.suite == "merge":
            report.update(merge_suite(args, Path(work_dir)))
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
    logger.info("bench: %s in %.1f min -> %s, %s", args.suite, report["duration_s"] / 60, *paths)
    return report


def resumed(path: Path, report: dict) -> dict:
    """The report at `path` of an earlier, unfinished run of the same benchmark; {} if there is none."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    if resumable_as(previous) != resumable_as(report):
        raise UserError(f"--resume: {path} is another benchmark ({previous['command']}); choose another --name")
    logger.info("bench: resuming %s, %d runs done", path, len(previous.get("runs", [])))
    return previous


def resumable_as(report: dict) -> tuple:
    """What a report must share with the one it resumes; not --repeats: more than before runs the missing ones."""
    settings = report["settings"]
    return report["suite"], settings["model"], settings["dataset"], settings["max_steps"]


if __name__ == "__main__":
    with exit_on_user_error():
        main()
