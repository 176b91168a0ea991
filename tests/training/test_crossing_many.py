"""``crossing_distribution_many`` is ``crossing_distribution`` series by series, element for element."""

import numpy as np
import pytest

from training.threshold import crossing_distribution, crossing_distribution_many


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
