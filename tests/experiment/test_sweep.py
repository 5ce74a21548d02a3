"""The sweep's grids: every override is a key of its script's config, and every run has its own name."""

import dataclasses

import pytest
import yaml
from trl import DPOConfig, KTOConfig

from experiment.sweep import GRID, GRIDS, SEEDS, run_name
from simpo import SimPOConfig
from tests.conftest import REPO

CONFIG_CLASSES = {"dpo": DPOConfig, "kto": KTOConfig, "simpo": SimPOConfig}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("algorithm", GRID)
def test_overrides_are_config_keys(grid, algorithm):
    keys = {field.name for field in dataclasses.fields(CONFIG_CLASSES[algorithm])}
    for overrides in GRIDS[grid][algorithm]:
        assert set(overrides) <= keys


def test_the_seeds_grid_starts_at_the_v1_configs_own_seed():
    for algorithm, grid in SEEDS.items():
        config = yaml.safe_load((REPO / "training_configs" / f"{algorithm}_v1.yaml").read_text())
        assert grid[0] == {"seed": config["seed"]}  # that run is the default experiment's, retrained
        assert len({overrides["seed"] for overrides in grid}) == len(grid) >= 3


def test_run_names_are_distinct_and_readable():
    names = [run_name(algorithm, point) for grid in GRIDS.values() for algorithm in grid for point in grid[algorithm]]
    assert len(set(names)) == len(names)
    assert run_name("kto", {"seed": 1}) == "kto_seed1"
    assert run_name("simpo", {"beta": 2.0, "simpo_gamma": 1.0}) == "simpo_beta2_gamma1"
    assert run_name("dpo", {"beta": 0.03}) == "dpo_beta0.03"
