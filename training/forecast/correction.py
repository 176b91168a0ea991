"""Real-time correction of a forecast from the latest observations, and the errors it leaves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the correction fits the residuals of the last hour and follows their drift for about an hour
WINDOW_MINUTES = 60.0
DAMPING_MINUTES = 60.0
MIN_POINTS_FOR_SLOPE = 4


@dataclass(frozen=True)
class RealtimeCorrection:
    """What the latest observations add to the model: a level shift and a damped residual trend.

    The trend fades with time constant ``damping_minutes`` so a short-term drift is followed
    for the next hour but never extrapolated forever.
    """

    level: float = 0.0
    slope_per_min: float = 0.0
    damping_minutes: float = DAMPING_MINUTES

    def at(self, minutes_ahead) -> np.ndarray:
        out = damped(self.level, self.slope_per_min, minutes_ahead, self.damping_minutes)
        return out.reshape(np.shape(minutes_ahead))


def damped(level, slope_per_min, minutes_ahead, damping_minutes: float = DAMPING_MINUTES):
    """``level + slope * tau * (1 - exp(-h / tau))``: (n_h,) for scalars, (n, n_h) for arrays."""
    level = np.asarray(level, dtype=np.float64)[..., None]
    slope = np.asarray(slope_per_min, dtype=np.float64)[..., None]
    h = np.asarray(minutes_ahead, dtype=np.float64)
    return level + slope * damping_minutes * (1.0 - np.exp(-h / damping_minutes))


def realtime_correction(
    obs_ts, residuals, window_minutes: float = WINDOW_MINUTES,
    damping_minutes: float = DAMPING_MINUTES,
) -> RealtimeCorrection:
    """Fit ``observed - expected`` over the window ``(latest - window, latest]``: level and slope.

    Least squares as ``predict_linear`` does, but on the residuals, so the model's own
    seasonality and trend are not fitted twice. Non-finite residuals are ignored; with fewer
    than four points the level is their mean and the slope 0.
    """
    return realtime_corrections(obs_ts, residuals, [len(obs_ts)], window_minutes,
                                damping_minutes)[0]


def realtime_corrections(
    obs_ts, residuals, ends, window_minutes: float = WINDOW_MINUTES,
    damping_minutes: float = DAMPING_MINUTES,
) -> list[RealtimeCorrection]:
    """:func:`realtime_correction` of the first ``end`` observations, for each of ``ends``.

    One pass for all of them (the alert rule's earlier checks see prefixes of the same
    observations).
    """
    obs_ts = np.asarray(obs_ts, dtype="datetime64[us]")
    residuals = np.asarray(residuals, dtype=np.float64)
    ok = np.isfinite(residuals)
    ends = np.asarray(ends, dtype=np.int64)
    n_ok = np.concatenate([[0], np.cumsum(ok)])[ends]  # finite residuals among each prefix
    obs_ts, residuals = obs_ts[ok], residuals[ok]
    out = [RealtimeCorrection(damping_minutes=damping_minutes)] * ends.size
    live = np.flatnonzero(n_ok > 0)
    if live.size == 0:
        return out
    latest = obs_ts[n_ok[live] - 1]
    x = (obs_ts[None, :] - latest[:, None]).astype(np.float64) / 60e6  # minutes before latest
    inside = (x > -window_minutes) & (np.arange(obs_ts.size)[None, :] < n_ok[live, None])
    cnt = inside.sum(axis=1)
    xs, rs = np.where(inside, x, 0.0), np.where(inside, residuals[None, :], 0.0)
    xm, rm = xs.sum(axis=1) / cnt, rs.sum(axis=1) / cnt
    dx = np.where(inside, x - xm[:, None], 0.0)
    sxx = (dx * dx).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where((cnt >= MIN_POINTS_FOR_SLOPE) & (sxx > 0),
                         (dx * (rs - rm[:, None] * inside)).sum(axis=1) / sxx, 0.0)
    level = rm - slope * xm
    for j, i in enumerate(live):
        out[i] = RealtimeCorrection(float(level[j]), float(slope[j]), damping_minutes)
    return out


def rolling_corrections(
    residuals: np.ndarray, step_minutes: float, window_minutes: float = WINDOW_MINUTES
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`realtime_correction` at every index of a regular residual series, at once.

    Returns ``(level, slope_per_min)`` arrays; the fit at index ``i`` uses only indices
    ``i - W < j <= i`` (no look-ahead). NaN residuals are gaps. Cumulative sums make it O(n).
    """
    r = np.asarray(residuals, dtype=np.float64)
    n = r.size
    w = max(1, int(round(window_minutes / step_minutes)))
    ok = np.isfinite(r)
    j = np.arange(n, dtype=np.float64)
    terms = [ok.astype(np.float64), np.where(ok, j, 0), np.where(ok, j * j, 0),
             np.where(ok, r, 0), np.where(ok, j * r, 0)]

    def window_sum(a):
        c = np.concatenate([[0.0], np.cumsum(a)])
        lo = np.maximum(np.arange(1, n + 1) - w, 0)
        return c[1:] - c[lo]

    cnt, sj, sjj, sr, sjr = (window_sum(a) for a in terms)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_r = sr / cnt
        denom = cnt * sjj - sj * sj
        slope = np.where((cnt >= MIN_POINTS_FOR_SLOPE) & (denom > 0),
                         (cnt * sjr - sj * sr) / denom, 0.0)
        level = np.where(cnt >= MIN_POINTS_FOR_SLOPE, mean_r + slope * (j - sj / cnt), mean_r)
    level = np.where(cnt > 0, level, np.nan)
    return level, slope / step_minutes


