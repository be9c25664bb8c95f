"""`python -m factory_mas train`: rebuild the models, from the simulator (seeded, repeatable)
or from a plant's own data, and install them only when every chosen one trained and beats
its baselines (or the caller forces it)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..agents.registry import AGENTS, AgentEntry, Trainer
from ..errors import ArtifactError, TrainingError
from ..ml.artifacts import read_manifest, write_manifest
from .cards import beats_baseline

log = logging.getLogger(__name__)

# Imported here, not by the registry: serving never loads scikit-learn or TensorFlow.
TRAINERS: dict[str, Trainer] = {e.agent_id: e.load_trainer() for e in AGENTS if e.trainer}
# A job trains one agent into the folder it is given and returns its manifest entry.
Job = Callable[[Path], dict[str, Any]]


@dataclass
class Run:
    """What a training run did: the entries installed (or that would have been), the
    agents left out and why, and the reason nothing was installed, if so."""

    out_dir: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failure: str = ""

    @property
    def installed(self) -> bool:
        return not self.failure and bool(self.entries)


def plant_agents(only: list[str] | None, photos: bool = False) -> list[AgentEntry[Any]]:
    """The agents a plant run trains: the telemetry ones, or with `photos` the camera ones;
    `only` narrows them and must name agents of that kind."""
    kind = [e for e in AGENTS if e.plant_trainer and e.reads_telemetry != photos]
    if not only:
        return kind
    by_id = {e.agent_id: e for e in kind}
    wrong = [a for a in only if a not in by_id]
    if wrong:
        what = "camera photos (--images)" if photos else "telemetry (--csv or --from-store)"
        raise TrainingError(
            f"{', '.join(wrong)} cannot be trained on {what}; the agents that can: "
            f"{', '.join(by_id)}"
        )
    return [by_id[a] for a in only]


def train_staged(out_dir: Path, jobs: Mapping[str, Job], *, force: bool, optional: bool) -> Run:
    """Run each job in a staging folder beside `out_dir`; install the results into `out_dir`
    only when every job succeeded and beats its baselines (or `force`). With `optional`, a
    job whose data cannot train it (TrainingError) is left out instead of failing the run.
    A failed run leaves `out_dir` as it was."""
    run = Run(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Beside out_dir so that installing is a rename on one file system.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-training-", dir=out_dir.parent))
    try:
        for agent_id, job in jobs.items():
            stage = staging / agent_id
            stage.mkdir()
            try:
                run.entries[agent_id] = job(stage)
            except TrainingError as exc:
                if not optional:
                    run.failure = f"{agent_id}: {exc}"
                    return run
                run.skipped[agent_id] = str(exc)
            except Exception as exc:  # a trainer's bug must not cost the active models
                log.exception("%s: training failed", agent_id)
                run.failure = f"{agent_id}: training failed: {type(exc).__name__}: {exc}"
                return run
        weak = [a for a, e in run.entries.items() if _refused(e.get("card"))]
        if weak and not force:
            run.failure = (
                f"{', '.join(weak)}: the model does not beat its baselines (see the card); "
                "the active models are kept (--force installs it anyway)"
            )
        elif not run.entries:
            run.failure = "no agent could be trained on this data"
        else:
            _install(staging, out_dir, run.entries)
        return run
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refused(entry_card: Mapping[str, Any] | None) -> bool:
    """Whether a card keeps its model out: it does not beat its baselines, unless nothing
    was learnt to compare (a card with no comparisons that says why, e.g. safety's limits
    only, which installs no classifier). A trainer that writes no card (a new agent's,
    before it has one) is not judged: `train` prints that it has none."""
    if not entry_card:
        return False
    if not entry_card.get("comparisons") and entry_card.get("why"):
        return False
    return not beats_baseline(entry_card)


def _install(staging: Path, out_dir: Path, entries: Mapping[str, dict[str, Any]]) -> None:
    """Move the new files in, then the merged manifest in one rename: a server reloading
    meanwhile finds old or new entries, each verified against its files' hashes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        manifest = read_manifest(out_dir)
    except ArtifactError:
        manifest = {"format": 1}
    models = manifest.setdefault("models", {})
    for agent_id, entry in entries.items():
        for meta in entry["files"].values():
            os.replace(staging / agent_id / meta["path"], out_dir / meta["path"])
        models[agent_id] = entry
    write_manifest(out_dir, manifest)


def simulator_jobs(only: list[str] | None) -> dict[str, Job]:
    return {agent: trainer for agent, trainer in TRAINERS.items() if not only or agent in only}


def plant_jobs(
    agents: list[AgentEntry[Any]], train: Callable[[Callable[..., dict[str, Any]], Path], Any]
) -> dict[str, Job]:
    """A job per agent calling its plant trainer through `train(trainer, stage)`; an agent
    without a plant trainer (yet) fails when its job runs, as its data would."""

    def job(entry: AgentEntry[Any]) -> Job:
        return lambda stage: train(entry.load_plant_trainer(), stage)

    return {entry.agent_id: job(entry) for entry in agents}
