"""The merged model's card: `README.md` in the hub's format, written with `huggingface_hub`'s `ModelCard`.

Its YAML front matter names the base model, `library_name: transformers`, tags (the algorithm, `lora`, `trl`), the
data set when it is a hub id, and the base's license when the base's own card is at hand. The text says what was
trained, on what, for how long on what hardware, and what the merge check measured. Other steps add their own
section with `set_card_section` (the experiment's held-out evaluation, for instance).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, try_to_load_from_cache

from prefopt.atomic import atomic_file
from prefopt.markdown import markdown_table, table_cell

CARD_FILE = "README.md"


@dataclass(frozen=True)
class TrainingRun:
    """What a card says of the run that trained the adapter: the algorithm (also a tag) and its settings."""

    algorithm: str  # dpo, kto, simpo
    settings: dict[str, str]  # the card's training table: what -> value


def write_model_card(
    model_dir: Path, name: str, report: dict, training: TrainingRun | None = None, dataset: str | None = None
) -> None:
    """Write `model_dir/README.md` for the merged model `name` from its merge report and, if known, its training run.

    `dataset` goes into the front matter when it is a hub id; the adapter's own card (TRL and PEFT write one) adds
    its tags and data sets.
    """
    adapter_card = _card_data(Path(report["adapter"]) / CARD_FILE)
    tags = {"lora", *(tag for tag in adapter_card.get("tags") or [] if not tag.startswith("base_model:"))}
    if training is not None:
        tags |= {training.algorithm, "trl"}
    hub_dataset = dataset if dataset and not Path(dataset).exists() else None
    data = ModelCardData(
        base_model=report["base_model"],
        library_name="transformers",
        tags=sorted(tags),
        datasets=[hub_dataset] if hub_dataset else adapter_card.get("datasets"),
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


def base_license(base_model: str) -> str | None:
    """The license in the base model's own card: a local model's README.md, or a hub model's if it is cached."""
    if Path(base_model).is_dir():
        return _card_data(Path(base_model) / CARD_FILE).get("license")
    cached = try_to_load_from_cache(base_model, CARD_FILE)
    return _card_data(Path(cached)).get("license") if isinstance(cached, str) else None


def _card_data(path: Path) -> dict:
    return ModelCard.load(path, ignore_metadata_errors=True).data.to_dict() if path.is_file() else {}


def _card_text(report: dict, training: TrainingRun | None) -> str:
    trained = f", trained with {training.algorithm.upper()} by TRL," if training else ""
    lines = [
        f"`{report['base_model']}` with a LoRA adapter{trained} merged into its weights, saved in "
        f"{report['merged_dtype']}. It is a plain transformers model: it loads with "
        "`AutoModelForCausalLM.from_pretrained` and needs neither PEFT nor the adapter "
        f"(`{report['adapter']}`).",
        "",
    ]
    if training is not None:
        lines += ["## Training", "", _table(("setting", "value"), training.settings), ""]
    share = report["share_kept"]
    measures = {
        "max absolute logit difference": f"{report['max_abs_logit_diff']:.3g}",
        "mean per-token KL(base + adapter ‖ merged)": f"{report['mean_kl']:.3g}",
        "share of the adapter's effect on the logits kept": "n/a" if share is None else f"{share:.1%}",
        "the adapter's effect: max absolute logit difference from the base": (
            f"{report['adapter_effect_max_abs_logit_diff']:.3g}"
        ),
    }
    if report["qlora_gap"]:
        gap = report["qlora_gap"]
        measures["QLoRA gap: 4-bit base + adapter, as trained, against base + adapter"] = (
            f"max absolute logit difference {gap['max_abs_logit_diff']:.3g}, mean KL {gap['mean_kl']:.3g}"
        )
    check = report["check_batch"]
    lines += [
        "## Merge check",
        "",
        f"On {check['examples']} examples of {check['source']} ({check['positions']} positions), the merged model as "
        "saved against the base with the adapter applied, unmerged, in float32 (`merge_report.json`):",
        "",
        _table(("measure", "value"), measures),
        "",
    ]
    if report["warning"]:
        lines += [f"Warning: {report['warning']}.", ""]
    return "\n".join(lines)


def _table(header: tuple[str, str], rows: dict[str, str]) -> str:
    return markdown_table(header, [[table_cell(key), table_cell(value)] for key, value in rows.items()])
