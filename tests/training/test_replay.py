"""The walk-forward backtest against hand-computed truth, and its no-look-ahead promise."""

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from training.evaluation.baselines import predict_linear_lines
from training.evaluation.metrics import (
    episode_metrics,
    false_alarm_runs,
    false_alarm_runs_per_row,
    interval_coverage,
    onset_metrics,
    reliability,
    summarize,
)
from training.evaluation.replay import (
    LINEAR_60_RULE,
    PREALERT,
    STATIC,
    ReplayConfig,
    ReplayOutcome,
    SeriesCase,
    best_alert,
    onset_samples,
    replay_series,
    rolling_origin_errors,
    run_evaluation,
    true_minutes,
)
from training.evaluation.sources import threshold_from_rule
from training.forecast.correction import error_paths_with_origins, realtime_correction, rolling_corrections
from training.threshold import AlertRule, crossing_distribution

T0 = np.datetime64("2026-09-01T00:00", "us")


def grid(n, step_min=1):
    return T0 + np.arange(n) * np.timedelta64(step_min, "m")


def test_true_minutes_by_hand():
    y = np.array([0, 1, 2, 5, 1, 0, 0, 6, 0, 0], dtype=float)
    got = true_minutes(y, np.array([0, 1, 2, 4, 7]), n_h=3, step=1.0, threshold=5, above=True)
    # from 0: index 3 is 3 steps ahead; from 1: 2; from 2: 1; from 4: index 7 is 3 ahead; from 7: none
    np.testing.assert_array_equal(got, [3, 2, 1, 3, np.nan])
    below = true_minutes(-y, np.array([0]), n_h=3, step=5.0, threshold=-5, above=False)
    np.testing.assert_array_equal(below, [15.0])


def test_threshold_rules():
    assert threshold_from_rule("0.9", np.array([1.0])) == 0.9
    assert threshold_from_rule("quantile:0.5", np.array([1.0, 2.0, 3.0, np.nan])) == 2.0


def test_episode_metrics_by_hand():
    # eval every 5 min; a crossing 15 min after t=0 (truth 15, 10, 5), then quiet, then a false run
    ts = grid(10, 5)
    truth = [15.0, 10.0, 5.0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]
    warn = [False, True, True, False, False, True, True, False, True, False]
    g = pl.DataFrame({"ts": ts, "true_minutes": truth, "warn": warn, "horizon": 60})
    m = episode_metrics(g, 60, 5)
    assert m["episodes"] == 1 and m["sustained"] == 1
    assert m["lead_median"] == 10.0  # warning began at t=5, crossing at t=15
    assert m["false_alarms"] == 2  # the runs at 25-30 and at 40
    assert m["days"] == pytest.approx(50 / 1440)
    g2 = g.with_columns(pl.Series("warn", [True, True, False] + [False] * 7))
    assert episode_metrics(g2, 60, 5)["sustained"] == 0  # off at the last time before crossing


def test_onset_samples_by_hand():
    # beyond 5 at indices 3, 5 (2 after 3: same episode at a gap of 3), 10 (5 after 5: new)
    y = np.array([0, 1, 2, 5, 1, 6, 0, 0, 0, 0, 7, np.nan], dtype=float)
    np.testing.assert_array_equal(np.flatnonzero(onset_samples(y, 5, True, 3)), [3, 10])
    np.testing.assert_array_equal(np.flatnonzero(onset_samples(y, 5, True, 1)), [3, 5, 10])
    np.testing.assert_array_equal(np.flatnonzero(onset_samples(-y, -5, False, 5)), [3])


def test_onset_metrics_by_hand():
    # H = 30 at 5-min checks: a window is 6 checks. Onset A at t=30 (checks 0..25, all there),
    # onset B at t=100 whose window lost a check (70..95 minus 80): not counted
    ts = np.concatenate([grid(6, 5), T0 + np.array([70, 75, 85, 90, 95]) * np.timedelta64(1, "m")])
    onset = [30.0, 25, 20, 15, 10, 5, 30, 25, 15, 10, 5]
    warn = [False, True, False, True, True, True, True, True, True, True, True]
    g = pl.DataFrame({"ts": ts, "onset_minutes": onset, "warn": warn, "horizon": 30})
    m = onset_metrics(g, 30, 5)
    assert m["onsets"] == 1 and m["warned"] == 1 and m["sustained"] == 1
    assert m["leads"] == [25.0]  # first warning at t=5, 25 min before the onset
    assert m["warning_lengths"] == [15.0]  # unbroken from t=15 to the onset at t=30
    off = g.with_columns(pl.Series("warn", [True] * 5 + [False] + [True] * 5))
    assert onset_metrics(off, 30, 5)["sustained"] == 0  # off at the last check before the onset
    none = g.with_columns(pl.lit(False).alias("warn"))
    assert onset_metrics(none, 30, 5)["warned"] == 0


