"""Loading preference data in every supported source and format, the checks on it, and KTO's unpairing."""

import logging
from types import SimpleNamespace

import pytest
from datasets import Dataset
from transformers import AutoTokenizer
from trl import ScriptArguments
from trl.data_utils import unpair_preference_dataset

from prefopt.config import RunArguments
from prefopt.data import load_preference_data, load_preference_dataset, unpaired_shuffled
from tests.helpers import write_jsonl

PAIRS = [{"prompt": f"Review {i}:", "chosen": " great.", "rejected": " awful."} for i in range(40)]
CONVERSATIONS = [
    {
        "prompt": [{"role": "user", "content": f"Review film {i}."}],
        "chosen": [{"role": "assistant", "content": "A great film."}],
        "rejected": [{"role": "assistant", "content": "An awful film."}],
    }
    for i in range(8)
]


@pytest.fixture(scope="module")
def tokenizer(demo_assets):
    return AutoTokenizer.from_pretrained(demo_assets.model_dir)


def load(source, tokenizer, *, evaluate=False, max_length=64, unpaired_ok=False, **run_keys):
    """`load_preference_data` as the scripts call it, with the config keys it reads."""
    run_args = RunArguments(**run_keys)
    training_args = SimpleNamespace(eval_strategy="steps" if evaluate else "no", max_length=max_length, seed=0)
    return load_preference_data(
        ScriptArguments(dataset_name=str(source)), training_args, run_args, tokenizer, unpaired_ok
    )


def test_single_file_becomes_the_train_split(tmp_path):
    dataset = load_preference_dataset(ScriptArguments(dataset_name=str(write_jsonl(tmp_path / "p.jsonl", PAIRS))))
    assert list(dataset) == ["train"] and dataset["train"][3] == PAIRS[3]


@pytest.mark.parametrize("suffix", ["parquet", "csv", "json"])
def test_parquet_csv_and_json_files(tmp_path, tokenizer, suffix):
    path = tmp_path / f"pairs.{suffix}"
    getattr(Dataset.from_list(PAIRS), f"to_{suffix}")(str(path))
    train, test = load(path, tokenizer)
    assert train[5] == PAIRS[5] and test is None


def test_directory_splits_by_file_name(tmp_path, tokenizer):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:30])
    write_jsonl(tmp_path / "test.jsonl", PAIRS[30:])
    (tmp_path / "metadata.json").write_text('{"seed": 0}')  # no split's file: datasets leaves it, and so do the checks
    train, test = load(tmp_path, tokenizer, evaluate=True)
    assert (len(train), len(test)) == (30, 10)


def test_test_size_holds_out_part_of_train_with_the_seed(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    train, test = load(path, tokenizer, evaluate=True, test_size=0.25)
    assert (len(train), len(test)) == (30, 10)
    assert list(test["prompt"]) == list(load(path, tokenizer, evaluate=True, test_size=0.25)[1]["prompt"])
    assert len(load(path, tokenizer, evaluate=True, test_size=4)[1]) == 4


def test_conversational_data_is_checked_and_kept(tmp_path, tokenizer):
    train, _ = load(write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS), tokenizer)
    assert train[0]["chosen"] == [{"role": "assistant", "content": "A great film."}]


def test_implicit_prompt_is_extracted(tmp_path, tokenizer):
    rows = [{"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]} for row in PAIRS]
    train, _ = load(write_jsonl(tmp_path / "implicit.jsonl", rows), tokenizer)
    assert (train[0]["prompt"], train[0]["chosen"], train[0]["rejected"]) == ("Review 0:", " great.", " awful.")


def test_columns_are_mapped_from_the_config(tmp_path, tokenizer):
    rows = [{"question": row["prompt"], "response_a": row["chosen"], "response_b": row["rejected"]} for row in PAIRS]
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    columns = {"prompt": "question", "chosen": "response_a", "rejected": "response_b"}
    train, _ = load(path, tokenizer, dataset_columns=columns)
    assert train[1] == PAIRS[1]


def batches_with_both_labels(dataset: Dataset, batch_size: int) -> float:
    labels = list(dataset["label"])
    batches = [labels[start : start + batch_size] for start in range(0, len(labels), batch_size)]
    return sum(len(set(batch)) == 2 for batch in batches) / len(batches)


def test_kto_unpairing_mixes_labels_in_every_batch():
    """In order, unpairing yields pure batches (KTO then learns nothing); shuffled, nearly all batches mix."""
    paired = Dataset.from_list(PAIRS * 25)  # 1000 pairs
    assert batches_with_both_labels(unpair_preference_dataset(paired), batch_size=16) < 0.05
    unpaired = unpaired_shuffled(paired, seed=42)
    assert len(unpaired) == 2000 and sum(unpaired["label"]) == 1000
    assert batches_with_both_labels(unpaired, batch_size=16) > 0.95
    assert list(unpaired["completion"]) == list(
        unpaired_shuffled(paired, seed=42)["completion"]
    )  # the seed fixes the order


LONG = {"prompt": "very long " * 40, "chosen": " b", "rejected": " c"}  # 82 tokens with the demo tokenizer


def test_long_prompts_are_dropped_with_one_line(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:10] + [LONG] + PAIRS[10:20] + [LONG])
    with caplog.at_level(logging.WARNING, logger="prefopt.data"):
        train, _ = load(path, tokenizer)
    assert train.to_list() == PAIRS[:20]
    assert caplog.messages == [
        f"{path} [train]: dropped 2 of 22 rows whose prompt has max_length (64) tokens or more (longest 82), the first "
        "at line 11: they leave no room for a completion; raise max_length to keep them"
    ]


def test_long_prompts_are_kept_under_dpos_keep_end_truncation(tmp_path, tokenizer):
    """DPOTrainer keeps the end of prompt and completion then, and drops no row."""
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:10] + [LONG])
    run_args = RunArguments()
    training_args = SimpleNamespace(eval_strategy="no", max_length=64, seed=0, truncation_mode="keep_end")
    train, _ = load_preference_data(ScriptArguments(dataset_name=str(path)), training_args, run_args, tokenizer)
    assert len(train) == 11


@pytest.mark.parametrize(
    "rows, warning",
    [
        (
            [{"prompt": f"Review {i}:", "chosen": " same.", "rejected": " same."} for i in range(4)],
            "in every row chosen equals rejected: such pairs prefer nothing, so DPO and SimPO learn nothing from them, "
            "and KTO is told each completion is both desirable and undesirable",
        ),
        (
            [{"prompt": f"Review {i}:", "chosen": "", "rejected": " "} for i in range(4)],
            "every completion (chosen, rejected) is empty: there is nothing to learn",
        ),
        (
            [
                {
                    "prompt": CONVERSATIONS[0]["prompt"],
                    "completion": [{"role": "assistant", "content": ""}],
                    "label": True,
                }
            ],
            "every completion (completion) is empty: there is nothing to learn",
        ),
    ],
)
def test_data_that_teaches_nothing_is_warned_about_at_start(rows, warning, tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="prefopt.data"):
        load(path, tokenizer, unpaired_ok=True)
    assert caplog.messages == [f"{path} [train]: {warning}"]


def test_data_with_something_to_learn_gets_no_warning(tmp_path, tokenizer, caplog):
    rows = [{**row, "rejected": row["chosen"]} for row in PAIRS[:3]] + PAIRS[3:6]  # some equal pairs, not all
    with caplog.at_level(logging.WARNING, logger="prefopt.data"):
        load(write_jsonl(tmp_path / "pairs.jsonl", rows), tokenizer)
    assert caplog.messages == []
