"""The bundle as an MLflow pyfunc model: what it takes, what it answers, and an example request."""

from __future__ import annotations

import math
from datetime import datetime

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array, Object, Property

from features import schema as s
from training.bundle import ModelBundle
from training.predict import Prediction, predict_series

#: the observations a request may send, as the HTTP API takes them: ``[{"ts": ISO, "value": x}]``
RECENT = Array(Object([Property("ts", "string"), Property("value", "double")]))
DRIVERS = Array(Object([Property("component", "string"), Property("meaning", "string"),
                        Property("change", "double")]))
ANOMALY_METRICS = Array(Object([Property("metric", "string"), Property("z", "double"),
                                Property("contribution", "double")]))

PYFUNC_SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec("string", "series_id"),
        ColSpec("double", "threshold"),
        ColSpec("string", "direction", required=False),  # "above" (default) or "below"
        ColSpec("double", "horizon_minutes", required=False),  # default 60
        # the latest observations: they set "now" and correct the forecast in real time
        ColSpec(RECENT, "recent", required=False),
        ColSpec("string", "now", required=False),  # ISO time; without observations, default end of training
    ]),
    outputs=Schema([
        ColSpec("string", "series_id"),
        ColSpec("string", "message"),
        ColSpec("double", "minutes_to_threshold", required=False),
        ColSpec("double", "earliest_minutes", required=False),
        ColSpec("double", "latest_minutes", required=False),
        ColSpec("double", "probability"),
        ColSpec("boolean", "already_crossed"),
        ColSpec("boolean", "alert"),
        ColSpec("double", "alarm_probability"),
        ColSpec("string", "alert_rule"),
        ColSpec("string", "now"),
        ColSpec("string", "crossing_at", required=False),
        ColSpec("string", "earliest_at", required=False),
        ColSpec("string", "latest_at", required=False),
        ColSpec("double", "threshold"),
        ColSpec("string", "direction"),
        ColSpec("double", "horizon_minutes"),
        ColSpec("string", "driver", required=False),
        ColSpec(DRIVERS, "drivers"),
        ColSpec("double", "level_correction"),
        ColSpec("double", "trend_correction_per_min"),
        ColSpec("double", "anomaly_score", required=False),
        ColSpec(ANOMALY_METRICS, "anomaly_top_metrics"),
        ColSpec("string", "model_kind"),
        ColSpec("string", "model_version"),
    ]),
)


def answer_row(p: Prediction) -> dict:
    """One output row: the prediction's fields, times as ISO strings, plus its sentence."""
    row = {}
    for spec in PYFUNC_SIGNATURE.outputs.inputs:
        value = p.sentence() if spec.name == "message" else getattr(p, spec.name)
        row[spec.name] = value.isoformat() if isinstance(value, datetime) else value
    return row


def _given(value) -> bool:
    """Whether an optional cell was filled (pandas gives None or NaN for a missing one)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class BundleModel(mlflow.pyfunc.PythonModel):
    """The bundle as an MLflow pyfunc: ``mlflow.pyfunc.load_model('models:/prealert@champion')``.

    ``predict`` takes rows of ``series_id, threshold`` and optionally ``direction``,
    ``horizon_minutes``, ``recent`` (observations ``[{"ts", "value"}]``, as the HTTP API
    takes them) and ``now``; it answers one row per request as the service does (see
    :data:`PYFUNC_SIGNATURE` for the columns).
    """

    def load_context(self, context):
        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        for rec in model_input.to_dict("records"):
            recent = rec.get("recent")
            recent = [(o["ts"], float(o["value"])) for o in recent] if _given(recent) else None
            direction = rec.get("direction")
            horizon = rec.get("horizon_minutes")
            p = predict_series(self.bundle, rec["series_id"], float(rec["threshold"]),
                               direction if _given(direction) else "above",
                               float(horizon) if _given(horizon) else 60.0, recent=recent,
                               now=rec["now"] if _given(rec.get("now")) else None)
            rows.append(answer_row(p))
        return pd.DataFrame(rows, columns=[c.name for c in PYFUNC_SIGNATURE.outputs.inputs])


def input_example(bundle: ModelBundle, n_recent: int = 6) -> pd.DataFrame:
    """A request for the bundle's first series with its catalogue threshold and direction.

    Its observations are the last ``n_recent`` points the model trained on (none for a
    linear fallback, which keeps no training data).
    """
    sid = sorted(bundle.forecasters)[0]
    model = bundle.forecasters[sid]
    spec = s.spec_for(s.split_series_id(sid)[1])
    ts, values = model.training_tail(n_recent * model.step_minutes_)
    recent = [{"ts": pd.Timestamp(t).tz_localize("UTC").isoformat(), "value": float(v)}
              for t, v in list(zip(ts, values, strict=True))[-n_recent:]]
    threshold = spec.threshold if math.isfinite(spec.threshold) else float(max(values, default=0.0))
    return pd.DataFrame([{"series_id": sid, "threshold": threshold, "direction": spec.direction,
                          "horizon_minutes": 60.0, "recent": recent}])
