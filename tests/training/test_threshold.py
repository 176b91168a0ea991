"""Model-behaviour tests of the minutes-to-threshold math."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from training.threshold import Z90, AlertRule, minutes_to_threshold

NOW = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def grid(n=240):
    return np.array([np.datetime64(NOW.replace(tzinfo=None), "us")]) + np.arange(
        1, n + 1
    ) * np.timedelta64(60, "s")


def answer(yhat, spread=1.0, threshold=90.0, direction="above", current=None):
    yhat = np.asarray(yhat, dtype=float)
    return minutes_to_threshold(grid(len(yhat)), yhat, yhat - spread, yhat + spread,
                                threshold, direction, NOW, current)


def test_rising_series_gives_finite_minutes():
    ramp = 80 + 0.1 * np.arange(1, 241)  # reaches 90 after 100 minutes
    a = answer(ramp)
    assert a.minutes == pytest.approx(100, abs=0.01)
    assert a.earliest_minutes == pytest.approx(90, abs=0.01)  # P90 path is 1 higher
    assert a.latest_minutes == pytest.approx(110, abs=0.01)
    assert a.probability > 0.99


def test_flat_series_below_threshold_gives_none():
    a = answer(np.full(240, 50.0))
    assert a.minutes is None and a.earliest_minutes is None and a.latest_minutes is None
    assert a.probability < 1e-6


def test_already_above_gives_zero():
    a = answer(np.full(240, 95.0), current=91.0)
    assert a.minutes == 0 and a.already_crossed and a.probability == 1.0


def test_falling_apdex_with_direction_below():
    apdex = 0.95 - 0.002 * np.arange(1, 241)  # reaches 0.7 after 125 minutes
    a = answer(apdex, spread=0.01, threshold=0.7, direction="below")
    assert a.minutes == pytest.approx(125, abs=0.01)
    assert a.earliest_minutes < a.minutes < a.latest_minutes
    assert answer(apdex, spread=0.01, threshold=0.7, direction="below", current=0.69).already_crossed


def test_offset_shifts_the_answer_predictably():
    ramp = 80 + 0.1 * np.arange(1, 241)
    base = answer(ramp).minutes
    assert answer(ramp + 2.0).minutes == pytest.approx(base - 20, abs=0.01)
    assert answer(ramp - 2.0).minutes == pytest.approx(base + 20, abs=0.01)


def test_crossing_is_interpolated_between_steps():
    ts = grid(3)[::1]
    a = minutes_to_threshold(ts, [88, 89, 91], [88, 89, 91], [88, 89, 91], 90, "above", NOW)
    assert a.minutes == pytest.approx(2.5)


def test_probability_reflects_interval_width_near_threshold():
    # the point forecast stays 1 below the threshold: the chance of reaching it depends on spread
    level = np.full(60, 89.0)
    narrow, wide = answer(level, spread=0.1), answer(level, spread=5.0)
    assert narrow.minutes is None and wide.minutes is None
    assert narrow.probability < 0.01
    # P90 at 94 -> sigma = 5 / Z90; P(y >= 90) = P(z >= 1 / sigma)
    assert wide.probability == pytest.approx(0.5 * __import__("math").erfc(Z90 / 5 / 2**0.5), abs=1e-3)
    assert wide.earliest_minutes == pytest.approx(1.0)


def test_bad_direction_is_rejected():
    with pytest.raises(ValueError, match="direction"):
        answer(np.full(10, 1.0), direction="up")


def test_now_with_other_timezone_is_converted():
    kst = NOW.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Seoul"))
    ramp = 80 + 0.1 * np.arange(1, 241)
    a = minutes_to_threshold(grid(), ramp, ramp - 1, ramp + 1, 90, "above", kst)
    assert a.minutes == pytest.approx(100, abs=0.01)
    assert NOW + timedelta(minutes=a.minutes) == NOW + timedelta(minutes=100)


def test_probability_calibration_is_monotone_and_round_trips():
    from training.threshold import ProbabilityCalibration

    rng = np.random.default_rng(0)
    p = rng.random(2000)
    crossed = rng.random(2000) < p**2  # raw probabilities too high: truth is p squared
    cal = ProbabilityCalibration.fit(p, crossed)
    grid = np.linspace(0, 1, 11)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= 0) and out[0] >= 0 and out[-1] <= 1
    assert cal.apply(0.5) == pytest.approx(0.25, abs=0.08)
    back = ProbabilityCalibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(back.apply(grid), out)
    assert ProbabilityCalibration.fit(p[:50], crossed[:50]).n_fitted == 0  # too few: identity
    assert ProbabilityCalibration().apply(0.3) == pytest.approx(0.3)
    ranged = ProbabilityCalibration(above=(80.0, 95.0), below=(1.0, 5.0))
    assert ranged.covers(90, "above") and not ranged.covers(99, "above")
    assert ranged.covers(2, "below") and not ranged.covers(0.5, "below")


def test_calibration_shrinks_blocks_of_few_independent_outcomes():
    from training.threshold import PRIOR_OUTCOMES, ProbabilityCalibration

    # 1000 quiet checks that never crossed, then 120 confident checks that all did:
    # with a 60-minute horizon checked every 5 minutes, those 120 are only 10 outcomes
    p = np.concatenate([np.full(1000, 0.05), np.full(120, 0.95)])
    crossed = np.concatenate([np.zeros(1000, bool), np.ones(120, bool)])
    independent = ProbabilityCalibration.fit(p, crossed)
    overlapping = ProbabilityCalibration.fit(p, crossed, checks_per_outcome=12)
    # the m-estimate by hand: (n * rate + m * the replay's base rate) / (n + m)
    base = 120 / 1120
    assert overlapping.apply(0.95) == pytest.approx(
        (10 * 1.0 + PRIOR_OUTCOMES * base) / (10 + PRIOR_OUTCOMES), abs=1e-5)
    assert independent.apply(0.95) > overlapping.apply(0.95)
    assert overlapping.apply(0.05) == pytest.approx(
        PRIOR_OUTCOMES * base / (1000 / 12 + PRIOR_OUTCOMES), abs=1e-5)
    assert np.all(np.diff(overlapping.apply(np.linspace(0, 1, 21))) >= 0)


def test_keep_firing_left_says_how_long_the_rule_holds_an_alert_alone():
    rule = AlertRule(for_minutes=10, keep_firing_minutes=15, every_minutes=5)
    on = np.array([True, True, True, False])  # for met at check 2, then P fell below the alarm
    assert rule.firing(on)[-1]
    assert rule.keep_firing_left(on) == 10.0  # kept through check 5: two more checks of 5 min
    assert rule.keep_firing_left(np.array([True, True, True])) is None  # for itself holds
    assert rule.keep_firing_left(np.array([True, True, True, False, False, False, False])) is None
    assert rule.keep_firing_left(np.array([False, True, False])) is None  # never fired


def test_thin_blocks_pool_with_a_neighbour_they_cannot_be_told_apart_from():
    from training.threshold import PRIOR_OUTCOMES, ProbabilityCalibration

    # quiet checks that never crossed, then a few confident checks that all did: 36 checks at a
    # 60-minute horizon every 5 minutes are 3 outcomes, too few to pin the map's top near 1
    p = np.concatenate([np.full(1000, 0.05), np.full(480, 0.6), np.full(36, 0.97)])
    crossed = np.concatenate([np.zeros(1000, bool), np.arange(480) % 2 == 0, np.ones(36, bool)])
    plain = ProbabilityCalibration.fit(p, crossed, checks_per_outcome=12, min_block_outcomes=0)
    pooled = ProbabilityCalibration.fit(p, crossed, checks_per_outcome=12, min_block_outcomes=10)
    base = 276 / 1516  # the replay's crossing rate: the m-estimate's prior
    assert plain.apply(0.97) == pytest.approx((3 + PRIOR_OUTCOMES * base) / (3 + PRIOR_OUTCOMES),
                                              abs=1e-5)
    # the top block (3 outcomes, rate 1) pools with the one below (40, rate 0.5): within two
    # standard errors of each other; the model's own probability keeps its order inside the
    # group and moves by the group's m-estimated error
    mean_p = (480 * 0.6 + 36 * 0.97) / 516
    shift = (43 * 276 / 516 + PRIOR_OUTCOMES * base) / (43 + PRIOR_OUTCOMES) - mean_p
    assert pooled.apply(0.97) == pytest.approx(0.97 + shift, abs=1e-5) and 0.97 + shift < 0.9
    assert pooled.apply(0.6) == pytest.approx(0.6 + shift, abs=1e-5)
    assert np.all(np.diff(pooled.apply(np.linspace(0, 1, 41))) >= 0)
    back = ProbabilityCalibration.from_dict(pooled.to_dict())
    np.testing.assert_allclose(back.apply(np.linspace(0, 1, 11)), pooled.apply(np.linspace(0, 1, 11)))
    # a thin top block that clearly differs from a quiet rest (a first leak) keeps its own rate
    p = np.concatenate([np.full(1000, 0.05), np.full(40, 0.97)])
    crossed = np.concatenate([np.zeros(1000, bool), np.ones(40, bool)])
    leak = ProbabilityCalibration.fit(p, crossed, checks_per_outcome=12, min_block_outcomes=10)
    assert leak.apply(0.97) == pytest.approx((40 / 12 + PRIOR_OUTCOMES * 40 / 1040)
                                             / (40 / 12 + PRIOR_OUTCOMES), abs=1e-5)
    assert leak.apply(0.97) > 0.6 > 10 * leak.apply(0.05)


def test_paths_are_held_in_the_physical_range_and_the_timing_quantile_is_answered():
    from training.threshold import crossing_distribution

    minutes = np.arange(1, 61, dtype=float)
    # a heap at 95 % with errors that would carry it past 100 %: 100 is reached, never 101
    errors = np.stack([np.full(60, e) for e in (-3.0, 2.0, 8.0, 12.0)])
    at_101 = crossing_distribution(minutes, np.full((1, 60), 95.0), errors, 101, "above",
                                   bounds=(0.0, 100.0))
    assert at_101.probability[0] == 0.0
    unbounded = crossing_distribution(minutes, np.full((1, 60), 95.0), errors, 101, "above")
    assert unbounded.probability[0] == 0.5
    # paths crossing at 10, 20, ..., 60: the 0.8 quantile is 50 and the levels are asked for
    steps = np.stack([np.where(minutes >= 10 * k, 20.0, 0.0) for k in range(1, 7)])
    b = crossing_distribution(minutes, np.full((1, 60), 80.0), steps, 90, "above", timing=0.8,
                              levels=(0.2, 0.5))
    assert b.minutes[0] == 50.0 and list(b.at_levels[0]) == [20.0, 30.0]
    assert b.earliest_minutes[0] == 10.0 and b.latest_minutes[0] == 60.0
