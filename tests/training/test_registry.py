"""The registry: `train` registers without promoting; promote and rollback move `@champion` by hand."""

import dataclasses
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from training.registry import (
    CHAMPION,
    MODEL_NAME,
    champion_version,
    load_champion,
    log_and_register,
    promote_version,
    rollback,
)
from training.train import TrainConfig, train_bundle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data" / "sample"))
from make_golden_bundle import golden_series  # noqa: E402


@pytest.fixture(scope="module")
def result():
    return train_bundle(golden_series(), TrainConfig(holdout_hours=12, n_jobs=1,
                                                     forecaster={"min_history_hours": 24}))


def test_train_registers_but_never_moves_the_champion(result, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri, uri)
    config = TrainConfig(holdout_hours=12)

    run_id, version = log_and_register(result, config)
    assert version == "1" and champion_version(client) is None  # only the gate or a human moves it
    tags = client.get_run(run_id).data.tags
    assert tags["prealert.series_fitted"] == str(len(result.bundle.forecasters))
    assert tags["prealert.data_fingerprint"] == result.bundle.manifest["data_fingerprint"]

    failed = dataclasses.replace(result, failed={"golden-app/cpu_pct": "boom"})
    _, second = log_and_register(failed, config)
    assert client.get_run(client.get_model_version(MODEL_NAME, second).run_id).data.tags[
        "prealert.series_failed"] == "1"
    assert promote_version(version) is None
    assert promote_version(second) == version
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version == int(second)
    assert rollback() == (second, version)
    bundle = load_champion(tmp_path / "champion")
    assert bundle.manifest["registered_version"] == f"{MODEL_NAME}/{version}"
    assert set(bundle.forecasters) == set(result.bundle.forecasters)


def test_no_champion_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(LookupError, match="run `prealert train` first"):
        load_champion(tmp_path / "x")


def test_a_promotion_during_load_never_mislabels_the_bundle(result, tmp_path, monkeypatch):
    """The alias is resolved once: the bundle downloaded is the version the answer names."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = TrainConfig(holdout_hours=12)
    _, full = log_and_register(result, config)
    one = sorted(result.bundle.forecasters)[0]
    smaller = dataclasses.replace(result, bundle=dataclasses.replace(
        result.bundle, forecasters={one: result.bundle.forecasters[one]}))
    _, small = log_and_register(smaller, config)
    promote_version(full)

    resolve = MlflowClient.get_model_version_by_alias

    def resolve_then_promote(self, name, alias):
        mv = resolve(self, name, alias)
        # another process promotes between resolving and downloading
        self.set_registered_model_alias(MODEL_NAME, CHAMPION, small)
        return mv

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", resolve_then_promote)
    bundle = load_champion(tmp_path / "champion")
    assert bundle.manifest["registered_version"] == f"{MODEL_NAME}/{full}"
    assert set(bundle.forecasters) == set(result.bundle.forecasters)
