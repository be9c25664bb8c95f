"""Compiled forests answer exactly what scikit-learn answers, for any batch size, before
and after a trip through their .npz file; a file that is not such a forest is refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression

from factory_mas.agents.cyber.model import CyberModel
from factory_mas.agents.energy.model import EnergyModel
from factory_mas.agents.pm.model import PmModel
from factory_mas.agents.safety.model import SafetyModel
from factory_mas.errors import ArtifactError
from factory_mas.ml.forest import (
    FORMAT,
    MAX_SLOTS,
    ForestClassifier,
    ForestIsolation,
    ForestRegressor,
    Trees,
    read_forest,
    sum_in_tree_order,
    write_forest,
)
from factory_mas.training.forests import compile_forest
from tests.support.paths import ARTIFACTS

RNG = np.random.default_rng(3)
X = RNG.normal(size=(3000, 6)) * [1, 10, 100, 0.1, 5, 1000]
Y_CLASS = (X[:, 0] + X[:, 1] / 10 + RNG.normal(size=3000) > 0.5).astype(int) + (X[:, 2] > 100)
Y_VALUE = X[:, 0] * 3 + np.sin(X[:, 1]) + RNG.normal(size=3000)
# 3000 rows: more than one chunk of rows for the forests of 15 trees and more.
PROBE = RNG.normal(size=(3000, 6)) * [1, 10, 100, 0.1, 5, 1000] * 1.5


def _answers(model):
    if isinstance(model, RandomForestClassifier):
        return model.predict_proba, "predict_proba"
    if isinstance(model, RandomForestRegressor):
        return model.predict, "predict"
    return model.score_samples, "score_samples"


MODELS = {
    "classifier": RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0),
    # Leaves from depth 2 to 16: most of the padding a complete tree needs.
    "classifier_deep": RandomForestClassifier(n_estimators=5, max_depth=16, random_state=1),
    # Trees of different depths, stepped deepest first and summed in their own order.
    "classifier_uneven": RandomForestClassifier(
        n_estimators=8, max_depth=16, min_samples_leaf=20, random_state=1
    ),
    "regressor": RandomForestRegressor(n_estimators=12, max_depth=9, random_state=0),
    "isolation_all_columns": IsolationForest(n_estimators=30, random_state=0),
    "isolation_column_subsets": IsolationForest(n_estimators=30, max_features=0.5, random_state=0),
}


def fitted(name: str):
    model = MODELS[name]
    if not hasattr(model, "estimators_"):
        if isinstance(model, IsolationForest):
            model.fit(X)
        else:
            model.fit(X, Y_VALUE if isinstance(model, RandomForestRegressor) else Y_CLASS)
    return model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rows", [1, 2, 7, 3000])
def test_same_answers_as_scikit_learn(name, rows):
    reference, method = _answers(fitted(name))
    compiled = compile_forest(fitted(name))
    assert np.array_equal(getattr(compiled, method)(PROBE[:rows]), reference(PROBE[:rows]))


@pytest.mark.parametrize("name", MODELS)
def test_same_answers_at_the_thresholds(name):
    """Rows sitting on a threshold and on the float32 values next to it, where rounding
    the input or the threshold differently would change the branch."""
    model = fitted(name)
    reference, method = _answers(model)
    tree = model.estimators_[0].tree_
    inner = tree.children_left >= 0
    columns = tree.feature[inner]
    if isinstance(model, IsolationForest) and model._max_features != X.shape[1]:
        columns = model.estimators_features_[0][columns]
    at = tree.threshold[inner].astype(np.float32)
    rows = np.repeat(PROBE[: len(at)].astype(np.float32), 3, axis=0)
    for k, step in enumerate((-np.inf, 0.0, np.inf)):
        near = at if step == 0 else np.nextafter(at, np.float32(step))
        rows[np.arange(k, len(rows), 3), columns] = near
    compiled = compile_forest(model)
    assert np.array_equal(getattr(compiled, method)(rows), reference(rows))


def test_rows_do_not_influence_each_other():
    compiled = compile_forest(fitted("regressor"))
    together = compiled.predict(PROBE[:50])
    alone = np.concatenate([compiled.predict(PROBE[i : i + 1]) for i in range(50)])
    assert np.array_equal(together, alone)


@pytest.mark.parametrize("shape", [(40, 1), (40, 2), (40, 1, 2), (100, 7, 3), (1, 5)])
def test_trees_are_added_one_after_another(shape):
    values = (
        np.random.default_rng(1).random(shape)
        * 10.0 ** np.arange(shape[0])[(slice(None), *([None] * (len(shape) - 1)))]
    )
    expected = np.zeros(shape[1:])
    for tree in values:
        expected = expected + tree
    assert np.array_equal(sum_in_tree_order(values), expected)


def test_a_hand_made_forest_of_a_lone_leaf_and_a_deeper_tree():
    """Tree 0 is a single leaf (100); tree 1 sends column 1 above 0.5 to leaf 1.0, else
    column 0 at or below -1.0 to leaf 2.0 and above to leaf 3.0."""
    trees = Trees(
        node_counts=np.array([1, 5]),
        left=np.array([-1, 1, 3, -1, -1, -1]),
        right=np.array([-1, 2, 4, -1, -1, -1]),
        feature=np.array([-1, 1, 0, -1, -1, -1]),
        threshold=np.array([0.0, 0.5, -1.0, 0.0, 0.0, 0.0]),
        n_features=2,
    )
    forest = ForestRegressor(trees, np.array([100.0, 0.0, 0.0, 1.0, 2.0, 3.0]))
    x = np.array([[-2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [5.0, 0.5], [-1.0, -7.0]])
    assert forest.predict(x).tolist() == [102 / 2, 103 / 2, 101 / 2, 103 / 2, 102 / 2]


def test_wrong_width_and_foreign_models_are_refused():
    compiled = compile_forest(fitted("classifier"))
    with pytest.raises(ValueError, match="6 features"):
        compiled.predict_proba(PROBE[:, :5])
    with pytest.raises(ValueError, match="finite"):
        compiled.predict_proba(np.where(PROBE[:3] > 0, np.nan, PROBE[:3]))
    with pytest.raises(ValueError, match="finite"):
        compiled.predict_proba(np.full((1, 6), 1e300))  # inf once rounded to float32
    with pytest.raises(ArtifactError, match="LinearRegression"):
        compile_forest(LinearRegression())


def test_trees_too_deep_to_pad_are_refused_at_training():
    unbounded = RandomForestClassifier(n_estimators=5, random_state=1).fit(X, Y_CLASS)
    with pytest.raises(ArtifactError, match=f"more than {MAX_SLOTS}.*max_depth"):
        compile_forest(unbounded)


# ------------------------------------------------------------------ the .npz files


@pytest.mark.parametrize("name", MODELS)
def test_a_written_forest_reads_back_with_the_same_answers(name, tmp_path: Path):
    model = fitted(name)
    reference, method = _answers(model)
    compiled = compile_forest(model)
    write_forest(tmp_path / "forest.npz", compiled, {"calibration": [1.5, 2.5]})
    back, extras = read_forest(tmp_path / "forest.npz", type(compiled), ("calibration",))
    assert type(back) is type(compiled)
    assert np.array_equal(getattr(back, method)(PROBE), reference(PROBE))
    assert extras["calibration"].tolist() == [1.5, 2.5]
    if isinstance(back, ForestClassifier):
        assert back.classes == tuple(str(c) for c in model.classes_)


def test_the_same_forest_writes_the_same_bytes(tmp_path: Path):
    compiled = compile_forest(fitted("regressor"))
    write_forest(tmp_path / "a.npz", compiled)
    write_forest(tmp_path / "b.npz", compiled)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_the_committed_forests_load_without_pickles():
    pm, cyber = PmModel.load(ARTIFACTS), CyberModel.load(ARTIFACTS)
    safety, energy = SafetyModel.load(ARTIFACTS), EnergyModel.load(ARTIFACTS)
    assert (pm.classifier.n_trees, pm.regressor.n_trees) == (40, 40)
    assert (cyber.forest.n_trees, energy.iforest.n_trees, safety.classifier.n_trees) == (
        100,
        50,
        60,
    )
    assert not list(ARTIFACTS.glob("*.joblib"))
    for name in ("pm_classifier", "pm_regressor", "safety_classifier", "cyber_model"):
        with np.load(ARTIFACTS / f"{name}.npz", allow_pickle=False) as data:
            assert int(data["format"]) == FORMAT
            assert all(data[k].dtype != object for k in data.files)


def _rewrite(path: Path, **changes: object) -> None:
    """The npz at `path` with some arrays replaced (None drops one), as numpy writes it."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)


