"""Persistent chat rooms: their settings, subject and affiliations (``muc_rooms`` and
``muc_affiliations``). A room is always written whole, in one transaction, so that a room
read back is one the service once had."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database


@dataclass
class StoredRoom:
    jid: str
    config: dict[str, Any] = field(default_factory=dict)
    subject: str = ""
    subject_by: str | None = None
    # bare JID -> (affiliation, reserved nickname or None)
    affiliations: dict[str, tuple[str, str | None]] = field(default_factory=dict)


class RoomRepo:
    def __init__(self, db: Database):
        self.db = db

    async def ping(self) -> None:
        """Raises when the database cannot be reached."""
        async with self.db.connect() as c:
            await c.execute(sa.text("SELECT 1"))

    async def load(self) -> list[StoredRoom]:
        rooms: dict[str, StoredRoom] = {}
        async with self.db.connect() as c:
            for r in (await c.execute(sa.select(t.muc_rooms).order_by(t.muc_rooms.c.jid))).all():
                rooms[r.jid] = StoredRoom(r.jid, json.loads(r.config or "{}"), r.subject or "", r.subject_by)
            for a in (await c.execute(sa.select(t.muc_affiliations))).all():
                room = rooms.get(a.room)
                if room is not None:
                    room.affiliations[a.jid] = (a.affiliation, a.nick)
        return list(rooms.values())

    async def count(self) -> int:
        async with self.db.connect() as c:
            return int(await c.scalar(sa.select(sa.func.count()).select_from(t.muc_rooms)) or 0)

    async def save(self, room: StoredRoom) -> None:
        now = time.time()
        values = {"config": json.dumps(room.config, sort_keys=True), "subject": room.subject,
                  "subject_by": room.subject_by, "updated_at": now}
        async with self.db.begin() as c:
            res = await c.execute(t.muc_rooms.update().where(t.muc_rooms.c.jid == room.jid).values(**values))
            if res.rowcount == 0:
                await c.execute(t.muc_rooms.insert().values(jid=room.jid, created_at=now, **values))
            await c.execute(t.muc_affiliations.delete().where(t.muc_affiliations.c.room == room.jid))
            rows = [{"room": room.jid, "jid": jid, "affiliation": aff, "nick": nick}
                    for jid, (aff, nick) in sorted(room.affiliations.items())]
            if rows:
                await c.execute(t.muc_affiliations.insert(), rows)

    async def delete(self, jid: str) -> None:
        """The room, its affiliations and its archived messages."""
        async with self.db.begin() as c:
            await c.execute(t.muc_affiliations.delete().where(t.muc_affiliations.c.room == jid))
            await c.execute(t.muc_rooms.delete().where(t.muc_rooms.c.jid == jid))
            await c.execute(t.archive.delete().where(t.archive.c.owner == jid))
