"""The most machines the process keeps state for: limits.max_machines.

Every agent remembers each machine it scores (smoothed scores, alarm gates, LSTM windows,
anomaly runs), and so do the SCADA points and the shift tally. Measured: records of
165,000 machine ids took the process from 366 to 961 MB and the checkpoints to 13.5 MB. A
plant knows its machines, so past the limit a record of a machine not seen before is
refused with its reason, like any other bad record, while the machines already known go on
being scored. Refusing where records come in (Intake, the agents' predict routes) bounds
every per-machine structure behind them at once; evicting would have to be done, and agree,
in each of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from ..messages import Rejection, TelemetryRecord
from ..settings import LimitsSettings
from .schema import echo, parse_many

log = logging.getLogger(__name__)


class Machines:
    """The machine ids admitted so far; records of more than `limit` are refused."""

    def __init__(self, limit: int = LimitsSettings().max_machines) -> None:
        self.limit = limit
        self.known: set[int] = set()
        self.refused = 0

    def note(self, ids: Iterable[int]) -> None:
        """Machines whose state is kept already (in a checkpoint): known, whatever the
        limit, so a restart does not admit a new `limit` of them on top."""
        self.known.update(ids)

    def parse(
        self, items: Sequence[Any], source: str
    ) -> tuple[list[TelemetryRecord], list[Rejection]]:
        """parse_many, with the records of machines past the limit refused too."""
        good, bad = parse_many(items, source)
        new = {r.machine_id for r in good} - self.known
        if len(self.known) + len(new) <= self.limit:
            self.known |= new
            return good, bad
        failed = {r.index for r in bad}
        positions = [i for i in range(len(items)) if i not in failed]
        kept: list[TelemetryRecord] = []
        for record, index in zip(good, positions, strict=True):
            machine = record.machine_id
            if machine in self.known or len(self.known) < self.limit:
                self.known.add(machine)
                kept.append(record)
                continue
            bad.append(
                Rejection(
                    source=source,
                    reason=f"machine {machine} is not known and {self.limit} machines "
                    "already are, the limit (limits.max_machines)",
                    field="machine_id",
                    index=index,
                    input=echo(items[index]),
                )
            )
        if not self.refused:
            log.warning(
                "limits.max_machines (%d) reached: records of machines not seen before are "
                "refused (counted as rejected, published on sensors/factory/rejected)",
                self.limit,
            )
        self.refused += len(good) - len(kept)
        bad.sort(key=lambda r: r.index or 0)
        return kept, bad

    def stats(self) -> dict[str, int]:
        return {"known": len(self.known), "limit": self.limit, "refused": self.refused}
