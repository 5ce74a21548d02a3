"""The sweep's grid, and the frontiers it reads at matched KL."""

import dataclasses
import math

import pytest
import yaml
from trl import DPOConfig, KTOConfig

from experiment.sweep import GRID, SEEDS, is_paper_point, matched_kl, run_name
from simpo import SimPOConfig
from tests.helpers import REPO

CONFIG_CLASSES = {"dpo": DPOConfig, "kto": KTOConfig, "simpo": SimPOConfig}


@pytest.mark.parametrize("algorithm", GRID)
def test_overrides_are_config_keys_and_one_is_the_papers(algorithm):
    keys = {field.name for field in dataclasses.fields(CONFIG_CLASSES[algorithm])}
    for overrides in GRID[algorithm]:
        assert set(overrides) <= keys
    assert [is_paper_point(algorithm, overrides) for overrides in GRID[algorithm]] == [False, True, False]


def test_the_seeds_start_at_the_v1_configs_own_seed():
    for algorithm in GRID:
        config = yaml.safe_load((REPO / "training_configs" / f"{algorithm}_v1.yaml").read_text())
        assert SEEDS[0] == config["seed"]  # that run is the default experiment's, retrained
    assert len(set(SEEDS)) == len(SEEDS) >= 3


def test_run_names_are_distinct_and_readable():
    names = [run_name(algorithm, {**point, "seed": seed}) for algorithm in GRID for point in GRID[algorithm]
             for seed in SEEDS]  # fmt: skip
    assert len(set(names)) == len(names)
    assert run_name("kto", {"beta": 0.1, "seed": 1}) == "kto_beta0.1_seed1"
    assert run_name("simpo", {"beta": 2.0, "simpo_gamma": 1.0}) == "simpo_beta2_gamma1"


def frontier_run(algorithm: str, seed: int, kl: float, reward: float) -> dict:
    return {"algorithm": algorithm, "overrides": {"seed": seed}, "kl": {"mean": kl}, "reward": {"mean": reward}}


def test_frontiers_are_read_at_common_kl_within_their_spans():
    runs = [
        frontier_run("dpo", 1, 2.0, 0.4), frontier_run("dpo", 1, 12.0, 0.6), frontier_run("dpo", 1, 22.0, 0.7),
        frontier_run("dpo", 2, 22.0, 0.9), frontier_run("dpo", 2, 4.0, 0.5),  # any order
        frontier_run("kto", 1, 0.0, 0.3), frontier_run("kto", 1, 20.0, 0.5),
    ]  # fmt: skip
    matched = matched_kl(runs, num_points=3)
    middle = math.sqrt(4.0 * 20.0)  # log-spaced over the span all three frontiers cover, 4 to 20
    assert matched["kl_values"] == pytest.approx([4.0, middle, 20.0])
    dpo_at_4, dpo_in_middle, _ = matched["reward"]["dpo"]
    assert dpo_at_4["by_seed"] == pytest.approx([0.44, 0.5])
    in_middle = [0.4 + 0.2 * (middle - 2) / 10, 0.5 + 0.4 * (middle - 4) / 18]
    assert dpo_in_middle["by_seed"] == pytest.approx(in_middle)
    assert dpo_in_middle["mean"] == pytest.approx(sum(in_middle) / 2) and dpo_in_middle["num_seeds"] == 2
    assert [cell["mean"] for cell in matched["reward"]["kto"]] == pytest.approx([0.34, 0.3 + 0.2 * middle / 20, 0.5])
    assert matched["reward"]["kto"][0]["stdev"] is None  # one seed: no spread


def test_frontiers_that_share_no_kl_are_read_where_each_reaches():
    runs = [frontier_run("dpo", 1, 1.0, 0.4), frontier_run("dpo", 1, 2.0, 0.5),
            frontier_run("kto", 1, 3.0, 0.6), frontier_run("kto", 1, 4.0, 0.8)]  # fmt: skip
    matched = matched_kl(runs, num_points=3)
    assert matched["kl_values"] == pytest.approx([1.0, 2.0, 4.0])  # log-spaced over the whole range
    assert [cell["num_seeds"] for cell in matched["reward"]["dpo"]] == [1, 1, 0]
    assert [cell["mean"] for cell in matched["reward"]["kto"]] == [None, None, 0.8]
