"""The published model's card: `README.md` in the hub's format, written with `huggingface_hub`'s `ModelCard`.

Its YAML front matter names the base model by its hub id (left out when the base has none), `library_name:
transformers`, tags (the algorithm, `lora` for an adapter, `trl`), the data set when it is a hub id, and the base's
license when the base's own card is at hand. The text says what was trained, on what, for how long on what hardware,
and what the check measured; it names a local base and the trained directory by their directory's name alone (the
data as given). Other steps add their own section with `set_card_section` (the experiment's held-out evaluation, for
instance).
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from huggingface_hub import ModelCard, ModelCardData, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from trl import ModelConfig, ScriptArguments

from prefopt.atomic import atomic_file
from prefopt.config import RunArguments
from prefopt.data import data_description
from prefopt.markdown import markdown_table, table_cell
from prefopt.merge_check import ADAPTER_MERGE, published_in
from prefopt.run_logs import read_trainer_state
from prefopt.run_record import ALGORITHM_SETTINGS

CARD_FILE = "README.md"

@dataclass(frozen=True)
class TrainingRun:
    """What a card says of the run that trained the model: the algorithm (also a tag) and its settings."""

    algorithm: str  # dpo, kto, simpo
    settings: dict[str, str]  # the card's training table: what -> value

    @classmethod
    def of(
        cls, script_args: ScriptArguments, training_args, model_args: ModelConfig, run_args: RunArguments
    ) -> "TrainingRun":
        """The run that just trained in `output_dir`: the algorithm and its settings, LoRA, the schedule, the data,
        the time and the hardware, read from the configs and the trainer state it saved."""
        algorithm = type(training_args).__name__.removesuffix("Config").lower()  # DPOConfig, KTOConfig, SimPOConfig
        state = PartialState()
        trainer_state = read_trainer_state(training_args.output_dir)
        runtime = next(entry["train_runtime"] for entry in trainer_state["log_history"] if "train_runtime" in entry)
        device = torch.cuda.get_device_name() if state.device.type == "cuda" else state.device.type
        batch = (
            training_args.per_device_train_batch_size * state.num_processes * training_args.gradient_accumulation_steps
        )
        settings = {
            "algorithm": ", ".join(
                [algorithm.upper()]
                + [
                    f"{key} {_setting(getattr(training_args, key))}"
                    for key in ALGORITHM_SETTINGS
                    if hasattr(training_args, key)
                ]
            ),
            **(
                {
                    "LoRA": f"r {model_args.lora_r}, alpha {model_args.lora_alpha}, dropout "
                    f"{model_args.lora_dropout:g}, target modules {_setting(model_args.lora_target_modules)}"
                    + ("; trained on the base quantized to 4 bits (QLoRA)" if model_args.load_in_4bit else "")
                }
                if model_args.use_peft
                else {"weights": "all trained: a full fine-tune (use_peft: false)"}
            ),
            "optimization": (
                f"learning rate {training_args.learning_rate:g}, {training_args.lr_scheduler_type.value} schedule, "
                f"warmup_steps {training_args.warmup_steps:g}, {trainer_state['global_step']} steps "
                f"({trainer_state['epoch']:.3g} epochs), effective batch {batch}, max_length {training_args.max_length}"
            ),
            "data": f"{data_description(script_args, run_args)} [{script_args.dataset_train_split}]",
            "training time": f"{runtime:.0f} s on {state.num_processes} x {device}",
        }
        return cls(algorithm, settings)


def _setting(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_model_card(
    model_dir: Path, name: str, report: dict, training: TrainingRun | None = None, dataset: str | None = None
) -> None:
    """Write `model_dir/README.md` for the model `name` from the report of its check and, if known, its training run.

    `dataset` goes into the front matter when it is a hub id; the trained directory's own card (TRL and PEFT write
    one) adds its tags and data sets.
    """
    trained_card = _card_data(Path(_trained_dir(report)) / CARD_FILE)
    tags = {tag for tag in trained_card.get("tags") or [] if not tag.startswith("base_model:")}
    if published_in(report) is ADAPTER_MERGE:
        tags.add("lora")
    if training is not None:
        tags |= {training.algorithm, "trl"}
    hub_dataset = dataset if dataset and not Path(dataset).exists() and _is_repo_id(dataset) else None
    data = ModelCardData(
        base_model=hub_id(report["base_model"]),
        library_name="transformers",
        tags=sorted(tags),
        datasets=[hub_dataset] if hub_dataset else trained_card.get("datasets"),
        license=base_license(report["base_model"]),
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {name}\n\n{_card_text(report, training)}")
    card.save(model_dir / CARD_FILE)


def set_card_section(model_dir: str | Path, title: str, markdown: str) -> None:
    """Add the section `## title` with `markdown` to a model's card, or replace the section of that title."""
    path = Path(model_dir) / CARD_FILE
    card = ModelCard.load(path)
    section = f"## {title}\n\n{markdown.strip()}\n"
    existing = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if existing.search(card.text):
        card.text = existing.sub(lambda _: section + "\n", card.text, count=1).rstrip("\n") + "\n"
    else:
        card.text = f"{card.text.rstrip()}\n\n{section}"
    with atomic_file(path) as staging:
        card.save(staging)


