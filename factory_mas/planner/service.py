"""The planner service: built-in playbooks, an optional external planner, and /api/planner.

An external planner (PLANNER_URL) is asked first; whatever goes wrong with it (timeout,
refused connection, error status, a body that is not a plan) the built-in planner answers
and the label says why, so a decision is never lost to a planner outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..http.api import ApiError, json_response, read_alerts
from ..messages import Alarm, Plan
from ..settings import PlannerSettings
from . import logic

log = logging.getLogger(__name__)

# A plan is a few hundred bytes; an answer a thousand times that is not a plan.
MAX_ANSWER_BYTES = 1_000_000
# One POST /plan asks for at most this many plans (one per machine or camera): a plant of
# 50 machines and a few cameras fits, a body meant to flood the external planner does not.
MAX_SUBJECTS = 100
_REASON_CHARS = 160


class _ExternalError(Exception):
    """The external planner gave no usable plan; the message is the short reason."""


def redact(url: str) -> str:
    """The URL without a password, fit for labels, logs and the playbooks endpoint."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    return str(parsed.copy_with(password="***")) if parsed.password else url


class Planner:
    """Turns alarms into a plan; `async with` holds the external planner's connection pool."""

    def __init__(self, settings: PlannerSettings, max_body_bytes: int = 10_000_000) -> None:
        self.settings = settings
        self.max_body_bytes = max_body_bytes
        self._client: httpx.AsyncClient | None = None
        self._external_ok = 0
        self._external_failed = 0
        self._builtin = 0
        self._last_error: str | None = None
        self._failing = False

    async def __aenter__(self) -> Planner:
        if self.settings.url:
            self._client = self._new_client()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.settings.timeout_s, follow_redirects=False)

    @property
    def external(self) -> str | None:
        return redact(self.settings.url) if self.settings.url else None

    async def plan(self, alarms: list[Alarm]) -> tuple[Plan, str]:
        """(plan, planner label) for alarms[0] and the alarms correlated with it.

        Labels: "builtin", "external <url>", "builtin (external planner failed: <why>)".
        No exception escapes except ValueError for an empty list, which is a caller's bug.
        """
        if not alarms:
            raise ValueError("plan() needs at least one alarm")
        if self.settings.url:
            try:
                plan = await self._ask_external(alarms)
            except _ExternalError as exc:
                reason = str(exc)
            except Exception as exc:  # a planner outage must never cost a decision
                log.exception("external planner call failed unexpectedly")
                reason = _short(f"{type(exc).__name__}: {exc}")
            else:
                self._external_ok += 1
                if self._failing:
                    self._failing = False
                    log.info("external planner %s answers again", self.external)
                return plan, f"external {self.external}"
            self._external_failed += 1
            self._last_error = reason
            if not self._failing:
                # Logged once per outage, not per alarm: an outage during a flood would
                # otherwise bury everything else in the log.
                self._failing = True
                log.warning(
                    "external planner %s failed (%s); using built-in", self.external, reason
                )
            plan = self._builtin_plan(alarms)
            plan.rationale += f" The external planner failed ({reason}); built-in playbooks used."
            return plan, f"builtin (external planner failed: {reason})"
        return self._builtin_plan(alarms), "builtin"

    def _builtin_plan(self, alarms: Sequence[Alarm]) -> Plan:
        self._builtin += 1
        return logic.make_plan(alarms, self.settings)

    async def _ask_external(self, alarms: list[Alarm]) -> Plan:
        body = msgspec.json.encode({"alarms": alarms})
        headers = {"content-type": "application/json", "accept": "application/json"}
        timeout_s = self.settings.timeout_s
        try:
            # httpx times each phase on its own; the deadline covers the whole exchange, so
            # a planner trickling bytes cannot hold a decision past timeout_s.
            async with asyncio.timeout(timeout_s):
                if self._client is not None:
                    raw, status = await self._post(self._client, body, headers)
                else:  # used without `async with`: a client for this one call
                    async with self._new_client() as client:
                        raw, status = await self._post(client, body, headers)
        except (TimeoutError, httpx.TimeoutException):
            raise _ExternalError(f"no answer within {timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise _ExternalError(_short(f"{type(exc).__name__}: {exc}")) from None
        if status != 200:
            raise _ExternalError(f"HTTP {status}")
        try:
            plan = msgspec.json.decode(raw, type=Plan)
        except msgspec.DecodeError as exc:
            raise _ExternalError(_short(f"not a plan: {exc}")) from None
        if not plan.action.strip():
            raise _ExternalError("not a plan: empty action")
        if plan.machine_id is None and plan.camera_id is None:
            plan.machine_id, plan.camera_id = alarms[0].machine_id, alarms[0].camera_id
        return plan

    async def _post(
        self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
    ) -> tuple[bytes, int]:
        async with client.stream("POST", self.settings.url, content=body, headers=headers) as r:
            if r.status_code != 200:
                return b"", r.status_code
            raw = bytearray()
            async for chunk in r.aiter_bytes():
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    raise _ExternalError(f"not a plan: answer exceeds {MAX_ANSWER_BYTES} bytes")
            return bytes(raw), r.status_code

    def stats(self) -> dict[str, Any]:
        """Counts since start: external answers used, external failures (each answered by
        the built-in planner), built-in plans in all, and the latest failure reason."""
        return {
            "external": self.external,
            "external_ok": self._external_ok,
            "external_failed": self._external_failed,
            "builtin": self._builtin,
            "last_error": self._last_error,
        }

    # -- HTTP, mounted at /api/planner ----------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/plan", self.plan_route, methods=["POST"]),
            Route("/playbooks", self.playbooks_route),
        ]

    async def plan_route(self, request: Request) -> Response:
        """Alerts in, plans out: one plan per machine (or camera) the alerts concern.

        Alerts with one subject are planned together as correlated evidence; repeats of
        one alert fold into one alarm with a count. "plan"/"planner" answer for the first
        alert's subject, "plans" lists every subject's plan with the indexes of its alerts,
        so a batch across machines loses nothing and a single alert reads simply.
        """
        alerts, _single = await read_alerts(request, self.max_body_bytes)
        groups: dict[tuple[str, Any], list[tuple[Alarm, list[int]]]] = {}
        for alarm, indexes in logic.alarms_from_alerts(alerts):
            groups.setdefault(logic.subject_of(alarm), []).append((alarm, indexes))
        if len(groups) > MAX_SUBJECTS:
            raise ApiError(
                400,
                "too_many_subjects",
                f"the alerts concern {len(groups)} machines or cameras; at most "
                f"{MAX_SUBJECTS} per request",
            )
        # Dicts keep insertion order and alarm ids follow first appearance, so each group's
        # first alarm is the one its first alert made: the trigger.
        answers = await asyncio.gather(
            *(self.plan([alarm for alarm, _ in group]) for group in groups.values())
        )
        plans = [
            {
                "plan": plan,
                "planner": label,
                "alerts": sorted(i for _, indexes in group for i in indexes),
            }
            for (plan, label), group in zip(answers, groups.values(), strict=True)
        ]
        return json_response(
            {"plan": plans[0]["plan"], "planner": plans[0]["planner"], "plans": plans}
        )

    async def playbooks_route(self, _request: Request) -> Response:
        s = self.settings
        return json_response(
            {
                "playbooks": s.playbooks,
                "fallback": s.fallback,
                "correlation_window_s": s.correlation_window_s,
                "external": self.external,
            }
        )


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."
