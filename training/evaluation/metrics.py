"""Alert-quality metrics from the replay's long result frame: episodes, F1, coverage, reliability."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl


def false_alarm_runs(warn: np.ndarray, crossed: np.ndarray) -> int:
    """Runs of consecutive warnings none of whose checks saw a crossing within H."""
    return int(false_alarm_runs_per_row(warn[None, :], crossed)[0])


def false_alarm_runs_per_row(warn: np.ndarray, crossed: np.ndarray) -> np.ndarray:
    """:func:`false_alarm_runs` of each row of ``warn`` (rows, checks) against one ``crossed``."""
    rows, n = warn.shape
    padded = np.zeros((rows, n + 2), dtype=np.int8)  # a quiet check either side (np.pad is slow)
    padded[:, 1:-1] = warn
    edges = np.diff(padded, axis=1)
    start_row, start = np.nonzero(edges == 1)
    _, end = np.nonzero(edges == -1)  # row-major: the i-th end closes the i-th start
    hits = np.zeros((rows, n + 1), dtype=np.intp)
    np.cumsum(warn & crossed[None, :], axis=1, out=hits[:, 1:])
    quiet = hits[start_row, end] - hits[start_row, start] == 0
    return np.bincount(start_row, weights=quiet, minlength=warn.shape[0]).astype(np.int64)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs of consecutive True runs, end inclusive."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def episode_metrics(g: pl.DataFrame, horizon: float, every: float) -> dict:
    """Sustained recall, lead and false alarms per day for one series x predictor x horizon.

    An episode is a crossing: the evaluation times with the crossing within H that end where
    the series crosses. A warning counts as sustained if it is on at the last evaluation time
    before the crossing; its lead is how long that unbroken warning had been on. A run of
    warnings none of whose times saw a crossing within H is one false alarm.
    """
    g = g.sort("ts")
    return _episodes(g["ts"].to_numpy(), g["warn"].to_numpy(), g["true_minutes"].to_numpy(), every)


def _episodes(ts: np.ndarray, warn: np.ndarray, truth: np.ndarray, every: float) -> dict:
    """:func:`episode_metrics` of checks in time order."""
    crossing_at = ts + (np.nan_to_num(truth) * 60e6).astype("timedelta64[us]")
    gap = np.diff(ts, prepend=ts[:1]) > np.timedelta64(int(every * 60e6 * 1.5), "us")
    episodes, sustained, leads = 0, 0, []
    for a, b in _runs(np.isfinite(truth)):
        # split a run where consecutive times point at different crossings (more than a step apart)
        cut = [a] + [i for i in range(a + 1, b + 1)
                     if gap[i] or crossing_at[i] - crossing_at[i - 1] > np.timedelta64(
                         int(every * 60e6 * 1.5), "us")] + [b + 1]
        for _lo, hi in zip(cut[:-1], cut[1:], strict=True):
            episodes += 1
            last = hi - 1
            if warn[last]:
                sustained += 1
                start = last
                while start > 0 and warn[start - 1] and not gap[start]:
                    start -= 1
                leads.append((crossing_at[last] - ts[start]).astype("timedelta64[s]").astype(float) / 60)
    false_alarms = false_alarm_runs(warn, np.isfinite(truth))
    days = max(len(ts) * every / 1440, 1e-9)
    return {"episodes": episodes, "sustained": sustained,
            "lead_median": float(np.median(leads)) if leads else float("nan"),
            "false_alarms": false_alarms, "days": days}


def onset_metrics(g: pl.DataFrame, horizon: float, every: float) -> dict:
    """Warnings ahead of onsets for one series x predictor x horizon.

    ``onset_minutes`` marks the checks whose crossing within H is an onset (a crossing after
    more than H without any sample at or beyond the threshold). An onset at ``c`` counts only
    if its whole warning window ``[c - H, c)`` was evaluated: all ``H / every`` checks are
    there. It is *warned* if any of them warns (lead: from the first warning to ``c``) and
    *sustained* if the warning is on at the last check before ``c``; the length of that
    unbroken warning is counted back from ``c`` (at most H, the window).
    """
    ts = g["ts"].sort().to_numpy()
    if ts.size > 1:  # a series sampled more coarsely than ``every`` is checked at its own step
        every = max(every, float(np.median(np.diff(ts)).astype("timedelta64[s]").astype(float) / 60))
    per_window = int(round(horizon / every))
    g = g.filter(pl.col("onset_minutes").is_not_nan() & pl.col("onset_minutes").is_not_null())
    out = {"onsets": 0, "warned": 0, "sustained": 0, "leads": [], "warning_lengths": []}
    if g.is_empty():
        return out
    g = g.with_columns((pl.col("ts") + pl.duration(seconds=(pl.col("onset_minutes") * 60)
                                                   .round(0).cast(pl.Int64))).alias("onset_at"))
    for _, w in g.sort("ts").group_by(["onset_at"], maintain_order=True):
        if w.height != per_window:  # part of the window was not evaluated (a gap, or the edge)
            continue
        out["onsets"] += 1
        warn = w["warn"].to_numpy()
        minutes = w["onset_minutes"].to_numpy()
        if warn.any():
            out["warned"] += 1
            out["leads"].append(float(minutes[np.argmax(warn)]))
        if warn[-1]:
            out["sustained"] += 1
            off = np.flatnonzero(~warn)
            start = off[-1] + 1 if off.size else 0
            out["warning_lengths"].append(min(float(minutes[start]), horizon))
    return out


@dataclass(slots=True)
class Tally:
    """What :func:`summarize` reads of one series' checks for one predictor and horizon.

    Counts and sums add across series; only the onsets' leads and warning lengths (for their
    medians) stay as values. A replay scored case by case keeps these instead of its rows.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    error_sum: float = 0.0  # |minutes - true minutes| on the warned crossings
    errors: int = 0
    episodes: int = 0
    sustained: int = 0
    false_alarms: int = 0
    days: float = 0.0
    onsets: int = 0
    onsets_warned: int = 0
    onsets_sustained: int = 0
    leads: np.ndarray = field(default_factory=lambda: _NONE)
    warning_lengths: np.ndarray = field(default_factory=lambda: _NONE)
    intervals: bool = False  # the predictor answers a P10-P90 interval
    crossing_checks: int = 0
    covered: int = 0  # of those, the true time within [P10, P90]
    #: per probability decile: checks, summed probability, checks with a crossing within H
    bin_checks: np.ndarray = field(default_factory=lambda: np.zeros(RELIABILITY_BINS, np.int64))
    bin_probability: np.ndarray = field(default_factory=lambda: np.zeros(RELIABILITY_BINS))
    bin_crossed: np.ndarray = field(default_factory=lambda: np.zeros(RELIABILITY_BINS, np.int64))


