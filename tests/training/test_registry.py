"""Promotion by alias: a worse or partly failed retrain never replaces the champion."""

import dataclasses
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from training.registry import CHAMPION, MODEL_NAME, load_champion, log_and_promote
from training.train import TrainConfig, train_bundle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data" / "sample"))
from make_golden_bundle import golden_series  # noqa: E402


@pytest.fixture(scope="module")
def result():
    return train_bundle(golden_series(), TrainConfig(holdout_hours=12, n_jobs=1,
                                                     forecaster={"min_history_hours": 24}))


def test_champion_moves_only_for_a_run_that_is_no_worse(result, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri, uri)
    config = TrainConfig(holdout_hours=12)

    first = log_and_promote(result, config)
    assert first.promoted and first.reason == "no champion yet"

    worse = dataclasses.replace(result, score=result.score * 1.5)
    second = log_and_promote(worse, config)
    assert not second.promoted and "worse than champion" in second.reason

    failed = dataclasses.replace(result, failed={"golden-app/cpu_pct": "boom"})
    third = log_and_promote(failed, config)
    assert not third.promoted and "failed to train" in third.reason

    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version == int(first.version)
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == 3  # all kept for inspection

    better = dataclasses.replace(result, score=result.score * 0.9)
    fourth = log_and_promote(better, config)
    assert fourth.promoted
    bundle = load_champion(tmp_path / "champion")
    assert bundle.manifest["registered_version"] == f"{MODEL_NAME}/{fourth.version}"
    assert set(bundle.forecasters) == set(result.bundle.forecasters)


def test_no_champion_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(LookupError, match="run `prealert train` first"):
        load_champion(tmp_path / "x")
