"""Benchmark reports: `<name>.json` with every run and `<name>.md` with the tables, the machine and the load."""

import json
import logging
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path

from benchmark.merge_memory import MERGE_LORA
from prefopt.atomic import atomic_file
from prefopt.errors import UserError
from prefopt.launch import ALGORITHMS
from prefopt.markdown import markdown_table

logger = logging.getLogger(__name__)


# --- Report ----------------------------------------------------------------------------------------------------------
def machine_description() -> dict:
    """The CPU, cores, memory, platform and library versions a report was measured with."""
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


def format_number(value: float | None, digits: int = 3) -> str:
    """`digits` significant digits, whole numbers from 10**digits up; "n/a" for a measure the run lacks."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


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
    "versus_trl": "Ratio ours / TRL",
    "settings": "Ratio to the v1 config with the settings off",
    "scaling": "Ratio to DPO at the same batch and max_length",
}


def report_header(report: dict) -> list[str]:
    """The title, the command, the machine, the load and the library versions."""
    machine, loads = report["machine"], [run["load_1min"] for run in report["runs"]]
    # Training runs name their device (failed ones do not); the merge suite's runs are on the CPU.
    devices = ", ".join(sorted({run["device"] for run in report["runs"] if "device" in run})) or "cpu"
    return [
        f"# benchmark {report['suite']}",
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
    """A training suite's report: its measurements per variant, and the ratios to each one's reference."""
    settings = report["settings"]
    threads = "/".join(str(count) for count in sorted({run["torch_threads"] for run in report["runs"]}))
    lines = report_header(report) + [
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
        [
            row["algorithm"],
            row["runner"],
            row["label"],
            *(format_number(row[metric]) for _, metric in MEASUREMENT_COLUMNS),
        ]
        for row in report["summary"]
    ]
    lines += [markdown_table(["algorithm", "runner", "settings", *(name for name, _ in MEASUREMENT_COLUMNS)], rows), ""]
    lines += [f"## {RATIO_TITLES[report['suite']]}", ""]
    rows = [
        [
            row["algorithm"],
            row["label"],
            *(format_number(row[metric]) for _, metric in RATIO_COLUMNS),
            format_number(row["extra_setup_s"]),
            format_number(row["break_even_steps"]),
        ]
        for row in report["ratios"]
    ]
    columns = [f"{name} ratio" for name, _ in RATIO_COLUMNS] + ["extra setup (s)", "break-even steps"]
    lines += [markdown_table(["algorithm", "settings", *columns], rows), ""]
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
            *(format_number(step_s.get((shape, algorithm))) for algorithm in algorithms),
            *(format_number(over_dpo.get((shape, algorithm), {}).get("step_s")) for algorithm in others),
            *(format_number(per_token(over_dpo.get((shape, algorithm)))) for algorithm in others),
        ]
        for shape in shapes
    ]
    columns = [f"{algorithm} step (s)" for algorithm in algorithms]
    columns += [f"{algorithm} / dpo per step" for algorithm in others]
    columns += [f"{algorithm} / dpo per token" for algorithm in others]
    return ["## Step time by shape", "", markdown_table(["shape", *columns], rows), ""]


def recipes_markdown(report: dict) -> str:
    """The recipes suite's report: per recipe, TRL's script and ours as they are, then ours over the grid."""
    settings, steps = report["settings"], report["settings"]["max_steps"]
    scale = (
        "random-weight models of the recipes' own architectures"
        if settings["scale"] == "full"
        else "random-weight tiny models of the recipes' architecture families, float32, no LoRA dropout, lengths "
        "and max_length / 8"
    )
    lines = report_header(report) + [
        (
            f"- Runs: each recipe of `training_configs/` on {scale}, and synthetic data (`benchmark/recipes.py`), "
            f"{steps} steps, {settings['repeats']} run(s) each. TRL: its example script; prefopt: ours. tokens/s: "
            "non-padding tokens of the policy's forward passes with gradients per second of step time; MFU: 6 x "
            f"linear-layer parameters x tokens/s over the card's dense peak; loss and gradient norm: at step {steps}."
        ),
        "",
    ]
    columns = [
        "runner", "settings", "micro-batch x accumulation", "step (s)", "tokens/step", "tokens/s", "tokens/s vs TRL",
        "MFU", "peak GPU (GiB)", "peak RSS train (MiB)", f"loss at step {steps}", f"grad norm at step {steps}",
    ]  # fmt: skip
    over_trl = {(row["config"], row["label"], row["runner"]): row["tokens_per_s"] for row in report["ratios"]}
    for recipe in dict.fromkeys(row["config"] for row in report["summary"]):
        rows = []
        for row in (row for row in report["summary"] if row["config"] == recipe):
            if row["failed"]:
                rows.append([row["runner"], row["label"], row["failed"], *["n/a"] * (len(columns) - 3)])
                continue
            rows.append(
                [
                    row["runner"],
                    row["label"],
                    f"{row['micro_batch']} x {row['accumulation_steps']}",
                    format_number(row["step_s"]),
                    format_number(row["tokens_per_step"]),
                    format_number(row["tokens_per_s"]),
                    format_number(over_trl.get((recipe, row["label"], row["runner"]))),
                    format_number(row["mfu"]),
                    format_number(row["peak_gpu_gib"]),
                    format_number(row["peak_rss_train_mib"]),
                    format_number(row["loss"], 6),
                    format_number(row["grad_norm"], 6),
                ]
            )
        lines += [f"## {recipe}", "", markdown_table(columns, rows), ""]
    return "\n".join(lines)


def merge_markdown(report: dict) -> str:
    """The merge suite's report: peak memory against the model's size, for each dtype the base was saved in."""
    gib = 2**30
    lines = report_header(report) + [
        (
            f"- Model: a random Llama ({', '.join(f'{key} {value}' for key, value in report['base_config'].items())}) "
            f"saved in {' and in '.join(report['summary'])}; adapter: LoRA "
            f"{', '.join(f'{key} {value}' for key, value in MERGE_LORA.items())}. `prefopt.merge.publish_model` "
            "into the base's dtype, with its check on fixed texts, each run in a fresh process; median of "
            f"{len(report['runs']) // len(report['summary'])} runs."
        ),
        "",
        markdown_table(
            [
                "base dtype", "model (GiB)", "adapter (GiB)", "RSS before loading (GiB)", "peak RSS (GiB)",
                "peak / model", "(peak - before loading) / model", "budget 1.3 x model + adapter (GiB)",
                "merge time (s)",
            ],
            [
                [
                    dtype, format_number(summary["model_bytes"] / gib), format_number(summary["adapter_bytes"] / gib),
                    format_number(summary["runtime_rss_bytes"] / gib), format_number(summary["peak_rss_bytes"] / gib),
                    format_number(summary["peak_over_model"]), format_number(summary["peak_above_runtime_over_model"]),
                    format_number(summary["budget_bytes"] / gib), format_number(summary["merge_s"]),
                ]
                for dtype, summary in report["summary"].items()
            ],
        ),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def write_report(report: dict, output_dir: Path, name: str) -> tuple[Path, Path]:
    """`<name>.json` and `<name>.md` in `output_dir`, each replaced whole."""
    json_path, markdown_path = output_dir / f"{name}.json", output_dir / f"{name}.md"
    markdown = {"merge": merge_markdown, "recipes": recipes_markdown}.get(report["suite"], training_markdown)
    text = markdown(report)
    with atomic_file(json_path) as staging:
        staging.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_file(markdown_path) as staging:
        staging.write_text(text)
    return json_path, markdown_path


def resumed(path: Path, report: dict) -> dict:
    """The report at `path` of an earlier, unfinished run of the same benchmark; {} if there is none."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    if resumable_as(previous) != resumable_as(report):
        raise UserError(f"--resume: {path} is another benchmark ({previous['command']}); choose another --name")
    logger.info("benchmark: resuming %s, %d runs done", path, len(previous.get("runs", [])))
    return previous


def resumable_as(report: dict) -> tuple:
    """What a report must share with the one it resumes; not --repeats: more than before runs the missing ones."""
    return report["suite"], {key: value for key, value in report["settings"].items() if key != "repeats"}
