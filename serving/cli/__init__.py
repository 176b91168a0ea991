"""The ``prealert`` command: thin wrappers over functions a notebook can import."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from serving.cli import anomaly as cli_anomaly
from serving.cli import evaluate as cli_evaluate
from serving.cli import features as cli_features
from serving.cli import registry as cli_registry
from serving.cli.common import (
    ENGINE_HELP,
    FOR_CHOICES_HELP,
    HOLIDAYS_HELP,
    KEEP_FIRING_HELP,
    TIMEZONE_HELP,
    alert_rule,
    calendar,
)
from serving.cli.common import fail as _fail
from serving.cli.prometheus import register as register_prometheus

app = typer.Typer(help="prealert: minutes-to-threshold predictions and anomaly scores.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
features_app = typer.Typer(help="Feature jobs.", no_args_is_help=True)
app.add_typer(features_app, name="features")
features_app.command("build")(cli_features.features_build)
app.command("evaluate")(cli_evaluate.evaluate)
app.command("score-anomalies")(cli_anomaly.score_anomalies)
app.command("evaluate-anomalies")(cli_anomaly.evaluate_anomalies)
register_prometheus(app)  # export prometheus, watch
app.command("retrain")(cli_registry.retrain)
app.command("promote")(cli_registry.promote)
app.command("rollback")(cli_registry.rollback)

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
    timezone: Annotated[str, typer.Option(envvar="PREALERT_TIMEZONE", help=TIMEZONE_HELP)] = "Asia/Seoul",
    holidays: Annotated[str, typer.Option(envvar="PREALERT_HOLIDAYS", help=HOLIDAYS_HELP)] = "KR",
    series_time_limit: Annotated[float, typer.Option(
        help="Seconds one series may take; past it, it is served by the linear fallback.")] = 300.0,
    verbose: Annotated[bool, typer.Option(help="Let cmdstanpy, Prophet, MLflow and Ray log.")] = False,
) -> None:
    """Fit every series and detector, log the run and register the bundle; never promotes.

    `prealert retrain` promotes through the gate; `prealert promote VERSION` by hand.
    """
    from features import schema as s
    from features.build import load_series
    from training.fanout import quiet_libraries
    from training.lock import LockBusy
    from training.progress import run_with_progress
    from training.registry import champion_version, load_champion, log_and_register, tracking_uri
    from training.retrain import served_calibrations, staging_dir, writing_registry
    from training.train import TrainConfig, train_bundle

    quiet_libraries(verbose)
    try:
        config = TrainConfig(until=until, include=include, holdout_hours=holdout_hours,
                             horizon_minutes=horizon_minutes, n_jobs=n_jobs, engine=engine,
                             series_time_limit_seconds=series_time_limit,
                             alert_rule=alert_rule(keep_firing_minutes, for_choices),
                             forecaster=calendar(timezone, holidays))
        series = load_series(features)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    try:
        with writing_registry("prealert train") as (client, notes):
            for note in notes:
                typer.echo(note)
            # alarm levels are shrunk toward their metric kind's pool and the champion's, as
            # `prealert retrain` does, so a version promoted by hand does not swing them either
            serving = champion_version(client)
            champion = load_champion(staging_dir() / "champion", series="lazy") if serving else None
            previous = served_calibrations(champion, set(series[s.SERIES_ID].unique()))
            typer.echo(f"alarm levels of {len(previous)} series shrunk toward champion v{serving}'s and "
                       "their metric kind's pooled level" if previous else
                       "alarm levels shrunk toward their metric kind's pooled level (no champion)")
            with run_with_progress() as progress:  # the MLflow run shows progress while it trains
                result = train_bundle(series, config, progress=progress, verbose=verbose,
                                      previous=previous)
                if save_bundle:
                    result.bundle.save(save_bundle)
                run_id, version = log_and_register(result, config, staging_dir())
    except LockBusy as exc:
        typer.secho(f"skipped: {exc}", fg="yellow", err=True)
        raise typer.Exit(code=4) from None
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"{len(result.bundle.forecasters)} series trained, {len(result.failed)} failed; "
               f"backtest MAE ratio to predict_linear {result.score:.3f}")
    typer.echo(f"run {run_id} in {tracking_uri()}: registered version {version}, not promoted "
               f"(`prealert train` never moves @champion: `prealert retrain` promotes through the "
               f"gate, `prealert promote {version}` by hand)")


class _Terminated(Exception):
    """SIGTERM or SIGINT arrived: stop the server."""


#: set once the server is being stopped: later signals are no-ops then
_stopping = {"now": False}


def _raise_terminated(signum, frame) -> None:
    # only the first signal counts: more (`uv run` forwards the one it gets, a pod's kill may
    # signal the group) must not cut the stop short. Not by ignoring them with signal.signal:
    # one already pending is then reported as "ignored due to race condition", with a traceback
    if _stopping["now"]:
        return
    _stopping["now"] = True
    raise _Terminated


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port on the host.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    bundle: Annotated[Path | None, typer.Option(
        exists=True, file_okay=False, help="Serve this bundle folder, not @champion.")] = None,
    log_file: Annotated[Path | None, typer.Option(
        help="Write the server's output here (appended); default: this terminal.")] = None,
    start_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the model to load before giving up.")] = 300.0,
    access_log: Annotated[bool, typer.Option(
        "--access-log", help="Log every request (BentoML's access log; off by default: it costs a share "
        "of each request). The same as PREALERT_ACCESS_LOG=1.")] = False,
) -> None:
    """Run the BentoML service in the foreground until Ctrl-C or SIGTERM stops it.

    Exit codes: 0 stopped on request; 1 the service failed to start (the reason is printed) or
    died; 2 a bad invocation (e.g. the port is taken).
    """
    from serving.http_edge import ACCESS_LOG_ENV, TOKEN_ENV, api_token, max_body_bytes, max_concurrency
    from serving.http_edge import access_log as access_log_env
    from serving.predictor import max_batch
    from serving.reload import reload_seconds
    from serving.server import (
        ServiceFailed,
        is_loopback,
        port_in_use,
        start_service,
        stop_service,
        wait_ready,
    )

    try:
        max_body_bytes(), max_concurrency(), max_batch(), reload_seconds(), access_log_env()
        token = api_token()
    except ValueError as exc:
        _fail(str(exc))
    if token is None and not is_loopback(host):
        typer.secho(f"warning: serving on {host} without auth: anyone who reaches it can query the "
                    f"models; set {TOKEN_ENV} (or {TOKEN_ENV}_FILE) to require a bearer token",
                    fg="yellow", err=True)
    if port_in_use(port, host):
        _fail(f"port {port} on {host} is already in use; stop what listens there or pick --port")
    url = f"http://{host}:{port}"
    _stopping["now"] = False
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell may start us with it ignored
        signal.signal(sig, _raise_terminated)
    proc = start_service(port, host, bundle, env={ACCESS_LOG_ENV: "1"} if access_log else None,
                         log_file=log_file)
    where = f"; server log: {log_file}" if log_file else ""
    typer.echo(f"starting on {url} (pid {proc.pid}), loading the model{where}", err=True)
    code = 0
    try:
        wait_ready(proc, url, timeout=start_timeout, log_file=log_file)
        typer.echo(f"serving on {url}: POST {url}/predict, /predict_batch, /alerts; GET {url}/series, "
                   f"/rules, /status; "
                   f"API docs at {url}/ (OpenAPI: {url}/docs.json); Ctrl-C stops", err=True)
        # not one blocking wait: a signal the kernel hands to another thread interrupts no
        # system call here, and its handler runs only once this thread runs Python again
        while proc.poll() is None:
            time.sleep(0.2)
        typer.secho(f"error: bentoml serve exited with code {proc.returncode}{where}", fg="red", err=True)
        code = 1
    except ServiceFailed as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        code = 1
    except _Terminated:
        typer.echo("stopping", err=True)
    finally:
        _stopping["now"] = True  # a signal from here on must not cut the stop short
        stop_service(proc)
    raise typer.Exit(code=code)


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
