"""Evaluate anomaly detectors on labelled server metrics (SMD): per machine, pooled, baselines, plots."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from training.anomaly.features import rolling_zscore_score, scale_floor, windowed_gaussian_score
from training.anomaly.metrics import evaluate, point_adjust, prf, segments
from training.anomaly.stream import EntityModel, StreamConfig

EXPERIMENT = "prealert-anomaly-eval"
OURS = "prealert-iforest"
OURS_Z = "prealert-iforest+z"
ROLLING_Z = "rolling-z"
WINDOWED_GAUSSIAN = "windowed-gaussian"
DETECTORS = (OURS, OURS_Z, ROLLING_Z, WINDOWED_GAUSSIAN)
BASELINES = (ROLLING_Z, WINDOWED_GAUSSIAN)


@dataclass
class AnomalyEvalConfig:
    """Everything an evaluation depends on; logged to MLflow as params."""

    quantile: float = 0.99  # threshold = this quantile of each detector's training-part scores
    rolling_z_window: int = 60
    gaussian_window: int = 6400
    gaussian_step: int = 100
    stream: StreamConfig = field(default_factory=StreamConfig)

    def as_params(self) -> dict[str, str]:
        flat = {k: v for k, v in asdict(self).items() if k != "stream"}
        flat.update({f"stream.{k}": v for k, v in asdict(self.stream).items()})
        return {k: str(v) for k, v in flat.items()}


@dataclass
class Machine:
    """One labelled machine as a wide matrix: the training part first, then the test part."""

    name: str
    ts: np.ndarray
    values: np.ndarray  # (n_minutes, n_metrics)
    metrics: list[str]
    n_train: int
    labels: np.ndarray  # test part only


def machines_in(folder: str | Path) -> list[str]:
    folder = Path(folder)
    names = sorted(p.name.removesuffix(".labels.parquet") for p in folder.glob("*.labels.parquet"))
    if not names:
        raise FileNotFoundError(f"{folder}: no <machine>.labels.parquet files")
    return names


def load_machine(folder: str | Path, name: str) -> Machine:
    """Read ``<name>.parquet`` (long: ts, host, metric, value) and ``<name>.labels.parquet``."""
    folder = Path(folder)
    long = pl.read_parquet(folder / f"{name}.parquet")
    labels = pl.read_parquet(folder / f"{name}.labels.parquet").sort("ts")
    wide = long.pivot(on="metric", index="ts", values="value", aggregate_function="mean")
    frame = labels.join(wide, on="ts", how="left").sort("ts")
    metrics = sorted(c for c in wide.columns if c != "ts")
    train = (frame["split"] == "train").to_numpy()
    n_train = int(train.sum())
    if not train[:n_train].all():
        raise ValueError(f"{name}: the training part must come before the test part")
    return Machine(name, frame["ts"].to_numpy(), frame.select(metrics).to_numpy().astype(np.float64),
                   metrics, n_train, frame["anomaly"].to_numpy()[n_train:])


def detector_scores(m: Machine, config: AnomalyEvalConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(training-part scores, test-part scores) of every detector; each fitted on the training part only.

    Ours is fitted on the training part and scores its own training minutes in-sample (they
    set the threshold) and the test minutes out of sample. The features run across the split
    causally, so the first test minutes see the end of the training part as their past.
    """
    n, out = m.n_train, {}
    model = EntityModel.fit(m.values[:n], m.metrics, config.stream)
    w = model.features.warmup
    feats = model.features.transform(m.values)
    raw = model.detector.raw_score(feats)
    out[OURS] = (raw[w:n], raw[n:])
    # per-series residual z-scores combined with the forest, as `score-anomalies` scores
    # (ties at 1.0, minutes rarer than every training one, are ranked by the forest's raw score)
    comb = model.score(feats) + 1e-6 * raw if model.combine_z else np.full(len(raw), np.nan)
    out[OURS_Z] = (comb[w:n], comb[n:])
    floor = scale_floor(m.values[:n])
    rz = rolling_zscore_score(m.values, config.rolling_z_window, floor)
    out[ROLLING_Z] = (rz[config.rolling_z_window:n], rz[n:])
    wg = windowed_gaussian_score(m.values, config.gaussian_window, config.gaussian_step, floor)
    out[WINDOWED_GAUSSIAN] = (wg[config.gaussian_step:n], wg[n:])
    return out


