"""The one place that says what a metric export and a series frame look like, and how each metric behaves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

# --- column names: every stage uses these constants, never literals -------------------------
TS = "ts"  # sample time, UTC
VALUE = "value"
METRIC = "metric"
SERVICE = "service"  # the workload label of an export (deployment / deploymentconfig / statefulset)
POD = "pod"  # container instance; null for node-level metrics
NODE = "node"
SERIES_ID = "series_id"  # "<entity>/<metric>", entity = workload for pod metrics, node for node metrics
ENTITY = "entity"
N_PODS = "n_pods"  # how many pods contributed to a rolled-up minute
FILLED = "filled"  # True where a short gap was interpolated
VALUE_MAX = "value_max"  # the busiest pod's value, for kinds rolled up by mean AND max
VALUE_MIN = "value_min"  # the worst pod's value, for kinds whose danger is low (ratios)

LABELS = (SERVICE, POD, NODE)

#: long-format export, as an APM or Prometheus export arrives (after the reader's type coercion)
EXPORT_SCHEMA: dict[str, pl.DataType] = {
    TS: pl.Datetime("us", "UTC"),
    SERVICE: pl.String(),
    POD: pl.String(),
    NODE: pl.String(),
    METRIC: pl.String(),
    VALUE: pl.Float64(),
}

#: regular per-series frame handed to training: one row per (series_id, ts) on a fixed grid
SERIES_SCHEMA: dict[str, pl.DataType] = {
    SERIES_ID: pl.String(),
    ENTITY: pl.String(),
    METRIC: pl.String(),
    TS: pl.Datetime("us", "UTC"),
    VALUE: pl.Float64(),
    N_PODS: pl.UInt32(),
    FILLED: pl.Boolean(),
}

#: optional columns the feature job adds to the series frame (training may ignore them)
SERIES_EXTRA_SCHEMA: dict[str, pl.DataType] = {
    VALUE_MAX: pl.Float64(),
    VALUE_MIN: pl.Float64(),
}

Direction = Literal["above", "below"]
Rollup = Literal["mean", "max", "min", "sum"]
Kind = Literal["percent", "ratio", "latency", "rate", "count", "counter", "gauge"]


@dataclass(frozen=True)
class KindRule:
    """What a kind of metric allows and how its pods combine into a workload."""

    lower: float
    upper: float
    rollups: tuple[Rollup, ...]  # every rollup the series frame carries for this kind


#: one table for every kind: valid range and workload rollups. The primary ``value`` always uses
#: the metric's own ``MetricSpec.rollup``; a ``max``/``min`` listed here also fills the
#: ``value_max``/``value_min`` column. Counters are turned into per-second rates (resets handled as
#: Prometheus ``rate()`` does) before they are summed across pods.
KINDS: dict[Kind, KindRule] = {
    "percent": KindRule(0.0, 100.0, ("mean", "max")),
    "ratio": KindRule(0.0, 1.0, ("mean", "min")),
    "latency": KindRule(0.0, float("inf"), ("mean", "max")),
    "rate": KindRule(0.0, float("inf"), ("sum",)),
    "count": KindRule(0.0, float("inf"), ("sum",)),
    "counter": KindRule(0.0, float("inf"), ("sum",)),
    "gauge": KindRule(float("-inf"), float("inf"), ("mean", "max")),
}


@dataclass(frozen=True)
class MetricSpec:
    """How one metric behaves: its unit, valid range, workload rollup and direction of danger."""

    name: str
    unit: str
    level: Literal["pod", "node"]
    rollup: Rollup  # how pods combine into their workload
    direction: Direction
    threshold: float  # a typical operator threshold, used when a request names none
    lower: float = 0.0  # values outside [lower, upper] are impossible for this kind
    upper: float = float("inf")
    kind: Kind = "gauge"  # see KINDS; a counter's series holds its per-second rate

    @property
    def is_counter(self) -> bool:
        return self.kind == "counter"


#: the metric catalogue: one table for units, ranges, rollups and default thresholds
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("jvm_heap_pct", "%", "pod", "mean", "above", 90.0, 0, 100, "percent"),
        MetricSpec("gc_time_pct", "%", "pod", "mean", "above", 20.0, 0, 100, "percent"),
        MetricSpec("cpu_pct", "%", "pod", "mean", "above", 80.0, 0, 100, "percent"),
        MetricSpec("mem_pct", "%", "pod", "mean", "above", 90.0, 0, 100, "percent"),
        MetricSpec("db_pool_pct", "%", "pod", "mean", "above", 90.0, 0, 100, "percent"),
        MetricSpec("apdex", "ratio", "pod", "mean", "below", 0.7, 0, 1, "ratio"),
        MetricSpec("error_rate_pct", "%", "pod", "mean", "above", 5.0, 0, 100, "percent"),
        MetricSpec("response_time_ms", "ms", "pod", "mean", "above", 3000.0, 0, kind="latency"),
        MetricSpec("tps", "1/s", "pod", "sum", "above", 200.0, 0, kind="rate"),
        # a monotonic counter of requests served; its series is the per-second rate
        MetricSpec("requests_total", "1/s", "pod", "sum", "above", 200.0, 0, kind="counter"),
        MetricSpec("disk_pct", "%", "node", "max", "above", 90.0, 0, 100, "percent"),
        # the rest of the vendor's alarm targets (DOMAIN.md); the rules catalogue covers them all
        MetricSpec("jvm_metaspace_pct", "%", "pod", "mean", "above", 90.0, 0, 100, "percent"),
        MetricSpec("db_response_time_ms", "ms", "pod", "mean", "above", 1000.0, 0, kind="latency"),
        MetricSpec("pending_transactions", "1", "pod", "sum", "above", 100.0, 0, kind="count"),
        MetricSpec("web_requests_per_s", "1/s", "pod", "sum", "above", 500.0, 0, kind="rate"),
        MetricSpec("web_worker_pct", "%", "pod", "mean", "above", 90.0, 0, 100, "percent"),
        MetricSpec("swap_pct", "%", "node", "max", "above", 50.0, 0, 100, "percent"),
        MetricSpec("net_packet_errors_per_s", "1/s", "node", "sum", "above", 10.0, 0, kind="rate"),
        MetricSpec("cubrid_cas_pct", "%", "node", "max", "above", 90.0, 0, 100, "percent"),
    )
}


def series_id(entity: str, metric: str) -> str:
    """The id of a rolled-up series, e.g. ``portal-demo/jvm_heap_pct``."""
    return f"{entity}/{metric}"


def split_series_id(sid: str) -> tuple[str, str]:
    """Inverse of :func:`series_id`; raises ``ValueError`` on a malformed id."""
    entity, sep, metric = sid.rpartition("/")
    if not sep or not entity or not metric:
        raise ValueError(f"series id {sid!r} is not of the form '<entity>/<metric>'")
    return entity, metric


def validate(frame: pl.DataFrame | pl.LazyFrame, schema: dict[str, pl.DataType], *, what: str):
    """Check columns and dtypes; raise one ``ValueError`` naming every missing or mistyped column.

    Extra columns are allowed. Datetime columns must carry the schema's time unit and time zone.
    """
    actual = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    problems = []
    for name, dtype in schema.items():
        if name not in actual:
            problems.append(f"missing column {name!r} ({dtype})")
        elif actual[name] != dtype:
            problems.append(f"column {name!r} is {actual[name]}, expected {dtype}")
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))
    return frame


def spec_for(metric: str) -> MetricSpec:
    """The catalogue entry for a metric; an unknown metric rolls up by mean with no range check."""
    return METRICS.get(metric) or MetricSpec(metric, "", "pod", "mean", "above", float("nan"),
                                             float("-inf"), float("inf"), "gauge")


def value_range(metric: str) -> tuple[float, float]:
    """The values a metric can physically take: its catalogue bounds within its kind's."""
    spec = spec_for(metric)
    kind = KINDS[spec.kind]
    return max(spec.lower, kind.lower), min(spec.upper, kind.upper)
