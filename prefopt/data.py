"""Preference data: loaded from a hub id, a directory of data files or a single file, and checked before training."""

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from trl import ScriptArguments
from trl.data_utils import maybe_extract_prompt, unpair_preference_dataset

from prefopt.errors import UserError

# File extension -> the `datasets` builder that reads it.
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
PAIRED_COLUMNS = ("chosen", "rejected")  # plus "prompt", or an implicit prompt shared by chosen and rejected
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


def load_preference_dataset(script_args: ScriptArguments) -> DatasetDict:
    """Load `dataset_name`: a single data file becomes the train split; a directory's files are split by name."""
    source = script_args.dataset_name
    path = Path(source)
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise UserError(f"dataset_name: cannot read '{source}' (supported: {', '.join(DATA_FILE_BUILDERS)})")
        return load_dataset(builder, data_files={script_args.dataset_train_split: str(path)})
    # A directory or a hub id: `datasets` infers the format from the file extensions and the splits from the file
    # names (train.jsonl, test.jsonl, ...).
    return load_dataset(source, name=script_args.dataset_config)


def select_splits(
    dataset: DatasetDict, script_args: ScriptArguments, evaluate: bool, unpaired_ok: bool = False
) -> tuple[Dataset, Dataset | None]:
    """The train split and, when evaluating, the test split, each checked for the columns the trainer needs."""
    names = [script_args.dataset_train_split] + ([script_args.dataset_test_split] if evaluate else [])
    for name in names:
        if name not in dataset:
            key = "dataset_train_split" if name == script_args.dataset_train_split else "dataset_test_split"
            raise UserError(
                f"{script_args.dataset_name}: no split '{name}' (splits: {', '.join(dataset)}); set {key}"
                + ("" if key == "dataset_train_split" else " or eval_strategy: no")
            )
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


def unpaired_shuffled(dataset: Dataset, seed: int) -> Dataset:
    """KTO data: paired rows split into a desirable and an undesirable row each, then shuffled with the run's seed.

    KTOTrainer samples sequentially, because its KL estimate pairs each example with its neighbours in a fixed
    order. Unpairing keeps the desirable rows of each block ahead of the undesirable ones, so without the shuffle
    batches are all-desirable or all-undesirable and KTO learns nothing.
    """
    if "chosen" in dataset.column_names:
        dataset = unpair_preference_dataset(dataset.map(maybe_extract_prompt))
    return dataset.shuffle(seed=seed)
