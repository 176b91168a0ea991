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
