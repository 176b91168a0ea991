"""Causal features of an entity's metrics for the anomaly detector (windows in time), and two baselines.

Every feature at time ``t`` uses only values at or before ``t``; the expectation a residual
is measured from uses only values strictly before ``t``. Windows are durations measured on the
timestamps, so any sampling interval, irregular sampling and gaps work. This is the cheap
expectation used to score arbitrary files and the SMD evaluation (fitting Prophet to 38
metrics x 6 machines is slow); the service keeps scoring Prophet residual z-scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from training.anomaly.detector import Z_KIND

#: what each feature kind is, in the order columns are laid out (kind-major)
FEATURE_KINDS = {
    Z_KIND: "residual from the median of the previous `expectation_minutes` (or of the previous "
            "`baseline_minutes`, whichever is nearer), in training residual sds",
    "diff": "change since the previous row (unknown after a gap), in training residual sds",
    "spread": "standard deviation of the last `spread_minutes` (this row included), in training residual sds",
    "level": "the value itself, in training residual sds",
}
_NS_PER_MIN = 60_000_000_000


def minute_clock(n: int) -> np.ndarray:
    """Timestamps (int64 ns) of ``n`` rows one minute apart: the clock of a table without one."""
    return np.arange(n, dtype=np.int64) * _NS_PER_MIN


def median_step_minutes(ts_ns: np.ndarray) -> float:
    """The median interval between consecutive distinct timestamps, in minutes (1 when unknown)."""
    d = np.diff(np.asarray(ts_ns, dtype=np.int64))
    d = d[d > 0]
    return float(np.median(d)) / _NS_PER_MIN if len(d) else 1.0


def _rolling(values: np.ndarray, expr) -> np.ndarray:
    """Apply a per-column Polars expression to an (n, m) matrix; NaN in, NaN (null) out."""
    frame = pl.DataFrame(values, schema=[f"c{j}" for j in range(values.shape[1])], orient="row")
    out = frame.select(expr(pl.col(c).fill_nan(None)).alias(c) for c in frame.columns)
    return out.to_numpy().astype(np.float64)


def _rolling_by_time(values: np.ndarray, ts_ns: np.ndarray, expr) -> np.ndarray:
    """Like :func:`_rolling` with the timestamps in column ``_t`` for ``rolling_*_by``; ts sorted, unique."""
    cols = [f"c{j}" for j in range(values.shape[1])]
    frame = pl.DataFrame(values, schema=cols, orient="row").with_columns(
        _t=pl.Series(np.asarray(ts_ns, dtype=np.int64)).cast(pl.Datetime("ns")))
    out = frame.select(expr(pl.col(c).fill_nan(None)).alias(c) for c in cols)
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
    """Turn an (n_rows, n_metrics) matrix of values at sorted, unique timestamps into causal features.

    ``expectation_minutes`` and ``spread_minutes`` are durations on the clock, not row counts;
    a window needs a quarter of the rows it would hold at the median sampling interval.
    With ``baseline_minutes`` the expectation is whichever of the recent median and the median of
    that longer past is nearer the row: a return to the usual level after an event (while the
    recent median still holds the event) is not a departure, and a level shift still becomes
    normal once the recent median has followed it.
    """

    expectation_minutes: float = 60.0
    spread_minutes: float = 10.0
    kinds: tuple[str, ...] = (Z_KIND, "diff", "spread")
    #: measure the residual in the larger of the training sd and the sd of the expectation window,
    #: so the normal range widens causally as a series drifts or starts to move
    adaptive_scale: bool = True
    baseline_minutes: float | None = None

    def fit(self, values: np.ndarray, metrics: list[str], ts_ns: np.ndarray | None = None) -> CausalFeatures:
        """Learn each metric's residual scale from these (training) rows only."""
        values = np.asarray(values, dtype=np.float64)
        unknown = set(self.kinds) - set(FEATURE_KINDS)
        if unknown:
            raise ValueError(f"unknown feature kinds {sorted(unknown)}; known: {sorted(FEATURE_KINDS)}")
        if values.ndim != 2 or values.shape[1] != len(metrics):
            raise ValueError(f"need an (n, {len(metrics)}) matrix of values, got {values.shape}")
        ts_ns = minute_clock(len(values)) if ts_ns is None else np.asarray(ts_ns, dtype=np.int64)
        self.metrics_ = list(metrics)
        self.step_minutes_ = median_step_minutes(ts_ns)
        resid = values - self._expectation(values, ts_ns)
        with np.errstate(all="ignore"):
            sd = np.nanstd(resid, axis=0)
        self.scale_ = np.maximum(np.nan_to_num(sd), scale_floor(values))
        self.columns_ = [(m, k) for k in self.kinds for m in self.metrics_]
        return self

    def _min_rows(self, minutes: float, at_least: int) -> int:
        return max(at_least, int(minutes / self.step_minutes_ / 4))

    def residual(self, values: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
        """The residual z: distance from the expectation, in the metric's (adapted) scale."""
        raw = values - self._expectation(values, ts_ns)
        if not self.adaptive_scale:
            return raw / self.scale_
        window, k = f"{int(self.expectation_minutes * 60)}s", self._min_rows(self.expectation_minutes, 2)
        local = _rolling_by_time(values, ts_ns, lambda c: c.rolling_std_by(
            "_t", window, min_samples=k, closed="left"))
        return raw / np.maximum(self.scale_, np.nan_to_num(local))

    def _expectation(self, values: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
        # closed="left": the window is [t - w, t), so a row is never its own expectation
        k = self._min_rows(self.expectation_minutes, 1)
        recent = _rolling_by_time(values, ts_ns, lambda c: c.rolling_median_by(
            "_t", f"{int(self.expectation_minutes * 60)}s", min_samples=k, closed="left"))
        if not self.baseline_minutes:
            return recent
        usual = _rolling_by_time(values, ts_ns, lambda c: c.rolling_median_by(
            "_t", f"{int(self.baseline_minutes * 60)}s", min_samples=k, closed="left"))
        nearer = np.abs(values - usual) < np.abs(values - recent)
        return np.where(nearer & np.isfinite(usual), usual, recent)

    @property
    def past_minutes(self) -> float:
        """How far back a row's features look: the context a chunk of rows needs before it."""
        return max(self.expectation_minutes, self.baseline_minutes or 0.0) + self.spread_minutes

    def warmup(self, ts_ns: np.ndarray | None = None) -> int:
        """Rows at the start whose expectation window is not yet a quarter full (in time)."""
        if ts_ns is None:
            return max(1, int(self.expectation_minutes // 4))
        ts_ns = np.asarray(ts_ns, dtype=np.int64)
        edge = ts_ns[0] + int(self.expectation_minutes * _NS_PER_MIN / 4) if len(ts_ns) else 0
        return max(1, int(np.searchsorted(ts_ns, edge, side="left")))

    def transform(self, values: np.ndarray, ts_ns: np.ndarray | None = None) -> np.ndarray:
        """Feature matrix (n, len(columns_)); row t depends on rows at or before t only."""
        values = np.asarray(values, dtype=np.float64)
        ts_ns = minute_clock(len(values)) if ts_ns is None else np.asarray(ts_ns, dtype=np.int64)
        blocks = []
        for kind in self.kinds:
            if kind == Z_KIND:
                blocks.append(self.residual(values, ts_ns))
                continue
            elif kind == "diff":
                raw = np.vstack([np.full((1, values.shape[1]), np.nan), np.diff(values, axis=0)])
                gap = np.concatenate([[0], np.diff(ts_ns)]) > 3 * self.step_minutes_ * _NS_PER_MIN
                raw[gap] = np.nan  # a change across a gap is not a change per interval
            elif kind == "spread":
                window = f"{int(self.spread_minutes * 60)}s"
                k = self._min_rows(self.spread_minutes, 2)
                raw = _rolling_by_time(values, ts_ns, lambda c, w=window, k=k: c.rolling_std_by(
                    "_t", w, min_samples=k, closed="right"))
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
