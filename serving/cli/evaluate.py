"""``prealert evaluate``: the walk-forward backtest of minutes-to-threshold against the baselines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import (
    FOR_CHOICES_HELP,
    HOLIDAYS_HELP,
    KEEP_FIRING_HELP,
    SMD_DIR,
    TIMEZONE_HELP,
    alert_rule,
    calendar,
    fail,
)

SAMPLE_EXPORT = Path(__file__).resolve().parents[2] / "data" / "sample" / "export"


def evaluate(
    sample: Annotated[bool, typer.Option(help="Evaluate the sample export's series.")] = True,
    smd: Annotated[bool, typer.Option(help="Evaluate the SMD machines' CPU, memory and disk "
                                           "(threshold = P99 of the training half).")] = True,
    smd_dir: Annotated[Path, typer.Option(help="The SMD folder.")] = SMD_DIR,
    input: Annotated[Path | None, typer.Option(help="A CSV/Parquet of timestamp,value.")] = None,
    threshold: Annotated[str, typer.Option(help="For --input: a number or quantile:Q of the data "
                                                "before evaluation starts.")] = "quantile:0.99",
    direction: Annotated[str, typer.Option(help="For --input: above or below.")] = "above",
    eval_fraction: Annotated[float, typer.Option(help="For --input: evaluate after this share.")] = 0.5,
    horizons: Annotated[str, typer.Option(help="Comma-separated horizons in minutes.")] = "60,120",
    every_minutes: Annotated[int, typer.Option(help="Minutes between evaluation times.")] = 5,
    alarm_probability: Annotated[float, typer.Option(
        help="prealert's alarm level where the replay has too few crossings to choose one.")] = 0.5,
    use_alert_rule: Annotated[bool, typer.Option(
        "--alert-rule/--no-alert-rule", help="Warn by the alert rule (for / keep_firing_for) "
        "rather than on every check alone.")] = True,
    keep_firing_minutes: Annotated[float, typer.Option(help=KEEP_FIRING_HELP)] = 15.0,
    for_choices: Annotated[str, typer.Option(help=FOR_CHOICES_HELP)] = "0,5,10,15,20",
    report: Annotated[Path, typer.Option(help="Markdown report (plots beside it).")] = Path(
        "reports/evaluate.md"),
    log_mlflow: Annotated[bool, typer.Option(help="Record the run in MLflow.")] = True,
    timezone: Annotated[str, typer.Option(envvar="PREALERT_TIMEZONE", help=TIMEZONE_HELP)] = "Asia/Seoul",
    holidays: Annotated[str, typer.Option(envvar="PREALERT_HOLIDAYS", help=HOLIDAYS_HELP)] = "KR",
) -> None:
    """Replay history as deployed: retrain on the cadence, warn, and score against the truth."""
    from training.evaluation.replay import ReplayConfig, run_evaluation
    from training.evaluation.report import (
        log_evaluation,
        plot_reliability,
        plot_timeline,
        write_report,
    )
    from training.evaluation.sources import file_cases, sample_cases, smd_cases

    if direction not in ("above", "below"):
        fail(f"--direction must be above or below, not {direction!r}")
    try:
        hs = tuple(int(h) for h in horizons.split(","))
    except ValueError:
        fail(f"--horizons takes minutes separated by commas, got {horizons!r}")
    rule = alert_rule(keep_firing_minutes, for_choices) if use_alert_rule else None
    cal = calendar(timezone, holidays)
    started = time.perf_counter()
    sources, cases_by_source, skipped = {}, {}, {}
    try:
        if input is not None:
            cases_by_source[input.stem] = (file_cases(input, threshold, direction, eval_fraction),
                                           ReplayConfig(horizons=hs, every_minutes=every_minutes,
                                                        alarm_probability=alarm_probability,
                                                        alert_rule=rule, forecaster=cal))
        else:
            if sample:
                typer.echo(f"sample export {SAMPLE_EXPORT}:")
                cases_by_source["sample"] = (
                    sample_cases(SAMPLE_EXPORT),
                    ReplayConfig(horizons=hs, every_minutes=every_minutes, retrain_every_hours=24,
                               alarm_probability=alarm_probability, alert_rule=rule,
                               forecaster=cal))
            if smd:
                typer.echo(f"SMD machines {smd_dir}:")
                cases_by_source["smd"] = (
                    smd_cases(smd_dir),
                    ReplayConfig(horizons=hs, every_minutes=every_minutes,
                               alarm_probability=alarm_probability, alert_rule=rule,
                               forecaster=cal))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if not cases_by_source:
        fail("nothing to evaluate: give --input, or keep --sample, or --smd DIR")
    for name, (cases, config) in cases_by_source.items():
        typer.echo(f"replaying {len(cases)} series of {name} ...")
        try:
            sources[name] = run_evaluation(cases, config, echo=typer.echo,
                                           skipped=skipped.setdefault(name, {}))
        except RuntimeError as exc:
            fail(str(exc))
    runtime = time.perf_counter() - started
    config = next(iter(cases_by_source.values()))[1]
    report.parent.mkdir(parents=True, exist_ok=True)
    plots = [plot_reliability(next(iter(sources.values())) if len(sources) == 1 else
                              _pooled(sources), report.with_name("reliability.png"))]
    for name, (cases, _) in cases_by_source.items():
        case = _most_eventful(cases, sources[name])
        if case is not None:
            plots.append(plot_timeline(sources[name], (case.ts, case.values), case.name,
                                       case.threshold, hs[0],
                                       report.with_name(f"timeline_{name}.png")))
    configs = {name: cfg for name, (_, cfg) in cases_by_source.items()}
    out, summaries = write_report(sources, configs, report, runtime, plots, skipped)
    typer.echo(f"report: {out} ({runtime / 60:.1f} min)")
    for line in out.read_text().split("## ")[1].splitlines()[2:]:
        typer.echo(line)
    if log_mlflow:
        run_id = log_evaluation(summaries, config, out, plots)
        typer.echo(f"MLflow run {run_id} (experiment prealert-evaluate)")


def _pooled(sources):
    import polars as pl

    return pl.concat(list(sources.values()), how="diagonal_relaxed")


def _most_eventful(cases, results):
    """The series with the most crossing times, for the timeline plot."""
    import polars as pl

    counts = (results.filter(pl.col("true_minutes").is_not_nan()).group_by("series").len()
              .sort(["len", "series"], descending=[True, False]))
    if counts.is_empty():
        return None
    best = counts["series"][0]
    return next((c for c in cases if c.name == best), None)
