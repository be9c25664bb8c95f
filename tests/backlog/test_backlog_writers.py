"""Shift-summary writers: Gemini through the real google-genai client against a local fake
server, the offline fallback, and the Markdown report."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest

from factory_mas.backlog.markdown import to_markdown
from factory_mas.backlog.writers import (
    OFFLINE,
    GeminiWriter,
    WriterError,
    offline,
    write_summary,
)
from factory_mas.messages import MachineCount, ShiftFacts, ShiftSummary
from factory_mas.settings import BacklogSettings
from tests.support.fake_gemini import FakeGemini

KEY = "AIzaTEST-not-a-real-key-0123456789"
MODEL = "gemini-test-model"
ANSWER = {
    "narrative": "Machine 7 raised 5 alarms; 2 remain unacknowledged.",
    "recommendations": ["Inspect machine 7.", "Review the 2 unacknowledged alarms."],
}
# A hang that outlives the test's guard would mean the timeout did not work.
HANG_GUARD_S = 10.0


def busy_facts() -> ShiftFacts:
    return ShiftFacts(
        shift_start=datetime(2025, 3, 4, 6, 0, tzinfo=UTC),
        shift_end=datetime(2025, 3, 4, 14, 0, tzinfo=UTC),
        alarms_raised=12,
        alarms_by_source={"pm_agent": 7, "safety_agent": 3, "cyber_agent": 2},
        alarms_by_level={"WARNING": 6, "CRITICAL": 4, "EMERGENCY": 2},
        top_machines=[
            MachineCount(machine_id=7, alarms=5, highest_level="EMERGENCY"),
            MachineCount(machine_id=12, alarms=4, highest_level="WARNING"),
            MachineCount(machine_id=3, alarms=1, highest_level="WARNING"),
        ],
        alarms_open=4,
        alarms_acknowledged=9,
        alarms_unacknowledged=3,
        decisions=6,
        decisions_by_action={"inspect": 4, "emergency_stop": 2},
        sms_by_status={"sent": 2, "failed": 1, "held": 1},
        predictions_by_agent={"pm_agent": 28800, "energy_agent": 28800},
        predictions_by_level={"NORMAL": 57000, "WARNING": 500, "CRITICAL": 100},
        ppe_frames=2400,
        ppe_compliance_rate=0.912,
        energy_kwh=1834.56,
        energy_anomalies=17,
        top_issues=["safety_agent FIRE_RISK on machine 7 (EMERGENCY, 3 times)"],
    )


def quiet_facts() -> ShiftFacts:
    return ShiftFacts(
        shift_start=datetime(2025, 3, 4, 14, 0, tzinfo=UTC),
        shift_end=datetime(2025, 3, 4, 22, 0, tzinfo=UTC),
        predictions_by_agent={"pm_agent": 100},
        predictions_by_level={"NORMAL": 100},
        ppe_frames=50,
        ppe_compliance_rate=1.0,
        energy_kwh=120.0,
    )


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(KEY, answer=json.dumps(ANSWER)) as server:
        yield server


def settings_for(fake: FakeGemini | None, **overrides: object) -> BacklogSettings:
    values: dict[str, object] = {
        "gemini_api_key": KEY,
        "gemini_model": MODEL,
        "gemini_base_url": fake.base_url if fake else "",
        "gemini_timeout_s": 2.0,
        "gemini_retries": 2,
        "gemini_max_output_tokens": 777,
    }
    values.update(overrides)
    return BacklogSettings(**values)


def writer(settings: BacklogSettings) -> GeminiWriter:
    return GeminiWriter(settings, backoff_s=0.01)


async def summarise(facts: ShiftFacts, settings: BacklogSettings):
    async with asyncio.timeout(HANG_GUARD_S):
        return await write_summary(facts, settings, writer(settings))


@pytest.mark.integration
async def test_request_carries_the_facts_and_the_answer_is_parsed(fake: FakeGemini) -> None:
    facts = busy_facts()
    written = await summarise(facts, settings_for(fake))

    assert written.narrative == ANSWER["narrative"]
    assert written.recommendations == ANSWER["recommendations"]
    assert written.generator == f"gemini:{MODEL}"
    assert written.note == ""

    [request] = fake.received
    assert request.model == MODEL
    assert request.headers["x-goog-api-key"] == KEY
    assert KEY not in request.path
    # The facts travel as JSON inside the prompt, exactly as computed.
    start = request.prompt.index('{"shift_start"')
    sent = msgspec.json.decode(request.prompt[start:], type=ShiftFacts)
    assert sent == facts
    assert '"alarms_raised":12' in request.prompt
    assert '"machine_id":7' in request.prompt
    assert "do not invent" in request.prompt
    config = request.generation_config
    assert config["maxOutputTokens"] == 777
    assert config["responseMimeType"] == "application/json"
    schema = config["responseSchema"]
    assert set(schema["properties"]) == {"narrative", "recommendations"}
    assert schema["properties"]["recommendations"]["type"] == "ARRAY"
    assert config["temperature"] <= 0.3


@pytest.mark.integration
async def test_a_failure_is_retried_and_then_succeeds(fake: FakeGemini) -> None:
    fake.fail_next(2, status=503)
    written = await summarise(busy_facts(), settings_for(fake, gemini_retries=2))

    assert written.generator == f"gemini:{MODEL}"
    assert written.recommendations == ANSWER["recommendations"]
    assert fake.requests == 3


@pytest.mark.integration
async def test_always_failing_gives_the_offline_summary_with_a_note(fake: FakeGemini) -> None:
    fake.fail_next(100, status=500)
    facts = busy_facts()
    written = await summarise(facts, settings_for(fake, gemini_retries=1))

    assert written.generator == OFFLINE
    assert written.note.startswith("gemini failed: HTTP 500")
    assert "2 attempts" in written.note
    assert (written.narrative, written.recommendations) == offline(facts)
    assert fake.requests == 2


@pytest.mark.integration
async def test_a_hanging_server_gives_the_offline_summary_within_the_timeout(
    fake: FakeGemini,
) -> None:
    fake.hang(60)
    settings = settings_for(fake, gemini_timeout_s=0.5, gemini_retries=1)
    written = await summarise(busy_facts(), settings)

    assert written.generator == OFFLINE
    assert "no answer within 0.5 s" in written.note
    assert fake.requests == 2


@pytest.mark.integration
async def test_no_key_is_offline_and_nothing_is_sent(fake: FakeGemini) -> None:
    written = await summarise(busy_facts(), settings_for(fake, gemini_api_key=""))

    assert written.generator == OFFLINE
    assert written.note == "no GEMINI_API_KEY"
    assert written.narrative
    assert fake.requests == 0
    with pytest.raises(WriterError, match="no GEMINI_API_KEY"):
        await writer(settings_for(fake, gemini_api_key="")).write(busy_facts())
    assert fake.requests == 0


@pytest.mark.integration
async def test_garbage_answers_give_the_offline_summary(fake: FakeGemini) -> None:
    fake.garbage = True
    written = await summarise(busy_facts(), settings_for(fake, gemini_retries=1))

    assert written.generator == OFFLINE
    assert "not JSON" in written.note
    assert fake.requests == 2


@pytest.mark.integration
@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"narrative": "", "recommendations": []}, "no narrative"),
        ({"narrative": "ok", "recommendations": "inspect"}, "not a list of strings"),
        ({"narrative": "ok", "recommendations": [1, 2]}, "not a list of strings"),
        (["ok"], "not a JSON object"),
    ],
)
async def test_answers_of_the_wrong_shape_are_refused(answer: object, reason: str) -> None:
    with (
        FakeGemini(KEY, answer=json.dumps(answer)) as server,
        pytest.raises(WriterError, match=reason),
    ):
        await writer(settings_for(server, gemini_retries=0)).write(busy_facts())


@pytest.mark.integration
async def test_long_answers_are_capped(fake: FakeGemini) -> None:
    fake.answer = json.dumps({"narrative": "x" * 10_000, "recommendations": ["y" * 1000] * 30})
    narrative, recommendations = await writer(settings_for(fake)).write(busy_facts())

    assert 0 < len(narrative) <= 4000
    assert 0 < len(recommendations) <= 10
    assert all(len(r) <= 400 for r in recommendations)


@pytest.mark.integration
async def test_a_bad_key_is_not_retried_and_never_leaks(
    fake: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="factory_mas")
    wrong = "AIzaWRONG-key-that-the-server-rejects-42"
    written = await summarise(busy_facts(), settings_for(fake, gemini_api_key=wrong))

    assert written.generator == OFFLINE
    assert written.note == "gemini failed: HTTP 400 INVALID_ARGUMENT"
    assert fake.requests == 0  # refused before it counted: the key is checked first
    assert wrong not in written.note
    assert wrong not in caplog.text


@pytest.mark.integration
async def test_the_key_never_appears_in_a_failure_reason(fake: FakeGemini) -> None:
    # The server echoes the key back in its answer; the reason must not carry it on.
    fake.answer = f"Invalid request with key {KEY}"
    with pytest.raises(WriterError) as raised:
        await writer(settings_for(fake, gemini_retries=0)).write(busy_facts())
    assert KEY not in str(raised.value)

    # Nothing listens: connection refused.
    closed = settings_for(None, gemini_base_url="http://127.0.0.1:9", gemini_retries=0)
    written = await summarise(busy_facts(), closed)
    assert written.generator == OFFLINE
    assert written.note.startswith("gemini failed: ")
    assert KEY not in written.note


def test_offline_recommendations_follow_the_rules() -> None:
    facts = busy_facts()
    narrative, recs = offline(facts)
    text = "\n".join(recs)

    assert (narrative, recs) == offline(busy_facts())  # deterministic
    assert "Review the 3 unacknowledged alarms at handover" in text
    assert "4 alarms still open" in text
    assert "6 CRITICAL or EMERGENCY alarms" in text
    assert "Inspect machine 7: 5 alarms this shift, up to EMERGENCY." in text
    assert "Inspect machine 12: 4 alarms" in text
    assert "machine 3" not in text  # one WARNING alarm is not worth an inspection
    assert "PPE compliance was 91.2%, below 95.0%" in text
    assert "17 anomalous energy readings" in text
    assert "2 cyber alarms" in text
    assert "Check the SMS notifier (1 failed, 1 held)" in text

    for number in ("12 alarms", "2 EMERGENCY", "machine 7", "91.2%"):
        assert number in narrative
    assert "1,834.6 kWh" in narrative
    assert "3 unacknowledged" in narrative
    assert "4 inspect" in narrative


def test_offline_quiet_shift() -> None:
    narrative, recs = offline(quiet_facts())

    assert narrative.startswith("No alarms were raised.")
    assert "100.0%" in narrative
    assert recs == ["No follow-up needed beyond the routine handover checks."]


def test_offline_without_ppe_frames_or_texts() -> None:
    facts = msgspec.structs.replace(quiet_facts(), ppe_frames=0, ppe_compliance_rate=None)
    narrative, recs = offline(facts)
    assert "No PPE camera frames" in narrative
    assert not any("PPE" in r for r in recs)


def test_markdown_report() -> None:
    facts = busy_facts()
    narrative, recs = offline(facts)
    summary = ShiftSummary(
        shift_start=facts.shift_start,
        shift_end=facts.shift_end,
        facts=facts,
        narrative=narrative,
        recommendations=recs,
        generator=OFFLINE,
        generated_at=datetime(2025, 3, 4, 14, 0, 5, tzinfo=UTC),
        partial=True,
        note="no GEMINI_API_KEY",
        id=42,
    )
    md = to_markdown(summary, tz="Europe/Berlin")

    assert md.startswith("# Shift summary 2025-03-04 07:00 to 15:00 (Europe/Berlin) (partial)\n")
    assert "**Partial:**" in md
    assert "**offline**" in md
    assert "no GEMINI_API_KEY" in md
    assert narrative in md
    for rec in recs:
        assert f"- {rec}" in md
    assert "| Alarms raised | 12 |" in md
    assert "| By level | EMERGENCY 2, CRITICAL 4, WARNING 6 |" in md
    assert "| By source | pm_agent 7, safety_agent 3, cyber_agent 2 |" in md
    assert "| Unacknowledged | 3 |" in md
    assert "| Decisions | 6 (inspect 4, emergency_stop 2) |" in md
    assert "| Texts to the supervisor | sent 2, failed 1, held 1 |" in md
    assert "| PPE compliance | 91.2% of 2,400 frames |" in md
    assert "| Energy | 1,834.6 kWh, 17 anomalous readings |" in md
    assert "| 7 | 5 | EMERGENCY |" in md
    assert "1. safety_agent FIRE_RISK on machine 7 (EMERGENCY, 3 times)" in md

    whole = msgspec.structs.replace(summary, partial=False, generator=f"gemini:{MODEL}", note="")
    md = to_markdown(whole)
    assert "partial" not in md.lower()
    assert md.startswith("# Shift summary 2025-03-04 06:00 to 14:00 (UTC)\n")
    assert f"**gemini:{MODEL}**" in md
