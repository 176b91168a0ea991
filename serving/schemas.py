"""Request and response models of the HTTP API, with descriptions and examples for the OpenAPI page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator

#: times before this are a client's mistake (a zero date, a wrong epoch), not monitoring data
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
#: how far past the server's clock a sample time may lie (clock skew, time zones gone wrong)
LATEST_AHEAD = timedelta(days=1)
#: finite numbers only, everywhere: NaN and +-Infinity are refused as JSON and as strings
REQUEST_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def _plausible_time(t: datetime) -> datetime:
    aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    latest = datetime.now(UTC) + LATEST_AHEAD
    if not EARLIEST_TIME <= aware <= latest:
        raise ValueError(f"time must lie between {EARLIEST_TIME:%Y-%m-%d} and {latest:%Y-%m-%dT%H:%MZ} "
                         "(server time + 1 day)")
    return t


#: strict: an ISO-8601 string, not a number of seconds; within the plausible window
PlausibleTime = Annotated[datetime, Strict(), AfterValidator(_plausible_time)]
#: strict: a JSON number, not a string or a boolean (finite by REQUEST_CONFIG)
Number = Annotated[float, Strict()]


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
    threshold: Number | None = Field(
        None, description="The operator's threshold; default: the metric catalogue's.", examples=[90])
    direction: Literal["above", "below"] | None = Field(
        None, description="'above' for rising danger (heap), 'below' for falling (APDEX); "
        "default: the metric catalogue's.", examples=["above"])
    horizon_minutes: Number = Field(
        240, gt=0, le=24 * 60, description="How far ahead to look, in minutes (the model "
        "answers up to the horizon it learned its errors for, 360 by default).", examples=[240])
    recent: list[Observation] = Field(
        default_factory=list, max_length=10_000,
        description="Most recent observations of the series; they set 'now' and correct the "
        "forecast's level in real time.",
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
        if not self.series_id and not self.metric:
            raise ValueError("give either 'series_id' or 'metric' with 'labels'")
        return self


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable kind: bad_request, not_found, payload_too_large, "
                      "unsupported_media_type, model_not_loaded, internal_error, ...",
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
        description="0-1: share of training minutes that looked less anomalous; null without "
        "recent observations or context.")
    anomaly_top_metrics: list[TopMetric]
    message: str = Field(description="The answer as an operator reads it.")
