"""What every settings section is built from: a strict, frozen Struct and the bounded
numbers and checks the sections share."""

from __future__ import annotations

import re
from typing import Annotated, dataclass_transform

from msgspec import Meta, Struct, field

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]


Seconds = Annotated[float, Meta(ge=0, le=86_400)]


# Sections inherit frozen and kw_only at run time, but a type checker reads them from each
# class's own keywords (PEP 681) and would take every section for mutable: declared here
# once rather than repeated on every section (msgspec#657).
@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field,))
class Section(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


def check_url(url: str, name: str) -> None:
    if url and not re.match(r"https?://[^/\s]+", url):
        raise ValueError(f"{name} must be an http:// or https:// URL, got {url!r}")
