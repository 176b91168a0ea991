"""How rare a value is under a training distribution: empirical body, generalized Pareto tail (POT, as SPOT).

The answer is a *surprise* ``s = -log10(p)``, ``p`` the probability that a training row is at
least this high: ``s = 2`` means a row this unusual is expected once every 100 rows. Ties count
as "at least this high", so a value the training rows often took (a constant, a rounded
level) is unremarkable; beyond the highest training quantiles the tail is a generalized Pareto
fit to the exceedances, computed in log space, so the surprise keeps growing with the distance
and never reaches a ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: quantile levels kept for the body (0, 0.001, ..., 1)
N_LEVELS = 1001
#: share of training rows the Pareto tail is fitted to, and the fewest exceedances it wants
TAIL_SHARE = 0.02
MIN_EXCEEDANCES = 20
#: shape bounds: >= 0 so the tail has no end point (no infinite surprise), < 0.5 for the moments
MAX_SHAPE = 0.45
_LN10 = np.log(10.0)


@dataclass
class TailModel:
    """Fitted rarity of one statistic (higher = more unusual); see the module docstring."""

    quantiles: np.ndarray  # the training statistic at levels 0, 0.001, ..., 1
    threshold: float  # u: the Pareto tail starts above it
    tail_probability: float  # P(training row > u)
    shape: float  # xi, in [0, MAX_SHAPE]
    scale: float  # sigma > 0
    n: int  # training rows

    @classmethod
    def fit(cls, sample: np.ndarray, min_scale: float) -> TailModel:
        """Fit to the finite training values of a statistic; ``min_scale`` floors the tail's scale.

        The floor says how far beyond the training extremes one more decade of rarity lies
        when the training tail is flat (a constant series): without it any move would be
        infinitely rare.
        """
        x = np.sort(np.asarray(sample, dtype=np.float64).ravel())
        x = x[np.isfinite(x)]
        if len(x) == 0:
            raise ValueError("no finite training values to fit a tail to")
        n = len(x)
        q = np.quantile(x, np.linspace(0.0, 1.0, N_LEVELS))
        share = min(0.5, max(TAIL_SHARE, MIN_EXCEEDANCES / n))
        u = float(np.quantile(x, 1.0 - share))
        excess = x[x > u] - u
        body_at_u = 1.0 - np.searchsorted(q, u, side="left") / N_LEVELS
        tau = min(max(len(excess), 1) / n, body_at_u)
        xi, sigma = 0.0, float(excess.mean()) if len(excess) else 0.0
        if len(excess) >= 10:
            m, v = float(excess.mean()), float(excess.var())
            if v > 0:  # method of moments, clipped to a tail without an end point
                xi = float(np.clip(0.5 * (1.0 - m * m / v), 0.0, MAX_SHAPE))
                sigma = m * (1.0 - xi)
        floor = max(float(min_scale), 1e-12 * max(1.0, abs(u)))
        return cls(q, u, float(tau), xi, max(sigma, floor), n)

    def surprise(self, x: np.ndarray) -> np.ndarray:
        """``-log10 P(training row >= x)`` for each x; NaN stays NaN."""
        x = np.asarray(x, dtype=np.float64)
        below = np.searchsorted(self.quantiles, x, side="left") / N_LEVELS
        with np.errstate(divide="ignore", invalid="ignore"):
            body = -np.log10(np.clip(1.0 - below, 1.0 / N_LEVELS, 1.0))
            d = np.maximum(x - self.threshold, 0.0) / self.scale
            tail = np.log1p(self.shape * d) / (self.shape * _LN10) if self.shape > 0 else d / _LN10
            out = np.where(x > self.threshold, -np.log10(self.tail_probability) + tail, body)
        return np.where(np.isnan(x), np.nan, np.maximum(out, 0.0))

    def to_dict(self) -> dict:
        return {"quantiles": self.quantiles.tolist(), "threshold": self.threshold,
                "tail_probability": self.tail_probability, "shape": self.shape,
                "scale": self.scale, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> TailModel:
        return cls(np.asarray(d["quantiles"], dtype=np.float64), float(d["threshold"]),
                   float(d["tail_probability"]), float(d["shape"]), float(d["scale"]), int(d["n"]))


def bounded(surprise: np.ndarray) -> np.ndarray:
    """The surprise mapped monotonically to [0, 1): ``s / (1 + s)`` (0.5: once in 10 rows, 0.9: in 10^9)."""
    s = np.asarray(surprise, dtype=np.float64)
    return s / (1.0 + s)
