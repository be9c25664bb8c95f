"""scikit-learn forests -> factory_mas.ml.forest arrays: the only place serving meets sklearn.

Training fits with scikit-learn, compiles here, and saves the result as .npz; the agents
load that with numpy alone. Each function reads only public tree attributes, except the
isolation forest's expected path length, which must match scikit-learn's to the bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest, RandomForestClassifier, RandomForestRegressor
from sklearn.ensemble._iforest import _average_path_length

from ..errors import ArtifactError
from ..ml.forest import (
    CompiledForest,
    Forest,
    ForestClassifier,
    ForestIsolation,
    ForestRegressor,
    Trees,
)


def _trees(estimators: list[Any], n_features: int, columns: list[np.ndarray] | None) -> Trees:
    """Node arrays of fitted trees; `columns[t]` maps tree t's inputs to the forest's when
    the tree was fitted on a subset of them."""
    feature = []
    for t, estimator in enumerate(estimators):
        tree = estimator.tree_
        leaf = tree.children_left == -1
        local = np.where(leaf, 0, tree.feature)
        feature.append(np.where(leaf, -1, columns[t][local] if columns is not None else local))
    return Trees(
        node_counts=np.array([e.tree_.node_count for e in estimators], np.int64),
        left=np.concatenate([e.tree_.children_left for e in estimators]).astype(np.int64),
        right=np.concatenate([e.tree_.children_right for e in estimators]).astype(np.int64),
        feature=np.concatenate(feature).astype(np.int64),
        threshold=np.concatenate([e.tree_.threshold for e in estimators]).astype(np.float64),
        n_features=n_features,
    )


def _classifier(model: RandomForestClassifier) -> ForestClassifier:
    trees = _trees(model.estimators_, model.n_features_in_, None)
    # The leaves hold class fractions (scikit-learn >= 1.4), which predict_proba averages.
    proba = np.concatenate([e.tree_.value[:, 0, :] for e in model.estimators_])
    return ForestClassifier(trees, proba, [str(c) for c in model.classes_])


def _regressor(model: RandomForestRegressor) -> ForestRegressor:
    trees = _trees(model.estimators_, model.n_features_in_, None)
    return ForestRegressor(
        trees, np.concatenate([e.tree_.value[:, 0, 0] for e in model.estimators_])
    )


def _isolation(model: IsolationForest) -> ForestIsolation:
    # Trees see a subset of the columns only when max_features is below the total;
    # otherwise scikit-learn fits and scores them on all columns, unpermuted.
    n = model.n_features_in_
    subsets = model.estimators_features_ if model._max_features != n else None
    trees = _trees(model.estimators_, n, subsets)
    # As scikit-learn's score_samples: the depth of the leaf (compute_node_depths counts
    # the root as 1) plus the expected path length in the rest of its subtree, minus 1.
    path = np.concatenate(
        [
            e.tree_.compute_node_depths() + _average_path_length(e.tree_.n_node_samples) - 1.0
            for e in model.estimators_
        ]
    )
    denominator = len(model.estimators_) * _average_path_length([model.max_samples_])[0]
    return ForestIsolation(trees, path, denominator)


def compile_forest(model: Any) -> CompiledForest:
    """The numpy form of a fitted random or isolation forest; ArtifactError for anything
    else or a forest the numpy form cannot hold."""
    if getattr(model, "n_outputs_", 1) != 1:
        raise ArtifactError(f"cannot compile a forest with {model.n_outputs_} outputs")
    compilers = (
        (RandomForestClassifier, _classifier),
        (RandomForestRegressor, _regressor),
        (IsolationForest, _isolation),
    )
    compiler = next((c for kind, c in compilers if isinstance(model, kind)), None)
    if compiler is None:
        raise ArtifactError(
            f"cannot compile a {type(model).__name__}; expected a random or isolation forest"
        )
    try:
        return compiler(model)
    except ValueError as exc:
        raise ArtifactError(f"cannot compile this {type(model).__name__}: {exc}") from exc


def compile_as(model: Any, kind: type[Forest]) -> Forest:
    """compile_forest for a caller that fitted a known kind and uses its own methods
    (an isolation forest's score_samples), as load_forest is for one read back."""
    forest = compile_forest(model)
    if not isinstance(forest, kind):
        raise ArtifactError(
            f"a {type(model).__name__} compiles to a {type(forest).__name__}, not a {kind.__name__}"
        )
    return forest
