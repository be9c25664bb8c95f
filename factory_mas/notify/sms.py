"""Texting through Twilio's official client, and keeping its secrets out of every log.

The only module that knows the twilio package: its errors become SendError here, already
classified (retry or give up) and already redacted.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import TYPE_CHECKING

from ..errors import FactoryError, SettingsError
from ..settings import NotifySettings

if TYPE_CHECKING:
    from twilio.base.exceptions import TwilioRestException, TwilioServiceException

# twilio's HTTP client logs every request URL (it carries the account SID) and the
# response headers at INFO: ten lines a text, none of them news. Ours, and quiet.
_http_log = logging.getLogger(__name__ + ".http")
_http_log.setLevel(logging.WARNING)
# urllib3 logs each request line, account SID included, at DEBUG.
_URLLIB3_LOG = "urllib3.connectionpool"
# Any E.164-looking number: Twilio errors echo the 'To' and 'From' numbers.
_PHONE = re.compile(r"\+\d{7,15}")
REDACTED = "[redacted]"


class SendError(FactoryError):
    """Twilio did not take a text. `permanent`: retrying the same request cannot help."""

    def __init__(self, detail: str, permanent: bool) -> None:
        super().__init__(detail)
        self.permanent = permanent


def redact(text: str, settings: NotifySettings) -> str:
    """`text` without the configured numbers, account SID or auth token, in any of the
    spellings they take in URLs and error messages, nor any other phone number."""
    secrets: set[str] = set()
    numbers = (settings.twilio_from_number, settings.twilio_to_number)
    for value in (settings.twilio_account_sid, settings.twilio_auth_token, *numbers):
        if len(value) < 4:  # too short to be a secret, and replacing it would shred text
            continue
        secrets.update((value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)))
    for number in numbers:
        # "+1 (555) 123-4567" is echoed back as +15551234567, or without the plus.
        digits = "".join(c for c in number if c.isdigit())
        if len(digits) >= 7:
            secrets.update((digits, "+" + digits))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _PHONE.sub(REDACTED, text)


class _RedactFilter(logging.Filter):
    def __init__(self, settings: NotifySettings) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.settings)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class TwilioSender:
    """Sends one text at a time to the supervisor. `send` blocks: run it in a thread."""

    def __init__(self, settings: NotifySettings) -> None:
        if not settings.configured:
            raise SettingsError(
                "notify: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER and "
                "TWILIO_TO_NUMBER must all be set to send texts"
            )
        # twilio (and requests under it) take a tenth of a second to import: only a
        # configured notifier pays for them, when it starts.
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        self.settings = settings
        self._http = TwilioHttpClient(timeout=settings.send_timeout_s, logger=_http_log)
        self._client = Client(
            settings.twilio_account_sid, settings.twilio_auth_token, http_client=self._http
        )
        if settings.twilio_base_url:
            # `api` is built once and kept, so this base serves every later request;
            # messages.create posts to {base}/2010-04-01/Accounts/{sid}/Messages.json.
            self._client.api.base_url = settings.twilio_base_url.rstrip("/")
            # TWILIO_EDGE / TWILIO_REGION from the environment would rewrite the host
            # name of an explicit base URL into *.twilio.com.
            self._client.edge = self._client.region = None
        self._filter = _RedactFilter(settings)
        logging.getLogger(_URLLIB3_LOG).addFilter(self._filter)

    def redact(self, text: str) -> str:
        return redact(text, self.settings)

    def send(self, body: str) -> str:
        """Text `body` to the supervisor; returns Twilio's message SID."""
        import requests
        from twilio.base.exceptions import (
            TwilioException,
            TwilioRestException,
            TwilioServiceException,
        )

        try:
            message = self._client.messages.create(
                to=self.settings.twilio_to_number,
                from_=self.settings.twilio_from_number,
                body=body,
            )
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self._http_error(exc) from None
        except requests.RequestException as exc:
            # Refused, reset, timed out: Twilio may be fine in a minute. A timeout after
            # the request went out may still have sent it; the outbox is at-least-once.
            raise SendError(self.redact(f"cannot reach Twilio: {exc}"), permanent=False) from None
        except (TwilioException, ValueError) as exc:  # ValueError: a reply that is not JSON
            raise SendError(self.redact(f"Twilio client error: {exc}"), permanent=False) from None
        if not message.sid:
            raise SendError("Twilio accepted the text but returned no message SID", False)
        return message.sid

    def _http_error(self, exc: TwilioRestException | TwilioServiceException) -> SendError:
        from twilio.base.exceptions import TwilioServiceException

        # exc.msg is "Unable to create record: <Twilio's message>"; str(exc) would add
        # terminal colours when stderr is a TTY.
        text = exc.detail or exc.title if isinstance(exc, TwilioServiceException) else exc.msg
        status = int(exc.status)
        # 4xx means this request is wrong (bad number, unverified sender, bad credentials)
        # and will stay wrong; 429 (too many requests) and 5xx pass.
        permanent = 400 <= status < 500 and status != 429
        return SendError(
            self.redact(f"Twilio answered HTTP {status} (code {exc.code}): {text}"), permanent
        )

    def close(self) -> None:
        logging.getLogger(_URLLIB3_LOG).removeFilter(self._filter)
        if self._http.session is not None:
            self._http.session.close()
