"""SMS notifications end to end: the real twilio client against a local fake Twilio, a real
SQLite outbox, and the notifier's clock in the test's hand."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from factory_mas.http.api import EXCEPTION_HANDLERS
from factory_mas.levels import Level
from factory_mas.messages import Decision, Notified, Plan
from factory_mas.notify import Notifier, outbox, redact
from factory_mas.notify.outbox import OutboxMessage
from factory_mas.settings import NotifySettings
from factory_mas.store import Store, sqlite_url
from tests.support.fake_twilio import FakeTwilio
from tests.support.net import free_port

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "s3cr3t-auth-token-" + "x" * 14
FROM = "+15550001111"
TO = "+15551234567"
SECRETS = (SID, TOKEN, FROM, TO, TO.lstrip("+"), "%2B15551234567")
T0 = 1_750_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def notify_settings(base_url: str = "", **overrides: object) -> NotifySettings:
    return msgspec.structs.replace(
        NotifySettings(),
        twilio_account_sid=SID,
        twilio_auth_token=TOKEN,
        twilio_from_number=FROM,
        twilio_to_number=TO,
        twilio_base_url=base_url,
        **overrides,
    )


def decision(
    *alarm_ids: int, level: Level = "CRITICAL", machine_id: int = 12, action: str = "stop_machine"
) -> Decision:
    return Decision(
        alarm_ids=list(alarm_ids or (1,)),
        level=level,
        planner="builtin",
        plan=Plan(
            action=action,
            priority=1,
            steps=["Stop the machine in a controlled way", "Call maintenance"],
            rationale="Failure probability 0.91 at 88 C and 4.2 Hz vibration.",
            machine_id=machine_id,
        ),
    )


async def decide(store: Store, notifier: Notifier, d: Decision) -> Notified | None:
    """What the orchestrator does: record the text in its transaction, then wake."""
    notified = await store.write(notifier.queue_decision, d)
    notifier.wake()
    return notified


async def outbox_rows(store: Store, status: str | None = None) -> list[OutboxMessage]:
    return await store.read(outbox.list_messages, status, 1000)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(SID, TOKEN) as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client_for(notifier: Notifier) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Mount("/api/notify", routes=notifier.routes())],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


# -- end to end through the twilio client ------------------------------------------------


@pytest.mark.integration
async def test_critical_decision_is_texted_once_and_marked_sent(fake, store, clock):
    async with Notifier(notify_settings(fake.base_url), store, clock=clock) as notifier:
        d = decision(7)
        assert await decide(store, notifier, d) == Notified(channel="sms", status="queued")
        await notifier.flush()
        await notifier.flush()  # a second pass must not send it again

    assert len(fake.received) == 1
    got = fake.received[0]
    assert (got.account_sid, got.to, got.from_) == (SID, TO, FROM)
    assert got.body.startswith(
        "[CRITICAL] Machine 12: stop_machine (priority 1). Stop the machine in a controlled way."
    )
    assert "Failure probability 0.91" in got.body
    [row] = await outbox_rows(store)
    assert row.status == "sent"
    assert row.decision_id == d.id
    assert row.alarm_ids == [7]
    assert row.attempts == 1
    assert row.provider_id is not None and row.provider_id.startswith("SM")
    assert row.sent_at is not None and row.sent_at.timestamp() == T0


@pytest.mark.integration
async def test_only_critical_and_emergency_are_texted(fake, store, clock):
    async with Notifier(notify_settings(fake.base_url), store, clock=clock) as notifier:
        assert await decide(store, notifier, decision(1, level="WARNING")) is None
        emergency = await decide(store, notifier, decision(2, level="EMERGENCY"))
        assert emergency == Notified(channel="sms", status="queued")
        await notifier.flush()

    assert [r.body[:13] for r in fake.received] == ["[EMERGENCY] M"]
    assert [r.alarm_ids for r in await outbox_rows(store)] == [[2]]


@pytest.mark.integration
async def test_same_alarm_is_not_texted_again_within_the_cooldown(fake, store, clock):
    settings = notify_settings(fake.base_url, cooldown_s=900.0)
    async with Notifier(settings, store, clock=clock) as notifier:
        await decide(store, notifier, decision(7))
        await notifier.flush()
        assert len(fake.received) == 1

        clock.advance(899)
        again = await decide(store, notifier, decision(7, level="EMERGENCY"))
        assert again == Notified(channel="sms", status="cooldown")
        await notifier.flush()
        assert len(fake.received) == 1
        assert fake.requests == 1

        # A decision that also covers a new alarm is news.
        assert (await decide(store, notifier, decision(7, 8))).status == "queued"
        await notifier.flush()
        assert len(fake.received) == 2

        clock.advance(901)  # past the cooldown of both texts
        assert (await decide(store, notifier, decision(7))).status == "queued"
        await notifier.flush()
        assert len(fake.received) == 3

    statuses = [r.status for r in await outbox_rows(store)]
    assert statuses == ["sent", "sent", "cooldown", "sent"]  # newest first


@pytest.mark.integration
async def test_rate_limit_holds_texts_back_and_sends_one_digest(fake, store, clock):
    settings = notify_settings(fake.base_url, rate_limit_per_hour=3, cooldown_s=0.0)
    async with Notifier(settings, store, clock=clock) as notifier:
        for machine in range(1, 6):
            await decide(store, notifier, decision(machine, machine_id=machine))
        await notifier.flush()

        assert [r.body.split(":")[0] for r in fake.received] == [
            "[CRITICAL] Machine 1",
            "[CRITICAL] Machine 2",
            "[CRITICAL] Machine 3",
        ]
        assert [r.status for r in await outbox_rows(store)] == ["held"] * 2 + ["sent"] * 3
        assert notifier.stats()["counts"]["held"] == 2

        clock.advance(1800)  # still inside the hour: nothing goes out
        await notifier.flush()
        assert len(fake.received) == 3

        clock.advance(1801)
        await notifier.flush()

    assert len(fake.received) == 4
    assert fake.received[3].body == (
        "2 more alerts held back by the rate limit: "
        "[CRITICAL] Machine 4: stop_machine; [CRITICAL] Machine 5: stop_machine"
    )
    rows = await outbox_rows(store)
    digest = rows[0]
    assert (digest.decision_id, digest.status, digest.alarm_ids) == (None, "sent", [4, 5])
    assert [(r.status, r.digest_id) for r in rows[1:3]] == [("digested", digest.id)] * 2


@pytest.mark.integration
async def test_server_error_is_retried_with_backoff_until_sent(fake, store, clock):
    settings = notify_settings(fake.base_url, retry_base_s=5.0, retry_max_s=900.0)
    fake.fail_next(2, status=500)
    async with Notifier(settings, store, clock=clock) as notifier:
        await decide(store, notifier, decision(7))
        await notifier.flush()
        [row] = await outbox_rows(store)
        assert (row.status, row.attempts) == ("queued", 1)
        assert row.next_attempt_at.timestamp() == T0 + 5
        assert "HTTP 500" in (row.error or "")

        clock.advance(4.9)
        await notifier.flush()
        assert fake.requests == 1  # not due yet

        clock.advance(0.1)
        await notifier.flush()
        [row] = await outbox_rows(store)
        assert (row.status, row.attempts) == ("queued", 2)
        assert row.next_attempt_at.timestamp() == pytest.approx(T0 + 5 + 10)  # doubled

        clock.advance(10)
        await notifier.flush()

    assert fake.requests == 3
    assert len(fake.received) == 1
    [row] = await outbox_rows(store)
    assert (row.status, row.attempts, row.error) == ("sent", 3, None)


@pytest.mark.integration
async def test_retries_stop_after_max_attempts(fake, store, clock):
    settings = notify_settings(fake.base_url, retry_base_s=1.0, max_attempts=2)
    fake.fail_next(5, status=503)
    async with Notifier(settings, store, clock=clock) as notifier:
        await decide(store, notifier, decision(7))
        await notifier.flush()
        clock.advance(1)
        await notifier.flush()
        clock.advance(100)
        await notifier.flush()

    assert fake.requests == 2
    [row] = await outbox_rows(store)
    assert (row.status, row.attempts) == ("failed", 2)


@pytest.mark.integration
async def test_permanent_error_fails_at_once_and_never_leaks_numbers_or_tokens(
    fake, store, clock, caplog
):
    caplog.set_level(logging.DEBUG)
    fake.fail_next(
        1,
        status=400,
        error={
            "code": 21211,
            "message": f"The 'To' number {TO} is not a valid phone number.",
            "status": 400,
        },
    )
    async with Notifier(notify_settings(fake.base_url), store, clock=clock) as notifier:
        await decide(store, notifier, decision(7))
        await notifier.flush()
        clock.advance(10_000)
        await notifier.flush()
        # And a successful text, so that the request/response logging is covered too.
        await decide(store, notifier, decision(8))
        await notifier.flush()
        stats = notifier.stats()

    assert fake.requests == 2
    failed = (await outbox_rows(store, "failed"))[0]
    assert failed.attempts == 1
    assert "21211" in failed.error
    assert "is not a valid phone number" in failed.error
    assert stats["last_error"] == failed.error
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "21211" in logged  # the failure was logged ...
    assert "sent to the supervisor" in logged
    for secret in SECRETS:  # ... without a number or a credential
        assert secret not in failed.error
        assert secret not in logged
        assert secret not in str(stats)


@pytest.mark.integration
async def test_texts_queued_before_a_crash_are_sent_after_restart(fake, tmp_path, clock):
    db = sqlite_url(tmp_path / "crash.db")
    unreachable = f"http://127.0.0.1:{free_port()}"
    settings = notify_settings(unreachable, retry_base_s=5.0)
    async with Store(db) as store:
        # Committed by the orchestrator, but the process died before any send.
        await store.write(outbox.queue_decision, decision(1, machine_id=1), settings, T0)
        # Tried once while Twilio could not be reached.
        async with Notifier(settings, store, clock=clock) as notifier:
            await decide(store, notifier, decision(2, machine_id=2))
            await notifier.flush()
        rows = await outbox_rows(store)
        assert [(r.status, r.attempts) for r in rows] == [("queued", 1), ("queued", 1)]
        assert "cannot reach Twilio" in rows[0].error
        assert fake.requests == 0

    clock.advance(5)
    async with (
        Store(db) as store,
        Notifier(notify_settings(fake.base_url), store, clock=clock) as notifier,
    ):
        await notifier.flush()
        rows = await outbox_rows(store)

    assert sorted(r.body.split(":")[0] for r in fake.received) == [
        "[CRITICAL] Machine 1",
        "[CRITICAL] Machine 2",
    ]
    assert [r.status for r in rows] == ["sent", "sent"]


async def test_without_credentials_the_outbox_records_what_would_be_sent(store, clock):
    settings = msgspec.structs.replace(NotifySettings(), cooldown_s=900.0)
    async with Notifier(settings, store, clock=clock) as notifier:
        first = await decide(store, notifier, decision(7))
        again = await decide(store, notifier, decision(7))
        await notifier.flush()
        async with client_for(notifier) as client:
            listed = (await client.get("/api/notify/outbox")).json()
            status = (await client.get("/api/notify/status")).json()

    assert first == Notified(channel="sms", status="not_configured")
    assert again == Notified(channel="sms", status="cooldown")
    messages = listed["messages"]
    assert [m["status"] for m in messages] == ["cooldown", "not_configured"]
    assert messages[1]["body"].startswith("[CRITICAL] Machine 12: stop_machine")
    assert messages[1]["alarm_ids"] == [7]
    assert messages[1]["to"] is None
    assert status["configured"] is False
    assert status["counts"]["not_configured"] == 1
    assert status["counts"]["cooldown"] == 1


async def test_queued_texts_are_not_sent_once_credentials_are_removed(store, clock):
    await store.write(outbox.queue_decision, decision(7), notify_settings(), T0)
    async with Notifier(NotifySettings(), store, clock=clock) as notifier:
        await notifier.flush()

    [row] = await outbox_rows(store)
    assert row.status == "not_configured"
    assert "not configured" in row.error


# -- HTTP routes ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_outbox_route_filters_limits_and_masks_the_number(fake, store, clock):
    settings = notify_settings(fake.base_url, rate_limit_per_hour=1, cooldown_s=0.0)
    async with Notifier(settings, store, clock=clock) as notifier:
        for machine in (1, 2, 3):
            await decide(store, notifier, decision(machine, machine_id=machine))
        await notifier.flush()
        async with client_for(notifier) as client:
            everything = (await client.get("/api/notify/outbox")).json()["messages"]
            held = (await client.get("/api/notify/outbox?status=held&limit=1")).json()
            status = (await client.get("/api/notify/status")).json()

    assert [m["status"] for m in everything] == ["held", "held", "sent"]
    assert {m["to"] for m in everything} == {"***67"}
    assert [m["alarm_ids"] for m in held["messages"]] == [[3]]
    assert status["configured"] is True
    assert status["to"] == "***67"
    assert status["sent_last_hour"] == 1
    assert status["counts"]["sent"] == 1 and status["counts"]["held"] == 2
    assert status["last_sent_at"].startswith("2025-06-15T")
    for secret in SECRETS:
        assert secret not in str(everything) + str(status)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("status=bogus", "status: expected one of queued, sent, held"),
        ("limit=0", "limit: expected an integer from 1 to 1000, got '0'"),
        ("limit=many", "limit: expected an integer from 1 to 1000, got 'many'"),
        ("limit=1001", "limit: expected an integer from 1 to 1000"),
    ],
)
async def test_outbox_route_rejects_bad_queries(store, query, detail):
    async with Notifier(NotifySettings(), store) as notifier, client_for(notifier) as client:
        response = await client.get(f"/api/notify/outbox?{query}")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "bad_query"
    assert body["detail"].startswith(detail)


# -- pure rules ----------------------------------------------------------------------------


def test_body_is_short_ascii_text_without_numbers():
    d = decision(1)
    d.plan.rationale = "Vibration rising fast — " + "bearing wear suspected; " * 40
    body = outbox.body_of(d)
    assert len(body) <= outbox.MAX_BODY_CHARS
    assert body.endswith("...")
    assert body.startswith("[CRITICAL] Machine 12: stop_machine (priority 1). Stop the machine")


def test_body_names_a_camera_or_the_plant():
    d = decision(1)
    d.plan.machine_id, d.plan.camera_id = None, "cam-1"
    assert outbox.body_of(d).startswith("[CRITICAL] Camera cam-1: ")
    d.plan.camera_id = None
    assert outbox.body_of(d).startswith("[CRITICAL] Plant: ")


def test_retry_delay_doubles_up_to_the_cap():
    s = notify_settings(retry_base_s=5.0, retry_max_s=30.0)
    assert [outbox.retry_delay_s(n, s) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def test_redact_removes_credentials_and_numbers_in_every_spelling():
    s = notify_settings()
    text = (
        f"POST /2010-04-01/Accounts/{SID}/Messages.json To=%2B15551234567 "
        f"auth {TOKEN} from {FROM} to 15551234567 or +4915112345678"
    )
    clean = redact(text, s)
    for secret in (*SECRETS, "+4915112345678"):
        assert secret not in clean
    assert clean.startswith("POST /2010-04-01/Accounts/[redacted]/Messages.json")
    assert outbox.mask_number(TO) == "***67"
    assert outbox.mask_number("") is None
