"""Command line and YAML parsing: TRL's own dataclasses and parser, plus the few keys this repo adds.

A config written for TRL's scripts works here unchanged: its keys are the fields of `ScriptArguments`, the
trainer's config (`DPOConfig`, `KTOConfig`, `CPOConfig`), `ModelConfig` and `DatasetMixtureConfig` (a `datasets:`
mixture). `RunArguments` adds how the data is read (its format, mixtures, long prompts) and what happens after
training (merge, plots). Every check here runs before any model or data is loaded, so a typo costs seconds.
"""

import dataclasses
import difflib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser
from trl.scripts.utils import DatasetConfig

from prefopt.checkpoints import checkpoint_problem
from prefopt.data_files import data_file_kind
from prefopt.errors import UserError
from prefopt.formats import FORMAT_NAMES
from prefopt.mixtures import handbook_mixture
from prefopt.modeling import check_base_model
from prefopt.paths import check_run_paths, is_local
from prefopt.sharding import check_sharding

MERGED_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class RunArguments(DatasetMixtureConfig):
    """Keys of this repo, on top of TRL's: how the data is read, where the merged model and the plots go.

    It extends TRL's `DatasetMixtureConfig`, so that a config's `datasets:`, `streaming` and `test_split_size` read as
    TRL's scripts read them.
    """

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
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "The format of the data: auto (recognised by its fields), trl, sharegpt (LLaMA-Factory's DPO "
            "format), llamafactory_kto, alpaca (pairs and rankings), openai (preference fine-tuning files) or hh "
            "(Anthropic HH transcripts). Each is converted to TRL's format before training; see docs/data.md."
        },
    )
    drop_long_prompts: bool = field(
        default=True,
        metadata={
            "help": "Drop the rows whose prompt has max_length tokens or more, which leave no room for a completion, "
            "with one line saying how many; the run is refused when more than half of a split would go. false: "
            "refuse the run if any prompt is that long."
        },
    )
    dataset_mixture: dict | str | None = field(
        default=None,
        metadata={
            "help": "alignment-handbook's mixture, read as the handbook reads it: {datasets: [{id, config, split, "
            "columns, weight}], seed, test_split_size}; weight is the fraction of a data set's rows drawn with seed "
            "(default: the run's seed). YAML, or the same as JSON on the command line. For TRL's own mixtures, see "
            "datasets."
        },
    )
    chat_template_path: str | None = field(
        default=None,
        metadata={
            "help": "A Jinja chat template (.jinja/.j2 file) or a tokenizer directory whose template is used, for a "
            "tokenizer that has none. The merged model is saved with it."
        },
    )

    def __post_init__(self):
        # TRL's __post_init__ makes each `datasets` entry a DatasetConfig; a bare path (as the command line gives it)
        # becomes one too, and a wrong key is named here rather than by DatasetConfig's TypeError.
        keys = [field.name for field in dataclasses.fields(DatasetConfig)]
        for index, member in enumerate(self.datasets):
            if isinstance(member, str):
                self.datasets[index] = DatasetConfig(path=member)
            elif isinstance(member, dict):
                unknown = [key for key in member if key not in keys]
                if unknown or "path" not in member:
                    problem = f"unknown key '{unknown[0]}'" if unknown else "no path"
                    raise ValueError(f"datasets[{index}]: {problem} (keys: {', '.join(keys)})")
        super().__post_init__()


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
    "dataset_mixer": lambda value, settings: _mixer_as_mixture(value, settings),
    "dataset_splits": lambda value, settings: _train_and_test_splits(value),
}
DROPPED_KEYS = {
    "max_prompt_length": "TRL 1.16 removed it, and only max_length truncates, cutting the end of each completion "
    "(rows whose prompt has max_length tokens or more are dropped before training, with a note)",
    "overwrite_output_dir": "transformers 5 removed it: a run writes into output_dir whatever it holds, and continues "
    "from its checkpoints only with resume_from_checkpoint: true",
}
REPLACED_KEYS = {
    "chat_template": "a template in the config is not read here: save it to a .jinja file and set chat_template_path "
    "to it",
    "logging_dir": "transformers 5 removed it: set the TENSORBOARD_LOGGING_DIR environment variable instead",
    "push_to_hub_revision": "alignment-handbook's flag is not read here: set push_to_hub: true and hub_revision to "
    "the branch to push to",
}
SECRET_KEYS = ("hub_token",)
# The packages of the trackers in `report_to` whose package is not named as the tracker is.
TRACKER_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "dagshub": "dagshub mlflow"}

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
    if isinstance(run_args.dataset_mixture, str):
        run_args.dataset_mixture = _json_mapping(run_args.dataset_mixture, "dataset_mixture")
    if run_args.dataset_mixture is not None:
        try:
            run_args.dataset_mixture = handbook_mixture(run_args.dataset_mixture)
        except UserError as error:
            raise UserError(f"{parser.config_path or 'command line'}: {error}") from None
    if run_args.merged_model_dir is None:
        run_args.merged_model_dir = str(Path("models") / Path(training_args.output_dir).name)
    if run_args.images_dir is None:
        run_args.images_dir = training_args.output_dir
    training_args.resume_from_checkpoint = _resume_value(training_args.resume_from_checkpoint)
    _check_values(training_args, model_args, run_args, where=parser.config_path or "command line")
    _check_data_settings(script_args, run_args, where=parser.config_path or "command line")
    _check_trackers(training_args.report_to)
    check_sharding(training_args, model_args)
    _check_paths(script_args, model_args, training_args, run_args)
    check_run_paths(_data_inputs(script_args, run_args), training_args, model_args, run_args)
    if run_args.datasets or run_args.dataset_mixture:  # the mixture replaces dataset_name, as in TRL's scripts
        script_args.dataset_name = None
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
                f"SimPO beta {beta:g} is far from the paper's 2.0-2.5; below 1 the loss hardly moves (docs/findings.md)"
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


