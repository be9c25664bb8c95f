"""A local stand-in for the Gemini API, reached by the real google-genai client over HTTP.

google-genai with an API key and `HttpOptions(base_url=...)` posts JSON to
`{base_url}/v1/models/{model}:generateContent` (v1beta when GOOGLE_GENAI_API_VERSION=beta),
the key in the `x-goog-api-key` header, never in the URL. This server accepts that,
records what it received and answers like Gemini: one candidate whose text part is the
answer. On demand it fails the next requests with a status and a Google error JSON, hangs
(answers only after `hang_s`, or when the server stops), or answers text that is not JSON.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from tests.support.local_http import LocalHttpServer

_GENERATE = re.compile(r"^/(?P<version>v1|v1beta)/models/(?P<model>[^/:?]+):generateContent$")

DEFAULT_ANSWER = json.dumps(
    {"narrative": "A quiet shift.", "recommendations": ["Carry on with routine checks."]}
)
GARBAGE = "Sorry, I cannot help with that."


@dataclass(frozen=True)
class Received:
    path: str
    model: str
    headers: dict[str, str]
    body: dict

    @property
    def prompt(self) -> str:
        """The text of the user's parts, joined."""
        return "".join(
            part.get("text", "")
            for content in self.body.get("contents", [])
            for part in content.get("parts", [])
        )

    @property
    def generation_config(self) -> dict:
        return self.body.get("generationConfig", {})


class FakeGemini(LocalHttpServer):
    """`with FakeGemini(api_key) as fake:` serves on `fake.base_url` until the block ends.

    `answer` is the text of the model's reply: a string, or a callable taking the request
    body (a dict) and returning the string.
    """

    def __init__(self, api_key: str, answer: str | Callable[[dict], str] = DEFAULT_ANSWER):
        self.api_key = api_key
        self.answer = answer
        self.received: list[Received] = []
        # Every request on the generate path, answered or not (failures, hangs included).
        self.requests = 0
        self.hang_s = 0.0
        self.garbage = False
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        super().__init__()

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next `n` generate requests with `status` and a Google error JSON."""
        with self._lock:
            self._failures.extend([status] * n)

    def hang(self, seconds: float) -> None:
        """Hold every following request `seconds` before answering (0: answer at once)."""
        self.hang_s = seconds

    def _stopping(self) -> None:
        self._stop.set()  # wakes hanging handlers

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                match = _GENERATE.match(self.path)
                if match is None:
                    return self._error(404, "NOT_FOUND", f"no route {self.path}")
                if self.headers.get("x-goog-api-key") != fake.api_key:
                    return self._error(400, "INVALID_ARGUMENT", "API key not valid.")
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._error(400, "INVALID_ARGUMENT", "body is not JSON")
                with fake._lock:
                    fake.requests += 1
                    failure = fake._failures.pop(0) if fake._failures else None
                    fake.received.append(
                        Received(self.path, match["model"], dict(self.headers.items()), body)
                    )
                if fake.hang_s and fake._stop.wait(fake.hang_s):
                    return  # stopping: drop the request
                if failure is not None:
                    return self._error(failure, "INTERNAL", "The service is unavailable.")
                answer = fake.answer(body) if callable(fake.answer) else fake.answer
                text = GARBAGE if fake.garbage else answer
                self._json(
                    200,
                    {
                        "candidates": [
                            {
                                "content": {"parts": [{"text": text}], "role": "model"},
                                "finishReason": "STOP",
                                "index": 0,
                            }
                        ],
                        "usageMetadata": {
                            "promptTokenCount": len(raw) // 4,
                            "candidatesTokenCount": len(text) // 4,
                            "totalTokenCount": (len(raw) + len(text)) // 4,
                        },
                        "modelVersion": match["model"],
                    },
                )

            def _error(self, status: int, code: str, message: str) -> None:
                self._json(status, {"error": {"code": status, "message": message, "status": code}})

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        return Handler
