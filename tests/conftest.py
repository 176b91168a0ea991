"""Shared fixtures: a fixed start instant, a seeded generator and a writer for tiny Parquet exports."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest


@pytest.fixture
def t0() -> datetime:
    """A grid-aligned UTC instant (on a 5-minute boundary) that every crafted export starts at."""
    return datetime(2026, 9, 21, 10, 0, tzinfo=UTC)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20260921)


@pytest.fixture
def write_export(tmp_path: Path) -> Callable[..., Path]:
    """Write a frame as Parquet under ``tmp_path`` and return its path."""

    def write(frame: pl.DataFrame, name: str = "export.parquet") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path)
        return path

    return write


@pytest.fixture(autouse=True, scope="session")
def _model_cache(tmp_path_factory) -> None:
    """Registry downloads (and those of servers the tests start) go to a temporary model cache."""
    os.environ["PREALERT_MODEL_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
