"""What an export looks like and how to build from it: a typed config read once from TOML and env."""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

from features import schema as s

ENV_PREFIX = "PREALERT_"
EPOCH_UNITS = ("s", "ms", "us", "ns", "auto")
#: the plausible-time window's default start; its default end is "now + MAX_TIME_AHEAD"
DEFAULT_MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIME_AHEAD = timedelta(days=1)


@dataclass(frozen=True)
class ExportConfig:
    """How to read one export: its shape, column names, time encoding and pod naming.

    ``columns`` maps our names (``ts``, ``service``, ``pod``, ``node``, ``metric``, ``value``)
    onto the export's; label columns not named and not present become null.
    """

    format: Literal["long", "wide"] = "long"
    columns: dict[str, str] = field(default_factory=dict)
    #: wide format: the metric columns; empty means every column that is not ts or a label
    metrics: tuple[str, ...] = ()
    #: numeric timestamps: s, ms, us, ns, or auto (one unit per column, chosen by magnitude)
    epoch_unit: str = "auto"
    timezone: str = "UTC"  # the zone of naive timestamps; output is always UTC
    #: regexes tried before the built-in pod shapes; the first capture group is the workload
    pod_patterns: tuple[str, ...] = ()

    def rename(self) -> dict[str, str]:
        """Export name -> our name, as :func:`features.ingest.scan_export` takes it."""
        return {src: ours for ours, src in self.columns.items() if src != ours}


@dataclass(frozen=True)
class BuildConfig:
    """Everything the feature job depends on; recorded in the output's manifest."""

    export: ExportConfig = field(default_factory=ExportConfig)
    step: str = "5m"
    max_fill: int = 3
    windows: tuple[str, ...] = ("15m", "60m")  # feature-table rolling windows
    tables: bool = True  # also write per-entity feature tables
    #: rows timed outside [min_time, max_time] are quarantined; no max_time means now + 1 day
    min_time: datetime = DEFAULT_MIN_TIME
    max_time: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def time_window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The plausible-time window as two UTC instants; ``ValueError`` if it is empty."""
        lo = parse_instant(self.min_time, "min_time")
        hi = (parse_instant(self.max_time, "max_time") if self.max_time is not None
              else (now or datetime.now(UTC)) + MAX_TIME_AHEAD)
        if lo >= hi:
            raise ValueError(f"min_time {lo.isoformat()} must be before max_time {hi.isoformat()}")
        return lo, hi


def parse_instant(value: datetime | date | str, what: str) -> datetime:
    """A UTC instant from a datetime, a date or an ISO 8601 string (naive means UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"{what} must be an ISO 8601 date or time like 2000-01-01 or "
                             f"2026-09-21T10:00:00Z, got {value!r}") from exc
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a date or time, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_OURS = {s.TS, s.SERVICE, s.POD, s.NODE, s.METRIC, s.VALUE}


def _export_from(table: dict[str, Any], where: str) -> ExportConfig:
    known = {f.name for f in fields(ExportConfig)}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} in [export]; known: {sorted(known)}")
    columns = dict(table.get("columns", {}))
    bad = set(columns) - _OURS
    if bad:
        raise ValueError(f"{where}: [export.columns] keys must be among {sorted(_OURS)}, got {sorted(bad)}")
    cfg = ExportConfig(
        format=table.get("format", "long"),
        columns=columns,
        metrics=tuple(table.get("metrics", ())),
        epoch_unit=table.get("epoch_unit", "auto"),
        timezone=table.get("timezone", "UTC"),
        pod_patterns=tuple(table.get("pod_patterns", ())),
    )
    check_export(cfg, where)
    return cfg


def check_export(cfg: ExportConfig, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` for a config that cannot describe an export."""
    if cfg.format not in ("long", "wide"):
        raise ValueError(f"{where}: format must be 'long' or 'wide', got {cfg.format!r}")
    if cfg.epoch_unit not in EPOCH_UNITS:
        raise ValueError(f"{where}: epoch_unit must be one of {EPOCH_UNITS}, got {cfg.epoch_unit!r}")
    try:
        zoneinfo.ZoneInfo(cfg.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{where}: unknown timezone {cfg.timezone!r}") from exc
    for pattern in cfg.pod_patterns:
        try:
            groups = re.compile(pattern).groups
        except re.error as exc:
            raise ValueError(f"{where}: pod pattern {pattern!r} is not a regex ({exc})") from exc
        if groups < 1:
            raise ValueError(f"{where}: pod pattern {pattern!r} needs a capture group for the workload")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> BuildConfig:
    """Read a TOML config (``[export]`` and ``[build]`` tables), then apply env overrides.

    Environment: ``PREALERT_STEP``, ``PREALERT_MAX_FILL`` override the file; explicit CLI options
    override both (the CLI applies them with :func:`dataclasses.replace`).
    """
    data: dict[str, Any] = {}
    where = str(path) if path else "config"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"{path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    unknown = set(data) - {"export", "build"}
    if unknown:
        raise ValueError(f"{where}: unknown table(s) {sorted(unknown)}; expected [export] and [build]")
    build = dict(data.get("build", {}))
    known = {"step", "max_fill", "windows", "tables", "min_time", "max_time"}
    if set(build) - known:
        raise ValueError(f"{where}: unknown key(s) {sorted(set(build) - known)} in [build]")
    cfg = BuildConfig(export=_export_from(data.get("export", {}), where))
    if "windows" in build:
        build["windows"] = tuple(build["windows"])
    for key in ("min_time", "max_time"):
        if key in build:
            build[key] = parse_instant(build[key], f"{where}: [build] {key}")
    cfg = replace(cfg, **build)
    cfg.time_window()  # an empty window is refused here, not after reading the export
    env = os.environ if env is None else env
    if f"{ENV_PREFIX}STEP" in env:
        cfg = replace(cfg, step=env[f"{ENV_PREFIX}STEP"])
    if f"{ENV_PREFIX}MAX_FILL" in env:
        try:
            cfg = replace(cfg, max_fill=int(env[f"{ENV_PREFIX}MAX_FILL"]))
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}MAX_FILL must be an integer") from exc
    return cfg
