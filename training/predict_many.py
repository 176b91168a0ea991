"""Many series' predictions at once: :func:`predict_series`'s answers with array operations across series.

A batch of N series costs a handful of numpy calls over (N x origins x paths x steps) arrays
instead of N walks of the one-series path: the observations of every series are parsed in one
pass, the Prophet point forecasts of every series (obs times, the alert rule's check grids and
the drivers' two times) are evaluated in one call per calendar layout, the real-time
corrections and the crossing distributions in one call per (horizon, paths, checks) shape, and
the anomaly detector walks its forest once per workload. Each answer equals the one
:func:`predict_series` gives for the same series (floats to the last few bits: sums are
grouped differently); series the vectorised path does not cover (the linear fallback, Prophet
models without a numpy point model, a horizon beyond the learned errors) are answered by
:func:`predict_series` itself, and an item's failure is its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

from features.schema import split_series_id
from training.bundle import ModelBundle
from training.forecast.correction import DAMPING_MINUTES, MIN_POINTS_FOR_SLOPE, WINDOW_MINUTES, damped
from training.forecast.forecaster import local_calendar
from training.predict import (
    DRIVER_NAMES,
    MIN_ERROR_PATHS,
    Prediction,
    _as_datetime64,
    _covered,
    _to_utc,
    anomaly_row,
    calendar_of,
    calibration_note,
    path_phases,
    physical_range,
    predict_series,
    served_calibration,
)
from training.threshold import AlertRule, ProbabilityCalibration, crossing_distribution_rows, path_extremes

__all__ = ["ANSWER_FIELDS", "Query", "explain_rows", "point_forecasts", "predict_many", "stack_error_paths"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass(slots=True)
class Query:
    """One series to answer, as :func:`predict_series` takes it (not changed once made; not
    frozen: a frozen dataclass costs a microsecond more to make, a millisecond on a 1,000 batch).

    ``observed`` may give the recent observations already as arrays instead of ``recent``: times
    in microseconds since the epoch (UTC, int64) and values (a service parses a batch's times
    in one pass).
    """

    series_id: str
    threshold: float
    direction: str
    horizon_minutes: float
    recent: list[tuple[datetime, float]] | None = None
    now: datetime | None = None
    context: dict[str, float] | None = None
    observed: tuple[np.ndarray, np.ndarray] | None = None

    def observations(self) -> list[tuple[datetime, float]] | None:
        """``recent``, or ``observed`` as (time, value) pairs."""
        if self.observed is None:
            return self.recent
        us, y = self.observed
        return [(_EPOCH + timedelta(microseconds=t), v) for t, v in zip(us.tolist(), y.tolist(), strict=True)]


@dataclass(slots=True)
class _Item:
    """The per-series facts the array stages need (index into the batch, model, times in us)."""

    index: int
    query: Query
    model: object
    now: datetime
    now_us: int
    obs_lo: int  # this series' slice of the batch's sorted, finite observations
    obs_hi: int
    n_h: int
    step_us: int
    calibration: object
    rule: AlertRule
    origin_offsets_us: tuple[int, ...]  # now minus each check, oldest first (the last is 0)
    bounds: tuple[float, float]  # the metric's physical range, the point forecasts held inside it
    shape: tuple  # (steps, error paths, checks, step us, step minutes): series of one shape share arrays


def predict_many(bundle: ModelBundle, queries: Sequence[Query],
                 as_rows: bool = False) -> list[Prediction | dict | Exception]:
    """One :class:`Prediction` (or the exception that series raised) per query, in order.

    ``as_rows``: the series the array path answers get their answer as a plain dict instead (the
    :class:`Prediction`'s fields in :data:`ANSWER_FIELDS` order, then its ``message``: what a
    service writes as JSON, without an object per answer); the others are still a ``Prediction``.
    """
    out: list[Prediction | dict | Exception | None] = [None] * len(queries)
    obs_us, obs_y, bounds = _observations_of(queries, out)
    bounds = bounds.tolist()
    alert_rule = _RULES.setdefault(bundle.alert_rule, bundle.alert_rule)  # one object: compared by identity
    items, slow = [], []
    for i, q in enumerate(queries):
        if out[i] is not None:
            continue
        try:
            item = _item(bundle, i, q, obs_us, bounds, alert_rule)
        except Exception as exc:
            out[i] = exc
            continue
        (slow if item is None else items).append(i if item is None else item)
    for i in slow:
        try:
            q = queries[i]
            out[i] = predict_series(bundle, q.series_id, q.threshold, q.direction, q.horizon_minutes,
                                    recent=q.observations(), now=q.now, context=q.context)
        except Exception as exc:
            out[i] = exc
    if items:
        _answer(bundle, items, obs_us, obs_y, out, as_rows)
    return out  # type: ignore[return-value]


# --- stage 1: observations and per-series facts ------------------------------------------------
def _observations_of(queries: Sequence[Query], out: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every query's observations as :func:`~training.predict.observations` gives them, in one pass:
    times (us since the epoch) and values sorted by (series, time), non-finite values dropped;
    ``bounds[i]:bounds[i + 1]`` is query i's slice. A query whose times cannot be read gets its
    error in ``out`` and no observations."""
    times, values, counts, given = [], [], [], []
    for i, q in enumerate(queries):
        if q.observed is not None:
            given.append(i)
            counts.append(q.observed[0].size)
            continue
        recent = q.recent or ()
        try:
            t = [ts for ts, _ in recent]
            v = [float(y) for _, y in recent]
            if any(not (isinstance(ts, datetime) and ts.tzinfo) for ts in t):
                _as_datetime64(t)  # the one-series path's error for an unreadable time, if any
        except Exception as exc:
            out[i] = exc
            t, v = [], []
        times += t
        values += v
        counts.append(len(t))
    if given:  # arrays as they came, in query order with the others
        us_parts, y_parts, k = [], [], 0
        listed_us = _as_datetime64(times).astype(np.int64)
        listed_y = np.array(values, dtype=np.float64)
        for i, q in enumerate(queries):
            if q.observed is not None:
                us_parts.append(np.asarray(q.observed[0], dtype=np.int64))
                y_parts.append(np.asarray(q.observed[1], dtype=np.float64))
            else:
                us_parts.append(listed_us[k:k + counts[i]])
                y_parts.append(listed_y[k:k + counts[i]])
                k += counts[i]
        us, y = np.concatenate(us_parts), np.concatenate(y_parts)
    else:
        us, y = _as_datetime64(times).astype(np.int64), np.array(values, dtype=np.float64)
    series = np.repeat(np.arange(len(queries)), counts)
    order = np.lexsort((us, series))  # stable, as the one-series path's argsort(kind="stable")
    us, y, series = us[order], y[order], series[order]
    finite = np.isfinite(y)
    us, y, series = us[finite], y[finite], series[finite]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(series, minlength=len(queries)))])
    return us, y, bounds


