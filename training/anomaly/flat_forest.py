"""A fitted isolation forest flattened into numpy arrays: sub-millisecond scoring, saved without pickle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest

#: bump when the arrays in the .npz change meaning; loaders refuse newer files
FLAT_FOREST_FORMAT = 1

#: rows scored per block in a batch: the (rows x trees) index matrices stay in the CPU cache
_BLOCK_ROWS = 1024
#: largest (trees x complete-tree nodes) laid out as complete binary trees (see ``FlatForest.heap``)
_MAX_HEAP_NODES = 1 << 22


def average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful search in a binary search tree of ``n`` points.

    The same formula scikit-learn uses (``c(n)`` in Liu et al., 2008): 0 for n <= 1, 1 for n == 2.
    """
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass
class FlatForest:
    """Every tree's nodes in one set of arrays; node ``i`` of tree ``t`` is ``roots[t] + i``.

    Leaves point to themselves (``left == right == own index``), so a fixed number of
    vectorized steps (the deepest tree's depth) walks every (row, tree) pair to its leaf.
    ``leaf_depth`` holds, per node, the depth scikit-learn credits a row ending there:
    node depth + c(training samples in the node) - 1.
    """

    feature: np.ndarray  # int32, column of the input each split looks at (-1 on leaves)
    threshold: np.ndarray  # float64, go left when x <= threshold
    left: np.ndarray  # int64, global index of the left child (self on leaves)
    right: np.ndarray  # int64
    nan_left: np.ndarray  # bool, where a NaN goes (scikit-learn's missing_go_to_left)
    leaf_depth: np.ndarray  # float64
    roots: np.ndarray  # int64, global index of each tree's root
    max_depth: int
    n_features: int
    denominator: float  # n_trees * c(max_samples)
    _heap: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_sklearn(cls, forest: IsolationForest) -> FlatForest:
        """Flatten a fitted scikit-learn ``IsolationForest``."""
        feats, thrs, lefts, rights, nanl, depths, roots = [], [], [], [], [], [], []
        offset, max_depth = 0, 0
        subsample = forest._max_features != forest.n_features_in_
        for est, cols, dpl, apl in zip(forest.estimators_, forest.estimators_features_,
                                       forest._decision_path_lengths,
                                       forest._average_path_length_per_tree, strict=True):
            t = est.tree_
            n = t.node_count
            leaf = t.children_left == -1
            own = np.arange(n, dtype=np.int64) + offset
            f = t.feature.astype(np.int32)
            if subsample:  # the tree saw X[:, cols]; map its columns back to the input's
                f = np.where(leaf, -1, np.asarray(cols)[np.maximum(f, 0)]).astype(np.int32)
            feats.append(np.where(leaf, -1, f).astype(np.int32))
            thrs.append(t.threshold.astype(np.float64))
            lefts.append(np.where(leaf, own, t.children_left + offset))
            rights.append(np.where(leaf, own, t.children_right + offset))
            nanl.append(np.asarray(t.missing_go_to_left, dtype=bool))
            depths.append(np.asarray(dpl, dtype=np.float64) + np.asarray(apl, dtype=np.float64) - 1.0)
            roots.append(offset)
            max_depth = max(max_depth, int(t.max_depth))
            offset += n
        n_trees = len(forest.estimators_)
        return cls(
            feature=np.concatenate(feats), threshold=np.concatenate(thrs),
            left=np.concatenate(lefts).astype(np.int64), right=np.concatenate(rights).astype(np.int64),
            nan_left=np.concatenate(nanl), leaf_depth=np.concatenate(depths),
            roots=np.asarray(roots, dtype=np.int64), max_depth=max_depth,
            n_features=int(forest.n_features_in_),
            denominator=float(n_trees * average_path_length(np.array([forest._max_samples]))[0]),
        )

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {x.shape}")
        # scikit-learn's trees compare float32 inputs with float64 thresholds: do the same
        return x.astype(np.float32).astype(np.float64)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """Global leaf index reached by each row in each tree, shape (rows, trees)."""
        x = self._prepare(x)
        rows = np.arange(x.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (x.shape[0], self.n_trees)).copy()
        feature = np.maximum(self.feature, 0)  # leaves read column 0 and stay where they are
        for _ in range(self.max_depth):
            v = x[rows, feature[node]]
            go_left = np.where(np.isnan(v), self.nan_left[node], v <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        return node

    def heap(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every tree as a complete binary tree of depth ``max_depth`` (node ``h``'s children at
        ``2h + 1`` and ``2h + 2``): split column, threshold, and the credited depth of each bottom
        node. A leaf above the bottom becomes a chain of splits that always go left (threshold
        +inf) ending in a bottom node with its depth, so a walk needs no child lookups. None when
        the layout would be too large (deep trees); built once, not saved.
        """
        if self._heap is None:
            size = (1 << (self.max_depth + 1)) - 1
            if size * self.n_trees > _MAX_HEAP_NODES:
                return None
            glob = np.empty((self.n_trees, size), dtype=np.int64)
            glob[:, 0] = self.roots
            for h in range(size // 2):  # leaves point to themselves, so they copy down
                glob[:, 2 * h + 1] = self.left[glob[:, h]]
                glob[:, 2 * h + 2] = self.right[glob[:, h]]
            leaf = self.left[glob] == glob
            feature = np.where(leaf, 0, np.maximum(self.feature[glob], 0)).astype(np.intp)
            threshold = np.where(leaf, np.inf, self.threshold[glob])
            bottom = self.leaf_depth[glob[:, size // 2:]]
            self._heap = (feature.ravel(), threshold.ravel(), bottom.ravel())
        return self._heap

    def _depths(self, x: np.ndarray) -> np.ndarray:
        """Summed credited depth over the trees per row of a prepared block."""
        heap = self.heap()
        if heap is None or np.isnan(x).any():  # NaN follows each split's own rule: the general walk
            return self.leaf_depth[self.leaves(x)].sum(axis=1)
        feature, threshold, bottom = heap
        n, t, size = x.shape[0], self.n_trees, (1 << (self.max_depth + 1)) - 1
        offset = np.arange(t, dtype=np.intp) * size
        base = (np.arange(n, dtype=np.intp) * x.shape[1])[:, None]
        flat = x.ravel()
        # walk global indices g = offset + h: the children of h are 2h + 1 and 2h + 2, so the next g is
        # 2g + 1 - offset (+1 to the right); every step reuses the same buffers
        at = np.broadcast_to(offset, (n, t)).copy()
        step = 1 - offset
        col, v, thr = np.empty((n, t), dtype=np.intp), np.empty((n, t)), np.empty((n, t))
        right = np.empty((n, t), dtype=bool)
        for _ in range(self.max_depth):
            feature.take(at, out=col)
            col += base
            flat.take(col, out=v)
            threshold.take(at, out=thr)
            np.greater(v, thr, out=right)
            at *= 2
            at += step
            at += right
        first_bottom = size // 2  # bottom holds each tree's last (size - first_bottom) nodes in a row
        at -= offset + first_bottom - np.arange(t, dtype=np.intp) * (size - first_bottom)
        return bottom.take(at).sum(axis=1)

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """Equal to ``IsolationForest.score_samples``: minus the anomaly score, in [-1, 0]."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        out = np.empty(x.shape[0])
        for start in range(0, x.shape[0], _BLOCK_ROWS):
            depths = self._depths(self._prepare(x[start:start + _BLOCK_ROWS]))
            out[start:start + _BLOCK_ROWS] = -(2.0 ** (-depths / self.denominator))
        return out

    # --- persistence: plain arrays in an .npz, no pickle -------------------------------------
    def save(self, path: Path) -> None:
        np.savez_compressed(
            path, format=np.array(FLAT_FOREST_FORMAT), feature=self.feature, threshold=self.threshold,
            left=self.left, right=self.right, nan_left=self.nan_left, leaf_depth=self.leaf_depth,
            roots=self.roots, max_depth=np.array(self.max_depth), n_features=np.array(self.n_features),
            denominator=np.array(self.denominator),
        )

    @classmethod
    def load(cls, path: Path) -> FlatForest:
        with np.load(path, allow_pickle=False) as z:
            fmt = int(z["format"])
            if fmt > FLAT_FOREST_FORMAT:
                raise ValueError(f"{path}: flat forest format {fmt} is newer than this prealert "
                                 f"reads ({FLAT_FOREST_FORMAT}); upgrade prealert or retrain")
            return cls(
                feature=z["feature"], threshold=z["threshold"], left=z["left"], right=z["right"],
                nan_left=z["nan_left"], leaf_depth=z["leaf_depth"], roots=z["roots"],
                max_depth=int(z["max_depth"]), n_features=int(z["n_features"]),
                denominator=float(z["denominator"]),
            )
