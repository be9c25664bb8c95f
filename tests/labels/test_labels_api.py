"""Labels over REST and operators' verdicts on alarms, in process with the full lifespan,
on SQLite and PostgreSQL: POST /api/labels (whole batches, bad items named, nothing half
stored, audited), GET /api/labels as JSON and CSV, POST .../alarms/{id}/feedback and a
verdict given with the acknowledgement."""

from __future__ import annotations

import csv
import io

import pytest

from factory_mas.settings import Settings
from tests.auth.test_auth import auth_app
from tests.support.app import running_app
from tests.support.orchestrator import act, alarms, alert, post_alert

GOOD = [
    {"kind": "maintenance", "machine_id": 3, "start": "2026-03-01T08:00:00Z",
     "end": "2026-03-01T09:30:00Z", "comment": "bearing greased"},
    {"kind": "failure", "machine_id": 3, "start": 1772380800, "detail": "spindle seized"},
    {"kind": "incident", "machine_id": 5, "start": "2026-03-02T10:00:00", "detail": "FIRE_RISK"},
]  # fmt: skip


@pytest.fixture
def settings(on_each_database: Settings) -> Settings:
    """Each test here runs on SQLite and again on PostgreSQL."""
    return on_each_database


async def labels(client, query: str = "") -> list[dict]:
    response = await client.get(f"/api/labels{query}")
    assert response.status_code == 200, response.text
    return response.json()["labels"]


async def test_a_batch_is_stored_and_read_back(settings):
    async with running_app(settings) as (_, client):
        posted = await client.post("/api/labels", json=GOOD)
        assert posted.status_code == 201, posted.text
        assert posted.json()["stored"] == 3
        single = await client.post(
            "/api/labels", json={"kind": "maintenance", "machine_id": 4, "start": 1772600000}
        )
        assert single.status_code == 201 and single.json()["stored"] == 1
        found = await labels(client)
        machine_3 = await labels(client, "?machine_id=3")
        incidents = await labels(client, "?kind=incident")
        window = await labels(client, "?since=2026-03-01T08:30:00Z&until=2026-03-02T10:00:00Z")
        newest = await labels(client, "?order=newest&limit=1")
        as_csv = await client.get("/api/labels?format=csv&kind=maintenance")

    assert [(lb["kind"], lb["machine_id"]) for lb in found] == [
        ("maintenance", 3),
        ("failure", 3),
        ("incident", 5),
        ("maintenance", 4),
    ]
    # Times come back in UTC; a time without a zone was read as UTC; seconds as seconds.
    assert found[0]["start"] == "2026-03-01T08:00:00Z"
    assert found[0]["end"] == "2026-03-01T09:30:00Z"
    assert found[1]["start"] == "2026-03-01T16:00:00Z"
    assert found[2]["start"] == "2026-03-02T10:00:00Z"
    assert all(lb["id"] for lb in found)
    assert [lb["kind"] for lb in machine_3] == ["maintenance", "failure"]
    assert [lb["detail"] for lb in incidents] == ["FIRE_RISK"]
    assert [lb["kind"] for lb in window] == ["failure"]
    assert [lb["machine_id"] for lb in newest] == [4]
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(r["machine_id"], r["comment"]) for r in rows] == [("3", "bearing greased"), ("4", "")]


@pytest.mark.parametrize(
    ("item", "field", "says"),
    [
        ({"kind": "repair", "start": "2026-03-01T08:00:00Z"}, "kind", "'repair' is not one of"),
        ({"kind": "incident", "start": "2026-03-01T08:00:00Z", "detail": "SMOKE"}, "detail",
         "'SMOKE' is not one of FIRE_RISK"),
        ({"kind": "alarm_feedback", "start": "2026-03-01T08:00:00Z", "detail": "maybe"}, "detail",
         "'maybe' is not one of confirmed, false_alarm"),
        ({"kind": "maintenance", "start": "2026-03-01T08:00:00Z", "end": "2026-03-01T07:00:00Z"},
         "end", "is before start"),
        ({"kind": "maintenance", "start": "2026-03-01T08:00:00Z", "machine_id": 0}, "machine_id",
         "is not from 1 to 1,000,000"),
        ({"kind": "maintenance"}, "start", "required field is missing"),
        ({"kind": "maintenance", "start": "yesterday"}, "start", "Invalid RFC3339"),
        ({"kind": "maintenance", "start": 1e300}, "start", "is not a time"),
        ({"kind": "maintenance", "start": 1772380800, "machine": 3}, "machine",
         "is not a label field"),
        ({"kind": "maintenance", "start": 1772380800, "id": 9}, "id", "is set by the store"),
    ],
)  # fmt: skip
async def test_a_bad_item_is_named_and_nothing_of_the_batch_is_stored(settings, item, field, says):
    async with running_app(settings) as (_, client):
        response = await client.post("/api/labels", json=[*GOOD, item])
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "invalid_label"
        assert (body["index"], body["field"]) == (3, field)
        assert body["detail"].startswith(f"label 3: {field}: ")
        assert says in body["detail"] and "nothing was stored" in body["detail"]
        assert await labels(client) == []


