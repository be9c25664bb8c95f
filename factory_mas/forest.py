"""Tree ensembles from scikit-learn, evaluated for all rows and all trees at once.

scikit-learn walks a forest tree by tree, with fixed costs per call and per tree (input
checks, a thread pool hand-off, one C traversal per tree). For the forests our agents use
(tens of trees, depth about ten, a few to a thousand rows per call) those fixed costs are
most of the time. Here every tree of a forest lives in flat node arrays and one numpy step
advances every (row, tree) pair one level, so a batch costs about `depth` vectorised steps.

Results equal scikit-learn's: the same float32 rounding of the input before comparing with
the float64 thresholds, the same leaves, and the per-tree contributions added in tree order
as scikit-learn adds them. tests/test_forest.py holds them to that.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest, RandomForestClassifier, RandomForestRegressor
from sklearn.ensemble._iforest import _average_path_length

from .errors import ArtifactError

# Rows per step: a (rows x trees) block of node indices that stays in the CPU cache. Measured
# here: 256 rows score about 20 % faster per row than 1024 with 40-100 trees.
_CHUNK_ROWS = 256


class CompiledForest:
    def __init__(
        self, trees: list[Any], features: list[np.ndarray] | None, n_features: int
    ) -> None:
        sizes = [t.tree_.node_count for t in trees]
        self.roots = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
        self.n_trees = len(trees)
        self.n_features = n_features
        left, right, feature, threshold = [], [], [], []
        for t, (tree, offset) in enumerate(zip(trees, self.roots, strict=True)):
            tr = tree.tree_
            is_leaf = tr.children_left == -1
            # A leaf points at itself, so rows that reached one simply stay there.
            own = np.arange(tr.node_count) + offset
            left.append(np.where(is_leaf, own, tr.children_left + offset))
            right.append(np.where(is_leaf, own, tr.children_right + offset))
            local = np.where(is_leaf, 0, tr.feature)
            feature.append(features[t][local] if features is not None else local)
            threshold.append(tr.threshold)
        # children[2 * node] is the left child and children[2 * node + 1] the right one, so
        # a step is one lookup indexed by the comparison instead of two and a select.
        self.children = np.column_stack([np.concatenate(left), np.concatenate(right)]).ravel()
        self.feature = np.concatenate(feature).astype(np.intp)
        self.threshold = np.concatenate(threshold)
        self.depth = max(t.tree_.max_depth for t in trees)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """Global leaf index for every row and tree: shape (rows, trees)."""
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {x.shape}")
        # scikit-learn routes NaN by rules learnt in training; validated telemetry has none,
        # and a NaN reaching here is a bug upstream that must not score quietly.
        if not np.isfinite(x).all():
            raise ValueError("features must be finite numbers")
        if len(x) > _CHUNK_ROWS:
            return np.concatenate(
                [self._leaves(x[i : i + _CHUNK_ROWS]) for i in range(0, len(x), _CHUNK_ROWS)]
            )
        return self._leaves(x)

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        # scikit-learn compares float32 inputs with float64 thresholds; round the same way.
        flat = np.asarray(x, np.float32).astype(np.float64).ravel()
        row_start = (np.arange(len(x)) * self.n_features)[:, None]
        node = np.broadcast_to(self.roots, (len(x), self.n_trees)).copy()
        for _ in range(self.depth):
            go_right = flat.take(row_start + self.feature.take(node)) > self.threshold.take(node)
            node = self.children.take(2 * node + go_right)
        return node

    def _sum_in_tree_order(self, per_node: np.ndarray, leaves: np.ndarray) -> np.ndarray:
        total = np.zeros((leaves.shape[0], *per_node.shape[1:]))
        for t in range(self.n_trees):
            total += per_node[leaves[:, t]]
        return total


class ForestClassifier(CompiledForest):
    def __init__(self, model: RandomForestClassifier) -> None:
        super().__init__(model.estimators_, None, model.n_features_in_)
        # The leaves already hold class fractions, which scikit-learn uses as they are.
        self.proba = np.concatenate([t.tree_.value[:, 0, :] for t in model.estimators_])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self._sum_in_tree_order(self.proba, self.leaves(x)) / self.n_trees


class ForestRegressor(CompiledForest):
    def __init__(self, model: RandomForestRegressor) -> None:
        super().__init__(model.estimators_, None, model.n_features_in_)
        self.values = np.concatenate([t.tree_.value[:, 0, 0] for t in model.estimators_])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._sum_in_tree_order(self.values, self.leaves(x)) / self.n_trees


class ForestIsolation(CompiledForest):
    def __init__(self, model: IsolationForest) -> None:
        # Trees see a subset of the columns only when max_features is below the total;
        # otherwise scikit-learn fits and scores them on all columns, unpermuted.
        n = model.n_features_in_
        subsets = model.estimators_features_ if model._max_features != n else None
        super().__init__(model.estimators_, subsets, n)
        # Path length to a leaf plus the expected length of the rest of its subtree, as
        # in Liu et al. (2008) and scikit-learn's score_samples.
        # compute_node_depths counts the root as 1, as scikit-learn's scoring does.
        self.path = np.concatenate(
            [
                t.tree_.compute_node_depths() + _average_path_length(t.tree_.n_node_samples) - 1.0
                for t in model.estimators_
            ]
        )
        self.denominator = self.n_trees * _average_path_length([model.max_samples_])[0]

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        depths = self._sum_in_tree_order(self.path, self.leaves(x))
        return -(2.0 ** (-depths / self.denominator))


def compile_forest(model: Any) -> CompiledForest:
    if isinstance(model, RandomForestClassifier):
        return ForestClassifier(model)
    if isinstance(model, RandomForestRegressor):
        return ForestRegressor(model)
    if isinstance(model, IsolationForest):
        return ForestIsolation(model)
    raise ArtifactError(
        f"cannot compile a {type(model).__name__}; expected a random or isolation forest"
    )
