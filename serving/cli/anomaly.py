"""CLI commands for anomaly scores (registered on ``prealert`` as score-anomalies and evaluate-anomalies)."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import SMD_DIR
from serving.cli.common import fail as _fail


def _minutes(option: str, text: str | None) -> float | None:
    from training.anomaly.stream import as_timedelta

    if not text:
        return None
    minutes = as_timedelta(text).total_seconds() / 60
    if minutes <= 0:
        raise ValueError(f"{option} {text!r} must be positive")
    return minutes


def score_anomalies(
    input: Annotated[str, typer.Option(
        help="A CSV/Parquet file, a folder of them, or a glob (quote it): timestamp,value; long "
             "ts,metric,value[,host]; or wide (a time column and one column per metric).")],
    out: Annotated[Path | None, typer.Option(
        help="Output file for one input (default <input>.scores.csv); for several, a folder "
             "(written as <name>.scores.<suffix>).")] = None,
    train_rows: Annotated[int | None, typer.Option(
        help="Train on the first N timestamps of each host.")] = None,
    train_until: Annotated[datetime | None, typer.Option(
        help="Train on the timestamps before this time (UTC when the data has zones).")] = None,
    train_fraction: Annotated[float | None, typer.Option(
        help="Train on this first share of each host (the default, 0.5).")] = None,
    train_duration: Annotated[str | None, typer.Option(
        help="Train on this first stretch, e.g. 7d, 36h.")] = None,
    retrain_every: Annotated[str | None, typer.Option(
        help="Refit on the past this often, e.g. 1d (sooner while the past is short); default: fit once.")]
        = None,
    history: Annotated[str | None, typer.Option(
        help="Refits see only this much of the past, e.g. 7d, so the normal range follows drift.")] = None,
    expectation: Annotated[str | None, typer.Option(
        help="Past window of the median expectation, e.g. 60m (default: 60m, or 12 intervals if longer).")]
        = None,
    onset_window: Annotated[str, typer.Option(
        help="onset_score: decades beyond the rarest row of this past window, e.g. 4h (alert on it).")]
        = "4h",
    onset_rows: Annotated[int, typer.Option(
        help="The onset window holds at least this many previous rows (hourly data: 48 rows = 2 days).")]
        = 48,
    explain_above: Annotated[float, typer.Option(
        help="List top metrics where the score (-log10 p) is at least this.")] = 3.0,
) -> None:
    """Score every row (training rows in-sample, flagged; later rows from the past only); keep rows and times.

    The score s = -log10 p: a row this unusual is expected once every 10^s training rows.
    """
    from training.anomaly.stream import StreamConfig, input_files, read_table, score_table, write_table

    try:
        chosen = [o for o, v in (("--train-rows", train_rows), ("--train-until", train_until),
                                 ("--train-fraction", train_fraction), ("--train-duration", train_duration))
                  if v is not None]
        if len(chosen) > 1:
            raise ValueError(f"give one of {', '.join(chosen)}")
        if train_fraction is not None and not 0 < train_fraction < 1:
            raise ValueError(f"--train-fraction must be between 0 and 1, got {train_fraction}")
        if onset_rows < 0:
            raise ValueError(f"--onset-rows must be at least 0, got {onset_rows}")
        if train_rows is not None and train_rows < 10:
            raise ValueError(f"--train-rows must be at least 10, got {train_rows}")
        config = StreamConfig(expectation_minutes=_minutes("--expectation", expectation),
                              retrain_every_minutes=_minutes("--retrain-every", retrain_every),
                              history_minutes=_minutes("--history", history), explain_above=explain_above,
                              onset_minutes=_minutes("--onset-window", onset_window),
                              onset_rows=onset_rows)
        files = input_files(input)
        several = len(files) > 1 or Path(input).is_dir()
        if several and out is not None and out.suffix:
            raise ValueError(f"--out {out} looks like a file; several inputs need a folder")
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    failed = 0
    for f in files:
        if several:
            dst = (out or Path(input if Path(input).is_dir() else f.parent) / "scores") / (
                f.stem + ".scores" + f.suffix.lower().replace(".txt", ".csv"))
        else:
            dst = out or f.with_name(f.stem + ".scores.csv")
        try:
            scored, report = score_table(read_table(f), train_rows=train_rows, train_until=train_until,
                                         train_fraction=train_fraction, train_duration=train_duration,
                                         config=config)
        except (ValueError, FileNotFoundError) as exc:
            typer.secho(f"error: {f}: {exc}", fg="red", err=True)
            failed += 1
            continue
        for w in report.warnings:
            typer.secho(f"warning: {f.name}: {w}", fg="yellow", err=True)
        write_table(scored, dst)
        later = scored.filter(~scored["training"])
        score, onset = later["anomaly_score"].drop_nulls(), later["onset_score"].drop_nulls()
        typer.echo(f"{f.name}: {report.summary()}; {int((score >= 3).sum())} of {len(score)} later rows "
                   f"at score >= 3 (once in 1,000), {int((onset >= 1).sum())} onsets >= 1; wrote {dst}")
    if failed:
        typer.secho(f"{failed} of {len(files)} files failed", fg="red", err=True)
        raise typer.Exit(code=1)


def evaluate_anomalies(
    data: Annotated[Path, typer.Option(help="Folder of <machine>.parquet and <machine>.labels.parquet.")] =
        SMD_DIR,
    report: Annotated[Path, typer.Option(
        help="Markdown report of the point scoring; PNG plots go beside it, the window scoring's "
             "report is <report>_windows.md.")] = Path("reports/anomaly_eval.md"),
    machine: Annotated[list[str], typer.Option(help="Evaluate only this machine (repeat).")] = [],  # noqa: B006
    quantile: Annotated[float, typer.Option(help="Threshold: this quantile of training-half scores.")] = 0.99,
    scoring: Annotated[str, typer.Option(
        help="points: train half -> test half, F1 and point-adjusted F1 per machine; windows: "
             "early-detection window scores (three profiles) of SMD machines, their dimensions and "
             "the sample; both.")] = "points",
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the run to MLflow.")] = True,
) -> None:
    """Score labelled anomalies: ours vs a rolling z-score and a windowed Gaussian, to MLflow."""
    from training.anomaly.evaluation import (
        AnomalyEvalConfig,
        log_evaluation,
        log_window_evaluation,
        plot_machine,
        run_evaluation,
        run_window_evaluation,
        sample_streams,
        smd_streams,
        write_report,
        write_window_report,
    )

    if scoring not in ("points", "windows", "both"):
        _fail(f"--scoring must be points, windows or both, got {scoring!r}")
    config = AnomalyEvalConfig(quantile=quantile, scoring=scoring)
    command = ("prealert evaluate-anomalies " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else [])).strip()
    if scoring in ("windows", "both"):
        try:
            streams = smd_streams(data, machine or None) + sample_streams()
            windows = run_window_evaluation(streams, config, echo=typer.echo)
        except (ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
        wpath = write_window_report(windows, config, report.with_name(report.stem + "_windows.md"), command)
        typer.echo(windows.table.__repr__())
        typer.echo(f"wrote {wpath}")
        if mlflow_log:
            run_id = log_window_evaluation(windows, config, wpath)
            typer.echo(f"run {run_id} (experiment prealert-anomaly-eval)")
    if scoring == "windows":
        return
    try:
        result = run_evaluation(data, config, machine or None, echo=typer.echo)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    plots = {name: plot_machine(m, result.scores[name], result.table,
                                report.parent / f"{report.stem}_{name}.png")
             for name, m in result.machines.items()}
    write_report(result, config, report, command, plots)
    typer.echo(result.pooled.select("detector", "f1", "pa_f1", "mean_best_f1",
                                    "mean_precision_at_top1pct").__repr__())
    typer.echo(f"wrote {report} and {len(plots)} plots")
    if mlflow_log:
        from training.registry import tracking_uri

        run_id = log_evaluation(result, config, report, plots)
        typer.echo(f"run {run_id} in {tracking_uri()} (experiment prealert-anomaly-eval)")
