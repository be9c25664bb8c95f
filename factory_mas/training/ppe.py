"""Train the PPE classifier and export it to .tflite for LiteRT: on synthetic renders
(`train`), or on a plant's own labelled photos (`train --images DIR --labels FILE`).

A small CNN with one sigmoid per item (multi-label: any combination of items can be
missing) and one for "a person is in the frame". Renders without a worker leave the items'
labels unknown (NaN): the items' loss counts only the labels that are known, which is also
how a blank cell in a plant's labels file is read. Held-out sets are rendered from other
seeds, so their workers, poses, colours and scenes are all new; metrics are measured on the
exported .tflite, the file that is served, not on the Keras model, and each sits beside the
majority class in the model card.

TensorFlow is imported inside the functions: it takes seconds, and importing the trainers
(or the renderer) must not cost that.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..agents.ppe.model import AGENT_ID, FEATURES, LABELS_FILE, MODEL_FILE
from ..errors import TrainingError
from ..ml.images import to_model_input
from ..ml.inference import LiteRtModel
from ..sim.ppe_images import ITEMS, LABELS, PERSON, SCALES, render_set
from .cards import Comparison, card
from .common import save_models, to_tflite
from .plant import PlantOptions

log = logging.getLogger(__name__)

# Renders without a worker in the training set: enough for the person output to learn
# that a cup or a hard hat on a shelf is nobody.
EMPTY_SHARE = 0.25
PHOTO_FORMATS = ("JPEG", "PNG")
LABEL_COLUMNS = ("file", *LABELS)


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
    outputs = layers.Dense(len(LABELS), activation="sigmoid", name="ppe")(x)
    return keras.Model(inputs, outputs)


def masked_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy over the known labels only (NaN = unknown)."""
    import keras
    from keras import ops

    known = ops.logical_not(ops.isnan(y_true))
    truth = ops.where(known, y_true, ops.zeros_like(y_true))
    p = ops.clip(y_pred, keras.config.epsilon(), 1.0 - keras.config.epsilon())
    loss = -(truth * ops.log(p) + (1.0 - truth) * ops.log(1.0 - p))
    weight = ops.cast(known, loss.dtype)
    return ops.sum(loss * weight, axis=-1) / ops.maximum(ops.sum(weight, axis=-1), 1.0)


def fit(x: np.ndarray, y: np.ndarray, seed: int, epochs: int, batch_size: int = 32) -> Any:
    """The trained Keras model; the same inputs and seed give the same weights. `y` holds
    one column per LABELS entry, NaN where unknown."""
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
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=masked_binary_crossentropy)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return model


def label_metrics(
    truth: np.ndarray, probabilities: np.ndarray, prefix: str = ""
) -> dict[str, float]:
    """Accuracy and F1 per label over the rows where it is known, and the share of worker
    frames with every item right."""
    metrics: dict[str, float] = {}
    for i, label in enumerate(LABELS):
        known = ~np.isnan(truth[:, i])
        if not known.any():
            continue
        predicted, actual = probabilities[known, i] >= 0.5, truth[known, i] >= 0.5
        tp = float((predicted & actual).sum())
        precision = tp / max(1.0, float(predicted.sum()))
        recall = tp / max(1.0, float(actual.sum()))
        metrics[f"{prefix}{label}_accuracy"] = round(float((predicted == actual).mean()), 4)
        metrics[f"{prefix}{label}_f1"] = round(
            2 * precision * recall / max(1e-9, precision + recall), 4
        )
    items = truth[:, : len(ITEMS)]
    workers = ~np.isnan(items).any(axis=1)
    if workers.any():
        right = (probabilities[workers, : len(ITEMS)] >= 0.5) == (items[workers] >= 0.5)
        metrics[f"{prefix}all_items_correct"] = round(float(right.all(axis=1).mean()), 4)
    return metrics


