"""Request and response models of the HTTP API, with descriptions and examples for the OpenAPI page."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, StringConstraints, model_validator
from typing_extensions import TypedDict

#: times before this are a client's mistake (a zero date, a wrong epoch), not monitoring data
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
#: how far past the server's clock a sample time may lie (clock skew, time zones gone wrong)
LATEST_AHEAD = timedelta(days=1)
#: finite numbers only, everywhere: NaN and +-Infinity are refused as JSON and as strings
REQUEST_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


_EARLIEST_S = EARLIEST_TIME.timestamp()
_AHEAD_S = LATEST_AHEAD.total_seconds()


def _plausible_time(t: datetime) -> datetime:
    # epoch seconds against time.time(): this runs for every observation of every request
    at = (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()
    latest = time.time() + _AHEAD_S
    if not _EARLIEST_S <= at <= latest:
        latest_at = datetime.fromtimestamp(latest, UTC)
        raise ValueError(f"time must lie between {EARLIEST_TIME:%Y-%m-%d} and {latest_at:%Y-%m-%dT%H:%MZ} "
                         "(server time + 1 day)")
    return t


def plausible_seconds(at: Any) -> Any:
    """Whether epoch seconds (a number or a numpy array of them) lie in ``_plausible_time``'s window."""
    return (at >= _EARLIEST_S) & (at <= time.time() + _AHEAD_S)


#: strict: an ISO-8601 string, not a number of seconds; within the plausible window
PlausibleTime = Annotated[datetime, Strict(), AfterValidator(_plausible_time)]
#: strict: a JSON number, not a string or a boolean (finite by REQUEST_CONFIG)
Number = Annotated[float, Strict()]
#: user input quoted back in an error message is cut to this many characters
ECHO_CHARS = 100
#: pydantic validation errors quoted in one message, at most this many
VALIDATION_ERRORS_SHOWN = 5