def test_alert_rule_for_and_keep_firing_by_hand():
    rule = AlertRule(for_minutes=10, keep_firing_minutes=5, every_minutes=5)
    assert (rule.pending_checks, rule.keep_checks, rule.lookback_checks) == (3, 1, 3)
    on = np.array([1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    # fires at the third check in a row, keeps firing one check after the condition last held
    expect = [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]
    np.testing.assert_array_equal(rule.firing(on), np.array(expect, dtype=bool))
    plain = AlertRule(for_minutes=0, keep_firing_minutes=0)
    np.testing.assert_array_equal(plain.firing(on), on)
    assert AlertRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError):
        AlertRule(every_minutes=0)


def test_best_alert_is_the_quietest_setting_with_the_best_f1():
    # crossings follow probabilities >= 0.6 exactly; 0.3-0.5 are false alarms
    p = np.tile([0.05, 0.35, 0.65, 0.95, 0.05, 0.45], 10)
    crossed = p >= 0.6
    out = [ReplayOutcome(p, crossed, np.zeros(p.size, dtype=bool))]
    assert best_alert(out, 0.5) == (0.65, None)  # 0.5..0.65 all give F1 = 1: the highest
    # too few crossings to choose: the default
    few = [ReplayOutcome(p[:6], crossed[:6], np.zeros(6, dtype=bool))]
    assert best_alert(few, 0.42) == (0.42, None)
    # a rule that needs two checks in a row only fires at the crossings if the 0.35 check
    # before them counts: the level drops to 0.35
    two = AlertRule(for_minutes=5, keep_firing_minutes=0, every_minutes=5, for_choices=())
    assert best_alert(out, 0.42, two) == (0.35, 5.0)
    # given the choice, no `for` at 0.65 is as good and needs no earlier check
    free = AlertRule(for_minutes=5, keep_firing_minutes=0, every_minutes=5, for_choices=(0.0,))
    assert best_alert(out, 0.42, free) == (0.65, 0.0)


def _quiet_runs_by_hand(warn, crossed) -> int:
    runs, inside, hit = 0, False, False
    for w, c in zip(warn.tolist(), crossed.tolist(), strict=True):
        if w and not inside:
            inside, hit = True, False
        if w:
            hit |= c
        if inside and not w:
            runs += not hit
            inside = False
    return runs + (inside and not hit)


def test_best_alert_counts_every_level_as_the_one_level_rule_does():
    """All alarm levels at once (2-D flags) give the counts of firing each level alone."""
    rng = np.random.default_rng(5)
    for trial in range(20):
        outcomes = []
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(5, 200))
            p = np.round(rng.random(n) ** rng.choice([0.5, 1, 3]), 4)
            p[rng.random(n) < 0.1] = np.nan
            beyond = np.isnan(p) & (rng.random(n) < 0.5)
            crossed = (rng.random(n) < p * 0.8) | (rng.random(n) < 0.05)
            outcomes.append(ReplayOutcome(p, crossed & np.isfinite(p), beyond))
        rule = AlertRule(for_minutes=float(rng.choice([0, 5, 10])), every_minutes=5,
                         keep_firing_minutes=float(rng.choice([0, 5, 15])))
        for r in [*rule.choices(), None]:
            on_levels = np.round(np.arange(0.1, 0.95, 0.05), 2)
            for o in outcomes:
                c = o.crossed[o.live]
                on = (np.nan_to_num(o.probability, nan=-1.0)[None, :] >= on_levels[:, None]) | o.beyond
                many = (r.firing(on) if r is not None else on)[:, o.live]
                runs = false_alarm_runs_per_row(many, c)
                for j, level in enumerate(on_levels):
                    one = (np.nan_to_num(o.probability, nan=-1.0) >= level) | o.beyond
                    warn = (r.firing(one) if r is not None else one)[o.live]
                    assert np.array_equal(many[j], warn), (trial, level)
                    assert runs[j] == _quiet_runs_by_hand(warn, c), (trial, level)


