"""What every CLI command shares: how a failure is reported."""

from __future__ import annotations

import typer


def fail(message: str) -> None:
    """Print a clear error and exit non-zero (2): the scheduled job's runner sees it failed."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code=2)
