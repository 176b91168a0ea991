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
