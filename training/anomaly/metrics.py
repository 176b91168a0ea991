"""How well anomaly scores find labelled incidents: plain and point-adjusted F1, best F1, precision@k."""

from __future__ import annotations

import numpy as np


def segments(labels: np.ndarray) -> np.ndarray:
    """Start (inclusive) and end (exclusive) of each run of 1s, shape (n_segments, 2)."""
    lab = np.concatenate([[0], np.asarray(labels, dtype=np.int8) > 0, [0]]).astype(np.int8)
    d = np.diff(lab)
    return np.column_stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)])


def point_adjust(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Flag a whole labelled segment when any minute in it is flagged (the usual SMD protocol)."""
    out = np.asarray(pred, dtype=bool).copy()
    for a, b in segments(labels):
        if out[a:b].any():
            out[a:b] = True
    return out


def prf(pred: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of boolean predictions (0 where undefined)."""
    pred, lab = np.asarray(pred, dtype=bool), np.asarray(labels) > 0
    tp = float(np.sum(pred & lab))
    p = tp / max(pred.sum(), 1)
    r = tp / max(lab.sum(), 1)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def best_f1(scores: np.ndarray, labels: np.ndarray, adjusted: bool = False) -> tuple[float, float]:
    """The best F1 over every threshold (uses the test labels: a reference, not a result).

    Returns (F1, threshold). With ``adjusted`` the F1 is point-adjusted: a segment counts
    whole when its highest score reaches the threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels) > 0
    n_pos = lab.sum()
    if n_pos == 0:
        return 0.0, float("nan")
    cand = np.unique(scores)
    normal = np.sort(scores[~lab])
    fp = len(normal) - np.searchsorted(normal, cand, side="left")  # normal minutes >= threshold
    if adjusted:
        seg = segments(lab)
        seg_max = np.array([scores[a:b].max() for a, b in seg])
        order = np.argsort(seg_max)
        seg_max, seg_len = seg_max[order], (seg[:, 1] - seg[:, 0])[order]
        tail = np.concatenate([np.cumsum(seg_len[::-1])[::-1], [0]])  # length of segments >= k-th
        tp = tail[np.searchsorted(seg_max, cand, side="left")]
    else:
        pos = np.sort(scores[lab])
        tp = len(pos) - np.searchsorted(pos, cand, side="left")
    prec = tp / np.maximum(tp + fp, 1)
    rec = tp / n_pos
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)
    k = int(np.argmax(f1))
    return float(f1[k]), float(cand[k])


def precision_at_top(scores: np.ndarray, labels: np.ndarray, fraction: float = 0.01) -> float:
    """Share of labelled minutes among the ``fraction`` highest-scored ones (ties broken by time)."""
    k = max(1, int(round(fraction * len(scores))))
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(np.mean(np.asarray(labels)[top] > 0))


def evaluate(train_scores: np.ndarray, test_scores: np.ndarray, labels: np.ndarray,
             quantile: float = 0.99) -> dict[str, float]:
    """Every figure for one detector on one machine; the threshold comes from the training scores.

    Threshold rule: the ``quantile`` of the detector's scores on the (unlabelled) training
    part, so about 1 - quantile of normal minutes are flagged; a test minute is flagged when
    its score is strictly above it.
    """
    thr = float(np.quantile(train_scores, quantile))
    pred = np.asarray(test_scores) > thr
    p, r, f1 = prf(pred, labels)
    pa_p, pa_r, pa_f1 = prf(point_adjust(pred, labels), labels)
    return {
        "threshold": thr, "flagged_share": float(pred.mean()),
        "precision": p, "recall": r, "f1": f1,
        "pa_precision": pa_p, "pa_recall": pa_r, "pa_f1": pa_f1,
        "best_f1": best_f1(test_scores, labels)[0],
        "best_pa_f1": best_f1(test_scores, labels, adjusted=True)[0],
        "precision_at_top1pct": precision_at_top(test_scores, labels, 0.01),
    }


# --- early-detection window scoring (the NAB scheme) ------------------------------------------------
#: (A_TP, A_FN, A_FP) per profile
PROFILES = {"standard": (1.0, 1.0, 0.11), "low_fp": (1.0, 1.0, 0.22), "low_fn": (1.0, 2.0, 0.11)}
WINDOW_SHARE = 0.10  # total window length, as a share of the series
PROBATION_SHARE, PROBATION_MAX = 0.15, 750  # the learning-only start of each series


def scaled_sigmoid(y: np.ndarray) -> np.ndarray:
    """``2 / (1 + e^{5y}) - 1``: +0.987 at y = -1, 0 at y = 0, towards -1 for large y."""
    return 2.0 / (1.0 + np.exp(np.clip(5.0 * np.asarray(y, dtype=np.float64), -700, 700))) - 1.0


def probation_rows(n: int) -> int:
    return min(int(np.ceil(PROBATION_SHARE * n)), PROBATION_MAX)


def anomaly_windows(labels: np.ndarray) -> np.ndarray:
    """Windows (first row, last row, inclusive) of total length 10% of the series, centred on each
    labelled segment (never shorter than it), overlaps merged; windows ending in probation dropped."""
    n = len(labels)
    seg = segments(labels)
    if not len(seg):
        return np.zeros((0, 2), dtype=np.int64)
    width = WINDOW_SHARE * n / len(seg)
    out: list[list[int]] = []
    for a, b in seg:
        centre = (a + b - 1) / 2.0
        lo = max(0, min(a, int(np.floor(centre - width / 2))))
        hi = min(n - 1, max(b - 1, int(np.ceil(centre + width / 2)) - 1))
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    w = np.asarray(out, dtype=np.int64)
    return w[w[:, 1] >= probation_rows(n)]


class WindowSeries:
    """One series prepared for the window scoring at any threshold (vectorized over thresholds)."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray):
        s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
        n = len(s)
        start = probation_rows(n)
        self.windows = anomaly_windows(labels)
        inside = np.zeros(n, dtype=bool)
        self.prefix_max, self.rewards = [], []
        for lo, hi in self.windows:
            inside[lo:hi + 1] = True
            a = max(lo, start)
            idx = np.arange(a, hi + 1)
            self.prefix_max.append(np.maximum.accumulate(s[a:hi + 1]))
            y = (idx - hi) / max(hi - lo, 1)  # -1 at the left edge, 0 at the right edge
            self.rewards.append(scaled_sigmoid(y) / scaled_sigmoid(-1.0))
        out_idx = np.flatnonzero(~inside & (np.arange(n) >= start))
        rights = self.windows[:, 1] if len(self.windows) else np.zeros(0, dtype=np.int64)
        k = np.searchsorted(rights, out_idx, side="left") - 1  # previous window, -1 if none
        widths = (self.windows[:, 1] - self.windows[:, 0] + 1).astype(np.float64) if len(rights) else rights
        weight = np.full(len(out_idx), -1.0)
        has = k >= 0
        weight[has] = scaled_sigmoid((out_idx[has] - rights[k[has]]) / widths[k[has]])
        order = np.argsort(s[out_idx], kind="stable")
        self.fp_scores = s[out_idx][order]
        self.fp_suffix = np.concatenate([np.cumsum(weight[order][::-1])[::-1], [0.0]])

    def parts(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per threshold: summed true-positive reward (before A_TP), missed windows, summed FP weight."""
        thr = np.asarray(thresholds, dtype=np.float64)
        tp, missed = np.zeros(len(thr)), np.zeros(len(thr))
        for pm, rw in zip(self.prefix_max, self.rewards, strict=True):
            j = np.searchsorted(pm, thr, side="left")  # earliest row reaching the threshold
            hit = j < len(pm)
            tp[hit] += rw[j[hit]]
            missed += ~hit
        fp = self.fp_suffix[np.searchsorted(self.fp_scores, thr, side="left")]
        return tp, missed, fp

    def candidate_thresholds(self) -> np.ndarray:
        steps = [pm[np.r_[True, np.diff(pm) > 0]] for pm in self.prefix_max]
        tail = np.quantile(self.fp_scores, 1.0 - np.logspace(-5, -0.3, 60)) if len(self.fp_scores) else []
        vals = np.concatenate(steps + [np.asarray(tail, dtype=np.float64)]) if steps else np.asarray(tail)
        return vals[np.isfinite(vals)]


def window_score(series: list[WindowSeries], max_candidates: int = 4000) -> dict[str, dict[str, float]]:
    """The corpus's normalized score per profile at the one threshold that maximizes its total.

    Null detector (never fires) = 0, perfect (every window at its left edge, nothing else) = 100.
    """
    cand = np.unique(np.concatenate([s.candidate_thresholds() for s in series] + [[np.inf]]))
    if len(cand) > max_candidates:
        grid = np.quantile(cand[:-1], np.linspace(0, 1, max_candidates))
        cand = np.unique(np.concatenate([grid, [np.inf]]))
    tp, missed, fp = (np.sum(x, axis=0) for x in zip(*(s.parts(cand) for s in series), strict=True))
    n_win = sum(len(s.windows) for s in series)
    out = {}
    for name, (a_tp, a_fn, a_fp) in PROFILES.items():
        raw = a_tp * tp - a_fn * missed + a_fp * fp
        k = int(np.argmax(raw))
        null, perfect = -a_fn * n_win, a_tp * n_win
        out[name] = {"score": 100.0 * (raw[k] - null) / max(perfect - null, 1e-12),
                     "threshold": float(cand[k]), "windows": n_win, "missed": int(missed[k])}
    return out
