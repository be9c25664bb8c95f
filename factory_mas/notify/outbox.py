"""The SMS outbox: the rules for what is texted, and the SQL on the `sms_outbox` table.

Every function taking a Connection is synchronous and runs inside a `Store.write` or
`Store.read` transaction. `queue_decision` is meant to run in the orchestrator's own
transaction, the one that writes the decision: the decision and its text are committed
together or not at all, so a crash can neither lose a text nor send one for a decision
that was never recorded. The sender marks a row sent only after Twilio accepted it, so
delivery is at least once: a crash between the two sends that text again on restart.

Row life: queued -> sent | failed; queued -> held (rate limit) -> digested (folded into
one digest row, itself queued); or recorded and never sent: cooldown, not_configured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..levels import RANK
from ..messages import Decision, Notified
from ..settings import NotifySettings
from ..store import inserted_id, sms_outbox, sms_outbox_alarms

Status = Literal["queued", "sent", "held", "digested", "cooldown", "not_configured", "failed"]
STATUSES: tuple[Status, ...] = (
    "queued",
    "sent",
    "held",
    "digested",
    "cooldown",
    "not_configured",
    "failed",
)
# Rows that were or will be delivered: the ones a cooldown counts.
DELIVERING: tuple[Status, ...] = ("queued", "sent", "held", "digested")
RATE_WINDOW_S = 3600.0
# Two SMS segments of the GSM 7-bit alphabet (160 characters each). What we add to a body
# is ASCII ("..." rather than an ellipsis): one character outside that alphabet switches
# the whole text to UCS-2 at 70 characters a segment, five segments for 320 characters.
MAX_BODY_CHARS = 320
NOT_CONFIGURED = "not sent: Twilio credentials are not configured"


class OutboxMessage(msgspec.Struct, kw_only=True):
    """One outbox row as the API shows it."""

    id: int
    decision_id: str | None  # None for a digest
    alarm_ids: list[int]
    created_at: datetime
    body: str
    status: str
    attempts: int
    next_attempt_at: datetime
    sent_at: datetime | None = None
    provider_id: str | None = None
    error: str | None = None
    digest_id: int | None = None
    # Masked: the supervisor's number is never shown whole.
    to: str | None = None


class DueRow(msgspec.Struct, frozen=True):
    id: int
    body: str
    attempts: int
    is_digest: bool


# -- pure rules -----------------------------------------------------------------------


def shorten(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars`, at a word boundary when one is near."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    if max_chars <= 3:
        return text[:max_chars]
    cut = text[: max_chars - 3]
    space = cut.rfind(" ")
    if space >= (max_chars - 3) // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "..."


def subject_of(decision: Decision) -> str:
    plan = decision.plan
    if plan.machine_id is not None:
        return f"Machine {plan.machine_id}"
    if plan.camera_id is not None:
        return f"Camera {plan.camera_id}"
    return "Plant"


def headline(decision: Decision) -> str:
    plan = decision.plan
    return f"[{decision.level}] {subject_of(decision)}: {plan.action} (priority {plan.priority})"


def body_of(decision: Decision) -> str:
    """The text of one decision's SMS: what, where, the first step, then why."""
    parts = [headline(decision)]
    if decision.plan.steps:
        parts.append(decision.plan.steps[0].strip().rstrip("."))
    text = ". ".join(parts) + "."
    rationale = " ".join(decision.plan.rationale.split())
    room = MAX_BODY_CHARS - len(text) - 1
    if rationale and room >= 20:
        text = f"{text} {shorten(rationale, room)}"
    return shorten(text, MAX_BODY_CHARS)


def digest_body(held_bodies: Sequence[str]) -> str:
    n = len(held_bodies)
    # The part before " (priority" is the headline without it: level, subject, action.
    items = "; ".join(body.partition(" (priority")[0] for body in held_bodies)
    noun = "alert" if n == 1 else "alerts"
    return shorten(f"{n} more {noun} held back by the rate limit: {items}", MAX_BODY_CHARS)


