"""What every CLI command shares: how a failure is reported, where the real metrics live."""

from __future__ import annotations

from pathlib import Path

import typer

#: the real server metrics beside the repository (``../shared/data/smd-dev``)
SMD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "smd-dev"


def fail(message: str) -> None:
    """Print a clear error and exit non-zero (2): the scheduled job's runner sees it failed."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code=2)
