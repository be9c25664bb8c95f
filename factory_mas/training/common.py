"""What every trainer shares: the held-out split and how a model's files are saved."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from ..ml.artifacts import read_manifest, write_entry, write_manifest
from ..ml.forest import CompiledForest, write_forest

log = logging.getLogger(__name__)


def held_out_from(machines: int) -> int:
    """The first machine id of the held-out fifth: metrics come from machines never seen
    in training, each with its own baseline, as a new line in a plant would be."""
    return machines * 4 // 5 + 1


def is_held_out(machine_id: np.ndarray, machines: int) -> np.ndarray:
    return machine_id >= held_out_from(machines)


@dataclass(frozen=True)
class Simulation:
    """The simulated plant a model learnt from, recorded with it."""

    seed: int
    machines: int
    ticks: int
    step_minutes: float

    def record(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "simulated_machines": self.machines,
            "ticks": self.ticks,
            "step_minutes": self.step_minutes,
            "held_out": f"machines {held_out_from(self.machines)}..{self.machines}",
        }


@dataclass(frozen=True)
class ForestFile:
    """A compiled forest to save as `name`, with the named arrays trained alongside it."""

    name: str
    forest: CompiledForest
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)


def save_models(
    out_dir: Path,
    agent_id: str,
    features: Sequence[str],
    metrics: Mapping[str, Any],
    trained_on: Simulation | Mapping[str, Any],
    training: Mapping[str, Any],
    forests: Mapping[str, ForestFile] | None = None,
    written: Mapping[str, Path] | None = None,
    card: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Save `forests` ({role: ForestFile}) as .npz, add the `written` files, and record all
    of them with metrics, the model card and how they were trained in the manifest.
    `trained_on` is the simulated plant, or for a plant's own data what describes it
    ({"source": ..., "held_out": ...}). Returns the manifest entry."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = dict(written or {})
    for role, saved in (forests or {}).items():
        files[role] = out_dir / saved.name
        write_forest(files[role], saved.forest, saved.extras)
    # scikit-learn fitted the forests and TensorFlow made the .tflite files; serving needs
    # neither, so their versions are a record in `training`, not a load condition.
    fitted_with = {"scikit-learn": version("scikit-learn")} if forests else {}
    origin = trained_on.record() if isinstance(trained_on, Simulation) else dict(trained_on)
    entry = write_entry(
        out_dir,
        agent_id,
        files,
        features,
        metrics,
        training={**fitted_with, **training, **origin},
    )
    if card is not None:
        # A second write of the manifest, since write_entry records no card.
        entry["card"] = dict(card)
        manifest = read_manifest(out_dir)
        manifest["models"][agent_id] = entry
        write_manifest(out_dir, manifest)
    log.info("%s: %s", agent_id, metrics)
    return entry


def to_tflite(model: Any) -> bytes:
    """A Keras model as .tflite bytes for LiteRT, traced in inference mode."""
    import keras
    import tensorflow as tf

    # An explicit inference endpoint: RandomFlip defaults to training=True in Keras 3, and
    # plain model.export() then traced the whole graph in training mode (batch statistics,
    # random ops the converter refuses). Through a SavedModel because converting a concrete
    # function of a Keras 3 model directly gave NaN outputs with TensorFlow 2.21.
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
