"""The backtest's report: markdown tables, plots, target checks, and the MLflow run that keeps them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from training.evaluation.metrics import reliability, summarize
from training.evaluation.replay import (
    LINEAR_60_RULE,
    PREALERT,
    STATIC,
    ReplayConfig,
)
from training.forecast.forecaster import calendar_setting

#: the issue's baselines: the better of these sets the F1 and sustained-recall bars
BASELINES = ("predict_linear_30m", "predict_linear_60m", STATIC)
#: the columns of the report's tables: onsets first, the per-crossing figures last (secondary)
COLUMNS = ("predictor", "horizon", "onsets", "onset_recall", "onset_lead_median",
           "onset_sustained_recall", "onset_warning_median", "false_alarms_per_day", "precision",
           "recall", "f1", "mae_minutes", "coverage_p10_p90", "calibration_max_gap", "crossings",
           "sustained_recall_per_crossing")


def to_markdown(df: pl.DataFrame, digits: int = 3) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
        return "–" if v is None else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join([head, rule, *body])


def target_checks(summary: pl.DataFrame) -> list[dict]:
    """The issue's targets per horizon, measured on onsets: prealert against the better baseline."""
    nan = float("nan")
    out = []
    for h in sorted(summary["horizon"].unique()):
        g = {r["predictor"]: r for r in summary.filter(pl.col("horizon") == h).iter_rows(named=True)}
        if PREALERT not in g:
            continue
        p = g[PREALERT]
        base = [g[b] for b in BASELINES if b in g]
        best_f1 = max((b["f1"] for b in base), default=nan)
        best_sus = max((b["onset_sustained_recall"] for b in base
                        if not math.isnan(b["onset_sustained_recall"])), default=nan)
        pl60 = g.get("predict_linear_60m", {})
        fa_pl60, mae_pl60 = pl60.get("false_alarms_per_day", nan), pl60.get("mae_minutes", nan)
        fa_rule = g.get(LINEAR_60_RULE, {}).get("false_alarms_per_day", nan)
        sus_need = max(1.3 * best_sus, 0.5)
        coverage = p.get("coverage_p10_p90", nan)
        gap = p.get("calibration_max_gap", nan)
        checks = [
            ("sustained recall on onsets >= 1.3x better baseline and >= 0.5",
             p["onset_sustained_recall"], sus_need, p["onset_sustained_recall"] >= sus_need),
            ("false alarms/day <= predict_linear 60m", p["false_alarms_per_day"], fa_pl60,
             p["false_alarms_per_day"] <= fa_pl60),
            ("(also) false alarms/day <= predict_linear 60m behind the same alert rule",
             p["false_alarms_per_day"], fa_rule, p["false_alarms_per_day"] <= fa_rule),
            ("F1 >= 1.5x better baseline", p["f1"], 1.5 * best_f1, p["f1"] >= 1.5 * best_f1),
            ("MAE on true positives <= 0.75x predict_linear 60m", p["mae_minutes"],
             0.75 * mae_pl60, p["mae_minutes"] <= 0.75 * mae_pl60),
            ("P10-P90 coverage in [0.7, 0.9]", coverage, "0.7-0.9", 0.7 <= coverage <= 0.9),
            ("calibration gap <= 0.1 per decile", gap, 0.1, abs(gap) <= 0.1),
        ]
        for name, got, need, ok in checks:
            out.append({"horizon": h, "target": name, "prealert": got, "needed": str(need) if
                        isinstance(need, str) else f"{need:.3g}", "met": "yes" if ok else "no"})
    return out


def by_source(sources: dict[str, pl.DataFrame], split: tuple[str, ...] = ("smd",)
              ) -> dict[str, pl.DataFrame]:
    """Each source's results, with the sources in ``split`` also one per entity (SMD machine)."""
    out = {}
    for name, res in sources.items():
        out[name] = res
        if name in split:
            entity = pl.col("series").str.split("/").list.first()
            for (ent,), part in res.with_columns(entity.alias("_entity")).group_by(
                    "_entity", maintain_order=True):
                out[f"{name}/{ent}"] = part.drop("_entity")
    return dict(sorted(out.items()))


def alert_settings(results: pl.DataFrame) -> pl.DataFrame:
    """How often each (horizon, ``for``) was in force, and the alarm levels chosen with it."""
    p = results.filter(pl.col("predictor") == PREALERT)
    if "alert_for_minutes" not in p.columns:
        return pl.DataFrame()
    return (p.group_by("horizon", "alert_for_minutes")
            .agg(pl.len().alias("checks"), pl.col("alarm_probability").median().alias("alarm_median"))
            .with_columns((pl.col("checks") / pl.col("checks").sum().over("horizon")).alias("share"))
            .sort("horizon", "alert_for_minutes"))


