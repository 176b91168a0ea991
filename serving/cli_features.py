"""CLI commands of the feature stage (registered on ``prealert features``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serving.cli_common import fail as _fail


def _parse_rename(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        src, sep, dst = pair.partition("=")
        if not sep or not src or not dst:
            _fail(f"--rename takes EXPORT_NAME=OUR_NAME, got {pair!r}")
        out[src] = dst
    return out


def features_build(
    input: Annotated[str, typer.Option(help="Parquet file, folder (hive partitions) or glob.")],
    out: Annotated[Path, typer.Option(help="Output folder (replaced atomically).")],
    step: Annotated[str, typer.Option(help="Grid step, e.g. 1m or 5m.")] = "5m",
    max_fill: Annotated[int, typer.Option(help="Longest gap, in steps, to interpolate.")] = 3,
    rename: Annotated[list[str], typer.Option(help="Map an export column: host=node.")] = [],  # noqa: B006
) -> None:
    """Validate an export, quarantine bad rows, roll pods up and write regular series."""
    from features.build import run_build

    try:
        report = run_build(input, out, step=step, max_fill=max_fill, rename=_parse_rename(rename))
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(report.summary())
    typer.echo(f"wrote {out}/series.parquet, quarantine.parquet, report.json")
