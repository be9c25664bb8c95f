"""A local stand-in for Twilio's Messages API, reached by the real twilio client over HTTP.

Accepts POST /2010-04-01/Accounts/{sid}/Messages.json (form fields To, From, Body, basic
auth), records what it received and answers like Twilio (201 and a message resource), or
fails the next requests on demand with a 5xx or a Twilio error JSON.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

from tests.support.local_http import LocalHttpServer

_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-fA-F]{32})/Messages\.json$")


@dataclass(frozen=True)
class Received:
    account_sid: str
    to: str
    from_: str
    body: str
    # The basic-auth pair the client sent.
    username: str
    password: str


class FakeTwilio(LocalHttpServer):
    """`with FakeTwilio(sid, token) as fake:` serves on `fake.base_url` until the block ends."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.received: list[Received] = []
        self.requests = 0
        self._failures: list[tuple[int, dict | None]] = []
        self._lock = threading.Lock()
        super().__init__()

    def fail_next(self, n: int = 1, status: int = 500, error: dict | None = None) -> None:
        """Answer the next `n` message requests with `status` and `error` as JSON body."""
        with self._lock:
            self._failures.extend([(status, error)] * n)

    @property
    def bodies(self) -> list[str]:
        with self._lock:
            return [r.body for r in self.received]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                match = _MESSAGES.match(self.path)
                if match is None:
                    return self._json(404, {"code": 20404, "message": "not found", "status": 404})
                user, password = _basic_auth(self.headers.get("Authorization", ""))
                if (user, password) != (fake.account_sid, fake.auth_token):
                    return self._json(
                        401, {"code": 20003, "message": "Authenticate", "status": 401}
                    )
                with fake._lock:
                    fake.requests += 1
                    failure = fake._failures.pop(0) if fake._failures else None
                    if failure is None:
                        fake.received.append(
                            Received(
                                match["sid"],
                                form.get("To", ""),
                                form.get("From", ""),
                                form.get("Body", ""),
                                user,
                                password,
                            )
                        )
                if failure is not None:
                    status, error = failure
                    return self._json(status, error or {"message": "Internal Server Error"})
                now = formatdate(usegmt=True)
                self._json(
                    201,
                    {
                        "sid": "SM" + uuid.uuid4().hex,
                        "account_sid": match["sid"],
                        "to": form.get("To"),
                        "from": form.get("From"),
                        "body": form.get("Body"),
                        "status": "queued",
                        "direction": "outbound-api",
                        "num_segments": "1",
                        "num_media": "0",
                        "api_version": "2010-04-01",
                        "date_created": now,
                        "date_updated": now,
                        "date_sent": None,
                        "price": None,
                        "error_code": None,
                        "error_message": None,
                        "uri": self.path.removesuffix(".json") + ".json",
                    },
                )

            def _json(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler


def _basic_auth(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password
