"""The step from which a loss is stable, with and without smoothing."""

from experiment.convergence import steps_to_stable_loss


def test_stable_loss_is_where_the_loss_stays_near_its_end():
    steps = [5, 10, 15, 20, 25, 30, 35]
    # Unsmoothed: total change 0.5, so the band is 0.05 around 0.5.
    assert steps_to_stable_loss(steps, [1.0, 0.8, 0.6, 0.52, 0.5, 0.49, 0.5], window_fraction=0) == 20
    assert steps_to_stable_loss(steps[:6], [1.0, 0.5, 0.5, 0.8, 0.5, 0.5], window_fraction=0) == 25
    assert steps_to_stable_loss(steps, [0.7] * 7) == 5


def test_smoothing_keeps_one_noisy_batch_from_delaying_stability():
    steps = list(range(1, 11))
    losses = [1.0, 0.5, 0.5, 0.5, 0.56, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert steps_to_stable_loss(steps, losses, window_fraction=0) == 6
    assert steps_to_stable_loss(steps, losses, window_fraction=0.3) == 3  # a centred window of 3
