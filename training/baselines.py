"""The baselines prealert must beat: Prometheus ``predict_linear`` and a static warning level."""

from __future__ import annotations

import numpy as np


def ols_line(ts: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope (per minute) and level at the last sample time, as Prometheus fits.

    ``predict_linear`` regresses value on time over the window's samples and extrapolates
    from the evaluation time; with one sample the slope is 0.
    """
    ts = np.asarray(ts, dtype="datetime64[us]")
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    ts, values = ts[ok], values[ok]
    if values.size == 0:
        return 0.0, float("nan")
    x = (ts - ts[-1]).astype(np.float64) / 60e6
    if values.size == 1 or np.ptp(x) == 0:
        return 0.0, float(values[-1])
    xm, ym = x.mean(), values.mean()
    slope = float(((x - xm) * (values - ym)).sum() / ((x - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


def predict_linear(
    ts: np.ndarray, values: np.ndarray, now: np.datetime64, window_minutes: float, at: np.ndarray
) -> np.ndarray:
    """``predict_linear(v[window], t)``: OLS over samples in (now - window, now], extrapolated to ``at``."""
    ts = np.asarray(ts, dtype="datetime64[us]")
    now = np.datetime64(now, "us")
    inside = (ts > now - np.timedelta64(int(window_minutes * 60e6), "us")) & (ts <= now)
    slope, level = ols_line(ts[inside], np.asarray(values)[inside])
    last = ts[inside][-1] if inside.any() else now
    minutes = (np.asarray(at, dtype="datetime64[us]") - last).astype(np.float64) / 60e6
    return level + slope * minutes


def static_warning(current, threshold: float, direction: str, fraction: float = 0.9):
    """The static warning level: alarm when the value is past ``fraction`` of the threshold.

    ``current`` may be a number or an array (one answer per element).
    """
    if direction == "above":
        return current >= fraction * threshold
    return current <= threshold / fraction
