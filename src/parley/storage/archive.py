"""The message archive (XEP-0313) over the ``archive`` and ``archive_prefs`` tables.

Every write returns once it is committed. Rows are ordered by their integer key, which is
the order the server archived them in; the ``stanza_id`` is the id clients see.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database

MODES = ("always", "never", "roster")


class UnknownArchiveId(Exception):
    """A query named an archive id that is not in the owner's archive."""

    def __init__(self, stanza_id: str):
        super().__init__(stanza_id)
        self.stanza_id = stanza_id


log = logging.getLogger("parley.mam")


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    owner: str
    stanza_id: str
    peer: str  # bare JID of the other party
    ts: float
    stanza: str


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    key: int
    stanza_id: str
    peer: str
    ts: float
    stanza: str


@dataclass(frozen=True, slots=True)
class ArchivePrefs:
    default: str  # always | never | roster
    always: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ArchiveFilter:
    """What a query selects (its data form); paging comes on top of it."""

    peer: str | None = None
    start: float | None = None
    end: float | None = None
    after_id: str | None = None
    before_id: str | None = None
    ids: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ArchivePage:
    items: list[ArchivedMessage]  # oldest first
    complete: bool  # the page reaches the end of the result set in the paging direction
    count: int  # size of the whole result set


class ArchiveRepo:
    def __init__(self, db: Database):
        self.db = db
        # Group commit: messages that arrive while a write is in flight share the next
        # transaction, so a busy server pays one durable commit per batch, not per message.
        self._waiting: list[tuple[list[dict[str, object]], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, entries: Sequence[ArchiveEntry], wait: bool = True) -> None:
        """Both sides of a conversation in one transaction: a message is in every archive
        it belongs to, or in none. With `wait`, returns once that transaction is
        committed; without, the write joins the next batch and `flushed()` waits for it."""
        if not entries:
            return
        rows: list[dict[str, object]] = [
            {"owner": e.owner, "stanza_id": e.stanza_id, "peer": e.peer, "ts": e.ts, "stanza": e.stanza}
            for e in entries
        ]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((rows, done))
        if self._writer is None:
            self._writer = loop.create_task(self._write_batches())
        if wait:
            await done
        else:
            done.add_done_callback(_log_failure)

    async def flushed(self) -> None:
        """Wait until every message appended so far is committed."""
        if not self._waiting and self._writer is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(([], done))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        try:
            await done
        except Exception:
            pass  # the failed rows were logged; the barrier itself only waits

    async def _write_batches(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._insert([r for rows, _ in batch for r in rows])
                except Exception:
                    # One bad message must not fail the others: each goes on its own.
                    for rows, done in batch:
                        try:
                            await self._insert(rows)
                        except Exception as e:
                            if not done.done():
                                done.set_exception(e)
                        else:
                            if not done.done():
                                done.set_result(None)
                    continue
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._writer = None

    async def _insert(self, rows: list[dict[str, object]]) -> None:
        if not rows:
            return
        async with self.db.begin() as c:
            await c.execute(t.archive.insert(), rows)

    async def remove(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete (owner, stanza id) rows."""
        await self.flushed()
        keys = list(keys)
        if not keys:
            return
        async with self.db.begin() as c:
            for owner, sid in keys:
                await c.execute(t.archive.delete().where(t.archive.c.owner == owner, t.archive.c.stanza_id == sid))

    async def delete_owner(self, owner: str) -> None:
        await self.flushed()
        async with self.db.begin() as c:
            await c.execute(t.archive.delete().where(t.archive.c.owner == owner))
            await c.execute(t.archive_prefs.delete().where(t.archive_prefs.c.owner == owner))

    async def purge_before(self, ts: float) -> int:
        """Delete every message archived before `ts`; returns how many went."""
        await self.flushed()
        async with self.db.begin() as c:
            res = await c.execute(t.archive.delete().where(t.archive.c.ts < ts))
            return int(res.rowcount or 0)

    async def bounds(self, owner: str) -> tuple[ArchivedMessage, ArchivedMessage] | None:
        """The oldest and the newest message of the archive (XEP-0313 metadata)."""
        await self.flushed()
        base = sa.select(t.archive).where(t.archive.c.owner == owner).limit(1)
        async with self.db.connect() as c:
            first = (await c.execute(base.order_by(t.archive.c.id))).first()
            last = (await c.execute(base.order_by(t.archive.c.id.desc()))).first()
        if first is None or last is None:
            return None
        return _row(first), _row(last)

    async def contains(self, owner: str, stanza_id: str, peer: str) -> bool:
        """Whether the owner's archive has that message, exchanged with that peer."""
        await self.flushed()
        async with self.db.connect() as c:
            found = await c.scalar(sa.select(t.archive.c.id).where(
                t.archive.c.owner == owner, t.archive.c.stanza_id == stanza_id, t.archive.c.peer == peer))
        return found is not None

    async def query(self, owner: str, flt: ArchiveFilter, *, limit: int, after: str | None = None,
                    before: str | None = None, backwards: bool = False) -> ArchivePage:
        """One page of the result set; `after`/`before` are RSM bounds (archive ids) and
        `backwards` pages from the end (RSM <before/>). Raises UnknownArchiveId."""
        await self.flushed()
        async with self.db.connect() as c:
            lower: list[int] = []
            upper: list[int] = []
            for sid, bucket in ((flt.after_id, lower), (flt.before_id, upper)):
                if sid is not None:
                    bucket.append(await self._key(c, owner, sid))
            selection = self._conditions(owner, flt, lower, upper)
            count = int(await c.scalar(sa.select(sa.func.count()).select_from(t.archive).where(*selection)) or 0)
            if after is not None:
                lower.append(await self._key(c, owner, after))
            if before is not None:
                upper.append(await self._key(c, owner, before))
            page = self._conditions(owner, flt, lower, upper)
            order = t.archive.c.id.desc() if backwards else t.archive.c.id
            rows = [_row(r) for r in await c.execute(
                sa.select(t.archive).where(*page).order_by(order).limit(limit + 1))]
        complete = len(rows) <= limit
        rows = rows[:limit]
        if backwards:
            rows.reverse()
        return ArchivePage(rows, complete, count)

    async def _key(self, c: sa.ext.asyncio.AsyncConnection, owner: str, sid: str) -> int:
        key = await c.scalar(sa.select(t.archive.c.id).where(t.archive.c.owner == owner, t.archive.c.stanza_id == sid))
        if key is None:
            raise UnknownArchiveId(sid)
        return int(key)

    @staticmethod
    def _conditions(owner: str, flt: ArchiveFilter, lower: list[int], upper: list[int]) -> list[sa.ColumnElement[bool]]:
        cond: list[sa.ColumnElement[bool]] = [t.archive.c.owner == owner]
        if flt.peer is not None:
            cond.append(t.archive.c.peer == flt.peer)
        if flt.start is not None:
            cond.append(t.archive.c.ts >= flt.start)
        if flt.end is not None:
            cond.append(t.archive.c.ts <= flt.end)
        if flt.ids is not None:
            cond.append(t.archive.c.stanza_id.in_(flt.ids))
        if lower:
            cond.append(t.archive.c.id > max(lower))
        if upper:
            cond.append(t.archive.c.id < min(upper))
        return cond

    async def get_prefs(self, owner: str) -> ArchivePrefs | None:
        async with self.db.connect() as c:
            row = (await c.execute(sa.select(t.archive_prefs).where(t.archive_prefs.c.owner == owner))).first()
        if row is None:
            return None
        return ArchivePrefs(row.default_mode, tuple(json.loads(row.always)), tuple(json.loads(row.never)))

    async def set_prefs(self, owner: str, prefs: ArchivePrefs) -> None:
        values = {"default_mode": prefs.default, "always": json.dumps(list(prefs.always)),
                  "never": json.dumps(list(prefs.never))}
        try:
            await self._put_prefs(owner, values)
        except sa.exc.IntegrityError:
            # Two first-time writes raced to insert; the second pass updates the winner's row.
            await self._put_prefs(owner, values)

    async def _put_prefs(self, owner: str, values: dict[str, str]) -> None:
        async with self.db.begin() as c:
            res = await c.execute(t.archive_prefs.update().where(t.archive_prefs.c.owner == owner).values(**values))
            if res.rowcount == 0:
                await c.execute(t.archive_prefs.insert().values(owner=owner, **values))


def _row(r: sa.Row[tuple[object, ...]]) -> ArchivedMessage:
    return ArchivedMessage(int(r.id), r.stanza_id, r.peer, float(r.ts), r.stanza)


def _log_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("writing to the message archive failed: %s", done.exception())
