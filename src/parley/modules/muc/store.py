"""Writes of persistent rooms to the chat database, in order, surviving an outage.

Rooms work from memory; what must be kept (a room's state, its archived messages, a
deletion) is queued here and written by one task. When the database cannot be reached the
queue waits and the task tries again every few seconds, so writes resume, in their order,
once it is back; meanwhile `available` is False and the service refuses new persistent
rooms. A room's state is read when it is written, so many changes cost one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from parley.storage.archive import ArchiveEntry, ArchiveRepo
from parley.storage.db import Database, StorageUnavailable
from parley.storage.muc import RoomRepo, StoredRoom

log = logging.getLogger("parley.muc")

# Errors that mean "the database is not there" rather than "this write is wrong".
OUTAGE = (OSError, ConnectionError, asyncio.TimeoutError, StorageUnavailable, sa.exc.OperationalError,
          sa.exc.InterfaceError)
WRITE_TIMEOUT = 10.0
# Bounded, so that a long outage cannot take the server's memory; beyond it the oldest
# archived messages are dropped, with an error in the log.
MAX_QUEUED = 100_000


def is_outage(e: BaseException) -> bool:
    if isinstance(e, OUTAGE):
        return True
    return isinstance(e, sa.exc.DBAPIError) and bool(e.connection_invalidated)


@dataclass(slots=True)
class _Op:
    kind: str  # save | delete | archive
    jid: str = ""
    entry: ArchiveEntry | None = None


class RoomStore:
    def __init__(self, db: Database, snapshot: Callable[[str], StoredRoom | None], retry: float):
        self.db = db
        self.rooms = RoomRepo(db)
        self.archive = ArchiveRepo(db)
        self._snapshot = snapshot
        self.retry = retry
        self.available = True
        self._ops: deque[_Op] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # --- queueing -------------------------------------------------------------------------------

    def save(self, jid: str) -> None:
        self._push(_Op("save", jid))

    def delete(self, jid: str) -> None:
        self._push(_Op("delete", jid))

    def archive_entry(self, entry: ArchiveEntry) -> None:
        self._push(_Op("archive", entry.owner, entry))

    def _push(self, op: _Op) -> None:
        if len(self._ops) >= MAX_QUEUED:
            for i, queued in enumerate(self._ops):
                if queued.kind == "archive":
                    del self._ops[i]
                    log.error("chat database unreachable for too long: an archived message of %s was dropped",
                              queued.jid)
                    break
        self._ops.append(op)
        self._idle.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def write_now(self, jid: str) -> None:
        """Write a room at once (and what is queued before it); raises if the database
        cannot be reached, leaving the write queued for later."""
        if not self.available:
            raise StorageUnavailable("the chat database is unreachable")
        self.save(jid)
        await asyncio.wait_for(self.flushed(), WRITE_TIMEOUT)
        if not self.available:
            raise StorageUnavailable("the chat database is unreachable")

    async def flushed(self) -> None:
        await self._idle.wait()

    # --- writing --------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._ops:
                batch = self._take()
                while True:
                    try:
                        await asyncio.wait_for(self._write(batch), WRITE_TIMEOUT)
                    except Exception as e:
                        if not is_outage(e):
                            log.exception("a chat database write failed and was dropped")
                            break
                        if self.available:
                            log.error("chat database unreachable (%s); rooms keep working, writes wait", e)
                            self.available = False
                            # Callers waiting to write now learn that it failed.
                            self._idle.set()
                        await asyncio.sleep(self.retry)
                        continue
                    if not self.available:
                        log.warning("chat database reachable again; queued writes are being made")
                        self.available = True
                    break
        finally:
            self._task = None
            if not self._ops:
                self._idle.set()

    def _take(self) -> list[_Op]:
        """The next write: one room operation, or a run of archived messages."""
        first = self._ops.popleft()
        batch = [first]
        if first.kind == "archive":
            while self._ops and self._ops[0].kind == "archive" and len(batch) < 500:
                batch.append(self._ops.popleft())
        elif first.kind == "save":
            # Later saves of the same room, before any other write to it, are the same write.
            while self._ops and self._ops[0].kind == "save" and self._ops[0].jid == first.jid:
                self._ops.popleft()
        return batch

    async def _write(self, batch: list[_Op]) -> None:
        op = batch[0]
        if op.kind == "archive":
            await self.archive.append([o.entry for o in batch if o.entry is not None])
        elif op.kind == "save":
            room = self._snapshot(op.jid)
            if room is not None:
                await self.rooms.save(room)
        else:
            await self.rooms.delete(op.jid)
