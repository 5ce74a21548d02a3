"""Preference data: loaded from a hub id, a directory of data files, a single file or a mixture of these, converted to
TRL's format from the format it comes in, and checked before training.

Every check here runs before the model is loaded. A problem is reported as one line naming the data, the split,
the column and an example row, so that a bad file costs seconds rather than a model download.
"""

import logging
import math
from collections.abc import Callable
from pathlib import Path

import jinja2
from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase
from trl import ScriptArguments
from trl.data_utils import extract_prompt, is_conversational, maybe_extract_prompt, unpair_preference_dataset

from prefopt.config import RunArguments
from prefopt.data_files import (
    DATA_FILE_BUILDERS,
    broken_files_reported,
    check_readable,
    data_file_kind,
    data_files_in,
    record_line,
)
from prefopt.errors import UserError, reported_if_hub_unreachable
from prefopt.formats import in_trl_format
from prefopt.mixtures import concatenated, handbook_weighted, trl_fraction_mixture

PAIRED_COLUMNS = ("chosen", "rejected")  # plus "prompt", or an implicit prompt shared by chosen and rejected
UNPAIRED_COLUMNS = ("prompt", "completion", "label")
COMPLETION_COLUMNS = ("chosen", "rejected", "completion")
# Rows whose prompt leaves no room under max_length are dropped, unless they are more than this share of a split:
# the run would then learn from a minority of the data, skewed to short prompts.
MAX_SHARE_DROPPED = 0.5

logger = logging.getLogger(__name__)


def load_preference_data(
    script_args: ScriptArguments,
    training_args,
    run_args: RunArguments,
    tokenizer: PreTrainedTokenizerBase,
    unpaired_ok: bool = False,
) -> tuple[Dataset, Dataset | None]:
    """The train split and, when the run evaluates, the test split, in TRL's columns and checked row by row."""
    evaluate, max_length, seed = training_args.eval_strategy != "no", training_args.max_length, training_args.seed
    dataset = load_preference_dataset(script_args, run_args, seed)
    source = data_name(script_args, run_args)
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
    hold_out = evaluate and run_args.test_size and test_split not in dataset and train_split in dataset
    if hold_out:
        held_out = split_off(dataset[train_split], run_args.test_size, seed, "test_size", f"{source} [{train_split}]")
        dataset = DatasetDict({train_split: held_out["train"], test_split: held_out["test"]})
    train, test = select_splits(dataset, script_args, evaluate, unpaired_ok, source)
    row_name = _row_namer(source, in_file_order=not hold_out)
    template = _template_name(tokenizer, run_args.chat_template_path)
    # DPO's keep_end truncation keeps the end of a long prompt and the completion: DPOTrainer drops no row then.
    drop_rows = max_length is not None and getattr(training_args, "truncation_mode", "keep_start") == "keep_start"
    checked = []
    for name, split in ((train_split, train), (test_split, test)):
        if split is not None:
            where = f"{source} [{name}]"
            check_rows(split, where, tokenizer, row_name, template)
            if "prompt" not in split.column_names:  # an implicit prompt: the start chosen and rejected share
                split = split.map(extract_prompt)
            warn_if_nothing_to_learn(split, where)
            if drop_rows:
                split = without_long_prompts(split, where, tokenizer, max_length, row_name, run_args.drop_long_prompts)
        checked.append(split)
    return checked[0], checked[1]


def data_name(script_args: ScriptArguments, run_args: RunArguments) -> str:
    """How messages name the data: `dataset_name`, or the key of the mixture that replaces it."""
    if run_args.datasets:
        return "datasets"
    if run_args.dataset_mixture:
        return "dataset_mixture"
    return script_args.dataset_name


def data_description(script_args: ScriptArguments, run_args: RunArguments) -> str:
    """The data as the merge report and the model card name it: `dataset_name`, or a mixture and what it mixes."""
    if run_args.datasets:
        return f"datasets ({', '.join(member.path for member in run_args.datasets)})"
    if run_args.dataset_mixture:
        return f"dataset_mixture ({', '.join(member.id for member in run_args.dataset_mixture.datasets)})"
    return script_args.dataset_name


