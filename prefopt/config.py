"""Command line and YAML parsing: TRL's own dataclasses and parser, plus the few keys this repo adds.

A config written for TRL's scripts works here unchanged: its keys are the fields of `ScriptArguments`, the
trainer's config (`DPOConfig`, `KTOConfig`, `CPOConfig`) and `ModelConfig`. `RunArguments` adds what happens after
training (merge, plots). Every check here runs before any model or data is loaded, so a typo costs seconds.
"""

import dataclasses
import difflib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import ModelConfig, ScriptArguments, TrlParser

from prefopt.checkpoints import checkpoint_problem
from prefopt.data import DATA_FILE_BUILDERS
from prefopt.errors import UserError

MERGED_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class RunArguments:
    """Keys of this repo, on top of TRL's: where the merged model and the plots go."""

    merge: bool = field(
        default=True,
        metadata={
            "help": "After training, merge the LoRA adapter into the base model (with use_peft false, take the full "
            "fine-tune) and save it, checked, to `merged_model_dir`."
        },
    )
    merged_model_dir: str | None = field(
        default=None,
        metadata={"help": "Where the merged model is saved. Defaults to `models/<basename of output_dir>`."},
    )
    merged_dtype: str | None = field(
        default=None,
        metadata={
            "help": "The merged (or fully fine-tuned) weights' dtype: float32, bfloat16 or float16. Defaults to the "
            "base model's saved dtype. bfloat16 and float16 round away the part of the training's update below half a "
            "unit in the last place of each weight; merge_report.json says how much of its effect was kept."
        },
    )
    overwrite_merged: bool = field(
        default=False,
        metadata={"help": "Replace an existing `merged_model_dir`. Without it the run refuses to start."},
    )
    images_dir: str | None = field(
        default=None, metadata={"help": "Where the loss plot is written. Defaults to the run's `output_dir`."}
    )
    dataset_columns: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "Your column names for TRL's, e.g. {prompt: question, chosen: response_a, rejected: response_b} "
            "in YAML, or the same as JSON on the command line."
        },
    )
    test_size: float | None = field(
        default=None,
        metadata={
            "help": "When the data has no test split, hold out this fraction (< 1) or number of train rows as one, "
            "drawn with the run's seed."
        },
    )
    chat_template_path: str | None = field(
        default=None,
        metadata={
            "help": "A Jinja chat template (.jinja/.j2 file) or a tokenizer directory whose template is used, for a "
            "tokenizer that has none. The merged model is saved with it."
        },
    )


# Keys of published recipes (the SimPO repository's, alignment-handbook's) and of older TRL and transformers versions,
# in three tables. Renamed: old key -> the keys and values it becomes ({} when it changes nothing), given its value and
# the settings (the config's values over the dataclasses' defaults). Dropped: no successor, and the run does without
# it, as the note says. Replaced: no successor, and the run cannot do without it: the message says what to set instead.
RENAMED_KEYS = {
    "warmup_ratio": lambda value, settings: {"warmup_steps": value},  # warmup_steps below 1 is a fraction
    "torch_dtype": lambda value, settings: {"dtype": value},
    "use_flash_attention_2": lambda value, settings: {"attn_implementation": "flash_attention_2"} if value else {},
    "evaluation_strategy": lambda value, settings: {"eval_strategy": value},
    "preprocessing_num_workers": lambda value, settings: {"dataset_num_proc": value},
    "group_by_length": lambda value, settings: {"train_sampling_strategy": "group_by_length"} if value else {},
    "hub_model_revision": lambda value, settings: {"hub_revision": value},
    # The SimPO repo's margin is relative to beta; TRL's simpo_gamma is the margin itself.
    "gamma_beta_ratio": lambda value, settings: {"simpo_gamma": value * settings["beta"]},
    "dataset_mixer": lambda value, settings: {"dataset_name": _one_whole_dataset(value)},
    "dataset_splits": lambda value, settings: _train_and_test_splits(value),
}
DROPPED_KEYS = {
    "max_prompt_length": "TRL 1.16 removed it, and only max_length truncates, cutting the end of each completion "
    "(prompts of max_length tokens or more are reported before training)",
    "overwrite_output_dir": "transformers 5 removed it: a run writes into output_dir whatever it holds, and continues "
    "from its checkpoints only with resume_from_checkpoint: true",
}
REPLACED_KEYS = {
    "dataset_mixture": "alignment-handbook's mixtures are not read here: set dataset_name (a hub id, a data directory "
    "or file), dataset_config and dataset_train_split/dataset_test_split, or test_size to hold out part of train; "
    "to mix datasets, write them into one data file first",
    "chat_template": "a template in the config is not read here: save it to a .jinja file and set chat_template_path "
    "to it",
    "logging_dir": "transformers 5 removed it: set the TENSORBOARD_LOGGING_DIR environment variable instead",
    "push_to_hub_revision": "alignment-handbook's flag is not read here: set push_to_hub: true and hub_revision to "
    "the branch to push to",
}
SECRET_KEYS = ("hub_token",)

