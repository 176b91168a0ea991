"""Minutes-to-threshold: the one place that turns a forecast into a crossing time and its odds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

#: yhat_lower / yhat_upper are the P10 / P90 of the forecast: z of the 90th percentile
Z90 = 1.2815515655446004


@dataclass(frozen=True)
class Crossing:
    """When a forecast reaches a threshold, relative to ``now``.

    ``minutes`` is the median crossing (the point forecast), ``earliest``/``latest`` the
    crossings of the P90/P10 paths (for direction "above"), each ``None`` when not within
    the horizon; ``probability`` is the chance of reaching the threshold within the horizon.
    """

    minutes: float | None
    earliest_minutes: float | None
    latest_minutes: float | None
    probability: float
    already_crossed: bool = False


def _first_crossing(minutes: np.ndarray, path: np.ndarray, threshold: float, above: bool):
    """Minutes until ``path`` first reaches ``threshold``, interpolated between steps."""
    reached = path >= threshold if above else path <= threshold
    if not reached.any():
        return None
    i = int(np.argmax(reached))
    if i == 0:
        return float(minutes[0])
    m0, m1, y0, y1 = minutes[i - 1], minutes[i], path[i - 1], path[i]
    frac = (threshold - y0) / (y1 - y0) if y1 != y0 else 1.0
    return float(m0 + frac * (m1 - m0))


def _normal_sf(z: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2.0))


def minutes_to_threshold(
    ts: np.ndarray,
    yhat: np.ndarray,
    yhat_lower: np.ndarray,
    yhat_upper: np.ndarray,
    threshold: float,
    direction: str,
    now: datetime | np.datetime64,
    current: float | None = None,
) -> Crossing:
    """Turn a forecast over the horizon into a :class:`Crossing`.

    ``ts`` are the forecast times (after ``now``), ``yhat_lower``/``yhat_upper`` its P10/P90.
    ``current`` is the latest observed value: at or beyond the threshold means crossed (0
    minutes). The probability is the largest per-step chance of being beyond the threshold,
    a lower bound on the chance that the path's extreme crosses.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', not {direction!r}")
    above = direction == "above"
    if current is not None and (current >= threshold if above else current <= threshold):
        return Crossing(0.0, 0.0, 0.0, 1.0, already_crossed=True)
    ts = np.asarray(ts, dtype="datetime64[us]")
    if ts.size == 0:
        return Crossing(None, None, None, 0.0)
    if isinstance(now, datetime) and now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    now64 = np.datetime64(now, "us")
    minutes = (ts - now64).astype("timedelta64[us]").astype(np.float64) / 60e6
    yhat, lo, hi = (np.asarray(a, dtype=np.float64) for a in (yhat, yhat_lower, yhat_upper))
    point = _first_crossing(minutes, yhat, threshold, above)
    # the optimistic bound crosses first, the pessimistic one last
    earliest = _first_crossing(minutes, hi if above else lo, threshold, above)
    latest = _first_crossing(minutes, lo if above else hi, threshold, above)
    sigma = np.maximum((hi - lo) / (2 * Z90), 1e-12)
    z = (threshold - yhat) / sigma if above else (yhat - threshold) / sigma
    probability = float(np.max(_normal_sf(z)))
    return Crossing(point, earliest, latest, round(probability, 4))


def first_crossing_index(paths: np.ndarray, threshold: float, above: bool) -> np.ndarray:
    """Index of the first step at which each path (last axis) reaches the threshold; -1 if never."""
    reached = paths >= threshold if above else paths <= threshold
    first = np.argmax(reached, axis=-1)
    return np.where(reached.any(axis=-1), first, -1)


@dataclass(frozen=True)
class CrossingBatch:
    """Vectorized answers for many evaluation times (one row each); NaN where not within H."""

    minutes: np.ndarray  # median (P50) of the crossing-time distribution
    earliest_minutes: np.ndarray  # P10 of the crossing-time distribution
    latest_minutes: np.ndarray  # P90 of the crossing-time distribution
    probability: np.ndarray  # share of plausible paths that reach the threshold within H


