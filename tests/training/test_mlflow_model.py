"""The training run in MLflow: a runs-table experiment, a named run, plain scores, plots, a pyfunc
that answers from the observations it is given exactly as the service does."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
from mlflow import MlflowClient

from training.bundle import ModelBundle
from training.mlflow_model import PYFUNC_SIGNATURE
from training.predict import predict_series
from training.registry import (
    CHAMPION,
    EXPERIMENT,
    MODEL_NAME,
    log_and_register,
    promote_version,
    use_experiment,
)
from training.run_record import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, HOLDOUT_SCORE_KEY
from training.train import TrainConfig, TrainResult

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"
HEAP, APDEX = "golden-app/jvm_heap_pct", "golden-app/apdex"


@pytest.fixture(scope="module")
def result() -> TrainResult:
    """The golden bundle as a training result (its manifest keeps the holdout MAEs)."""
    bundle = ModelBundle.load(GOLDEN)
    backtest = pl.DataFrame([{"series_id": sid, **{k: v for k, v in m.items() if k.startswith("mae_")}}
                             for sid, m in sorted(bundle.manifest["series"].items())])
    return TrainResult(bundle, backtest, {}, bundle.manifest["score_mae_ratio_vs_predict_linear"])


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_the_run_says_what_ran_with_plain_scores_and_plots(result, store):
    run_id, _ = log_and_register(result, TrainConfig(holdout_hours=12))
    client = MlflowClient(store, store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    run = client.get_run(run_id)
    assert run.info.run_name == "train 2026-10-12 00:00 to 2026-10-14 23:45 UTC, 2 series"
    metrics = run.data.metrics
    assert not [k for k in metrics if k.startswith("median_mae")]
    ratios = result.backtest["mae_model"] / result.backtest["mae_last_value"]
    assert metrics["mae_ratio_vs_last_value_median"] == pytest.approx(ratios.median())
    assert metrics["series_better_than_predict_linear"] == 2 and metrics[HOLDOUT_SCORE_KEY] < 1
    assert HOLDOUT_SCORE_KEY in run.data.tags["mlflow.note.content"]
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/crossing_golden-app_{m}.png" for m in ("jvm_heap_pct", "apdex")}


def test_an_existing_experiment_gets_the_runs_table_tag(store):
    mlflow.set_tracking_uri(store)
    mlflow.create_experiment(EXPERIMENT)
    use_experiment()
    tags = MlflowClient(store).get_experiment_by_name(EXPERIMENT).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_the_champion_pyfunc_answers_from_given_observations_as_the_service(result, store,
                                                                             tmp_path):
    _, version = log_and_register(result, TrainConfig(holdout_hours=12))
    promote_version(version)
    uri = f"models:/{MODEL_NAME}@{CHAMPION}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.outputs is not None and info.saved_input_example_info is not None
    model = mlflow.pyfunc.load_model(uri)

    tail_ts, tail_y = result.bundle.forecasters[HEAP].training_tail(60)
    recent = [(pd.Timestamp(t).tz_localize("UTC").to_pydatetime(), float(v) + 2.0)
              for t, v in zip(tail_ts, tail_y, strict=True)]
    request = pd.DataFrame([
        {"series_id": HEAP, "threshold": 68.0, "direction": "above", "horizon_minutes": 240.0,
         "recent": [{"ts": t.isoformat(), "value": v} for t, v in recent]},
        {"series_id": APDEX, "threshold": 0.9395, "direction": "below", "horizon_minutes": 240.0,
         "recent": None},
    ])
    out = model.predict(request)
    assert list(out.columns) == [c.name for c in PYFUNC_SIGNATURE.outputs.inputs]
    expected = [predict_series(result.bundle, HEAP, 68.0, "above", 240, recent=recent),
                predict_series(result.bundle, APDEX, 0.9395, "below", 240)]
    for row, p in zip(out.to_dict("records"), expected, strict=True):
        assert row["message"] == p.sentence()
        assert row["now"] == p.now.isoformat()
        for key in ("minutes_to_threshold", "earliest_minutes", "latest_minutes", "probability",
                    "level_correction", "trend_correction_per_min"):
            got, want = row[key], getattr(p, key)
            assert (want is None and np.isnan(got)) or got == want, key
    assert out.loc[0, "level_correction"] != 0  # the observations sent corrected the forecast

    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    answered = model.predict(example)
    assert answered.loc[0, "series_id"] == example.loc[0, "series_id"]
    assert len(example.loc[0, "recent"]) > 0


def test_models_registered_before_the_move_still_find_their_class():
    from training import mlflow_model, registry

    assert registry.BundleModel is mlflow_model.BundleModel
