"""The PPE classifier: a .tflite CNN with one sigmoid output per label, served with LiteRT.

The bundled model comes from artifacts/ (verified by the manifest). An operator can serve
their own instead (settings `model_path` and `labels_path`): any .tflite that takes RGB
images [N, H, W, 3] as float32 pixel values 0..255 and returns [N, labels] probabilities,
with a labels file naming its outputs one per line. The labels must include helmet, boots,
pants and shirt, in any order; a `person` label, when present, is the probability that
anyone is in the frame (no violation without one); other labels are allowed and ignored. A
model without `person` is served as before: every frame is taken to show a worker. A Keras
file is not served: converting it needs TensorFlow, which the server does not carry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ...errors import ArtifactError
from ...ml.artifacts import load_entry, sha256_file
from ...ml.inference import LiteRtModel
from .logic import ITEMS

AGENT_ID = "ppe_agent"
PERSON = "person"
# What the code feeds the network: RGB pixels 0..255 as float32; the model scales them
# itself. Changing that contract must make old artifacts fail the manifest check.
FEATURES: tuple[str, ...] = ("rgb_0_255",)
MODEL_FILE = "ppe_cnn.tflite"
LABELS_FILE = "ppe_labels.txt"
CONVERT_HINT = (
    "convert it once with `python -m factory_mas convert MODEL.keras MODEL.tflite` "
    "(needs the train extra: pip install -e '.[train]') and point model_path at the .tflite"
)


def read_labels(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"labels file {path} cannot be read: {exc}") from exc
    labels = [line.strip().lower() for line in text.splitlines() if line.strip()]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ArtifactError(f"labels file {path} names {duplicates} more than once")
    missing = [item for item in ITEMS if item not in labels]
    if missing:
        raise ArtifactError(
            f"labels file {path} lacks {missing}; it must name {list(ITEMS)} (any order, "
            f"one per line, in the order of the model's outputs), it has {labels}"
        )
    return labels


class PpeModel:
    def __init__(self, net: LiteRtModel, labels: list[str], version: str) -> None:
        self.net = net
        self.labels = labels
        self.version = version
        # Output column of each item, so a model with its own label order scores the same.
        self.columns = [labels.index(item) for item in ITEMS]
        self.person_column = labels.index(PERSON) if PERSON in labels else None
        self.input_size = self._check_shapes()
        self._check_runs()

    @classmethod
    def load(cls, models_dir: Path, model_path: str = "", labels_path: str = "") -> PpeModel:
        if model_path:
            return cls.load_file(Path(model_path), Path(labels_path))
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        try:
            model, labels = entry.paths["model"], entry.paths["labels"]
        except KeyError as exc:
            raise ArtifactError(f"{AGENT_ID}: the manifest lists no {exc} file") from None
        return cls(LiteRtModel(model, entry.version), read_labels(labels), entry.version)

    @classmethod
    def load_file(cls, model: Path, labels: Path) -> PpeModel:
        """An operator's own model and labels file, named by settings."""
        if model.suffix.lower() in (".keras", ".h5"):
            raise ArtifactError(f"{model}: Keras files are not served; {CONVERT_HINT}")
        if not model.is_file():
            raise ArtifactError(f"PPE model {model} does not exist")
        names = read_labels(labels)
        digest = hashlib.sha256((sha256_file(model) + sha256_file(labels)).encode()).hexdigest()
        version = f"ppe-user-{digest[:10]}"
        return cls(LiteRtModel(model, version), names, version)

    def _check_shapes(self) -> tuple[int, int]:
        inp, out = self.net.input_shape, self.net.output_shape
        where = self.net.path
        if len(inp) != 4 or inp[3] != 3 or inp[1] <= 0 or inp[2] <= 0:
            raise ArtifactError(
                f"{where}: the input must be RGB images [N, height, width, 3] of a fixed "
                f"size, the model takes {list(inp)}"
            )
        if len(out) != 2 or out[1] != len(self.labels):
            raise ArtifactError(
                f"{where}: the model has outputs {list(out)} but the labels file names "
                f"{len(self.labels)} labels {self.labels}; each output needs one label"
            )
        return inp[1], inp[2]

    def _check_runs(self) -> None:
        """Score a grey frame: catches a quantised (uint8) input or logits instead of
        probabilities now, not on the first camera frame."""
        grey = np.full((1, *self.input_size, 3), 128, np.uint8)
        try:
            out = self.net.predict(grey)
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(
                f"{self.net.path}: the model does not run on a float32 RGB image: {exc}"
            ) from exc
        if not (np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()):
            raise ArtifactError(
                f"{self.net.path}: outputs {out[0].tolist()} on a grey image are not "
                "probabilities in 0..1; end the model with a sigmoid"
            )

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities [N, len(ITEMS)] in ITEMS order for RGB uint8 frames [N, H, W, 3]."""
        return self.scores(pixels)[0]

    def scores(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The items' probabilities [N, len(ITEMS)] and the probability [N] that a person
        is in each frame, None for a model without a person output."""
        out = self.net.predict(pixels)
        person = None if self.person_column is None else out[:, self.person_column]
        return out[:, self.columns], person