def crossing_distribution(
    minutes: np.ndarray,
    point: np.ndarray,
    error_paths: np.ndarray,
    threshold: float,
    direction: str,
) -> CrossingBatch:
    """Crossing times from a point path plus plausible error paths.

    ``minutes`` (n_h,) are the forecast offsets from now, ``point`` (n_t, n_h) the corrected
    point forecasts, ``error_paths`` (K, n_h) forecast errors seen in history at the same
    offsets (kept whole, so their correlation over the horizon is real). Each path
    ``point + error`` is one plausible future: the probability is the share whose extreme
    reaches the threshold, and P10/P50/P90 are quantiles of their first-crossing times
    (NaN where that quantile lies beyond the horizon), so P10 <= P50 <= P90 always holds.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', not {direction!r}")
    above = direction == "above"
    minutes = np.asarray(minutes, dtype=np.float64)
    point = np.atleast_2d(np.asarray(point, dtype=np.float64))
    errors = np.asarray(error_paths, dtype=np.float64)
    n_t = point.shape[0]
    out = {k: np.full(n_t, np.nan) for k in ("minutes", "earliest", "latest")}
    prob = np.zeros(n_t)
    chunk = max(1, 2_000_000 // max(1, errors.size))
    for lo in range(0, n_t, chunk):
        paths = point[lo:lo + chunk, None, :] + errors[None, :, :]
        first = first_crossing_index(paths, threshold, above)  # (chunk, K)
        t_cross = np.where(first >= 0, minutes[np.maximum(first, 0)], np.inf)
        prob[lo:lo + chunk] = np.mean(first >= 0, axis=1)
        q10, q50, q90 = np.quantile(t_cross, [0.1, 0.5, 0.9], axis=1, method="inverted_cdf")
        for key, q in (("earliest", q10), ("minutes", q50), ("latest", q90)):
            out[key][lo:lo + chunk] = np.where(np.isfinite(q), q, np.nan)
    return CrossingBatch(out["minutes"], out["earliest"], out["latest"], prob)


def crossing_from_paths(
    minutes: np.ndarray,
    point: np.ndarray,
    error_paths: np.ndarray,
    threshold: float,
    direction: str,
    current: float | None = None,
) -> Crossing:
    """One evaluation time's :class:`Crossing` from a point path and historical error paths."""
    above = direction == "above"
    if current is not None and (current >= threshold if above else current <= threshold):
        return Crossing(0.0, 0.0, 0.0, 1.0, already_crossed=True)
    b = crossing_distribution(minutes, point[None, :], error_paths, threshold, direction)

    def _opt(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    return Crossing(_opt(b.minutes[0]), _opt(b.earliest_minutes[0]), _opt(b.latest_minutes[0]),
                    round(float(b.probability[0]), 4))


#: alert when the chance of crossing within the horizon reaches this, unless a replay chose better
DEFAULT_ALARM = 0.5


@dataclass(frozen=True)
class ProbabilityCalibration:
    """A monotone map from the paths' raw crossing probability to the observed frequency.

    Fitted (isotonic) on replays the model did not train on; the identity until there are
    enough of them. Stored as knots so serving applies it with ``np.interp``.
    """

    knots: tuple[float, ...] = (0.0, 1.0)
    values: tuple[float, ...] = (0.0, 1.0)
    n_fitted: int = 0
    alarm: float = DEFAULT_ALARM  # the calibrated probability at which to alert (best F1 on the replay)
    #: thresholds the replay covered, per direction: beyond them the raw probability stands
    above: tuple[float, float] = (float("-inf"), float("inf"))
    below: tuple[float, float] = (float("-inf"), float("inf"))

    def covers(self, threshold: float, direction: str) -> bool:
        lo, hi = self.above if direction == "above" else self.below
        return lo <= threshold <= hi

    def apply(self, p):
        return np.interp(np.asarray(p, dtype=np.float64), self.knots, self.values)

    @classmethod
    def fit(cls, p_raw: np.ndarray, crossed: np.ndarray, min_samples: int = 200,
            min_positives: int = 10) -> ProbabilityCalibration:
        from sklearn.isotonic import IsotonicRegression

        p_raw = np.asarray(p_raw, dtype=np.float64)
        crossed = np.asarray(crossed, dtype=bool)
        if p_raw.size < min_samples or crossed.sum() < min_positives:
            return cls()
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_raw, crossed)
        knots = np.concatenate([[0.0], iso.X_thresholds_, [1.0]])
        values = np.concatenate([[iso.predict([0.0])[0]], iso.y_thresholds_,
                                 [iso.predict([1.0])[0]]])
        keep = np.concatenate([[True], np.diff(knots) > 0])
        return cls(tuple(knots[keep].round(6)), tuple(values[keep].round(6)), int(p_raw.size))

    def to_dict(self) -> dict:
        return {"knots": list(self.knots), "values": list(self.values), "n_fitted": self.n_fitted,
                "alarm": self.alarm, "above": list(self.above), "below": list(self.below)}

    @classmethod
    def from_dict(cls, d: dict | None) -> ProbabilityCalibration:
        if not d:
            return cls()
        inf = float("inf")
        return cls(tuple(d["knots"]), tuple(d["values"]), d["n_fitted"],
                   d.get("alarm", DEFAULT_ALARM), tuple(d.get("above", (-inf, inf))),
                   tuple(d.get("below", (-inf, inf))))
