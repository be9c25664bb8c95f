"""Trained model files and their manifest: written by `train`, verified before serving.

artifacts/manifest.json lists, per agent, each file's sha256, the feature list the model
was fitted on, held-out metrics and how it was trained. A model is served only when all of
that matches the code, so a stale or tampered file fails loudly at start-up instead of
scoring quietly wrong.

Forests are .npz files of numpy arrays (factory_mas.ml.forest), read without pickle and
without scikit-learn, so unlike the pickles they replace they tie serving to no library
version; their format number is checked instead. TensorFlow models are .tflite files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from .forest import Forest, read_forest

MANIFEST = "manifest.json"
RETRAIN = "rebuild them with `python -m factory_mas train`"
# Artifact folders written before the forests were compiled hold scikit-learn pickles.
UPGRADE = "convert them with `python -m factory_mas.training.upgrade <models dir>`"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    agent_id: str
    version: str
    paths: Mapping[str, Path]
    features: tuple[str, ...]
    metrics: Mapping[str, Any]


def read_manifest(models_dir: Path) -> dict[str, Any]:
    path = models_dir / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing; {RETRAIN}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); {RETRAIN}") from None


def load_entry(models_dir: Path, agent_id: str, features: Sequence[str]) -> ModelEntry:
    """The verified manifest entry of one agent, or ArtifactError saying what is off."""
    entry = read_manifest(models_dir).get("models", {}).get(agent_id)
    if entry is None:
        raise ArtifactError(f"{models_dir / MANIFEST} has no entry for {agent_id}; {RETRAIN}")
    if list(entry.get("features", [])) != list(features):
        raise ArtifactError(
            f"{agent_id}: the model was trained on features {entry.get('features')} but this "
            f"code computes {list(features)}; {RETRAIN}"
        )
    paths: dict[str, Path] = {}
    for role, meta in entry.get("files", {}).items():
        path = models_dir / meta["path"]
        if not path.is_file():
            raise ArtifactError(f"{agent_id}: {path} is missing; {RETRAIN}")
        actual = sha256_file(path)
        if actual != meta["sha256"]:
            raise ArtifactError(
                f"{agent_id}: {path} has sha256 {actual[:12]}..., the manifest says "
                f"{meta['sha256'][:12]}...; the file is corrupt or stale; {RETRAIN}"
            )
        paths[role] = path
    return ModelEntry(agent_id, entry["version"], paths, tuple(features), entry.get("metrics", {}))


def write_entry(
    models_dir: Path,
    agent_id: str,
    files: Mapping[str, Path],
    features: Sequence[str],
    metrics: Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record one agent's freshly written files in the manifest (other entries are kept)."""
    hashed = {role: {"path": p.name, "sha256": sha256_file(p)} for role, p in sorted(files.items())}
    combined = hashlib.sha256("".join(f["sha256"] for f in hashed.values()).encode()).hexdigest()
    entry = {
        "version": f"{agent_id.removesuffix('_agent')}-{combined[:10]}",
        "files": hashed,
        "features": list(features),
        "metrics": dict(metrics),
        "training": dict(training or {}),
    }
    try:
        manifest = read_manifest(models_dir)
    except ArtifactError:
        manifest = {}
    manifest.setdefault("format", 1)
    manifest.setdefault("models", {})[agent_id] = entry
    write_manifest(models_dir, manifest)
    return entry


def write_manifest(models_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest in one step: a server reloading meanwhile sees old or new."""
    tmp = models_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, models_dir / MANIFEST)


def role_path(entry: ModelEntry, role: str) -> Path:
    """The verified file of one role of an entry; ArtifactError if the manifest has none."""
    try:
        return entry.paths[role]
    except KeyError:
        raise ArtifactError(
            f"{entry.agent_id}: the manifest lists no {role!r} file; {RETRAIN}"
        ) from None


def load_forest(
    entry: ModelEntry, role: str, kind: type[Forest], extras: Sequence[str] = ()
) -> tuple[Forest, dict[str, np.ndarray]]:
    """One verified compiled forest of an entry and the named arrays saved with it."""
    path = role_path(entry, role)
    if path.suffix == ".joblib":
        raise ArtifactError(
            f"{entry.agent_id}: {path} is a scikit-learn pickle; {UPGRADE} or {RETRAIN}"
        )
    try:
        return read_forest(path, kind, extras)
    except ArtifactError as exc:
        raise ArtifactError(f"{entry.agent_id}: {exc}; {RETRAIN}") from exc