def positive_int(env: str, default: int, unit: str) -> int:
    """The environment variable ``env`` as a positive whole number, ``default`` when unset."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"{env}={shortened(raw, 40)!s} is not a positive whole number of {unit}")
    return int(raw)


def validation_message(errors: list[dict]) -> str:
    """Pydantic's validation errors as one line: ``where: what; ...``, user input shortened."""
    parts = []
    for err in errors[:VALIDATION_ERRORS_SHOWN]:
        where = ".".join(shortened(p, 40) for p in err.get("loc", ()))
        what = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {what}" if where else what)
    more = len(errors) - VALIDATION_ERRORS_SHOWN
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def shortened(text: object, limit: int = ECHO_CHARS) -> str:
    """``text`` as a string of at most ``limit`` characters, marked when cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


class Observation(BaseModel):
    model_config = REQUEST_CONFIG

    ts: PlausibleTime = Field(description="Sample time; ISO-8601, UTC when no offset is given.",
                              examples=["2026-10-03T14:00:00Z"])
    value: Number = Field(description="Observed value in the metric's unit (a finite number).",
                         examples=[81.5])


class PredictRequest(BaseModel):
    model_config = REQUEST_CONFIG

    series_id: str | None = Field(
        None, max_length=200, description="Series id '<workload or node>/<metric>', e.g. "
        "'portal-demo/jvm_heap_pct'. Alternative to metric + labels.",
        examples=["portal-demo/jvm_heap_pct"])
    metric: str | None = Field(None, max_length=100, description="Metric name.",
                               examples=["jvm_heap_pct"])
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=50,
        description="Labels locating the series: 'service' (workload), or 'pod' (its workload is "
        "derived from the name, so a brand-new pod uses its workload's model), or 'node'.",
        examples=[{"service": "portal-demo"}])
    rule: str | None = Field(
        None, max_length=100, description="A rule of the rules catalogue (GET /rules), e.g. "
        "'jvm_heap': its threshold, direction, horizon (and metric, when not given) as set for the "
        "series' workload/service/node; fields given in the request win.", examples=["jvm_heap"])
    threshold: Number | None = Field(
        None, description="The operator's threshold; default: the rule's, else the metric catalogue's.",
        examples=[90])
    direction: Literal["above", "below"] | None = Field(
        None, description="'above' for rising danger (heap), 'below' for falling (APDEX); "
        "default: the metric catalogue's.", examples=["above"])
    horizon_minutes: Number = Field(
        240, gt=0, le=24 * 60, description="How far ahead to look, in minutes (the model "
        "answers up to the horizon it learned its errors for, 360 by default).", examples=[240])
    recent: list[Observation] = Field(
        default_factory=list, max_length=10_000,
        description="Most recent observations of the series; they set 'now' and correct the "
        "forecast's level in real time. Left out (and no 'now' given) on a server with a "
        "Prometheus source (PREALERT_PROMETHEUS_URL), the server fetches them itself (503 "
        "source_unavailable when it cannot, 404 when Prometheus returns no such series).",
        examples=[[{"ts": "2026-10-03T14:00:00Z", "value": 81.5},
                   {"ts": "2026-10-03T14:05:00Z", "value": 81.9}]])
    context: dict[str, Number] = Field(
        default_factory=dict, max_length=200,
        description="Latest values of the same workload's other metrics, by metric name, for "
        "the anomaly score; metrics not given count as at their expectation.",
        examples=[{"gc_pause_ms": 35.0}])
    now: PlausibleTime | None = Field(
        None, description="Evaluation time when no recent observations are sent; default: the "
        "end of the model's training data.", examples=["2026-10-03T14:05:00Z"])

    @model_validator(mode="after")
    def _series_named(self) -> PredictRequest:
        if not self.series_id and not self.metric and not self.rule:
            raise ValueError("give either 'series_id', or 'metric' (or 'rule') with 'labels'")
        return self


#: the times a batch reads as text in its one pass (numpy parses them all at once): ISO-8601 in
#: UTC ('Z' or no offset), whole or fractional seconds; another form (an offset, a space for the
#: 'T') makes its item one to validate alone as /predict does
BATCH_TIME_PATTERN = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]"
                      r"(:[0-5][0-9](\.[0-9]{1,6})?)?Z?$")
#: the longest text of :data:`BATCH_TIME_PATTERN` ('2026-10-15T00:30:00.123456Z')
BATCH_TIME_CHARS = 27


class _BatchObservation(TypedDict):
    __pydantic_config__ = REQUEST_CONFIG  # type: ignore[misc]

    # the pattern is checked over all of a batch's times at once (``serving.predictor``): a regex
    # per observation was half of the batch's validation; the length bounds the array it reads
    ts: Annotated[str, Strict(), StringConstraints(max_length=BATCH_TIME_CHARS)]
    value: Number


class BatchItem(TypedDict, total=False):
    """A /predict body as a batch item is first read: :class:`PredictRequest`'s checks that run
    inside pydantic's core, as a plain dict. The two checks that would call Python per item or
    per observation, the times' plausible window and "some series named", the batch runs over
    all its items at once; an item failing either is validated as a ``PredictRequest`` alone,
    for the message /predict gives (tests/serving compare the two schemas). Observation times are
    read as text of :data:`BATCH_TIME_PATTERN` (a UTC subset of what /predict reads); an item with
    another form of time is validated alone too."""

    __pydantic_config__ = REQUEST_CONFIG  # type: ignore[misc]

    series_id: Annotated[str | None, Field(max_length=200)]
    metric: Annotated[str | None, Field(max_length=100)]
    labels: Annotated[dict[str, str], Field(max_length=50)]
    rule: Annotated[str | None, Field(max_length=100)]
    threshold: Number | None
    direction: Literal["above", "below"] | None
    horizon_minutes: Annotated[Number, Field(gt=0, le=24 * 60)]
    recent: Annotated[list[_BatchObservation], Field(max_length=10_000)]
    context: Annotated[dict[str, Number], Field(max_length=200)]
    now: Annotated[datetime, Strict()] | None


class BatchItems(TypedDict):
    """A /predict_batch body whose items are all :class:`BatchItem`."""

    __pydantic_config__ = REQUEST_CONFIG  # type: ignore[misc]

    items: list[BatchItem]


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable kind: bad_request, not_found, payload_too_large, "
                      "unsupported_media_type, model_not_loaded, source_unavailable, internal_error, ...",
                      examples=["not_found"])
    message: str = Field(description="What is wrong, for a person; user input in it is shortened.",
                         examples=["no model for series 'nope/jvm_heap_pct'; known series: ..."])


class ErrorResponse(BaseModel):
    """The one shape of every error answer (4xx and 5xx)."""

    error: ErrorDetail


class TopMetric(BaseModel):
    metric: str
    z: float = Field(description="Distance from the expected value, in residual standard deviations.")


class Driver(BaseModel):
    component: str = Field(description="trend, seasonality, recent_level or recent_drift.")
    meaning: str
    change: float = Field(description="Its contribution in the metric's unit.")


class PredictResponse(BaseModel):
    series_id: str = Field(description="The series that answered.")
    model_version: str = Field(description="Registered model version (or bundle fingerprint).")
    model_kind: str = Field(description="'prophet', or 'linear' for the fallback model.")
    now: datetime = Field(description="The evaluation time the minutes count from (UTC).")
    threshold: float
    direction: str
    horizon_minutes: float
    minutes_to_threshold: float | None = Field(
        description="If the series crosses within the horizon, when: the median crossing time "
        "of the plausible paths that cross, in minutes (how likely that is: 'probability'); 0 "
        "if already crossed; null if no path crosses. The linear fallback model gives its "
        "point forecast's crossing instead.")
    crossing_at: datetime | None = Field(description="Predicted crossing time (UTC).")
    earliest_minutes: float | None = Field(
        description="P10 of the crossing time given a crossing (fallback: its P90 band's).")
    latest_minutes: float | None = Field(
        description="P90 of the crossing time given a crossing (fallback: its P10 band's, null "
        "if beyond the horizon).")
    earliest_at: datetime | None
    latest_at: datetime | None
    probability: float = Field(description="Probability of reaching the threshold within the horizon.")
    already_crossed: bool
    alert: bool = Field(
        description="Whether to warn now, by alert_rule: probability >= alarm_probability at "
        "every check for the rule's 'for' period (each check answered from the observations up "
        "to it), kept firing for its 'keep_firing_for' after. Send the last 90 minutes of "
        "observations for the rule to see all its checks; with fewer, checks before the first "
        "observation do not count and the rule shrinks to what they cover (alert_rule says "
        "so).")
    alarm_probability: float = Field(
        description="The alert level for this series and horizon, chosen with the rule's 'for' "
        "on the model's holdout replay (of the settings within 3% of the best F1, the one with "
        "the fewest false alarms), else 0.5.")
    alert_rule: str = Field(description="The rule behind 'alert', as a Prometheus rule says it.")
    keep_firing_minutes_left: float | None = Field(
        None, description="When 'alert' is held on only by the rule's keep_firing_for (the "
        "probability has fallen below alarm_probability), the minutes it stays on at most; "
        "null otherwise.")
    calibrated: bool = Field(
        True, description="Whether the probability is calibrated on the model's holdout replay.")
    calibration_note: str = Field(
        "", description="How the probability was calibrated (and whether by extrapolation to a "
        "threshold outside those the replay tried), or why it is not.")
    calendar: str = Field(
        "", description="The time zone and public-holiday calendar behind the model's daily and "
        "weekly shapes (forecaster settings 'timezone' and 'holidays_country').")
    driver: str | None = Field(
        description="What mainly drives the crossing: trend, seasonality, recent_level or "
        "recent_drift.")
    drivers: list[Driver] = Field(
        description="Contributions toward the threshold between now and the crossing, largest first.")
    level_correction: float = Field(
        description="Shift applied from the recent observations' residuals (real-time correction).")
    trend_correction_per_min: float = Field(
        description="Slope of the recent residuals, followed with a one-hour damping.")
    anomaly_score: float | None = Field(
        description="0-1, never reaching 1: s/(1+s), where s = -log10 of the probability that a "
        "training minute looked at least this anomalous to the entity's isolation forest (beyond "
        "the training extremes, a generalized Pareto tail). 0.5: a minute this unusual is expected "
        "once every 10 training minutes, 0.75 once every 1,000, 0.9 once every 10^9. Null without "
        "recent observations or context.")
    anomaly_top_metrics: list[TopMetric]
    message: str = Field(description="The answer as an operator reads it.")
    resolved_by: str = Field(
        "series_id given", description="How the request's labels led to the series that answered, "
        "e.g. a new pod's workload from the feature job's pods table or from its name.",
        examples=["pod 'portal-demo-19-2xfkl' -> workload 'portal-demo' (pods.parquet)"])
    rule: str | None = Field(None, description="The catalogue rule the request named, if any.")


BATCH_ITEM_EXAMPLE = {"series_id": "portal-demo/jvm_heap_pct", "threshold": 90, "horizon_minutes": 240}


class PredictBatchRequest(BaseModel):
    model_config = REQUEST_CONFIG

    items: list[dict[str, Any]] = Field(
        description="Each item a /predict request body (schema PredictRequest), checked on its own: "
        "an invalid item gets its own error, never failing the batch. At most the server's "
        "PREALERT_MAX_BATCH items (default 1000); more is 413.",
        examples=[[BATCH_ITEM_EXAMPLE, {"rule": "apdex", "labels": {"service": "portal-demo"}}]])


class BatchItemResult(BaseModel):
    index: int = Field(description="Position of the item in the request.")
    status: int = Field(description="The HTTP status this item would have had alone: 200, 400, 404, 500.")
    answer: PredictResponse | None = Field(None, description="The answer, when status is 200.")
    error: ErrorDetail | None = Field(None, description="Why the item has no answer.")


class PredictBatchResponse(BaseModel):
    model_version: str = Field(description="The model that answered every item of the batch.")
    answered: int
    failed: int
    results: list[BatchItemResult] = Field(description="One per item, in the request's order.")


class SeriesInfo(BaseModel):
    series_id: str
    entity: str = Field(description="The workload (service) or node of the series.")
    metric: str
    model_kind: str = Field(description="'prophet', or 'linear' for the fallback model.")
    fallback: bool = Field(description="Whether the fallback model serves this series.")
    fallback_reason: str | None
    first_ts: datetime | None = Field(description="First training sample of the series (UTC).")
    last_ts: datetime | None = Field(description="Last training sample of the series (UTC).")
    n_points: int | None
    step_minutes: float | None


class SeriesList(BaseModel):
    model_version: str
    training_window: dict[str, str] | None = Field(description="The bundle's training window (start, end).")
    count: int
    series: list[SeriesInfo]


class SeriesObservations(BaseModel):
    model_config = REQUEST_CONFIG

    series_id: str | None = Field(None, max_length=200, description="As in /predict.",
                                  examples=["portal-demo/jvm_heap_pct"])
    metric: str | None = Field(None, max_length=100, description="As in /predict.", examples=["jvm_heap_pct"])
    labels: dict[str, str] = Field(default_factory=dict, max_length=50, description="As in /predict.",
                                   examples=[{"service": "portal-demo"}])
    recent: list[Observation] = Field(default_factory=list, max_length=10_000,
                                      description="Most recent observations of the series; left "
                                      "out, fetched from the server's Prometheus source if it has one.")
    context: dict[str, Number] = Field(default_factory=dict, max_length=200, description="As in /predict.")

    @model_validator(mode="after")
    def _series_named(self) -> SeriesObservations:
        if not self.series_id and not self.metric:
            raise ValueError("give either 'series_id' or 'metric' with 'labels'")
        return self


class AlertsRequest(BaseModel):
    model_config = REQUEST_CONFIG

    series: list[SeriesObservations] = Field(
        description="The series to check, with their recent observations; each is checked against "
        "every catalogue rule on its metric. At most PREALERT_MAX_BATCH series (413 beyond).",
        examples=[[{"series_id": "portal-demo/jvm_heap_pct",
                    "recent": [{"ts": "2026-10-03T14:00:00Z", "value": 81.5}]}]])
    rules: list[Annotated[str, Field(max_length=100)]] | None = Field(
        None, max_length=200, description="Only these rules; default: all of the catalogue.",
        examples=[["jvm_heap", "disk"]])


class PredictedAlert(BaseModel):
    rule: str
    severity: str
    series_id: str
    threshold: float
    direction: str
    lead_minutes: float = Field(description="The rule's lead time: a crossing predicted within it is listed.")
    horizon_minutes: float
    minutes_to_threshold: float | None = Field(description="Median crossing time; 0 if already crossed.")
    earliest_minutes: float | None
    latest_minutes: float | None
    crossing_at: datetime | None
    probability: float
    already_crossed: bool
    alert: bool = Field(description="Whether prealert's alert rule says warn now (see /predict).")
    message: str
    resolved_by: str


class SkippedSeries(BaseModel):
    index: int = Field(description="Position of the series in the request.")
    series: str = Field(description="The series as the request named it.")
    error: ErrorDetail


class AlertsResponse(BaseModel):
    model_version: str
    checked: int = Field(description="Series x rule pairs evaluated.")
    alerts: list[PredictedAlert] = Field(
        description="Series predicted to cross within their rule's lead time (already crossed, or "
        "a median crossing within lead_minutes with probability at or above the series' alarm "
        "level), most urgent first.")
    skipped: list[SkippedSeries] = Field(description="Series that could not be checked, and why.")


class RuleInfo(BaseModel):
    name: str = Field(description="What requests and /alerts call the rule.", examples=["jvm_heap"])
    metric: str = Field(description="The metric it watches (features/schema.py's catalogue).")
    threshold: float = Field(description="In the metric's unit; default the metric catalogue's.")
    direction: str = Field(description="'above' or 'below'.")
    lead_minutes: float = Field(description="/alerts lists crossings predicted within this many minutes.")
    horizon_minutes: float = Field(description="How far ahead the forecast looks.")
    severity: str = Field(description="Label for alerting systems.")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per workload/service/node: the fields that differ.")


class RulesList(BaseModel):
    files: list[str] = Field(description="The catalogue file, then the operator's (PREALERT_RULES).")
    rules: list[RuleInfo]
