"""End to end on the real stack: feature job, training into a temporary MLflow store, real bentoml serve."""

import json
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from mlflow import MlflowClient

from features import schema as s
from features.build import load_series, run_build
from serving.server import free_port, start_service, stop_service, wait_ready
from training.registry import CHAMPION, MODEL_NAME, log_and_register, promote_version
from training.train import TrainConfig, train_bundle

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
LEAK = "portal-demo/jvm_heap_pct"
LEAD = timedelta(hours=2)
#: the predicted crossing must land within this of the true one when asked 2 hours ahead
#: (the leak accelerates, so a trend model is late by about 30 min at 2 h and 70 min at 3 h)
TOLERANCE_MINUTES = 45


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Features from the committed sample, and a champion trained on portal-demo before the leak."""
    work = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    truth = json.loads((SAMPLE / "ground_truth.json").read_text())
    crossing = next(c for c in truth["crossings"] if c["series_id"] == LEAK)
    crossed_at = datetime.fromisoformat(crossing["crossed_at"].replace("Z", "+00:00"))
    run_build(SAMPLE / "export", work / "features", step="5m")
    series = load_series(work / "features")
    config = TrainConfig(until=crossed_at - LEAD, include=["portal-demo"], holdout_hours=12)
    result = train_bundle(series, config)
    _, version = log_and_register(result, config)
    promote_version(version, "end-to-end test")  # by hand: `train` never promotes
    yield {"work": work, "uri": uri, "series": series, "crossed_at": crossed_at,
           "version": version, "result": result}
    mp.undo()


@pytest.mark.slow
def test_champion_alias_is_set_in_the_registry(trained):
    client = MlflowClient(trained["uri"], trained["uri"])
    mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    assert str(mv.version) == trained["version"]
    assert set(trained["result"].bundle.forecasters) >= {LEAK}
    assert all(fc.kind_ == "prophet" for fc in trained["result"].bundle.forecasters.values())


@pytest.mark.slow
def test_real_service_predicts_the_leak_crossing(trained):
    asked = trained["crossed_at"] - LEAD
    recent = trained["series"].filter(
        (pl.col(s.SERIES_ID) == LEAK) & (pl.col(s.TS) <= asked)
        & (pl.col(s.TS) > asked - timedelta(minutes=90))
    ).drop_nulls(s.VALUE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(port, env={"MLFLOW_TRACKING_URI": trained["uri"]},
                         log_file=trained["work"] / "bentoml.log")
    try:
        wait_ready(proc, url)
        body = {"metric": "jvm_heap_pct", "labels": {"pod": "portal-demo-19-2xfkl"},
                "threshold": 90, "horizon_minutes": 360,
                "recent": [{"ts": t.isoformat(), "value": v}
                           for t, v in recent.select(s.TS, s.VALUE).iter_rows()]}
        answer = httpx.post(f"{url}/predict", json=body, timeout=60).json()
        unknown = httpx.post(f"{url}/predict", json={**body, "labels": {"service": "nope"}},
                             timeout=60)
        malformed = httpx.post(f"{url}/predict", json={"threshold": 90}, timeout=60)
        model = httpx.post(f"{url}/model", json={}, timeout=60).json()
    finally:
        stop_service(proc)
    assert proc.poll() is not None, "server still running after stop"
    assert answer["series_id"] == LEAK
    assert answer["model_version"] == f"{MODEL_NAME}/{trained['version']}"
    predicted = datetime.fromisoformat(answer["crossing_at"].replace("Z", "+00:00"))
    error = abs((predicted - trained["crossed_at"]).total_seconds()) / 60
    assert error <= TOLERANCE_MINUTES, answer
    assert answer["earliest_minutes"] <= answer["minutes_to_threshold"] <= (
        answer["latest_minutes"] or float("inf"))
    assert 0 <= answer["anomaly_score"] <= 1
    # a leak two hours out, sure to cross within six: the alert is on, by the bundle's rule
    assert answer["probability"] >= answer["alarm_probability"] and answer["alert"] is True
    assert "keep_firing_for" in answer["alert_rule"]
    assert unknown.status_code == 404 and "no model for series 'nope/jvm_heap_pct'" in unknown.text
    assert malformed.status_code == 400 and "series_id" in malformed.text
    assert model["model_version"] == answer["model_version"]
