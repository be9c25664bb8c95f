"""Words for a shift's facts: Gemini when it is configured and answers, else plain rules.

The facts (`ShiftFacts`) are computed elsewhere and are the truth; a writer only words
them. `write_summary` never fails: without GEMINI_API_KEY, or when Gemini errs, hangs or
answers nonsense, the offline writer words the same facts, so no shift goes without its
summary. The only module that knows google-genai: its errors become `WriterError` here,
already redacted (the API key never reaches a message or a log).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import NamedTuple

import msgspec

from ..errors import FactoryError
from ..levels import RANK
from ..messages import ShiftFacts
from ..settings import BacklogSettings

log = logging.getLogger(__name__)

OFFLINE = "offline"
# Bounds on what a model may hand back; longer text is cut, not rejected.
MAX_NARRATIVE_CHARS = 4000
MAX_RECOMMENDATIONS = 10
MAX_RECOMMENDATION_CHARS = 400
MAX_REASON_CHARS = 200
# Rules of the offline recommendations.
PPE_TARGET = 0.95
MACHINE_ALARMS_TO_INSPECT = 3
SEVERE = ("CRITICAL", "EMERGENCY")
# HTTP answers that retrying the same request cannot fix (bad key, bad model, bad request).
_PERMANENT_CODES = frozenset({400, 401, 403, 404})

INSTRUCTION = """\
You write the shift handover summary of a factory monitoring system, for the lead of the
next shift. The facts of the shift follow as JSON: they were computed from the alarm,
decision and prediction records and are correct. Use only the numbers given; do not invent
numbers, machines, causes or events that are not in the facts, and do not round counts.
Write `narrative`: 3 to 6 plain sentences on what happened (alarms by level and source, the
machines and issues that stood out, what is still open or unacknowledged, decisions and
texts to the supervisor, PPE compliance, energy, predictions). Write `recommendations`:
2 to 6 short, concrete actions for the next shift, each grounded in the facts.
Answer with JSON only.

Facts:
"""


class WriterError(FactoryError):
    """Gemini gave no usable summary; `reason` is short, redacted and safe to store."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Written(NamedTuple):
    narrative: str
    recommendations: list[str]
    # "gemini:<model>" or "offline".
    generator: str
    # Why offline ("no GEMINI_API_KEY", "gemini failed: ..."); empty for Gemini.
    note: str = ""


# -- offline --------------------------------------------------------------------------


def _n(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count:,} {noun if count == 1 else (plural or noun + 's')}"


