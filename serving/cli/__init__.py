"""The ``prealert`` command: thin wrappers over functions a notebook can import."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from serving.cli import anomaly as cli_anomaly
from serving.cli import evaluate as cli_evaluate
from serving.cli import features as cli_features
from serving.cli.common import FOR_CHOICES_HELP, KEEP_FIRING_HELP, alert_rule
from serving.cli.common import fail as _fail

ENGINE_HELP = ("Where series are fitted: 'local' (a process pool of --n-jobs) or 'ray' "
               "(the cluster at RAY_ADDRESS, else a local Ray of --n-jobs CPUs).")

app = typer.Typer(help="prealert: minutes-to-threshold predictions and anomaly scores.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
features_app = typer.Typer(help="Feature jobs.", no_args_is_help=True)
app.add_typer(features_app, name="features")
features_app.command("build")(cli_features.features_build)
app.command("evaluate")(cli_evaluate.evaluate)
app.command("score-anomalies")(cli_anomaly.score_anomalies)
app.command("evaluate-anomalies")(cli_anomaly.evaluate_anomalies)

@app.callback()
def _quiet_libraries() -> None:
    """Runs before every command: no usage tracking, no download progress bars."""
    for key, value in (("BENTOML_DO_NOT_TRACK", "true"),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        os.environ.setdefault(key, value)


@app.command()
def train(
    features: Annotated[Path, typer.Option(help="Output folder of `prealert features build`.")],
    until: Annotated[datetime | None, typer.Option(help="Train on data before this UTC time.")] = None,
    include: Annotated[list[str], typer.Option(help="Series id or entity to train (repeat).")] = [],  # noqa: B006
    holdout_hours: Annotated[float, typer.Option(help="Final stretch replayed by the backtest.")] = 24.0,
    horizon_minutes: Annotated[int, typer.Option(help="Backtest forecast horizon.")] = 60,
    n_jobs: Annotated[int, typer.Option(envvar="PREALERT_N_JOBS", help="Parallel fits.")] = 2,
    save_bundle: Annotated[Path | None, typer.Option(help="Also write the bundle here.")] = None,
    keep_firing_minutes: Annotated[float, typer.Option(help=KEEP_FIRING_HELP)] = 15.0,
    for_choices: Annotated[str, typer.Option(help=FOR_CHOICES_HELP)] = "0,5,10,15,20",
    engine: Annotated[str, typer.Option(envvar="PREALERT_ENGINE", help=ENGINE_HELP)] = "local",
    series_time_limit: Annotated[float, typer.Option(
        help="Seconds one series may take; past it, it is served by the linear fallback.")] = 300.0,
    verbose: Annotated[bool, typer.Option(help="Let cmdstanpy, Prophet, MLflow and Ray log.")] = False,
) -> None:
    """Fit every series and detector, backtest, log to MLflow, promote @champion if better."""
    from features.build import load_series
    from training.fanout import quiet_libraries
    from training.progress import run_with_progress
    from training.registry import log_and_promote, tracking_uri
    from training.train import TrainConfig, train_bundle

    quiet_libraries(verbose)
    try:
        config = TrainConfig(until=until, include=include, holdout_hours=holdout_hours,
                             horizon_minutes=horizon_minutes, n_jobs=n_jobs, engine=engine,
                             series_time_limit_seconds=series_time_limit,
                             alert_rule=alert_rule(keep_firing_minutes, for_choices))
        series = load_series(features)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    with run_with_progress() as progress:  # the MLflow run shows progress while it trains
        try:
            result = train_bundle(series, config, progress=progress, verbose=verbose)
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            _fail(str(exc))
        if save_bundle:
            result.bundle.save(save_bundle)
        promo = log_and_promote(result, config)
    typer.echo(f"{len(result.bundle.forecasters)} series trained, {len(result.failed)} failed; "
               f"backtest MAE ratio to predict_linear {result.score:.3f}")
    typer.echo(f"run {promo.run_id} in {tracking_uri()}: version {promo.version}, "
               f"promoted={promo.promoted} ({promo.reason})")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port on the host.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    bundle: Annotated[Path | None, typer.Option(help="Serve this bundle folder, not @champion.")] = None,
) -> None:
    """Run the BentoML service in the foreground (Ctrl-C stops it)."""
    from serving.server import start_service, stop_service

    proc = start_service(port, host, bundle)
    typer.echo(f"serving on http://{host}:{port} (pid {proc.pid}); POST /predict, docs at /docs")
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_service(proc)
    if proc.returncode not in (0, -15, None):
        raise typer.Exit(code=1)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where features and logs go.")] = Path(".prealert-work"),
    lead_hours: Annotated[float, typer.Option(help="Ask this long before each true crossing.")] = 2.0,
    horizon_minutes: Annotated[float, typer.Option(help="Prediction horizon.")] = 360.0,
) -> None:
    """Sample data -> features -> train (MLflow) -> bentoml serve -> answers vs ground truth."""
    from serving.cli.demo import run_demo

    workdir.mkdir(parents=True, exist_ok=True)
    run_demo(workdir, lead_hours=lead_hours, horizon_minutes=horizon_minutes, echo=typer.echo)


if __name__ == "__main__":
    app()