def retry_delay_s(attempts: int, settings: NotifySettings) -> float:
    """Wait after the `attempts`-th failed attempt (1-based): doubling, capped."""
    return min(settings.retry_base_s * 2 ** max(attempts - 1, 0), settings.retry_max_s)


def mask_number(number: str) -> str | None:
    """A phone number shown by its last two digits only."""
    digits = [c for c in number if c.isdigit()]
    if not digits:
        return None
    return "***" + "".join(digits[-2:])


# -- SQL --------------------------------------------------------------------------------


def queue_decision(
    conn: Connection, decision: Decision, settings: NotifySettings, now: float
) -> Notified | None:
    """Record the SMS a decision calls for; None when its level is not texted.

    The returned Notified says what became of it: "queued" (the notifier will send it),
    "cooldown" (every alarm of the decision was texted within cooldown_s; recorded, never
    sent) or "not_configured" (no Twilio credentials; recorded, never sent).
    """
    if RANK[decision.level] < RANK[settings.min_level]:
        return None
    status: Status = "queued" if settings.configured else "not_configured"
    # Without credentials the rows stand for what would have been sent, so they count
    # for the cooldown too; once credentials are set, only real texts do.
    counted = DELIVERING if settings.configured else (*DELIVERING, "not_configured")
    if _all_texted_recently(conn, decision.alarm_ids, counted, now - settings.cooldown_s):
        status = "cooldown"
    _add_row(
        conn,
        decision.alarm_ids,
        decision_id=decision.id,
        created_at=now,
        body=body_of(decision),
        status=status,
    )
    return Notified(channel="sms", status=status)


def _add_row(conn: Connection, alarm_ids: Sequence[int], **values: object) -> int:
    """Insert an outbox row and its links to the alarms it is about; returns its id."""
    ids = sorted(set(alarm_ids))
    row_id = inserted_id(
        conn.execute(
            sms_outbox.insert().values(
                alarm_ids=json.dumps(ids),
                attempts=0,
                next_attempt_at=values["created_at"],
                **values,
            )
        )
    )
    if ids:
        conn.execute(
            sms_outbox_alarms.insert(), [{"outbox_id": row_id, "alarm_id": a} for a in ids]
        )
    return row_id


def _all_texted_recently(
    conn: Connection, alarm_ids: Sequence[int], statuses: Sequence[str], since: float
) -> bool:
    # A decision about no alarm at all (a manual one) is never held back by a cooldown.
    wanted = set(alarm_ids)
    if not wanted:
        return False
    texted = conn.execute(
        sa.select(sa.func.count(sa.distinct(sms_outbox_alarms.c.alarm_id)))
        .select_from(
            sms_outbox_alarms.join(sms_outbox, sms_outbox.c.id == sms_outbox_alarms.c.outbox_id)
        )
        .where(
            sms_outbox_alarms.c.alarm_id.in_(wanted),
            sms_outbox.c.status.in_(statuses),
            sms_outbox.c.created_at > since,
        )
    ).scalar()
    return texted == len(wanted)


def due(conn: Connection, now: float) -> list[DueRow]:
    """Queued rows whose time has come: digests first (they are owed from an earlier
    hour, and a digest is never held itself), then oldest first."""
    is_digest = sms_outbox.c.decision_id.is_(None)
    rows = conn.execute(
        sa.select(sms_outbox.c.id, sms_outbox.c.body, sms_outbox.c.attempts, is_digest)
        .where(sms_outbox.c.status == "queued", sms_outbox.c.next_attempt_at <= now)
        .order_by(sa.case((is_digest, 0), else_=1), sms_outbox.c.id)
    )
    return [DueRow(r[0], r[1], r[2], bool(r[3])) for r in rows]


def mark_sent(conn: Connection, row_id: int, provider_id: str, now: float) -> None:
    conn.execute(
        sms_outbox.update()
        .where(sms_outbox.c.id == row_id)
        .values(
            status="sent",
            sent_at=now,
            provider_id=provider_id,
            attempts=sms_outbox.c.attempts + 1,
            error=None,
        )
    )