def _by_rank(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Levels worst first (unknown names last), dropping zeros."""
    items = [(k, v) for k, v in counts.items() if v]
    return sorted(items, key=lambda kv: (-RANK.get(kv[0], -1), kv[0]))


def _by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    items = [(k, v) for k, v in counts.items() if v]
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))


def _listing(items: list[tuple[str, int]]) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in items)


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def offline(facts: ShiftFacts, reason: str = "") -> tuple[str, list[str]]:
    """A narrative and recommendations from the facts alone, by fixed rules.

    Deterministic: the same facts give the same words. `reason` (why Gemini was not used)
    is not part of the text; it is accepted so callers can pass it along uniformly.
    """
    del reason
    return _offline_narrative(facts), _offline_recommendations(facts)


def _offline_narrative(f: ShiftFacts) -> str:
    s: list[str] = []
    if f.alarms_raised:
        line = f"{_n(f.alarms_raised, 'alarm')} {'was' if f.alarms_raised == 1 else 'were'} raised"
        levels = _by_rank(f.alarms_by_level)
        if levels:
            line += f" ({_listing(levels)})"
        sources = _by_count(f.alarms_by_source)
        if sources:
            line += ", from " + ", ".join(f"{k} ({v:,})" for k, v in sources)
        s.append(line + ".")
        if f.top_machines:
            named = [
                f"machine {m.machine_id} ({_n(m.alarms, 'alarm')}, up to {m.highest_level})"
                for m in f.top_machines[:3]
            ]
            s.append(f"Most alarms came from {_join(named)}.")
        if f.top_issues:
            s.append(f"The most serious: {'; '.join(f.top_issues[:3])}.")
        s.append(
            f"At the end of the shift {_n(f.alarms_open, 'alarm')} "
            f"{'was' if f.alarms_open == 1 else 'were'} still open and "
            f"{f.alarms_unacknowledged:,} unacknowledged; "
            f"{f.alarms_acknowledged:,} had been acknowledged."
        )
    else:
        s.append("No alarms were raised.")
    if f.decisions:
        line = f"The planner took {_n(f.decisions, 'decision')}"
        actions = _by_count(f.decisions_by_action)
        if actions:
            line += f" ({_listing(actions)})"
        s.append(line + ".")
    texts = _by_count(f.sms_by_status)
    if texts:
        s.append(f"Texts to the supervisor: {_listing(texts)}.")
    if f.ppe_compliance_rate is not None and f.ppe_frames:
        s.append(
            f"PPE compliance was {_pct(f.ppe_compliance_rate)} over "
            f"{_n(f.ppe_frames, 'camera frame')}."
        )
    else:
        s.append("No PPE camera frames were checked.")
    energy = f"The machines drew {f.energy_kwh:,.1f} kWh"
    if f.energy_anomalies:
        energy += f", with {_n(f.energy_anomalies, 'anomalous reading')}"
    s.append(energy + ".")
    predictions = sum(f.predictions_by_agent.values())
    if predictions:
        line = f"The agents scored {_n(predictions, 'prediction')}"
        elevated = [(k, v) for k, v in _by_rank(f.predictions_by_level) if k != "NORMAL"]
        if elevated:
            line += f", of them {_listing(elevated)}"
        s.append(line + ".")
    return " ".join(s)


def _offline_recommendations(f: ShiftFacts) -> list[str]:
    r: list[str] = []
    severe = sum(f.alarms_by_level.get(level, 0) for level in SEVERE)
    if f.alarms_unacknowledged:
        r.append(
            f"Review the {_n(f.alarms_unacknowledged, 'unacknowledged alarm')} at handover: "
            "acknowledge each or escalate it."
        )
    if f.alarms_open:
        r.append(
            f"Confirm an owner for each of the {_n(f.alarms_open, 'alarm')} still open "
            "before work starts."
        )
    if severe:
        alarms = _n(severe, "CRITICAL or EMERGENCY alarm", "CRITICAL or EMERGENCY alarms")
        r.append(f"Follow up the {alarms}: check that the planned actions were carried out.")
    for m in f.top_machines:
        if m.alarms >= MACHINE_ALARMS_TO_INSPECT or m.highest_level in SEVERE:
            r.append(
                f"Inspect machine {m.machine_id}: {_n(m.alarms, 'alarm')} this shift, "
                f"up to {m.highest_level}."
            )
    if f.ppe_compliance_rate is not None and f.ppe_frames and f.ppe_compliance_rate < PPE_TARGET:
        r.append(
            f"PPE compliance was {_pct(f.ppe_compliance_rate)}, below {_pct(PPE_TARGET)}: "
            "brief the crew on helmets, boots and workwear before the shift starts."
        )
    if f.energy_anomalies:
        r.append(
            f"Check the power profile of the machines behind the "
            f"{_n(f.energy_anomalies, 'anomalous energy reading')}."
        )
    if f.alarms_by_source.get("cyber_agent"):
        cyber = _n(f.alarms_by_source["cyber_agent"], "cyber alarm")
        r.append(f"Review network activity with IT: {cyber}.")
    stuck = {k: f.sms_by_status.get(k, 0) for k in ("failed", "held", "not_configured")}
    if stuck["failed"] or stuck["held"]:
        parts = [f"{v:,} {k}" for k, v in stuck.items() if v and k != "not_configured"]
        r.append(
            f"Check the SMS notifier ({', '.join(parts)}): make sure the supervisor got "
            "the critical texts."
        )
    if stuck["not_configured"]:
        r.append(
            f"Configure Twilio: {_n(stuck['not_configured'], 'text')} to the supervisor "
            "could not be sent."
        )
    if not r:
        r.append("No follow-up needed beyond the routine handover checks.")
    return r


# -- Gemini ---------------------------------------------------------------------------


class GeminiWriter:
    """Words the facts through Gemini (google-genai's async client).

    Each attempt is bounded by `gemini_timeout_s`, both in the HTTP client and by
    `asyncio.timeout` around the call, so a server that never answers costs one timeout.
    Failed attempts are retried `gemini_retries` times after `backoff_s`, 2 x `backoff_s`,
    ...; answers that are not the expected JSON count as failures. google-genai's own
    retries are switched off so these are the only ones.
    """

    def __init__(self, settings: BacklogSettings, backoff_s: float = 1.0) -> None:
        self.settings = settings
        self.backoff_s = backoff_s

    @property
    def model(self) -> str:
        return self.settings.gemini_model

    @property
    def generator(self) -> str:
        return f"gemini:{self.settings.gemini_model}"

    def prompt(self, facts: ShiftFacts) -> str:
        return INSTRUCTION + msgspec.json.encode(facts).decode()

    async def write(self, facts: ShiftFacts) -> tuple[str, list[str]]:
        """(narrative, recommendations); raises WriterError after the last attempt."""
        if not self.settings.gemini_api_key:
            raise WriterError("no GEMINI_API_KEY", permanent=True)
        attempts = self.settings.gemini_retries + 1
        error = WriterError("no attempt made")
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return await self._attempt(facts)
            except WriterError as exc:
                error = exc
                log.info("gemini attempt %d/%d failed: %s", attempt + 1, attempts, exc.reason)
                if exc.permanent:
                    break
        if attempts > 1 and not error.permanent:
            raise WriterError(f"{error.reason} (after {attempts} attempts)")
        raise error

    async def _attempt(self, facts: ShiftFacts) -> tuple[str, list[str]]:
        # Imported on first use: google-genai takes over a second to import, and an
        # installation without a key never needs it (nor httpx, for it).
        import httpx
        from google import genai
        from google.genai import errors, types

        s = self.settings
        # Our own httpx client: google-genai would otherwise pick aiohttp when it is
        # installed, whose connection errors it retries on its own after 1-10 s.
        transport = httpx.AsyncClient(timeout=s.gemini_timeout_s)
        http = types.HttpOptions(
            timeout=max(1, round(s.gemini_timeout_s * 1000)),
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=transport,
        )
        if s.gemini_base_url:
            http.base_url = s.gemini_base_url
        config = types.GenerateContentConfig(
            temperature=0.2,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            max_output_tokens=s.gemini_max_output_tokens,
            response_mime_type="application/json",
            response_schema=types.Schema(
                type=types.Type.OBJECT,
                properties={
                    "narrative": types.Schema(type=types.Type.STRING),
                    "recommendations": types.Schema(
                        type=types.Type.ARRAY, items=types.Schema(type=types.Type.STRING)
                    ),
                },
                required=["narrative", "recommendations"],
            ),
        )
        client: genai.Client | None = None
        try:
            async with asyncio.timeout(s.gemini_timeout_s):
                client = genai.Client(api_key=s.gemini_api_key, http_options=http)
                response = await client.aio.models.generate_content(
                    model=s.gemini_model, contents=self.prompt(facts), config=config
                )
        except TimeoutError:
            raise WriterError(f"no answer within {s.gemini_timeout_s:g} s") from None
        except errors.APIError as exc:
            status = f" {exc.status}" if exc.status else ""
            raise WriterError(
                self._redact(f"HTTP {exc.code}{status}"), permanent=exc.code in _PERMANENT_CODES
            ) from None
        except Exception as exc:  # connection refused/reset, bad URL, bad arguments, ...
            raise WriterError(self._redact(f"{type(exc).__name__}: {exc}")) from None
        finally:
            if client is not None:
                await client.aio.aclose()
                client.close()
            await transport.aclose()
        return self._parse(response)

    def _parse(self, response: object) -> tuple[str, list[str]]:
        candidates = getattr(response, "candidates", None) or []
        finish = getattr(candidates[0], "finish_reason", None) if candidates else None
        content = getattr(candidates[0], "content", None) if candidates else None
        text = "".join(
            part.text
            for part in (getattr(content, "parts", None) or [])
            if isinstance(getattr(part, "text", None), str) and not getattr(part, "thought", None)
        )
        if not text.strip():
            raise WriterError(f"empty answer (finish reason {_name(finish)})")
        try:
            data = json.loads(text)
        except ValueError:
            raise WriterError(f"answer is not JSON (finish reason {_name(finish)})") from None
        if not isinstance(data, dict):
            raise WriterError("answer is not a JSON object")
        narrative = data.get("narrative")
        recommendations = data.get("recommendations")
        if not isinstance(narrative, str) or not narrative.strip():
            raise WriterError("answer has no narrative")
        if not isinstance(recommendations, list) or not all(
            isinstance(item, str) for item in recommendations
        ):
            raise WriterError("answer's recommendations are not a list of strings")
        items = [_cut(item.strip(), MAX_RECOMMENDATION_CHARS) for item in recommendations]
        items = [item for item in items if item][:MAX_RECOMMENDATIONS]
        return _cut(narrative.strip(), MAX_NARRATIVE_CHARS), items

    def _redact(self, text: str) -> str:
        key = self.settings.gemini_api_key
        if len(key) >= 4:
            text = text.replace(key, "[redacted]")
        return _cut(text, MAX_REASON_CHARS)


def _name(value: object) -> str:
    return str(getattr(value, "name", value) or "none")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


async def write_summary(
    facts: ShiftFacts, settings: BacklogSettings, gemini: GeminiWriter | None = None
) -> Written:
    """Words for `facts`: Gemini's when a key is set and it answers, else offline ones.

    Never raises (but for cancellation). `gemini` defaults to a GeminiWriter on `settings`.
    """
    if not settings.gemini_api_key:
        narrative, recommendations = offline(facts)
        return Written(narrative, recommendations, OFFLINE, "no GEMINI_API_KEY")
    writer = gemini or GeminiWriter(settings)
    try:
        narrative, recommendations = await writer.write(facts)
    except WriterError as exc:
        note = _cut(f"gemini failed: {writer._redact(exc.reason)}", MAX_REASON_CHARS)
        log.warning("shift summary written offline: %s", note)
        narrative, recommendations = offline(facts, note)
        return Written(narrative, recommendations, OFFLINE, note)
    return Written(narrative, recommendations, writer.generator, "")
