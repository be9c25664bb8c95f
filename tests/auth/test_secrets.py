"""Secrets (Twilio token and numbers, Gemini key, MQTT password, API keys) never show in
what the server says: /status, /health, settings views, errors and logs."""

from __future__ import annotations

import logging

import msgspec
import pytest

from factory_mas.settings import Settings
from tests.support.app import running_app

# The Twilio and Gemini fakes listen on loopback ports.
pytestmark = pytest.mark.integration

SECRETS = {
    "twilio_auth_token": "tok-5ecret-twilio-0000",
    "twilio_account_sid": "AC" + "7" * 32,
    "twilio_to_number": "+15550009876",
    "twilio_from_number": "+15550001234",
    "gemini_api_key": "AIza-5ecret-gemini-1111",
    "mqtt_password": "5ecret-mqtt-2222",
}


def with_secrets(settings: Settings) -> Settings:
    replace = msgspec.structs.replace
    notify = replace(
        settings.notify,
        twilio_auth_token=SECRETS["twilio_auth_token"],
        twilio_account_sid=SECRETS["twilio_account_sid"],
        twilio_to_number=SECRETS["twilio_to_number"],
        twilio_from_number=SECRETS["twilio_from_number"],
        # Unreachable on purpose: sending fails, and the failure must not leak either.
        twilio_base_url="http://127.0.0.1:9",
        retry_base_s=0.05,
    )
    backlog = replace(
        settings.backlog,
        gemini_api_key=SECRETS["gemini_api_key"],
        gemini_base_url="http://127.0.0.1:9",
        gemini_timeout_s=0.5,
        gemini_retries=0,
    )
    # A broker nobody listens on: the bridge keeps failing to connect, and says so.
    mqtt = replace(settings.mqtt, broker="127.0.0.1", port=9, password=SECRETS["mqtt_password"],
                   username="factory")  # fmt: skip
    return replace(settings, notify=notify, backlog=backlog, mqtt=mqtt)


def leaks(text: str) -> list[str]:
    found = [name for name, value in SECRETS.items() if value in text]
    # Phone numbers also without the plus sign.
    found += [n for n in ("twilio_to_number", "twilio_from_number") if SECRETS[n][1:] in text]
    return found


async def test_no_secret_in_answers_or_logs(settings, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_app(with_secrets(settings)) as (c, client):
        # Things that use the secrets and fail: a texted decision, a summary, the broker.
        await client.post(
            "/api/orchestrator/alert",
            json={"level": "EMERGENCY", "type": "FIRE_RISK", "source": "plc", "details": "x",
                  "machine_id": 1},
        )  # fmt: skip
        await c.orchestrator.idle()
        await c.notifier.flush()
        made = await client.post("/api/backlog/generate")
        assert made.status_code == 201 and made.json()["generator"] == "offline"
        answers = []
        for path in (
            "/status",
            "/health",
            "/system-state",
            "/api/config",
            "/api/notify/outbox",
            "/api/notify/status",
            "/api/backlog/status",
            "/api/backlog/latest",
            "/api/orchestrator/decisions",
            "/api/planner/playbooks",
            "/api/pm/status",
        ):
            answers.append((path, (await client.get(path)).text))
    for path, text in answers:
        assert not leaks(text), f"{path} shows {leaks(text)}"
    assert not leaks(caplog.text), f"the log shows {leaks(caplog.text)}"
    assert "gemini failed" in made.json()["note"]
