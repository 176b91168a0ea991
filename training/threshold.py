"""Minutes-to-threshold: the one place that turns a forecast into a crossing time and its odds."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

#: yhat_lower / yhat_upper are the P10 / P90 of the forecast: z of the 90th percentile
Z90 = 1.2815515655446004


@dataclass(frozen=True)
class Crossing:
    """When a forecast reaches a threshold, relative to ``now``.

    From error paths (:func:`crossing_distribution`): ``minutes`` is the median and
    ``earliest``/``latest`` the P10/P90 of the crossing time given a crossing within the
    horizon, ``None`` when no path crosses. From the Gaussian band of the linear fallback
    (:func:`minutes_to_threshold`): the crossings of the point forecast and of the P90/P10
    bands (for "above"), each ``None`` when not within the horizon. ``probability`` is the
    chance of reaching the threshold within the horizon.
    """

    minutes: float | None
    earliest_minutes: float | None
    latest_minutes: float | None
    probability: float
    already_crossed: bool = False


def _first_crossing(minutes: np.ndarray, path: np.ndarray, threshold: float, above: bool):
    """Minutes until ``path`` first reaches ``threshold``, interpolated between steps."""
    reached = path >= threshold if above else path <= threshold
    if not reached.any():
        return None
    i = int(np.argmax(reached))
    if i == 0:
        return float(minutes[0])
    m0, m1, y0, y1 = minutes[i - 1], minutes[i], path[i - 1], path[i]
    frac = (threshold - y0) / (y1 - y0) if y1 != y0 else 1.0
    return float(m0 + frac * (m1 - m0))


def _normal_sf(z: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2.0))


def minutes_to_threshold(
    ts: np.ndarray,
    yhat: np.ndarray,
    yhat_lower: np.ndarray,
    yhat_upper: np.ndarray,
    threshold: float,
    direction: str,
    now: datetime | np.datetime64,
    current: float | None = None,
) -> Crossing:
    """Turn a forecast over the horizon into a :class:`Crossing`.

    ``ts`` are the forecast times (after ``now``), ``yhat_lower``/``yhat_upper`` its P10/P90.
    ``current`` is the latest observed value: at or beyond the threshold means crossed (0
    minutes). The probability is the largest per-step chance of being beyond the threshold,
    a lower bound on the chance that the path's extreme crosses.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', not {direction!r}")
    above = direction == "above"
    if current is not None and (current >= threshold if above else current <= threshold):
        return Crossing(0.0, 0.0, 0.0, 1.0, already_crossed=True)
    ts = np.asarray(ts, dtype="datetime64[us]")
    if ts.size == 0:
        return Crossing(None, None, None, 0.0)
    if isinstance(now, datetime) and now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    now64 = np.datetime64(now, "us")
    minutes = (ts - now64).astype("timedelta64[us]").astype(np.float64) / 60e6
    yhat, lo, hi = (np.asarray(a, dtype=np.float64) for a in (yhat, yhat_lower, yhat_upper))
    point = _first_crossing(minutes, yhat, threshold, above)
    # the optimistic bound crosses first, the pessimistic one last
    earliest = _first_crossing(minutes, hi if above else lo, threshold, above)
    latest = _first_crossing(minutes, lo if above else hi, threshold, above)
    sigma = np.maximum((hi - lo) / (2 * Z90), 1e-12)
    z = (threshold - yhat) / sigma if above else (yhat - threshold) / sigma
    probability = float(np.max(_normal_sf(z)))
    return Crossing(point, earliest, latest, round(probability, 4))


def first_crossing_index(paths: np.ndarray, threshold: float, above: bool) -> np.ndarray:
    """Index of the first step at which each path (last axis) reaches the threshold; -1 if never."""
    reached = paths >= threshold if above else paths <= threshold
    first = np.argmax(reached, axis=-1)
    return np.where(reached.any(axis=-1), first, -1)


@dataclass(frozen=True)
class CrossingBatch:
    """Vectorized answers for many evaluation times (one row each).

    The times are quantiles of the crossing time *given* a crossing within H (the paths that
    cross), NaN where no path crosses; ``probability`` says how likely that crossing is.
    """

    minutes: np.ndarray  # the ``timing`` quantile (the median by default) of the crossing time
    earliest_minutes: np.ndarray  # its P10
    latest_minutes: np.ndarray  # its P90
    probability: np.ndarray  # share of plausible paths that reach the threshold within H
    #: (n, len(levels)) quantiles of the crossing time at the ``levels`` asked for, if any
    at_levels: np.ndarray | None = None


#: how many path values the training replay's pruned walks sum at once: the sums stay in the
#: CPU's cache for the comparisons that read them (2M-value blocks went to memory and back, and
#: cost a third more CPU on 1-minute holdouts); the answers do not depend on it
CACHED_ELEMENTS = 400_000

#: no physical limit: a metric whose kind the catalogue does not know
UNBOUNDED = (float("-inf"), float("inf"))


def clip_to_range(values, bounds: tuple[float, float] = UNBOUNDED) -> np.ndarray:
    """Values held inside the metric's physical range (a heap path never goes below 0 %)."""
    lo, hi = bounds
    values = np.asarray(values, dtype=np.float64)
    return values if lo == -np.inf and hi == np.inf else np.clip(values, lo, hi)


#: an error path's origin counts as "at the check's minute of the hour" within this many minutes
PHASE_WINDOW_MINUTES = 5
#: the fewest crossing paths so matched that time a crossing; fewer: every path times it
MIN_PHASE_CROSSINGS = 5