def hub_id(name_or_path: str) -> str | None:
    """The hub id of a model given as a hub id, or as its copy in the hub's cache (`models--org--name/snapshots/
    <commit>`); None for any other local directory.

    Its config.json does not tell: transformers 5 writes no `_name_or_path` there, and what earlier versions wrote is
    what the model was loaded from when it was saved, which may be a fine-tune's parent or a local path.
    """
    path = Path(name_or_path)
    if not path.exists():  # loaded from the hub by this name
        return name_or_path if _is_repo_id(name_or_path) else None
    repo_folder = path.parent.parent.name
    if path.parent.name == "snapshots" and repo_folder.startswith("models--"):
        return repo_folder.removeprefix("models--").replace("--", "/")
    return None


def _is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def base_license(base_model: str) -> str | None:
    """The license in the base model's own card: a local model's README.md, or a hub model's if it is cached."""
    if Path(base_model).is_dir():
        return _card_data(Path(base_model) / CARD_FILE).get("license")
    cached = try_to_load_from_cache(base_model, CARD_FILE)
    return _card_data(Path(cached)).get("license") if isinstance(cached, str) else None


def _card_data(path: Path) -> dict:
    return ModelCard.load(path, ignore_metadata_errors=True).data.to_dict() if path.is_file() else {}


def _trained_dir(report: dict) -> str:
    return report[published_in(report).key]


def _card_name(name_or_path: str) -> str:
    """A model in the card's text: its hub id, or a local directory's name alone, which tells nothing of the disk."""
    found = hub_id(name_or_path)
    return f"`{found}`" if found else f"`{Path(name_or_path).name}` (a local model)"


def _card_text(report: dict, training: TrainingRun | None) -> str:
    published = published_in(report)
    base, trained_dir = _card_name(report["base_model"]), Path(_trained_dir(report)).name
    trained = f", trained with {training.algorithm.upper()} by TRL," if training else ""
    if published is ADAPTER_MERGE:
        intro = (
            f"{base} with a LoRA adapter{trained} merged into its weights, saved in {report['merged_dtype']}. It is a "
            "plain transformers model: it loads with `AutoModelForCausalLM.from_pretrained` and needs neither PEFT "
            f"nor the adapter (`{trained_dir}`)."
        )
    else:
        intro = (
            f"{base} with all of its weights fine-tuned{trained or ','} saved in {report['merged_dtype']} from the "
            f"model the trainer saved (`{trained_dir}`, in {report['trained_dtype']}). It loads with "
            "`AutoModelForCausalLM.from_pretrained`."
        )
    lines = [intro, ""]
    if training is not None:
        lines += ["## Training", "", _table(("setting", "value"), training.settings), ""]
    share = report["share_kept"]
    measures = {
        "max absolute logit difference": f"{report['max_abs_logit_diff']:.3g}",
        f"mean per-token KL({published.kl})": f"{report['mean_kl']:.3g}",
        f"share of {published.effect} on the logits kept": "n/a" if share is None else f"{share:.1%}",
        f"{published.effect}: max absolute logit difference from the base": f"{report[published.effect_key]:.3g}",
    }
    if report.get("qlora_gap"):
        gap = report["qlora_gap"]
        measures["QLoRA gap: 4-bit base + adapter, as trained, against base + adapter"] = (
            f"max absolute logit difference {gap['max_abs_logit_diff']:.3g}, mean KL {gap['mean_kl']:.3g}"
        )
    check = report["check_batch"]
    lines += [
        f"## {published.check.capitalize()}",
        "",
        f"On {check['examples']} examples of {check['source']} ({check['positions']} positions), {published.compared}, "
        "in float32 (`merge_report.json`):",
        "",
        _table(("measure", "value"), measures),
        "",
    ]
    if report["warning"]:
        lines += [f"Warning: {report['warning']}.", ""]
    return "\n".join(lines)


def _table(header: tuple[str, str], rows: dict[str, str]) -> str:
    return markdown_table(header, [[table_cell(key), table_cell(value)] for key, value in rows.items()])
