"""``prealert retrain``, ``promote`` and ``rollback``: the commands that move ``@champion``.

Exit codes, for the scheduler: 0 promoted (or done), 3 kept the champion (the candidate is
registered, not promoted), 4 another run holds the registry lock (nothing done), 2 failed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import (
    ENGINE_HELP,
    FOR_CHOICES_HELP,
    HOLIDAYS_HELP,
    KEEP_FIRING_HELP,
    TIMEZONE_HELP,
    alert_rule,
    calendar,
    fail,
)

EXIT_PROMOTED, EXIT_FAILED, EXIT_KEPT, EXIT_BUSY = 0, 2, 3, 4


def _busy(exc: Exception) -> None:
    typer.secho(f"skipped: {exc}", fg="yellow", err=True)
    raise typer.Exit(code=EXIT_BUSY)


def retrain(
    export: Annotated[str | None, typer.Option(
        help="The export (file, folder or glob): the feature job runs on it first.")] = None,
    features: Annotated[Path | None, typer.Option(
        help="Or the output folder of `prealert features build` (no feature job).")] = None,
    workdir: Annotated[Path, typer.Option(help="Where the feature job writes.")] = Path(
        "work/retrain"),
    step: Annotated[str, typer.Option(help="With --export: the grid step.")] = "5m",
    history_days: Annotated[float, typer.Option(
        help="Rolling window of data used, the gate window included.")] = 14.0,
    until: Annotated[datetime | None, typer.Option(
        help="The window ends here (UTC, exclusive); default: the newest data.")] = None,
    include: Annotated[list[str], typer.Option(help="Series id or entity to train (repeat).")] = [],  # noqa: B006
    gate_hours: Annotated[float, typer.Option(
        help="The recent window the candidate and the champion both replay.")] = 24.0,
    f1_tolerance: Annotated[float, typer.Option(
        help="The candidate's F1 may be this much below the champion's.")] = 0.02,
    false_alarms_tolerance: Annotated[float, typer.Option(
        help="Its false alarms per day may be this many above the champion's.")] = 0.25,
    mae_tolerance: Annotated[float, typer.Option(
        help="Its MAE of minutes may be this share above the champion's.")] = 0.10,
    allow_shrink: Annotated[bool, typer.Option(
        help="Promote a candidate that serves fewer series than the champion.")] = False,
    holdout_hours: Annotated[float, typer.Option(help="Training's own holdout replay.")] = 24.0,
    n_jobs: Annotated[int, typer.Option(envvar="PREALERT_N_JOBS", help="Parallel fits.")] = 2,
    keep_firing_minutes: Annotated[float, typer.Option(help=KEEP_FIRING_HELP)] = 15.0,
    for_choices: Annotated[str, typer.Option(help=FOR_CHOICES_HELP)] = "0,5,10,15,20",
    lock_max_age_hours: Annotated[float, typer.Option(
        help="A registry lock older than this is taken as left by a killed run.")] = 6.0,
    engine: Annotated[str, typer.Option(envvar="PREALERT_ENGINE", help=ENGINE_HELP)] = "local",
    timezone: Annotated[str, typer.Option(envvar="PREALERT_TIMEZONE", help=TIMEZONE_HELP)] = "Asia/Seoul",
    holidays: Annotated[str, typer.Option(envvar="PREALERT_HOLIDAYS", help=HOLIDAYS_HELP)] = "KR",
    series_time_limit: Annotated[float, typer.Option(
        help="Seconds one series may take; past it, it is served by the linear fallback.")] = 300.0,
    verbose: Annotated[bool, typer.Option(help="Let cmdstanpy, Prophet, MLflow and Ray log.")] = False,
) -> None:
    """The scheduled job: features, train, the gate on the alert replay, promote or keep.

    Exit 0 promoted, 3 kept the champion, 4 another run holds the lock, 2 failed; a retry of
    a decided window repeats its decision without training or promoting again.
    """
    from features.build import run_build
    from training.evaluation.gate import GateConfig
    from training.fanout import quiet_libraries
    from training.lock import LockBusy
    from training.retrain import PROMOTED, RetrainConfig
    from training.retrain import retrain as run_retrain
    from training.train import TrainConfig

    if (export is None) == (features is None):
        fail("give exactly one of --export (runs the feature job) or --features")
    quiet_libraries(verbose)
    config = RetrainConfig(
        history_days=history_days, until=until, lock_max_age_hours=lock_max_age_hours,
        train=TrainConfig(include=include, holdout_hours=holdout_hours, n_jobs=n_jobs,
                          engine=engine, series_time_limit_seconds=series_time_limit,
                          alert_rule=alert_rule(keep_firing_minutes, for_choices),
                          forecaster=calendar(timezone, holidays)),
        gate=GateConfig(window_hours=gate_hours, f1_tolerance=f1_tolerance,
                        false_alarms_tolerance=false_alarms_tolerance,
                        mae_tolerance=mae_tolerance, allow_shrink=allow_shrink))
    try:
        if export is not None:
            features = workdir / "features"
            typer.echo(run_build(export, features, step=step).summary())
        outcome = run_retrain(features, config, echo=typer.echo)  # workers read its rows
    except LockBusy as exc:
        _busy(exc)
    except (ValueError, RuntimeError, OSError, LookupError) as exc:
        fail(str(exc))
    typer.echo(outcome.summary())
    raise typer.Exit(code=EXIT_PROMOTED if outcome.status == PROMOTED else EXIT_KEPT)


def promote(
    version: Annotated[str, typer.Argument(help="The registered version to serve.")],
    reason: Annotated[str, typer.Option(help="Recorded on the version.")] = "promoted by hand",
) -> None:
    """Make VERSION the champion (it must load and come from a finished run)."""
    from training.lock import LockBusy
    from training.registry import promote_version
    from training.retrain import writing_registry

    try:
        with writing_registry("prealert promote") as (_, notes):
            for note in notes:
                typer.echo(note)
            before = promote_version(version, reason)
    except LockBusy as exc:
        _busy(exc)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"@champion: v{version} (was {'v' + before if before else 'none'})")


def rollback() -> None:
    """Move @champion back to the version that was champion before the current one."""
    from training.lock import LockBusy
    from training.registry import rollback as run_rollback
    from training.retrain import writing_registry

    try:
        with writing_registry("prealert rollback") as (_, notes):
            for note in notes:
                typer.echo(note)
            current, target = run_rollback()
    except LockBusy as exc:
        _busy(exc)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"@champion: v{target} (rolled back from v{current})")