@dataclass(frozen=True)
class PathPhases:
    """The minute of the hour of each check and of each error path's origin.

    A periodic spike (an hourly cron job at minute 22) shows in the paths that began at the
    same minute of the hour as the check, at the same lead; paths begun at any minute smear it
    over the hour. :meth:`matched` says which paths lie within ``window`` minutes (circular).
    """

    checks: np.ndarray  # (n_t,) minute of the hour of each check (its last observation)
    paths: np.ndarray  # (K,) minute of the hour of each path's origin
    window: float = PHASE_WINDOW_MINUTES

    def matched(self, rows=slice(None)) -> np.ndarray:
        c = np.asarray(self.checks, dtype=np.int64)[rows]
        d = np.abs(c[:, None] - np.asarray(self.paths, dtype=np.int64)[None, :]) % 60
        return np.minimum(d, 60 - d) <= self.window


def phase_restricted(first: np.ndarray, matched: np.ndarray | None) -> np.ndarray:
    """``first`` (n_t, K) with the unmatched paths set to "no crossing" in the rows where at
    least :data:`MIN_PHASE_CROSSINGS` matched paths cross; ``first`` itself without ``matched``."""
    if matched is None:
        return first
    only = np.where(matched, first, -1)
    enough = np.sum(only >= 0, axis=1) >= MIN_PHASE_CROSSINGS
    return np.where(enough[:, None], only, first)


def crossing_distribution(
    minutes: np.ndarray,
    point: np.ndarray,
    error_paths: np.ndarray,
    threshold: float,
    direction: str,
    bounds: tuple[float, float] = UNBOUNDED,
    timing: float = 0.5,
    levels: tuple[float, ...] = (),
    phases: PathPhases | None = None,
) -> CrossingBatch:
    """Crossing times from a point path plus plausible error paths.

    ``minutes`` (n_h,) are the forecast offsets from now, ``point`` (n_t, n_h) the corrected
    point forecasts, ``error_paths`` (K, n_h) forecast errors seen in history at the same
    offsets (kept whole, so their correlation over the horizon is real). Each path
    ``point + error`` is one plausible future: the probability is the share whose extreme
    reaches the threshold, and P10/P50/P90 are quantiles of the first-crossing times of
    those that do ("if it crosses, when"), so P10 <= P50 <= P90 always holds; NaN when none
    crosses. "Heap will cross in 38 min (between 25 and 55, probability 0.8)". Each path is
    held inside the metric's physical ``bounds`` (see :func:`clip_to_range`): a threshold
    beyond them is never reached. ``timing`` is the quantile the answer's crossing time takes
    (the median unless a replay chose another, see :attr:`ProbabilityCalibration.timing`);
    ``levels`` asks for more quantiles (``at_levels``). ``phases`` (if given): the crossing
    times are taken over the paths that began at a similar minute of the hour as each check
    (:class:`PathPhases`); the probability stays over all paths.
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', not {direction!r}")
    minutes = np.asarray(minutes, dtype=np.float64)
    point = np.atleast_2d(np.asarray(point, dtype=np.float64))
    errors = np.asarray(error_paths, dtype=np.float64)
    n_t = point.shape[0]
    out = {k: np.full(n_t, np.nan) for k in ("minutes", "earliest", "latest")}
    extra = np.full((n_t, len(levels)), np.nan)
    prob = np.zeros(n_t)
    chunk = max(1, 2_000_000 // max(1, errors.size))
    for lo in range(0, n_t, chunk):
        first = first_crossings(point[lo:lo + chunk], errors, threshold, direction, bounds)
        prob[lo:lo + chunk] = np.sum(first >= 0, axis=1) / errors.shape[0]
        matched = None if phases is None else phases.matched(slice(lo, lo + chunk))
        found = crossing_time_quantiles(minutes, first, (0.1, timing, 0.9, *levels), matched)
        for j, key in enumerate(("earliest", "minutes", "latest")):
            out[key][lo:lo + chunk] = found[:, j]
        extra[lo:lo + chunk] = found[:, 3:]
    return CrossingBatch(out["minutes"], out["earliest"], out["latest"], prob,
                         extra if levels else None)


def first_crossings(point: np.ndarray, errors: np.ndarray, threshold: float, direction: str,
                    bounds: tuple[float, float] = UNBOUNDED, maybe: np.ndarray | None = None
                    ) -> np.ndarray:
    """The step at which each path ``point[t] + errors[k]``, held in ``bounds``, first reaches
    the threshold: (n_t, K), -1 where it does not within the horizon (the last axis).
    ``maybe`` (n_t, K): the pairs that may reach it (any superset of those that do), if the
    caller knows them; only those are walked when the threshold is inside ``bounds``."""
    above = direction == "above"
    point = np.atleast_2d(np.asarray(point, dtype=np.float64))
    errors = np.asarray(errors, dtype=np.float64)
    if bounds[0] < threshold < bounds[1]:
        # strictly inside the range, holding a path in it changes none of its comparisons
        # with the threshold: the paths that cannot reach it are set aside without a walk
        return _first_crossings(point, errors, threshold, above, maybe)
    first = np.empty((point.shape[0], errors.shape[0]), dtype=np.int64)
    chunk = max(1, 2_000_000 // max(1, errors.size))
    for lo in range(0, point.shape[0], chunk):
        paths = clip_to_range(point[lo:lo + chunk, None, :] + errors[None, :, :], bounds)
        first[lo:lo + chunk] = first_crossing_index(paths, threshold, above)
    return first


def _first_crossings(point: np.ndarray, errors: np.ndarray, threshold: float,
                     above: bool, maybe: np.ndarray | None = None) -> np.ndarray:
    """:func:`first_crossing_index` of every path ``point[t] + errors[k]``, (n_t, K), walking
    only the paths that may reach the threshold: one whose largest possible value (the point
    forecast's largest plus the error path's largest; for "below" the smallest) misses it never
    reaches it, as rounding is monotone. The same sums, so the same crossings bit for bit."""
    extreme = np.fmax.reduce if above else np.fmin.reduce  # NaN steps never cross: skipped
    reach = np.greater_equal if above else np.less_equal
    if maybe is None:
        maybe = reach(extreme(point, axis=1)[:, None] + extreme(errors, axis=1)[None, :], threshold)
    first = np.full(maybe.shape, -1, dtype=np.int64)
    # checks where most paths may cross: every path at once (gathering pairs costs more there)
    dense = np.flatnonzero(maybe.mean(axis=1) > 0.5)
    rows = max(1, CACHED_ELEMENTS // max(1, errors.size))
    for lo in range(0, dense.size, rows):
        at = dense[lo:lo + rows]
        first[at] = first_crossing_index(point[at][:, None, :] + errors[None, :, :], threshold, above)
    dense = np.isin(np.arange(maybe.shape[0]), dense)
    ti, ki = np.nonzero(maybe & ~dense[:, None])
    size = max(1, CACHED_ELEMENTS // max(1, point.shape[1]))
    for s in range(0, ti.size, size):
        t, k = ti[s:s + size], ki[s:s + size]
        first[t, k] = first_crossing_index(point[t] + errors[k], threshold, above)
    return first


def crossing_time_quantiles(minutes: np.ndarray, first: np.ndarray,
                            levels: tuple[float, ...], matched: np.ndarray | None = None
                            ) -> np.ndarray:
    """(n_t, len(levels)) quantiles of the crossing times of the paths that cross, from
    :func:`first_crossings`' steps ``first`` (n_t, K); NaN where none crosses. ``matched``
    (n_t, K), if given: only those paths, in the rows where at least
    :data:`MIN_PHASE_CROSSINGS` of them cross (the others keep every path)."""
    first = phase_restricted(first, matched)
    n_cross = np.sum(first >= 0, axis=1)
    t_cross = np.full(first.shape, np.inf)  # sorted only where a path crosses
    some = n_cross > 0
    t_cross[some] = np.sort(np.where(first[some] >= 0, minutes[np.maximum(first[some], 0)], np.inf),
                            axis=1)
    return np.stack([_crossing_quantile(t_cross, n_cross, q) for q in levels], axis=1).reshape(
        first.shape[0], len(levels))


def _crossing_quantile(t_cross: np.ndarray, n_cross: np.ndarray, q: float) -> np.ndarray:
    """The inverted-CDF quantile of each row's ``n_cross`` finite (sorted first) crossing times."""
    k = np.clip(np.ceil(q * n_cross).astype(np.int64) - 1, 0, None)
    return np.where(n_cross > 0, t_cross[np.arange(t_cross.shape[0]), k], np.nan)


