"""The contract every ML agent meets, written once and run for each agent.

`AgentContract` is not collected itself (no Test prefix). An agent's test class inherits it
and supplies three things:

- `agent_class`: the BaseAgent subclass;
- `settings_of(settings)`: that agent's section of the settings;
- `make_records(n, machine_id)`: n raw records (dicts, as a gateway posts them) of one
  machine, each a little different, timestamps one minute apart.

Everything runs on real parts: a real Hub, a real Store on a tmp SQLite file, the real
inference pool and the committed models under artifacts/.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, ClassVar

import httpx
import msgspec
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from factory_mas.agents.base import AgentContext, BaseAgent
from factory_mas.agents.routes import EVERYTHING
from factory_mas.http.api import EXCEPTION_HANDLERS
from factory_mas.http.ws import WsClient
from factory_mas.ingest.schema import parse_record
from factory_mas.levels import LEVELS
from factory_mas.messages import Prediction, TelemetryRecord
from factory_mas.settings import AgentSettings, Settings
from tests.support.app import agent_context
from tests.support.hub import collect, drain
from tests.support.net import free_port
from tests.support.waiting import until

# Hang guard only: a correct agent answers in milliseconds.
TIMEOUT_S = 15.0


PREDICTION_FIELDS = {
    "agent_id",
    "machine_id",
    "record_ts",
    "produced_at",
    "model_version",
    "level",
    "result",
}


def validated(raw: Sequence[dict]) -> list[TelemetryRecord]:
    return [parse_record(dict(r)) for r in raw]


def interleave(*groups: Sequence[Any]) -> list[Any]:
    return [item for row in zip(*groups, strict=True) for item in row]


def key(p: Prediction) -> tuple[int, datetime]:
    """What identifies a prediction for these tests: the machine and the record's time."""
    return p.machine_id, p.record_ts