def majority_comparisons(
    y_train: np.ndarray,
    y_test: np.ndarray,
    probabilities: np.ndarray,
    data: str,
    labels: Sequence[str] = LABELS,
    gate: bool = True,
) -> list[Comparison]:
    """Per label, held-out accuracy beside always answering the training set's majority
    class, over the held-out rows where the label is known."""
    out = []
    for label in labels:
        i = LABELS.index(label)
        known = ~np.isnan(y_test[:, i])
        seen = y_train[~np.isnan(y_train[:, i]), i]
        if not known.any() or not len(seen):
            continue
        actual = y_test[known, i] >= 0.5
        majority = bool(seen.mean() >= 0.5)
        out.append(
            Comparison(
                metric=f"{label}_accuracy",
                model=float(((probabilities[known, i] >= 0.5) == actual).mean()),
                baseline="majority class",
                baseline_value=float((actual == majority).mean()),
                lower_is_better=False,
                data=f"{data} ({int(known.sum())} frames)",
                gate=gate,
            )
        )
    return out


def _export(model: Any, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"model": out_dir / MODEL_FILE, "labels": out_dir / LABELS_FILE}
    files["model"].write_bytes(to_tflite(model))
    files["labels"].write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
    return files


def _libraries() -> dict[str, str]:
    # The versions are a record, not a load condition: a .tflite is a versioned flatbuffer
    # that any LiteRT reads, and the server needs neither TensorFlow nor a particular Pillow.
    return {lib: dist_version(lib) for lib in ("tensorflow-cpu", "keras", "pillow", "numpy")}