def crossing_distribution_many(
    minutes: np.ndarray,
    points: np.ndarray,
    error_paths: np.ndarray,
    thresholds: np.ndarray,
    direction: str,
    timing: np.ndarray | float = 0.5,
) -> CrossingBatch:
    """:func:`crossing_distribution` of many series at once, each with its own paths and threshold.

    ``points`` (n, n_t, n_h): each series' corrected point forecasts at n_t evaluation times
    (the alert rule's checks, now last); ``error_paths`` (n, K, n_h) its paths, ``thresholds``
    (n,), ``timing`` (n,) or one for all: the quantile each answer's crossing time takes.
    ``probability`` is (n, n_t), every check's; the crossing times (n,) are the last
    evaluation time's (the earlier checks need only the probability). Element for element what
    :func:`crossing_distribution` gives for series i alone with its ``bounds``, for a threshold
    strictly inside them (where holding paths in the range changes no crossing: the caller
    holds the point forecasts there itself).
    """
    error_paths = np.asarray(error_paths)
    # the same arithmetic as the batch's in-place reading: series i's paths are row i, step-major
    return crossing_distribution_rows(minutes, points, error_paths.transpose(0, 2, 1),
                                      np.arange(error_paths.shape[0]), thresholds, direction, timing)


def crossing_distribution_rows(
    minutes: np.ndarray,
    points: np.ndarray,
    steps: np.ndarray,
    rows: np.ndarray,
    thresholds: np.ndarray,
    direction: str,
    timing: np.ndarray | float = 0.5,
    extremes: np.ndarray | None = None,
    matched: np.ndarray | None = None,
) -> CrossingBatch:
    """:func:`crossing_distribution_many` with each series' error paths read in place from a stack.

    ``steps`` (m, H >= n_h, K): the error paths of m series (of a whole bundle, say), step-major
    (``steps[i, h]`` holds step h of every path of series i, so the paths at one step are read
    as one row); series j of the batch has ``steps[rows[j], :n_h].T``. ``extremes`` (m, K), if
    given: each stacked path's largest value over its first n_h steps (for "below": smallest),
    as a cache keeps it (:func:`path_extremes`). Element for element what
    :func:`crossing_distribution` gives series j alone (tested), without copying the batch's
    paths: most paths are decided without walking the horizon, one whose extreme misses the
    threshold never reaches it (rounding is monotone), one that reaches it where the point
    forecast peaks does; only the rest are walked. ``matched`` (n, K), if given: the paths
    that time each series' crossing (:class:`PathPhases` at its last evaluation time).
    """
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', not {direction!r}")
    above = direction == "above"
    reach = np.greater_equal if above else np.less_equal
    minutes = np.asarray(minutes, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.intp)
    n, n_t, n_h = points.shape
    timing = np.broadcast_to(np.asarray(timing, dtype=np.float64), (n,))
    k_paths = steps.shape[2]
    if steps.dtype not in (np.float32, np.float64):
        steps = steps.astype(np.float64)
    if extremes is None:
        extremes = path_extremes(steps, n_h, above)
    out = {k: np.full(n, np.nan) for k in ("minutes", "earliest", "latest")}
    prob = np.zeros((n, n_t))
    chunk = max(1, 300_000 // max(1, n_t * k_paths))
    extreme, arg_extreme = (np.max, np.argmax) if above else (np.min, np.argmin)
    for lo in range(0, n, chunk):
        pts = points[lo:lo + chunk]
        at = rows[lo:lo + chunk]
        c_n = pts.shape[0]
        thr = thresholds[lo:lo + chunk, None, None]
        maybe = reach(extreme(pts, axis=2)[:, :, None] + extremes[at][:, None, :], thr)
        peak = arg_extreme(pts, axis=2)  # (c, n_t)
        ever = reach(np.take_along_axis(pts, peak[:, :, None], axis=2) + steps[at[:, None], peak], thr)
        flat = np.flatnonzero(maybe & ~ever)
        ci, rest = np.divmod(flat, n_t * k_paths)
        ti, ki = np.divmod(rest, k_paths)
        ever.reshape(-1)[flat] = _first_steps_rows(pts, steps, at, thr, ci, ti, ki, above) >= 0
        prob[lo:lo + chunk] = ever.sum(axis=2) / k_paths
        # the last evaluation time's crossing times: each path's first step (-1: none)
        flat = np.flatnonzero(maybe[:, -1])
        ci, ki = np.divmod(flat, k_paths)
        first = np.full((c_n, k_paths), -1)
        first.reshape(-1)[flat] = _first_steps_rows(pts, steps, at, thr, ci, np.full(ci.size, n_t - 1), ki,
                                                    above)
        if matched is not None:  # timed over the paths begun at the check's minute
            first = phase_restricted(first, matched[lo:lo + chunk])
        t_cross = np.sort(np.where(first >= 0, minutes[np.maximum(first, 0)], np.inf), axis=1)
        n_cross = np.sum(first >= 0, axis=1)
        for key, q in (("earliest", 0.1), ("minutes", timing[lo:lo + chunk]), ("latest", 0.9)):
            out[key][lo:lo + chunk] = _crossing_quantile(t_cross, n_cross, q)
    return CrossingBatch(out["minutes"], out["earliest"], out["latest"], prob)


def path_extremes(steps: np.ndarray, n_h: int, above: bool) -> np.ndarray:
    """(m, K) each path's largest value over its first ``n_h`` steps (``above``), else smallest;
    ``steps`` (m, H, K) step-major as :func:`crossing_distribution_rows` reads them."""
    pairwise = np.maximum if above else np.minimum
    out = steps[:, 0].copy()
    for h in range(1, n_h):
        pairwise(out, steps[:, h], out=out)
    return out


def _first_steps_rows(points: np.ndarray, steps: np.ndarray, at: np.ndarray, thresholds: np.ndarray,
                      ci: np.ndarray, ti: np.ndarray, ki: np.ndarray, above: bool) -> np.ndarray:
    """First step at which path ``points[c, t] + steps[at[c], :n_h, k]`` reaches its threshold,
    per (c, t, k) triple given (-1 if never); in slices, so the gathered paths stay small."""
    n_h = points.shape[2]
    out = np.empty(ci.size, dtype=np.int64)
    for s in range(0, ci.size, 50_000):
        c, t, k = ci[s:s + 50_000], ti[s:s + 50_000], ki[s:s + 50_000]
        path = points[c, t] + steps[at[c], :n_h, k]
        out[s:s + 50_000] = first_crossing_index(path, thresholds[c, 0], above)
    return out


def crossings_from_paths(
    minutes: np.ndarray,
    points: np.ndarray,
    error_paths: np.ndarray,
    threshold: float,
    direction: str,
    currents: list[float | None],
    bounds: tuple[float, float] = UNBOUNDED,
    timing: float = 0.5,
    phases: PathPhases | None = None,
) -> list[Crossing]:
    """:class:`Crossing` per row of ``points`` (n, n_h), each with its latest observed value;
    ``phases`` (if given) times each row's crossing at its check's minute of the hour."""
    above = direction == "above"
    b = crossing_distribution(minutes, points, error_paths, threshold, direction, bounds, timing,
                              phases=phases)

    def _opt(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    out = []
    for i, current in enumerate(currents):
        if current is not None and (current >= threshold if above else current <= threshold):
            out.append(Crossing(0.0, 0.0, 0.0, 1.0, already_crossed=True))
        else:
            out.append(Crossing(_opt(b.minutes[i]), _opt(b.earliest_minutes[i]),
                                _opt(b.latest_minutes[i]), round(float(b.probability[i]), 4)))
    return out


#: alert when the chance of crossing within the horizon reaches this, unless a replay chose better
DEFAULT_ALARM = 0.5
#: pseudo-outcomes at the replay's base rate that each calibration block is shrunk with
PRIOR_OUTCOMES = 2.0
#: independent outcomes an isotonic block must hold before its rate stands on its own (the same
#: ten crossings a replay needs before it chooses an alarm level): fewer pool with a neighbour
MIN_BLOCK_OUTCOMES = 10.0


@dataclass(frozen=True)
class ProbabilityCalibration:
    """A monotone map from the paths' raw crossing probability to the observed frequency.

    Fitted (isotonic) on replays the model did not train on; the identity until there are
    enough of them. Stored as knots so serving applies it with ``np.interp``.
    """

    knots: tuple[float, ...] = (0.0, 1.0)
    values: tuple[float, ...] = (0.0, 1.0)
    n_fitted: int = 0
    alarm: float = DEFAULT_ALARM  # the calibrated probability at which to alert (best F1 on the replay)
    #: the alert rule's ``for`` chosen with the alarm on the replay; None keeps the bundle's
    for_minutes: float | None = None
    #: thresholds the replay covered, per direction: beyond them the raw probability stands
    above: tuple[float, float] = (float("-inf"), float("inf"))
    below: tuple[float, float] = (float("-inf"), float("inf"))
    #: the quantile of the paths' crossing times an answer gives as its crossing time: the one
    #: closest to the true crossings (least absolute error) on the replay's warned crossings
    timing: float = 0.5
    #: independent crossings (crossed checks over checks per horizon) the alarm was chosen on
    alarm_outcomes: float = 0.0
    #: the level this replay alone chose, before it was shrunk toward the previous model's
    #: (:func:`smoothed_alarm`); None when nothing was shrunk
    alarm_chosen: float | None = None
    #: what the level was shrunk toward: the previous model's level and the metric kind's pooled
    #: level in the same training run (:class:`PooledAlarm`); None where that prior was absent
    alarm_previous: float | None = None
    alarm_pooled: float | None = None

    def covers(self, threshold: float, direction: str) -> bool:
        lo, hi = self.above if direction == "above" else self.below
        return lo <= threshold <= hi

    def apply(self, p):
        return np.interp(np.asarray(p, dtype=np.float64), self.knots, self.values)

    @classmethod
    def fit(cls, p_raw: np.ndarray, crossed: np.ndarray, min_samples: int = 200,
            min_positives: int = 10, checks_per_outcome: float = 1.0,
            prior_weight: float = PRIOR_OUTCOMES,
            min_block_outcomes: float = MIN_BLOCK_OUTCOMES) -> ProbabilityCalibration:
        """Isotonic regression of ``crossed`` on ``p_raw``, each block's rate m-estimated.

        Checks a few minutes apart share most of their horizon, so a block of ``n`` checks
        holds only about ``n / checks_per_outcome`` independent outcomes. Each block's rate is
        an m-estimate (Zadrozny & Elkan 2001, as they define it): the block's rate shrunk toward
        the replay's base rate of crossings by ``prior_weight`` such outcomes. A block of a few
        outcomes, all crossed, no longer says "certain": shrunk toward the model's own
        probability instead (near 1 there), the backtest's top decile said 0.96 where 0.86
        came true, overconfident in every decile above 0.4 (reports/evaluate_runs.md). Adjacent isotonic
        blocks are first pooled where one holds fewer than ``min_block_outcomes`` independent
        outcomes and their rates are within chance of each other (:meth:`_pooled_blocks`; the
        map then runs through each pooled block's mean raw probability and its rate): a top
        block of a handful of outcomes, all crossed, no longer pins the map near 1 (on the
        backtest the top decile said 0.95 where 0.85 came true). 0 keeps isotonic's own blocks.
        """
        from sklearn.isotonic import IsotonicRegression

        p_raw = np.asarray(p_raw, dtype=np.float64)
        crossed = np.asarray(crossed, dtype=bool)
        if p_raw.size < min_samples or crossed.sum() < min_positives:
            return cls()
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_raw, crossed)
        rate, block = np.unique(iso.predict(p_raw), return_inverse=True)  # ascending block rates
        count = np.bincount(block, minlength=rate.size)
        said = np.bincount(block, weights=p_raw, minlength=rate.size) / count  # the model's own
        n = count / max(checks_per_outcome, 1.0)
        base = float(crossed.mean())  # the replay's base rate: the m-estimate's prior
        shrunk = (n * rate + prior_weight * base) / (n + prior_weight)
        shrunk = np.maximum.accumulate(shrunk)  # still monotone
        if min_block_outcomes > 0:
            lo = np.array([p_raw[block == b].min() for b in range(rate.size)])
            hi = np.array([p_raw[block == b].max() for b in range(rate.size)])
            return cls._pooled_blocks(rate, count, said, n, (lo, hi), prior_weight,
                                      min_block_outcomes, int(p_raw.size), base)
        knots = np.concatenate([[0.0], iso.X_thresholds_, [1.0]])
        values = np.concatenate([[iso.predict([0.0])[0]], iso.y_thresholds_,
                                 [iso.predict([1.0])[0]]])
        values = np.interp(values, rate, shrunk)
        keep = np.concatenate([[True], np.diff(knots) > 0])
        return cls(tuple(knots[keep].round(6)), tuple(values[keep].round(6)), int(p_raw.size))

    @classmethod
    def _pooled_blocks(cls, rate, count, said, n, spans, prior_weight: float,
                       min_outcomes: float, n_fitted: int, base: float) -> ProbabilityCalibration:
        """The map through adjacent blocks pooled while one of a pair holds fewer than
        ``min_outcomes`` outcomes and the two rates do not differ by two standard errors.

        A thin block whose rate its neighbour's evidence cannot tell apart adds only noise
        (five outcomes, all crossed, said "1.0"); a thin block that clearly differs (a first
        leak, crossed at the top of a replay that was otherwise quiet) keeps its own rate.
        Inside a pooled group the model's own probability keeps its order and is moved by the
        group's (m-estimated) error, ``rate - said``, over the raw range ``spans`` it covers.
        """
        groups = [[b] for b in range(rate.size)]
        pos = list(rate * n)  # crossed outcomes per group
        out = list(n)
        while len(groups) > 1:
            r = np.array(pos) / np.maximum(out, 1e-9)
            k, z = None, np.inf
            for i in range(len(groups) - 1):
                if min(out[i], out[i + 1]) >= min_outcomes:
                    continue
                pooled = (pos[i] + pos[i + 1]) / (out[i] + out[i + 1])
                se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / out[i] + 1 / out[i + 1]))
                gap = abs(r[i + 1] - r[i]) / se
                if gap < min(z, 2.0):
                    k, z = i, gap
            if k is None:
                break
            groups[k:k + 2] = [groups[k] + groups[k + 1]]
            pos[k:k + 2] = [pos[k] + pos[k + 1]]
            out[k:k + 2] = [out[k] + out[k + 1]]
        knots, values = [], []
        for g, k_pos, k_out in zip(groups, pos, out, strict=True):
            m = float(np.sum(said[g] * count[g]) / count[g].sum())
            shift = (k_pos + prior_weight * base) / (k_out + prior_weight) - m
            for x in sorted({float(spans[0][g].min()), float(spans[1][g].max())}):
                if not knots or x > knots[-1]:
                    knots.append(x)
                    values.append(x + shift)
        if knots[0] > 0.0:
            knots, values = [0.0, *knots], [max(values[0] - knots[0], 0.0), *values]
        if knots[-1] < 1.0:
            knots, values = [*knots, 1.0], [*values, values[-1] + 1.0 - knots[-1]]
        values = np.maximum.accumulate(np.clip(values, 0.0, 1.0))
        return cls(tuple(np.round(knots, 6)), tuple(np.round(values, 6)), n_fitted)

    def to_dict(self) -> dict:
        return {"knots": list(self.knots), "values": list(self.values), "n_fitted": self.n_fitted,
                "alarm": self.alarm, "above": list(self.above), "below": list(self.below),
                "for_minutes": self.for_minutes, "timing": self.timing,
                "alarm_outcomes": self.alarm_outcomes, "alarm_chosen": self.alarm_chosen,
                "alarm_previous": self.alarm_previous, "alarm_pooled": self.alarm_pooled}

    @classmethod
    def from_dict(cls, d: dict | None) -> ProbabilityCalibration:
        if not d:
            return cls()
        inf = float("inf")
        for_minutes = d.get("for_minutes")
        # by keyword: the field order of the dataclass is not the order of the stored keys
        return cls(knots=tuple(float(k) for k in d["knots"]),
                   values=tuple(float(v) for v in d["values"]), n_fitted=int(d["n_fitted"]),
                   alarm=float(d.get("alarm", DEFAULT_ALARM)),
                   for_minutes=None if for_minutes is None else float(for_minutes),
                   above=tuple(float(x) for x in d.get("above", (-inf, inf))),
                   below=tuple(float(x) for x in d.get("below", (-inf, inf))),
                   timing=float(d.get("timing", 0.5)),
                   alarm_outcomes=float(d.get("alarm_outcomes", 0.0)),
                   alarm_chosen=_float_or_none(d.get("alarm_chosen")),
                   alarm_previous=_float_or_none(d.get("alarm_previous")),
                   alarm_pooled=_float_or_none(d.get("alarm_pooled")))

    def own_choice(self) -> ProbabilityCalibration:
        """This calibration as its replay chose it, before any smoothing (:func:`smoothed_alarm`).

        A smoothing that kept the previous level (no evidence of its own) also took the previous
        ``for``; smoothing the own choice again toward the same previous model takes it again.
        """
        if self.alarm_chosen is None:
            return replace(self, alarm_previous=None, alarm_pooled=None)
        return replace(self, alarm=self.alarm_chosen, alarm_chosen=None, alarm_previous=None,
                       alarm_pooled=None)


