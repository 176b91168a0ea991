"""Prophet's point forecast ``yhat`` evaluated with numpy from a fitted model's parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_SECONDS_PER_DAY = 24 * 60 * 60
_UNITS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


class UnsupportedProphetModel(ValueError):
    """The model uses a feature the numpy path does not evaluate; call Prophet's ``predict``."""


@dataclass
class FourierTerm:
    """One seasonality: its Fourier coefficients in Prophet's column order (sin 1, cos 1, sin 2, ...)."""

    name: str
    period: float  # days
    fourier_order: int
    condition_name: str | None  # the boolean column that switches the term on, if any
    mode: str  # "additive" or "multiplicative"
    beta: np.ndarray  # 2 * fourier_order coefficients on Prophet's scaled y

    def __post_init__(self):
        self.beta = np.asarray(self.beta, dtype=np.float64)
        if self.beta.shape != (2 * self.fourier_order,):
            raise ValueError(
                f"seasonality {self.name!r}: expected {2 * self.fourier_order} coefficients, "
                f"got shape {self.beta.shape}"
            )
        if self.mode not in ("additive", "multiplicative"):
            raise ValueError(f"seasonality {self.name!r}: unknown mode {self.mode!r}")
        # (i + 1) / period as Prophet's fourier_series computes it, so angles agree to the last bit
        self._freqs = np.array([(i + 1) / self.period for i in range(self.fourier_order)])

    def features(self, x_t: np.ndarray, conditions: Mapping[str, np.ndarray] | None) -> np.ndarray:
        """Prophet's feature block for this term at angles ``x_t = 2 pi t_days``.

        Rows where the term's condition is false are zero, as in Prophet; they are not computed.
        """
        if self.condition_name is None:
            return self._fourier(x_t)
        if conditions is None or self.condition_name not in conditions:
            raise ValueError(
                f"seasonality {self.name!r} needs the boolean condition "
                f"{self.condition_name!r}; pass it in ``conditions``"
            )
        on = np.asarray(conditions[self.condition_name], dtype=bool)
        if on.shape != x_t.shape:
            raise ValueError(
                f"condition {self.condition_name!r} has {on.shape[0]} values for "
                f"{x_t.shape[0]} times"
            )
        block = np.zeros((x_t.shape[0], 2 * self.fourier_order))
        block[on] = self._fourier(x_t[on])
        return block

    def _fourier(self, x_t: np.ndarray) -> np.ndarray:
        c = x_t[:, None] * self._freqs[None, :]
        block = np.empty((x_t.shape[0], 2 * self.fourier_order))
        block[:, 0::2] = np.sin(c)
        block[:, 1::2] = np.cos(c)
        return block

    def to_dict(self) -> dict:
        return {"name": self.name, "period": self.period, "fourier_order": self.fourier_order,
                "condition_name": self.condition_name, "mode": self.mode,
                "beta": self.beta.tolist()}