logger = logging.getLogger(__name__)


class PrefOptParser(TrlParser):
    """TRL's parser, with errors that name the config file and well-known renamed keys carried over."""

    config_path: str | None = None
    command_line_keys: frozenset[str] = frozenset()

    def error(self, message: str):
        where = f"{self.config_path}: " if self.config_path else ""
        raise UserError(f"{where}{message}")

    def set_defaults_with_config(self, **config) -> list[str]:
        for key in SECRET_KEYS:
            if key in config:
                raise UserError(
                    f"{self.config_path}: '{key}' does not belong in a config file; log in with `hf auth login` "
                    "or set the HF_TOKEN environment variable"
                )
        for key in config:
            if key in REPLACED_KEYS:
                raise UserError(f"{self.config_path}: '{key}' is not a key; {REPLACED_KEYS[key]}")
        for key in [key for key in config if key in DROPPED_KEYS]:
            logger.warning(
                "%s: '%s: %s' is ignored: %s", self.config_path, key, _yaml(config.pop(key)), DROPPED_KEYS[key]
            )
        for old_key in [key for key in config if key in RENAMED_KEYS]:
            value = config.pop(old_key)
            try:
                new_values = RENAMED_KEYS[old_key](value, {**self._field_defaults(), **config})
            except UserError as error:
                raise UserError(f"{self.config_path}: {error}") from None
            for new_key in new_values:
                if new_key in config:
                    raise UserError(
                        f"{self.config_path}: '{old_key}' is the old name of '{new_key}', and both are set; keep one"
                    )
            config.update(new_values)
            if not new_values:
                logger.warning("%s: '%s: %s' is the default now, dropped", self.config_path, old_key, _yaml(value))
                continue
            overridden = [f"--{key}" for key in new_values if key in self.command_line_keys]
            logger.warning(
                "%s: '%s: %s' is now '%s'%s",
                self.config_path,
                old_key,
                _yaml(value),
                ", ".join(f"{key}: {_yaml(new_value)}" for key, new_value in new_values.items()),
                f", which {' and '.join(overridden)} on the command line overrides" if overridden else "",
            )
        return super().set_defaults_with_config(**config)

    def _field_defaults(self) -> dict:
        return {
            field.name: field.default
            for dataclass_type in self.dataclass_types
            for field in dataclasses.fields(dataclass_type)
            if field.default is not dataclasses.MISSING
        }