def _float_or_none(x) -> float | None:
    return None if x is None else float(x)


#: independent crossings' worth of weight the previous model's alarm level carries against a new
#: replay's choice (the same ten crossings a replay needs before it chooses a level at all)
PRIOR_ALARM_OUTCOMES = 10.0
#: the most independent crossings' worth of weight a metric kind's pooled level carries (a pool
#: of fewer crossings carries what it holds)
PRIOR_POOL_OUTCOMES = 10.0


@dataclass(frozen=True)
class PooledAlarm:
    """A metric kind's alarm level in one training run, at one horizon: the mean of its series'
    own choices weighted by the independent crossings each was chosen on."""

    level: float
    outcomes: float  # the crossings behind it, summed over its series
    n_series: int  # the series whose replay chose a level of its own

    @property
    def weight(self) -> float:
        """The crossings' worth of weight it carries as a prior (:data:`PRIOR_POOL_OUTCOMES` at most)."""
        return min(self.outcomes, PRIOR_POOL_OUTCOMES)

    def to_dict(self) -> dict:
        return {"level": self.level, "outcomes": self.outcomes, "n_series": self.n_series}

    @classmethod
    def from_dict(cls, d: dict) -> PooledAlarm:
        return cls(float(d["level"]), float(d["outcomes"]), int(d["n_series"]))