def alarm_level_changes(sources: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """How far each retrain moved a series' alarm level from the retrain before, per source and
    horizon: the level served (smoothed across retrains) and the one the replay alone chose."""
    rows = []
    for name, res in sources.items():
        p = res.filter(pl.col("predictor") == PREALERT)
        if "retrained_at" not in p.columns or "alarm_chosen" not in p.columns:
            continue
        levels = (p.group_by("series", "horizon", "retrained_at")
                  .agg(pl.col("alarm_probability").first(), pl.col("alarm_chosen").first())
                  .sort("series", "horizon", "retrained_at"))
        moves = levels.with_columns(
            *(pl.col(c).diff().abs().over("series", "horizon").alias(f"d_{c}")
              for c in ("alarm_probability", "alarm_chosen"))).drop_nulls("d_alarm_probability")
        for (h,), g in moves.group_by("horizon", maintain_order=True):
            rows.append({"source": name, "horizon": h, "retrain_pairs": g.height,
                         "served_change_median": g["d_alarm_probability"].median(),
                         "served_changes_ge_0.3": int((g["d_alarm_probability"] >= 0.3 - 1e-9).sum()),
                         "chosen_change_median": g["d_alarm_chosen"].median(),
                         "chosen_changes_ge_0.3": int((g["d_alarm_chosen"] >= 0.3 - 1e-9).sum())})
    return pl.DataFrame(rows).sort("source", "horizon") if rows else pl.DataFrame()


def plot_reliability(results: pl.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for h in sorted(results["horizon"].unique()):
        r = reliability(results.filter((pl.col("predictor") == PREALERT) & (pl.col("horizon") == h)))
        ax.plot(r["predicted"], r["observed"], marker="o", label=f"H = {h} min")
    ax.set(xlabel="predicted probability of crossing within H", ylabel="observed frequency",
           title="prealert probability calibration", xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_timeline(results: pl.DataFrame, values: tuple[np.ndarray, np.ndarray], series: str,
                  threshold: float, horizon: int, path: Path) -> Path:
    """The series, its threshold, prealert's probability and each predictor's warnings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = results.filter((pl.col("series") == series) & (pl.col("horizon") == horizon)).sort("ts")
    ts, y = values
    lo, hi = g["ts"].min(), g["ts"].max()
    sel = (ts >= np.datetime64(lo)) & (ts <= np.datetime64(hi))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(ts[sel], y[sel], lw=0.8, label=series)
    ax.axhline(threshold, color="red", lw=1, ls="--", label=f"threshold {threshold:.3g}")
    ax.set_title(f"{series}: warnings for a crossing within {horizon} min")
    ax.legend(loc="upper left")
    p = g.filter(pl.col("predictor") == PREALERT)
    ax2.plot(p["ts"], p["probability"], color="C2", lw=1, label="prealert P(cross within H)")
    for i, name in enumerate([PREALERT, "predict_linear_60m", STATIC]):
        w = g.filter((pl.col("predictor") == name) & pl.col("warn"))
        ax2.scatter(w["ts"], np.full(w.height, 1.08 + 0.08 * i), s=4, label=f"{name} warns")
    truth = g.filter((pl.col("predictor") == PREALERT) & pl.col("true_minutes").is_not_nan())
    ax2.scatter(truth["ts"], np.full(truth.height, -0.08), s=4, color="black",
                label="truth: crosses within H")
    ax2.set_ylim(-0.15, 1.35)
    ax2.legend(loc="upper left", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(sources: dict[str, pl.DataFrame], configs: dict[str, ReplayConfig], out: Path,
                 runtime_s: float, plots: list[Path],
                 skipped: dict[str, dict[str, str]] | None = None
                 ) -> tuple[Path, dict[str, pl.DataFrame]]:
    """Markdown report with pooled and per-source tables; returns it and the summaries.

    ``skipped`` lists, per source, the series that got no scored check and why.
    """
    config = next(iter(configs.values()))
    pooled = pl.concat(list(sources.values()), how="diagonal_relaxed")
    summaries = {"pooled": summarize(pooled, config.every_minutes)}
    for name, res in by_source(sources).items():
        summaries[name] = summarize(res, config.every_minutes)
    cols = list(COLUMNS)
    lines = ["# prealert backtest: minutes-to-threshold against predict_linear and a static warning",
             "", f"Walk-forward replay, {runtime_s / 60:.1f} min on this machine.", ""]
    for name, cfg in configs.items():
        lines += [f"- `{name}`: " + ", ".join(f"`{k}={v}`" for k, v in cfg.as_params().items())
                  + f", calendar `{calendar_setting(cfg.forecaster)}`"]
    how = ("prealert warns by its alert rule (`alert_rule`): P(cross within H) >= "
           "alarm_probability at every check for `for_minutes`, kept firing for "
           "`keep_firing_minutes`, as a Prometheus rule with `for` and `keep_firing_for`; the "
           "alarm level and the `for` are chosen on the previous week's replay. "
           if config.alert_rule is not None else
           "prealert warns at every check where P(cross within H) >= alarm_probability (no "
           "alert rule); the alarm level is chosen on the previous week's replay. ")
    lines += ["", how +
             "predict_linear warns when its OLS line reaches the threshold within H (as the "
             "issue defines the baseline); `predict_linear_60m_rule` is the same line behind "
             "prealert's alert rule, for a like-for-like look. The static warning fires at 90% "
             "of the threshold. Times already beyond the threshold are not evaluated. "
             + ("prealert's crossing time (and its P10-P90) is taken over the error paths begun "
                f"within {config.phase_window_minutes:g} min of the check's minute of the hour "
                "for a series whose residual history differs by minute of the hour (F-test, "
                "p < 0.001), else over every path; its probability is over every path."
                if config.phase_window_minutes is not None else ""), "",
             "An episode is an **onset**: a crossing whose previous sample at or beyond the "
             "threshold is more than H earlier (flapping inside that gap belongs to the episode), "
             "counted only when every check of its warning window [c - H, c) was evaluated "
             "(`onsets`). `onset_recall`: onsets warned at all in the window, "
             "`onset_lead_median` minutes before c from the first warning; "
             "`onset_sustained_recall`: the warning still on at the last check before c, "
             "`onset_warning_median` the length of that unbroken warning (at most H). "
             "`false_alarms_per_day`: runs of warnings none of whose checks saw a crossing "
             "within H. Precision, recall, F1 and MAE (minutes, on true positives) are per "
             "check of \"crosses within H\". Secondary, the old per-crossing figure: "
             "`crossings` counts every crossing (each re-crossing of a flapping series too) and "
             "`sustained_recall_per_crossing` the share warned at the last check before it.", ""]
    lines += ["## Targets (pooled)", "", to_markdown(pl.DataFrame(target_checks(summaries["pooled"]))),
              ""]
    for name, summ in summaries.items():
        lines += [f"## {name}", "", to_markdown(summ.select([c for c in cols if c in summ.columns])),
                  ""]
    unscored = [{"source": src_name, "series": name, "reason": why}
                for src_name, by_series in (skipped or {}).items()
                for name, why in sorted(by_series.items())]
    if unscored:
        lines += ["## Series not scored", "", to_markdown(pl.DataFrame(unscored)), ""]
    lines += ["## The alert settings the replays chose (share of prealert's checks)", "",
              to_markdown(alert_settings(pooled)), ""]
    changes = alarm_level_changes(sources)
    if changes.height:
        lines += ["## Alarm levels across retrains", "",
                  "Per pair of consecutive retrains of a series (daily on the sample, weekly on "
                  "SMD), how far the alarm level moved: `served` is the level the model served, "
                  "the replay's choice pooled with its metric kind's level over the series "
                  "retrained in the same round, then shrunk toward the previous model's level, "
                  "each by the crossings it rests on (`smoothed_alarm`); `chosen` is the "
                  "replay's choice alone (what was served before any smoothing).", "",
                  to_markdown(changes), ""]
    per_series = summarize(pooled, config.every_minutes, group=("series", "predictor", "horizon"))
    lines += ["## Per series (onsets, F1, sustained recall on onsets, false alarms/day)", "",
              to_markdown(per_series.select("series", "predictor", "horizon", "onsets", "f1",
                                            "onset_sustained_recall", "false_alarms_per_day")), ""]
    for h in config.horizons:
        rel = reliability(pooled.filter((pl.col("predictor") == PREALERT) & (pl.col("horizon") == h)),
                          every=config.every_minutes)
        lines += [f"## Reliability of prealert's probability, H = {h} min (pooled)", "",
                  "`outcomes`: about how many independent outcomes the bin holds (checks "
                  f"{config.every_minutes} min apart share most of their {h}-minute future); "
                  "`se`: the observed frequency's standard error over them. A gap within two "
                  "`se` is within what chance alone gives.", "",
                  to_markdown(rel), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    summaries["per_series"] = per_series
    return out, summaries


def log_evaluation(summaries: dict[str, pl.DataFrame], config: ReplayConfig, report: Path,
                   artifacts: list[Path]) -> str:
    """Record the backtest in MLflow (experiment ``prealert-evaluate``); returns the run id."""
    import mlflow

    from training.registry import use_experiment

    use_experiment("prealert-evaluate")
    with mlflow.start_run() as run:
        mlflow.log_params(config.as_params())
        for r in summaries["pooled"].iter_rows(named=True):
            for k in ("f1", "precision", "recall", "onset_recall", "onset_sustained_recall",
                      "onset_lead_median", "onset_warning_median", "sustained_recall_per_crossing",
                      "false_alarms_per_day", "mae_minutes", "coverage_p10_p90",
                      "calibration_max_gap"):
                v = r.get(k)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    mlflow.log_metric(f"{r['predictor']}.h{r['horizon']}.{k}", v)
        for name, summ in summaries.items():
            mlflow.log_table(summ.to_pandas(), f"summary_{name.replace('/', '_')}.json")
        mlflow.log_artifact(str(report))
        for a in artifacts:
            mlflow.log_artifact(str(a))
        return run.info.run_id
