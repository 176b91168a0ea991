"""CLI commands of the feature stage (registered on ``prealert features``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import fail as _fail
from serving.cli.common import pairs


def features_build(
    input: Annotated[str, typer.Option(help="Parquet file, folder (hive partitions) or glob.")],
    out: Annotated[Path, typer.Option(help="Output folder (replaced atomically).")],
    config: Annotated[Path | None, typer.Option(
        help="TOML file describing the export ([export]) and the job ([build]).")] = None,
    step: Annotated[str | None, typer.Option(
        help="Grid step, e.g. 1m or 5m (default: config, then PREALERT_STEP, then 5m).")] = None,
    max_fill: Annotated[int | None, typer.Option(
        help="Longest gap, in steps, to interpolate (default: config, PREALERT_MAX_FILL, 3).")] = None,
    rename: Annotated[list[str], typer.Option(help="Map an export column: host=node.")] = [],  # noqa: B006
    tables: Annotated[bool | None, typer.Option(
        "--tables/--no-tables", help="Write per-entity feature tables.")] = None,
    min_time: Annotated[str | None, typer.Option(
        help="Rows timed before this (ISO date/time, UTC if naive) are quarantined "
             "(default: config, then 2000-01-01).")] = None,
    max_time: Annotated[str | None, typer.Option(
        help="Rows timed after this are quarantined (default: config, then now + 1 day).")] = None,
    epoch_unit: Annotated[str | None, typer.Option(
        help="Unit of numeric timestamps: s, ms, us, ns or auto (default: config, then auto: "
             "detected per column by magnitude).")] = None,
    quiet: Annotated[bool, typer.Option(help="No stage-by-stage progress on stderr.")] = False,
) -> None:
    """Validate an export, quarantine bad rows, roll pods up and write regular series."""
    from features.build import _stderr, run_build
    from features.config import check_export, load_config, parse_instant

    try:
        cfg = load_config(config)
        # explicit options win over the environment, which wins over the file
        cfg = replace(cfg, **{k: v for k, v in (("step", step), ("max_fill", max_fill),
                                                 ("tables", tables)) if v is not None})
        cfg = replace(cfg, **{k: parse_instant(v, f"--{k.replace('_', '-')}")
                              for k, v in (("min_time", min_time), ("max_time", max_time))
                              if v is not None})
        if epoch_unit is not None:
            cfg = replace(cfg, export=replace(cfg.export, epoch_unit=epoch_unit))
            check_export(cfg.export, "--epoch-unit")
        report = run_build(input, out, step=cfg.step, max_fill=cfg.max_fill,
                           rename=pairs(rename, "--rename", "EXPORT_NAME=OUR_NAME"), config=cfg,
                           progress=None if quiet else _stderr)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(report.summary())
    typer.echo(f"wrote {out}/: series.parquet, quarantine.parquet, pods.parquet, "
               f"{'tables/, ' if report.feature_tables else ''}report.json, manifest.json")