def error_paths_with_origins(
    residuals: np.ndarray,
    step_minutes: float,
    horizon_minutes: float,
    n_paths: int = 256,
    window_minutes: float = WINDOW_MINUTES,
    damping_minutes: float = DAMPING_MINUTES,
    center: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Errors the corrected forecast made in history, as whole paths over the horizon, and where
    each began.

    For evenly spread origins ``i``: ``e[h] = r[i + h] - correction_i(h)`` for the steps
    ``h = 1..H``; paths touching a gap are skipped. Paths of shape ``(K, H / step)``, empty if
    the history is shorter than a horizon; origins (K,) int64, the index into ``residuals`` each
    path starts at (its last observation): with the residuals' timestamps they give the path's
    minute of the hour (:func:`minute_of_hour`).
    """
    r = np.asarray(residuals, dtype=np.float64)
    n_h = max(1, int(round(horizon_minutes / step_minutes)))
    level, slope = rolling_corrections(r, step_minutes, window_minutes)
    minutes = np.arange(1, n_h + 1) * step_minutes
    origins = np.arange(n_h, r.size - n_h)
    if origins.size == 0:
        return np.empty((0, n_h)), np.empty(0, dtype=np.int64)
    # pick the paths before building them: a (origins x horizon) matrix is 58 MB at 1 minute
    bad = np.concatenate([[0], np.cumsum(~np.isfinite(r))])
    rows = origins[(bad[origins + n_h + 1] == bad[origins + 1])
                   & np.isfinite(level[origins]) & np.isfinite(slope[origins])]
    if rows.size > n_paths:
        rows = rows[np.linspace(0, rows.size - 1, n_paths).round().astype(int)]
    e = r[rows[:, None] + np.arange(1, n_h + 1)[None, :]] - damped(
        level[rows], slope[rows], minutes, damping_minutes)
    if not np.isfinite(e).all():  # an overflow the check above cannot see: every path, then drop
        e, rows = _every_finite_path(r, level, slope, origins, minutes, damping_minutes, n_paths)
    if center and e.shape[0]:
        # keep the spread and shape, drop the bias: the model refitted since has absorbed it
        e = e - np.median(e, axis=0, keepdims=True)
    return e, rows.astype(np.int64)


#: a residual history "has an hourly pattern" when its minute-of-the-hour means differ at this
#: significance (one-way F-test): only then are its paths timed at the check's minute
HOURLY_PATTERN_P = 1e-3


def hourly_phases(residuals, ts, origins) -> np.ndarray | None:
    """The error paths' origin minutes of the hour (:func:`minute_of_hour` of ``ts[origins]``)
    when the ``residuals`` (on the grid ``ts``) differ by minute of the hour (a cron job's
    spike at a fixed minute), else None: a series without an hourly pattern times its
    crossings over every path, as a phase-matched subset would only add sampling noise.
    """
    from scipy.special import fdtrc

    r = np.asarray(residuals, dtype=np.float64)
    ok = np.isfinite(r)
    minute = minute_of_hour(np.asarray(ts)[ok]).astype(np.int64)
    r = r[ok]
    counts = np.bincount(minute, minlength=60)
    groups = int(np.count_nonzero(counts))
    if groups < 2 or r.size <= groups:
        return None
    means = np.bincount(minute, weights=r, minlength=60)[counts > 0] / counts[counts > 0]
    between = float(np.sum(counts[counts > 0] * (means - r.mean()) ** 2))
    within = float(np.sum((r - np.bincount(minute, weights=r, minlength=60)[minute]
                           / counts[minute]) ** 2))
    if within <= 0:
        return None
    f = (between / (groups - 1)) / (within / (r.size - groups))
    if fdtrc(groups - 1, r.size - groups, f) >= HOURLY_PATTERN_P:
        return None
    return minute_of_hour(np.asarray(ts)[origins])


def minute_of_hour(ts) -> np.ndarray:
    """The minute of the hour (0-59, UTC; whole-hour time zones share it) of datetime64 ``ts``,
    as int16: an error path's origin phase, stored with the path."""
    ts = np.asarray(ts, dtype="datetime64[us]")
    return ((ts.astype(np.int64) // 60_000_000) % 60).astype(np.int16)


def _every_finite_path(r, level, slope, origins, minutes, damping_minutes,
                       n_paths) -> tuple[np.ndarray, np.ndarray]:
    ahead = r[origins[:, None] + np.arange(1, minutes.size + 1)[None, :]]
    e = ahead - damped(level[origins], slope[origins], minutes, damping_minutes)
    finite = np.isfinite(e).all(axis=1)
    e, origins = e[finite], origins[finite]
    if e.shape[0] > n_paths:
        pick = np.linspace(0, e.shape[0] - 1, n_paths).round().astype(int)
        e, origins = e[pick], origins[pick]
    return e, origins
