"""What a training run records in MLflow besides the model: its name, its holdout scores and their meaning."""

from __future__ import annotations

from datetime import datetime

import mlflow
import polars as pl

from training.train import TrainResult

#: MLflow 3's UI picks an experiment's first page by this tag: the runs table for model
#: development; without it the UI guesses, and it opened prealert's on the GenAI "Traces" page
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: the median over series of prealert's holdout MAE divided by predict_linear's
HOLDOUT_SCORE_KEY = "holdout_mae_ratio_vs_predict_linear"

#: the run's description in the MLflow UI: what the scores are and why no raw MAE is pooled
SCORES_NOTE = """\
**Holdout scores.** The last `holdout_hours` of history are replayed as deployed: every
`origin_every_minutes` each predictor forecasts the next `horizon_minutes` from the data up to
that origin; its MAE is taken per series, in that series' own unit.

- `holdout_mae_ratio_vs_predict_linear`: the median over series of prealert's MAE divided by
  `predict_linear`'s on the same series. Below 1: prealert forecasts better. It describes the
  forecast's values, not the alerts: promotion is decided by `prealert retrain`'s gate, which
  replays the alerts (F1, false alarms per day, MAE of minutes to the threshold).
- `mae_ratio_vs_last_value_median`: the same against "the value stays where it is".
- `series_better_than_predict_linear` / `series_better_than_last_value`: how many series have a
  ratio below 1.

Raw MAEs are per series in `backtest.json`. No median of raw MAEs across series is logged: the
series are in different units (%, ms, 1/s, APDEX), so such a median says nothing, and it can
even rank the predictors opposite to the ratios above.
"""


def run_name(result: TrainResult) -> str:
    """What ran: the training window and how many series, e.g. for the MLflow runs table."""
    window = result.bundle.manifest["training_window"]
    start, end = (datetime.fromisoformat(window[k]) for k in ("start", "end"))
    name = f"train {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC, " \
           f"{len(result.bundle.forecasters)} series"
    return name + (f", {len(result.failed)} failed" if result.failed else "")


def log_holdout_scores(backtest: pl.DataFrame) -> dict[str, float]:
    """Log the unit-free holdout scores beside the promotion score, with the run's note."""
    ratios = {k: backtest["mae_model"] / backtest[f"mae_{k}"]
              for k in ("predict_linear", "last_value")}
    scores = {
        "mae_ratio_vs_last_value_median": float(
            ratios["last_value"].drop_nans().drop_nulls().median() or float("nan")),
        "series_better_than_predict_linear": float((ratios["predict_linear"] < 1).sum()),
        "series_better_than_last_value": float((ratios["last_value"] < 1).sum()),
    }
    mlflow.log_metrics(scores)
    mlflow.set_tag("mlflow.note.content", SCORES_NOTE)
    return scores
