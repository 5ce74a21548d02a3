"""Mixtures of preference data sets, each read with the meaning its own project gives it.

TRL's `datasets:` block (TRL's `DatasetMixtureConfig`, which `RunArguments` extends): a dataset's `fraction` is its
share of the mixture. Fractions are normalised to sum to one, and the mixture is the largest that repeats no row:
the first rows of each dataset, unshuffled, as TRL's `get_dataset` keeps them. Without fractions the datasets are
concatenated whole.

alignment-handbook's `dataset_mixture:` block: a dataset's `weight` is the fraction of its rows kept, drawn at random
with the mixture's `seed`; the mixture is then shuffled with that seed, as the handbook's `get_dataset` does.
"""

import dataclasses
from dataclasses import dataclass

from datasets import Dataset, concatenate_datasets

from prefopt.errors import UserError


@dataclass
class HandbookDataset:
    """One data set of alignment-handbook's `dataset_mixture`, with the handbook's keys and defaults."""

    id: str
    config: str | None = None
    split: str = "train"
    columns: list[str] | None = None
    weight: float | None = None


@dataclass
class HandbookMixture:
    """alignment-handbook's `dataset_mixture`. Its `seed` defaults to the run's seed, where the handbook's is 0."""

    datasets: list[HandbookDataset]
    seed: int | None = None
    test_split_size: float | None = None


def handbook_mixture(value: dict) -> HandbookMixture:
    """`dataset_mixture` as a config gives it, checked key by key."""
    _check_keys(value, HandbookMixture, "dataset_mixture")
    members = value.get("datasets")
    if not isinstance(members, list) or not members:
        raise UserError("dataset_mixture: 'datasets' must be a list of data sets, each {id: ..., weight: ...}")
    datasets = []
    for index, member in enumerate(members):
        where = f"dataset_mixture.datasets[{index}]"
        if not isinstance(member, dict) or "id" not in member:
            raise UserError(f"{where}: expected {{id: ..., config: ..., split: ..., columns: [...], weight: ...}}")
        _check_keys(member, HandbookDataset, where)
        weight = member.get("weight")
        if weight is not None and not (isinstance(weight, (int, float)) and 0 < weight <= 1):
            raise UserError(f"{where}: weight must be a fraction of the data set's rows in (0, 1], got {weight!r}")
        datasets.append(HandbookDataset(**member))
    size = value.get("test_split_size")
    if size is not None and not (isinstance(size, (int, float)) and size > 0):
        raise UserError(
            f"dataset_mixture: test_split_size must be a fraction or a number of rows above 0, got {size!r}"
        )
    return HandbookMixture(**{**value, "datasets": datasets})


def _check_keys(value: dict, dataclass_type: type, where: str) -> None:
    keys = [field.name for field in dataclasses.fields(dataclass_type)]
    unknown = [key for key in value if key not in keys]
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (keys: {', '.join(keys)})")


def trl_fraction_mixture(datasets: list[Dataset], fractions: list[float | None]) -> list[Dataset]:
    """The rows TRL's `get_dataset` keeps of each dataset: the first round(share x N), where N is the largest
    mixture size that takes no dataset beyond its length; all rows when no fraction is set."""
    if all(fraction is None for fraction in fractions):
        return datasets
    if any(fraction is None for fraction in fractions):
        raise UserError("datasets: set fraction for every data set of the mixture or for none (TRL's rule)")
    if any(fraction < 0 for fraction in fractions) or sum(fractions) <= 0:
        raise UserError(f"datasets: fractions must be 0 or more, and one above 0; got {fractions}")
    shares = [fraction / sum(fractions) for fraction in fractions]
    total = min(len(dataset) / share for dataset, share in zip(datasets, shares) if share > 0)
    return [dataset.select(range(round(share * total))) for dataset, share in zip(datasets, shares)]


def handbook_weighted(dataset: Dataset, weight: float | None, seed: int) -> Dataset:
    """The handbook's sample of a data set: int(weight x rows) of its rows, drawn with `seed`."""
    if weight is None:
        return dataset
    return dataset.shuffle(seed=seed).select(range(int(len(dataset) * weight)))


def concatenated(datasets: list[Dataset], names: list[str], key: str) -> Dataset:
    """The data sets of a mixture as one, once each is in TRL's columns; one line when their kinds differ."""
    try:
        return concatenate_datasets(datasets)
    except ValueError:
        kinds = [f"{name}: {_kind(dataset)}" for name, dataset in zip(names, datasets)]
        raise UserError(
            f"{key}: the data sets of a mixture must all become the same columns and kind, got {'; '.join(kinds)}"
        ) from None


def _kind(dataset: Dataset) -> str:
    first = dataset[0] if len(dataset) else {}
    conversational = any(isinstance(value, list) for value in first.values())
    return f"{', '.join(dataset.column_names)} ({'conversational' if conversational else 'standard'})"
