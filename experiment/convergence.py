"""When a training loss has converged: smoothing out batch noise, and the step from which the loss is stable."""

from collections.abc import Sequence


def smooth(losses: Sequence[float], window_fraction: float = 0.1) -> list[float]:
    """Centred moving average over `window_fraction` of the points (at least one; fewer at the ends).

    It averages out the noise of single batches without shifting the curve, as an exponential average would.
    """
    half = max(1, round(window_fraction * len(losses))) // 2
    windows = [losses[max(0, i - half) : i + half + 1] for i in range(len(losses))]
    return [sum(window) / len(window) for window in windows]


def steps_to_stable_loss(
    steps: Sequence[int], losses: Sequence[float], band: float = 0.1, window_fraction: float = 0.1
) -> int:
    """The first logged step from which the smoothed loss stays within `band` x its total change of its final value.

    Smoothed by `smooth`; the total change is from the first to the last smoothed value. Relative to that change
    rather than to the final value, so that losses on different scales (DPO's starts at log 2, SimPO's at
    softplus(gamma)) are judged alike. A loss still falling at the end is stable only near the end; so is one that
    barely moves, its band being as small as its change: read it next to that change.
    """
    smoothed = smooth(losses, window_fraction)
    tolerance = band * abs(smoothed[0] - smoothed[-1])
    stable_from = len(smoothed) - 1
    while stable_from > 0 and abs(smoothed[stable_from - 1] - smoothed[-1]) <= tolerance:
        stable_from -= 1
    return steps[stable_from]