def metric_kind(series_id: str) -> str:
    """The kind of metric whose series share a pooled alarm level: the catalogue metric of an
    ``<entity>/<metric>`` id (``jvm_heap_pct``, ``disk_pct``, ``apdex``), else the id itself
    (a series of its own kind)."""
    entity, sep, metric = series_id.rpartition("/")
    return metric if sep and entity and metric else series_id


def pooled_alarm_levels(choices) -> dict[tuple[str, float], PooledAlarm]:
    """Each ``(kind, horizon)``'s :class:`PooledAlarm` over ``choices``, an iterable of
    ``(kind, horizon, calibration)`` with each calibration's own choice (:meth:`own_choice`).

    Only levels a replay chose on crossings of its own (``alarm_outcomes > 0``) count: a series
    that kept the default for want of crossings says nothing about its kind.
    """
    sums: dict[tuple[str, float], list[float]] = {}
    for kind, horizon, c in choices:
        n = float(c.alarm_outcomes)
        if n > 0:
            acc = sums.setdefault((kind, float(horizon)), [0.0, 0.0, 0])
            acc[0] += n * c.alarm
            acc[1] += n
            acc[2] += 1
    return {key: PooledAlarm(round(level / n, 4), round(n, 2), int(k))
            for key, (level, n, k) in sorted(sums.items())}