@dataclass
class EvalResult:
    table: pl.DataFrame  # one row per (machine, detector)
    pooled: pl.DataFrame  # one row per detector
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # machine -> detector -> (train, test)
    machines: dict[str, Machine]
    seconds: float


def run_evaluation(folder: str | Path, config: AnomalyEvalConfig | None = None,
                   machines: list[str] | None = None, echo=None) -> EvalResult:
    """Train on each machine's training part, score its test part, compare with the baselines."""
    config = config or AnomalyEvalConfig()
    t0 = time.perf_counter()
    rows, scores, loaded, flags = [], {}, {}, {d: ([], []) for d in DETECTORS}
    for name in machines or machines_in(folder):
        m = load_machine(folder, name)
        loaded[name] = m
        scores[name] = detector_scores(m, config)
        for det, (tr, te) in scores[name].items():
            r = evaluate(tr, te, m.labels, config.quantile)
            rows.append({"machine": name, "detector": det, **r})
            pred = te > r["threshold"]
            flags[det][0].append(point_adjust(pred, m.labels))
            flags[det][1].append((pred, m.labels))
        if echo:
            echo(f"{name}: scored {len(m.labels)} test minutes")
    table = pl.DataFrame(rows)
    pooled = []
    for det in DETECTORS:
        pred = np.concatenate([p for p, _ in flags[det][1]])
        lab = np.concatenate([lab for _, lab in flags[det][1]])
        p, r, f1 = prf(pred, lab)
        pa_p, pa_r, pa_f1 = prf(np.concatenate(flags[det][0]), lab)
        mean = table.filter(pl.col("detector") == det).select(
            "best_f1", "best_pa_f1", "precision_at_top1pct").mean().row(0, named=True)
        pooled.append({"detector": det, "precision": p, "recall": r, "f1": f1,
                       "pa_precision": pa_p, "pa_recall": pa_r, "pa_f1": pa_f1,
                       "mean_best_f1": mean["best_f1"], "mean_best_pa_f1": mean["best_pa_f1"],
                       "mean_precision_at_top1pct": mean["precision_at_top1pct"]})
    return EvalResult(table, pl.DataFrame(pooled), scores, loaded, time.perf_counter() - t0)


