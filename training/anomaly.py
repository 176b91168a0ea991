"""Per-workload isolation forest over the metrics' standardized residuals, scores calibrated to [0, 1]."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest

N_QUANTILES = 1001


class WorkloadAnomalyDetector:
    """Score how unusual one minute of a workload looks across all its metrics.

    Input rows are residual z-scores, ``(value - expected) / sigma`` per metric, with the
    expectation from each series' forecaster, so daily peaks are normal and only departures
    from them count. The score is the share of training minutes that looked less anomalous:
    0.99 means "rarer than 99% of what the model was trained on".
    """

    def __init__(self, n_estimators: int = 200, max_samples: int = 256, random_state: int = 0):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, z: np.ndarray, metrics: list[str]) -> WorkloadAnomalyDetector:
        """Fit on an (n_minutes, n_metrics) matrix of residual z-scores; NaN means unknown (0)."""
        z = np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0)
        if z.ndim != 2 or z.shape[1] != len(metrics) or z.shape[0] < 10:
            raise ValueError(f"need an (n>=10, {len(metrics)}) matrix, got {z.shape}")
        self.metrics_ = list(metrics)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, z.shape[0]),
            random_state=self.random_state,
        ).fit(z)
        raw = -self.forest_.score_samples(z)
        self.train_quantiles_ = np.quantile(raw, np.linspace(0, 1, N_QUANTILES))
        return self

    def score(self, z: np.ndarray) -> np.ndarray:
        """Calibrated anomaly score in [0, 1] for each row."""
        z = np.nan_to_num(np.atleast_2d(np.asarray(z, dtype=np.float64)), nan=0.0)
        raw = -self.forest_.score_samples(z)
        return np.searchsorted(self.train_quantiles_, raw, side="right") / N_QUANTILES

    def explain(self, z_row: np.ndarray, top: int = 3) -> list[dict]:
        """The metrics furthest from their expectation in this row, largest first."""
        z_row = np.nan_to_num(np.asarray(z_row, dtype=np.float64), nan=0.0)
        order = np.argsort(-np.abs(z_row))[:top]
        return [{"metric": self.metrics_[i], "z": round(float(z_row[i]), 3)} for i in order]

    # --- persistence: the forest via joblib, stamped with the scikit-learn version -----------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.forest_, folder / "forest.joblib")
        np.save(folder / "train_quantiles.npy", self.train_quantiles_)
        meta = {"metrics": self.metrics_, "sklearn_version": sklearn.__version__,
                "params": {k: v for k, v in vars(self).items() if not k.endswith("_")}}
        (folder / "detector.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> WorkloadAnomalyDetector:
        meta = json.loads((folder / "detector.json").read_text())
        if meta["sklearn_version"] != sklearn.__version__:
            raise ValueError(
                f"{folder}: isolation forest saved with scikit-learn {meta['sklearn_version']}, "
                f"this environment has {sklearn.__version__}; retrain with `prealert train`"
            )
        self = cls(**meta["params"])
        self.metrics_ = meta["metrics"]
        self.forest_ = joblib.load(folder / "forest.joblib")
        self.train_quantiles_ = np.load(folder / "train_quantiles.npy")
        return self