@lru_cache(maxsize=256)
def _origin_offsets(rule: AlertRule) -> tuple[int, ...]:
    return tuple(timedelta(minutes=k * rule.every_minutes) // _US
                 for k in range(rule.lookback_checks, -1, -1))


class _PerModel(dict):
    """A cache keyed by a model's identity whose entry goes when the model does (a weak-keyed
    dictionary makes a weak reference on every lookup: ~1 us, three lookups an item of a batch)."""

    def put(self, model, value):
        key = id(model)
        if key not in self:  # dropped as the model is freed, before its id can be reused
            weakref.finalize(model, self.pop, key, None)
        self[key] = value
        return value


_FACTS = _PerModel()


def _horizon_facts(model, horizon_minutes: float, alert_rule: AlertRule) -> tuple | None:
    """What a model answers a horizon with: steps, calibration, the alert rule and its checks'
    offsets (None when the one-series path must answer it); cached per model and horizon."""
    facts = _FACTS.get(id(model))
    if facts is None:
        facts = _FACTS.put(model, {})
    found = facts.get(horizon_minutes)
    if found is None or (found[0] is not alert_rule and found[0] != alert_rule):
        if model.kind_ != "prophet" or getattr(model, "point_model_", None) is None:
            found = (alert_rule, None)  # the linear fallback, or Prophet's own predict
        else:
            n_h = max(1, int(np.ceil(horizon_minutes / model.step_minutes_)))
            paths = model.error_paths_
            if not (paths.shape[0] >= MIN_ERROR_PATHS and paths.shape[1] >= n_h):
                found = (alert_rule, None)  # the one-series path says why the horizon is too long
            else:
                calibration = served_calibration(model, horizon_minutes, True)
                rule = alert_rule.with_for(calibration.for_minutes)
                offsets = _origin_offsets(rule)
                step_us = int(model.step_minutes_ * 60e6)
                shape = (n_h, paths.shape[0], len(offsets), step_us, float(model.step_minutes_))
                found = (alert_rule, (n_h, step_us, calibration, rule, offsets, shape))
        facts[horizon_minutes] = found
    return found[1]


@lru_cache(maxsize=65536)
def _range_of(series_id: str) -> tuple[float, float]:
    return physical_range(series_id)


@lru_cache(maxsize=65536)
def _entity_of(series_id: str) -> str:
    return split_series_id(series_id)[0]


#: the alert rules batches were asked under, each kept as one object (a bundle's property parses anew)
_RULES: dict[AlertRule, AlertRule] = {}


@lru_cache(maxsize=1024)
def _utc_of_us(us: int) -> datetime:
    """The UTC time of microseconds since the epoch (a batch's series mostly share their latest time)."""
    return _EPOCH + timedelta(microseconds=us)


def _item(bundle: ModelBundle, i: int, q: Query, obs_us: np.ndarray, bounds: list[int],
          alert_rule: AlertRule) -> _Item | None:
    """The series' facts, or None when the one-series path must answer it (``alert_rule``: the
    bundle's, read once: the property parses the manifest)."""
    model = bundle.forecasters.get(q.series_id)
    if model is None:
        return None  # unknown: the one-series path's KeyError
    facts = _horizon_facts(model, q.horizon_minutes, alert_rule)
    if facts is None:
        return None
    value_lo, value_hi = _range_of(q.series_id)
    if not value_lo < q.threshold < value_hi:
        return None  # at or beyond the range's edge holding the paths in it decides crossings
    lo, hi = bounds[i], bounds[i + 1]
    if hi > lo:
        now_us = int(obs_us[hi - 1])
        now = _utc_of_us(now_us)
    else:
        now = _to_utc(model.last_ts_ if q.now is None else q.now)
        now_us = (now - _EPOCH) // _US
    n_h, step_us, calibration, rule, offsets, shape = facts
    return _Item(i, q, model, now, now_us, lo, hi, n_h, step_us, calibration, rule, offsets,
                 (value_lo, value_hi), shape)


# --- stage 2: the Prophet point forecasts of many models ----------------------------------------
@dataclass(frozen=True)
class _PointParams:
    """A model's point-forecast parameters as the batch evaluation reads them (cached per model)."""

    layout: tuple  # what must agree for models to share one calendar and feature evaluation
    times: tuple  # start_ns, t_scale_ns (integers: nanoseconds do not fit a float)
    scalars: tuple  # last changepoint, rate and offset after it, y_scale, floor
    beta: np.ndarray  # every seasonality's coefficients, in term order


_PARAMS = _PerModel()
_LAST_CP, _K, _M, _Y_SCALE, _FLOOR = range(5)