# --- outputs: plots, markdown report, MLflow ------------------------------------------------------
def plot_machine(m: Machine, scores: dict[str, tuple[np.ndarray, np.ndarray]], table: pl.DataFrame,
                 path: Path) -> Path:
    """Test-part scores of ours and the baselines, labelled anomaly spans shaded, thresholds dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.pyplot as plt

    shown = (OURS, ROLLING_Z, WINDOWED_GAUSSIAN)
    ts = m.ts[m.n_train:]
    fig, axes = plt.subplots(len(shown), 1, figsize=(14, 7.5), sharex=True)
    for ax, det in zip(axes, shown, strict=True):
        row = table.filter((pl.col("machine") == m.name) & (pl.col("detector") == det)).row(0, named=True)
        te = scores[det][1]
        for a, b in segments(m.labels):
            ax.axvspan(ts[a], ts[min(b, len(ts) - 1)], color="tab:red", alpha=0.25, lw=0)
        ax.plot(ts, te, lw=0.6, color="tab:blue")
        ax.axhline(row["threshold"], color="black", ls="--", lw=0.8)
        if det != OURS:
            ax.set_yscale("symlog", linthresh=max(row["threshold"], 1e-9))
            ax.set_ylim(bottom=0)
        ax.set_ylabel(det, fontsize=9)
        ax.set_title(f"{det}: F1 {row['f1']:.2f}, point-adjusted F1 {row['pa_f1']:.2f}, "
                     f"precision at top 1% {row['precision_at_top1pct']:.2f}", fontsize=9, loc="left")
    axes[0].set_title(f"{m.name} (test half) - red: labelled anomalies; dashed: threshold from the "
                      f"training half\n" + axes[0].get_title(loc="left"), fontsize=9, loc="left")
    axes[-1].xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(axes[-1].xaxis.get_major_locator()))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _md_table(frame: pl.DataFrame) -> str:
    cols = frame.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def write_report(result: EvalResult, config: AnomalyEvalConfig, path: Path, command: str,
                 plots: dict[str, Path]) -> Path:
    """A markdown report next to its plots."""
    cols = ["machine", "detector", "f1", "pa_f1", "best_f1", "best_pa_f1", "precision_at_top1pct",
            "precision", "recall", "flagged_share"]
    best_base = result.pooled.filter(pl.col("detector").is_in(BASELINES))
    ours = result.pooled.filter(pl.col("detector") == OURS).row(0, named=True)
    base_pa, base_f1 = float(best_base["pa_f1"].max()), float(best_base["f1"].max())
    text = [
        "# Anomaly detection on SMD: prealert's isolation forest against two baselines",
        "",
        f"Command: `{command}` ({result.seconds:.0f} s).",
        "",
        "Protocol: each detector is fitted on a machine's training half only and scores the test "
        "half; features and baselines are causal (a minute sees only itself and the past). "
        f"**Threshold rule, fixed before looking at test labels:** the {config.quantile:.3g} quantile "
        "of the detector's scores on the (unlabelled) training half, per machine and detector; a "
        "test minute is flagged when its score is above it. `f1` is plain point-wise F1, `pa_f1` "
        "point-adjusted (a labelled segment counts whole if any minute in it is flagged). "
        "`best_f1`/`best_pa_f1` use the best threshold on the test labels: a reference ceiling, "
        "not a result. `precision_at_top1pct`: share of labelled minutes among the top 1% of test "
        "scores. Pooled: every machine's test minutes together, each with its own threshold "
        "(best F1 and precision at top 1% are means over machines).",
        "",
        "Detectors:",
        f"- `{OURS}`: isolation forest (200 trees, 256 samples) over causal features of all metrics: "
        f"residual from the median of the previous {config.stream.expectation_minutes} minutes, "
        f"1-minute change and {config.stream.spread_minutes}-minute rolling spread, each in the "
        "metric's training residual standard deviations.",
        f"- `{OURS_Z}`: the larger of the forest's rarity and the rarity of the largest per-metric "
        "residual |z| (each as a share of training minutes scoring lower), recalibrated on the "
        "training minutes; this is what `prealert score-anomalies` writes.",
        f"- `{ROLLING_Z}`: largest |z| over metrics, z against the mean and sd of the previous "
        f"{config.rolling_z_window} minutes.",
        f"- `{WINDOWED_GAUSSIAN}`: mean squared z over metrics under a per-metric Gaussian fitted "
        f"to the previous {config.gaussian_window} minutes, refitted every {config.gaussian_step} "
        "(NAB's windowedGaussian). Both baselines floor a metric's sd at 1% of its training range.",
        "",
        "## Pooled over the machines",
        "",
        _md_table(result.pooled),
        "",
        f"Targets: point-adjusted F1 >= 1.3x the better baseline ({1.3 * base_pa:.3f}): "
        f"**{ours['pa_f1']:.3f}** ({ours['pa_f1'] / max(base_pa, 1e-9):.2f}x); plain F1 above both "
        f"baselines ({base_f1:.3f}): **{ours['f1']:.3f}** ({ours['f1'] / max(base_f1, 1e-9):.2f}x).",
        "",
        "## Per machine",
        "",
        _md_table(result.table.select(cols)),
        "",
    ]
    for name, png in plots.items():
        text += [f"### {name}", "", f"![{name}]({png.relative_to(path.parent).as_posix()})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    return path


def log_evaluation(result: EvalResult, config: AnomalyEvalConfig, report: Path,
                   plots: dict[str, Path]) -> str:
    """Log params, per-machine and pooled metrics, the tables, report and plots as one MLflow run."""
    import mlflow

    from training.registry import use_experiment

    use_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="smd") as run:
        mlflow.log_params(config.as_params())
        metrics = {}
        for row in result.table.iter_rows(named=True):
            for k in ("f1", "pa_f1", "best_f1", "best_pa_f1", "precision_at_top1pct"):
                metrics[f"{row['machine']}.{row['detector']}.{k}"] = row[k]
        for row in result.pooled.iter_rows(named=True):
            for k, v in row.items():
                if k != "detector":
                    metrics[f"pooled.{row['detector']}.{k}"] = v
        mlflow.log_metrics({k.replace("+", "_plus_"): float(v) for k, v in metrics.items()})
        mlflow.log_table(result.table.to_pandas(), "per_machine.json")
        mlflow.log_table(result.pooled.to_pandas(), "pooled.json")
        mlflow.log_artifact(str(report))
        for png in plots.values():
            mlflow.log_artifact(str(png), "plots")
        return run.info.run_id
