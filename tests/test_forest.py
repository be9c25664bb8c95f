"""Compiled forests answer exactly what scikit-learn answers, for any batch size."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.ensemble import IsolationForest, RandomForestClassifier, RandomForestRegressor

from factory_mas.errors import ArtifactError
from factory_mas.forest import compile_forest

from .conftest import ARTIFACTS

RNG = np.random.default_rng(3)
X = RNG.normal(size=(3000, 6)) * [1, 10, 100, 0.1, 5, 1000]
Y_CLASS = (X[:, 0] + X[:, 1] / 10 + RNG.normal(size=3000) > 0.5).astype(int) + (X[:, 2] > 100)
Y_VALUE = X[:, 0] * 3 + np.sin(X[:, 1]) + RNG.normal(size=3000)
PROBE = RNG.normal(size=(1000, 6)) * [1, 10, 100, 0.1, 5, 1000] * 1.5


def _answers(model):
    if isinstance(model, RandomForestClassifier):
        return model.predict_proba, "predict_proba"
    if isinstance(model, RandomForestRegressor):
        return model.predict, "predict"
    return model.score_samples, "score_samples"


MODELS = {
    "classifier": RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0),
    "classifier_unbounded": RandomForestClassifier(n_estimators=5, random_state=1),
    "regressor": RandomForestRegressor(n_estimators=12, max_depth=9, random_state=0),
    "isolation_all_columns": IsolationForest(n_estimators=30, random_state=0),
    "isolation_column_subsets": IsolationForest(n_estimators=30, max_features=0.5, random_state=0),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_same_answers_as_scikit_learn(name, rows):
    model = MODELS[name]
    if not hasattr(model, "estimators_"):
        model.fit(X, Y_VALUE if isinstance(model, RandomForestRegressor) else Y_CLASS)
    reference, method = _answers(model)
    compiled = compile_forest(model)
    assert np.array_equal(getattr(compiled, method)(PROBE[:rows]), reference(PROBE[:rows]))


def test_rows_do_not_influence_each_other():
    model = MODELS["regressor"]
    model.fit(X, Y_VALUE)
    compiled = compile_forest(model)
    together = compiled.predict(PROBE[:50])
    alone = np.concatenate([compiled.predict(PROBE[i : i + 1]) for i in range(50)])
    assert np.array_equal(together, alone)


@pytest.mark.parametrize(
    "path", ["pm_classifier.joblib", "pm_regressor.joblib", "safety_classifier.joblib"]
)
def test_the_committed_models_compile_exactly(path):
    model = joblib.load(ARTIFACTS / path)
    probe = RNG.random((300, model.n_features_in_)) * 100
    reference, method = _answers(model)
    assert np.array_equal(getattr(compile_forest(model), method)(probe), reference(probe))


def test_wrong_width_and_foreign_models_are_refused():
    model = MODELS["classifier"].fit(X, Y_CLASS)
    with pytest.raises(ValueError, match="6 features"):
        compile_forest(model).predict_proba(PROBE[:, :5])
    with pytest.raises(ValueError, match="finite"):
        compile_forest(model).predict_proba(np.where(PROBE[:3] > 0, np.nan, PROBE[:3]))
    with pytest.raises(ArtifactError, match="LinearRegression"):
        from sklearn.linear_model import LinearRegression

        compile_forest(LinearRegression())
