"""``crossing_distribution`` walks only the paths that may reach the threshold: the same answers
as holding every path in the range and walking it whole, element for element."""

import numpy as np
import pytest

from training.threshold import UNBOUNDED, crossing_distribution, first_crossing_index


def walked_whole(minutes, point, errors, threshold, direction, bounds, timing, levels):
    """Every path built, held in ``bounds`` and walked: the definition, one check at a time."""
    above = direction == "above"
    probability, quantiles = [], []
    for row in point:
        paths = np.clip(row[None, :] + errors, *bounds) if bounds != UNBOUNDED else row[None, :] + errors
        first = first_crossing_index(paths, threshold, above)
        times = np.sort(minutes[first[first >= 0]])
        probability.append(times.size / errors.shape[0])
        quantiles.append([times[max(int(np.ceil(q * times.size)) - 1, 0)] if times.size else np.nan
                          for q in (0.1, timing, 0.9, *levels)])
    return np.array(probability), np.array(quantiles)


@pytest.mark.parametrize("direction", ["above", "below"])
@pytest.mark.parametrize("bounds", [UNBOUNDED, (0.0, 100.0)])
def test_pruned_walk_equals_walking_every_path(direction, bounds):
    rng = np.random.default_rng(11)
    n_t, k, n_h = 300, 64, 45
    minutes = np.arange(1, n_h + 1) * 1.0
    point = 50 + np.cumsum(rng.normal(0, 1.5, (n_t, n_h)), axis=1) + rng.normal(0, 20, (n_t, 1))
    point[5] = np.nan  # a check with no forecast
    point[7, 10:20] = np.nan  # gaps inside one
    errors = np.cumsum(rng.normal(0, 2, (k, n_h)), axis=1).astype(np.float32).astype(np.float64)
    errors[3, 5] = np.nan
    levels = (0.2, 0.5, 0.8)
    seen = []
    # far (none cross), near (some do), behind the forecast (all do), at and past the range's edges
    for threshold in (200.0, 75.0, 60.0, 50.0, 40.0, 25.0, -100.0, 0.0, 100.0, 101.0, -1.0):
        got = crossing_distribution(minutes, point, errors, threshold, direction, bounds, 0.3, levels)
        p, q = walked_whole(minutes, point, errors, threshold, direction, bounds, 0.3, levels)
        np.testing.assert_array_equal(got.probability, p)
        for j, key in enumerate(("earliest_minutes", "minutes", "latest_minutes")):
            np.testing.assert_array_equal(getattr(got, key), q[:, j])
        np.testing.assert_array_equal(got.at_levels, q[:, 3:])
        seen.append(got.probability)
    seen = np.concatenate(seen)  # the cases were met: no path, some paths, every path crossing
    assert (seen == 0).any() and ((seen > 0) & (seen < 1)).any() and (seen == 1).any()
