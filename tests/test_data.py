"""Loading preference data from files and directories, the checks on it, and KTO's unpairing."""

import json

import pytest
from datasets import Dataset
from trl import ScriptArguments
from trl.data_utils import unpair_preference_dataset

from prefopt.data import load_preference_dataset, select_splits, unpaired_shuffled
from prefopt.errors import UserError

PAIRS = [{"prompt": f"Review {i}:", "chosen": " great.", "rejected": " awful."} for i in range(40)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def arguments(dataset_name, **kwargs) -> ScriptArguments:
    return ScriptArguments(dataset_name=str(dataset_name), **kwargs)


def test_single_file_becomes_the_train_split(tmp_path):
    dataset = load_preference_dataset(arguments(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)))
    assert list(dataset) == ["train"] and dataset["train"][3] == PAIRS[3]


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_parquet_and_csv_files(tmp_path, suffix):
    path = tmp_path / f"pairs.{suffix}"
    getattr(Dataset.from_list(PAIRS), f"to_{suffix}")(str(path))
    assert load_preference_dataset(arguments(path))["train"][5] == PAIRS[5]


def test_directory_splits_by_file_name(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:30])
    write_jsonl(tmp_path / "test.jsonl", PAIRS[30:])
    dataset = load_preference_dataset(arguments(tmp_path))
    assert {name: len(split) for name, split in dataset.items()} == {"train": 30, "test": 10}


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("hello\n")
    with pytest.raises(UserError, match=r"cannot read '.*pairs.txt' \(supported: .jsonl, .json, .parquet, .csv\)"):
        load_preference_dataset(arguments(path))


def test_missing_test_split_names_the_fix(tmp_path):
    dataset = load_preference_dataset(arguments(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)))
    with pytest.raises(UserError, match="no split 'test' \\(splits: train\\); set dataset_test_split or eval_strategy: no"):
        select_splits(dataset, arguments(tmp_path / "pairs.jsonl"), evaluate=True)
    train, evaluation = select_splits(dataset, arguments(tmp_path / "pairs.jsonl"), evaluate=False)
    assert len(train) == 40 and evaluation is None


def test_missing_column_is_named_with_the_columns_found(tmp_path):
    rows = [{"prompt": row["prompt"], "chosen": row["chosen"], "answer": row["rejected"]} for row in PAIRS]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(UserError, match=r"\[train\]: missing column 'rejected' \(columns: prompt, chosen, answer;"):
        select_splits(load_preference_dataset(arguments(path)), arguments(path), evaluate=False)


def test_unpaired_data_is_accepted_only_where_allowed(tmp_path):
    rows = [{"prompt": "Review:", "completion": " great.", "label": True}] * 4
    path = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    dataset = load_preference_dataset(arguments(path))
    assert len(select_splits(dataset, arguments(path), evaluate=False, unpaired_ok=True)[0]) == 4
    with pytest.raises(UserError, match="missing column 'chosen'"):
        select_splits(dataset, arguments(path), evaluate=False)


def test_empty_split(tmp_path):
    dataset = {"train": Dataset.from_dict({"chosen": [], "rejected": []})}
    with pytest.raises(UserError, match=r"\[train\]: the split is empty"):
        select_splits(dataset, arguments("x"), evaluate=False)


def batches_with_both_labels(dataset: Dataset, batch_size: int) -> float:
    labels = dataset["label"]
    batches = [labels[start : start + batch_size] for start in range(0, len(labels), batch_size)]
    return sum(len(set(batch)) == 2 for batch in batches) / len(batches)


def test_kto_unpairing_mixes_labels_in_every_batch():
    """In order, unpairing yields pure batches (KTO then learns nothing); shuffled, nearly all batches mix."""
    paired = Dataset.from_list(PAIRS * 25)  # 1000 pairs
    assert batches_with_both_labels(unpair_preference_dataset(paired), batch_size=16) < 0.05
    unpaired = unpaired_shuffled(paired, seed=42)
    assert len(unpaired) == 2000 and sum(unpaired["label"]) == 1000
    assert batches_with_both_labels(unpaired, batch_size=16) > 0.95
    assert unpaired["completion"] == unpaired_shuffled(paired, seed=42)["completion"]  # the seed fixes the order
