"""Tests of data, not of code: the committed results (results/*.json) meet the default experiment's goal, and the
results page and the README show them. CI does not rerun the runs.

At its paper's hyperparameters and across the three training seeds, each algorithm beats the base model's held-out
accuracy by at least 0.10 on its own measure and raises the fluency-aware gold reward, at every seed, with samples at
least as fluent as the base's over the seeds; and the sweep compares the algorithms at matched KL over the same seeds.
Fluency is held to the mean over the seeds: one run's fluency moves by 0.07-0.27 from seed to seed in every setup
tried (docs/findings.md, "What was tried"). Where the committed results fall short of a bound, the test is marked as an
expected failure, strict: results that meet it make it fail, and the mark must go.
"""

import json
import subprocess

import pytest

from experiment.results import (
    DEFAULT_PAGE,
    DEFAULT_README,
    DEFAULT_RESULTS_DIR,
    END_MARKER,
    NATIVE_ACCURACY,
    START_MARKER,
    headline_table,
    native_gain,
    render_page,
)
from experiment.sweep import GRID, SEEDS
from tests.helpers import REPO


def committed(path: str) -> str:
    """A file as committed: `bash run_script.bash` rewrites the working copy's results, with new times."""
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True, text=True, check=True).stdout


def load(name: str) -> dict:
    """The committed `results/<name>.json`."""
    return json.loads(committed(f"results/{name}.json"))


@pytest.fixture(scope="module")
def sweep() -> dict:
    return load("sweep")


def paper_runs(sweep: dict, algorithm: str) -> list[dict]:
    runs = [run for run in sweep["runs"] if run["algorithm"] == algorithm and run["paper_beta"]]
    assert sorted(run["overrides"]["seed"] for run in runs) == sorted(SEEDS)
    return runs


def test_the_sweep_scored_every_grid_point_with_the_fluency_aware_gold_reward(sweep):
    assert sweep["setup"]["reward_fn"] == "experiment.gold_reward:gold_reward"
    assert sweep["setup"]["fluency_fn"] == "experiment.review_grammar:is_review"
    assert len(sweep["runs"]) == sum(map(len, GRID.values())) * len(SEEDS)


def test_the_base_ties_every_pair_on_the_implicit_reward(sweep):
    assert sweep["base"]["implicit_reward_accuracy"] == {"mean": 0.5, "stderr": 0.0}
    assert load("results")["base"]["implicit_reward_accuracy"] == {"mean": 0.5, "stderr": 0.0}


# Accuracies are counts of 1000 pairs: a gain of exactly 0.10 can come out a rounding error below it.
TOLERANCE = 1e-9


def short_of_the_goal(algorithm: str, reason: str):
    return pytest.param(algorithm, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("algorithm", NATIVE_ACCURACY)
def test_each_algorithm_beats_the_base_by_010_on_its_native_accuracy_at_every_seed(sweep, algorithm):
    for run in paper_runs(sweep, algorithm):
        assert native_gain(run) >= 0.10 - TOLERANCE, run["overrides"]


@pytest.mark.parametrize("algorithm", NATIVE_ACCURACY)
def test_each_algorithm_raises_the_gold_reward_at_every_seed(sweep, algorithm):
    for run in paper_runs(sweep, algorithm):
        assert run["reward"]["mean"] > sweep["base"]["reward"]["mean"], run["overrides"]


@pytest.mark.parametrize("algorithm", NATIVE_ACCURACY)
def test_each_algorithm_keeps_its_samples_as_fluent_as_the_base_over_the_seeds(sweep, algorithm):
    fluency = [run["fluency"]["mean"] for run in paper_runs(sweep, algorithm)]
    assert sum(fluency) / len(fluency) >= sweep["base"]["fluency"]["mean"], fluency


@pytest.mark.parametrize(
    "algorithm",
    ["dpo", short_of_the_goal("kto", "fluency 0.653 at seed 1, below the base's 0.676"), "simpo"],
)
def test_each_algorithm_keeps_its_samples_as_fluent_as_the_base_at_every_seed(sweep, algorithm):
    """The stricter reading of the fluency bound: what the README reports beside the mean."""
    for run in paper_runs(sweep, algorithm):
        assert run["fluency"]["mean"] >= sweep["base"]["fluency"]["mean"], run["overrides"]


@pytest.mark.parametrize("algorithm", NATIVE_ACCURACY)
def test_at_its_largest_grid_beta_each_raises_the_reward_with_fluent_samples_at_every_seed(sweep, algorithm):
    """DPO and KTO at beta 0.3, SimPO at beta 4 (gamma 2): the grid's first, most regularised point."""
    base = sweep["base"]
    first = GRID[algorithm][0]
    runs = [run for run in sweep["runs"] if run["algorithm"] == algorithm and first.items() <= run["overrides"].items()]
    assert sorted(run["overrides"]["seed"] for run in runs) == sorted(SEEDS)
    for run in runs:
        assert run["reward"]["mean"] > base["reward"]["mean"], run["overrides"]
        assert run["fluency"]["mean"] > base["fluency"]["mean"], run["overrides"]


def test_the_algorithms_are_compared_at_matched_kl(sweep):
    """All three frontiers reach two or more common KL values over at least two seeds each; DPO's and KTO's reach
    three or more over all three seeds."""
    cells = sweep["matched_kl"]["reward"]
    assert set(cells) == set(GRID)
    num_values = len(sweep["matched_kl"]["kl_values"])
    assert all(len(by_kl) == num_values for by_kl in cells.values())
    shared = [index for index in range(num_values) if all(cells[name][index]["num_seeds"] >= 2 for name in cells)]
    assert len(shared) >= 2
    for name in ("dpo", "kto"):
        assert sum(cell["num_seeds"] == len(SEEDS) for cell in cells[name]) >= 3


def test_the_results_page_shows_the_committed_results():
    page = render_page(DEFAULT_RESULTS_DIR, load("results"), load("simpo_ablation"), load("sweep"))
    assert committed(str(DEFAULT_PAGE)) == page


def test_the_readme_headline_shows_the_committed_results():
    readme = committed(str(DEFAULT_README))
    headline = readme[readme.index(START_MARKER) + len(START_MARKER) : readme.index(END_MARKER)]
    assert headline.strip() == headline_table(load("results"), load("sweep")).strip()
