"""Which run saved a checkpoint: a run's record, kept in `output_dir/run.json` and copied into each checkpoint it saves.

A run is recognised by an id drawn when it starts. A run started without `resume_from_checkpoint` is a new run.
`resume_from_checkpoint: true` continues the run recorded in `output_dir`; a named checkpoint, the run that saved it.
The record also holds the settings that decide what the run trains: the model and LoRA shape, without which a
checkpoint's tensors do not fit, and the algorithm, optimization and data that the merged model's card reports, so
that no run continues another's weights under a card describing its own settings.
"""

import dataclasses
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from accelerate import PartialState

from prefopt.atomic import atomic_file
from prefopt.paths import is_local

RUN_FILE = "run.json"

SHAPE_KEYS = (
    "model_name_or_path",
    "model_revision",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "lora_modules_to_save",
    "use_rslora",
    "use_dora",
)
# The algorithms' own settings, those the trainer's config has: recorded with a run and shown on its model card.
ALGORITHM_SETTINGS = ("beta", "loss_type", "simpo_gamma", "cpo_alpha", "desirable_weight", "undesirable_weight")
TRAINING_KEYS = (
    "algorithm",
    *ALGORITHM_SETTINGS,
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "effective_batch_size",  # per device x processes x accumulation: the same batches, however they are dealt out
    "max_length",
    "seed",
    "dataset_name",
    "dataset_config",
    "dataset_train_split",
)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    started: str  # ISO 8601, UTC
    settings: dict  # SHAPE_KEYS and TRAINING_KEYS -> their values, as JSON has them

    @classmethod
    def new(cls, settings: dict) -> "RunRecord":
        return cls(uuid.uuid4().hex, datetime.now(timezone.utc).isoformat(timespec="seconds"), settings)

    @classmethod
    def read(cls, directory: str | Path) -> "RunRecord | None":
        """The record in `directory` (an output_dir or a checkpoint), or None where it has none or a damaged one."""
        try:
            return cls(**json.loads((Path(directory) / RUN_FILE).read_text()))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, TypeError):
            return None

    def write(self, directory: str | Path) -> None:
        with atomic_file(Path(directory) / RUN_FILE) as staging:
            staging.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    def differences(self, settings: dict, keys: tuple[str, ...]) -> list[str]:
        """`key value (config: other value)` for each of `keys` whose value differs from `settings`."""
        return [
            f"{key} {_text(self.settings.get(key))} (config: {_text(settings[key])})"
            for key in keys
            if self.settings.get(key) != settings[key]
        ]


def run_settings(script_args, training_args, model_args) -> dict:
    """SHAPE_KEYS and TRAINING_KEYS of this run's config, local paths resolved, as they read back from JSON.

    The batch is recorded as the effective batch: a run may continue on another number of processes with the
    per-device batch or the accumulation changed to keep it, which trains on the same batches in the same order.
    """
    values = {
        "algorithm": type(training_args).__name__,
        "effective_batch_size": training_args.per_device_train_batch_size
        * PartialState().num_processes
        * training_args.gradient_accumulation_steps,
    }
    for key in SHAPE_KEYS + TRAINING_KEYS:
        for args in (model_args, training_args, script_args):
            if hasattr(args, key):
                values[key] = getattr(args, key)
                break
        else:
            values.setdefault(key, None)  # a setting of another algorithm, or one computed above
    for key in ("model_name_or_path", "dataset_name"):
        if values[key] and is_local(values[key]):
            values[key] = str(Path(values[key]).resolve())
    return json.loads(json.dumps(values))


def _text(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
