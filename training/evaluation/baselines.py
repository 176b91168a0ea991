"""The baselines prealert must beat: Prometheus ``predict_linear`` and a static warning level."""

from __future__ import annotations

import numpy as np

from training.forecast.correction import rolling_corrections


def predict_linear_lines(values: np.ndarray, step_minutes: float, window_minutes: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``predict_linear(v[window], t)`` at every index of a regular series: ``(level, slope_per_min)``.

    Prometheus fits least squares over the window's samples ``(now - window, now]`` and
    extrapolates from ``now``: the value ``t`` minutes ahead of index ``i`` is
    ``level[i] + slope_per_min[i] * t``. Cumulative sums give every index at once, with no
    look-ahead; NaN values are gaps. The same least squares as prealert's own real-time
    correction (which fits it to the residuals instead of the values).
    """
    return rolling_corrections(values, step_minutes, window_minutes)


def static_warning(current, threshold: float, direction: str, fraction: float = 0.9):
    """The static warning level: alarm when the value is past ``fraction`` of the threshold.

    ``current`` may be a number or an array (one answer per element).
    """
    if direction == "above":
        return current >= fraction * threshold
    return current <= threshold / fraction
