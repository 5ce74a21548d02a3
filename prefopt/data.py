"""Preference data: loaded from a hub id, a directory of data files or a single file, and checked before training.

Every check here runs before the model is loaded. A problem is reported as one line naming the data, the split,
the column and an example row, so that a bad file costs seconds rather than a model download.
"""

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas
import pyarrow
import pyarrow.parquet
from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase
from trl import ScriptArguments
from trl.data_utils import extract_prompt, is_conversational, maybe_extract_prompt, unpair_preference_dataset

from prefopt.errors import UserError, reported_if_hub_unreachable

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
    hold_out = evaluate and run_args.test_size and test_split not in dataset and train_split in dataset
    if hold_out:
        held_out = dataset[train_split].train_test_split(test_size=_row_count(run_args.test_size), seed=seed)
        dataset = DatasetDict({train_split: held_out["train"], test_split: held_out["test"]})
    train, test = select_splits(dataset, script_args, evaluate, unpaired_ok)
    row_name = _row_namer(script_args.dataset_name, in_file_order=not hold_out)
    checked = []
    for name, split in ((train_split, train), (test_split, test)):
        if split is not None:
            where = f"{script_args.dataset_name} [{name}]"
            check_rows(split, where, tokenizer, row_name)
            if "prompt" not in split.column_names:  # an implicit prompt: the start chosen and rejected share
                split = split.map(extract_prompt)
            if max_length is not None:
                check_prompt_lengths(split, where, tokenizer, max_length, row_name)
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
        if path.suffix == ".json":
            _check_not_one_object(path)
        with _broken_files_reported(path):
            return load_dataset(builder, data_files={script_args.dataset_train_split: str(path)})
    # A directory or a hub id: `datasets` infers the format from the file extensions and the splits from the file
    # names (train.jsonl, test.jsonl, ...).
    if path.is_dir():
        with _broken_files_reported(path):
            return load_dataset(source, name=script_args.dataset_config)
    with reported_if_hub_unreachable("dataset_name", source, repo_type="dataset"):
        return load_dataset(source, name=script_args.dataset_config)


def _check_not_one_object(path: Path) -> None:
    """A .json file that is one object, on one line or several: datasets would read it as a single record."""
    with path.open() as lines:
        if lines.read(1) != "{":
            return  # a list of records, or not JSON: datasets reads it or fails
        lines.seek(0)
        first = lines.readline()
        try:
            value = json.loads(first)
        except json.JSONDecodeError:  # an object over several lines, or a broken first record
            value = None
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(path.read_text())
        else:
            if any(line.strip() for line in lines):
                return  # one object per line: JSON Lines
    if isinstance(value, dict):
        raise UserError(f"dataset_name: '{path}'{_one_object_problem(value)}")


def _one_object_problem(value: dict) -> str:
    return (
        f" holds one JSON object (keys: {', '.join(value)}), not records; write a list of records [{{...}}, {{...}}], "
        "or one record per line in a .jsonl file"
    )


@contextlib.contextmanager
def _broken_files_reported(path: Path) -> Iterator[None]:
    """When `datasets` cannot read local data, name the first broken file and what is wrong with it, in one line.

    Only then are the files read again, with json, pandas and pyarrow; if they all read cleanly, datasets' error stands.
    """
    try:
        yield
    except Exception:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in DATA_FILE_BUILDERS)
        for file in files:
            problem = _file_problem(file)
            if problem:
                raise UserError(f"dataset_name: '{file}'{problem}") from None
        raise


def _file_problem(path: Path) -> str | None:
    """What keeps `path` from being read, with the line or record where it shows: ", line 4: ..." or ": ..."."""
    if path.suffix == ".parquet":
        try:
            pyarrow.parquet.read_table(path)
        except pyarrow.ArrowException as error:
            return f": not a readable Parquet file, truncated or corrupt ({_first_sentence(error)})"
        return None
    if path.suffix == ".csv":
        try:
            pandas.read_csv(path)
        except (pandas.errors.ParserError, UnicodeDecodeError) as error:
            return f": not a readable CSV file ({' '.join(str(error).split())})"
        return None
    return _json_problem(path)


def _json_problem(path: Path) -> str | None:
    """A .json file: a list of records (or JSON Lines); a .jsonl file: one record per line."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        return f": not UTF-8 text (byte {error.start})"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":  # else one value after another: JSON Lines, read line by line below
            return f", line {error.lineno}: not valid JSON ({error.msg})"
        document = None
    if isinstance(document, dict):
        return _one_object_problem(document)
    if isinstance(document, list):
        for index, record in enumerate(document):
            if not isinstance(record, dict):
                return f", record {index}: expected an object, got {type(record).__name__}"
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f", line {number}: not valid JSON ({error.msg}); each line must hold one JSON object"
        if not isinstance(record, dict):
            return f", line {number}: expected one JSON object per line, got {type(record).__name__}"
    return None


def _first_sentence(error: Exception) -> str:
    return " ".join(str(error).split()).split(". ")[0].rstrip(".")


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


def _row_namer(source: str, in_file_order: bool) -> Callable[[int], str]:
    """How messages name a row: by its line in a JSON Lines file whose records are the split, in order."""
    path = Path(source)
    if in_file_order and path.is_file() and path.suffix == ".jsonl":
        return lambda index: f"line {_record_line(path, index)}"
    return lambda index: f"row {index}"


def _record_line(path: Path, index: int) -> int:
    """The line of JSON Lines file `path` that holds record `index`: blank lines hold none."""
    with path.open() as lines:
        record_lines = (number for number, line in enumerate(lines, start=1) if line.strip())
        return next(itertools.islice(record_lines, index, None))


def check_rows(split: Dataset, where: str, tokenizer: PreTrainedTokenizerBase, row_name: Callable[[int], str]) -> None:
    """Types of every row, and a chat template for conversational data."""
    text_columns = [column for column in ("prompt", "chosen", "rejected", "completion") if column in split.column_names]
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


def check_prompt_lengths(
    split: Dataset,
    where: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    row_name: Callable[[int], str],
) -> None:
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
            f"{where}: column 'prompt', {row_name(too_long[0])}: {len(too_long)} of {len(split)} prompts have "
            f"max_length ({max_length}) tokens or more (longest {longest}), leaving no room for the completion; raise "
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
