"""CLI commands that talk to Prometheus: ``export prometheus`` and ``watch`` (live mode)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import fail as _fail
from serving.cli.common import pairs

PROMETHEUS_URL_HELP = "Prometheus base URL, e.g. http://prometheus:9090 (env PREALERT_PROMETHEUS_URL)."


def export_prometheus(
    url: Annotated[str, typer.Option(envvar="PREALERT_PROMETHEUS_URL", help=PROMETHEUS_URL_HELP)],
    query: Annotated[list[str], typer.Option(help="PromQL range query (repeat for several).")],
    start: Annotated[str, typer.Option(help="Start: ISO 8601 (UTC if naive), epoch s, or now-6h.")],
    out: Annotated[Path, typer.Option(help="Parquet file to write (replaced atomically).")],
    end: Annotated[str, typer.Option(help="End: ISO 8601, epoch seconds, now or now-<duration>.")] = "now",
    step: Annotated[str, typer.Option(help="Query resolution, e.g. 15s, 1m (prealert's grid is 5m).")] = "1m",
    label: Annotated[list[str], typer.Option(
        help="Rename a label to a column, e.g. instance=node or deployment=service (repeat); "
             "a label it displaces is kept as exported_<name>.")] = [],  # noqa: B006
    metric: Annotated[str | None, typer.Option(
        help="Metric name for every series (needed when a query is an expression, whose "
             "result has no __name__).")] = None,
    max_points: Annotated[int, typer.Option(
        help="Most points per series per request; longer ranges are split (Prometheus refuses "
             "more than 11,000).")] = 11_000,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 60.0,
) -> None:
    """Pull series through /api/v1/query_range into a Parquet export `features build` reads."""
    from features.prometheus import PrometheusError, export_range, parse_duration, parse_time

    label_map = pairs(label, "--label", "PROMETHEUS_LABEL=COLUMN, e.g. instance=node")
    try:
        t0, t1 = parse_time(start, "--start"), parse_time(end, "--end")
        frame, result = export_range(url, query, t0, t1, parse_duration(step, "--step"),
                                     label_map=label_map, metric=metric,
                                     max_points=max_points, timeout=timeout)
    except (ValueError, PrometheusError) as exc:
        _fail(str(exc))
    for warning in dict.fromkeys(result.warnings):
        typer.secho(f"warning: Prometheus: {warning}", fg="yellow", err=True)
    if frame.is_empty():
        _fail(f"no series: the queries {query} return nothing between {t0.isoformat()} and "
              f"{t1.isoformat()} (check the query in Prometheus' graph page)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frame.write_parquet(tmp)
    tmp.replace(out)  # a retried or killed run never leaves a half-written export
    metrics = sorted(frame["metric"].unique())
    typer.echo(f"wrote {out}: {frame.height} rows, {len(result.series)} series, metrics "
               f"{', '.join(metrics)}, {t0.isoformat()} to {t1.isoformat()} in {result.requests} "
               f"request(s); label columns: {', '.join(frame.columns[1:4] + frame.columns[6:])}")


def watch(
    prometheus_url: Annotated[str, typer.Option(envvar="PREALERT_PROMETHEUS_URL",
                                                help=PROMETHEUS_URL_HELP)],
    rules: Annotated[Path, typer.Option(help="YAML rules file (see deploy/prometheus/watch-rules.yml).")],
    bundle: Annotated[Path | None, typer.Option(
        help="Answer with this bundle folder, not @champion.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between cycles.")] = 60.0,
    port: Annotated[int, typer.Option(help="Port of the /metrics endpoint.")] = 9464,
    host: Annotated[str, typer.Option(help="Address to bind /metrics (0.0.0.0 for all).")] = "127.0.0.1",
    window: Annotated[str, typer.Option(help="Recent window pulled per cycle (the alert rule "
                                              "looks back 90 minutes).")] = "90m",
    step: Annotated[str, typer.Option(help="Resolution of the pulled window.")] = "1m",
    min_points: Annotated[int, typer.Option(help="Fewer finite points and a series is not answered.")] = 3,
    alertmanager_url: Annotated[str | None, typer.Option(
        envvar="PREALERT_ALERTMANAGER_URL",
        help="Also post alerts to this Alertmanager (POST /api/v2/alerts).")] = None,
    ends_after_cycles: Annotated[float, typer.Option(
        help="Pushed alerts end this many intervals ahead unless refreshed.")] = 4.0,
    cycles: Annotated[int, typer.Option(help="Stop after this many cycles (0: run until stopped).")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds per Prometheus request.")] = 30.0,
) -> None:
    """Predict every series the rules match, every interval; serve them on /metrics."""
    from datetime import timedelta

    from prometheus_client import start_http_server

    from features.prometheus import parse_duration
    from serving.alertmanager import AlertPusher
    from serving.predictor import Predictor
    from serving.watch import Watcher, load_rules
    from training.bundle import ModelBundle
    from training.registry import load_champion

    if not interval > 0 or not ends_after_cycles > 1 or min_points < 1:
        _fail("--interval must be positive, --ends-after-cycles above 1 and --min-points at least 1")
    try:
        watched = load_rules(rules)
        span, resolution = parse_duration(window, "--window"), parse_duration(step, "--step")
        model = ModelBundle.load(bundle) if bundle else load_champion()
    except (ValueError, LookupError, OSError) as exc:
        _fail(str(exc))
    except Exception as exc:  # the registry: an MLflow error when no @champion exists
        _fail(f"cannot load the @champion model ({type(exc).__name__}: {' '.join(str(exc).split())}); "
              "train one first or give --bundle")
    pusher = None
    if alertmanager_url:
        every = timedelta(seconds=interval)
        pusher = AlertPusher(alertmanager_url, ends_after=every * ends_after_cycles,
                             refresh_before=every * (ends_after_cycles / 2),
                             generator_url=f"{prometheus_url.rstrip('/')}/alerts")
    echo = lambda m: typer.echo(m, err=True)  # noqa: E731  progress on stderr, like features build
    watcher = Watcher(Predictor(model), watched, prometheus_url, window=span, step=resolution,
                      min_points=min_points, pusher=pusher, timeout=timeout, echo=echo)
    try:
        server, _ = start_http_server(port, addr=host, registry=watcher.registry)
    except OSError as exc:
        _fail(f"cannot serve /metrics on {host}:{port}: {exc.strerror}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    echo(f"watching {len(watched)} rule(s) on {prometheus_url} every {interval:g} s with model "
         f"{watcher.predictor.model_version}; metrics on http://{host}:{port}/metrics"
         + (f"; alerts to {alertmanager_url}" if pusher else ""))
    try:
        watcher.run(interval, stop, cycles)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    sys.stderr.flush()


def register(app: typer.Typer) -> None:
    """Add ``export prometheus`` and ``watch`` to the ``prealert`` command."""
    export_app = typer.Typer(help="Export series from monitoring systems.", no_args_is_help=True)
    export_app.command("prometheus")(export_prometheus)
    app.add_typer(export_app, name="export")
    app.command("watch")(watch)