def test_best_alert_prefers_fewer_false_alarms_at_near_equal_f1():
    # ten 8-check crossing episodes, each followed by a one-check blip that crosses nothing
    block = np.r_[np.full(8, 0.92), 0.05, 0.05, 0.92, 0.05, 0.05]
    p = np.tile(block, 10)
    crossed = np.tile(np.r_[np.ones(8, bool), np.zeros(5, bool)], 10)
    out = [ReplayOutcome(p, crossed, np.zeros(p.size, dtype=bool))]
    rule = AlertRule(for_minutes=0, keep_firing_minutes=0, every_minutes=5, for_choices=(5.0,))
    # without `for`: F1 = 160/170 and 10 false alarms; `for: 5m` misses one check per
    # episode (F1 = 140/150, within 3%) but never fires on a blip
    assert best_alert(out, 0.5, rule) == (0.9, 5.0)
    assert best_alert(out, 0.5, dataclasses.replace(rule, for_choices=())) == (0.9, 0.0)


def test_false_alarm_runs_by_hand():
    warn = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1], dtype=bool)
    crossed = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert false_alarm_runs(warn, crossed) == 3  # the runs at 3, at 6-8 and at 10


def test_rolling_corrections_equal_the_serving_correction():
    rng = np.random.default_rng(3)
    r = np.cumsum(rng.normal(0, 0.3, 400)) + rng.normal(0, 1, 400)
    ts = grid(400, 5)
    level, slope = rolling_corrections(r, 5.0)
    for i in (0, 2, 3, 11, 12, 13, 200, 399):
        c = realtime_correction(ts[: i + 1], r[: i + 1])
        assert c.level == pytest.approx(level[i], abs=1e-9)
        assert c.slope_per_min == pytest.approx(slope[i], abs=1e-9)


def _predict_linear_oracle(ts, values, now, window_minutes, at):
    """Prometheus' predict_linear fitted per evaluation time: OLS over (now - window, now]."""
    from training.forecast.forecaster import ols_line

    inside = (ts > now - np.timedelta64(int(window_minutes * 60e6), "us")) & (ts <= now)
    slope, level = ols_line(ts[inside], values[inside])
    return level + slope * (at - ts[inside][-1]).astype(np.float64) / 60e6


def test_predict_linear_lines_equal_prometheus_per_origin_fit():
    rng = np.random.default_rng(4)
    y = 50 + np.cumsum(rng.normal(0, 0.5, 300))
    y[[40, 41, 150]] = np.nan  # gaps
    ts = grid(300, 5)
    level, slope = predict_linear_lines(y, 5.0, 60)
    for i in (5, 12, 42, 100, 151, 299):
        at = ts[i] + np.array([10, 60], dtype="timedelta64[m]")
        want = _predict_linear_oracle(ts[: i + 1], y[: i + 1], ts[i], 60, at)
        got = level[i] + slope[i] * np.array([10.0, 60.0])
        if np.isfinite(y[i]):  # Prometheus extrapolates from the last sample, here the origin
            np.testing.assert_allclose(got, want, atol=1e-9)


def test_rolling_origin_errors_score_the_model_and_predict_linear():
    """A seasonal series the model knows: its errors beat predict_linear's, by hand-checkable setup."""
    from datetime import UTC, datetime

    from training.forecast.forecaster import SeriesForecaster

    n = 6 * 288
    ts = grid(n, 5)
    y = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 288) + np.random.default_rng(1).normal(0, 0.3, n)
    frame = pl.DataFrame({"ts": ts, "value": y}).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    start = datetime(2026, 9, 6, tzinfo=UTC)
    model = SeriesForecaster(min_history_hours=24).fit(frame.filter(pl.col("ts") < start))
    out = rolling_origin_errors(model, frame, start)
    assert out["n_origins"] == 23  # hourly origins over the last day, each with a full hour ahead
    assert out["mae_model"] < 0.85 * out["mae_predict_linear"]
    assert out["mae_model"] < out["mae_last_value"]


