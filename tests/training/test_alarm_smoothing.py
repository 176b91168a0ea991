"""Alarm levels smoothed across retrains: the rule, the replay's use of it, and the retrain's."""

import dataclasses

import numpy as np
import polars as pl
import pytest

from training.evaluation.replay import ReplayOutcome, calibrate_on_replay
from training.evaluation.report import alarm_level_changes
from training.threshold import PRIOR_ALARM_OUTCOMES, AlertRule, ProbabilityCalibration, smoothed_alarm


def chosen(alarm: float, outcomes: float, for_minutes: float | None = 10.0) -> ProbabilityCalibration:
    return ProbabilityCalibration(alarm=alarm, alarm_outcomes=outcomes, for_minutes=for_minutes)


def test_the_new_level_weighs_by_its_evidence_against_the_previous_one():
    previous = chosen(0.8, 30.0, 0.0)
    few = smoothed_alarm(chosen(0.2, 2.0), previous)
    many = smoothed_alarm(chosen(0.2, 200.0), previous)
    assert few.alarm == pytest.approx((2 * 0.2 + PRIOR_ALARM_OUTCOMES * 0.8) / 12, abs=1e-4)
    assert many.alarm == pytest.approx((200 * 0.2 + PRIOR_ALARM_OUTCOMES * 0.8) / 210, abs=1e-4)
    assert 0.2 < many.alarm < few.alarm < 0.8
    assert few.alarm_chosen == many.alarm_chosen == 0.2 and few.for_minutes == 10.0
    # a replay that could choose nothing keeps the previous level and its `for`
    none = smoothed_alarm(chosen(0.5, 0.0, None), previous)
    assert (none.alarm, none.for_minutes, none.alarm_chosen) == (0.8, 0.0, 0.5)
    # nothing to shrink toward: no previous model, or one that chose nothing either
    assert smoothed_alarm(chosen(0.2, 2.0), None).alarm == 0.2
    assert smoothed_alarm(chosen(0.2, 2.0), ProbabilityCalibration()).alarm == 0.2
    # the smoothed level carries its history: shrinking toward it again works
    assert smoothed_alarm(chosen(0.5, 0.0, None), none).alarm == 0.8


def test_the_evidence_and_the_choice_survive_a_round_trip():
    c = smoothed_alarm(chosen(0.2, 2.0), chosen(0.8, 30.0, 0.0))
    back = ProbabilityCalibration.from_dict(c.to_dict())
    assert back == c and back.alarm_chosen == 0.2 and back.alarm_outcomes == 2.0
    old = {k: v for k, v in c.to_dict().items() if k not in ("alarm_chosen", "alarm_outcomes")}
    assert ProbabilityCalibration.from_dict(old).alarm_chosen is None  # bundles written before


def replay_with_crossings(n_crossings: int, seed: int = 0) -> ReplayOutcome:
    """Checks every 5 min, H = 60 (12 checks per outcome): a probability rising to each crossing."""
    rng = np.random.default_rng(seed)
    n = 2000
    p = np.clip(rng.normal(0.05, 0.03, n), 0, 1)
    crossed = np.zeros(n, dtype=bool)
    for c in np.linspace(100, n - 20, n_crossings).astype(int):
        crossed[c - 12:c] = True
        p[c - 12:c] = np.linspace(0.3, 0.9, 12)
    return ReplayOutcome(p, crossed, np.zeros(n, dtype=bool))


def test_calibrate_on_replay_shrinks_toward_the_previous_model_by_the_crossings_seen():
    rule = AlertRule()
    previous = chosen(0.9, 40.0, 20.0)
    for n_crossings in (3, 30):
        outcome = replay_with_crossings(n_crossings)
        alone = calibrate_on_replay([outcome], 0.5, rule=rule, checks_per_outcome=12)
        shrunk = calibrate_on_replay([outcome], 0.5, rule=rule, checks_per_outcome=12,
                                     previous=previous)
        assert alone.alarm_outcomes == pytest.approx(n_crossings)
        assert alone.alarm_chosen is None and shrunk.alarm_chosen == alone.alarm
        w = n_crossings / (n_crossings + PRIOR_ALARM_OUTCOMES)
        assert shrunk.alarm == pytest.approx(w * alone.alarm + (1 - w) * 0.9, abs=1e-4)
        assert dataclasses.replace(shrunk, alarm=alone.alarm, alarm_chosen=None) == alone
    # too few crossings to choose a level: the previous one stands
    quiet = calibrate_on_replay([replay_with_crossings(0)], 0.5, rule=rule, checks_per_outcome=12,
                                previous=previous)
    assert (quiet.alarm, quiet.for_minutes) == (0.9, 20.0)


def test_level_changes_are_reported_per_source_and_horizon():
    t = np.datetime64("2026-10-01T00:00", "us")
    day = np.timedelta64(1, "D")
    frame = pl.DataFrame({
        "predictor": "prealert", "series": "a", "horizon": 60,
        "retrained_at": np.array([t, t, t + day, t + 2 * day]),
        "alarm_probability": [0.5, 0.5, 0.6, 0.62], "alarm_chosen": [0.5, 0.5, 0.9, 0.3]})
    out = alarm_level_changes({"sample": frame}).row(0, named=True)
    assert out["retrain_pairs"] == 2
    assert out["served_change_median"] == pytest.approx(0.06)
    assert out["chosen_change_median"] == pytest.approx(0.5)
    assert out["served_changes_ge_0.3"] == 0 and out["chosen_changes_ge_0.3"] == 2