def parse_args(training_config_class: type, args: list[str] | None = None) -> tuple:
    """Parse `--config <yaml>` and command-line flags (which override the YAML) into TRL's dataclasses, and check them.

    Returns `(script_args, training_args, model_args, run_args)`. Raises `UserError` for an unknown key, a value out
    of range or a path that does not exist; logs a warning for settings far from the papers' and LoRA practice.
    """
    parser = PrefOptParser((ScriptArguments, training_config_class, ModelConfig, RunArguments))
    parser.config_path = _config_path(args)
    parser.command_line_keys = frozenset(
        item[2:].split("=")[0] for item in (sys.argv[1:] if args is None else args) if item.startswith("--")
    )
    try:
        *parsed, config_unknown, cli_unknown = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True
        )
    except yaml.YAMLError as error:
        raise UserError(f"{parser.config_path}: not valid YAML ({_one_line(error)})") from None
    except ValueError as error:  # raised by the dataclasses' own checks, e.g. TrainingArguments.__post_init__
        raise UserError(f"{parser.config_path or 'arguments'}: {_one_line(error)}") from None

    known_keys = [action.dest for action in parser._actions]
    _reject_unknown(config_unknown, known_keys, where=parser.config_path)
    _reject_unknown(cli_unknown, known_keys, where="command line")

    script_args, training_args, model_args, run_args = parsed
    if isinstance(run_args.dataset_columns, str):
        run_args.dataset_columns = _json_mapping(run_args.dataset_columns, "dataset_columns")
    if run_args.merged_model_dir is None:
        run_args.merged_model_dir = str(Path("models") / Path(training_args.output_dir).name)
    if run_args.images_dir is None:
        run_args.images_dir = training_args.output_dir
    training_args.resume_from_checkpoint = _resume_value(training_args.resume_from_checkpoint)
    _check_values(training_args, model_args, run_args, where=parser.config_path or "command line")
    _check_paths(script_args, model_args, training_args, run_args)
    for warning in unusual_settings(training_args, model_args):
        logger.warning(warning)
    return script_args, training_args, model_args, run_args


def unusual_settings(training_args, model_args: ModelConfig) -> list[str]:
    """Settings that are valid but far from what the algorithms' papers and LoRA practice use."""
    warnings = []
    beta = training_args.beta
    if getattr(training_args, "loss_type", None) == "simpo":
        if not 1.0 <= beta <= 10.0:
            warnings.append(
                f"SimPO beta {beta:g} is far from the paper's 2.0-2.5; below 1 the loss hardly moves (see README)"
            )
        if not 0.25 <= training_args.simpo_gamma / beta <= 1.0:
            warnings.append(
                f"SimPO simpo_gamma/beta = {training_args.simpo_gamma / beta:.2g}; the paper uses 0.3-0.8 (about 0.5)"
            )
    elif not 0.01 <= beta <= 1.0:
        warnings.append(f"beta {beta:g} is outside the usual 0.01-1.0 of DPO and KTO (0.1 in both papers)")
    learning_rate = training_args.learning_rate
    if model_args.use_peft and not 1e-6 <= learning_rate <= 1e-2:
        warnings.append(f"learning_rate {learning_rate:g} is unusual for LoRA (typically 1e-5 to 1e-3)")
    if not model_args.use_peft and learning_rate > 1e-4:
        warnings.append(f"learning_rate {learning_rate:g} is high for full fine-tuning (typically 5e-7 to 1e-5)")
    return warnings


def _config_path(args: list[str] | None) -> str | None:
    args = sys.argv[1:] if args is None else args
    if "--config" not in args:
        return None
    index = args.index("--config")
    if index + 1 >= len(args):
        raise UserError("--config needs a path to a YAML file")
    path = args[index + 1]
    if not Path(path).is_file():
        raise UserError(f"config file not found: {path}")
    return path


def _json_mapping(text: str, key: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f'{key} must be a mapping, e.g. \'{{"prompt": "question"}}\', got {text!r}')
    return value


def _yaml(value) -> str:
    """`value` as YAML on one line."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _one_whole_dataset(mixer: dict) -> str:
    """alignment-handbook's `dataset_mixer: {id: fraction}` when it names one dataset, whole."""
    if not isinstance(mixer, dict) or len(mixer) != 1 or list(mixer.values()) != [1.0]:
        raise UserError(
            f"dataset_mixer {_yaml(mixer)}: only one whole dataset ({{id: 1.0}}) carries over to dataset_name; to mix "
            "or subsample datasets, write them into one data file first and set dataset_name to it"
        )
    return next(iter(mixer))