def smoothed_alarm(new: ProbabilityCalibration, previous: ProbabilityCalibration | None,
                   prior_outcomes: float = PRIOR_ALARM_OUTCOMES,
                   pooled: PooledAlarm | None = None) -> ProbabilityCalibration:
    """``new`` with its alarm level shrunk toward a prior made of the metric kind's ``pooled``
    level in the same training run and the ``previous`` model's level, each by its evidence.

    A daily retrain chooses the level on one day's replay: a handful of crossings can move it
    by 0.3. Two steps, as a hierarchical estimate: the replay's choice, worth ``n`` independent
    crossings (:attr:`alarm_outcomes`), is first pooled with its kind's level, ``(n * new + k *
    pooled) / (n + k)`` (``k``: :attr:`PooledAlarm.weight`, 0 without a pool); that estimate,
    still worth ``n`` crossings, is then smoothed toward the previous level, ``(n * estimate + m
    * previous) / (n + m)`` (``m``: ``prior_outcomes``, 0 without a previous model or with one
    that chose nothing of its own). A replay with too few crossings to choose a level (``n =
    0``) keeps the previous level and its ``for`` (that level carries the earlier pools already:
    pulling it toward each new pool would drift it a fixed share every retrain), and takes the
    kind's level when there is no previous model. No prior at all: ``new`` unchanged.
    """
    chose = previous is not None and (previous.alarm_outcomes > 0 or previous.for_minutes is not None
                                      or previous.alarm_chosen is not None)
    k = pooled.weight if pooled is not None else 0.0
    if not chose and k <= 0:
        return new
    n = max(new.alarm_outcomes, 0.0)
    used_pool = k > 0 and (n > 0 or not chose)
    level = (n * new.alarm + k * pooled.level) / (n + k) if used_pool else new.alarm
    if chose:
        level = (n * level + prior_outcomes * previous.alarm) / (n + prior_outcomes)
    for_minutes = previous.for_minutes if chose and n <= 0 else new.for_minutes
    return replace(new, alarm=round(float(level), 4), for_minutes=for_minutes,
                   alarm_chosen=new.alarm, alarm_previous=previous.alarm if chose else None,
                   alarm_pooled=pooled.level if used_pool else None)


