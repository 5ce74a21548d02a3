"""The sweep's grid: every override is a key of its script's config, and every run has its own name."""

import dataclasses

import pytest
from trl import DPOConfig, KTOConfig

from prefopt.sweep import GRID, run_name
from simpo import SimPOConfig

CONFIG_CLASSES = {"dpo": DPOConfig, "kto": KTOConfig, "simpo": SimPOConfig}


@pytest.mark.parametrize("algorithm", GRID)
def test_overrides_are_config_keys(algorithm):
    keys = {field.name for field in dataclasses.fields(CONFIG_CLASSES[algorithm])}
    for overrides in GRID[algorithm]:
        assert set(overrides) <= keys


def test_run_names_are_distinct_and_readable():
    names = [run_name(algorithm, overrides) for algorithm, grid in GRID.items() for overrides in grid]
    assert len(set(names)) == len(names)
    assert run_name("simpo", {"beta": 2.0, "simpo_gamma": 1.0}) == "simpo_beta2_gamma1"
    assert run_name("dpo", {"beta": 0.03}) == "dpo_beta0.03"