async def test_every_bad_item_is_listed(settings):
    async with running_app(settings) as (_, client):
        bad = [{"kind": "x", "start": 1}, GOOD[0], {"kind": "failure"}, "not an object"]
        response = await client.post("/api/labels", json=bad)
        empty = await client.post("/api/labels", json=[])
    body = response.json()
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (0, "kind"),
        (2, "start"),
        (3, None),
    ]
    assert "(2 more listed in errors)" in body["detail"]
    assert empty.status_code == 400 and empty.json()["error"] == "empty_batch"


@pytest.mark.parametrize(
    "query",
    ["kind=repair", "machine_id=0", "since=yesterday", "format=xml", "order=random", "limit=0"],
)
async def test_a_bad_query_is_named(settings, query):
    async with running_app(settings) as (_, client):
        response = await client.get(f"/api/labels?{query}")
    assert response.status_code == 400
    assert response.json()["detail"].startswith(query.split("=")[0] + ":")


async def test_viewers_read_operators_write_and_every_write_is_audited(settings):
    async with auth_app(settings) as app:
        client = app.client
        refused = await client.post("/api/labels", json=GOOD, headers=app.as_("viewer"))
        stored = await client.post("/api/labels", json=GOOD[:2], headers=app.as_("operator"))
        named = await client.post(
            "/api/labels", json={**GOOD[2], "by": "night shift"}, headers=app.as_("operator")
        )
        read = await client.get("/api/labels", headers=app.as_("viewer"))
        audit = await client.get("/api/audit", headers=app.as_("admin"))
    assert refused.status_code == 403
    assert stored.status_code == 201 and named.status_code == 201
    found = read.json()["labels"]
    # Labels that name nobody are the calling key's; one that names someone keeps it.
    assert [lb["by"] for lb in found] == ["operator-key", "operator-key", "night shift"]
    entries = [e for e in audit.json()["events"] if e["source"] == "labels"]
    # ... while the audit trail names the key that sent it, whatever the body says.
    assert [e["actor"] for e in entries] == ["operator-key", "operator-key"]
    assert {e["action"] for e in entries} == {"add"}
    assert entries[-1]["detail"]["request"] == {
        "action": "add",
        "kinds": {"maintenance": 1, "failure": 1},
    }
    assert entries[-1]["detail"]["result"]["ids"] == stored.json()["ids"]


# --------------------------------------------------------------------------- alarm feedback


async def test_feedback_on_an_alarm_is_a_label_an_event_and_shown_on_the_alarm(settings):
    async with running_app(settings) as (_, client):
        raised = (await post_alert(client, alert(source="safety_agent", machine_id=9)))["alarms"]
        alarm_id = raised[0]["id"]
        said = await act(
            client, alarm_id, "feedback", by="bob", verdict="false_alarm", comment="welding"
        )
        again = await act(client, alarm_id, "feedback", by="ann", verdict="confirmed")
        listed = await alarms(client)
        detail = (await client.get(f"/api/orchestrator/alarms/{alarm_id}")).json()
        found = await labels(client, "?kind=alarm_feedback")
        bad = await act(client, alarm_id, "feedback", by="bob", verdict="maybe")
        missing = await act(client, alarm_id, "feedback", by="bob")
        unknown = await act(client, 99999, "feedback", by="bob", verdict="confirmed")
        nobody = await act(client, alarm_id, "feedback", verdict="confirmed")
        after = await labels(client, "?kind=alarm_feedback")

    assert said.status_code == 200 and said.json()["feedback"] == "false_alarm"
    assert again.json()["feedback"] == "confirmed"
    assert listed[0]["feedback"] == "confirmed"  # the latest verdict
    events = [
        (e["kind"], e["by"], e["detail"]) for e in detail["events"] if e["kind"] == "feedback"
    ]
    assert events == [("feedback", "bob", "false_alarm: welding"), ("feedback", "ann", "confirmed")]
    assert [
        (lb["detail"], lb["alarm_id"], lb["machine_id"], lb["source"], lb["comment"], lb["by"])
        for lb in found
    ] == [
        ("false_alarm", alarm_id, 9, "safety_agent", "welding", "bob"),
        ("confirmed", alarm_id, 9, "safety_agent", "", "ann"),
    ]
    # The label starts when the alarm was raised: the moment the model's output is judged.
    assert found[0]["start"] == raised[0]["first_seen"]
    assert bad.status_code == 422 and bad.json()["field"] == "verdict"
    assert "'maybe' is not one of confirmed, false_alarm" in bad.json()["detail"]
    assert missing.status_code == 422 and missing.json()["field"] == "verdict"
    assert unknown.status_code == 404
    assert nobody.status_code == 422 and nobody.json()["field"] == "by"
    assert len(after) == 2