def test_error_paths_shape_and_gaps():
    r = np.random.default_rng(0).normal(0, 1, 1000)
    r[500] = np.nan
    e = error_paths_with_origins(r, 1.0, 60, n_paths=100)[0]
    assert e.shape == (100, 60) and np.isfinite(e).all()
    assert error_paths_with_origins(r[:100], 1.0, 60)[0].shape == (0, 60)


def test_crossing_distribution_certain_and_impossible():
    minutes = np.arange(1, 61, dtype=float)
    sure = crossing_distribution(minutes, 80 + minutes[None, :] * 0.5, np.zeros((5, 60)), 90, "above")
    assert sure.probability[0] == 1.0 and sure.minutes[0] == 20.0
    assert sure.earliest_minutes[0] == sure.latest_minutes[0] == 20.0
    never = crossing_distribution(minutes, np.full((1, 60), 50.0), np.ones((5, 60)), 90, "above")
    assert never.probability[0] == 0.0 and np.isnan(never.minutes[0])


def ramp_case(n_days=12, leak_from_day=10, step=5):
    """A daily cycle with noise; from ``leak_from_day`` a leak that crosses 90 on the last day."""
    n = n_days * 1440 // step
    ts = grid(n, step)
    rng = np.random.default_rng(11)
    t_days = np.arange(n) * step / 1440
    y = 50 + 8 * np.sin(2 * np.pi * t_days) + rng.normal(0, 0.5, n)
    y += np.clip(t_days - leak_from_day, 0, None) * 30
    return SeriesCase("ramp", ts, y, 90.0, "above", ts[0] + np.timedelta64(9 * 1440, "m"))


@pytest.fixture(scope="module")
def ramp_served():
    config = ReplayConfig(horizons=(60,), retrain_every_hours=24, every_minutes=5)
    served = {}
    return ramp_case(), config, replay_series(ramp_case(), config, served), served


@pytest.fixture(scope="module")
def ramp_results(ramp_served):
    return ramp_served[:3]


