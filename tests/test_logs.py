"""Log lines cannot be forged or garbled from a request: control characters in what is
logged (paths, headers, key prefixes, exception text) come out escaped, one record a line."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from factory_mas.logs import JsonFormatter, TextFormatter, escape

FORGED = "2026-12-07 00:00:00,000 WARNING factory_mas: forged"


def test_escape_writes_every_control_character_as_an_escape() -> None:
    assert escape("a\nb\rc\td\x00e\x1b[2Jf\x7fg\x9bh\u2028i") == (
        "a\\nb\\rc\\td\\x00e\\x1b[2Jf\\x7fg\\x9bh\\u2028i"
    )
    assert escape("plain /path?q=1 é \udcff") == "plain /path?q=1 é \udcff"
    assert escape("one\ntwo\x1b", keep="\n") == "one\ntwo\\x1b"


@pytest.mark.integration
def test_a_request_cannot_forge_a_log_line(server_factory) -> None:
    server = server_factory({"FACTORY_AUTH_ENABLED": "true", "LOG_FORMAT": "text"})
    path = "/status%0a" + FORGED.replace(" ", "%20") + "%00%1b[2J%0d"
    # A C1 byte (CSI, which terminals obey) is legal in a header value.
    answer = server.get(path, headers={"X-API-Key": b"fmk_\x9b2Jabcdefghijkl"})
    assert answer.status_code == 401
    lines = server.output().splitlines()
    refused = [line for line in lines if "auth: 401 GET" in line]
    assert len(refused) == 1, refused
    assert "/status\\n" + FORGED + "\\x00\\x1b[2J\\r from 127.0.0.1:" in refused[0]
    assert "invalid key fmk_\\x9b2Jabcde..." in refused[0]
    assert not any(line.startswith(FORGED) for line in lines)
    assert not re.search("[\x00\x1b\x9b]", server.output())


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\n" + FORGED)
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("factory_mas.x", logging.ERROR, __file__, 1, message, args, exc_info)


def test_text_lines_escape_the_message_and_indent_a_traceback() -> None:
    text = TextFormatter().format(record("path %s", "/a\n" + FORGED + "\x1b[0m", exc=True))
    first, *rest = text.split("\n")
    assert first.endswith("path /a\\n" + FORGED + "\\x1b[0m")
    assert rest and all(line.startswith("    ") for line in rest), rest
    assert "    ValueError: bad" in rest and "    " + FORGED in rest


def test_json_lines_escape_c1_and_line_separators_too() -> None:
    # json.dumps leaves these as they are with ensure_ascii=False.
    line = JsonFormatter().format(record("path %s", "/a\x9b2J\u2028" + FORGED, exc=True))
    assert "\x9b" not in line and "\u2028" not in line and "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "path /a\\x9b2J\\u2028" + FORGED
    assert "ValueError: bad\n" + FORGED in parsed["exc_info"]
