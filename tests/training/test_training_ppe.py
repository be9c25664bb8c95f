"""PPE training: seeded and repeatable, accurate on held-out renders, and the exported
.tflite answers like the Keras model it came from.

Small runs keep these tests quick; the code path is the one `python -m factory_mas train`
runs with the full sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from factory_mas.agents.ppe.logic import ITEMS
from factory_mas.agents.ppe.model import AGENT_ID, FEATURES, LABELS_FILE, MODEL_FILE, PpeModel
from factory_mas.errors import ArtifactError
from factory_mas.ml.artifacts import MANIFEST, load_entry
from factory_mas.ml.inference import LiteRtModel
from factory_mas.sim.ppe_images import render_set
from factory_mas.training.common import to_tflite
from factory_mas.training.ppe import fit, train_ppe
from tests.support.paths import ARTIFACTS

# Training fits real models (scikit-learn, TensorFlow): minutes, so it runs with the
# integration layer.
pytestmark = pytest.mark.integration

TINY = {"n_train": 192, "n_test": 64, "epochs": 1, "image_size": 32}
# About 20 s of training: enough for every item to pass 0.9 on new renders.
SMALL = {"n_train": 2000, "n_test": 300, "epochs": 8}
OTHER_ENTRY = {
    "version": "pm-0123456789",
    "files": {"classifier": {"path": "pm_classifier.npz", "sha256": "ab" * 32}},
    "features": ["temperature_c"],
    "metrics": {"failure_roc_auc": 0.9},
    "training": {"seed": 1},
}


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def twice(tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny training into two folders; the second already lists another agent."""
    first = tmp_path_factory.mktemp("first")
    second = tmp_path_factory.mktemp("second")
    (second / MANIFEST).write_text(
        json.dumps({"format": 1, "models": {"pm_agent": OTHER_ENTRY}}), encoding="utf-8"
    )
    train_ppe(first, seed=7, **TINY)
    train_ppe(second, seed=7, **TINY)
    return first, second


def test_training_twice_writes_identical_files(twice) -> None:
    first, second = twice
    for name in (MODEL_FILE, LABELS_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert manifest_of(first)["models"][AGENT_ID] == manifest_of(second)["models"][AGENT_ID]


def test_training_keeps_the_other_entries(twice) -> None:
    _, second = twice
    models = manifest_of(second)["models"]
    assert models["pm_agent"] == OTHER_ENTRY
    assert set(models) == {"pm_agent", AGENT_ID}


def test_the_entry_describes_what_was_written(twice) -> None:
    first, _ = twice
    entry = manifest_of(first)["models"][AGENT_ID]
    assert (first / LABELS_FILE).read_text(encoding="utf-8").split() == list(ITEMS)
    assert entry["features"] == list(FEATURES)
    assert set(entry["files"]) == {"model", "labels"}
    # The server needs no TensorFlow: the versions are a record, not a load condition.
    assert "libraries" not in entry
    assert {"tensorflow-cpu", "keras", "seed", "image_size"} <= set(entry["training"])
    for item in ITEMS:
        assert 0.0 <= entry["metrics"][f"{item}_accuracy"] <= 1.0
        assert 0.0 <= entry["metrics"][f"{item}_f1"] <= 1.0
    assert entry["metrics"]["test_images"] == TINY["n_test"]

    model = PpeModel.load(first)
    assert model.version == entry["version"] == load_entry(first, AGENT_ID, FEATURES).version
    assert model.input_size == (32, 32)
    x, _ = render_set(3, seed=99, size=32)
    assert model.predict(x).shape == (3, len(ITEMS))


def test_a_tampered_artifact_is_refused(twice, tmp_path: Path) -> None:
    first, _ = twice
    for name in (MANIFEST, MODEL_FILE, LABELS_FILE):
        (tmp_path / name).write_bytes((first / name).read_bytes())
    (tmp_path / LABELS_FILE).write_text("boots\nhelmet\npants\nshirt\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match="sha256"):
        PpeModel.load(tmp_path)


def test_a_small_run_learns_every_item_and_litert_answers_like_keras(tmp_path: Path) -> None:
    x, y = render_set(SMALL["n_train"], seed=3)
    x_test, y_test = render_set(SMALL["n_test"], seed=4)
    model = fit(x, y, seed=3, epochs=SMALL["epochs"])
    expected = model.predict(x_test.astype(np.float32), verbose=0)
    path = tmp_path / "model.tflite"
    path.write_bytes(to_tflite(model))
    served = LiteRtModel(path, "").predict(x_test)

    np.testing.assert_allclose(served, expected, atol=1e-4)
    accuracy = dict(zip(ITEMS, ((served >= 0.5) == (y_test >= 0.5)).mean(axis=0), strict=True))
    assert all(a > 0.9 for a in accuracy.values()), accuracy


def test_the_committed_model_meets_the_bar() -> None:
    entry = manifest_of(ARTIFACTS)["models"][AGENT_ID]
    for item in ITEMS:
        assert entry["metrics"][f"{item}_accuracy"] > 0.95, item
    assert (ARTIFACTS / MODEL_FILE).stat().st_size < 1_000_000
    assert PpeModel.load(ARTIFACTS).input_size == (64, 64)


# Keras 3.15 itself trips numpy 2's __array__ copy deprecation inside save/predict.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_convert_turns_an_operators_keras_model_into_one_the_agent_serves(tmp_path: Path) -> None:
    import subprocess
    import sys

    import keras

    keras.utils.set_random_seed(3)
    labels = ["vest", "shirt", "helmet", "pants", "boots"]
    net = keras.Sequential(
        [
            keras.Input((40, 48, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(labels), activation="sigmoid"),
        ]
    )
    net.save(tmp_path / "site.keras")
    (tmp_path / "site.txt").write_text("\n".join(labels) + "\n")

    done = subprocess.run(
        [sys.executable, "-m", "factory_mas", "convert", "site.keras", "site.tflite"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    served = PpeModel.load_file(tmp_path / "site.tflite", tmp_path / "site.txt")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3)).astype(np.float32)
    expected = net.predict(pixels, verbose=0)[:, [labels.index(item) for item in ITEMS]]
    np.testing.assert_allclose(served.predict(pixels), expected, atol=1e-5)


def test_a_keras_file_in_the_settings_is_refused_with_the_way_to_convert(tmp_path: Path) -> None:
    (tmp_path / "site.keras").write_bytes(b"not used")
    (tmp_path / "site.txt").write_text("helmet\nboots\npants\nshirt\n")
    with pytest.raises(ArtifactError, match="factory_mas convert"):
        PpeModel.load_file(tmp_path / "site.keras", tmp_path / "site.txt")