def load_preference_dataset(
    script_args: ScriptArguments, run_args: RunArguments | None = None, seed: int = 42
) -> DatasetDict:
    """The data in TRL's columns: `dataset_name` (a single data file becomes the train split; a directory's files are
    split by name), or a mixture, TRL's `datasets` or alignment-handbook's `dataset_mixture`. Each data set is renamed
    by `dataset_columns` and converted from its own format. `seed` draws the mixtures' samples and splits."""
    run_args = run_args or RunArguments()
    if run_args.datasets:
        return trl_mixture(run_args, seed)
    if run_args.dataset_mixture:
        return handbook_mixture(run_args, seed)
    source = script_args.dataset_name
    dataset = _load_source(source, "dataset_name", script_args.dataset_train_split, name=script_args.dataset_config)
    return _in_trl_columns(dataset, source, run_args, _row_namer(source, in_file_order=True))


def trl_mixture(run_args: RunArguments, seed: int) -> DatasetDict:
    """TRL's `datasets`: each data set loaded as TRL's `get_dataset` loads it (`path`, `name`, `data_dir`,
    `data_files`, `split`, `columns`), then in TRL's columns, mixed by `fraction`; `test_split_size` holds out part of
    the mixture, drawn with the run's seed (TRL's split is unseeded)."""
    names, datasets = [], []
    for index, member in enumerate(run_args.datasets):
        key = f"datasets[{index}]"
        dataset = _load_member(
            member.path,
            key,
            member.split,
            member.columns,
            name=member.name,
            data_dir=member.data_dir,
            data_files=member.data_files,
        )
        names.append(f"{key} ({member.path})")
        datasets.append(_member_in_trl_columns(dataset, member.path, member.split, names[-1], run_args))
    datasets = trl_fraction_mixture(datasets, [member.fraction for member in run_args.datasets])
    return _mixed(datasets, names, "datasets", run_args.test_split_size, "test_split_size", seed)


def handbook_mixture(run_args: RunArguments, seed: int) -> DatasetDict:
    """alignment-handbook's `dataset_mixture`: each data set loaded by `id`, `config` and `split`, its `columns` kept,
    in TRL's columns, sampled by `weight`; then mixed and shuffled, and split by `test_split_size`, all with the
    mixture's `seed`, or the run's when it sets none."""
    mixture = run_args.dataset_mixture
    seed = seed if mixture.seed is None else mixture.seed
    names, datasets = [], []
    for index, member in enumerate(mixture.datasets):
        key = f"dataset_mixture.datasets[{index}]"
        dataset = _load_member(member.id, key, member.split, member.columns, name=member.config)
        names.append(f"{key} ({member.id})")
        dataset = _member_in_trl_columns(dataset, member.id, member.split, names[-1], run_args)
        datasets.append(handbook_weighted(dataset, member.weight, seed))
    size_key = "dataset_mixture.test_split_size"
    return _mixed(datasets, names, "dataset_mixture", mixture.test_split_size, size_key, seed, shuffle=True)


def _mixed(
    datasets: list[Dataset],
    names: list[str],
    key: str,
    test_split_size: float | None,
    size_key: str,
    seed: int,
    shuffle: bool = False,
) -> DatasetDict:
    mixture = concatenated(datasets, names, key)
    logger.info(
        "%s: a mixture of %d rows: %s",
        key,
        len(mixture),
        ", ".join(f"{len(dataset)} of {name}" for dataset, name in zip(datasets, names)),
    )
    if shuffle:
        mixture = mixture.shuffle(seed=seed)
    if test_split_size is None:
        return DatasetDict({"train": mixture})
    return split_off(mixture, test_split_size, seed, size_key, key)


def split_off(dataset: Dataset, size: float, seed: int, key: str, where: str) -> DatasetDict:
    """`dataset` split into train and test, the test split `size` rows (a number) or a fraction (below 1) of them, as
    `Dataset.train_test_split` counts them, drawn with `seed`; one line when either split would be empty."""
    rows = len(dataset)
    held_out = math.ceil(size * rows) if size < 1 else int(size)  # a fraction's rows rounded up, as datasets does
    if held_out >= rows:
        raise UserError(
            f"{key} {size:g}: {where} has {rows} rows, and holding out {held_out} leaves none to train on; set {key} "
            f"to a fraction below 1, or a number of rows below {rows}"
        )
    return dataset.train_test_split(test_size=held_out, seed=seed)


