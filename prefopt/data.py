"""Preference data: loaded from a hub id, a directory of data files or a single file, and checked before training.

Every check here runs before the model is loaded. A problem is reported as one line naming the data, the split,
the column and an example row, so that a bad file costs seconds rather than a model download.
"""

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase
from trl import ScriptArguments
from trl.data_utils import extract_prompt, is_conversational, maybe_extract_prompt, unpair_preference_dataset

from prefopt.errors import UserError

# File extension -> the `datasets` builder that reads it.
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
PAIRED_COLUMNS = ("chosen", "rejected")  # plus "prompt", or an implicit prompt shared by chosen and rejected
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


def load_preference_data(
    script_args: ScriptArguments,
    training_args,
    run_args,
    tokenizer: PreTrainedTokenizerBase,
    unpaired_ok: bool = False,
) -> tuple[Dataset, Dataset | None]:
    """The train split and, when the run evaluates, the test split, in TRL's column names and checked row by row."""
    evaluate, max_length, seed = training_args.eval_strategy != "no", training_args.max_length, training_args.seed
    dataset = load_preference_dataset(script_args)
    if run_args.dataset_columns:
        dataset = rename_columns(dataset, run_args.dataset_columns, script_args.dataset_name)
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
    if evaluate and run_args.test_size and test_split not in dataset and train_split in dataset:
        held_out = dataset[train_split].train_test_split(test_size=_row_count(run_args.test_size), seed=seed)
        dataset = DatasetDict({train_split: held_out["train"], test_split: held_out["test"]})
    train, test = select_splits(dataset, script_args, evaluate, unpaired_ok)
    checked = []
    for name, split in ((train_split, train), (test_split, test)):
        if split is not None:
            where = f"{script_args.dataset_name} [{name}]"
            check_rows(split, where, tokenizer)
            if "prompt" not in split.column_names:  # an implicit prompt: the start chosen and rejected share
                split = split.map(extract_prompt)
            if max_length is not None:
                check_prompt_lengths(split, where, tokenizer, max_length)
        checked.append(split)
    return checked[0], checked[1]


def load_preference_dataset(script_args: ScriptArguments) -> DatasetDict:
    """Load `dataset_name`: a single data file becomes the train split; a directory's files are split by name."""
    source = script_args.dataset_name
    path = Path(source)
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise UserError(f"dataset_name: cannot read '{source}' (supported: {', '.join(DATA_FILE_BUILDERS)})")
        if path.stat().st_size == 0:
            raise UserError(f"dataset_name: '{source}' is empty")
        return load_dataset(builder, data_files={script_args.dataset_train_split: str(path)})
    # A directory or a hub id: `datasets` infers the format from the file extensions and the splits from the file
    # names (train.jsonl, test.jsonl, ...).
    return load_dataset(source, name=script_args.dataset_config)


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
    dataset: DatasetDict, script_args: ScriptArguments, evaluate: bool, unpaired_ok: bool = False
) -> tuple[Dataset, Dataset | None]:
    """The train split and, when evaluating, the test split, each checked for the columns the trainer needs."""
    names = [script_args.dataset_train_split] + ([script_args.dataset_test_split] if evaluate else [])
    for name in names:
        if name not in dataset:
            fix = (
                "set dataset_train_split"
                if name == script_args.dataset_train_split
                else "set dataset_test_split, test_size (to hold out part of train) or eval_strategy: no"
            )
            raise UserError(f"{script_args.dataset_name}: no split '{name}' (splits: {', '.join(dataset)}); {fix}")
        check_columns(dataset[name], f"{script_args.dataset_name} [{name}]", unpaired_ok)
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


def check_rows(split: Dataset, where: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Types of every row, and a chat template for conversational data."""
    text_columns = [column for column in ("prompt", "chosen", "rejected", "completion") if column in split.column_names]
    conversational = isinstance(split[0][text_columns[0]], list)
    for column in text_columns:
        for index, value in enumerate(split[column]):
            problem = _message_list_problem(value) if conversational else _text_problem(value)
            if problem:
                raise UserError(f"{where}: column '{column}', row {index}: {problem}")
    if "label" in split.column_names:
        for index, label in enumerate(split["label"]):
            if not isinstance(label, bool):
                raise UserError(f"{where}: column 'label', row {index}: expected true or false, got {label!r}")
    if conversational and tokenizer.chat_template is None:
        raise UserError(
            f"{where}: the data is conversational but the tokenizer has no chat template; set chat_template_path "
            "to a .jinja file or to a tokenizer directory that has one"
        )


def _text_problem(value) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    return None


def _message_list_problem(value) -> str | None:
    if not isinstance(value, list):
        return f"expected a list of messages like the first row's, got {type(value).__name__}"
    for message in value:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and "content" in message):
            return f"expected messages with 'role' and 'content', got {message!r}"
    return None


def check_prompt_lengths(split: Dataset, where: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """A prompt of `max_length` tokens or more leaves no room for its completion: TRL would drop the row."""
    if is_conversational(split[0]):
        prompt_ids = [
            tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
            for prompt in split["prompt"]
        ]
    else:
        prompt_ids = tokenizer(list(split["prompt"]), add_special_tokens=True)["input_ids"]
    too_long = [index for index, ids in enumerate(prompt_ids) if len(ids) >= max_length]
    if too_long:
        longest = max(len(prompt_ids[index]) for index in too_long)
        raise UserError(
            f"{where}: column 'prompt', row {too_long[0]}: {len(too_long)} of {len(split)} prompts have max_length "
            f"({max_length}) tokens or more (longest {longest}), leaving no room for the completion; raise "
            "max_length or filter those rows"
        )


def _row_count(test_size: float) -> float | int:
    """`train_test_split` reads a float as a fraction and an int as a count."""
    return test_size if test_size < 1 else int(test_size)


def unpaired_shuffled(dataset: Dataset, seed: int) -> Dataset:
    """KTO data: paired rows split into a desirable and an undesirable row each, then shuffled with the run's seed.

    KTOTrainer samples sequentially, because its KL estimate pairs each example with its neighbours in a fixed
    order. Unpairing keeps the desirable rows of each block ahead of the undesirable ones, so without the shuffle
    batches are all-desirable or all-undesirable and KTO learns nothing.
    """
    if "chosen" in dataset.column_names:
        dataset = unpair_preference_dataset(dataset.map(maybe_extract_prompt))
    return dataset.shuffle(seed=seed)
