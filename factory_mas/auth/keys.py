"""API keys: made here, shown once, stored as SHA-256 hashes, audited on every change.

Every function takes a SQLAlchemy Connection and runs inside the transaction that
`Store.write` / `Store.read` opens, so a key change and its audit row commit together.
A key is `fmk_` plus 32 random bytes (256 bits): guessing is hopeless, so a plain hash
(no salt, no slow KDF) is enough, and lookups stay one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import FactoryError
from ..store import FIRST_KEY_LOCK_KEY, api_keys, audit_change, inserted_id, serialize

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}
KEY_MARK = "fmk_"
# "fmk_" and 8 random characters: enough to tell keys apart in lists and logs, far too
# little to help guess the other 35.
PREFIX_CHARS = 12
AUDIT_TARGET = "auth"
FIRST_KEY_NAME = "first-admin"


class KeyNotFound(FactoryError, LookupError):
    """No key (or more than one) matches the id or prefix given."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name and role (scope["auth"] of an authorised request)."""

    name: str
    role: Role
    key_id: int = 0
    prefix: str = ""

    def may(self, needed: str) -> bool:
        return role_allows(self.role, needed)


def role_allows(role: Role, needed: str) -> bool:
    """Whether `role` may do what needs `needed` (viewer < operator < admin)."""
    return RANK[role] >= RANK[needed]


def actor(scope: Mapping[str, Any], claimed: str | None = None) -> str | None:
    """Who to record as having made a change: the calling key's name when keys are on
    (a body's "by" cannot then be used to blame someone else), else what the body claims."""
    principal = scope.get("auth")
    return principal.name if isinstance(principal, Principal) else claimed


def generate() -> str:
    return KEY_MARK + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str:
    return key[:PREFIX_CHARS]


def check_role(role: str) -> Role:
    if role not in RANK:
        raise FactoryError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def add(
    conn: Connection, name: str, role: str, created_by: str, origin: str = "cli"
) -> tuple[int, str]:
    """Make a key; returns (id, key). The key is not stored and cannot be shown again."""
    role = check_role(role)
    name = name.strip()
    if not name or len(name) > 200:
        raise FactoryError("a key needs a name of 1 to 200 characters")
    key = generate()
    now = time.time()
    result = conn.execute(
        api_keys.insert().values(
            name=name,
            role=role,
            key_hash=hash_key(key),
            prefix=prefix_of(key),
            created_at=now,
            created_by=created_by[:200],
        )
    )
    key_id = inserted_id(result)
    _audit(conn, now, "add", {"id": key_id, "name": name, "role": role}, created_by, origin)
    return key_id, key


def list_keys(conn: Connection, include_revoked: bool = True) -> list[dict[str, Any]]:
    query = sa.select(
        api_keys.c.id,
        api_keys.c.name,
        api_keys.c.role,
        api_keys.c.prefix,
        api_keys.c.created_at,
        api_keys.c.created_by,
        api_keys.c.last_used_at,
        api_keys.c.revoked_at,
    ).order_by(api_keys.c.id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [dict(row._mapping) for row in conn.execute(query)]


def revoke(conn: Connection, id_or_prefix: str, by: str, origin: str = "cli") -> dict[str, Any]:
    """Revoke one key, named by its id or by a prefix of the key; returns its row.

    Revoking a revoked key is not an error (the row says when it happened)."""
    text = id_or_prefix.strip()
    query = sa.select(api_keys)
    if text.isdigit():
        query = query.where(api_keys.c.id == int(text))
    elif len(text) > PREFIX_CHARS:  # the whole key
        query = query.where(api_keys.c.key_hash == hash_key(text))
    elif not (text.startswith(KEY_MARK) and len(text) >= len(KEY_MARK) + 4):
        raise KeyNotFound(f"{text!r}: give a key id or the key's prefix (fmk_ and at least 4)")
    # Prefixes are compared in Python: in LIKE, the "_" keys contain is a wildcard.
    rows = [
        r for r in conn.execute(query) if text.isdigit() or r.prefix.startswith(text[:PREFIX_CHARS])
    ]
    if not rows:
        raise KeyNotFound(f"no key {text!r}; `keys list` shows ids and prefixes")
    if len(rows) > 1:
        raise KeyNotFound(f"{text!r} matches {len(rows)} keys; use the id")
    row = rows[0]
    if row.revoked_at is None:
        now = time.time()
        conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(revoked_at=now))
        _audit(
            conn,
            now,
            "revoke",
            {"id": row.id, "name": row.name, "role": row.role, "prefix": row.prefix},
            by,
            origin,
        )
    return dict(conn.execute(sa.select(api_keys).where(api_keys.c.id == row.id)).one()._mapping)


# What a principal is made of, for keys not revoked.
_ACTIVE = sa.select(
    api_keys.c.id, api_keys.c.name, api_keys.c.role, api_keys.c.prefix, api_keys.c.key_hash
).where(api_keys.c.revoked_at.is_(None))


def find(conn: Connection, key: str, touch: bool = True) -> Principal | None:
    """The active key's principal, or None; marks it used (callers cache the answer, so
    this runs about once per key per cache period, not per request)."""
    row = conn.execute(_ACTIVE.where(api_keys.c.key_hash == hash_key(key))).first()
    if row is None or row.role not in RANK:
        return None
    if touch:
        conn.execute(
            api_keys.update().where(api_keys.c.id == row.id).values(last_used_at=time.time())
        )
    return Principal(row.name, row.role, row.id, row.prefix)


def active(conn: Connection) -> dict[str, Principal]:
    """Every active key's principal by the key's hash: for servers whose login check
    cannot wait for the store (OPC UA's is synchronous), kept in memory and refreshed."""
    return {
        row.key_hash: Principal(row.name, row.role, row.id, row.prefix)
        for row in conn.execute(_ACTIVE)
        if row.role in RANK
    }


def count_active(conn: Connection) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
        ).scalar()
        or 0
    )


def add_first(conn: Connection) -> tuple[int, str] | None:
    """An admin key, made only when no active key exists (checked in the same
    transaction); returns (id, key) or None."""
    # Instances starting at once on one database would otherwise each find no key.
    serialize(conn, FIRST_KEY_LOCK_KEY)
    if count_active(conn):
        return None
    return add(conn, FIRST_KEY_NAME, "admin", "factory_mas", origin="first-start")


def _audit(
    conn: Connection, at: float, action: str, what: dict[str, Any], by: str, origin: str
) -> None:
    # Key changes share the settings' audit table (target "auth"); no key material in it.
    audit_change(
        conn,
        at=at,
        target=AUDIT_TARGET,
        origin=origin,
        by=by or "?",
        accepted=True,
        data=msgspec.json.encode({"request": {"action": action, **what}, "result": "ok"}),
    )