_NONE = np.zeros(0)
#: the reliability table's probability bins
RELIABILITY_BINS = 10
_ADDED = ("tp", "fp", "fn", "error_sum", "errors", "episodes", "sustained", "false_alarms", "days",
          "onsets", "onsets_warned", "onsets_sustained", "crossing_checks", "covered")


def tally(g: pl.DataFrame, every: float) -> Tally:
    """One series' checks for one predictor and horizon (``g``), as :func:`summarize` counts them."""
    columns = {c: g[c].fill_null(np.nan).to_numpy() if g[c].dtype.is_float() else g[c].to_numpy()
               for c in ("ts", "warn", "true_minutes", "minutes", "earliest", "latest", "probability")
               if c in g.columns}
    onsets = g if "onset_minutes" in g.columns else None
    return tally_columns(columns, float(g["horizon"][0]), every,
                         "earliest" in g.columns and g["earliest"].is_not_null().any(), onsets)


def tally_columns(columns: dict[str, np.ndarray], horizon: float, every: float,
                  intervals: bool = False, onsets: pl.DataFrame | None = None) -> Tally:
    """:func:`tally` of one series' checks given as arrays (no frame is built: the gate's replay).

    ``columns``: ``ts``, ``warn``, ``true_minutes`` (NaN: no crossing within H), and if the
    predictor answers them ``minutes``, and with ``intervals`` ``earliest``, ``latest`` and
    ``probability``; ``onsets``: the rows with ``onset_minutes``, if any.
    """
    order = np.argsort(columns["ts"], kind="stable")
    truth = columns["true_minutes"][order]
    crosses = ~np.isnan(truth)
    warn = columns["warn"][order]
    hits = warn & crosses
    t = Tally(tp=int(hits.sum()), fp=int((warn & ~crosses).sum()), fn=int((~warn & crosses).sum()))
    if "minutes" in columns and t.tp:
        err = np.abs(columns["minutes"][order][hits] - truth[hits])
        err = err[~np.isnan(err)]
        t.error_sum, t.errors = float(err.sum()), int(err.size)
    e = _episodes(columns["ts"][order], warn, truth, every)
    t.episodes, t.sustained, t.false_alarms, t.days = (e["episodes"], e["sustained"],
                                                       e["false_alarms"], e["days"])
    if onsets is not None:
        o = onset_metrics(onsets, horizon, every)
        t.onsets, t.onsets_warned, t.onsets_sustained = o["onsets"], o["warned"], o["sustained"]
        t.leads, t.warning_lengths = np.array(o["leads"]), np.array(o["warning_lengths"])
    if intervals:
        t.intervals = True
        inf = lambda c: np.where(np.isnan(v := columns[c][order][crosses]), np.inf, v)  # noqa: E731
        lo, hi, when = inf("earliest"), inf("latest"), truth[crosses]
        t.crossing_checks = int(crosses.sum())
        t.covered = int(((lo <= when) & (when <= hi)).sum())
        p = columns["probability"][order]
        which = np.clip(np.digitize(p, np.linspace(0, 1, RELIABILITY_BINS + 1)[1:-1]), 0,
                        RELIABILITY_BINS - 1)
        t.bin_checks = np.bincount(which, minlength=RELIABILITY_BINS)
        t.bin_probability = np.bincount(which, weights=p, minlength=RELIABILITY_BINS)
        t.bin_crossed = np.bincount(which, weights=crosses, minlength=RELIABILITY_BINS).astype(np.int64)
    return t