class AgentContract:
    agent_class: ClassVar[type[BaseAgent]]

    @staticmethod
    def settings_of(settings: Settings) -> AgentSettings:
        raise NotImplementedError

    @staticmethod
    def make_records(n: int, machine_id: int) -> list[dict]:
        raise NotImplementedError

    # -- fixtures ----------------------------------------------------------------------

    @pytest.fixture
    def agent_settings(self, settings: Settings) -> AgentSettings:
        return msgspec.structs.replace(self.settings_of(settings), checkpoint_interval_s=0.1)

    @pytest.fixture
    async def ctx(self, settings: Settings) -> AsyncIterator[AgentContext]:
        async with agent_context(settings) as ctx:
            yield ctx

    @pytest.fixture
    async def agent(
        self, agent_settings: AgentSettings, ctx: AgentContext
    ) -> AsyncIterator[BaseAgent]:
        async with self.agent_class(agent_settings, ctx) as agent:
            yield agent

    @pytest.fixture
    async def client(self, agent: BaseAgent) -> AsyncIterator[httpx.AsyncClient]:
        async with self.http(agent) as client:
            yield client

    @asynccontextmanager
    async def http(self, agent: BaseAgent) -> AsyncIterator[httpx.AsyncClient]:
        app = Starlette(
            routes=[Mount(self.prefix, routes=agent.routes())],
            exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://factory.test") as client:
            yield client

    @asynccontextmanager
    async def serve(self, agent: BaseAgent) -> AsyncIterator[str]:
        """The agent's routes on a real uvicorn in this event loop (WebSockets need a server)."""
        app = Starlette(
            routes=[Mount(self.prefix, routes=agent.routes())],
            exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        try:
            await until(lambda: server.started or task.done(), "uvicorn to start")
            assert server.started, "uvicorn did not start"
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, TIMEOUT_S)

    @property
    def prefix(self) -> str:
        return f"/api/{self.agent_class.slug}"

    # -- life cycle --------------------------------------------------------------------

    async def test_async_with_starts_and_stops(self, agent_settings, ctx):
        agent = self.agent_class(agent_settings, ctx)
        assert agent.status == "stopped"
        async with agent as running:
            assert running is agent
            assert agent.status == "running"
            health = agent.health()
            assert health["status"] == "running" and health["healthy"] is True
            assert health["model_version"]
        assert agent.status == "stopped"
        assert agent.health()["healthy"] is False

    async def test_start_stop_and_restart_methods(self, agent_settings, ctx):
        agent = self.agent_class(agent_settings, ctx)
        await agent.start()
        await agent.start()  # a second start is harmless
        assert agent.status == "running"
        await agent.restart()
        assert agent.status == "running"
        assert agent.counters["restarts"] == 1
        assert agent.stats()["counters"]["restarts"] == 1
        await agent.restart()
        assert agent.stats()["counters"]["restarts"] == 2
        await agent.stop()
        await agent.stop()  # and so is a second stop
        assert agent.status == "stopped"
        # A stopped agent no longer consumes: nothing is subscribed under its name.
        names = [s["name"] for s in ctx.hub.stats()["subscriptions"]]
        assert agent.agent_id not in names

    async def test_restart_keeps_history_and_counters_as_they_were(self, agent_settings, ctx):
        records = validated(self.make_records(6, 1) + self.make_records(4, 2))
        async with self.agent_class(agent_settings, ctx) as agent:
            await agent.process(records)
            before = [key(p) for p in agent.recent(100)]
            await agent.restart()
            assert [key(p) for p in agent.recent(100)] == before, "history duplicated by restart"
            assert agent.stats()["history"]["size"] == len(records)
            assert agent.counters["predictions"] == len(records), "counters doubled by restart"
            assert agent.counters["restarts"] == 1

    async def test_health_and_stats_fields(self, agent):
        health = agent.health()
        assert set(health) >= {
            "agent_id",
            "status",
            "healthy",
            "model_version",
            "error",
            "uptime_s",
            "last_prediction_at",
        }
        assert health["agent_id"] == self.agent_class.agent_id
        assert health["error"] is None
        assert health["uptime_s"] >= 0
        assert health["last_prediction_at"] is None

        records = validated(self.make_records(5, 1) + self.make_records(3, 2))
        await agent.process(records)
        stats = agent.stats()
        assert stats["last_prediction_at"] is not None
        assert stats["counters"]["predictions"] == len(records)
        assert stats["counters"]["batches"] == 1
        assert sum(stats["counters"].get(f"level_{lvl}", 0) for lvl in LEVELS) == len(records)
        assert stats["inference"]["count"] == 1
        assert stats["queue"]["filter"] == agent.input_filter
        assert stats["history"] == {"size": len(records), "capacity": agent.settings.history_size}
        assert stats["websocket"] == {"clients": 0, "dropped": 0}
        assert stats["machines"]["count"] == 2
        assert sum(stats["machines"]["by_level"].values()) == 2
        assert stats["machines"]["worst_level"] in LEVELS
        assert stats["settings"]["history_size"] == agent.settings.history_size
        json.dumps(stats)  # /status serves it: it must be plain JSON data

    # -- consuming the hub -------------------------------------------------------------

    async def test_predictions_are_published_for_records_from_both_topics(self, agent, ctx):
        out = ctx.hub.subscribe(agent.topic_predictions, name="test")
        plant = validated(self.make_records(3, 1) + self.make_records(3, 2))
        machine = validated(self.make_records(4, 5))
        single = validated(self.make_records(1, 6))[0]
        assert await ctx.hub.publish("sensors/factory/data", plant) == 1
        assert await ctx.hub.publish("sensors/factory/data/5", machine) == 1
        assert await ctx.hub.publish("sensors/factory/data/6", single) == 1  # one object

        predictions = await collect(out, len(plant) + len(machine) + 1)
        assert len(predictions) == len(plant) + len(machine) + 1
        sent = plant + machine + [single]
        assert sorted(key(p) for p in predictions) == sorted(
            (r.machine_id, r.timestamp) for r in sent
        )
        for p in predictions:
            assert isinstance(p, Prediction)
            assert p.agent_id == agent.agent_id
            assert p.level in LEVELS
            assert p.model_version and p.model_version == agent.model_version
            assert p.result
        assert agent.counters["predictions"] == len(sent)

    async def test_history_is_bounded_and_recent_is_newest_first(self, agent_settings, ctx):
        small = msgspec.structs.replace(agent_settings, history_size=10)
        records = validated(interleave(self.make_records(8, 1), self.make_records(8, 2)))
        async with self.agent_class(small, ctx) as agent:
            await agent.process(records[:9])
            await agent.process(records[9:])
            expected = [(r.machine_id, r.timestamp) for r in records][-10:][::-1]
            assert len(agent.history) == 10
            assert agent.stats()["history"] == {"size": 10, "capacity": 10}
            assert [key(p) for p in agent.recent(100)] == expected
            assert [key(p) for p in agent.recent(3)] == expected[:3]
            assert [key(p) for p in agent.recent(100, machine_id=2)] == [
                k for k in expected if k[0] == 2
            ]
            assert [key(p) for p in agent.recent(2, machine_id=1)] == [
                k for k in expected if k[0] == 1
            ][:2]
            assert agent.recent(100, machine_id=99) == []

    # -- checkpoints -------------------------------------------------------------------

    async def test_a_new_instance_restores_the_checkpoint(self, agent_settings, ctx):
        records = validated(interleave(self.make_records(5, 1), self.make_records(5, 3)))
        first = self.agent_class(agent_settings, ctx)
        async with first:
            await first.process(records)
        assert first.status == "stopped"

        second = self.agent_class(agent_settings, ctx)
        async with second:
            assert [key(p) for p in second.recent(100)] == [key(p) for p in first.recent(100)]
            assert msgspec.json.encode(second.recent(100)) == msgspec.json.encode(first.recent(100))
            assert dict(second.counters) == dict(first.counters)
            assert second.counters["predictions"] == len(records)
            assert second.last_levels == first.last_levels
            assert set(second.last_levels) == {1, 3}
            assert second.machines() == first.machines()
            # The smoothed scores and the alarm gates: a restart neither forgets a trend
            # nor tells an alarm again.
            assert second.conditioner.subjects == first.conditioner.subjects
            assert second.gates == first.gates and set(second.gates) == {1, 3}

    async def test_the_periodic_checkpoint_survives_a_crash(self, agent_settings, ctx):
        # No stop(): what the checkpoint loop saved on its own is what a crash leaves.
        crashed = self.agent_class(agent_settings, ctx)
        await crashed.start()
        try:
            await crashed.process(validated(self.make_records(4, 2)))
            await until(lambda: crashed.last_checkpoint_at is not None, "a periodic checkpoint")
            second = self.agent_class(agent_settings, ctx)
            async with second:
                assert [key(p) for p in second.recent(100)] == [key(p) for p in crashed.recent(100)]
                assert second.counters["predictions"] == 4
        finally:
            await crashed.stop()

    @pytest.mark.parametrize(
        "blob",
        [
            b"garbage \x00\xff not a checkpoint",
            b"",
            bytes(range(256)),
            msgspec.msgpack.encode({"history": "not a list", "counters": [1, 2]}),
            msgspec.msgpack.encode({"history": [{"machine_id": "x"}]}),
        ],
        ids=["text", "empty", "binary", "wrong-shape", "bad-prediction"],
    )
    async def test_a_corrupt_checkpoint_starts_empty(self, agent_settings, ctx, blob):
        probe = self.agent_class(agent_settings, ctx)
        await ctx.store.save_checkpoint(probe.checkpoint_name, blob)
        async with self.agent_class(agent_settings, ctx) as agent:
            assert agent.status == "running"
            assert len(agent.history) == 0
            assert agent.counters["predictions"] == 0
            assert agent.last_levels == {}
            # ... and it still works, and its next checkpoint replaces the bad one.
            predictions = await agent.process(validated(self.make_records(2, 1)))
            assert len(predictions) == 2
        async with self.agent_class(agent_settings, ctx) as again:
            assert again.counters["predictions"] == 2

    # -- disabled ----------------------------------------------------------------------

    async def test_a_disabled_agent_does_nothing(self, agent_settings, ctx):
        off = msgspec.structs.replace(agent_settings, enabled=False)
        agent = self.agent_class(off, ctx)
        async with agent:
            assert agent.status == "disabled"
            assert agent.health()["status"] == "disabled"
            # It does not listen: a telemetry message reaches no subscription.
            assert (
                await ctx.hub.publish("sensors/factory/data", validated(self.make_records(2, 1)))
                == 0
            )
            async with self.http(agent) as client:
                health = await client.get(f"{self.prefix}/health")
                assert health.json()["status"] == "disabled"
                response = await client.post(
                    f"{self.prefix}/predict", json=self.make_records(1, 1)[0]
                )
                assert response.status_code == 503
                assert response.json()["error"] == "agent_unavailable"
                assert "disabled" in response.json()["detail"]
        assert agent.status == "disabled"
        assert agent.counters["predictions"] == 0

    # -- WebSocket fan-out -------------------------------------------------------------

    async def test_a_websocket_client_that_never_reads_blocks_nothing(self, agent_settings, ctx):
        queue_size = 3
        s = msgspec.structs.replace(agent_settings, ws_queue_size=queue_size)
        async with self.agent_class(s, ctx) as agent:
            # The object the WS route creates per connection; this one's reader never runs.
            stalled = WsClient(queue_size, EVERYTHING)
            reading = WsClient(10_000, EVERYTHING)
            agent.ws_clients.update({stalled, reading})
            batches = [validated(self.make_records(1, m)) for m in range(1, 11)]
            for batch in batches:
                await asyncio.wait_for(agent.process(batch), TIMEOUT_S)

            frames = len(batches) + agent.counters["alerts"]  # one predictions frame per batch
            assert len(reading.queue) == frames and reading.dropped == 0
            assert len(stalled.queue) == queue_size
            assert stalled.dropped == frames - queue_size
            assert agent.stats()["websocket"] == {"clients": 2, "dropped": frames - queue_size}
            # The stalled client kept the newest frames.
            assert list(stalled.queue) == list(reading.queue)[-queue_size:]
            newest = [
                json.loads(f) for f in stalled.queue if json.loads(f)["type"] == "predictions"
            ]
            assert newest and newest[-1]["data"][0]["machine_id"] == 10

    @pytest.mark.integration
    async def test_websocket_route_streams_one_machines_predictions(self, agent):
        async with self.serve(agent) as url:
            ws_url = url.replace("http://", "ws://") + f"{self.prefix}/ws"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url + "?machine_id=seven", open_timeout=TIMEOUT_S):
                    pass
            assert refused.value.response.status_code == 403

            async with connect(ws_url + "?machine_id=3", open_timeout=TIMEOUT_S) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                assert hello["type"] == "hello"
                assert hello["data"]["status"] == "running"
                assert agent.stats()["websocket"]["clients"] == 1

                body = self.make_records(2, 4) + self.make_records(2, 3)
                async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as http:
                    response = await http.post(f"{self.prefix}/predict", json=body)
                assert response.status_code == 200
                frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                assert frame["type"] == "predictions"
                assert [p["machine_id"] for p in frame["data"]] == [3, 3]
                assert [p["record_ts"] for p in frame["data"]] == [
                    p["record_ts"] for p in response.json()["predictions"] if p["machine_id"] == 3
                ]
            await until(
                lambda: agent.stats()["websocket"]["clients"] == 0,
                "the closed client to be dropped",
            )

    # -- REST --------------------------------------------------------------------------

    async def test_get_health_and_status(self, agent, client):
        health = await client.get(f"{self.prefix}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "running"
        assert health.json()["agent_id"] == agent.agent_id
        await agent.process(validated(self.make_records(3, 1)))
        status = await client.get(f"{self.prefix}/status")
        assert status.status_code == 200
        assert status.json()["counters"]["predictions"] == 3
        assert status.json()["history"]["size"] == 3

    async def test_health_is_503_when_stopped(self, agent_settings, ctx):
        agent = self.agent_class(agent_settings, ctx)
        async with self.http(agent) as client:
            response = await client.get(f"{self.prefix}/health")
            assert response.status_code == 503
            assert response.json()["status"] == "stopped"
            response = await client.post(f"{self.prefix}/predict", json=self.make_records(1, 1)[0])
            assert response.status_code == 503
            assert response.json()["error"] == "agent_unavailable"

    async def test_get_history_with_limit_and_machine_id(self, agent, client):
        records = validated(interleave(self.make_records(4, 1), self.make_records(4, 2)))
        await agent.process(records)
        newest_first = [(r.machine_id, r.timestamp) for r in reversed(records)]

        def keys(body: dict) -> list[tuple[int, datetime]]:
            preds = msgspec.convert(body["predictions"], list[Prediction])
            return [key(p) for p in preds]

        everything = (await client.get(f"{self.prefix}/history")).json()
        assert everything["agent_id"] == agent.agent_id
        assert everything["count"] == len(records)
        assert keys(everything) == newest_first

        limited = (await client.get(f"{self.prefix}/history", params={"limit": 3})).json()
        assert limited["count"] == 3 and keys(limited) == newest_first[:3]

        one = (
            await client.get(f"{self.prefix}/history", params={"machine_id": 2, "limit": 2})
        ).json()
        assert keys(one) == [k for k in newest_first if k[0] == 2][:2]

        none = (await client.get(f"{self.prefix}/history", params={"machine_id": 42})).json()
        assert none["count"] == 0 and none["predictions"] == []

    @pytest.mark.parametrize(
        ("query", "name"),
        [
            ({"limit": "0"}, "limit"),
            ({"limit": "-5"}, "limit"),
            ({"limit": "ten"}, "limit"),
            ({"limit": "1e3"}, "limit"),
            ({"limit": "99999999"}, "limit"),
            ({"machine_id": "x"}, "machine_id"),
            ({"machine_id": "0"}, "machine_id"),
        ],
    )
    async def test_get_history_rejects_a_bad_query(self, client, query, name):
        response = await client.get(f"{self.prefix}/history", params=query)
        assert response.status_code == 400
        body = response.json()
        assert set(body) >= {"error", "detail"}
        assert body["error"] == "bad_query"
        assert name in body["detail"]
        assert next(iter(query.values())) in body["detail"]

    async def test_post_one_record_returns_a_prediction(self, agent, client):
        raw = self.make_records(1, 7)[0]
        response = await client.post(f"{self.prefix}/predict", json=raw)
        assert response.status_code == 200
        assert set(response.json()) >= PREDICTION_FIELDS
        prediction = msgspec.json.decode(response.content, type=Prediction)
        assert prediction.agent_id == agent.agent_id
        assert prediction.machine_id == 7
        assert prediction.record_ts == parse_record(raw).timestamp
        assert prediction.level in LEVELS
        assert prediction.model_version == agent.model_version
        assert [key(p) for p in agent.recent(1)] == [key(prediction)]

    async def test_post_a_list_returns_predictions_and_rejected(self, agent, client):
        raw = self.make_records(2, 1) + self.make_records(1, 2)
        response = await client.post(f"{self.prefix}/predict", json=raw)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"predictions", "rejected"}
        assert body["rejected"] == []
        assert [p["machine_id"] for p in body["predictions"]] == [1, 1, 2]
        assert all(set(p) >= PREDICTION_FIELDS for p in body["predictions"])

    async def test_post_a_list_with_one_bad_record(self, agent, ctx, client):
        rejected = ctx.hub.subscribe("sensors/factory/rejected", name="test")
        good = self.make_records(1, 4)[0]
        bad = {**self.make_records(1, 5)[0], "packet_loss_pct": 150}
        response = await client.post(f"{self.prefix}/predict", json=[good, bad])
        assert response.status_code == 200
        body = response.json()
        assert [p["machine_id"] for p in body["predictions"]] == [4]
        assert len(body["rejected"]) == 1
        assert body["rejected"][0]["field"] == "packet_loss_pct"
        assert body["rejected"][0]["index"] == 1
        assert body["rejected"][0]["reason"]
        # The rejection also goes out on the hub for whoever watches bad input.
        published = await drain(rejected)
        assert [(r.field, r.index) for r in published] == [("packet_loss_pct", 1)]

    async def test_post_only_bad_records_is_422_naming_the_field(self, agent, client):
        bad = [{**r, "operation_mode": "Exploded"} for r in self.make_records(2, 1)]
        response = await client.post(f"{self.prefix}/predict", json=bad)
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "invalid_record"
        assert body["field"] == "operation_mode"
        assert "operation_mode" in body["detail"]
        assert len(body["errors"]) == 2
        assert agent.counters["predictions"] == 0

        one = await client.post(
            f"{self.prefix}/predict", json={**self.make_records(1, 1)[0], "machine_id": "abc"}
        )
        assert one.status_code == 422
        assert one.json()["field"] == "machine_id"
        assert "machine_id" in one.json()["detail"]

    @pytest.mark.parametrize(
        ("content", "code"),
        [(b'{"machine_id": 1,', "invalid_json"), (b"", "empty_body"), (b"[]", "empty_batch")],
        ids=["truncated", "empty-body", "empty-list"],
    )
    async def test_post_unusable_body_is_400(self, agent, client, content, code):
        response = await client.post(
            f"{self.prefix}/predict", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"] == code
        assert response.json()["detail"]
        assert agent.counters["predictions"] == 0
