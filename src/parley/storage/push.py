"""Push registrations (XEP-0357): which app servers and nodes an account enabled.

``options`` keeps the client's publish-options form as JSON (field var -> values, in the
client's order), so that every notification can carry it back to the app server.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database

FormValues = dict[str, list[str]]


@dataclass
class PushRegistration:
    owner: str
    service: str
    node: str
    options: FormValues = field(default_factory=dict)


class PushRepo:
    def __init__(self, db: Database):
        self.db = db

    async def enable(self, owner: str, service: str, node: str, options: FormValues) -> None:
        """Add a registration, or replace the options of the same one (a client re-enabling
        after every login is the normal case)."""
        values = {"options": json.dumps(options)}
        where = (t.push_registrations.c.owner == owner, t.push_registrations.c.service == service,
                 t.push_registrations.c.node == node)
        try:
            await self._upsert(where, values, owner, service, node)
        except sa.exc.IntegrityError:
            # Another enable of the same registration inserted it first; now it updates.
            await self._upsert(where, values, owner, service, node)

    async def _upsert(self, where: tuple[sa.ColumnElement[bool], ...], values: dict[str, str],
                      owner: str, service: str, node: str) -> None:
        async with self.db.begin() as c:
            res = await c.execute(t.push_registrations.update().where(*where).values(**values))
            if res.rowcount == 0:
                await c.execute(t.push_registrations.insert().values(
                    owner=owner, service=service, node=node, created_at=time.time(), **values))

    async def disable(self, owner: str, service: str, node: str | None = None) -> int:
        """Remove one registration, or every one at that service when node is None;
        returns how many went."""
        q = t.push_registrations.delete().where(t.push_registrations.c.owner == owner,
                                                t.push_registrations.c.service == service)
        if node is not None:
            q = q.where(t.push_registrations.c.node == node)
        async with self.db.begin() as c:
            return int((await c.execute(q)).rowcount or 0)

    async def remove_all(self, owner: str) -> None:
        async with self.db.begin() as c:
            await c.execute(t.push_registrations.delete().where(t.push_registrations.c.owner == owner))

    async def list(self, owner: str) -> list[PushRegistration]:
        q = (sa.select(t.push_registrations).where(t.push_registrations.c.owner == owner)
             .order_by(t.push_registrations.c.created_at))
        async with self.db.connect() as c:
            return [PushRegistration(r.owner, r.service, r.node, _options(r.options)) for r in await c.execute(q)]


def _options(text: str) -> FormValues:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [str(v) for v in vs] for k, vs in data.items() if isinstance(vs, list)}