def _mixer_as_mixture(mixer: dict, settings: dict) -> dict:
    """alignment-handbook's older `dataset_mixer: {id: fraction}`: one whole data set is `dataset_name`; several, or a
    fraction of one, the handbook's `dataset_mixture` of each one's train split, sampled by its fraction."""
    if not isinstance(mixer, dict) or not mixer:
        raise UserError(f"dataset_mixer {_yaml(mixer)}: expected {{id: fraction, ...}}")
    if len(mixer) == 1 and list(mixer.values()) == [1.0]:
        return {"dataset_name": next(iter(mixer))}
    splits = settings.get("dataset_splits")
    split = _train_and_test_splits(splits)["dataset_train_split"] if splits else settings["dataset_train_split"]
    return {
        "dataset_mixture": {
            "datasets": [{"id": name, "split": split, "weight": fraction} for name, fraction in mixer.items()]
        }
    }


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
        (
            # Its handler saves on one process alone and then lets training end as if done, so the script would
            # merge a partly trained model; the scripts save on SIGTERM themselves (prefopt/stopping.py).
            not training_args.enable_jit_checkpoint,
            "enable_jit_checkpoint is not used here: on SIGTERM or SIGINT the scripts save a checkpoint of the step "
            "in progress on every process and stop without merging; remove it",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"{where}: {message}")


def _check_trackers(report_to: list[str]) -> None:
    """Each tracker in `report_to` known to transformers and installed: its callback would fail after the model has
    loaded. Only transformers' own trackers are checked against its list of installed ones, less kubeflow (switched
    on by an environment variable, not a package) and flyte (not in that list); a tracker that a program registers
    itself, as the benchmark's probe does, is there by definition."""
    available = get_available_reporting_integrations()
    for tracker in report_to:
        if tracker not in INTEGRATION_TO_CALLBACK:
            raise UserError(
                f"report_to: unknown tracker '{tracker}' (transformers knows {', '.join(INTEGRATION_TO_CALLBACK)})"
            )
        transformers_own = (
            INTEGRATION_TO_CALLBACK[tracker].__module__ == get_available_reporting_integrations.__module__
        )
        if transformers_own and tracker not in (*available, "kubeflow", "flyte"):
            package = TRACKER_PACKAGES.get(tracker, tracker)
            raise UserError(
                f"report_to: {tracker} is not installed; install it (pip install {package}) or remove it from "
                "report_to (docs/configuration.md, Trackers)"
            )