def score(tallies: list[Tally], min_count: int = 30) -> dict:
    """:func:`summarize`'s figures over ``tallies`` (series of one predictor and horizon).

    The coverage and the calibration gap are :func:`interval_coverage` and the largest
    :func:`reliability` gap over the same checks (up to the order of float sums).
    """
    n = {k: sum(getattr(t, k) for t in tallies) for k in _ADDED}
    tp, fp, fn = n["tp"], n["fp"], n["fn"]
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    onsets, episodes = n["onsets"], n["episodes"]
    row = dict(tp=tp, fp=fp, fn=fn, precision=precision, recall=recall,
               f1=2 * precision * recall / (precision + recall) if tp else 0.0,
               mae_minutes=n["error_sum"] / n["errors"] if n["errors"] else float("nan"),
               onsets=onsets,
               onset_recall=n["onsets_warned"] / onsets if onsets else float("nan"),
               onset_lead_median=_median(np.concatenate([_NONE, *(t.leads for t in tallies)])),
               onset_sustained_recall=n["onsets_sustained"] / onsets if onsets else float("nan"),
               onset_warning_median=_median(np.concatenate(
                   [_NONE, *(t.warning_lengths for t in tallies)])),
               false_alarms_per_day=n["false_alarms"] / n["days"] if n["days"] else float("nan"),
               crossings=episodes,
               sustained_recall_per_crossing=n["sustained"] / episodes if episodes else float("nan"))
    if any(t.intervals for t in tallies):
        checks = sum(t.bin_checks for t in tallies)
        probability = sum(t.bin_probability for t in tallies)
        crossed = sum(t.bin_crossed for t in tallies)
        full = checks >= min_count
        gaps = probability[full] / checks[full] - crossed[full] / checks[full]
        row.update(coverage_p10_p90=n["covered"] / n["crossing_checks"] if n["crossing_checks"]
                   else float("nan"),
                   calibration_max_gap=float(pl.Series(gaps, dtype=pl.Float64).abs().max()
                                             or float("nan")))
    return row


