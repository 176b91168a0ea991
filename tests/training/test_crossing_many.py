"""``crossing_distribution_many`` is ``crossing_distribution`` series by series, element for element."""

import numpy as np
import pytest

from training.threshold import (
    crossing_distribution,
    crossing_distribution_many,
    crossing_distribution_rows,
    path_extremes,
)


@pytest.mark.parametrize("direction", ["above", "below"])
def test_many_series_at_once_equal_each_series_alone(direction):
    rng = np.random.default_rng(7)
    n, n_t, k, n_h = 40, 6, 50, 16
    minutes = np.arange(1, n_h + 1) * 5.0
    points = np.cumsum(rng.normal(0, 1, (n, n_t, n_h)), axis=2)
    errors = (np.cumsum(rng.normal(0, 1, (n, k, n_h)), axis=2)).astype(np.float32)
    errors[3] = 0.0  # a series whose paths are all its point forecast
    # thresholds far away (no path crosses), near (some do) and behind (all do at once)
    thresholds = np.concatenate([np.full(10, 40.0 if direction == "above" else -40.0),
                                 rng.normal(0, 3, 25), np.full(5, -40.0 if direction == "above" else 40.0)])
    many = crossing_distribution_many(minutes, points, errors, thresholds, direction)
    assert many.probability.shape == (n, n_t) and many.minutes.shape == (n,)
    for i in range(n):
        alone = crossing_distribution(minutes, points[i], errors[i], thresholds[i], direction)
        np.testing.assert_array_equal(many.probability[i], alone.probability)
        for key in ("minutes", "earliest_minutes", "latest_minutes"):
            np.testing.assert_array_equal(getattr(many, key)[i], getattr(alone, key)[-1])
    assert 0 < (many.probability > 0).mean() < 1 and np.isnan(many.minutes).any()


@pytest.mark.parametrize("direction", ["above", "below"])
@pytest.mark.parametrize("n", [45, 1300])  # 1,300: more than one chunk of series
def test_paths_read_in_place_from_a_stack_equal_the_copied_ones(direction, n):
    """``crossing_distribution_rows`` over a stack (longer paths, series in any order, some twice)
    is ``crossing_distribution_many`` of the copied paths, element for element."""
    rng = np.random.default_rng(11)
    m, n_t, k, n_h, h_stored = 30, 6, 40, 12, 20
    minutes = np.arange(1, n_h + 1) * 5.0
    stack = np.cumsum(rng.normal(0, 1, (m, k, h_stored)), axis=2).astype(np.float32)
    rows = rng.integers(0, m, n)
    points = np.cumsum(rng.normal(0, 1, (n, n_t, n_h)), axis=2)
    far = 40.0 if direction == "above" else -40.0
    thresholds = np.concatenate([np.full(10, far), rng.normal(0, 3, n - 15), np.full(5, -far)])
    timing = rng.uniform(0.2, 0.8, n)
    copied = crossing_distribution_many(minutes, points, stack[rows, :, :n_h], thresholds, direction, timing)
    steps = np.ascontiguousarray(stack.transpose(0, 2, 1))  # (m, H, K), as the batch stacks them
    for extremes in (None, path_extremes(steps, n_h, direction == "above")):
        in_place = crossing_distribution_rows(minutes, points, steps, rows, thresholds, direction, timing,
                                              extremes)
        for key in ("probability", "minutes", "earliest_minutes", "latest_minutes"):
            np.testing.assert_array_equal(getattr(in_place, key), getattr(copied, key))
    assert 0 < (copied.probability > 0).mean() < 1 and np.isnan(copied.minutes).any()
    # a path's extreme beyond n_h steps must not count
    late = steps.copy()
    late[:, n_h:, :] = 1e6 if direction == "above" else -1e6
    again = crossing_distribution_rows(minutes, points, late, rows, thresholds, direction, timing)
    np.testing.assert_array_equal(again.probability, copied.probability)
