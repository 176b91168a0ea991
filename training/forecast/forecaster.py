"""Per-series forecasters: Prophet with Korean holidays, and a linear fallback for when it cannot serve."""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl
from holidays import country_holidays

from features import schema as s
from training.threshold import Z90, ProbabilityCalibration

for _name in ("prophet", "cmdstanpy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

FORECAST_COLUMNS = (s.TS, "yhat", "yhat_lower", "yhat_upper")
#: how Prophet's MAP is found: "map" in-process (prophet_map.py), "stan" by Prophet's cmdstan child
FIT_SOLVERS = ("map", "stan")
#: the steps (minutes) Prophet may be fitted at; the finest that keeps the fit small is chosen
FIT_STEPS_MINUTES = (1, 2, 5, 10, 15, 20, 30, 60, 120)


@lru_cache(maxsize=32)
def _public_holidays(country: str, first_year: int, last_year: int) -> np.ndarray:
    days = country_holidays(country, years=range(first_year, last_year + 1))
    return np.array(sorted(days), dtype="datetime64[D]")


@lru_cache(maxsize=64)
def _fixed_offset(tz: str, first_year: int, last_year: int) -> np.timedelta64 | None:
    """The zone's UTC offset if it is the same all through these years (no DST), else None."""
    zone = ZoneInfo(tz)
    offsets = {datetime(y, m, 1, tzinfo=zone).utcoffset()
               for y in range(first_year - 1, last_year + 2) for m in range(1, 13)}
    if len(offsets) != 1:
        return None
    return np.timedelta64(int(offsets.pop().total_seconds() * 1e6), "us")


def local_calendar(ts: pl.Series | np.ndarray, tz: str, country: str | None = "KR"
                   ) -> dict[str, np.ndarray]:
    """UTC instants as naive local times ``ds``, with ``workday``/``offday`` flags.

    Local time, so that office hours and Korean holidays fall on the right hours and dates.
    ``workday`` marks weekdays that are not public holidays, for the conditional daily
    seasonalities (an office-hour peak on workdays, a flat day on weekends and holidays).
    """
    utc = np.asarray(ts, dtype="datetime64[us]")
    years = utc.astype("datetime64[Y]").astype(int) + 1970 if utc.size else np.array([1970])
    offset = _fixed_offset(tz, int(years.min()), int(years.max()))
    if offset is not None:  # numpy is ten times faster than pandas' zone conversion
        ds = utc + offset
    else:
        ds = (pd.DatetimeIndex(utc).tz_localize("UTC").tz_convert(tz).tz_localize(None)
              .values.astype("datetime64[us]"))
    days = ds.astype("datetime64[D]")
    off = ((days.astype(np.int64) + 3) % 7) >= 5  # 1970-01-01 was a Thursday: Mon=0 .. Sun=6
    if country and days.size:
        local_years = days.astype("datetime64[Y]").astype(int) + 1970
        off |= np.isin(days, _public_holidays(country, int(local_years.min()),
                                              int(local_years.max())))
    return {"ds": ds, "workday": ~off, "offday": off}


def to_prophet_frame(ts: pl.Series | np.ndarray, tz: str, y=None, country: str | None = "KR"
                     ) -> pd.DataFrame:
    """The one adapter to Prophet's ``ds``/``y``: :func:`local_calendar` as a pandas frame."""
    frame = pd.DataFrame(local_calendar(ts, tz, country))
    if y is not None:
        frame["y"] = np.asarray(y, dtype=np.float64)
    return frame


class SeriesForecaster:
    """Forecast one regular series: ``fit(frame)`` then ``predict(ts)`` -> ts, yhat, P10, P90.

    Prophet (trend with changepoints, weekly seasonality, and separate daily shapes for workdays
    and for weekends or Korean public holidays)
    when the history is long and varied enough; otherwise, or when Prophet fails, a linear
    trend over the recent window (``kind_ == "linear"``, the reason in ``fallback_reason_``).

    Prophet's cost grows faster than linearly with the points it sees, so it is fitted on the
    last ``fit_history_days`` at the finest step of ``FIT_STEPS_MINUTES`` that keeps it within
    ``fit_max_points`` (means over each step; ``fit_step_minutes_``), e.g. 14 or 28 days at 1
    minute -> 5-minute means (a 5-minute series of 28 days is fitted as it is). Everything
    else (sigma, error paths, the holdout replay) uses the series' own resolution.
    ``fit_solver="map"`` finds Prophet's MAP in-process (the same objective as its Stan program,
    no cmdstan child, see ``prophet_map.py``); ``"stan"`` is Prophet's own fit.
    ``uncertainty_samples=0``: no served answer uses Prophet's sampled band
    (Prophet answers use error paths, the linear fallback its Gaussian band).
    """

    #: (K,) int16 minute of the hour each error path began at; None: not known
    error_path_minutes_: np.ndarray | None = None

    def __init__(
        self,
        timezone: str = "Asia/Seoul",
        interval_width: float = 0.8,
        changepoint_prior_scale: float = 0.05,
        changepoint_range: float = 0.95,
        min_history_hours: float = 48.0,
        fallback_window_minutes: float = 120.0,
        holidays_country: str | None = "KR",
        uncertainty_samples: int = 0,
        daily_fourier_order: int = 10,
        max_horizon_minutes: float = 360.0,
        n_error_paths: int = 200,
        error_history_days: float = 14.0,
        fit_max_points: int | None = 8064,  # 28 days at 5 minutes
        fit_history_days: float | None = 28.0,
        fit_solver: str = "map",
    ):
        self.timezone = timezone
        self.interval_width = interval_width
        self.changepoint_prior_scale = changepoint_prior_scale
        self.changepoint_range = changepoint_range
        self.min_history_hours = min_history_hours
        self.fallback_window_minutes = fallback_window_minutes
        self.holidays_country = holidays_country
        self.uncertainty_samples = uncertainty_samples
        self.daily_fourier_order = daily_fourier_order
        self.max_horizon_minutes = max_horizon_minutes
        self.n_error_paths = n_error_paths
        self.error_history_days = error_history_days
        self.fit_max_points = fit_max_points
        self.fit_history_days = fit_history_days
        if fit_solver not in FIT_SOLVERS:
            raise ValueError(f"fit_solver {fit_solver!r}: choose one of {', '.join(FIT_SOLVERS)}")
        self.fit_solver = fit_solver

    def get_params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    # --- fitting ---------------------------------------------------------------------------
    def fit(self, frame: pl.DataFrame, in_sample_errors: bool = True,
            in_sample_sigma: bool = True) -> SeriesForecaster:
        """Fit on a frame with ``ts`` (UTC) and ``value``; null values are gaps, not zeros.

        ``in_sample_errors=False`` leaves the error paths empty, for a caller that gives the
        model other ones (training: the holdout's) or none (a trial model that only forecasts);
        :meth:`learn_in_sample_errors` learns them later, the same as ``fit`` would have.
        ``in_sample_sigma=False`` leaves a Prophet model's ``sigma_`` NaN (no forecast over the
        whole history), for a trial model that only forecasts and is never served.
        """
        if self._expected_memo_ is not None:  # a new fit: the remembered forecast is stale
            self._expected_memo_ = (None, None)
        frame = frame.select(s.TS, s.VALUE).drop_nulls().sort(s.TS)
        if frame.height < 3:
            raise ValueError(f"need at least 3 observations to fit, got {frame.height}")
        ts, y = frame[s.TS].to_numpy(), frame[s.VALUE].to_numpy()
        self.n_points_ = frame.height
        self.first_ts_, self.last_ts_ = frame[s.TS][0], frame[s.TS][-1]
        span_h = (self.last_ts_ - self.first_ts_).total_seconds() / 3600
        self.fallback_reason_ = None
        if span_h < self.min_history_hours:
            self.fallback_reason_ = f"history of {span_h:.1f} h < {self.min_history_hours} h"
        elif np.nanstd(y) < 1e-9:
            self.fallback_reason_ = "flat series"
        self.step_minutes_ = float(np.median(np.diff(ts)).astype("timedelta64[s]").astype(float) / 60)
        self.fit_step_minutes_ = self.step_minutes_
        fitted = False
        if self.fallback_reason_ is None:
            try:
                self._fit_prophet(*self._prophet_input(ts, y))
                fitted = True
            except Exception as exc:  # Stan or data failure: the series still gets a model
                self.fallback_reason_ = f"prophet failed: {type(exc).__name__}: {exc}"[:300]
        if not fitted:
            self._fit_linear(ts, y)
        self.error_paths_ = (self._learn_error_paths(ts, y) if in_sample_errors
                             else self._no_error_paths())
        if fitted:  # at the series' own resolution, not the fit's
            self.sigma_ = float(np.std(y - self.expected(ts))) if in_sample_sigma else float("nan")
        self.calibrations_: dict[float, ProbabilityCalibration] = {}
        return self

    def fit_fallback(self, frame: pl.DataFrame, reason: str) -> SeriesForecaster:
        """Fit the linear fallback only, recording why (a fit that raised or ran too long)."""
        if self._expected_memo_ is not None:  # a new fit: the remembered forecast is stale
            self._expected_memo_ = (None, None)
        frame = frame.select(s.TS, s.VALUE).drop_nulls().sort(s.TS)
        if frame.height < 1:
            raise ValueError("no observations to fit a fallback on")
        ts, y = frame[s.TS].to_numpy(), frame[s.VALUE].to_numpy()
        self.n_points_ = frame.height
        self.first_ts_, self.last_ts_ = frame[s.TS][0], frame[s.TS][-1]
        diffs = np.diff(ts).astype("timedelta64[s]").astype(float) / 60
        self.step_minutes_ = float(np.median(diffs)) if diffs.size else 1.0
        self.fit_step_minutes_ = self.step_minutes_
        self.fallback_reason_ = reason[:300]
        self._fit_linear(ts, y)
        self.error_paths_ = self._learn_error_paths(ts, y)
        self.calibrations_ = {}
        return self

    def _prophet_input(self, ts: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The last ``fit_history_days``, as means over the step chosen for Prophet.

        Each mean is placed at the mean time of its observations, so no cycle shifts phase.
        """
        ts = np.asarray(ts, dtype="datetime64[us]")
        if self.fit_history_days is not None:
            keep = ts > ts[-1] - np.timedelta64(int(self.fit_history_days * 86400e6), "us")
            ts, y = ts[keep], y[keep]
        if self.fit_max_points is None or ts.size <= self.fit_max_points:
            return ts, y
        span = (ts[-1] - ts[0]).astype("timedelta64[s]").astype(float) / 60
        wanted = span / max(self.fit_max_points - 1, 1)
        step = next((m for m in FIT_STEPS_MINUTES if m >= max(wanted, self.step_minutes_)),
                    FIT_STEPS_MINUTES[-1])
        if step <= self.step_minutes_:
            return ts, y
        self.fit_step_minutes_ = float(step)
        micros = ts.astype(np.int64)
        bucket = micros // int(step * 60e6)
        _, which, counts = np.unique(bucket, return_inverse=True, return_counts=True)
        # times relative to the first, so the sum of a bucket's microseconds stays exact
        mean_ts = np.bincount(which, weights=(micros - micros[0]).astype(np.float64)) / counts
        means = np.bincount(which, weights=np.asarray(y, dtype=np.float64)) / counts
        return (micros[0] + np.round(mean_ts).astype(np.int64)).astype("datetime64[us]"), means

    def calibration_for(self, horizon_minutes: float) -> ProbabilityCalibration:
        """The calibration fitted at the horizon nearest this one (ratio-wise); identity if none."""
        if not self.calibrations_:
            return ProbabilityCalibration()
        h = min(self.calibrations_, key=lambda k: abs(np.log(k / max(horizon_minutes, 1e-9))))
        return self.calibrations_[h]

    def learn_in_sample_errors(self, frame: pl.DataFrame) -> SeriesForecaster:
        """The error paths ``fit(frame)`` learns, for a model fitted with ``in_sample_errors=False``."""
        frame = frame.select(s.TS, s.VALUE).drop_nulls().sort(s.TS)
        self.error_paths_ = self._learn_error_paths(frame[s.TS].to_numpy(), frame[s.VALUE].to_numpy())
        return self

    def _no_error_paths(self) -> np.ndarray:
        n_h = max(1, int(round(self.max_horizon_minutes / self.step_minutes_)))
        self.error_path_minutes_ = None
        return np.empty((0, n_h), dtype=np.float32)

    def _learn_error_paths(self, ts, y) -> np.ndarray:
        """Whole-horizon errors of the corrected forecast over the recent history (float32).

        None (an empty array) for the linear fallback: a line fitted to the last window says nothing about the
        errors it would have made further back, so its answers use its Gaussian band instead.
        """
        from training.forecast.correction import error_paths_with_origins, hourly_phases

        n_h = max(1, int(round(self.max_horizon_minutes / self.step_minutes_)))
        self.error_path_minutes_ = None
        if self.kind_ != "prophet":
            return np.empty((0, n_h), dtype=np.float32)
        step = np.timedelta64(int(round(self.step_minutes_ * 60e6)), "us")
        ts = np.asarray(ts, dtype="datetime64[us]")
        start = max(ts[0], ts[-1] - np.timedelta64(int(self.error_history_days * 86400e6), "us"))
        grid = np.arange(start, ts[-1] + step, step)
        observed = np.full(grid.size, np.nan)
        pos = np.searchsorted(grid, ts)
        ok = (pos < grid.size) & (grid[np.minimum(pos, grid.size - 1)] == ts)
        observed[pos[ok]] = np.asarray(y, dtype=np.float64)[ok]
        resid = observed - self.expected(grid)
        paths, origins = error_paths_with_origins(resid, self.step_minutes_,
                                                  self.max_horizon_minutes, self.n_error_paths)
        # each path's origin minute of the hour, so an answer can time a crossing
        # over the paths begun at its own minute (an hourly spike keeps its place), if any
        self.error_path_minutes_ = hourly_phases(resid, grid, origins)
        return paths.astype(np.float32)

    def _fit_prophet(self, ts, y):
        from prophet import Prophet

        model = Prophet(
            daily_seasonality=False,
            weekly_seasonality="auto",  # only from two weeks on: shorter, it mimics the trend
            yearly_seasonality=False,
            interval_width=self.interval_width,
            changepoint_prior_scale=self.changepoint_prior_scale,
            changepoint_range=self.changepoint_range,
            uncertainty_samples=self.uncertainty_samples,
        )
        if self.fit_solver == "map":  # the same objective as Stan's, solved here (prophet_map.py)
            from training.forecast.prophet_map import MapBackend

            model.stan_backend = MapBackend(model.stan_backend)
        frame = to_prophet_frame(ts, self.timezone, y, self.holidays_country)
        days = frame["ds"].dt.normalize()
        if min(days[frame["workday"]].nunique(), days[frame["offday"]].nunique()) >= 2:
            for name, order in (("workday", self.daily_fourier_order), ("offday", 6)):
                model.add_seasonality(f"daily_{name}", period=1, fourier_order=order,
                                      condition_name=name)
        else:  # too few days of one kind to learn its shape apart: one daily shape for all
            model.add_seasonality("daily", period=1, fourier_order=self.daily_fourier_order)
        from training.forecast.prophet_map import cached_components, cached_fourier

        # the same for every series: built once per process; the features of times seen before
        with cached_components(model), cached_fourier(model):
            model.fit(frame)
        self.kind_ = "prophet"
        self.model_ = model
        self.point_model_ = self._point_model(model)

    def _fit_linear(self, ts, y):
        cutoff = ts[-1] - np.timedelta64(int(self.fallback_window_minutes * 60), "s")
        recent = ts >= cutoff
        slope, intercept = ols_line(ts[recent], y[recent])
        resid = y[recent] - (intercept + slope * _minutes_since(ts[recent], ts[-1]))
        self.kind_ = "linear"
        self.model_ = {"slope_per_min": slope, "level": intercept, "anchor": str(ts[-1])}
        self.sigma_ = float(np.std(resid)) if recent.sum() > 2 else 0.0

    # --- prediction ------------------------------------------------------------------------
    def predict(self, ts, with_interval: bool = True) -> pl.DataFrame:
        """Forecast at the given UTC times: ``ts, yhat, yhat_lower, yhat_upper`` (P10/P90)."""
        ts = np.asarray(ts, dtype="datetime64[us]")
        if self.kind_ == "prophet":
            return self._prophet_forecast(ts, with_interval)
        m = self.model_
        yhat = m["level"] + m["slope_per_min"] * _minutes_since(ts, np.datetime64(m["anchor"]))
        half = Z90 * self.sigma_
        return pl.DataFrame(
            {s.TS: ts, "yhat": yhat, "yhat_lower": yhat - half, "yhat_upper": yhat + half}
        ).with_columns(pl.col(s.TS).dt.replace_time_zone("UTC"))

    def components(self, ts) -> dict[str, np.ndarray]:
        """The forecast split into ``trend`` and ``seasonality`` (daily + weekly) at UTC times."""
        ts = np.asarray(ts, dtype="datetime64[us]")
        if self.kind_ == "prophet" and self.point_model_ is not None:
            cal = local_calendar(ts, self.timezone, self.holidays_country)
            yhat = self.point_model_.yhat(cal["ds"], cal)
            trend = self.point_model_.trend(cal["ds"])
        else:
            yhat = trend = self.predict(ts, with_interval=False)["yhat"].to_numpy()
        return {"trend": trend, "seasonality": yhat - trend}

    @staticmethod
    def _point_model(model):
        """Prophet's point forecast evaluated with numpy, or None if only ``predict`` can."""
        from training.forecast.point_model import point_model_or_none

        return point_model_or_none(model)

    def expected(self, ts) -> np.ndarray:
        """The point forecast at UTC times as a plain array (the serving hot path)."""
        ts = np.asarray(ts, dtype="datetime64[us]")
        memo = self._expected_memo_
        if memo is not None and memo[0] is not None and memo[0].shape == ts.shape \
                and np.array_equal(memo[0], ts):
            return memo[1].copy()
        if self.kind_ == "prophet" and self.point_model_ is not None:
            cal = local_calendar(ts, self.timezone, self.holidays_country)
            out = self.point_model_.yhat(cal["ds"], cal)
        else:
            out = self.predict(ts, with_interval=False)["yhat"].to_numpy()
        if memo is not None:
            self._expected_memo_ = (ts.copy(), out.copy())
        return out

    def remember_expected(self, on: bool = True) -> SeriesForecaster:
        """While on, :meth:`expected` at the same times as its last call returns that answer
        again instead of evaluating the forecast anew (training asks for the whole history's and
        the holdout's forecast more than once); a fit forgets it. Off by default (serving)."""
        self._expected_memo_ = (None, None) if on else None
        return self

    _expected_memo_ = None  # (times, forecast) of the last expected(), while remembering

    def training_tail(self, minutes: float) -> tuple[np.ndarray, np.ndarray]:
        """The last ``minutes`` of the data the model was fitted on: UTC ``datetime64[us]``, values.

        Prophet keeps its training frame (in local time) in the model; the linear fallback
        keeps none, so it gives empty arrays.
        """
        if self.kind_ != "prophet":
            return np.array([], dtype="datetime64[us]"), np.array([])
        hist = self.model_.history
        local = hist["ds"].to_numpy().astype("datetime64[us]")
        keep = local >= local[-1] - np.timedelta64(int(minutes * 60e6), "us")
        years = local[keep].astype("datetime64[Y]").astype(int) + 1970
        offset = _fixed_offset(self.timezone, int(years.min()), int(years.max()))
        if offset is not None:
            utc = local[keep] - offset
        else:
            utc = (pd.DatetimeIndex(local[keep]).tz_localize(self.timezone, ambiguous="NaT",
                                                             nonexistent="NaT")
                   .tz_convert("UTC").tz_localize(None).values.astype("datetime64[us]"))
        return utc, hist["y"].to_numpy()[keep]

    def _prophet_forecast(self, ts, with_interval: bool) -> pl.DataFrame:
        if not with_interval and self.point_model_ is not None:
            yhat = lower = upper = self.expected(ts)
        else:
            frame = to_prophet_frame(ts, self.timezone, None, self.holidays_country)
            model = self.model_
            saved = model.uncertainty_samples
            model.uncertainty_samples = saved if with_interval else 0
            try:
                fc = model.predict(frame)
            finally:
                model.uncertainty_samples = saved
            # Prophet returns rows sorted by ds; put them back in the order of ``ts``
            back = np.empty(len(frame), dtype=np.intp)
            back[np.argsort(frame["ds"].to_numpy(), kind="stable")] = np.arange(len(frame))
            yhat = fc["yhat"].to_numpy()[back]
            lower = upper = yhat
            if with_interval and "yhat_lower" in fc:
                lower, upper = fc["yhat_lower"].to_numpy()[back], fc["yhat_upper"].to_numpy()[back]
            elif with_interval:  # fitted without sampling: the same Gaussian band as the fallback
                lower, upper = yhat - Z90 * self.sigma_, yhat + Z90 * self.sigma_
        return pl.DataFrame(
            {s.TS: np.asarray(ts, dtype="datetime64[us]"), "yhat": yhat,
             "yhat_lower": lower, "yhat_upper": upper}
        ).with_columns(pl.col(s.TS).dt.replace_time_zone("UTC"))

    # --- the Prophet object: kept, or parsed from its JSON on first use ----------------------
    @property
    def model_(self):
        """The fitted model: Prophet (parsed from the bundle on first use) or the line's parameters.

        Serving never needs the Prophet object when ``point_model_`` evaluates the forecast;
        a bundle load leaves it unparsed (``prophet_loaded``) until plots, ``training_tail`` or
        Prophet's own ``predict`` ask for it.
        """
        if self._model_ is None and self._prophet_source_ is not None:
            self._model_ = _prophet_from_json(self._prophet_source_.json_text())
            self._prophet_source_ = None
        return self._model_

    @model_.setter
    def model_(self, model) -> None:
        self._model_, self._prophet_source_ = model, None

    @property
    def prophet_loaded(self) -> bool:
        """Whether a Prophet object exists in memory (False for an unparsed one and the line)."""
        return self.kind_ == "prophet" and self._model_ is not None

    _model_ = None
    _prophet_source_ = None

    # --- persistence: Prophet via its JSON serializer, never a pickle ------------------------
    def to_dict(self, with_prophet: bool = True) -> dict:
        """The forecaster's state as JSON-ready values.

        ``point_model``: the numpy point model's parameters, all serving reads. ``model``: the
        Prophet JSON (``model_to_json``), left out with ``with_prophet=False`` when the caller
        stores it apart (the bundle: see :meth:`prophet_json`).
        """
        state = {
            "params": self.get_params(),
            "kind": self.kind_,
            "fallback_reason": self.fallback_reason_,
            "sigma": self.sigma_,
            "n_points": self.n_points_,
            "first_ts": self.first_ts_.isoformat(),
            "last_ts": self.last_ts_.isoformat(),
            "step_minutes": self.step_minutes_,
            "fit_step_minutes": self.fit_step_minutes_,
            "calibrations": {str(h): c.to_dict() for h, c in self.calibrations_.items()},
            # exactly the float32 paths that answer in memory: a loaded model answers the same
            "error_paths_f32le": base64.b64encode(
                np.ascontiguousarray(self.error_paths_, dtype="<f4").tobytes()).decode("ascii"),
            "error_paths_shape": list(self.error_paths_.shape),
        }
        minutes = getattr(self, "error_path_minutes_", None)
        if minutes is not None:  # the paths' origin minutes of the hour
            state["error_path_minutes_i2le"] = base64.b64encode(
                np.ascontiguousarray(minutes, dtype="<i2").tobytes()).decode("ascii")
        if self.kind_ == "prophet":
            state["point_model"] = (None if self.point_model_ is None
                                    else self.point_model_.to_dict())
            if with_prophet:
                state["model"] = self.prophet_json()
        else:
            state["model"] = self.model_
        return state

    def prophet_json(self) -> str:
        """The Prophet model as ``prophet.serialize.model_to_json`` writes it."""
        from prophet.serialize import model_to_json

        if self.kind_ != "prophet":
            raise ValueError(f"a {self.kind_} forecaster has no Prophet model")
        if self._model_ is None and self._prophet_source_ is not None:  # as stored, unparsed
            return self._prophet_source_.json_text()
        return model_to_json(self.model_)

    @classmethod
    def from_dict(cls, state: dict, prophet_source=None) -> SeriesForecaster:
        """A forecaster from :meth:`to_dict`'s state (of any bundle schema version).

        With ``point_model`` in the state (schema 3 on) the Prophet object is not built here:
        it is parsed on first use of ``model_``, from the state's ``model`` or from
        ``prophet_source.json_text()`` (the bundle reads its own file, checking its checksum).
        Older states carry only the Prophet JSON, so it is parsed now to derive the point model.
        """
        from training.forecast.point_model import ProphetPointModel

        self = cls(**state["params"])
        self.kind_ = state["kind"]
        self.fallback_reason_ = state["fallback_reason"]
        self.sigma_ = state["sigma"]
        self.n_points_ = state["n_points"]
        self.first_ts_ = datetime.fromisoformat(state["first_ts"])
        self.last_ts_ = datetime.fromisoformat(state["last_ts"])
        self.step_minutes_ = state["step_minutes"]
        self.fit_step_minutes_ = state.get("fit_step_minutes", self.step_minutes_)
        self.calibrations_ = {float(h): ProbabilityCalibration.from_dict(c)
                              for h, c in state.get("calibrations", {}).items()}
        n_h = max(1, int(round(self.max_horizon_minutes / self.step_minutes_)))
        if "error_paths_f32le" in state:
            raw = np.frombuffer(base64.b64decode(state["error_paths_f32le"]), dtype="<f4")
            self.error_paths_ = raw.astype(np.float32).reshape(state["error_paths_shape"])
        else:  # bundles of schema version 1 stored them rounded, as lists
            self.error_paths_ = np.asarray(state["error_paths"], dtype=np.float32).reshape(-1, n_h)
        # older bundles have no origin minutes; their answers time over every path
        self.error_path_minutes_ = (np.frombuffer(base64.b64decode(state["error_path_minutes_i2le"]),
                                                  dtype="<i2").astype(np.int16)
                                    if "error_path_minutes_i2le" in state else None)
        model = state.get("model")
        if self.kind_ != "prophet":
            self.model_, self.point_model_ = model, None
        elif "point_model" in state:
            point = state["point_model"]
            self.point_model_ = None if point is None else ProphetPointModel.from_dict(point)
            if model is not None:
                self._prophet_source_ = _ProphetText(model)
            elif prophet_source is not None:
                self._prophet_source_ = prophet_source
            else:
                raise ValueError("the state has neither the Prophet model nor a source for it")
        else:  # schema 1 and 2: the point model is derived from the Prophet JSON
            self.model_ = _prophet_from_json(model)
            self.point_model_ = self._point_model(self.model_)
        return self

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, prophet_source=None) -> SeriesForecaster:
        return cls.from_dict(json.loads(text), prophet_source)


class _ProphetText:
    """A Prophet model's JSON kept as text until something needs the Prophet object."""

    def __init__(self, text: str):
        self.text = text

    def json_text(self) -> str:
        return self.text


def _prophet_from_json(text: str):
    from prophet.serialize import model_from_json

    return model_from_json(text)


def calendar_setting(forecaster_params: dict) -> dict[str, str | None]:
    """The time zone and holiday calendar the daily and weekly shapes use (settings, not givens)."""
    params = SeriesForecaster(**forecaster_params).get_params()
    return {"timezone": params["timezone"], "holidays_country": params["holidays_country"]}


def ols_line(ts: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope (per minute) and level at the last sample time, as Prometheus fits.

    ``predict_linear`` regresses value on time over the window's samples and extrapolates
    from the evaluation time; with one sample the slope is 0.
    """
    ts = np.asarray(ts, dtype="datetime64[us]")
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    ts, values = ts[ok], values[ok]
    if values.size == 0:
        return 0.0, float("nan")
    x = (ts - ts[-1]).astype(np.float64) / 60e6
    if values.size == 1 or np.ptp(x) == 0:
        return 0.0, float(values[-1])
    xm, ym = x.mean(), values.mean()
    slope = float(((x - xm) * (values - ym)).sum() / ((x - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


def _minutes_since(ts: np.ndarray, anchor: np.datetime64) -> np.ndarray:
    return (np.asarray(ts, dtype="datetime64[us]") - np.datetime64(anchor, "us")).astype(
        np.float64
    ) / 60e6


def horizon_grid(now, horizon_minutes: float, step_minutes: float = 1.0) -> np.ndarray:
    """Forecast times after ``now`` up to the horizon, every ``step_minutes``."""
    n = max(1, int(np.ceil(horizon_minutes / step_minutes)))
    now = pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tz is None else now.tz_convert("UTC")
    start = np.datetime64(now.tz_localize(None), "us")
    steps = np.arange(1, n + 1) * np.timedelta64(int(step_minutes * 60e6), "us")
    return start + steps