def _params(model) -> _PointParams:
    found = _PARAMS.get(id(model))
    if found is None:
        pm = model.point_model_
        terms = pm.seasonalities
        cp = pm.changepoints_t
        found = _PARAMS.put(model, _PointParams(
            (model.timezone, model.holidays_country,
             tuple((t.name, t.period, t.fourier_order, t.condition_name, t.mode) for t in terms)),
            (pm.start_ns, pm.t_scale_ns),
            (cp[-1] if cp.size else -np.inf, pm._k_after[-1], pm._m_after[-1], pm.y_scale, pm.floor),
            np.concatenate([t.beta for t in terms]) if terms else np.zeros(0)))
    return found


@dataclass
class _Layouts:
    """The point-forecast parameters of a list of models as arrays, grouped by calendar layout
    (built once per batch, read by every :func:`point_forecasts` call of it)."""

    groups: list[tuple[tuple, list[int]]]  # (layout, its models' positions in the list)
    group_of: np.ndarray  # each model's group
    local_of: np.ndarray  # each model's position within its group
    scalars: list[np.ndarray]  # per group: (members, 5), see _PointParams.scalars
    times: list[np.ndarray]  # per group: (members, 2) int64 start_ns, t_scale_ns
    betas: list[np.ndarray]  # per group: (members, features)

    @classmethod
    def of(cls, models: Sequence) -> _Layouts:
        """The layouts of ``models``; the last few lists' are kept (a service is asked about the
        same series cycle after cycle), found again by the models' identities."""
        key = tuple(map(id, models))
        found = _RECENT_LAYOUTS.get(key)
        if found is not None and all(a is b for a, b in zip(found[0], models, strict=True)):
            return found[1]
        layouts = cls._build(models)
        if len(_RECENT_LAYOUTS) >= 4:
            _RECENT_LAYOUTS.pop(next(iter(_RECENT_LAYOUTS)))
        _RECENT_LAYOUTS[key] = (list(models), layouts)
        return layouts

    @classmethod
    def _build(cls, models: Sequence) -> _Layouts:
        params = [_params(m) for m in models]
        by_layout: dict[tuple, list[int]] = {}
        for m, p in enumerate(params):
            by_layout.setdefault(p.layout, []).append(m)
        groups = list(by_layout.items())
        group_of = np.empty(len(models), dtype=np.int64)
        local_of = np.empty(len(models), dtype=np.int64)
        for g, (_, members) in enumerate(groups):
            group_of[members] = g
            local_of[members] = np.arange(len(members))
        return cls(groups, group_of, local_of,
                   [np.array([params[m].scalars for m in members]) for _, members in groups],
                   [np.array([params[m].times for m in members], dtype=np.int64) for _, members in groups],
                   [np.stack([params[m].beta for m in members]) for _, members in groups])


#: the models' ids -> (the models, their layouts), oldest first; holding the models keeps the ids theirs
_RECENT_LAYOUTS: dict[tuple, tuple[list, _Layouts]] = {}