def mark_retry(conn: Connection, row_id: int, error: str, next_at: float) -> None:
    conn.execute(
        sms_outbox.update()
        .where(sms_outbox.c.id == row_id)
        .values(attempts=sms_outbox.c.attempts + 1, error=error, next_attempt_at=next_at)
    )


def mark_failed(conn: Connection, row_id: int, error: str) -> None:
    conn.execute(
        sms_outbox.update()
        .where(sms_outbox.c.id == row_id)
        .values(status="failed", attempts=sms_outbox.c.attempts + 1, error=error)
    )


def sent_in_last_hour(conn: Connection, now: float) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(sms_outbox)
            .where(sms_outbox.c.status == "sent", sms_outbox.c.sent_at > now - RATE_WINDOW_S)
        ).scalar()
        or 0
    )


def hold(conn: Connection, row_ids: Sequence[int]) -> None:
    """Hold queued rows back for the rate limit; the next digest will name them."""
    if row_ids:
        conn.execute(
            sms_outbox.update()
            .where(sms_outbox.c.id.in_(list(row_ids)), sms_outbox.c.status == "queued")
            .values(status="held")
        )


def make_digest(conn: Connection, now: float) -> int | None:
    """Fold every held row into one new queued digest row; returns its id, or None when
    nothing is held."""
    held = conn.execute(
        sa.select(sms_outbox.c.id, sms_outbox.c.body, sms_outbox.c.alarm_ids)
        .where(sms_outbox.c.status == "held")
        .order_by(sms_outbox.c.id)
    ).all()
    if not held:
        return None
    digest_id = _add_row(
        conn,
        [a for row in held for a in json.loads(row.alarm_ids)],
        decision_id=None,
        created_at=now,
        body=digest_body([row.body for row in held]),
        status="queued",
    )
    conn.execute(
        sms_outbox.update()
        .where(sms_outbox.c.id.in_([row.id for row in held]))
        .values(status="digested", digest_id=digest_id)
    )
    return int(digest_id)


def abandon_unsendable(conn: Connection) -> int:
    """Without credentials nothing can be sent: rows a configured run left queued or held
    are recorded as not_configured instead of going out days later when credentials
    return. Returns how many."""
    return conn.execute(
        sms_outbox.update()
        .where(sms_outbox.c.status.in_(("queued", "held")))
        .values(status="not_configured", error=NOT_CONFIGURED)
    ).rowcount


def summary(conn: Connection, now: float) -> tuple[dict[str, int], float | None, int]:
    """counts() and sent_in_last_hour() in one trip to the store's thread."""
    return (*counts(conn), sent_in_last_hour(conn, now))


def counts(conn: Connection) -> tuple[dict[str, int], float | None]:
    """Rows by status (every status present, zeros included) and the last sent_at."""
    by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for status, n in conn.execute(
        sa.select(sms_outbox.c.status, sa.func.count()).group_by(sms_outbox.c.status)
    ):
        by_status[status] = int(n)
    last_sent = conn.execute(sa.select(sa.func.max(sms_outbox.c.sent_at))).scalar()
    return by_status, last_sent


def list_messages(
    conn: Connection, status: str | None = None, limit: int = 100, to: str | None = None
) -> list[OutboxMessage]:
    """Newest first; `to` (already masked) is shown on every row."""
    query = sa.select(sms_outbox).order_by(sms_outbox.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(sms_outbox.c.status == status)
    return [
        OutboxMessage(
            id=r.id,
            decision_id=r.decision_id,
            alarm_ids=json.loads(r.alarm_ids),
            created_at=_dt(r.created_at),
            body=r.body,
            status=r.status,
            attempts=r.attempts,
            next_attempt_at=_dt(r.next_attempt_at),
            sent_at=None if r.sent_at is None else _dt(r.sent_at),
            provider_id=r.provider_id,
            error=r.error,
            digest_id=r.digest_id,
            to=to,
        )
        for r in conn.execute(query)
    ]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
