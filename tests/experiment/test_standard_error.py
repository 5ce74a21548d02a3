"""The mean and its standard error, as every measure of the evaluation reports them."""

import pytest

from experiment.standard_error import mean_stderr


def test_standard_error_is_the_sample_deviation_over_the_root_of_n():
    # Deviations -1.5, -0.5, 0.5, 1.5: sample variance 5 / 3, standard error sqrt(5 / 3 / 4).
    assert mean_stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx({"mean": 2.5, "stderr": (5 / 12) ** 0.5})
    assert mean_stderr([0.7]) == {"mean": 0.7, "stderr": 0.0}  # one value: no spread to estimate