@dataclass
class ProphetPointModel:
    """What ``Prophet.predict`` needs for ``yhat`` when there are no holidays or regressors.

    Piecewise-linear trend ``(k + sum delta_j [t >= s_j]) t + (m - sum delta_j s_j [t >= s_j])``
    on Prophet's scaled time, times ``y_scale`` plus the floor; then
    ``yhat = trend * (1 + multiplicative) + additive`` with Fourier seasonalities, each zeroed
    where its condition is false. Parameters are posterior means, as Prophet's own point forecast.
    JSON-serializable through ``to_dict``/``from_dict``.
    """

    k: float
    m: float
    changepoints_t: np.ndarray
    deltas: np.ndarray
    start_ns: int  # Prophet's ``start`` (naive local time) in ns since the epoch
    t_scale_ns: int  # Prophet's ``t_scale`` in ns
    y_scale: float
    floor: float
    seasonalities: list[FourierTerm] = field(default_factory=list)

    def __post_init__(self):
        cp = np.asarray(self.changepoints_t, dtype=np.float64).reshape(-1)
        deltas = np.asarray(self.deltas, dtype=np.float64).reshape(-1)
        if cp.shape != deltas.shape:
            raise ValueError(f"{cp.size} changepoints but {deltas.size} rate changes")
        order = np.argsort(cp, kind="stable")
        self.changepoints_t, self.deltas = cp[order], deltas[order]
        self.start_ns, self.t_scale_ns = int(self.start_ns), int(self.t_scale_ns)
        if self.t_scale_ns <= 0:
            raise ValueError(f"t_scale must be positive, got {self.t_scale_ns} ns")
        # rate and offset after the j-th changepoint, for a searchsorted lookup instead of a
        # (times x changepoints) mask
        self._k_after = self.k + np.concatenate(([0.0], np.cumsum(self.deltas)))
        self._m_after = self.m - np.concatenate(([0.0], np.cumsum(self.deltas * self.changepoints_t)))

    # --- extraction ------------------------------------------------------------------------
    @classmethod
    def from_prophet(cls, model) -> ProphetPointModel:
        """Read the point-forecast parameters of a fitted ``prophet.Prophet``.

        Raises ``UnsupportedProphetModel`` for logistic or flat growth, holidays or extra
        regressors (callers then use Prophet's ``predict``), ``ValueError`` if not fitted.
        """
        if getattr(model, "params", None) is None or model.history is None:
            raise ValueError("the Prophet model is not fitted")
        if model.growth != "linear":
            raise UnsupportedProphetModel(f"growth {model.growth!r}: only linear growth is evaluated")
        if model.extra_regressors:
            raise UnsupportedProphetModel(
                f"extra regressors {list(model.extra_regressors)} are not evaluated")
        if model.holidays is not None or model.country_holidays or model.train_holiday_names is not None:
            raise UnsupportedProphetModel("holiday effects are not evaluated")
        params = model.params
        beta = np.nanmean(np.atleast_2d(params["beta"]), axis=0)
        component_cols = model.train_component_cols
        terms, n_columns = [], 0
        for name, props in model.seasonalities.items():
            # rows of train_component_cols are the feature columns, in make_all_seasonality_features order
            cols = np.flatnonzero(component_cols[name].to_numpy())
            if cols.size != 2 * props["fourier_order"] or np.any(np.diff(cols) != 1):
                raise UnsupportedProphetModel(
                    f"seasonality {name!r}: unexpected feature columns {cols.tolist()}")
            terms.append(FourierTerm(name, float(props["period"]), int(props["fourier_order"]),
                                     props["condition_name"], props["mode"], beta[cols]))
            n_columns += cols.size
        # no seasonality at all leaves Prophet's single all-zero placeholder column
        expected = n_columns if terms else 1
        if beta.size != expected:
            raise UnsupportedProphetModel(
                f"{beta.size} regression coefficients, but the seasonalities explain {expected}")
        floor = float(model.y_min) if model.scaling == "minmax" else 0.0
        return cls(
            k=float(np.nanmean(params["k"])),
            m=float(np.nanmean(params["m"])),
            changepoints_t=np.asarray(model.changepoints_t, dtype=np.float64),
            deltas=np.nanmean(np.atleast_2d(params["delta"]), axis=0),
            start_ns=pd.Timestamp(model.start).as_unit("ns").value,
            t_scale_ns=pd.Timedelta(model.t_scale).as_unit("ns").value,
            y_scale=float(model.y_scale),
            floor=floor,
            seasonalities=terms,
        )

    # --- evaluation ------------------------------------------------------------------------
    def trend(self, ds: np.ndarray) -> np.ndarray:
        """Prophet's ``trend`` column at naive local times ``ds``."""
        t = (_as_ns(ds) - self.start_ns) / self.t_scale_ns
        # changepoints at or before t apply, as Prophet's ``changepoint_ts <= t``
        after = np.searchsorted(self.changepoints_t, t, side="right")
        return (self._k_after[after] * t + self._m_after[after]) * self.y_scale + self.floor

    def yhat(self, ds, conditions: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """``Prophet.predict(frame)["yhat"]`` for naive local times ``ds``, in the given order.

        ``conditions`` maps each seasonality's condition name to a boolean array aligned with
        ``ds`` (a frame from ``to_prophet_frame`` works, it holds ``workday``/``offday``).
        Unlike Prophet the result is not re-sorted by time.
        """
        ds = _as_naive_datetime64(ds)
        trend = self.trend(ds)
        additive = np.zeros(ds.shape[0])
        multiplicative = np.zeros(ds.shape[0])
        if self.seasonalities:
            x_t = np.pi * 2 * _days_since_epoch(ds)
            for term in self.seasonalities:
                contribution = term.features(x_t, conditions) @ term.beta
                if term.mode == "additive":
                    additive += contribution
                else:
                    multiplicative += contribution
        # additive components are on the scaled y, multiplicative ones are relative to the trend
        return trend * (1 + multiplicative) + additive * self.y_scale

    # --- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "k": self.k, "m": self.m,
            "changepoints_t": self.changepoints_t.tolist(), "deltas": self.deltas.tolist(),
            "start_ns": self.start_ns, "t_scale_ns": self.t_scale_ns,
            "y_scale": self.y_scale, "floor": self.floor,
            "seasonalities": [term.to_dict() for term in self.seasonalities],
        }

    @classmethod
    def from_dict(cls, state: dict) -> ProphetPointModel:
        state = dict(state)
        state["seasonalities"] = [FourierTerm(**term) for term in state.get("seasonalities", [])]
        return cls(**state)


def point_model_or_none(model) -> ProphetPointModel | None:
    """The numpy point model of a fitted Prophet, or None when only Prophet can evaluate it."""
    try:
        return ProphetPointModel.from_prophet(model)
    except UnsupportedProphetModel:
        return None


def _as_naive_datetime64(ds) -> np.ndarray:
    if isinstance(ds, pd.Series | pd.DatetimeIndex):
        if getattr(ds.dtype, "tz", None) is not None:
            raise ValueError("ds must be naive local times, as Prophet takes them")
        ds = ds.to_numpy()
    ds = np.asarray(ds)
    if not np.issubdtype(ds.dtype, np.datetime64):
        raise ValueError(f"ds must be datetime64, got {ds.dtype}")
    return ds.reshape(-1)


def _as_ns(ds: np.ndarray) -> np.ndarray:
    return ds.astype("datetime64[ns]").view(np.int64)


def _days_since_epoch(ds: np.ndarray) -> np.ndarray:
    # in the array's own unit, as pandas' ``total_seconds`` in Prophet's ``fourier_series``
    unit = np.datetime_data(ds.dtype)[0]
    if unit not in _UNITS_PER_SECOND:
        ds, unit = ds.astype("datetime64[ns]"), "ns"
    return ds.view(np.int64) / _UNITS_PER_SECOND[unit] / _SECONDS_PER_DAY
