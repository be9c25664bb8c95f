"""`keys`: add, list and revoke API keys in the configured store."""

from __future__ import annotations

import argparse
import asyncio

import msgspec

from ..settings import Settings


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from ..auth import keys
    from ..store import Store
    from ..times import iso

    try:
        who = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (some containers)
        who = "cli"

    async def run() -> int:
        async with Store.from_settings(settings) as store:
            if args.keys_command == "add":
                key_id, key = await store.write(keys.add, args.name, args.role, who, "cli")
                print(f"key {key_id} {args.name!r} ({args.role}); shown once, store it now:")
                print(key)
            elif args.keys_command == "list":
                rows = await store.read(keys.list_keys, not args.active)
                if args.json:
                    print(msgspec.json.encode(rows).decode())
                    return 0
                header = ("id", "name", "role", "prefix", "created", "last used", "revoked")
                table = [
                    (
                        str(r["id"]),
                        r["name"],
                        r["role"],
                        r["prefix"] + "...",
                        _when(iso(r["created_at"])),
                        _when(iso(r["last_used_at"])) or "never",
                        _when(iso(r["revoked_at"])) or "-",
                    )
                    for r in rows
                ]
                widths = [max(len(row[i]) for row in (header, *table)) for i in range(7)]
                for row in (header, *table):
                    cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                    print("  ".join(cells).rstrip())
            else:
                revoked = await store.write(keys.revoke, args.key, who, "cli")
                print(
                    f"key {revoked['id']} {revoked['name']!r} ({revoked['role']}, "
                    f"{revoked['prefix']}...) revoked at {_when(iso(revoked['revoked_at']))}; "
                    "a running server stops taking it within 30 s"
                )
        return 0

    return asyncio.run(run())


def _when(text: str | None) -> str:
    return "" if text is None else text[:19].replace("T", " ") + "Z"
