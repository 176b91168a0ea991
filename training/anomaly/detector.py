"""Per-workload isolation forest over the metrics' residuals (and features), scored as a tail probability."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest

from training.anomaly.flat_forest import FlatForest
from training.anomaly.tail import TailModel, bounded

N_QUANTILES = 1001
#: the feature kind that says how far a metric is from its expectation (residual z-score)
Z_KIND = "z"
#: detector folder format: 1 = joblib pickle (refused: loading it could run code), 2 = .npz arrays
DETECTOR_FORMAT = 2
_BIG = 1e30
#: the forest's raw score is in (0, 1]: beyond the training tail, 0.005 more is one more decade
FOREST_TAIL_SCALE = 0.005


class WorkloadAnomalyDetector:
    """Score how unusual one minute of a workload looks across all its metrics.

    Input rows are residual z-scores, ``(value - expected) / sigma`` per metric, with the
    expectation from each series' forecaster, so daily peaks are normal and only departures
    from them count. :meth:`surprise` is ``-log10`` of the probability that a training minute
    looked at least this anomalous to the forest, the tail beyond the training extremes a
    generalized Pareto fit (:class:`~training.anomaly.tail.TailModel`): 3 means "expected once
    every 1,000 minutes". :meth:`score` maps it to [0, 1) as ``s / (1 + s)``.

    Rows may also carry more features per metric (rate of change, rolling spread, ...): pass
    ``columns`` to :meth:`fit` as ``(metric, kind)`` pairs, one per column; the column of kind
    ``"z"`` is the metric's residual z-score. Scoring walks the trees with numpy
    (:class:`~training.anomaly.flat_forest.FlatForest`, equal to scikit-learn's ``score_samples``).
    """

    def __init__(self, n_estimators: int = 200, max_samples: int = 256, random_state: int = 0):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, z: np.ndarray, metrics: list[str],
            columns: list[tuple[str, str]] | None = None) -> WorkloadAnomalyDetector:
        """Fit on an (n_minutes, n_columns) matrix; by default one residual z column per metric.

        NaN means unknown: a z column counts as at its expectation (0), any other feature as
        its training median.
        """
        z = np.asarray(z, dtype=np.float64)
        columns = [(m, Z_KIND) for m in metrics] if columns is None else [tuple(c) for c in columns]
        if z.ndim != 2 or z.shape[1] != len(columns) or z.shape[0] < 10:
            raise ValueError(f"need an (n>=10, {len(columns)}) matrix, got {z.shape}")
        unknown = sorted({m for m, _ in columns} - set(metrics))
        if unknown:
            raise ValueError(f"columns name metrics not in `metrics`: {unknown}")
        self.metrics_ = list(metrics)
        self.columns_ = columns
        with warnings.catch_warnings():  # an all-NaN column is allowed: its fill is 0
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(np.where(np.isfinite(z), z, np.nan), axis=0)
        self.fill_ = np.array([0.0 if k == Z_KIND or not np.isfinite(v) else float(v)
                               for (_, k), v in zip(columns, med, strict=True)])
        x = self._filled(z)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, x.shape[0]),
            random_state=self.random_state,
        ).fit(x)
        self.flat_ = FlatForest.from_sklearn(self.forest_)
        raw = self.raw_score(x)
        self.train_raw_ = raw  # the training rows' raw scores (not saved)
        self.train_quantiles_ = np.quantile(raw, np.linspace(0, 1, N_QUANTILES))
        self.tail_ = TailModel.fit(raw, FOREST_TAIL_SCALE)
        return self

    def _filled(self, z: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        if z.shape[1] != len(self.columns_):
            raise ValueError(f"expected rows of {len(self.columns_)} columns, got {z.shape}")
        # NaN is unknown (the column's baseline); infinities are clipped so the forest can split
        return np.clip(np.where(np.isnan(z), self.fill_, z), -_BIG, _BIG)

    def raw_score(self, z: np.ndarray) -> np.ndarray:
        """The isolation forest's own anomaly score (``-score_samples``, in (0, 1], higher is rarer)."""
        return -self.flat_.score_samples(self._filled(z))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """A raw forest score as the bounded surprise ``s / (1 + s)`` (see :meth:`score`)."""
        return bounded(self.tail_.surprise(raw))

    def surprise(self, z: np.ndarray) -> np.ndarray:
        """``-log10 P(a training minute scores at least this)`` per row: 2 = once every 100 minutes."""
        return self.tail_.surprise(self.raw_score(z))

    def score(self, z: np.ndarray) -> np.ndarray:
        """Anomaly score in [0, 1) per row: ``s / (1 + s)`` of the surprise ``s`` (0.75: once in 1,000)."""
        return bounded(self.surprise(z))

    def contributions(self, z_row: np.ndarray) -> np.ndarray:
        """Per metric, how much the raw score drops when that metric is put back at its expectation.

        Each metric's columns are replaced by their baseline (z = 0, other features their
        training median) and the row is re-scored; the drop in raw anomaly score is the
        metric's contribution (path-length difference through the same trees). Positive means
        the metric makes the minute look more anomalous.
        """
        row = self._filled(z_row)[0]
        col_metric = np.array([self.metrics_.index(m) for m, _ in self.columns_])
        probes = np.repeat(row[None, :], len(self.metrics_) + 1, axis=0)
        for i in range(len(self.metrics_)):
            mask = col_metric == i
            probes[i + 1, mask] = self.fill_[mask]
        raw = self.raw_score(probes)
        return raw[0] - raw[1:]

    def z_of_metrics(self, z_row: np.ndarray) -> np.ndarray:
        """Each metric's residual z-score in a row (NaN when the rows carry no z column for it)."""
        row = np.atleast_2d(np.asarray(z_row, dtype=np.float64))[0]
        out = np.full(len(self.metrics_), np.nan)
        for j, (m, k) in enumerate(self.columns_):
            if k == Z_KIND:
                out[self.metrics_.index(m)] = row[j] if np.isfinite(row[j]) else 0.0
        return out

    def explain(self, z_row: np.ndarray, top: int = 3) -> list[dict]:
        """The metrics behind this row's score, largest contribution first.

        Each entry: ``metric``; ``z``, its distance from expectation in residual standard
        deviations; ``contribution``, the drop in raw score when it is put back at its
        expectation (see :meth:`contributions`). Ties (e.g. an ordinary minute, where every
        contribution is about 0) are broken by ``|z|``.
        """
        return self.ranked(self.contributions(z_row), z_row, top)

    def ranked(self, contrib: np.ndarray, z_row: np.ndarray, top: int = 3) -> list[dict]:
        """:meth:`explain`'s entries from the row's per-metric ``contrib`` (however scored)."""
        z = self.z_of_metrics(z_row)
        az = np.nan_to_num(np.abs(z), nan=0.0)
        order = np.lexsort((-az, -np.maximum(np.round(contrib, 9), 0.0)))[:top]
        return [{"metric": self.metrics_[i], "z": round(float(np.nan_to_num(z[i])), 3),
                 "contribution": round(float(contrib[i]), 4)} for i in order]

    # --- persistence: the flattened forest as .npz and JSON, never a pickle ---------------------
    #: the files of a detector folder (a bundle's manifest has a checksum for each)
    FILES = ("detector.json", "forest.npz", "train_quantiles.npy")

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.flat_.save(folder / "forest.npz")
        np.save(folder / "train_quantiles.npy", self.train_quantiles_)
        meta = {"format": DETECTOR_FORMAT, "metrics": self.metrics_,
                "columns": [list(c) for c in self.columns_], "fill": self.fill_.tolist(),
                "tail": self.tail_.to_dict(),
                "sklearn_version": sklearn.__version__,
                "params": {k: v for k, v in vars(self).items() if not k.endswith("_")}}
        (folder / "detector.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> WorkloadAnomalyDetector:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "detector.json").read_text())
            fmt = int(meta.get("format", 1))
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"{folder / 'detector.json'}: unreadable detector ({exc})") from exc
        if fmt > DETECTOR_FORMAT:
            raise ValueError(f"{folder}: detector format {fmt} is newer than this prealert reads "
                             f"({DETECTOR_FORMAT}); upgrade prealert or retrain")
        if fmt < 2:
            raise ValueError(f"{folder}: detector format {fmt} is a pickled forest, which prealert "
                             "refuses to load (it could run code); retrain with `prealert train`")
        self = cls(**meta["params"])
        self.metrics_ = meta["metrics"]
        self.columns_ = [tuple(c) for c in meta.get("columns", [[m, Z_KIND] for m in self.metrics_])]
        self.fill_ = np.asarray(meta.get("fill", [0.0] * len(self.columns_)), dtype=np.float64)
        self.flat_ = FlatForest.load(folder / "forest.npz")
        self.train_quantiles_ = np.load(folder / "train_quantiles.npy", allow_pickle=False)
        # folders written before the tail model carry only the quantiles: fit the tail to them
        self.tail_ = (TailModel.from_dict(meta["tail"]) if "tail" in meta
                      else TailModel.fit(self.train_quantiles_, FOREST_TAIL_SCALE))
        return self