def train_ppe(
    out_dir: Path,
    seed: int = 1234,
    n_train: int = 12000,
    n_test: int = 2000,
    epochs: int = 7,
    image_size: int = 64,
    batch_size: int = 32,
) -> dict[str, Any]:
    x_train, y_train = render_set(n_train, seed, image_size, EMPTY_SHARE, SCALES)
    model = fit(x_train, y_train, seed, epochs, batch_size)
    files = _export(model, out_dir)
    served = LiteRtModel(files["model"], "")

    # Three held-out sets: full-size workers (comparable with earlier models), workers at
    # 40 % of that height, and half empty scenes (with distractors) for the person output.
    held_out = {
        "full": ("held-out renders, full-size workers", render_set(n_test, seed + 1, image_size)),
        "small": (
            "held-out renders, workers at 40 % scale",
            render_set(n_test // 2, seed + 2, image_size, 0.0, (0.4, 0.4)),
        ),
        "scenes": (
            "held-out renders, half empty scenes, workers at 30-100 % scale",
            render_set(n_test // 2, seed + 3, image_size, 0.5, SCALES),
        ),
    }
    metrics: dict[str, Any] = {}
    comparisons: list[Comparison] = []
    for key, (data, (x, y)) in held_out.items():
        p = served.predict(x)
        metrics.update(label_metrics(y, p, "" if key == "full" else f"{key}_"))
        if key == "full":
            comparisons += majority_comparisons(y_train, y, p, data, ITEMS)
        elif key == "small":
            # Informs: a worker a fifth of the frame high is a few pixels of helmet.
            comparisons += majority_comparisons(y_train, y, p, data, ITEMS, gate=False)
        else:
            comparisons += majority_comparisons(y_train, y, p, data, (PERSON,))
            empty = y[:, LABELS.index(PERSON)] == 0
            metrics["empty_scenes_person_rate"] = round(
                float((p[empty, LABELS.index(PERSON)] >= 0.5).mean()), 4
            )
    metrics.update(
        train_images=n_train, test_images=n_test, model_bytes=files["model"].stat().st_size
    )
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        {
            "source": f"{n_train} synthetic renders ({EMPTY_SHARE:.0%} empty, workers at "
            f"{SCALES[0]:.0%}-{SCALES[1]:.0%} scale)",
            "held_out": f"renders from seeds {seed + 1}..{seed + 3}",
        },
        {
            "seed": seed,
            "epochs": epochs,
            "batch_size": batch_size,
            "image_size": image_size,
            "labels": list(LABELS),
            **_libraries(),
        },
        written=files,
        card=card(comparisons, train_images=n_train),
    )


def read_photos(
    images_dir: Path, labels_csv: Path, size: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A plant's labelled photos as model input [N, size, size, 3] and labels [N, LABELS]
    (NaN = blank, unknown), with each photo's file name. Raises TrainingError naming the
    line and column of a bad row, or the file of an unreadable image."""
    try:
        with labels_csv.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainingError(f"labels file {labels_csv} cannot be read: {exc}") from None
    if not rows:
        raise TrainingError(f"{labels_csv} is empty; the header is {','.join(LABEL_COLUMNS)}")
    header = [h.strip().lower() for h in rows[0]]
    if sorted(header) != sorted(LABEL_COLUMNS):
        raise TrainingError(
            f"{labels_csv} line 1: the header must name the columns {','.join(LABEL_COLUMNS)} "
            f"(any order), it has {','.join(header)}"
        )
    images, labels, names = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{labels_csv} line {line}"
        if len(row) != len(header):
            raise TrainingError(f"{where}: {len(row)} cells, the header has {len(header)}")
        cells = dict(zip(header, (c.strip() for c in row), strict=True))
        values = []
        for label in LABELS:
            cell = cells[label]
            if cell not in ("1", "0", ""):
                raise TrainingError(
                    f"{where}, column {label}: {cell!r:.40} is not 1 (worn/present), "
                    "0 or blank (unknown)"
                )
            values.append(float(cell) if cell else np.nan)
        if values[-1] == 0 and any(v == 1 for v in values[:-1]):
            worn = [label for label, v in zip(ITEMS, values, strict=False) if v == 1]
            raise TrainingError(
                f"{where}, column {PERSON}: 0 (nobody in the photo), yet {', '.join(worn)} "
                "is marked worn"
            )
        if np.isnan(values).all():
            raise TrainingError(f"{where}: every label is blank; give at least one 1 or 0")
        name = cells["file"]
        path = images_dir / name
        if not name or not path.is_file():
            raise TrainingError(f"{where}, column file: no image {name!r} in {images_dir}")
        try:
            with Image.open(path) as image:
                if image.format not in PHOTO_FORMATS:
                    raise TrainingError(
                        f"{where}, column file: {name} is {image.format}, not JPEG or PNG"
                    )
                images.append(to_model_input(image, (size, size)))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise TrainingError(
                f"{where}, column file: {name} cannot be read as an image: {exc}"
            ) from None
        labels.append(values)
        names.append(name)
    if len(images) < 2:
        raise TrainingError(
            f"{labels_csv} labels {len(images)} photo(s); at least 2 are needed (one held out)"
        )
    return np.stack(images), np.array(labels, np.float32), names


def train_ppe_images(
    images_dir: Path,
    labels_csv: Path,
    out_dir: Path,
    options: PlantOptions,
    n_renders: int = 4000,
    epochs: int = 6,
    image_size: int = 64,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Train the PPE model on a plant's labelled photos, mixed with renders so that a few
    hundred photos still give a model that knows every item and empty scenes; the card
    compares each label's accuracy on held-out photos with the majority class.

    The shipped .tflite holds no trainable weights, so the network is trained again from
    the same architecture and render recipe, with the photos added (repeated so that they
    weigh about as much as the renders)."""
    x, y, names = read_photos(images_dir, labels_csv, image_size)
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(x))
    n_test = min(len(x) - 1, max(1, round(options.held_out_share * len(x))))
    test, train = order[:n_test], order[n_test:]
    repeats = max(1, -(-n_renders // len(train)))
    x_renders, y_renders = render_set(n_renders, options.seed, image_size, EMPTY_SHARE, SCALES)
    x_fit = np.concatenate([x_renders, np.repeat(x[train], repeats, axis=0)])
    y_fit = np.concatenate([y_renders, np.repeat(y[train], repeats, axis=0)])
    model = fit(x_fit, y_fit, options.seed, epochs, batch_size)
    files = _export(model, out_dir)
    p = LiteRtModel(files["model"], "").predict(x[test])
    data = f"held-out photos ({n_test} of {len(x)}, drawn with seed {options.seed})"
    comparisons = majority_comparisons(y[train], y[test], p, data)
    metrics = {
        **label_metrics(y[test], p),
        "train_photos": len(train),
        "test_photos": n_test,
        "renders": n_renders,
        "model_bytes": files["model"].stat().st_size,
    }
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        {"source": f"{labels_csv.name}: {len(x)} photos in {images_dir}", "held_out": data},
        {
            "seed": options.seed,
            "epochs": epochs,
            "batch_size": batch_size,
            "image_size": image_size,
            "renders": n_renders,
            "held_out_photos": sorted(names[i] for i in test),
            "labels": list(LABELS),
            **_libraries(),
        },
        written=files,
        card=card(comparisons, photos=len(x), held_out_photos=n_test),
    )
