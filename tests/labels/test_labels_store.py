"""The labels table on SQLite and PostgreSQL: labels stored and read back whole, in start
order, filtered, paged, and the audit row of a batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import msgspec
import pytest
import sqlalchemy as sa

from factory_mas.labels import store as label_store
from factory_mas.labels.model import Label, LabelError, checked
from factory_mas.labels.store import add_labels, insert_labels, labels_in, read_labels
from factory_mas.store import Store, config_changes

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


LABELS = [
    Label(kind="failure", machine_id=3, start=at(5), detail="bearing", by="ann"),
    Label(kind="maintenance", machine_id=3, start=at(1), end=at(2), comment="oil change"),
    Label(kind="incident", machine_id=7, start=at(3), end=at(3.5), detail="FIRE_RISK"),
    Label(
        kind="alarm_feedback",
        machine_id=7,
        start=at(3),
        detail="false_alarm",
        alarm_id=42,
        source="safety_agent",
        comment="welding nearby",
        by="bob",
    ),
    Label(kind="incident", start=at(4), detail="CYBER_ATTACK"),  # the whole plant
]


async def test_labels_round_trip_in_start_order(store: Store) -> None:
    ids = await store.write(insert_labels, LABELS)
    assert len(set(ids)) == len(LABELS)
    found = await store.read(lambda conn: list(read_labels(conn)))
    # Back whole, with their ids, oldest start first (a tie in start by id).
    expected = sorted(
        (msgspec.structs.replace(lb, id=i) for lb, i in zip(LABELS, ids, strict=True)),
        key=lambda lb: (lb.start, lb.id),
    )
    assert found == expected
    assert [lb.start for lb in found] == sorted(lb.start for lb in LABELS)


async def test_filters_by_machine_kind_and_start(store: Store) -> None:
    await store.write(insert_labels, LABELS)

    async def kinds(**query: object) -> list[tuple[str, int | None]]:
        found = await store.read(lambda conn: list(read_labels(conn, **query)))
        return [(lb.kind, lb.machine_id) for lb in found]

    assert await kinds(machine_id=7) == [("incident", 7), ("alarm_feedback", 7)]
    assert await kinds(kind="incident") == [("incident", 7), ("incident", None)]
    # since is inclusive, until exclusive, both on the label's start.
    since, until = at(3).timestamp(), at(5).timestamp()
    assert await kinds(since=since, until=until) == [
        ("incident", 7),
        ("alarm_feedback", 7),
        ("incident", None),
    ]
    assert await kinds(limit=2) == [("maintenance", 3), ("incident", 7)]
    assert await kinds(machine_id=999) == []


async def test_paging_reads_every_label_once_either_way(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of 3 over 10 labels, several of them starting at the same moment.
    monkeypatch.setattr(label_store, "READ_PAGE_ROWS", 3)
    many = [Label(kind="maintenance", machine_id=1, start=at(i // 2)) for i in range(10)]
    ids = await store.write(insert_labels, many)
    oldest = await store.read(lambda conn: [lb.id for lb in read_labels(conn)])
    newest = await store.read(lambda conn: [lb.id for lb in read_labels(conn, newest_first=True)])
    assert oldest == ids and newest == ids[::-1]
    limited = await store.read(lambda conn: [lb.id for lb in read_labels(conn, limit=7)])
    assert limited == ids[:7]


async def test_a_batch_and_its_audit_row_commit_together(store: Store) -> None:
    ids = await store.write(partial(add_labels, by="shift-lead", origin="http"), LABELS[:3])

    def audit(conn: sa.Connection) -> list[sa.Row]:
        return list(conn.execute(sa.select(config_changes)))

    (row,) = await store.read(audit)
    assert (row.target, row.by, row.origin, row.accepted) == ("labels", "shift-lead", "http", True)
    assert msgspec.json.decode(row.data) == {
        "request": {"action": "add", "kinds": {"failure": 1, "maintenance": 1, "incident": 1}},
        "result": {"ids": ids},
    }


async def test_labels_in_reads_a_database_for_training(store: Store) -> None:
    await store.write(insert_labels, LABELS)
    found = labels_in(store.url)
    assert [lb.kind for lb in found] == ["maintenance", "incident", "alarm_feedback", "incident",
                                         "failure"]  # fmt: skip


def test_labels_in_an_old_database_are_none(tmp_path) -> None:
    # A database no server of this version has opened: no labels table, so no labels.
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE schema_version (version INTEGER)"))
    engine.dispose()
    assert labels_in(url) == []


@pytest.mark.parametrize(
    ("label", "field"),
    [
        (Label(kind="incident", start=T0, detail="FIRE"), "detail"),
        (Label(kind="alarm_feedback", start=T0, detail="maybe"), "detail"),
        (Label(kind="maintenance", start=T0, machine_id=0), "machine_id"),
        (Label(kind="maintenance", start=T0, machine_id=1_000_001), "machine_id"),
        (Label(kind="maintenance", start=at(2), end=at(1)), "end"),
        (Label(kind="maintenance", start=T0, comment="x" * 2001), "comment"),
        (Label(kind="maintenance", start=T0, alarm_id=0), "alarm_id"),
    ],
)
def test_checked_names_the_bad_field(label: Label, field: str) -> None:
    with pytest.raises(LabelError) as bad:
        checked(label)
    assert bad.value.field == field


def test_checked_reads_a_time_without_zone_as_utc() -> None:
    label = checked(Label(kind="failure", start=datetime(2026, 3, 1, 8, 0)))
    assert label.start == T0 and label.start.tzinfo is UTC