#: the crossing-time quantiles a replay chooses the answer's crossing time from
TIMING_LEVELS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: the lowest alarm level a replay chooses (and so any level smoothed from such choices): a
#: replay's timing evidence keeps the checks at or above it
TIMING_FLOOR = 0.1
#: the fewest warned crossings a replay chooses a crossing-time quantile on (else the median)
MIN_TIMED_CROSSINGS = 10


@dataclass(frozen=True, eq=False)
class TimingEvidence:
    """A replay's crossing-time errors, kept so the quantile can be chosen under any alarm level.

    Over the checks whose crossing came within H and whose calibrated probability reached
    :data:`TIMING_FLOOR`, per distinct probability (descending): how many checks reached it and
    the running sums of the absolute errors of the :data:`TIMING_LEVELS` quantiles (minutes)
    over them. A probability is a share of the paths, so there are at most as many rows as paths
    plus one, however long the replay. The alarm level is settled only after a training run
    pools its series' choices; the quantile is then chosen under the level served
    (:meth:`best`), as the backtest chooses it.
    """

    probability: np.ndarray  # (m,) distinct calibrated probabilities, descending
    counts: np.ndarray  # (m,) the checks at or above each
    errors: np.ndarray  # (m, len(TIMING_LEVELS)) their summed absolute errors per quantile

    @classmethod
    def of(cls, probability: np.ndarray, when: np.ndarray, truth: np.ndarray,
           floor: float = TIMING_FLOOR) -> TimingEvidence:
        """From the calibrated ``probability`` (n,), the quantiles ``when`` (n, levels) and the
        true minutes ``truth`` (n,; NaN: no crossing within H) at the replay's checks."""
        probability = np.asarray(probability, dtype=np.float64)
        keep = (probability >= floor) & np.isfinite(truth) & np.isfinite(when).all(axis=1)
        order = np.argsort(-probability[keep], kind="stable")
        p = probability[keep][order]
        summed = np.cumsum(np.abs(when[keep] - truth[keep, None])[order], axis=0)
        last = np.flatnonzero(np.append(p[1:] != p[:-1], p.size > 0))  # each probability's last
        return cls(p[last], last + 1, summed[last])

    def best(self, alarm: float, default: float = 0.5) -> float:
        """The quantile of least absolute error over the checks warned at ``alarm`` (the
        ``default`` with fewer than :data:`MIN_TIMED_CROSSINGS` of them)."""
        at = int(np.count_nonzero(self.probability >= alarm))
        if at == 0 or self.counts[at - 1] < MIN_TIMED_CROSSINGS:
            return default
        return float(TIMING_LEVELS[int(np.argmin(self.errors[at - 1]))])


