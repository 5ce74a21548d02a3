"""The training suites: which variants each one runs, and which variant each is compared with.

- `versus_trl`: our script against TRL's own for each algorithm;
- `settings`: each speed setting against the v1 config with every setting off;
- `scaling`: step time over batch size and max_length, each algorithm against DPO at the same shape.
"""

from dataclasses import dataclass

from benchmark.runs import BASELINE, PREFOPT, TRL, Variant
from benchmark.summaries import Reference
from prefopt.launch import ALGORITHMS

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


def versus_trl_suite(algorithms: list[str]) -> tuple[list[Variant], Reference]:
    """Each algorithm by our script and by TRL's; ours compared with TRL's."""
    variants = [Variant(algorithm, runner) for algorithm in algorithms for runner in (PREFOPT, TRL)]
    return variants, lambda row: (row["algorithm"], TRL, BASELINE, "") if row["runner"] == PREFOPT else None


def settings_suite(algorithms: list[str]) -> tuple[list[Variant], Reference]:
    """Each algorithm with every setting it has off, and with each one on; each compared with all off."""
    variants = []
    for algorithm in algorithms:
        settings = {label: setting for label, setting in SPEED_SETTINGS.items() if algorithm in setting.algorithms}
        # Merging is the same whatever the setting; a later flag overrides an earlier one.
        all_off = ("--merge", "false", *(flag for setting in settings.values() for flag in setting.off))
        variants.append(Variant(algorithm, label=SETTINGS_OFF, flags=all_off))
        for label, setting in settings.items():
            variants.append(Variant(algorithm, label=label, flags=all_off + setting.on, env=setting.env))
    return variants, lambda row: (row["algorithm"], PREFOPT, SETTINGS_OFF, "")


def scaling_suite(algorithms: list[str]) -> tuple[list[Variant], Reference]:
    """Each algorithm over max_length at the v1 batch and over batch at the v1 max_length; each compared with DPO."""
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
    return variants, lambda row: ("dpo", PREFOPT, row["label"], "")


TRAINING_SUITES = {"versus_trl": versus_trl_suite, "settings": settings_suite, "scaling": scaling_suite}
