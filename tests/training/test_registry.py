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
    load_version,
    log_and_register,
    model_cache_dir,
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


def test_train_registers_but_never_moves_the_champion(result, tmp_path, monkeypatch, capfd, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri, uri)
    config = TrainConfig(holdout_hours=12)

    capfd.readouterr()
    with caplog.at_level("INFO", logger="training.registry"):
        run_id, version = log_and_register(result, config)
    # MLflow's "Successfully registered model" / "Created version" go to our log, not stderr
    assert "registered model" not in capfd.readouterr().err.lower()
    assert any("Created version '1'" in r.getMessage() for r in caplog.records)
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


def test_the_served_download_is_cached_per_version_and_pruned(result, tmp_path, monkeypatch):
    """Without a folder, versions stay in the model cache: Prophet is parsed on use, not at load,
    a second load reuses the download, and only the last two versions used are kept."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PREALERT_MODEL_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(holdout_hours=12)
    versions = [log_and_register(result, config)[1] for _ in range(3)]
    promote_version(versions[0])
    bundle = load_champion()
    cache = model_cache_dir()
    assert cache.is_relative_to(tmp_path / "cache") and [p.name for p in cache.iterdir()] == ["v1"]
    stamp = (cache / "v1" / "artifacts" / "bundle" / "manifest.json").stat().st_mtime_ns
    assert load_champion().manifest["registered_version"] == f"{MODEL_NAME}/1"
    assert (cache / "v1" / "artifacts" / "bundle" / "manifest.json").stat().st_mtime_ns == stamp
    prophets = [f for f in bundle.forecasters.values() if f.kind_ == "prophet"]
    assert prophets and not any(f.prophet_loaded for f in prophets)  # not parsed at load
    assert prophets[0].model_ is not None and prophets[0].prophet_loaded  # parsed from the cache

    load_version(versions[1])
    load_version(versions[2])
    assert sorted(p.name for p in cache.iterdir()) == ["v2", "v3"]


@pytest.mark.parametrize("mlflow_first", [False, True], ids=["quiet-then-import", "import-then-quiet"])
def test_a_new_store_is_created_without_mlflow_chatter(tmp_path, mlflow_first):
    """A scheduled job's stderr holds prealert's lines only, whichever of the two comes first."""
    import os
    import subprocess

    steps = ["from training.fanout import quiet_libraries", "quiet_libraries()"]
    if mlflow_first:  # MLflow imported (and its loggers set up) before prealert quiets them
        steps.insert(0, "import training.registry")
    steps += ["from training.registry import use_experiment", "use_experiment()"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-c", "; ".join(steps)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mlflow.db").exists()  # the store was made in this run
    assert "Creating initial MLflow database tables" not in done.stderr
    assert done.stderr.strip() == "", done.stderr
