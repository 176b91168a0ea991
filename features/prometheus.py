"""Pulling series from the Prometheus HTTP API into prealert's long export schema."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl

from features import schema as s

#: Prometheus refuses a range query that would return more points than this per series
MAX_POINTS_PER_SERIES = 11_000
#: columns of the export that a Prometheus label may not overwrite (it is kept as ``exported_<name>``)
RESERVED = (s.TS, s.METRIC, s.VALUE, s.SERIES_ID, s.ENTITY)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused the query; the message is one line."""


def parse_duration(text: str | float, what: str = "duration") -> timedelta:
    """A Prometheus duration (``15s``, ``1m``, ``1h30m``) or a number of seconds, as a timedelta."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip()
        try:
            seconds = float(raw)
        except ValueError:
            parts = _DURATION.findall(raw)
            if not parts or "".join(n + u for n, u in parts) != raw:
                raise ValueError(f"{what} must be a duration like 15s, 1m or 1h30m, or seconds; "
                                 f"got {text!r}") from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be positive, got {text!r}")
    return timedelta(seconds=seconds)


def parse_time(text: str | datetime, what: str = "time", now: datetime | None = None) -> datetime:
    """A UTC instant from ISO 8601 (naive = UTC), epoch seconds, ``now`` or ``now-<duration>``."""
    if isinstance(text, datetime):
        return text.replace(tzinfo=UTC) if text.tzinfo is None else text.astimezone(UTC)
    raw = text.strip()
    now = now or datetime.now(UTC)
    if raw == "now":
        return now
    if raw.startswith("now-"):
        return now - parse_duration(raw[4:], what)
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} must be ISO 8601 (2026-10-03T21:00:00Z), epoch seconds, 'now' or "
                         f"'now-2h', got {text!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def range_chunks(start: datetime, end: datetime, step: timedelta,
                 max_points: int = MAX_POINTS_PER_SERIES) -> list[tuple[datetime, datetime]]:
    """Split ``[start, end]`` into windows of at most ``max_points`` evaluation steps each.

    Prometheus evaluates at ``start, start + step, ...`` up to ``end``; each window starts one step
    after the previous one's last evaluation, so stitched windows give exactly one query's points.
    """
    if end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    if max_points < 1:
        raise ValueError(f"max points per request must be at least 1, got {max_points}")
    n_points = int((end - start) / step) + 1
    chunks = []
    for first in range(0, n_points, max_points):
        last = min(first + max_points, n_points) - 1
        chunks.append((start + first * step, start + last * step))
    return chunks


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _api(client: httpx.Client, base_url: str, path: str, form: Mapping[str, str]) -> dict:
    """POST a form to a Prometheus API path; its ``data`` and ``warnings``, or ``PrometheusError``."""
    url = base_url.rstrip("/") + path
    try:
        response = client.post(url, data=dict(form))
    except httpx.TimeoutException as exc:
        raise PrometheusError(f"Prometheus at {base_url} did not answer in time "
                              f"({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise PrometheusError(f"cannot reach Prometheus at {base_url}: {_one_line(exc)}") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PrometheusError(f"Prometheus at {url} answered HTTP {response.status_code} with no API "
                              f"response: {_one_line(response.text, 200)!r}")
    if body.get("status") != "success":
        query = _one_line(form.get("query", ""), 120)
        raise PrometheusError(f"Prometheus {body.get('errorType', 'error')}: "
                              f"{_one_line(body.get('error', 'no error message'))} "
                              f"(HTTP {response.status_code}, query {query!r})")
    return body


def _epoch(t: datetime) -> str:
    return f"{t.timestamp():.3f}"


@dataclass
class RangeResult:
    """What a (chunked) range query returned: series by their label set, and server warnings."""

    series: dict[tuple[tuple[str, str], ...], list[tuple[float, str]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    requests: int = 0


def query_range(base_url: str, query: str, start: datetime, end: datetime, step: timedelta, *,
                client: httpx.Client | None = None, max_points: int = MAX_POINTS_PER_SERIES,
                timeout: float = 60.0, into: RangeResult | None = None) -> RangeResult:
    """Run ``/api/v1/query_range`` over ``[start, end]`` in chunks of at most ``max_points`` steps.

    Raises ``PrometheusError`` (one line) when Prometheus is unreachable or answers an error, and
    for a result that is not a matrix of float samples (native histograms are not exported).
    """
    result = into or RangeResult()
    own = client is None
    client = client or httpx.Client(timeout=timeout)
    try:
        for lo, hi in range_chunks(start, end, step, max_points):
            body = _api(client, base_url, "/api/v1/query_range",
                        {"query": query, "start": _epoch(lo), "end": _epoch(hi),
                         "step": f"{step.total_seconds():g}", "timeout": f"{timeout:g}s"})
            result.requests += 1
            result.warnings.extend(str(w) for w in body.get("warnings", []))
            data = body.get("data") or {}
            if data.get("resultType") != "matrix":
                raise PrometheusError(f"query {query!r} gave a {data.get('resultType')!r} result, "
                                      "expected a range vector (matrix)")
            for item in data.get("result", []):
                if "histograms" in item:
                    raise PrometheusError(f"query {query!r} returns native histograms; export a float "
                                          "expression such as histogram_quantile(...) instead")
                key = tuple(sorted(item.get("metric", {}).items()))
                result.series.setdefault(key, []).extend(
                    (float(t), v) for t, v in item.get("values", []))
    finally:
        if own:
            client.close()
    return result


def _label_columns(labels: Mapping[str, str], label_map: Mapping[str, str]) -> dict[str, str]:
    """One series' labels as export columns: mapped names first, displaced or reserved ones kept
    as ``exported_<name>`` (Prometheus's own convention for a clash)."""
    out: dict[str, str] = {}
    mapped = {label_map[k]: v for k, v in labels.items() if k in label_map}
    for name, value in labels.items():
        if name == "__name__" or name in label_map:
            continue
        if name in mapped or name in RESERVED:
            out[f"exported_{name}"] = value
        else:
            out[name] = value
    out.update(mapped)
    return out


def to_export(result: RangeResult, label_map: Mapping[str, str] | None = None,
              metric: str | None = None, query: str = "") -> pl.DataFrame:
    """A range result as prealert's long export: ``ts`` (UTC), ``service``, ``pod``, ``node``,
    ``metric``, ``value``, then every other label as a column (sorted by name).

    ``__name__`` becomes ``metric`` unless ``metric`` names the series (needed when the query is
    an expression, whose result has no ``__name__``). ``label_map`` renames labels, e.g.
    ``{"instance": "node"}``. ``NaN``/``Inf`` samples are kept: the feature job quarantines them.
    """
    label_map = dict(label_map or {})
    bad = [f"{k}={v}" for k, v in label_map.items() if v in RESERVED or not v or not k]
    if bad:
        raise ValueError(f"label mapping {bad} targets a reserved column {list(RESERVED)} or is empty")
    rows: dict[str, list] = {s.TS: [], s.METRIC: [], s.VALUE: []}
    label_rows: list[dict[str, str]] = []
    for key, samples in result.series.items():
        labels = dict(key)
        name = metric or labels.get("__name__")
        if not name:
            raise ValueError(f"query {query!r} returns series without a metric name (__name__), "
                             f"e.g. {labels}; name them with --metric")
        columns = _label_columns(labels, label_map)
        for t, v in samples:
            rows[s.TS].append(round(t * 1000) * 1000)  # Prometheus times are ms-precise seconds
            rows[s.METRIC].append(name)
            rows[s.VALUE].append(float(v))
            label_rows.append(columns)
    names = sorted({n for cols in label_rows for n in cols} - set(s.LABELS))
    frame = pl.DataFrame(
        {
            s.TS: pl.Series(rows[s.TS], dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            **{c: pl.Series([r.get(c) for r in label_rows], dtype=pl.String) for c in s.LABELS},
            s.METRIC: pl.Series(rows[s.METRIC], dtype=pl.String),
            s.VALUE: pl.Series(rows[s.VALUE], dtype=pl.Float64),
            **{c: pl.Series([r.get(c) for r in label_rows], dtype=pl.String) for c in names},
        }
    )
    s.validate(frame, s.EXPORT_SCHEMA, what="Prometheus export")
    return frame.sort(s.METRIC, *s.LABELS, *names, s.TS, nulls_last=True)


def export_range(base_url: str, queries: Iterable[str], start: datetime, end: datetime,
                 step: timedelta, *, label_map: Mapping[str, str] | None = None,
                 metric: str | None = None, max_points: int = MAX_POINTS_PER_SERIES,
                 timeout: float = 60.0) -> tuple[pl.DataFrame, RangeResult]:
    """Every query's series over ``[start, end]`` as one long export frame (see :func:`to_export`)."""
    frames, total = [], RangeResult()
    with httpx.Client(timeout=timeout) as client:
        for query in queries:
            result = query_range(base_url, query, start, end, step, client=client,
                                 max_points=max_points, timeout=timeout)
            total.requests += result.requests
            total.warnings.extend(result.warnings)
            total.series.update(result.series)
            frames.append(to_export(result, label_map, metric, query))
    frame = pl.concat(frames, how="diagonal") if frames else to_export(RangeResult())
    extra = sorted(set(frame.columns) - set(s.EXPORT_SCHEMA))
    return frame.select(*s.EXPORT_SCHEMA, *extra).sort(s.METRIC, *s.LABELS, *extra, s.TS,
                                                       nulls_last=True), total
