"""What every settings section is built from: a strict, frozen Struct and the bounded
numbers and checks the sections share."""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta, Struct

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]


Seconds = Annotated[float, Meta(ge=0, le=86_400)]


class Section(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


def check_url(url: str, name: str) -> None:
    if url and not re.match(r"https?://[^/\s]+", url):
        raise ValueError(f"{name} must be an http:// or https:// URL, got {url!r}")