def test_replay_scores_what_the_saved_and_loaded_bundle_answers(ramp_served):
    """At sampled checks the replay's row equals predict_series on the bundle it saved and loaded."""
    from datetime import UTC, datetime

    from training.predict import predict_series

    case, config, res, served = ramp_served
    rows = res.filter(pl.col("predictor") == PREALERT).sort("ts")
    starts = sorted({t0 for t0, _ in served})
    compared = 0
    for row in rows[:: max(1, rows.height // 40)].iter_rows(named=True):
        now = np.datetime64(row["ts"].replace(tzinfo=None), "us")
        t0 = max(t for t in starts if t <= now)
        upto = (case.ts <= now) & (case.ts > now - np.timedelta64(180, "m"))
        recent = [(datetime.fromtimestamp(t.astype("int64") / 1e6, UTC), float(v))
                  for t, v in zip(case.ts[upto], case.values[upto], strict=True)]
        p = predict_series(served[(t0, 60)], case.name, case.threshold, case.direction, 60,
                           recent=recent)
        assert p.probability == pytest.approx(row["probability"], abs=2e-3)
        for mine, theirs in ((p.minutes_to_threshold, row["minutes"]),
                             (p.earliest_minutes, row["earliest"]), (p.latest_minutes, row["latest"])):
            assert (mine is None and np.isnan(theirs)) or mine == pytest.approx(theirs, abs=0.01)
        assert p.alarm_probability == row["alarm_probability"]
        if abs(p.probability - p.alarm_probability) > 2e-3:
            assert p.alert == row["warn"], row
        compared += 1
    assert compared >= 30 and rows["warn"].any()


def test_replay_warns_before_a_leak_crosses(ramp_results):
    case, config, res = ramp_results
    assert set(res["predictor"].unique()) == {PREALERT, STATIC, "predict_linear_30m",
                                              "predict_linear_60m", LINEAR_60_RULE}
    crossing = case.ts[np.argmax(case.values >= 90)]
    p = res.filter(pl.col("predictor") == PREALERT).sort("ts")
    assert p["ts"].max() < crossing  # nothing is evaluated once the series is beyond
    last = p.row(-1, named=True)
    # the calibration saw few confident outcomes before (shrunk toward the replay's base rate)
    assert last["warn"] and last["probability"] > 0.8
    assert abs(last["minutes"] - last["true_minutes"]) <= 15
    summ = summarize(res, config.every_minutes).filter(pl.col("predictor") == PREALERT)
    assert summ["onsets"][0] == 1 and summ["onset_sustained_recall"][0] == 1.0
    assert summ["sustained_recall_per_crossing"][0] == 1.0
    assert summ["false_alarms_per_day"][0] < 1.0
    assert 0 <= interval_coverage(p) <= 1


def test_replay_has_no_look_ahead(ramp_results):
    case, config, res = ramp_results
    cut = case.eval_start + np.timedelta64(36 * 60, "m")
    changed = case.values.copy()
    changed[case.ts > cut] += 25.0  # rewrite the future after the cut
    other = replay_series(SeriesCase(case.name, case.ts, changed, case.threshold, case.direction,
                                     case.eval_start), config)

    def before(frame):  # rows whose horizon ends before the cut
        limit = cut - np.timedelta64(60, "m")
        return (frame.filter((pl.col("ts") <= limit) & (pl.col("predictor") != STATIC))
                .drop("true_minutes", "onset_minutes").sort("predictor", "ts"))

    a, b = before(res), before(other)
    assert a.height > 100
    assert a.equals(b)


def test_evaluate_any_timestamp_value_file(tmp_path):
    from typer.testing import CliRunner

    from serving.cli import app

    case = ramp_case()
    csv = tmp_path / "heap.csv"
    pl.DataFrame({"timestamp": case.ts.astype("datetime64[s]").astype(str),
                  "value": case.values}).write_csv(csv)
    report = tmp_path / "out" / "evaluate.md"
    result = CliRunner().invoke(app, [
        "evaluate", "--input", str(csv), "--threshold", "90", "--eval-fraction", "0.75",
        "--horizons", "60", "--report", str(report), "--no-log-mlflow"])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert "| prealert | 60 |" in text and "predict_linear_60m" in text
    assert (tmp_path / "out" / "reliability.png").exists()
    bad = CliRunner().invoke(app, ["evaluate", "--input", str(tmp_path / "none.csv"),
                                   "--no-log-mlflow", "--report", str(report)])
    assert bad.exit_code != 0


def test_reliability_counts_independent_outcomes():
    # 120 checks 5 minutes apart at a 60-minute horizon: about 10 independent outcomes
    g = pl.DataFrame({"probability": np.full(120, 0.75), "horizon": 60,
                      "true_minutes": np.where(np.arange(120) % 2 == 0, 10.0, np.nan)})
    plain = reliability(g)
    assert plain.columns == ["bin", "n", "predicted", "observed", "gap"]
    r = reliability(g, every=5).row(0, named=True)
    assert r["n"] == 120 and r["outcomes"] == 10.0
    assert r["observed"] == 0.5 and r["gap"] == pytest.approx(0.25)
    assert r["se"] == pytest.approx(np.sqrt(0.5 * 0.5 / 10))


def _evaluate_ramp_args(tmp_path) -> tuple[list[str], Path]:
    """`prealert evaluate` on the ramp case written as a timestamp,value CSV; its report."""
    case = ramp_case()
    csv = tmp_path / "heap.csv"
    pl.DataFrame({"timestamp": case.ts.astype("datetime64[s]").astype(str),
                  "value": case.values}).write_csv(csv)
    report = tmp_path / "evaluate.md"
    return ["evaluate", "--input", str(csv), "--threshold", "90", "--eval-fraction", "0.75",
            "--horizons", "60", "--report", str(report), "--no-log-mlflow"], report


def test_evaluate_without_the_alert_rule_and_a_bad_rule_option(tmp_path):
    from typer.testing import CliRunner

    from serving.cli import app

    args, report = _evaluate_ramp_args(tmp_path)
    plain = CliRunner().invoke(app, [*args, "--no-alert-rule"])
    assert plain.exit_code == 0, plain.output
    text = report.read_text()
    assert f"| {LINEAR_60_RULE} |" not in text and "alert_rule=None" in text
    bad = CliRunner().invoke(app, [*args, "--for-choices", "5,ten"])
    assert bad.exit_code == 2 and "--for-choices takes minutes" in bad.output


def test_evaluate_takes_the_calendar_as_a_setting_and_reports_it(tmp_path):
    from typer.testing import CliRunner

    from serving.cli import app

    args, report = _evaluate_ramp_args(tmp_path)
    args.append("--no-alert-rule")
    done = CliRunner().invoke(app, [*args, "--timezone", "Europe/Berlin", "--holidays", "none"])
    assert done.exit_code == 0, done.output
    assert "'timezone': 'Europe/Berlin', 'holidays_country': None" in report.read_text()
    zone = CliRunner().invoke(app, [*args, "--timezone", "Mars/Olympus"])
    assert zone.exit_code == 2 and "--timezone 'Mars/Olympus' is not a time zone" in zone.output
    country = CliRunner().invoke(app, [*args, "--holidays", "XX"])
    assert country.exit_code == 2 and "--holidays 'XX' is not a country code" in country.output


def test_run_evaluation_says_why_a_series_was_not_scored():
    good = ramp_case()
    flat = SeriesCase("flat", good.ts, np.full(good.ts.size, 5.0), 90.0, "above", good.eval_start)
    beyond = SeriesCase("beyond", good.ts, good.values, 10.0, "above", good.eval_start)
    config = ReplayConfig(horizons=(60,), retrain_every_hours=24 * 3)
    skipped, lines = {}, []
    res = run_evaluation([flat, beyond, good], config, echo=lines.append, skipped=skipped)
    assert set(res["series"].unique()) == {"ramp"}
    assert skipped["flat"].startswith("constant before evaluation")
    assert skipped["beyond"].startswith("at or beyond the threshold 10")
    assert any("beyond: not scored" in line for line in lines)
    with pytest.raises(RuntimeError, match="no series could be scored: flat: constant"):
        run_evaluation([flat], config, echo=lines.append)


def test_replay_given_answers_as_the_walk_forward_replay_of_the_same_bundle(ramp_served):
    """The gate's replay of a given bundle equals the walk-forward replay's rows it was served for."""
    from training.evaluation.replay import replay_given

    case, config, res, served = ramp_served
    t0 = max(t for t, _ in served)
    bundle = served[(t0, 60)]
    window = dataclasses.replace(case, eval_start=t0)
    given = replay_given(window, bundle.forecasters[case.name], bundle.alert_rule, config)
    assert set(given["predictor"].unique()) == set(res["predictor"].unique())
    cols = ["warn", "minutes", "earliest", "latest", "probability", "true_minutes"]
    walk = res.filter(pl.col("ts") >= pl.lit(t0).dt.replace_time_zone(None).cast(pl.Datetime("us")))
    joined = given.join(walk, on=["predictor", "horizon", "ts"], suffix="_walk")
    assert joined.height == given.height > 100  # every check the gate scored, the walk scored too
    for col in cols:
        mine, theirs = joined[col].to_numpy(), joined[f"{col}_walk"].to_numpy()
        if mine.dtype == bool:
            assert (mine == theirs).all(), col
        else:
            assert np.allclose(mine.astype(float), theirs.astype(float), equal_nan=True), col
    prealert = joined.filter(pl.col("predictor") == PREALERT)
    assert prealert["warn"].any() and prealert["model_kind"][0] == "prophet"


def test_the_crossing_time_quantile_is_the_one_closest_to_the_warned_crossings():
    from training.evaluation.replay import TIMING_LEVELS, ReplayOutcome, best_timing
    from training.threshold import ProbabilityCalibration

    n = 40
    when = np.tile(np.array(TIMING_LEVELS) * 100, (n, 1))
    truth = np.full(n, 70.0)  # the truth comes late: 0.7 of the crossing times is right
    p = np.where(np.arange(n) < 30, 0.9, 0.1)
    truth[30:] = 20.0  # unwarned (p below the alarm): ignored
    o = ReplayOutcome(p, np.ones(n, bool), np.zeros(n, bool), when, truth)
    cal = ProbabilityCalibration(alarm=0.5)
    assert best_timing([o], cal) == 0.7
    few = ReplayOutcome(p[:5], np.ones(5, bool), np.zeros(5, bool), when[:5], truth[:5])
    assert best_timing([few], cal) == 0.5  # too few warned crossings: the median


def test_the_first_retrain_replays_a_trial_model_out_of_sample_as_training_does():
    from training.evaluation.replay import _trial_replay

    case = ramp_case()
    config = ReplayConfig(horizons=(60,), retrain_every_hours=24, every_minutes=5)
    t0 = case.eval_start
    hold = t0 - np.timedelta64(3 * 1440, "m")
    lead_in = np.timedelta64(60, "m")
    trial = _trial_replay(case, config, t0, hold, 1, lead_in)
    # the trial model knows nothing after the holdout starts: rewriting it changes nothing
    changed = dataclasses.replace(case, values=np.where(case.ts >= hold, case.values + 40.0,
                                                        case.values))
    again = _trial_replay(changed, config, t0, hold, 1, lead_in)
    np.testing.assert_array_equal(trial["expected"], again["expected"])
    # it answers over the holdout (and the correction's warm-up hour) only
    finite = np.isfinite(trial["expected"])
    assert finite[trial["span"]].all() and not finite[~trial["span"]].any()
    assert case.ts[trial["idx"]].min() >= hold and case.ts[trial["idx"]].max() < t0 - lead_in
    # too short a history before the holdout: no trial (the replay falls back to in sample)
    assert _trial_replay(case, config, t0, case.ts[0] + np.timedelta64(1440, "m"), 1,
                         lead_in) is None


@pytest.mark.slow
def test_run_evaluation_pools_a_kinds_levels_over_the_series_retrained_in_the_same_round():
    """Two series of one metric kind replayed side by side: each retrain round's levels shrink
    toward the kind's pool of that round's own choices; a series of another kind is left alone."""
    base = ramp_case(n_days=12, leak_from_day=10)
    other = ramp_case(n_days=12, leak_from_day=11)
    cases = [SeriesCase("a/heap", base.ts, base.values, 90.0, "above", base.eval_start),
             SeriesCase("b/heap", other.ts, other.values + 2.0, 90.0, "above", other.eval_start),
             SeriesCase("c/cpu", base.ts, base.values, 90.0, "above", base.eval_start)]
    config = ReplayConfig(horizons=(60,), retrain_every_hours=24, every_minutes=5)
    cols = ["series", "retrained_at", "alarm_probability", "alarm_chosen", "alarm_outcomes",
            "alarm_pooled"]
    pooled, alone = (
        run_evaluation(cases, dataclasses.replace(config, pool_alarm=pool), echo=lambda _: None)
        .filter(pl.col("predictor") == PREALERT).select(cols).unique().sort("series", "retrained_at")
        for pool in (True, False))
    # the replay's own choices do not depend on the pooling: only the served level does
    assert pooled.select(cols[:2] + cols[3:5]).equals(alone.select(cols[:2] + cols[3:5]))
    assert alone["alarm_pooled"].is_nan().all()
    heap = pooled.filter(pl.col("series") != "c/cpu")
    rounds = 0
    for (_,), g in heap.group_by("retrained_at"):
        chose = g.filter(pl.col("alarm_outcomes") > 0)
        if chose.is_empty():
            assert g["alarm_pooled"].is_nan().all()
            continue
        n = chose["alarm_outcomes"].to_numpy()
        want = float(np.round((n * chose["alarm_chosen"].to_numpy()).sum() / n.sum(), 4))
        assert chose["alarm_pooled"].to_list() == pytest.approx([want] * chose.height)
        # a series with no crossings of its own keeps its previous level (no pool), or takes
        # the pool on its first retrain
        quiet = g.filter(pl.col("alarm_outcomes") <= 0)
        assert all(np.isnan(p) or p == pytest.approx(want) for p in quiet["alarm_pooled"])
        rounds += chose.height == 2
    assert rounds > 0  # some round pooled both series
    assert not pooled["alarm_probability"].equals(alone["alarm_probability"])
    # the cpu series pools with itself alone: its own choice, where it made one
    cpu = pooled.filter((pl.col("series") == "c/cpu") & (pl.col("alarm_outcomes") > 0))
    assert cpu["alarm_pooled"].to_list() == cpu["alarm_chosen"].to_list()
