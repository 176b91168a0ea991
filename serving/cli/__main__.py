"""`python -m serving.cli`: the `prealert` command."""

from serving.cli import app

app()