async def test_a_verdict_given_with_the_acknowledgement(settings):
    async with running_app(settings) as (_, client):
        first = (await post_alert(client, alert(machine_id=4)))["alarms"][0]["id"]
        second = (await post_alert(client, alert(machine_id=5)))["alarms"][0]["id"]
        acked = await act(
            client, first, "ack", by="bob", note="on it", feedback="confirmed", comment="real smoke"
        )
        plain = await act(client, second, "ack", by="bob")
        twice = await act(client, first, "ack", by="bob", feedback="false_alarm")
        bad = await act(client, second, "ack", by="bob", feedback="nope")
        lonely = await act(client, second, "ack", by="bob", comment="no verdict")
        detail = (await client.get(f"/api/orchestrator/alarms/{first}")).json()
        found = await labels(client, "?kind=alarm_feedback")

    assert acked.status_code == 200, acked.text
    assert acked.json()["state"] == "ACTIVE_ACK" and acked.json()["feedback"] == "confirmed"
    assert plain.status_code == 200 and plain.json()["feedback"] is None
    kinds = [(e["kind"], e["detail"]) for e in detail["events"]]
    assert kinds[-2:] == [("acked", "on it"), ("feedback", "confirmed: real smoke")]
    # An ack refused (already acknowledged) keeps no verdict either: they are one change.
    assert twice.status_code == 409
    assert bad.status_code == 422 and bad.json()["field"] == "feedback"
    assert lonely.status_code == 422 and lonely.json()["field"] == "comment"
    assert [(lb["alarm_id"], lb["detail"], lb["comment"]) for lb in found] == [
        (first, "confirmed", "real smoke")
    ]


async def test_feedback_needs_an_operator_and_is_in_the_audit_trail(settings):
    async with auth_app(settings) as app:
        client, operator = app.client, app.as_("operator")
        posted = await client.post("/api/orchestrator/alert", json=alert(), headers=operator)
        alarm_id = posted.json()["alarms"][0]["id"]
        path = f"/api/orchestrator/alarms/{alarm_id}/feedback"
        refused = await client.post(path, json={"verdict": "confirmed"}, headers=app.as_("viewer"))
        # With keys, the key's name is who said it, whatever the body claims.
        said = await client.post(
            path, json={"verdict": "confirmed", "by": "someone else"}, headers=operator
        )
        audit = await client.get("/api/audit", headers=app.as_("admin"))
        found = (await client.get("/api/labels", headers=app.as_("viewer"))).json()["labels"]
    assert refused.status_code == 403
    assert said.status_code == 200, said.text
    (entry,) = [e for e in audit.json()["events"] if e["action"] == "feedback"]
    assert (entry["actor"], entry["source"]) == ("operator-key", f"alarm:{alarm_id}")
    assert entry["detail"]["detail"] == "confirmed"
    assert [(lb["by"], lb["detail"]) for lb in found] == [("operator-key", "confirmed")]


async def test_feedback_keeps_an_outside_alarms_machine_as_it_is(settings):
    # An alert from outside may name any machine; its verdict is recorded all the same.
    async with running_app(settings) as (_, client):
        raised = (await post_alert(client, alert(machine_id=5_000_000)))["alarms"][0]
        said = await act(client, raised["id"], "feedback", by="bob", verdict="confirmed")
        found = await labels(client)
    assert said.status_code == 200, said.text
    assert [(lb["machine_id"], lb["alarm_id"]) for lb in found] == [(5_000_000, raised["id"])]
