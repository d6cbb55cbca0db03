"""Privacy lists (XEP-0016) in the ``privacy_lists`` table: one row per list of a user, its
items as JSON in evaluation order, and which list is the user's default."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database


@dataclass
class StoredList:
    name: str
    items: list[dict[str, Any]] = field(default_factory=list)
    is_default: bool = False


class PrivacyRepo:
    def __init__(self, db: Database):
        self.db = db

    async def load(self, owner: str) -> dict[str, StoredList]:
        """Every list of the user, by name."""
        async with self.db.connect() as c:
            res = await c.execute(sa.select(t.privacy_lists).where(t.privacy_lists.c.owner == owner))
            return {r.name: StoredList(r.name, json.loads(r.items), bool(r.is_default)) for r in res}

    async def save(self, owner: str, name: str, items: list[dict[str, Any]],
                   make_default: bool | None = None) -> None:
        """Create or replace a list's items. `make_default` True also makes it the only
        default list, False takes that role away, None leaves it as it was."""
        data = json.dumps(items)
        async with self.db.begin() as c:
            if make_default:
                await _clear_default(c, owner)
            values: dict[str, Any] = {"items": data}
            if make_default is not None:
                values["is_default"] = make_default
            res = await c.execute(
                t.privacy_lists.update()
                .where(t.privacy_lists.c.owner == owner, t.privacy_lists.c.name == name)
                .values(**values)
            )
            if res.rowcount == 0:
                await c.execute(t.privacy_lists.insert().values(
                    owner=owner, name=name, items=data, is_default=bool(make_default)))

    async def delete(self, owner: str, name: str) -> bool:
        async with self.db.begin() as c:
            res = await c.execute(
                t.privacy_lists.delete().where(t.privacy_lists.c.owner == owner, t.privacy_lists.c.name == name)
            )
            return bool(res.rowcount)

    async def set_default(self, owner: str, name: str | None) -> None:
        """Make `name` the user's only default list; None leaves the user without one."""
        async with self.db.begin() as c:
            await _clear_default(c, owner)
            if name is not None:
                await c.execute(
                    t.privacy_lists.update()
                    .where(t.privacy_lists.c.owner == owner, t.privacy_lists.c.name == name)
                    .values(is_default=True)
                )

    async def delete_all(self, owner: str) -> None:
        async with self.db.begin() as c:
            await c.execute(t.privacy_lists.delete().where(t.privacy_lists.c.owner == owner))


async def _clear_default(c: sa.ext.asyncio.AsyncConnection, owner: str) -> None:
    await c.execute(
        t.privacy_lists.update()
        .where(t.privacy_lists.c.owner == owner, t.privacy_lists.c.is_default.is_(True))
        .values(is_default=False)
    )