@pytest.fixture
def written(tmp_path: Path) -> Path:
    path = tmp_path / "forest.npz"
    write_forest(path, compile_forest(fitted("regressor")), {"bias": 1.0})
    return path


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "is missing"),
        ("not-a-zip", "cannot read"),
        ("one-array", "cannot read"),
        ("truncated", "cannot read"),
        ("pickled-array", "cannot read"),
        ("other-format", f"format 2, this code reads format {FORMAT}"),
        ("no-format", "format None"),
        ("other-kind", "holds a classifier forest, expected a regressor"),
        ("no-extra", r"lacks the arrays \['bias'\]"),
        ("no-threshold", "threshold"),
        ("child-outside-its-tree", "outside its tree"),
        ("cycle", "not a tree"),
        ("column-outside-the-input", "column outside"),
        ("nan-leaf", "not finite"),
    ],
)
def test_a_broken_file_is_refused_naming_it(written: Path, breakage: str, message: str):
    if breakage == "missing":
        written.unlink()
    elif breakage == "not-a-zip":
        written.write_bytes(b"not a forest")
    elif breakage == "one-array":
        with written.open("wb") as fh:
            np.save(fh, np.zeros(3))
    elif breakage == "truncated":
        written.write_bytes(written.read_bytes()[:-200])
    elif breakage == "pickled-array":
        _rewrite(written, value=np.array([{"a": 1}], dtype=object))
    elif breakage == "other-format":
        _rewrite(written, format=np.asarray(FORMAT + 1))
    elif breakage == "no-format":
        _rewrite(written, format=None)
    elif breakage == "other-kind":
        _rewrite(written, kind=np.asarray("classifier"))
    elif breakage == "no-extra":
        _rewrite(written, bias=None)
    elif breakage == "no-threshold":
        _rewrite(written, threshold=None)
    elif breakage in ("child-outside-its-tree", "cycle"):
        with np.load(written) as data:
            left = data["left"].copy()
        left[0] = 10_000 if breakage == "child-outside-its-tree" else 0  # the root's own child
        _rewrite(written, left=left)
    elif breakage == "column-outside-the-input":
        with np.load(written) as data:
            feature = data["feature"].copy()
        feature[0] = 6
        _rewrite(written, feature=feature)
    elif breakage == "nan-leaf":
        with np.load(written) as data:
            value = data["value"].copy()
        value[-1] = np.nan
        _rewrite(written, value=value)
    with pytest.raises(ArtifactError, match=message) as err:
        read_forest(written, ForestRegressor, ("bias",))
    assert str(written) in str(err.value)


def test_every_kind_reads_only_as_itself(tmp_path: Path):
    for name, kind in (
        ("classifier", ForestClassifier),
        ("regressor", ForestRegressor),
        ("isolation_all_columns", ForestIsolation),
    ):
        path = tmp_path / f"{name}.npz"
        write_forest(path, compile_forest(fitted(name)))
        assert type(read_forest(path, kind)[0]) is kind
        for other in {ForestClassifier, ForestRegressor, ForestIsolation} - {kind}:
            with pytest.raises(ArtifactError, match=f"expected a {other.kind}"):
                read_forest(path, other)


def test_a_zip_of_other_files_is_refused(tmp_path: Path):
    path = tmp_path / "forest.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ArtifactError, match="format None"):
        read_forest(path, ForestRegressor)
