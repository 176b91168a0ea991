"""The replay's scores tallied series by series equal the figures of its rows pooled."""

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from training.evaluation.metrics import (
    interval_coverage,
    merged,
    reliability,
    score,
    summarize,
    tally,
)


def replay_rows(seed: int = 3, n_series: int = 6, checks: int = 400) -> pl.DataFrame:
    """A replay's long frame: prealert (with interval and probability) and a baseline, 2 horizons."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_series):
        for predictor in ("prealert", "predict_linear_60m"):
            for h in (60, 120):
                truth = np.where(rng.random(checks) < 0.3, rng.uniform(5, h, checks), np.nan)
                rows = {"series": f"s{i}", "horizon": h, "predictor": predictor,
                        "ts": [datetime(2026, 1, 1) + timedelta(minutes=5 * k) for k in range(checks)],
                        "warn": rng.random(checks) < 0.35, "true_minutes": truth,
                        "onset_minutes": np.where(rng.random(checks) < 0.5, truth, np.nan),
                        "minutes": np.where(rng.random(checks) < 0.9, rng.uniform(5, h, checks), np.nan)}
                if predictor == "prealert":
                    rows.update(earliest=rows["minutes"] - 10, latest=rows["minutes"] + 10,
                                probability=rng.random(checks))
                frames.append(pl.DataFrame(rows).filter(pl.Series(rng.random(checks) > 0.05)))
    return pl.concat(frames, how="diagonal_relaxed").with_columns(pl.col("ts").dt.cast_time_unit("us"))


def test_tallies_pooled_give_the_pooled_rows_figures():
    rows = replay_rows()
    summ = summarize(rows, 5)
    for (predictor, h), g in rows.group_by(["predictor", "horizon"]):
        got = summ.filter((pl.col("predictor") == predictor) & (pl.col("horizon") == h)).row(0, named=True)
        crosses = g["true_minutes"].is_not_nan()
        assert got["tp"] == int((g["warn"] & crosses).sum())
        assert got["fp"] == int((g["warn"] & ~crosses).sum())
        hits = g.filter(g["warn"] & crosses)
        assert got["mae_minutes"] == pytest.approx(
            float((hits["minutes"] - hits["true_minutes"]).abs().drop_nans().mean()), rel=1e-12)
        if predictor == "prealert":
            assert got["coverage_p10_p90"] == interval_coverage(g)
            assert got["calibration_max_gap"] == pytest.approx(
                float(reliability(g)["gap"].abs().max()), rel=1e-12)
        else:
            assert got.get("coverage_p10_p90") is None
    assert summ["calibration_max_gap"].drop_nulls().len() == 2


def test_tallies_merged_score_as_the_list_of_them():
    rows = replay_rows(seed=5).filter(pl.col("predictor") == "prealert", pl.col("horizon") == 60)
    tallies = [tally(g, 5) for _, g in rows.group_by(["series"], maintain_order=True)]
    one = None
    for t in tallies:
        one = merged(one, t)
    a, b = score([one]), score(tallies)
    assert a == pytest.approx(b, rel=1e-12, nan_ok=True)
    assert a == pytest.approx(summarize(rows, 5).drop("predictor", "horizon").row(0, named=True),
                              rel=1e-12, nan_ok=True)