def _train_and_test_splits(splits: list[str]) -> dict[str, str]:
    """alignment-handbook's `dataset_splits: [train_prefs, test_prefs]`: the split named train, and the one test."""
    train = [split for split in splits if "train" in split]
    test = [split for split in splits if "test" in split]
    if len(train) != 1 or len(test) > 1 or len(train) + len(test) != len(splits):
        raise UserError(
            f"dataset_splits {_yaml(splits)}: expected one train split and at most one test split; set "
            "dataset_train_split and dataset_test_split instead"
        )
    return {"dataset_train_split": train[0], **({"dataset_test_split": test[0]} if test else {})}


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _reject_unknown(remaining: list[str], known_keys: list[str], where: str | None) -> None:
    unknown = [item[2:] for item in remaining if item.startswith("--")] or remaining
    if not unknown:
        return
    key = unknown[0].split("=")[0]
    close = difflib.get_close_matches(key, known_keys, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(f"{where}: unknown key '{key}'{hint}")


def _resume_value(value):
    """`resume_from_checkpoint: true` (YAML) or `--resume_from_checkpoint true` resumes from the latest checkpoint."""
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        return value.lower() == "true" or None
    return value or None


def _check_values(training_args, model_args, run_args: RunArguments, where: str) -> None:
    checks = [
        (training_args.learning_rate > 0, f"learning_rate must be > 0, got {training_args.learning_rate}"),
        (getattr(training_args, "beta", 1) > 0, f"beta must be > 0, got {getattr(training_args, 'beta', None)}"),
        (model_args.lora_r >= 1, f"lora_r must be >= 1, got {model_args.lora_r}"),
        (
            training_args.per_device_train_batch_size >= 1,
            f"per_device_train_batch_size must be >= 1, got {training_args.per_device_train_batch_size}",
        ),
        (
            run_args.merged_dtype in (None, *MERGED_DTYPES),
            f"merged_dtype must be one of {', '.join(MERGED_DTYPES)}, got '{run_args.merged_dtype}'",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"{where}: {message}")


# A hub id is `name` or `org/name`; anything else (./x, /abs/path, a/b/c) is meant as a local path.
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _is_local(path: str) -> bool:
    """A path is local if it exists, is not hub-id shaped, or starts in a local directory (models/x, data/x)."""
    return Path(path).exists() or not _HUB_ID.match(path) or Path(path.split("/")[0]).is_dir()


def _check_paths(script_args, model_args, training_args, run_args) -> None:
    model = model_args.model_name_or_path
    if not model:
        raise UserError("model_name_or_path is required (a local model directory or a hub id)")
    if _is_local(model) and not (Path(model) / "config.json").is_file():
        raise UserError(f"model_name_or_path: no model at '{model}' (expected a directory holding config.json)")
    if _is_local(model) and not any(Path(model).glob("*.safetensors")):
        raise UserError(
            f"model_name_or_path: no .safetensors weights in '{model}'; weights are read as safetensors only, never "
            "unpickled: convert the model once with transformers' from_pretrained and save_pretrained"
        )

    dataset = script_args.dataset_name
    if not dataset:
        raise UserError("dataset_name is required (a hub id, a data directory or a .jsonl/.json/.parquet/.csv file)")
    if (_is_local(dataset) or Path(dataset).suffix in DATA_FILE_BUILDERS) and not Path(dataset).exists():
        raise UserError(f"dataset_name: no such file or directory: '{dataset}'")

    merged = Path(run_args.merged_model_dir)
    if run_args.merge and merged.exists() and not run_args.overwrite_merged:
        raise UserError(
            f"merged_model_dir '{merged}' already exists; set overwrite_merged: true (or --overwrite_merged) "
            "to replace it, or choose another merged_model_dir"
        )

    resume = training_args.resume_from_checkpoint
    if resume and training_args.save_only_model:
        raise UserError(
            "resume_from_checkpoint: checkpoints saved with save_only_model: true hold no optimizer or RNG state to "
            "resume from; set save_only_model: false"
        )
    if isinstance(resume, str):
        problem = checkpoint_problem(resume) if Path(resume).is_dir() else "no such directory"
        if problem:
            raise UserError(
                f"resume_from_checkpoint: cannot resume from '{resume}' ({problem}); name a complete checkpoint, or "
                "set resume_from_checkpoint: true to resume from the newest complete one in output_dir"
            )