def shrunk_toward_pools(calibrations, previous=None, timing=None
                        ) -> tuple[dict, dict[tuple[str, float], PooledAlarm]]:
    """Every series' alarm levels shrunk toward its previous model's and its kind's pooled level.

    ``calibrations``: per series id, its calibrations by horizon (as a training run fitted
    them, smoothed or not); ``previous``: the served model's, likewise (missing series: none).
    The pools are taken over the run's own choices (:meth:`ProbabilityCalibration.own_choice`)
    per :func:`metric_kind` and horizon; returns the smoothed calibrations and the pools.
    ``timing``: per series id, its replay's :class:`TimingEvidence` by horizon; each smoothed
    calibration's crossing-time quantile is then chosen under the level it serves (without
    evidence the quantile stands as fitted).
    """
    previous, timing = previous or {}, timing or {}
    own = {sid: {float(h): c.own_choice() for h, c in cs.items()} for sid, cs in calibrations.items()}
    pools = pooled_alarm_levels((metric_kind(sid), h, c) for sid, cs in own.items()
                                for h, c in cs.items())
    out = {}
    for sid, cs in own.items():
        before, evidence = previous.get(sid) or {}, timing.get(sid) or {}
        out[sid] = {}
        for h, c in cs.items():
            served = smoothed_alarm(c, before.get(h), pooled=pools.get((metric_kind(sid), h)))
            if h in evidence:  # the crossing time as it is answered under the served level
                served = replace(served, timing=evidence[h].best(served.alarm))
            out[sid][h] = served
    return out, pools


@dataclass(frozen=True)
class AlertRule:
    """When the probability becomes an alert, in the terms of a Prometheus alerting rule.

    Checks run every ``every_minutes``. The alert fires once ``P >= alarm`` has held at every
    check for ``for_minutes`` (Prometheus ``for``) and keeps firing ``keep_firing_minutes``
    after the last check where that was still true (``keep_firing_for``): a single blip of
    probability is not a page, and a warning that flickers on the way to a crossing stays on.
    Times already beyond the threshold count as ``P >= alarm``.
    """

    for_minutes: float = 10.0
    keep_firing_minutes: float = 15.0
    every_minutes: float = 5.0
    #: the ``for`` durations a replay may choose from, per series and horizon, with the alarm
    for_choices: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0)

    def __post_init__(self):
        if self.every_minutes <= 0 or self.for_minutes < 0 or self.keep_firing_minutes < 0:
            raise ValueError(f"alert rule needs every > 0 and for, keep_firing >= 0: {self}")

    @property
    def pending_checks(self) -> int:
        """Consecutive checks that must all hold: ``for: 10m`` at 5 min is t-10, t-5 and t."""
        return int(round(self.for_minutes / self.every_minutes)) + 1

    @property
    def keep_checks(self) -> int:
        return int(round(self.keep_firing_minutes / self.every_minutes))

    @property
    def lookback_checks(self) -> int:
        """How many checks before now the rule looks at."""
        return self.pending_checks - 1 + self.keep_checks

    def choices(self) -> list[AlertRule]:
        """The rules a replay chooses from: this one with each of ``for_choices``."""
        fors = sorted(set(self.for_choices) | {self.for_minutes})
        return [replace(self, for_minutes=float(f)) for f in fors]

    def with_for(self, for_minutes: float | None) -> AlertRule:
        return self if for_minutes is None else replace(self, for_minutes=float(for_minutes))

    @property
    def max_lookback_checks(self) -> int:
        """The look-back of the longest rule among the choices."""
        return max(r.lookback_checks for r in self.choices())

    def firing(self, on: np.ndarray) -> np.ndarray:
        """The alert at each check of a regular, time-ordered sequence of ``P >= alarm`` flags.

        Checks before the sequence starts count as not holding. Along the last axis: rows of a
        2-D ``on`` (e.g. one per alarm level) are sequences of their own.
        """
        held = self.pending_met(on)
        out = held.copy()
        for j in range(1, self.keep_checks + 1):
            out[..., j:] |= held[..., :-j]
        return out

    def pending_met(self, on: np.ndarray) -> np.ndarray:
        """At each check, whether ``P >= alarm`` has held for ``for`` (the rule fires on its own)."""
        on = np.asarray(on, dtype=bool)
        held = on.copy()
        for j in range(1, self.pending_checks):
            held[..., j:] &= on[..., :-j]
            held[..., :j] = False
        return held

    def keep_firing_left(self, on: np.ndarray) -> float | None:
        """Minutes the alert at the last check is still held by ``keep_firing_for`` alone.

        None when the ``for`` condition itself holds now, or when the alert is not firing.
        """
        held = self.pending_met(on)
        if held.size == 0 or held[-1] or not held.any():
            return None
        since = held.size - 1 - int(np.flatnonzero(held)[-1])  # checks since it last held
        if since > self.keep_checks:
            return None
        return float((self.keep_checks - since) * self.every_minutes)

    def describe(self, alarm: float) -> str:
        return (f"P >= {alarm:g} for {self.for_minutes:g}m (checked every {self.every_minutes:g}m), "
                f"keep_firing_for {self.keep_firing_minutes:g}m")

    def to_dict(self) -> dict:
        return {"for_minutes": self.for_minutes, "keep_firing_minutes": self.keep_firing_minutes,
                "every_minutes": self.every_minutes, "for_choices": list(self.for_choices)}

    @classmethod
    def from_dict(cls, d: dict | None) -> AlertRule:
        if not d:
            return cls()
        d = dict(d)
        if "for_choices" in d:
            d["for_choices"] = tuple(d["for_choices"])
        return cls(**d)
