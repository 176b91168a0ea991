"""Causal per-minute features of an entity's metrics for the anomaly detector, and two simple baselines.

Every feature at minute ``t`` uses only values at or before ``t``; the expectation a residual
is measured from uses only values strictly before ``t``. This is the cheap expectation used to
score arbitrary files and the SMD evaluation (fitting Prophet to 38 metrics x 6 machines is
slow); the service keeps scoring Prophet residual z-scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from training.anomaly.detector import Z_KIND

#: what each feature kind is, in the order columns are laid out (kind-major)
FEATURE_KINDS = {
    Z_KIND: "residual from the median of the previous `expectation_minutes`, in training residual sds",
    "diff": "change since the previous minute, in training residual sds",
    "spread": "standard deviation of the last `spread_minutes` (this one included), in training residual sds",
    "level": "the value itself, in training residual sds",
}


def _rolling(values: np.ndarray, expr) -> np.ndarray:
    """Apply a per-column Polars expression to an (n, m) matrix; NaN in, NaN (null) out."""
    frame = pl.DataFrame(values, schema=[f"c{j}" for j in range(values.shape[1])], orient="row")
    out = frame.select(expr(pl.col(c).fill_nan(None)).alias(c) for c in frame.columns)
    return out.to_numpy().astype(np.float64)


def rolling_median_before(values: np.ndarray, window: int) -> np.ndarray:
    """Median of the previous ``window`` rows (not the current one); NaN until a quarter is seen."""
    return _rolling(values, lambda c: c.shift(1).rolling_median(window, min_samples=max(1, window // 4)))


def rolling_mean_std_before(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the previous ``window`` rows (not the current one)."""
    ms = max(2, window // 4)
    mean = _rolling(values, lambda c: c.shift(1).rolling_mean(window, min_samples=ms))
    std = _rolling(values, lambda c: c.shift(1).rolling_std(window, min_samples=ms))
    return mean, std


def scale_floor(train_values: np.ndarray) -> np.ndarray:
    """Smallest standard deviation a metric is given: 1% of its training range (p1 to p99), or 1e-6.

    Flat metrics are common (SMD has many); without a floor any change in one is infinite.
    """
    with np.errstate(all="ignore"):
        lo, hi = np.nanpercentile(train_values, [1, 99], axis=0)
    return np.maximum(np.nan_to_num(hi - lo) * 0.01, 1e-6)


@dataclass
class CausalFeatures:
    """Turn an (n_minutes, n_metrics) matrix of values into causal per-metric feature columns."""

    expectation_minutes: int = 60
    spread_minutes: int = 10
    kinds: tuple[str, ...] = (Z_KIND, "diff", "spread")

    def fit(self, values: np.ndarray, metrics: list[str]) -> CausalFeatures:
        """Learn each metric's residual scale from these (training) rows only."""
        values = np.asarray(values, dtype=np.float64)
        unknown = set(self.kinds) - set(FEATURE_KINDS)
        if unknown:
            raise ValueError(f"unknown feature kinds {sorted(unknown)}; known: {sorted(FEATURE_KINDS)}")
        if values.ndim != 2 or values.shape[1] != len(metrics):
            raise ValueError(f"need an (n, {len(metrics)}) matrix of values, got {values.shape}")
        self.metrics_ = list(metrics)
        resid = values - rolling_median_before(values, self.expectation_minutes)
        with np.errstate(all="ignore"):
            sd = np.nanstd(resid, axis=0)
        self.scale_ = np.maximum(np.nan_to_num(sd), scale_floor(values))
        self.columns_ = [(m, k) for k in self.kinds for m in self.metrics_]
        return self

    @property
    def warmup(self) -> int:
        """Rows at the start whose expectation is not yet defined."""
        return max(1, self.expectation_minutes // 4)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Feature matrix (n, len(columns_)); row t depends on rows <= t only."""
        values = np.asarray(values, dtype=np.float64)
        blocks = []
        for kind in self.kinds:
            if kind == Z_KIND:
                raw = values - rolling_median_before(values, self.expectation_minutes)
            elif kind == "diff":
                raw = np.vstack([np.full((1, values.shape[1]), np.nan), np.diff(values, axis=0)])
            elif kind == "spread":
                raw = _rolling(values, lambda c: c.rolling_std(self.spread_minutes, min_samples=2))
            else:  # level
                raw = values
            blocks.append(raw / self.scale_)
        return np.hstack(blocks)


# --- baselines: what a team would write in an afternoon --------------------------------------
def rolling_zscore_score(values: np.ndarray, window: int = 60, floor: np.ndarray | None = None) -> np.ndarray:
    """Largest |z| over metrics, z against the mean and sd of each metric's previous ``window`` minutes."""
    mean, std = rolling_mean_std_before(values, window)
    floor = scale_floor(values) if floor is None else floor
    z = np.abs(values - mean) / np.maximum(np.nan_to_num(std), floor)
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.nanmax(np.where(np.isnan(z), -np.inf, z), axis=1), neginf=0.0)


def windowed_gaussian_score(values: np.ndarray, window: int = 6400, step: int = 100,
                            floor: np.ndarray | None = None) -> np.ndarray:
    """Mean squared z over metrics under a diagonal Gaussian refitted every ``step`` minutes.

    The Gaussian is fitted to the ``window`` minutes before each refit (NAB's windowedGaussian:
    6400 points, step 100), and scores the minutes until the next refit; the score is the
    average negative log-likelihood up to constants.
    """
    values = np.asarray(values, dtype=np.float64)
    floor = scale_floor(values) if floor is None else floor
    n = values.shape[0]
    out = np.zeros(n)
    for start in range(step, n, step):
        past = values[max(0, start - window):start]
        with np.errstate(all="ignore"):
            mu, sd = np.nanmean(past, axis=0), np.nanstd(past, axis=0)
        sd = np.maximum(np.nan_to_num(sd), floor)
        z2 = ((values[start:start + step] - mu) / sd) ** 2
        out[start:start + step] = np.nan_to_num(np.nanmean(np.nan_to_num(z2, nan=0.0), axis=1))
    return out