def _check_data_settings(script_args, run_args: RunArguments, where: str) -> None:
    """The keys that say how the data is read: its format, mixtures, streaming and held-out splits."""
    streaming = "every row is checked before training, and KTO's examples are shuffled, which needs the whole data set"
    checks = [
        (
            run_args.dataset_format in FORMAT_NAMES,
            f"dataset_format must be one of {', '.join(FORMAT_NAMES)}, got '{run_args.dataset_format}'",
        ),
        (not script_args.dataset_streaming, f"dataset_streaming is not supported: {streaming}; remove it"),
        (not run_args.streaming, f"streaming is not supported: {streaming}; remove it"),
        (
            not (run_args.datasets and run_args.dataset_mixture),
            "datasets (TRL's mixture) and dataset_mixture (alignment-handbook's) are both set; keep one",
        ),
        (
            run_args.test_split_size is None or run_args.datasets,
            "test_split_size holds out part of a datasets mixture, and none is set; for dataset_name, set test_size",
        ),
    ]
    checks += [
        (size is None or size > 0, f"{key} must be a fraction or a number of rows above 0, got {size}")
        for key, size in (("test_size", run_args.test_size), ("test_split_size", run_args.test_split_size))
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"{where}: {message}")


def _mixture_sources(run_args: RunArguments) -> list[tuple[str, str]]:
    """(key, path or hub id) of each data set of the mixture, TRL's or the handbook's; [] without one."""
    if run_args.dataset_mixture:
        members = run_args.dataset_mixture.datasets
        return [(f"dataset_mixture.datasets[{index}].id", member.id) for index, member in enumerate(members)]
    # TRL's `path` may be a builder (json, csv, parquet) that reads its data_files: not a path then.
    members = run_args.datasets
    return [(f"datasets[{index}].path", member.path) for index, member in enumerate(members) if not member.data_files]


def _data_inputs(script_args, run_args: RunArguments) -> list[tuple[str, str]]:
    """(key, path or hub id) of the data the run reads: `dataset_name`, or each data set and data file of a mixture."""
    if not (run_args.datasets or run_args.dataset_mixture):
        return [("dataset_name", script_args.dataset_name)]
    files = []
    for index, member in enumerate(run_args.datasets or []):
        data_files = member.data_files or []
        data_files = data_files.values() if isinstance(data_files, dict) else [data_files]
        flattened = [path for entry in data_files for path in ([entry] if isinstance(entry, str) else entry)]
        files += [(f"datasets[{index}].data_files", path) for path in flattened]
    return _mixture_sources(run_args) + files


def _check_paths(script_args, model_args, training_args, run_args) -> None:
    model = model_args.model_name_or_path
    if not model:
        raise UserError("model_name_or_path is required (a local model directory or a hub id)")
    if is_local(model) and not (Path(model) / "config.json").is_file():
        raise UserError(f"model_name_or_path: no model at '{model}' (expected a directory holding config.json)")
    if is_local(model) and not any(Path(model).glob("*.safetensors")):
        raise UserError(
            f"model_name_or_path: no .safetensors weights in '{model}'; weights are read as safetensors only, never "
            "unpickled: convert the model once with transformers' from_pretrained and save_pretrained"
        )
    if is_local(model):
        check_base_model(model, training_args.trust_remote_code)

    dataset = script_args.dataset_name
    mixture = "datasets" if run_args.datasets else "dataset_mixture" if run_args.dataset_mixture else None
    if not dataset and not mixture:
        raise UserError(
            "dataset_name is required (a hub id, a data directory or a .jsonl/.json/.parquet/.csv file), or a mixture: "
            "datasets (TRL's) or dataset_mixture (alignment-handbook's)"
        )
    if dataset and mixture:
        logger.warning(
            "dataset_name '%s' is ignored: the mixture in %s is read instead, as TRL's scripts do", dataset, mixture
        )
    for key, source in _mixture_sources(run_args) if mixture else [("dataset_name", dataset)]:
        if (is_local(source) or data_file_kind(source)) and not Path(source).exists():
            raise UserError(f"{key}: no such file or directory: '{source}'")

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
