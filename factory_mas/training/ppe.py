"""Train the PPE classifier on synthetic renders and export it to .tflite for LiteRT.

A small CNN with one sigmoid per item (multi-label: any combination of items can be
missing). The held-out set is rendered from another seed, so its workers, poses, colours
and scenes are all new; its metrics are measured on the exported .tflite, the file that is
served, not on the Keras model.

TensorFlow is imported inside the functions: it takes seconds, and importing the trainers
(or the renderer) must not cost that.
"""

from __future__ import annotations

import logging
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np

from ..agents.ppe.logic import ITEMS
from ..agents.ppe.model import AGENT_ID, FEATURES, LABELS_FILE, MODEL_FILE
from ..ml.artifacts import write_entry
from ..ml.inference import LiteRtModel
from ..sim.ppe_images import render_set
from .common import to_tflite

log = logging.getLogger(__name__)


def build_network(size: int) -> Any:
    import keras
    from keras import layers

    def block(x: Any, filters: int, kernel: int = 3, strides: int = 1) -> Any:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        # Batch norm reached on the third epoch what plain ReLU blocks reached on the ninth;
        # the converter folds it into the convolutions, so serving pays nothing for it. The
        # default momentum (0.99) leaves the moving statistics, the ones served, unsettled
        # after a few hundred steps; a short run then scores like a coin.
        return layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))

    inputs = keras.Input((size, size, 3), name="image")
    # Scaling lives in the model, so serving feeds plain 0..255 pixels and an operator's
    # own model states its preprocessing in one place too.
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    # Mirrored workers are still workers: twice the poses for free, a no-op when serving.
    x = layers.RandomFlip("horizontal")(x)
    x = layers.MaxPooling2D()(block(x, 24, kernel=5, strides=2))
    x = layers.MaxPooling2D()(block(x, 48))
    x = layers.MaxPooling2D()(block(x, 64))
    # Max rather than average: "is there a hard hat anywhere" is a question of presence,
    # and averaging dilutes a helmet a few pixels wide into the background.
    x = layers.GlobalMaxPooling2D()(block(x, 96))
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(len(ITEMS), activation="sigmoid", name="ppe")(x)
    return keras.Model(inputs, outputs)


def fit(x: np.ndarray, y: np.ndarray, seed: int, epochs: int, batch_size: int = 32) -> Any:
    """The trained Keras model; the same inputs and seed give the same weights."""
    import keras
    import tensorflow as tf

    # Layer names are numbered per process (conv2d, conv2d_1, ...) and end up in the
    # .tflite: a second training in one process would write other bytes without this.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = build_network(x.shape[1])
    steps = epochs * -(-len(x) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(4e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="binary_crossentropy")
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return model


def item_metrics(truth: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    predicted = probabilities >= 0.5
    actual = truth >= 0.5
    metrics: dict[str, float] = {}
    for i, item in enumerate(ITEMS):
        tp = float((predicted[:, i] & actual[:, i]).sum())
        precision = tp / max(1.0, float(predicted[:, i].sum()))
        recall = tp / max(1.0, float(actual[:, i].sum()))
        metrics[f"{item}_accuracy"] = round(float((predicted[:, i] == actual[:, i]).mean()), 4)
        metrics[f"{item}_f1"] = round(2 * precision * recall / max(1e-9, precision + recall), 4)
    metrics["all_items_correct"] = round(float((predicted == actual).all(axis=1).mean()), 4)
    return metrics


def train_ppe(
    out_dir: Path,
    seed: int = 1234,
    n_train: int = 12000,
    n_test: int = 2000,
    epochs: int = 6,
    image_size: int = 64,
    batch_size: int = 32,
) -> dict[str, Any]:
    x_train, y_train = render_set(n_train, seed, image_size)
    x_test, y_test = render_set(n_test, seed + 1, image_size)
    model = fit(x_train, y_train, seed, epochs, batch_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"model": out_dir / MODEL_FILE, "labels": out_dir / LABELS_FILE}
    files["model"].write_bytes(to_tflite(model))
    files["labels"].write_text("".join(f"{item}\n" for item in ITEMS), encoding="utf-8")

    served = LiteRtModel(files["model"], "")
    probabilities = served.predict(x_test)
    metrics = {
        **item_metrics(y_test, probabilities),
        "train_images": n_train,
        "test_images": n_test,
        "model_bytes": files["model"].stat().st_size,
    }
    entry = write_entry(
        out_dir,
        AGENT_ID,
        files,
        FEATURES,
        metrics,
        # The versions are a record, not a load condition: a .tflite is a versioned
        # flatbuffer that any LiteRT reads, and the server needs neither TensorFlow nor a
        # particular Pillow to run it.
        training={
            "seed": seed,
            "held_out": f"renders from seed {seed + 1}",
            "epochs": epochs,
            "batch_size": batch_size,
            "image_size": image_size,
            "labels": list(ITEMS),
            **{lib: dist_version(lib) for lib in ("tensorflow-cpu", "keras", "pillow", "numpy")},
        },
    )
    log.info("ppe_agent: %s", metrics)
    return entry