def merged(a: Tally | None, b: Tally) -> Tally:
    """``a`` and ``b`` as one tally (``b`` alone if ``a`` is None): what :func:`score` reads of both."""
    if a is None:
        return b
    out = Tally(**{k: getattr(a, k) + getattr(b, k) for k in _ADDED},
                intervals=a.intervals or b.intervals)
    for k in ("leads", "warning_lengths"):
        setattr(out, k, np.concatenate([getattr(a, k), getattr(b, k)]))
    for k in ("bin_checks", "bin_probability", "bin_crossed"):
        setattr(out, k, getattr(a, k) + getattr(b, k))
    return out


def summarize(results: pl.DataFrame, every: float, group: tuple[str, ...] = ("predictor", "horizon")
              ) -> pl.DataFrame:
    """Precision/recall/F1, MAE on hits, sustained recall, lead, false alarms/day, coverage."""
    rows = []
    for key, g in results.group_by(list(group), maintain_order=True):
        rows.append({**dict(zip(group, key, strict=True)),
                     **score([tally(sg, every) for _, sg in g.group_by(["series"])])})
    return pl.DataFrame(rows).sort(list(group))


def _median(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def interval_coverage(g: pl.DataFrame) -> float:
    """Share of times with a crossing within H whose true time lies in [P10, P90].

    P10/P90 beyond the horizon count as +infinity (the paths that never cross).
    """
    c = g.filter(g["true_minutes"].is_not_nan() & g["true_minutes"].is_not_null())
    if c.is_empty():
        return float("nan")
    lo = c["earliest"].fill_nan(np.inf).fill_null(np.inf).to_numpy()
    hi = c["latest"].fill_nan(np.inf).fill_null(np.inf).to_numpy()
    t = c["true_minutes"].to_numpy()
    return float(np.mean((lo <= t) & (t <= hi)))


def reliability(g: pl.DataFrame, bins: int = 10, min_count: int = 30,
                every: float | None = None) -> pl.DataFrame:
    """Decile table: mean predicted probability vs observed frequency of a crossing within H.

    With ``every`` (minutes between checks) it also says how many independent outcomes a
    bin holds (checks one horizon apart share nothing; closer ones share most of their
    future) and the observed frequency's standard error over those.
    """
    p = g["probability"].to_numpy()
    obs = np.isfinite(g["true_minutes"].fill_null(np.nan).to_numpy())
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    per_outcome = float(g["horizon"][0]) / every if every and g.height else 1.0
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.sum() >= min_count:
            rate = float(obs[sel].mean())
            row = {"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "n": int(sel.sum()),
                   "predicted": float(p[sel].mean()), "observed": rate,
                   "gap": float(p[sel].mean() - rate)}
            if every:
                outcomes = max(sel.sum() / per_outcome, 1.0)
                smoothed = (rate * outcomes + 1) / (outcomes + 2)  # never a zero error at 0 or 1
                row.update(outcomes=round(outcomes, 1),
                           se=float(np.sqrt(smoothed * (1 - smoothed) / outcomes)))
            rows.append(row)
    schema = {"bin": pl.String, "n": pl.Int64, "predicted": pl.Float64, "observed": pl.Float64,
              "gap": pl.Float64}
    if every:
        schema.update(outcomes=pl.Float64, se=pl.Float64)
    return pl.DataFrame(rows, schema=schema)
