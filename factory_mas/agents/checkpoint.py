"""An agent's checkpoint: which of its memory is saved to the store, and in what format.

BaseAgent saves one every `checkpoint_interval_s` while something changed, and at stop;
it restores the last one at start, then scores the journal from the cursor it holds.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

import msgspec

from ..levels import Level
from ..messages import Prediction
from .conditioning import Gate, SubjectMemory

if TYPE_CHECKING:
    from .base import BaseAgent

CHECKPOINT_FORMAT = 1
CHECKPOINT_HISTORY = 1_000


class Checkpoint(msgspec.Struct, kw_only=True):
    format: int = CHECKPOINT_FORMAT
    model_version: str = ""
    history: list[Prediction] = msgspec.field(default_factory=list)
    counters: dict[str, int] = msgspec.field(default_factory=dict)
    last_levels: dict[int | str, Level] = msgspec.field(default_factory=dict)
    # Whatever per-machine memory the agent keeps (LSTM windows, counters): its own shape.
    state: Any = None
    # The ingest journal's sequence number up to which this checkpoint has scored.
    inbox_cursor: int = 0
    # Smoothed scores and levels per subject, and what each subject's alarm gate holds.
    conditioning: list[tuple[int | str, SubjectMemory]] = msgspec.field(default_factory=list)
    gates: dict[int | str, Gate] = msgspec.field(default_factory=dict)


_checkpoint_encoder = msgspec.msgpack.Encoder()
_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)


class _CheckpointSubjects(msgspec.Struct):
    """Of a checkpoint, only which subjects it keeps state for."""

    last_levels: dict[int | str, Any] = msgspec.field(default_factory=dict)


_subjects_decoder = msgspec.msgpack.Decoder(_CheckpointSubjects)


def snapshot(agent: BaseAgent) -> Checkpoint:
    """What the agent holds now; take it between two batches."""
    return Checkpoint(
        model_version=agent.model_version,
        # The newest of the ring only: the whole of it (10,000 predictions, some 2.5 MB)
        # written every few seconds by every agent held the store's one thread for tens
        # of milliseconds, and every alarm and journal write waited. Older predictions
        # are in the store's history (GET .../history?source=store).
        history=list(islice(reversed(agent.history), CHECKPOINT_HISTORY))[::-1],
        counters=dict(agent.counters),
        last_levels=dict(agent.last_levels),
        state=agent.export_state(),
        inbox_cursor=agent.inbox_cursor,
        conditioning=agent.conditioner.export(),
        gates=dict(agent.gates),
    )


def encode(checkpoint: Checkpoint) -> bytes:
    return _checkpoint_encoder.encode(checkpoint)


def restore(agent: BaseAgent, raw: bytes) -> int:
    """Put back into the agent what a saved checkpoint holds; returns how many predictions
    it held. msgspec.DecodeError when it is unreadable, and the agent is left empty."""
    # The checkpoint is the whole truth: on a restart of this same object, what is in
    # memory was saved by stop() and must not be counted twice.
    agent.history.clear()
    agent.counters.clear()
    agent.last_levels.clear()
    agent.gates.clear()
    agent.conditioner.restore([])
    cp = _checkpoint_decoder.decode(raw)
    agent.history.extend(cp.history)
    agent.counters.update(cp.counters)
    agent.last_levels.update(cp.last_levels)
    agent.gates.update(cp.gates)
    agent.conditioner.restore(cp.conditioning)
    if cp.state is not None:
        agent.import_state(cp.state)
    agent.inbox_cursor = agent.durable_cursor = cp.inbox_cursor
    return len(cp.history)


def saved_machines(raw: bytes) -> list[int]:
    """The machines a saved checkpoint keeps state for, without decoding the rest."""
    saved = _subjects_decoder.decode(raw)
    return [subject for subject in saved.last_levels if isinstance(subject, int)]
