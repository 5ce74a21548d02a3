"""Each variant's medians over its repeats, and its ratios to a reference variant within each repeat."""

import statistics
from collections.abc import Callable
from dataclasses import asdict

from benchmark.runs import Variant, variant_key

# --- Summaries -------------------------------------------------------------------------------------------------------
MEDIAN_METRICS = (
    "step_s", "cpu_step_s", "first_step_s", "tokens_per_step", "peak_rss_train_mib", "peak_rss_run_mib",
    "peak_gpu_gib", "setup_s", "train_runtime_s", "wall_s", "before_training_s", "after_training_s", "loss",
    "grad_norm",
)  # fmt: skip

BATCH_FIELDS = ("micro_batch", "accumulation_steps", "effective_batch")  # the same in every run of a variant

RATIO_METRICS = ("step_s", "cpu_step_s", "tokens_per_s", "peak_rss_train_mib", "peak_gpu_gib", "mfu", "wall_s")


def summarise(variants: list[Variant], runs: list[dict]) -> list[dict]:
    """Per variant, the median of each metric over its repeats; tokens/s and MFU follow from the median step time.

    A variant whose every run failed (out of memory) has a row with `failed` and no measurements.
    """
    rows = []
    for variant in variants:
        tried = [run for run in runs if variant_key(run) == variant.key]
        if not tried:  # not measured yet, in the report of an unfinished benchmark
            continue
        mine = [run for run in tried if not run.get("failed")]
        row = {**asdict(variant), "repeats": len(mine), "failed": None if mine else tried[0]["failed"]}
        if not mine:
            rows.append(row)
            continue
        row.update({field: mine[0].get(field) for field in BATCH_FIELDS})
        for metric in MEDIAN_METRICS:
            values = [run[metric] for run in mine if run.get(metric) is not None]
            row[metric] = statistics.median(values) if values else None
        row["step_s_min_max"] = [min(run["step_s"] for run in mine), max(run["step_s"] for run in mine)]
        row["tokens_per_s"] = row["tokens_per_step"] / row["step_s"]
        peak_flops = mine[0]["peak_flops"]
        row["mfu"] = mine[0]["flops_per_token"] * row["tokens_per_s"] / peak_flops if peak_flops else None
        rows.append(row)
    return rows


# A summary row -> the key (algorithm, runner, label, config) of the row it is compared with; None for none.
Reference = Callable[[dict], tuple[str, str, str, str] | None]


def ratios(runs: list[dict], rows: list[dict], reference_of: Reference) -> list[dict]:
    """Each variant's metrics over its reference's, and what a setting costs up front and when it has paid that back.

    Each is the median over repeats of the ratio (or difference) within one repeat: the runs of a repeat are minutes
    apart, so that a drift in the machine's load between repeats cancels out.
    """
    by_key = {(*variant_key(run), run["repeat"]): run for run in runs if not run.get("failed")}
    result = []
    for row in rows:
        reference_key = reference_of(row)
        if reference_key is None or reference_key == variant_key(row):
            continue
        pairs = [
            (run, by_key[(*reference_key, run["repeat"])])
            for run in runs
            if variant_key(run) == variant_key(row)
            and not run.get("failed")
            and (*reference_key, run["repeat"]) in by_key
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
                "config": row["config"],
                "reference": "/".join(filter(None, reference_key)),
                **{metric: median_ratio(pairs, metric) for metric in RATIO_METRICS},
                "extra_setup_s": extra_setup_s,
                # Steps after which a setting that costs time up front (more than a step's) has paid it back.
                "break_even_steps": (
                    extra_setup_s / saved_per_step_s if extra_setup_s > row["step_s"] and saved_per_step_s > 0 else None
                ),
            }
        )
    return result


def median_ratio(pairs: list[tuple[dict, dict]], metric: str) -> float | None:
    values = [run[metric] / reference[metric] for run, reference in pairs if run[metric] and reference[metric]]
    return statistics.median(values) if values else None
