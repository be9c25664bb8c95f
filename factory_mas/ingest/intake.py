"""Where telemetry enters: validation, counting, and publication on the hub.

HTTP ingest, the replay publisher and the MQTT bridge all hand raw items to `Intake`, so a
record is judged by the same rules whichever way it came. Good records go on in bounded
chunks (back-pressure reaches the caller through `Hub.publish`); bad ones are counted and
published with their reason on sensors/factory/rejected. A bad record never stops a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..http.api import ApiError, json_response, read_json, rejected_response
from ..hub import Hub
from ..messages import Rejection
from ..store import Store
from ..topics import REJECTED, TELEMETRY
from .machines import Machines

# Validating ~500 records takes about a millisecond: chunks keep the loop responsive and
# the hub's messages a size the agents score in one go.
CHUNK = 500


class Intake:
    def __init__(
        self,
        hub: Hub,
        max_body_bytes: int,
        store: Store | None = None,
        machines: Machines | None = None,
    ) -> None:
        self.hub = hub
        self.max_body_bytes = max_body_bytes
        self.store = store
        self.machines = machines or Machines()
        # Journal order must be publish order: an agent's checkpoint says "scored up to
        # seq N", which is only true if nothing below N can still be on its way.
        self._journal_lock = asyncio.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.rejected_fields: Counter[str] = Counter()
        self.last_accepted_at = 0.0

    async def accept(
        self,
        items: list[Any],
        source: str,
        topic: str = TELEMETRY,
        indices: list[int] | None = None,
        journal: bool = False,
    ) -> tuple[int, list[Rejection]]:
        """Validate and publish; returns the number accepted and the rejections.

        With `journal`, good records are written to the store's inbox before any is
        published, all in one transaction: once this returns they survive a crash, and
        if the store fails (StoreError) none was kept, published or counted, so the
        sender can send the whole batch again. A rejection's index is the item's
        position, or `indices[position]` when given (a CSV reader passes line numbers).
        """
        chunks: list[list[Any]] = []
        rejections: list[Rejection] = []
        for start in range(0, len(items), CHUNK):
            if start:
                await asyncio.sleep(0)  # let the loop run between two chunks' validation
            good, bad = self.machines.parse(items[start : start + CHUNK], source)
            for r in bad:
                position = (r.index or 0) + start
                r.index = indices[position] if indices else position
            if good:
                chunks.append(good)
            rejections.extend(bad)
        if chunks:
            await self._publish(topic, chunks, source, journal)
        if rejections:
            await self.reject(rejections, source)
        accepted = sum(map(len, chunks))
        self.accepted[source] += accepted
        if accepted:
            self.last_accepted_at = time.time()
        return accepted, rejections

    async def reject(self, rejections: list[Rejection], source: str) -> None:
        """Count input that was refused and tell sensors/factory/rejected why."""
        self.rejected[source] += len(rejections)
        self.rejected_fields.update(r.field or "(record)" for r in rejections)
        await self.hub.publish(REJECTED, rejections, origin=source)

    async def _publish(
        self, topic: str, chunks: list[list[Any]], source: str, journal: bool
    ) -> None:
        if not journal or self.store is None:
            for records in chunks:
                await self.hub.publish(topic, records, origin=source)
            return
        data = [self._encoder.encode(records) for records in chunks]
        async with self._journal_lock:
            # The batch's chunks in one transaction: journaled one by one, a failure
            # after the first chunk left it scored while the sender was told to retry
            # the whole batch, which then counted those records twice.
            seqs = await self.store.inbox_append_many(topic, source, data)
            for seq, records in zip(seqs, chunks, strict=True):
                await self.hub.publish(topic, records, origin=source, seq=seq)

    def stats(self) -> dict[str, Any]:
        return {
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "rejected_by_field": dict(self.rejected_fields),
            "last_accepted_at": self.last_accepted_at or None,
            "machines": self.machines.stats(),
        }

    async def ingest_route(self, request: Request) -> Response:
        """POST /api/ingest: one record or a JSON array; good records are kept even when
        others in the batch are bad (202 with the rejections listed); 422 if none is good."""
        body = await read_json(request, self.max_body_bytes)
        items = body if isinstance(body, list) else [body]
        if not items:
            raise ApiError(400, "empty_batch", "the array holds no records")
        accepted, rejections = await self.accept(items, source="http", journal=True)
        if not accepted:
            return rejected_response(rejections, single=False, accepted=0, rejected=len(rejections))
        return json_response(
            {"accepted": accepted, "rejected": len(rejections), "errors": rejections}, 202
        )

    def routes(self) -> list[Route]:
        return [Route("/api/ingest", self.ingest_route, methods=["POST"])]