def _load_member(path: str, key: str, split: str, columns: list[str] | None, **load_kwargs) -> Dataset:
    """One data set of a mixture: the `split` of a data file, a directory or a hub id, with only its `columns`."""
    if Path(path).is_file():
        dataset = _load_source(path, key, split)[split]
    else:
        try:
            dataset = _load_source(path, key, split=split, **load_kwargs)
        except ValueError as error:  # datasets' 'Unknown split "x". Should be one of [...]'
            if not str(error).startswith("Unknown split"):
                raise
            raise UserError(f"{key}: no split '{split}' in '{path}' ({error})") from None
    if columns:
        missing = [column for column in columns if column not in dataset.column_names]
        if missing:
            raise UserError(
                f"{key}: columns lists '{missing[0]}', which '{path}' does not have (columns: "
                f"{', '.join(dataset.column_names)})"
            )
        dataset = dataset.select_columns(columns)
    return dataset


def _load_source(source: str, key: str, file_split: str = "train", **load_kwargs) -> DatasetDict | Dataset:
    """A data file (read as the split `file_split`), a directory of them (splits by file name) or a hub id; local
    files are checked first for what `datasets` would fail on with a traceback, or read wrongly."""
    path = Path(source)
    if path.is_file():
        check_readable(path, key)
        with broken_files_reported(path, key):
            return load_dataset(DATA_FILE_BUILDERS[data_file_kind(path)], data_files={file_split: str(path)})
    if path.is_dir():
        for file in data_files_in(path):
            check_readable(file, key)
        with broken_files_reported(path, key):
            return load_dataset(source, **load_kwargs)
    try:
        with reported_if_hub_unreachable(key, source, repo_type="dataset"):
            return load_dataset(source, **load_kwargs)
    except FileNotFoundError as error:  # a builder's data_files that do not exist
        raise UserError(f"{key}: {' '.join(str(error).split())}") from None


def _in_trl_columns(
    dataset: DatasetDict, source: str, run_args: RunArguments, row_name: Callable[[int], str]
) -> DatasetDict:
    """`dataset_columns` renamed, then converted from the format the data is in (`dataset_format`)."""
    if run_args.dataset_columns:
        dataset = rename_columns(dataset, run_args.dataset_columns, source)
    return in_trl_format(dataset, source, run_args.dataset_format, row_name)


def _member_in_trl_columns(dataset: Dataset, path: str, split: str, name: str, run_args: RunArguments) -> Dataset:
    """A data set of a mixture in TRL's columns; a data file's rows are named by their lines in messages."""
    return _in_trl_columns(DatasetDict({split: dataset}), name, run_args, _row_namer(path, in_file_order=True))[split]


def rename_columns(dataset: DatasetDict, columns: dict[str, str], source: str) -> DatasetDict:
    """Rename the data's columns to TRL's: `columns` maps TRL's name to the data's (prompt: question)."""
    for name, split in dataset.items():
        for trl_name, data_name in columns.items():
            if data_name not in split.column_names:
                raise UserError(
                    f"{source} [{name}]: dataset_columns maps '{trl_name}' to '{data_name}', which is not a column "
                    f"(columns: {', '.join(split.column_names)})"
                )
    return dataset.rename_columns({data_name: trl_name for trl_name, data_name in columns.items()})