def point_forecasts(models: Sequence, times_us: np.ndarray, owner: np.ndarray,
                    layouts: _Layouts | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``yhat`` and ``trend`` of ``models[owner[r]]`` at UTC time ``times_us[r]`` for every row r
    (rows with a negative owner are left NaN); ``layouts``: ``_Layouts.of(models)`` if at hand.

    The numpy point model's ``trend`` and ``yhat`` (see ``ProphetPointModel``) with each row's own
    parameters: one local calendar and one feature block per seasonality for the distinct times
    of the models that share a layout; the trend after the last changepoint for every row past
    the training history, the changepoints looked up model by model for the others.
    """
    layouts = layouts or _Layouts.of(models)
    yhat = np.full(times_us.size, np.nan)
    trend = np.full(times_us.size, np.nan)
    owned = owner >= 0
    group = np.where(owned, layouts.group_of[np.maximum(owner, 0)], -1)
    for g, (layout, members) in enumerate(layouts.groups):
        order = np.flatnonzero(group == g) if len(layouts.groups) > 1 or not owned.all() else \
            np.arange(times_us.size)  # this layout's rows (every row, mostly)
        if order.size == 0:
            continue
        local = layouts.local_of[owner[order]]
        scalars = layouts.scalars[g][local]  # (rows, 5)
        start, scale = layouts.times[g][local].T
        # the calendar and the Fourier features depend on the time alone: once per distinct time
        if order.size > 4096:  # hashing beats sorting on many rows, not on a few
            at, times = pd.factorize(times_us[order])
        else:
            times, at = np.unique(times_us[order], return_inverse=True)
        cal = local_calendar(times.astype("datetime64[us]"), layout[0], layout[1])
        ds_ns = cal["ds"].astype("datetime64[ns]").view(np.int64)[at]
        t = (ds_ns - start) / scale
        k, m = scalars[:, _K].copy(), scalars[:, _M].copy()
        inside = np.flatnonzero(t < scalars[:, _LAST_CP])  # before the last changepoint: look it up
        for j in np.unique(local[inside]) if inside.size else ():
            rows = inside[local[inside] == j]
            pm = models[members[j]].point_model_
            # changepoints at or before t apply, as Prophet's ``changepoint_ts <= t``
            after = np.searchsorted(pm.changepoints_t, t[rows], side="right")
            k[rows], m[rows] = pm._k_after[after], pm._m_after[after]
        y_scale = scalars[:, _Y_SCALE]
        tr = (k * t + m) * y_scale + scalars[:, _FLOOR]
        additive = np.zeros(order.size)
        multiplicative = np.zeros(order.size)
        terms = models[members[0]].point_model_.seasonalities
        if terms:
            x_t = np.pi * 2 * (cal["ds"].astype("datetime64[us]").view(np.int64) / 10**6 / 86400)
            betas = layouts.betas[g]  # (models, all terms' features)
            # the terms of one mode as one feature block: one product and one gather per mode
            blocks: dict[str, list] = {"additive": [], "multiplicative": []}
            columns: dict[str, list] = {"additive": [], "multiplicative": []}
            col = 0
            for term in terms:
                blocks[term.mode].append(term.features(x_t, cal))  # (distinct times, features)
                columns[term.mode].append(np.arange(col, col + 2 * term.fourier_order))
                col += 2 * term.fourier_order
            for mode, total in (("additive", additive), ("multiplicative", multiplicative)):
                if not blocks[mode]:
                    continue
                block = np.hstack(blocks[mode])
                beta = betas[:, np.concatenate(columns[mode])]
                if block.shape[0] * len(members) <= 4 * order.size:  # few times or models: all pairs
                    total += (block @ beta.T)[at, local]
                else:
                    total += np.einsum("rf,rf->r", block[at], beta[local])
        trend[order] = tr
        yhat[order] = tr * (1 + multiplicative) + additive * y_scale
    return yhat, trend


# --- stage 3: corrections, crossings, the alert rule, drivers, anomaly --------------------------
def _answer(bundle: ModelBundle, items: list[_Item], obs_us: np.ndarray, obs_y: np.ndarray,
            out: list, as_rows: bool = False) -> None:
    models = [it.model for it in items]
    # rows: every observation of the batch (owned by its series' item), then each shape group's
    # horizon grids at every check, (series, check, step)
    owner = np.full(obs_us.size, -1)
    counts = np.array([it.obs_hi - it.obs_lo for it in items], dtype=np.int64)
    starts = np.array([it.obs_lo for it in items], dtype=np.int64)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    owner[np.repeat(starts, counts) + within] = np.repeat(np.arange(len(items)), counts)
    stacked = stack_error_paths(bundle)
    groups: dict[tuple, list[int]] = {}
    stack_rows = np.empty(len(items), dtype=np.intp)
    stacks: dict[int, _PathStack] = {}
    for j, it in enumerate(items):
        stack, stack_rows[j] = _stack_of(stacked, it.model)
        stacks[id(stack)] = stack
        key = (*it.shape, it.query.direction, id(stack))
        groups.setdefault(key, []).append(j)
    n = len(items)
    now_us = np.array([it.now_us for it in items], dtype=np.int64)
    # ... and each series' now (the drivers' start; the grid of the last check holds their end)
    times, owners, first_row, grid_of, skip_of = [obs_us], [owner], {}, {}, {}
    cursor = obs_us.size
    first_obs = obs_us[np.minimum(starts, max(obs_us.size - 1, 0))] if obs_us.size else np.zeros(n, np.int64)
    for key, members in groups.items():
        n_h, _, n_o, step_us = key[:4]
        now = now_us[members]
        offsets = np.array([items[j].origin_offsets_us for j in members], dtype=np.int64)
        steps = step_us * np.arange(1, n_h + 1, dtype=np.int64)
        # a check before a series' first observation does not count for its alert rule
        # (``_covered`` drops it): the checks no series of the group counts are not walked
        observed = counts[members] > 0
        seen = observed[:, None] & (first_obs[members][:, None] <= now[:, None] - offsets)
        skip = skip_of[key] = int(np.where(observed, np.argmax(seen, axis=1), 0).min())
        if len(members) > _FEW and (offsets == offsets[0]).all():
            # the checks' horizons overlap (checks every 5 min, steps of 15): each distinct time once
            # (the skipped checks read any column: their forecasts are not used)
            distinct, at = np.unique(steps[None, :] - offsets[0][skip:, None], return_inverse=True)
            grid = now[:, None] + distinct[None, :]
            grid_of[key] = np.vstack([np.zeros((skip, n_h), dtype=np.intp),
                                      at.reshape(n_o - skip, n_h)])  # (check, step) -> column
        else:
            grid = (now[:, None, None] - offsets[:, :, None] + steps[None, None, :]).reshape(len(members), -1)
            grid_of[key] = np.arange(n_o * n_h).reshape(n_o, n_h)
        times.append(grid.ravel())
        owners.append(np.repeat(np.array(members), grid.shape[1]))
        first_row[key] = cursor
        cursor += grid.size
    times.append(now_us)
    owners.append(np.arange(n))
    now_row = cursor
    layouts = _Layouts.of(models)
    yhat, trend = point_forecasts(models, np.concatenate(times), np.concatenate(owners), layouts)
    cols = {name: np.empty(n) for name in ("minutes", "earliest", "latest", "probability", "level",
                                             "slope", "z", "k")}
    crossed_now = np.zeros(n, dtype=bool)
    alerts: list = [None] * n
    then_of = {}  # per group: (members, n_h) rows of the last check's horizon (the drivers' ends)
    for key, members in groups.items():
        n_h, _, n_o, _, step, direction, stack = key
        width = int(grid_of[key].max()) + 1
        rows = first_row[key] + np.arange(len(members))[:, None, None] * width + grid_of[key][None, :, :]
        _crossing_group(items, members, n_h, n_o, direction, step, yhat[rows], yhat, obs_us, obs_y, cols,
                        crossed_now, alerts, stacks[stack], stack_rows[members], skip_of[key])
        then_of[key] = rows[:, -1, :]

    # drivers: the forecast's components now and at the crossing (or its closest approach)
    k = cols["k"].astype(np.int64)
    at_now, then = np.arange(now_row, now_row + n), np.empty(n, dtype=np.int64)
    for key, members in groups.items():  # then: now + step * (k + 1)
        then[members] = then_of[key][np.arange(len(members)), k[members]]
    step_minutes = np.array([it.model.step_minutes_ for it in items], dtype=np.float64)
    level, slope = cols["level"], cols["slope"]
    drift = damped(level, slope, ((k + 1) * step_minutes)[:, None], DAMPING_MINUTES)[:, 0] - level
    changes = np.stack([trend[then] - trend[at_now],
                        (yhat[then] - trend[then]) - (yhat[at_now] - trend[at_now]), level, drift], axis=1)
    scores = _anomaly_many(bundle, items, cols["z"])
    table = {name: col.tolist() for name, col in cols.items()}
    table["changes"] = changes.tolist()
    for name, digits in (("minutes", 2), ("earliest", 2), ("latest", 2), ("level", 4), ("slope", 5)):
        table[f"r_{name}"] = _rounded_list(cols[name], table[name], digits)
    table["r_changes"] = (_rounded(changes, 4).tolist() if n > _FEW else
                          [[round(v, 4) for v in row] for row in table["changes"]])
    table["drivers"] = _driver_order(items, changes)
    version = bundle.version_label
    answer = _row if as_rows else _prediction
    crossed = crossed_now.tolist()
    for j, it in enumerate(items):
        try:
            out[it.index] = answer(it, j, table, crossed[j], alerts[j], scores.get(j, _NO_ANOMALY), version)
        except Exception as exc:
            out[it.index] = exc


def _phase_matched(its: list[_Item], now_us: np.ndarray) -> np.ndarray | None:
    """(g, K) the paths that time each series' crossing now (:func:`training.predict.path_phases`,
    every path for a model without origin minutes); None when no model of the group has them."""
    phased = [path_phases(it.model, [np.datetime64(int(t), "us")]) for it, t in zip(its, now_us, strict=True)]
    if all(p is None for p in phased):
        return None
    k = its[0].model.error_paths_.shape[0]
    return np.stack([np.ones(k, dtype=bool) if p is None else p.matched()[0] for p in phased])


def _driver_order(items: list[_Item], changes: np.ndarray) -> list[list[int]]:
    """Per series, the drivers (indices into ``_DRIVERS``) that push towards the threshold, largest
    push first (ties in their order): ``sorted(range(4), key=-sign * change)`` of every series at
    once (a series with a NaN change is ranked by ``sorted`` itself, whose order NaN decides)."""
    sign = np.array([1.0 if it.query.direction == "above" else -1.0 for it in items])
    push = sign[:, None] * changes
    ranked = np.argsort(-push, axis=1, kind="stable")
    keep = np.take_along_axis(push > 0, ranked, axis=1)
    out = [[i for i, k in zip(r, kk, strict=True) if k] for r, kk in zip(ranked.tolist(), keep.tolist(),
                                                                            strict=True)]
    for j in np.flatnonzero(np.isnan(changes).any(axis=1)).tolist():
        s, c = sign[j], changes[j].tolist()
        out[j] = [i for i in sorted(range(4), key=lambda i: -s * c[i]) if s * c[i] > 0]
    return out


def _crossing_group(items: list[_Item], members: list[int], n_h: int, n_o: int, direction: str, step: float,
                    grid_yhat: np.ndarray, yhat: np.ndarray, obs_us: np.ndarray, obs_y: np.ndarray,
                    cols: dict[str, np.ndarray], crossed_now: np.ndarray, alerts: list, stack: _PathStack,
                    stack_rows: np.ndarray, skip: int = 0) -> None:
    """The checks' crossings of series that share a shape: corrections, then every path at once;
    each series' answer written into row ``members[r]`` of ``cols`` (and ``crossed_now``, ``alerts``).

    ``grid_yhat`` (g, n_o, n_h): the model at each check's horizon; ``yhat[:obs_us.size]`` the
    model at every observation of the batch; ``stack.steps[stack_rows]`` the series' error paths;
    the first ``skip`` checks precede every series' first observation: not walked (chance 0).
    """
    g = len(members)
    its = [items[j] for j in members]
    rows_out = np.array(members)
    lo = np.array([it.obs_lo for it in its])
    counts = np.array([it.obs_hi - it.obs_lo for it in its])
    width = max(1, int(counts.max()))
    valid = np.arange(width)[None, :] < counts[:, None]
    take = np.where(valid, lo[:, None] + np.arange(width)[None, :], 0)
    if obs_us.size:
        ts = np.where(valid, obs_us[take], 0)
        ys = np.where(valid, obs_y[take], np.nan)
        resid = np.where(valid, ys - yhat[take], np.nan)
    else:
        ts, ys, resid = np.zeros(valid.shape, dtype=np.int64), np.full(valid.shape, np.nan), np.full(
            valid.shape, np.nan)
    now_us = np.array([it.now_us for it in its], dtype=np.int64)
    origins = now_us[:, None] - np.array([it.origin_offsets_us for it in its], dtype=np.int64)
    ends = (valid[:, None, :] & (ts[:, None, :] <= origins[:, :, None])).sum(axis=2)  # (g, n_o)
    level, slope = _corrections(ts, resid, ends)
    minutes = np.arange(1, n_h + 1) * step
    value_range = np.array([it.bounds for it in its], dtype=np.float64)
    points = np.clip(grid_yhat + damped(level, slope, minutes),
                     value_range[:, :1, None], value_range[:, 1:, None])
    thresholds = np.array([it.query.threshold for it in its], dtype=np.float64)
    calibrations = [it.calibration for it in its]
    timing = np.array([c.timing for c in calibrations], dtype=np.float64)
    seen = ends > 0
    b = crossing_distribution_rows(minutes, points[:, skip:], stack.steps, stack_rows, thresholds, direction,
                                   timing, stack.extremes(n_h, direction == "above"),
                                   _phase_matched(its, now_us))
    raw = b.probability if not skip else np.concatenate([np.zeros((g, skip)), b.probability], axis=1)
    last = np.maximum(ends - 1, 0)
    rows = np.arange(g)[:, None]
    currents = np.where(seen, ys[rows, last], np.nan)
    sigma = np.array([max(it.model.sigma_, 1e-9) for it in its])
    zs = np.where(seen, resid[rows, last] / sigma[:, None], np.nan)
    above = direction == "above"
    crossed = seen & ((currents >= thresholds[:, None]) if above else (currents <= thresholds[:, None]))
    # the one-series path: round(raw, 4), the calibration's map, round again (per calibration)
    calibrated = _rounded(raw, 4) if g > _FEW else np.array(
        [[round(p, 4) for p in row] for row in raw.tolist()]).reshape(raw.shape)
    by_map: dict[int, list[int]] = {}
    for r, cal in enumerate(calibrations):
        if cal.n_fitted or cal.knots != (0.0, 1.0) or cal.values != (0.0, 1.0):
            by_map.setdefault(id(cal), []).append(r)
    for rs in by_map.values():
        cal = calibrations[rs[0]]
        calibrated[rs] = _rounded(cal.apply(calibrated[rs]), 4)
    probs = np.where(crossed, 1.0, calibrated)
    alarm = np.array([c.alarm for c in calibrations], dtype=np.float64)
    holds = crossed | (probs >= alarm[:, None])
    done = crossed[:, -1]
    for name, value in (("minutes", b.minutes), ("earliest", b.earliest_minutes),
                        ("latest", b.latest_minutes)):
        cols[name][rows_out] = np.where(done, 0.0, value)
    cols["probability"][rows_out] = probs[:, -1]
    cols["level"][rows_out] = level[:, -1]
    cols["slope"][rows_out] = slope[:, -1]
    cols["z"][rows_out] = np.where(ends[:, -1] == 0, np.nan, zs[:, -1])
    crossed_now[rows_out] = done
    # the drivers' step: the crossing's, else the point forecast's closest approach
    m = cols["minutes"][rows_out]
    with np.errstate(invalid="ignore"):
        at_cross = np.minimum(np.ceil(m / step) - 1, n_h - 1)
    approach = np.argmax((1.0 if above else -1.0) * points[:, -1, :], axis=1)
    cols["k"][rows_out] = np.where(np.isnan(m), approach, np.where(m > 0, at_cross, 0))
    bits = 1 << np.arange(n_o)
    hold_bits = (holds @ bits).tolist()
    seen_bits = (seen @ bits).tolist()
    for r, j in enumerate(members):
        it = its[r]
        alerts[j] = _rule_outcome(it.rule, hold_bits[r], seen_bits[r], n_o, bool(counts[r]),
                                  calibrations[r].alarm)


@dataclass
class _PathStack:
    """The error paths of a bundle's models that share a shape and type, stacked step-major
    (m, H, K) in their own float type (the paths at one step are one row: the batch reads them
    at the point forecasts' peaks); each model's ``error_paths_`` is its row, transposed (a view:
    stored once)."""

    steps: np.ndarray
    _extremes: dict = field(default_factory=dict)

    def extremes(self, n_h: int, above: bool) -> np.ndarray:
        """(m, K) every path's extreme over its first ``n_h`` steps (cached: few horizons are asked)."""
        found = self._extremes.get((n_h, above))
        if found is None:
            if len(self._extremes) >= 8:
                self._extremes.clear()
            found = self._extremes[(n_h, above)] = path_extremes(self.steps, n_h, above)
        return found


#: id(bundle) -> its stacks, dropped with the bundle (a bundle, a dataclass, is not hashable)
_STACKS: dict[int, dict] = {}


def stack_error_paths(bundle: ModelBundle) -> dict[int, tuple[_PathStack, int]]:
    """The bundle's error paths as stacks (built once per bundle; a service builds them at load):
    each model's (by ``id``) stack and row. The models' ``error_paths_`` become views of the
    stacks, so the batch reads every series' paths in place instead of copying them."""
    found = _STACKS.get(id(bundle))
    if found is None:
        by_shape: dict[tuple, list] = {}
        for model in bundle.forecasters.values():
            paths = getattr(model, "error_paths_", None)
            if isinstance(paths, np.ndarray) and paths.ndim == 2:
                by_shape.setdefault((paths.shape, paths.dtype.str), []).append(model)
        found = {}
        for models in by_shape.values():
            unique = list({id(m): m for m in models}.values())
            stack = _PathStack(np.stack([m.error_paths_.T for m in unique]))
            for row, model in enumerate(unique):
                model.error_paths_ = stack.steps[row].T
                found[id(model)] = (stack, row)
        _STACKS[id(bundle)] = found
        weakref.finalize(bundle, _forget, id(bundle))
    return found


def _forget(bundle_id: int) -> None:
    """A bundle is gone (a reload replaced it): drop its stacks and the layouts that hold its models."""
    _STACKS.pop(bundle_id, None)
    _RECENT_LAYOUTS.clear()


def _stack_of(stacked: dict[int, tuple[_PathStack, int]], model) -> tuple[_PathStack, int]:
    """A model's stack and row; a model outside the bundle's stacks (not expected) gets its own."""
    found = stacked.get(id(model))
    if found is None or model.error_paths_.base is not found[0].steps:  # replaced since
        found = (_PathStack(np.ascontiguousarray(model.error_paths_.T)[None]), 0)
    return found


def _rounded(x: np.ndarray, digits: int) -> np.ndarray:
    """Python's ``round(float, digits)`` of every element (NaN stays NaN).

    ``np.round`` scales, rounds and scales back, which can land on the other side of a
    halfway case than Python's correctly rounded ``round``: those few elements are asked of
    Python itself.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.round(x, digits)
    scaled = x * 10.0 ** digits
    with np.errstate(invalid="ignore"):
        near = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    if near.any():
        out = out.copy()
        for i in zip(*np.nonzero(near), strict=True):
            out[i] = round(float(x[i]), digits)
    return out


#: below this many series Python's own round costs less than the array version's fixed costs
_FEW = 32


def _rounded_list(x: np.ndarray, values: list[float], digits: int) -> list[float]:
    """``[round(v, digits) for v in values]`` (``values`` is ``x.tolist()``), through arrays for many."""
    return _rounded(x, digits).tolist() if len(values) > _FEW else [round(v, digits) for v in values]


def _opt(x: float) -> float | None:
    return None if x != x else x  # NaN: none


@lru_cache(maxsize=4096)
def _rule_outcome(rule: AlertRule, hold_bits: int, seen_bits: int, n_o: int, observed: bool, alarm: float):
    """The alert, the minutes ``keep_firing_for`` still holds it, and the rule's text (few patterns);
    the checks' flags as bits (bit i: check i, oldest first)."""
    holds = np.array([(hold_bits >> i) & 1 for i in range(n_o)], dtype=bool)
    seen = [bool((seen_bits >> i) & 1) for i in range(n_o)]
    rule, on, text = _covered(rule, holds, seen, observed, alarm)
    alert = bool(rule.firing(on)[-1])
    return alert, rule.keep_firing_left(on) if alert else None, text


def _corrections(ts: np.ndarray, resid: np.ndarray, ends: np.ndarray,
                 window_minutes: float = WINDOW_MINUTES) -> tuple[np.ndarray, np.ndarray]:
    """``realtime_corrections`` of many series' prefixes: level and slope per (series, check).

    ``ts`` (g, w) us, ``resid`` (g, w) NaN-padded, ``ends`` (g, n_o) prefix lengths; the fit of a
    prefix uses its finite residuals within the window before its latest one.
    """
    width = ts.shape[1]
    ok = np.isfinite(resid)
    inside = ok[:, None, :] & (np.arange(width)[None, None, :] < ends[:, :, None])  # (g, n_o, w)
    live = inside.any(axis=2)
    latest_at = width - 1 - np.argmax(inside[:, :, ::-1], axis=2)
    latest = np.take_along_axis(ts, latest_at.reshape(ts.shape[0], -1), axis=1).reshape(ends.shape)
    x = (ts[:, None, :] - latest[:, :, None]).astype(np.float64) / 60e6  # minutes before latest
    inside &= x > -window_minutes
    cnt = inside.sum(axis=2)
    rs0 = np.where(ok, resid, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xs, rs = np.where(inside, x, 0.0), np.where(inside, rs0[:, None, :], 0.0)
        xm, rm = xs.sum(axis=2) / cnt, rs.sum(axis=2) / cnt
        dx = np.where(inside, x - xm[:, :, None], 0.0)
        sxx = (dx * dx).sum(axis=2)
        slope = np.where((cnt >= MIN_POINTS_FOR_SLOPE) & (sxx > 0),
                         (dx * (rs - rm[:, :, None] * inside)).sum(axis=2) / sxx, 0.0)
    level = rm - slope * xm
    return np.where(live, level, 0.0), np.where(live, slope, 0.0)


def _anomaly_many(bundle: ModelBundle, items: list[_Item], z: np.ndarray) -> dict[int, tuple]:
    """``anomaly_now`` of every series, one forest walk per workload detector (scores and explanations)."""
    if not bundle.detectors:
        return {}
    by_detector: dict[int, list[tuple[int, np.ndarray]]] = {}
    detectors, watched = {}, bundle.detectors
    for j, (it, z_j) in enumerate(zip(items, z.tolist(), strict=True)):
        if _entity_of(it.query.series_id) not in watched:
            continue  # no detector for its entity: anomaly_row has nothing to score
        found = anomaly_row(bundle, it.query.series_id, None if z_j != z_j else z_j, it.query.context, it.now)
        if found is not None:
            detectors[id(found[0])] = found[0]
            by_detector.setdefault(id(found[0]), []).append((j, found[1]))
    out = {}
    for key, rows in by_detector.items():
        det = detectors[key]
        for (j, _), score, top in zip(rows, *explain_rows(det, np.stack([r for _, r in rows])), strict=True):
            out[j] = (round(float(score), 4), top)
    return out


def explain_rows(det, z: np.ndarray, top: int = 3) -> tuple[np.ndarray, list[list[dict]]]:
    """``det.score`` and ``det.explain`` of every row of ``z`` from one walk of the forest.

    Each row's probes (the row, then each metric put back at its expectation) are scored
    together; the row's raw score is its first probe's.
    """
    rows = det._filled(z)
    col_metric = np.array([det.metrics_.index(m) for m, _ in det.columns_])
    n_m = len(det.metrics_)
    probes = np.repeat(rows[:, None, :], n_m + 1, axis=1)
    for i in range(n_m):
        mask = col_metric == i
        probes[:, i + 1, mask] = det.fill_[mask]
    raw = det.raw_score(probes.reshape(-1, rows.shape[1])).reshape(rows.shape[0], n_m + 1)
    scores = det.calibrate(raw[:, 0])
    return scores, [det.ranked(raw[r, 0] - raw[r, 1:], z[r], top) for r in range(rows.shape[0])]


_DRIVERS = ("trend", "seasonality", "recent_level", "recent_drift")
_MEANINGS = tuple(DRIVER_NAMES[d] for d in _DRIVERS)


def _row_parts(j: int, t: dict[str, list]) -> tuple[list[dict], float, float, float]:
    """Row ``j``'s drivers and crossing minutes (answer, P10, P90) from the batch's columns ``t``."""
    rounded = t["r_changes"][j]
    drivers = [{"component": _DRIVERS[i], "meaning": _MEANINGS[i], "change": rounded[i]}
               for i in t["drivers"][j]]
    return drivers, t["minutes"][j], t["earliest"][j], t["latest"][j]


def _prediction(it: _Item, j: int, t: dict[str, list], crossed: bool, outcome: tuple, anomaly: tuple,
                version: str) -> Prediction:
    """Row ``j`` of the batch's columns ``t`` as the one-series path's :class:`Prediction`."""
    q, model, cal, now = it.query, it.model, it.calibration, it.now
    drivers, minutes, earliest, latest = _row_parts(j, t)
    alert, held_left, rule_text = outcome
    score, top = anomaly
    return Prediction(
        series_id=q.series_id, model_kind=model.kind_, now=now, threshold=q.threshold,
        direction=q.direction, horizon_minutes=q.horizon_minutes,
        minutes_to_threshold=_opt(t["r_minutes"][j]),
        crossing_at=None if minutes != minutes else now + timedelta(minutes=minutes),
        earliest_minutes=_opt(t["r_earliest"][j]), latest_minutes=_opt(t["r_latest"][j]),
        earliest_at=None if earliest != earliest else now + timedelta(minutes=earliest),
        latest_at=None if latest != latest else now + timedelta(minutes=latest),
        probability=t["probability"][j], already_crossed=bool(crossed),
        alert=alert, alarm_probability=cal.alarm, alert_rule=rule_text,
        keep_firing_minutes_left=held_left, calibrated=cal.n_fitted > 0,
        calibration_note=_note(model, cal, q.threshold, q.direction), calendar=_calendar(model),
        drivers=drivers, driver=drivers[0]["component"] if drivers else None,
        level_correction=t["r_level"][j], trend_correction_per_min=t["r_slope"][j],
        anomaly_score=score, anomaly_top_metrics=list(top), model_version=version,
    )


#: the fields of an answer row (:func:`predict_many` with ``rows``), in the order a service writes
#: them (``serving.schemas.PredictResponse``'s; a test compares the bytes), then its ``message``
ANSWER_FIELDS = (
    "series_id", "model_version", "model_kind", "now", "threshold", "direction", "horizon_minutes",
    "minutes_to_threshold", "crossing_at", "earliest_minutes", "latest_minutes", "earliest_at", "latest_at",
    "probability", "already_crossed", "alert", "alarm_probability", "alert_rule", "keep_firing_minutes_left",
    "calibrated", "calibration_note", "calendar", "driver", "drivers", "level_correction",
    "trend_correction_per_min", "anomaly_score", "anomaly_top_metrics", "message")
_NO_ANOMALY = (None, ())


class _Words:
    """What an answer's message says, as attributes, so the one-series path's own
    :meth:`Prediction.sentence` words it (one wording, whichever path answered)."""

    __slots__ = ("series_id", "direction", "threshold", "already_crossed", "minutes_to_threshold",
                 "earliest_minutes", "latest_minutes", "horizon_minutes", "probability",
                 "keep_firing_minutes_left")

    def __init__(self, series_id, direction, threshold, already_crossed, minutes_to_threshold,
                 earliest_minutes, latest_minutes, horizon_minutes, probability, keep_firing_minutes_left):
        self.series_id, self.direction, self.threshold = series_id, direction, threshold
        self.already_crossed, self.minutes_to_threshold = already_crossed, minutes_to_threshold
        self.earliest_minutes, self.latest_minutes = earliest_minutes, latest_minutes
        self.horizon_minutes, self.probability = horizon_minutes, probability
        self.keep_firing_minutes_left = keep_firing_minutes_left

    sentence = Prediction.sentence
    _forecast_sentence = Prediction._forecast_sentence
    _held_note = Prediction._held_note


def _row(it: _Item, j: int, t: dict[str, list], crossed: bool, outcome: tuple, anomaly: tuple,
         version: str) -> dict:
    """Row ``j`` of the batch's columns ``t`` as the plain dict of :data:`ANSWER_FIELDS`: what
    :func:`_prediction` holds, with the JSON types a service writes (floats as floats)."""
    q, model, cal, now = it.query, it.model, it.calibration, it.now
    drivers, minutes, earliest, latest = _row_parts(j, t)
    alert, held_left, rule_text = outcome
    score, top = anomaly
    row = dict(
        series_id=q.series_id, model_version=version, model_kind=model.kind_, now=now,
        threshold=float(q.threshold), direction=q.direction, horizon_minutes=float(q.horizon_minutes),
        minutes_to_threshold=_opt(t["r_minutes"][j]),
        crossing_at=None if minutes != minutes else now + _minutes(minutes),
        earliest_minutes=_opt(t["r_earliest"][j]), latest_minutes=_opt(t["r_latest"][j]),
        earliest_at=None if earliest != earliest else now + _minutes(earliest),
        latest_at=None if latest != latest else now + _minutes(latest),
        probability=t["probability"][j], already_crossed=crossed, alert=alert,
        alarm_probability=float(cal.alarm), alert_rule=rule_text,
        keep_firing_minutes_left=None if held_left is None else float(held_left),
        calibrated=cal.n_fitted > 0, calibration_note=_note(model, cal, q.threshold, q.direction),
        calendar=_calendar(model), driver=drivers[0]["component"] if drivers else None, drivers=drivers,
        level_correction=t["r_level"][j], trend_correction_per_min=t["r_slope"][j], anomaly_score=score,
        anomaly_top_metrics=[{"metric": m["metric"], "z": float(m["z"])} for m in top])
    row["message"] = _Words(
        row["series_id"], row["direction"], row["threshold"], crossed, row["minutes_to_threshold"],
        row["earliest_minutes"], row["latest_minutes"], row["horizon_minutes"], row["probability"],
        row["keep_firing_minutes_left"]).sentence()
    return row


@lru_cache(maxsize=4096)
def _minutes(minutes: float) -> timedelta:
    """``timedelta(minutes=minutes)`` (crossing times fall on a few steps' quantiles: few distinct)."""
    return timedelta(minutes=minutes)


def _calendar(model) -> str:
    found = _CALENDARS.get(id(model))
    if found is None:
        found = _CALENDARS.put(model, calendar_of(model))
    return found


_CALENDARS = _PerModel()


def _note(model, cal, threshold: float, direction: str) -> str:
    if not cal.n_fitted:  # the same words for every threshold
        return _uncalibrated_note(cal.alarm)
    return calibration_note(model, cal, threshold, direction, True)


@lru_cache(maxsize=64)
def _uncalibrated_note(alarm: float) -> str:
    return calibration_note(None, ProbabilityCalibration(alarm=alarm), 0.0, "above", True)
