"""CLI commands for anomaly scores (registered on ``prealert`` as score-anomalies and evaluate-anomalies)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import SMD_DIR
from serving.cli.common import fail as _fail


def score_anomalies(
    input: Annotated[Path, typer.Option(
        help="CSV or Parquet: timestamp,value; long ts,metric,value[,host]; "
             "or wide (a time column and one column per metric).")],
    out: Annotated[Path | None, typer.Option(
        help="Output CSV/Parquet (default: <input>.scores.csv).")] = None,
    train_fraction: Annotated[float, typer.Option(help="Train on this first share of each host.")] = 0.5,
    train_duration: Annotated[str | None, typer.Option(
        help="Train on this first stretch instead, e.g. 7d, 36h (overrides --train-fraction).")] = None,
    retrain_every: Annotated[str | None, typer.Option(
        help="Refit on all earlier rows this often, e.g. 1d (rows are assumed 1 minute apart); "
             "default: fit once.")] = None,
    expectation_minutes: Annotated[int, typer.Option(
        help="Past window (rows) of the median expectation.")] = 60,
    explain_above: Annotated[float, typer.Option(
        help="List top metrics where the score is at least this.")] = 0.99,
) -> None:
    """Score every row after the training part using only earlier rows; write timestamps and scores."""
    from training.anomaly.stream import StreamConfig, as_timedelta, read_table, score_table, write_table

    try:
        if not 0 < train_fraction < 1:
            raise ValueError(f"--train-fraction must be between 0 and 1, got {train_fraction}")
        every = None
        if retrain_every:
            every = int(as_timedelta(retrain_every).total_seconds() // 60)
            if every < 1:
                raise ValueError(f"--retrain-every {retrain_every!r} is shorter than one minute")
        config = StreamConfig(expectation_minutes=expectation_minutes, retrain_every=every,
                              explain_above=explain_above)
        scored = score_table(read_table(input), train_fraction=train_fraction,
                             train_duration=train_duration, config=config)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    dst = write_table(scored, out or input.with_name(input.stem + ".scores.csv"))
    n = scored["anomaly_score"].drop_nulls()
    typer.echo(f"scored {len(n)} of {scored.height} rows ({int((n >= 0.99).sum())} at 0.99 or above); "
               f"wrote {dst}")


def evaluate_anomalies(
    data: Annotated[Path, typer.Option(help="Folder of <machine>.parquet and <machine>.labels.parquet.")] =
        SMD_DIR,
    report: Annotated[Path, typer.Option(help="Markdown report; PNG plots go beside it.")] =
        Path("reports/anomaly_eval.md"),
    machine: Annotated[list[str], typer.Option(help="Evaluate only this machine (repeat).")] = [],  # noqa: B006
    quantile: Annotated[float, typer.Option(help="Threshold: this quantile of training-half scores.")] = 0.99,
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the run to MLflow.")] = True,
) -> None:
    """Train on each machine's training half, score its test half; ours vs two baselines, to MLflow."""
    from training.anomaly.evaluation import (
        AnomalyEvalConfig,
        log_evaluation,
        plot_machine,
        run_evaluation,
        write_report,
    )

    config = AnomalyEvalConfig(quantile=quantile)
    try:
        result = run_evaluation(data, config, machine or None, echo=typer.echo)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    plots = {name: plot_machine(m, result.scores[name], result.table,
                                report.parent / f"{report.stem}_{name}.png")
             for name, m in result.machines.items()}
    command = "prealert evaluate-anomalies " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else [])
    write_report(result, config, report, command.strip(), plots)
    typer.echo(result.pooled.select("detector", "f1", "pa_f1", "mean_best_f1",
                                    "mean_precision_at_top1pct").__repr__())
    typer.echo(f"wrote {report} and {len(plots)} plots")
    if mlflow_log:
        from training.registry import tracking_uri

        run_id = log_evaluation(result, config, report, plots)
        typer.echo(f"run {run_id} in {tracking_uri()} (experiment prealert-anomaly-eval)")
