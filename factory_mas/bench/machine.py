"""This machine: the facts every bench result carries, and a free loopback port."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any


def machine_facts() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