def select_splits(
    dataset: DatasetDict, script_args: ScriptArguments, evaluate: bool, unpaired_ok: bool = False, source: str = ""
) -> tuple[Dataset, Dataset | None]:
    """The train split and, when evaluating, the test split, each checked for the columns the trainer needs."""
    source = source or script_args.dataset_name
    names = [script_args.dataset_train_split] + ([script_args.dataset_test_split] if evaluate else [])
    for name in names:
        if name not in dataset:
            fix = (
                "set dataset_train_split"
                if name == script_args.dataset_train_split
                else "set dataset_test_split, test_size (to hold out part of train) or eval_strategy: no"
            )
            raise UserError(f"{source}: no split '{name}' (splits: {', '.join(dataset)}); {fix}")
        check_columns(dataset[name], f"{source} [{name}]", unpaired_ok)
    train = dataset[script_args.dataset_train_split]
    return train, dataset[script_args.dataset_test_split] if evaluate else None


def check_columns(split: Dataset, where: str, unpaired_ok: bool = False) -> None:
    if len(split) == 0:
        raise UserError(f"{where}: the split is empty")
    columns = set(split.column_names)
    required = UNPAIRED_COLUMNS if unpaired_ok and "completion" in columns else PAIRED_COLUMNS
    expected = "prompt/chosen/rejected or prompt/completion/label" if unpaired_ok else "prompt/chosen/rejected"
    missing = [column for column in required if column not in columns]
    if missing:
        raise UserError(
            f"{where}: missing column '{missing[0]}' (columns: {', '.join(split.column_names)}; expected {expected})"
        )


def _row_namer(source: str, in_file_order: bool) -> Callable[[int], str]:
    """How messages name a row: by its line in a JSON Lines file whose records are the split, in order."""
    path = Path(source)
    if in_file_order and path.is_file() and data_file_kind(path) == ".jsonl":
        return lambda index: f"line {record_line(path, index)}"
    return lambda index: f"row {index}"


def _template_name(tokenizer: PreTrainedTokenizerBase, chat_template_path: str | None) -> str:
    if chat_template_path and Path(chat_template_path).is_file():
        return f"the chat template '{chat_template_path}'"
    return f"the chat template of '{chat_template_path or tokenizer.name_or_path}'"


def check_rows(
    split: Dataset,
    where: str,
    tokenizer: PreTrainedTokenizerBase,
    row_name: Callable[[int], str],
    template: str = "the tokenizer's chat template",
) -> None:
    """Types of every row; for conversational data, a chat template that renders every row as the trainers will."""
    text_columns = [column for column in ("prompt", *COMPLETION_COLUMNS) if column in split.column_names]
    conversational = isinstance(split[0][text_columns[0]], list)
    for column in text_columns:
        for index, value in enumerate(split[column]):
            problem = _message_list_problem(value) if conversational else _text_problem(value)
            if problem:
                raise UserError(f"{where}: column '{column}', {row_name(index)}: {problem}")
    if "label" in split.column_names:
        for index, label in enumerate(split["label"]):
            if not isinstance(label, bool):
                raise UserError(f"{where}: column 'label', {row_name(index)}: expected true or false, got {label!r}")
    if conversational and tokenizer.chat_template is None:
        raise UserError(
            f"{where}: the data is conversational but the tokenizer has no chat template; set chat_template_path "
            "to a .jinja file or to a tokenizer directory that has one"
        )
    if conversational:
        _check_template_renders(split, where, tokenizer, row_name, template)


def _text_problem(value) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    return None


def _message_list_problem(value) -> str | None:
    if not isinstance(value, list):
        return f"expected a list of messages like the first row's, got {type(value).__name__}"
    if not value:
        return "no messages (an empty list); each row needs at least one message here"
    for message in value:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            return f"expected messages with 'role' and 'content', got {message!r}"
    return None


def _check_template_renders(
    split: Dataset, where: str, tokenizer: PreTrainedTokenizerBase, row_name: Callable[[int], str], template: str
) -> None:
    """Each row rendered as the trainers render it: the prompt with the generation prompt, the prompt followed by each
    completion. A template that raises, as many do when roles do not alternate, is named with the first such row."""
    prompts = split["prompt"] if "prompt" in split.column_names else None
    completions = {column: split[column] for column in COMPLETION_COLUMNS if column in split.column_names}
    for index in range(len(split)):
        prompt = prompts[index] if prompts is not None else []
        conversations = [("prompt", prompt, True)] if prompts is not None else []
        conversations += [(column, prompt + values[index], False) for column, values in completions.items()]
        for column, messages, add_generation_prompt in conversations:
            try:
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            except jinja2.TemplateSyntaxError as error:
                raise UserError(
                    f"{template} is not a valid Jinja template (line {error.lineno}: {error.message}); fix it, or set "
                    "chat_template_path to one that is"
                ) from None
            except jinja2.TemplateError as error:
                raise UserError(
                    f"{where}: column '{column}', {row_name(index)}: {template} cannot render this row ({error}); fix "
                    "the row, or set chat_template_path to a template that accepts it"
                ) from None


