"""Means with their standard error over examples, as every measure of the evaluation reports them."""

import math
from collections.abc import Sequence


def mean_stderr(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "stderr"}: the mean and its standard error, sample standard deviation / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    variance = sum((value - mean) ** 2 for value in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "stderr": math.sqrt(variance / n)}
