"""MLflow as the system of record: log a training run, register its bundle, promote by alias."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.bundle import ModelBundle

# BundleModel stays importable from here: registered versions' copied pyfunc_entry.py import it
from training.mlflow_model import PYFUNC_SIGNATURE, BundleModel, input_example  # noqa: F401
from training.plots import log_crossing_plots
from training.run_record import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, log_holdout_scores, run_name
from training.train import TrainConfig, TrainResult

MODEL_NAME = "prealert"
EXPERIMENT = "prealert"
CHAMPION = "champion"
SCORE_KEY = "score_mae_ratio_vs_predict_linear"


def default_store() -> Path:
    """The local store: ``./mlflow`` under the current directory (the project root)."""
    return Path.cwd() / "mlflow"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store under ``./mlflow``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{default_store() / 'mlflow.db'}"


def use_experiment(name: str = EXPERIMENT) -> MlflowClient:
    """Point MLflow at the store and the experiment (created with local artifacts if new)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(name) is None:
        artifacts = None
        if uri.startswith("sqlite:///"):  # keep artifacts beside a local database
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        mlflow.create_experiment(name, artifact_location=artifacts,
                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    experiment = mlflow.set_experiment(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a store made before the tag was set
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return MlflowClient(uri, uri)


def _use_store() -> MlflowClient:
    return use_experiment(EXPERIMENT)


@dataclass
class Promotion:
    run_id: str
    version: str
    promoted: bool
    reason: str


def champion_score(client: MlflowClient) -> float | None:
    try:
        mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        return None
    run = client.get_run(mv.run_id)
    return run.data.metrics.get(SCORE_KEY)


def log_and_promote(result: TrainResult, config: TrainConfig, tolerance: float = 0.05) -> Promotion:
    """Log the run and register its bundle; move ``@champion`` only if it is no worse.

    Better means a lower median MAE ratio to predict_linear on the run's own holdout
    (within ``tolerance``), and every series trained. A run whose score is not finite is
    registered for inspection but never promoted.
    """
    client = _use_store()
    with mlflow.start_run(run_name=run_name(result)) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(config.as_params())
        mlflow.log_metric(SCORE_KEY, result.score)
        mlflow.log_metric("series_trained", len(result.bundle.forecasters))
        mlflow.log_metric("series_failed", len(result.failed))
        mlflow.log_metric("series_fallback", sum(
            fc.kind_ != "prophet" for fc in result.bundle.forecasters.values()))
        log_holdout_scores(result.backtest)
        mlflow.log_table(result.backtest.to_pandas(), "backtest.json")
        log_crossing_plots(result.bundle, n=3)
        bundle_dir = result.bundle.save(Path(tmp) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="bundle", python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"bundle": str(bundle_dir)}, signature=PYFUNC_SIGNATURE,
            input_example=input_example(result.bundle),
            registered_model_name=MODEL_NAME,
        )
        version = str(info.registered_model_version)
        current = champion_score(client)
        if not math.isfinite(result.score):
            promoted, reason = False, f"score {result.score} is not finite"
        elif result.failed:
            promoted, reason = False, f"{len(result.failed)} series failed to train"
        elif current is None:
            promoted, reason = True, "no champion yet"
        elif result.score <= current * (1 + tolerance):
            promoted, reason = True, f"score {result.score:.4f} vs champion {current:.4f}"
        else:
            promoted, reason = False, f"score {result.score:.4f} worse than champion {current:.4f}"
        if promoted:
            client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        mlflow.set_tags({"promoted": str(promoted), "promotion_reason": reason})
        return Promotion(run.info.run_id, version, promoted, reason)


def load_champion(dst: str | Path | None = None) -> ModelBundle:
    """Download and load the ``@champion`` bundle; the bundle knows its registry version.

    The bundle is read fully into memory, so without ``dst`` the download goes to a temporary
    folder that is removed before returning (nothing accumulates in /tmp across starts).
    """
    client = _use_store()
    try:
        mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException as exc:
        raise LookupError(
            f"no '{MODEL_NAME}@{CHAMPION}' in {tracking_uri()}: run `prealert train` first"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="prealert-champion-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAME}@{CHAMPION}", dst_path=str(dst or tmp)
        )
        bundle = ModelBundle.load(Path(local) / "artifacts" / "bundle")
    bundle.manifest["registered_version"] = f"{MODEL_NAME}/{mv.version}"
    return bundle