def _completion_text(value: str | list[dict]) -> str:
    return value if isinstance(value, str) else "".join(message["content"] for message in value)


def warn_if_nothing_to_learn(split: Dataset, where: str) -> None:
    """One warning for data that teaches nothing: every chosen equal to its rejected, or every completion empty."""
    completions = [column for column in COMPLETION_COLUMNS if column in split.column_names]
    if "chosen" in completions and all(
        chosen == rejected for chosen, rejected in zip(split["chosen"], split["rejected"])
    ):
        logger.warning(
            "%s: in every row chosen equals rejected: such pairs prefer nothing, so DPO and SimPO learn nothing from "
            "them, and KTO is told each completion is both desirable and undesirable",
            where,
        )
    if all(not _completion_text(value).strip() for column in completions for value in split[column]):
        logger.warning("%s: every completion (%s) is empty: there is nothing to learn", where, ", ".join(completions))


def prompt_lengths(split: Dataset, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Each prompt's tokens as TRL's DPO and KTO trainers count them: through the chat template with the generation
    prompt for conversations, else as text with the tokenizer's special tokens."""
    if is_conversational(split[0]):
        return [
            len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
            for prompt in split["prompt"]
        ]
    return [len(ids) for ids in tokenizer(list(split["prompt"]), add_special_tokens=True)["input_ids"]]


def without_long_prompts(
    split: Dataset,
    where: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    row_name: Callable[[int], str],
    drop: bool = True,
) -> Dataset:
    """`split` without the rows whose prompt has `max_length` tokens or more, which leave no room for a completion
    (DPOTrainer and KTOTrainer drop them; CPOTrainer would train on an empty completion). One line says how many of
    how many went, and the longest. The run is refused when more than MAX_SHARE_DROPPED of the rows would go, and,
    with `drop` false, when any would."""
    lengths = prompt_lengths(split, tokenizer)
    too_long = [index for index, length in enumerate(lengths) if length >= max_length]
    if not too_long:
        return split
    counts = (
        f"{len(too_long)} of {len(split)} prompts have max_length ({max_length}) tokens or more (longest "
        f"{max(lengths)})"
    )
    if not drop:
        raise UserError(
            f"{where}: column 'prompt', {row_name(too_long[0])}: {counts}, leaving no room for the completion; raise "
            "max_length, filter those rows, or set drop_long_prompts: true to drop them"
        )
    if len(too_long) > MAX_SHARE_DROPPED * len(split):
        raise UserError(
            f"{where}: {counts}, leaving no room for the completion; dropping more than half of the rows would leave "
            "too little of the data for the run to mean much: raise max_length, or shorten or filter the prompts"
        )
    logger.warning(
        "%s: dropped %s, the first at %s: they leave no room for a completion; raise max_length to keep them",
        where,
        counts.replace(" prompts have", " rows whose prompt has"),
        row_name(too_long[0]),
    )
    return split.select(sorted(set(range(len(split))) - set(too_long)))


def unpaired_shuffled(dataset: Dataset, seed: int) -> Dataset:
    """KTO data: paired rows split into a desirable and an undesirable row each, then shuffled with the run's seed.

    KTOTrainer samples sequentially, because its KL estimate pairs each example with its neighbours in a fixed
    order. Unpairing keeps the desirable rows of each block ahead of the undesirable ones, so without the shuffle
    batches are all-desirable or all-undesirable and KTO learns nothing.
    """
    if "chosen" in dataset.column_names:
        dataset = unpair_preference_dataset(dataset.map(maybe_extract_prompt))
    return dataset.shuffle(seed=seed)
