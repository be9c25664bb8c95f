"""Convert a models folder of scikit-learn pickles to the compiled .npz forests served now.

Releases before the forests were compiled wrote `.joblib` pickles. This rewrites each as
the .npz the agents load, compiled from the very forest in the pickle, so the models, their
answers, versions and metrics stay exactly as trained. Run it once per models folder:

    python -m factory_mas.training.upgrade artifacts/

It needs the `train` extra, and scikit-learn at the minor version that wrote the pickles.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from ..errors import ArtifactError
from ..ml.artifacts import load_entry, read_manifest, sha256_file, write_manifest
from ..ml.forest import CompiledForest, write_forest
from .forests import compile_forest


def _minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def _compiled(pickled: Any) -> tuple[CompiledForest, dict[str, np.ndarray]]:
    """The forest of a pickle and the arrays it was bundled with (cyber's calibration)."""
    if isinstance(pickled, dict) and "forest" in pickled:
        extras = {k: np.asarray(v, np.float64) for k, v in pickled.items() if k != "forest"}
        return compile_forest(pickled["forest"]), extras
    return compile_forest(pickled), {}


def upgrade(models_dir: Path) -> list[str]:
    """Convert every pickle the manifest lists; the agents converted, in manifest order.

    The pickles are deleted only after the new manifest is in place. The `libraries` the
    old manifest demanded at load time become a record under `training`.
    """
    manifest = read_manifest(models_dir)
    converted, pickles = [], []
    for agent_id, entry in manifest.get("models", {}).items():
        wrote = entry.pop("libraries", {})
        old = {r: m for r, m in entry.get("files", {}).items() if m["path"].endswith(".joblib")}
        if not old:
            continue
        for lib, v in wrote.items():
            if _minor(version(lib)) != _minor(v):
                raise ArtifactError(
                    f"{agent_id}: the pickles were written by {lib} {v}, this is "
                    f"{version(lib)}; install {lib}=={_minor(v)}.* to convert them"
                )
        # Only files whose sha256 matches the manifest are worth converting.
        paths = load_entry(models_dir, agent_id, entry["features"]).paths
        for role in old:
            forest, extras = _compiled(joblib.load(paths[role]))
            npz = paths[role].with_suffix(".npz")
            write_forest(npz, forest, extras)
            entry["files"][role] = {"path": npz.name, "sha256": sha256_file(npz)}
            pickles.append(paths[role])
        entry.setdefault("training", {}).update(wrote)
        converted.append(agent_id)
    write_manifest(models_dir, manifest)
    for path in pickles:
        path.unlink()
    return converted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factory_mas.training.upgrade")
    parser.add_argument("models_dir", type=Path, help="folder holding manifest.json")
    args = parser.parse_args(argv)
    try:
        converted = upgrade(args.models_dir)
    except ArtifactError as exc:
        print(f"upgrade: {exc}", file=sys.stderr)
        return 1
    print(f"upgrade: converted {', '.join(converted) or 'nothing'} in {args.models_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
