"""Mixtures of data sets, read as their projects read them: TRL's `datasets:` block (the first rows of each, by
fraction, split with the run's seed) and alignment-handbook's `dataset_mixture` (rows drawn by weight with a seed,
then shuffled), each data set in its own format; and the configs that name them."""

import logging

import pytest
from datasets import concatenate_datasets, load_dataset
from trl import DatasetMixtureConfig, DPOConfig, ScriptArguments, get_dataset
from trl.scripts.utils import DatasetConfig

from prefopt.config import RunArguments, parse_args
from prefopt.data import load_preference_dataset
from prefopt.errors import UserError
from prefopt.mixtures import HandbookDataset, handbook_mixture
from tests.helpers import in_format, write_json, write_jsonl

PAIRS = [{"prompt": f"Review {i}:", "chosen": f" great {i}.", "rejected": f" awful {i}."} for i in range(100)]


def mixed(seed=0, **run_keys):
    return load_preference_dataset(ScriptArguments(), RunArguments(**run_keys), seed=seed)


@pytest.fixture
def two_files(tmp_path):
    return write_jsonl(tmp_path / "a.jsonl", PAIRS[:30]), write_jsonl(tmp_path / "b.jsonl", PAIRS[30:80])


def test_trl_fractions_keep_the_rows_trls_get_dataset_keeps(two_files):
    first, second = two_files
    ours = mixed(datasets=[{"path": str(first), "fraction": 1}, {"path": str(second), "fraction": 3}])
    trl = get_dataset(
        DatasetMixtureConfig(
            datasets=[
                DatasetConfig(path="json", data_files=str(first), fraction=1),
                DatasetConfig(path="json", data_files=str(second), fraction=3),
            ]
        )
    )
    assert list(ours) == ["train"] and ours["train"].to_list() == trl["train"].to_list()
    # b's 50 rows fill three quarters of 67 at most: a quarter is a's first 17, unshuffled
    assert ours["train"].to_list() == PAIRS[:17] + PAIRS[30:80]


def test_trl_mixture_without_fractions_is_every_row_in_order(two_files):
    ours = mixed(datasets=[str(path) for path in two_files])  # as `--datasets a.jsonl b.jsonl` gives them
    assert ours["train"].to_list() == PAIRS[:80]


def test_trl_test_split_size_is_drawn_with_the_runs_seed(two_files):
    datasets = [{"path": str(path)} for path in two_files]
    split = mixed(seed=1, datasets=datasets, test_split_size=0.1)
    assert (len(split["train"]), len(split["test"])) == (72, 8)
    assert split["test"]["prompt"] == mixed(seed=1, datasets=datasets, test_split_size=0.1)["test"]["prompt"]
    assert split["test"]["prompt"] != mixed(seed=2, datasets=datasets, test_split_size=0.1)["test"]["prompt"]


def test_a_mixture_of_two_formats_is_in_trls_format(tmp_path, caplog):
    sharegpt = write_json(tmp_path / "sharegpt.json", in_format("sharegpt", PAIRS[:6]))
    hh = write_jsonl(tmp_path / "hh.jsonl", in_format("hh", PAIRS[6:10]))
    with caplog.at_level(logging.INFO):
        rows = mixed(datasets=[{"path": str(sharegpt)}, {"path": str(hh)}])["train"].to_list()
    assert rows[0]["prompt"] == [
        {"role": "system", "content": "You write film reviews."},
        {"role": "user", "content": "Review 0:"},
    ]
    assert rows[6]["prompt"][-1] == {"role": "user", "content": "Review 6:"}
    assert [row["chosen"][0]["content"] for row in rows] == [f"great {i}." for i in range(10)]
    assert f"datasets: a mixture of 10 rows: 6 of datasets[0] ({sharegpt}), 4 of datasets[1] ({hh})" in caplog.messages


def test_handbook_weights_draw_rows_with_the_seed_then_shuffle(two_files):
    first, second = two_files
    mixture = {"datasets": [{"id": str(first), "weight": 0.5}, {"id": str(second)}], "seed": 7}
    rows = mixed(seed=0, dataset_mixture=handbook_mixture(mixture))["train"]
    a = load_dataset("json", data_files=str(first), split="train")
    b = load_dataset("json", data_files=str(second), split="train")
    expected = concatenate_datasets([a.shuffle(seed=7).select(range(15)), b]).shuffle(seed=7)
    assert rows.to_list() == expected.to_list()
    assert rows.to_list() != concatenate_datasets([a.select(range(15)), b]).to_list()  # drawn, not the first rows


def test_handbook_seed_defaults_to_the_runs_and_splits_the_test_rows(two_files):
    mixture = handbook_mixture({"datasets": [{"id": str(path)} for path in two_files], "test_split_size": 20})
    split = mixed(seed=3, dataset_mixture=mixture)
    assert (len(split["train"]), len(split["test"])) == (60, 20)
    assert split["test"]["prompt"] == mixed(seed=3, dataset_mixture=mixture)["test"]["prompt"]
    assert split["test"]["prompt"] != mixed(seed=4, dataset_mixture=mixture)["test"]["prompt"]


def test_a_dataset_mixer_of_several_becomes_a_handbook_mixture(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(
        "model_name_or_path: org/model\ndataset_mixer:\n  org/a: 0.5\n  org/b: 1.0\n"
        "dataset_splits: [train_prefs, test_prefs]\nbf16: false\n"
    )
    _, _, _, run_args = parse_args(DPOConfig, ["--config", "config.yaml"])
    assert run_args.dataset_mixture.datasets == [
        HandbookDataset("org/a", split="train_prefs", weight=0.5),
        HandbookDataset("org/b", split="train_prefs", weight=1.0),
    ]
    assert (
        "config.yaml: 'dataset_mixer: {org/a: 0.5, org/b: 1.0}' is now 'dataset_mixture: {datasets: [{id: org/a, "
        "split: train_prefs, weight: 0.5}, {id: org/b, split: train_prefs, weight: 1.0}]}'" in caplog.messages
    )


def test_a_data_set_of_a_mixture_is_a_split_of_a_directory(tmp_path, two_files):
    directory = tmp_path / "pairs"
    write_jsonl(directory / "train.jsonl", PAIRS[80:90])
    write_jsonl(directory / "test.jsonl", PAIRS[90:])
    trl = mixed(datasets=[{"path": str(directory), "split": "test"}, {"path": str(two_files[0])}])
    assert trl["train"].to_list() == PAIRS[90:] + PAIRS[:30]
    handbook = mixed(dataset_mixture=handbook_mixture({"datasets": [{"id": str(directory), "split": "test"}]}))
    assert sorted(handbook["train"]["prompt"]) == sorted(row["prompt"] for row in PAIRS[90:])


def test_data_files_that_do_not_exist_are_named_in_one_line(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(UserError) as error:
        mixed(datasets=[{"path": "json", "data_files": str(missing)}])
    assert str(error.value) == f"datasets[0]: Unable to find '{missing}'"
