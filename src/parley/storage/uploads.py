"""HTTP upload slots and files (XEP-0363).

A row is written when a slot is granted and completed (``uploaded_at``) once the whole file
is stored, so the table is also the record of who shared which file when. A slot reserves
its size against the owner's quota from the start: otherwise a client could ask for many
slots at once and fill them all past the quota.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database

_u = t.uploads


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: int
    owner: str
    token: str
    filename: str
    size: int
    content_type: str
    created_at: float
    uploaded_at: float | None
    # Relative to the upload folder: "<random directory>/<file name>".
    path: str


def _record(row: sa.Row[tuple[object, ...]]) -> UploadRecord:
    m = row._mapping
    return UploadRecord(int(m["id"]), m["owner"], m["token"], m["filename"], int(m["size"]),
                        m["content_type"], float(m["created_at"]),
                        None if m["uploaded_at"] is None else float(m["uploaded_at"]), m["path"])


def _held(owner: str, uploaded_since: float | None, pending_since: float) -> sa.ColumnElement[bool]:
    """Rows that count against the owner's quota: files not yet expired, and slots that
    can still be used."""
    done = _u.c.uploaded_at.is_not(None)
    if uploaded_since is not None:
        done = sa.and_(done, _u.c.uploaded_at >= uploaded_since)
    pending = sa.and_(_u.c.uploaded_at.is_(None), _u.c.created_at >= pending_since)
    return sa.and_(_u.c.owner == owner, sa.or_(done, pending))


class UploadRepo:
    def __init__(self, db: Database):
        self.db = db

    async def used(self, owner: str, uploaded_since: float | None, pending_since: float) -> int:
        """Bytes the owner holds: stored files uploaded since `uploaded_since` (None: all)
        and slots granted since `pending_since`."""
        q = sa.select(sa.func.coalesce(sa.func.sum(_u.c.size), 0)).where(
            _held(owner, uploaded_since, pending_since))
        async with self.db.connect() as c:
            return int(await c.scalar(q) or 0)

    async def reserve(self, *, owner: str, token: str, filename: str, size: int, content_type: str,
                      path: str, created_at: float, quota: int, uploaded_since: float | None,
                      pending_since: float) -> bool:
        """Insert a slot unless it would take the owner past `quota` bytes (0: no limit);
        False when it would. The check and the insert share one transaction."""
        async with self.db.begin() as c:
            if quota:
                q = sa.select(sa.func.coalesce(sa.func.sum(_u.c.size), 0)).where(
                    _held(owner, uploaded_since, pending_since))
                if int(await c.scalar(q) or 0) + size > quota:
                    return False
            await c.execute(_u.insert().values(
                owner=owner, token=token, filename=filename, size=size, content_type=content_type,
                created_at=created_at, uploaded_at=None, path=path))
        return True

    async def by_path(self, path: str) -> UploadRecord | None:
        async with self.db.connect() as c:
            row = (await c.execute(sa.select(_u).where(_u.c.path == path))).first()
        return _record(row) if row else None

    async def mark_uploaded(self, upload_id: int, at: float) -> bool:
        """Record that the file is complete; False if it already was (or the slot is gone)."""
        q = _u.update().where(_u.c.id == upload_id, _u.c.uploaded_at.is_(None)).values(uploaded_at=at)
        async with self.db.begin() as c:
            return bool((await c.execute(q)).rowcount)

    async def expired(self, uploaded_before: float | None, pending_before: float) -> list[UploadRecord]:
        """Files uploaded before `uploaded_before` (None: files never expire) and slots granted
        before `pending_before` that were never filled."""
        cond = sa.and_(_u.c.uploaded_at.is_(None), _u.c.created_at < pending_before)
        if uploaded_before is not None:
            cond = sa.or_(cond, _u.c.uploaded_at < uploaded_before)
        async with self.db.connect() as c:
            return [_record(r) for r in await c.execute(sa.select(_u).where(cond).order_by(_u.c.id))]

    async def delete(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        async with self.db.begin() as c:
            for i in range(0, len(ids), 500):
                await c.execute(_u.delete().where(_u.c.id.in_(ids[i : i + 500])))

    async def uploaded(self, owner: str | None = None, start: float | None = None,
                       end: float | None = None) -> list[UploadRecord]:
        """Completed uploads in time order, of one owner or everyone, uploaded in [start, end)."""
        q = sa.select(_u).where(_u.c.uploaded_at.is_not(None))
        if owner is not None:
            q = q.where(_u.c.owner == owner)
        if start is not None:
            q = q.where(_u.c.uploaded_at >= start)
        if end is not None:
            q = q.where(_u.c.uploaded_at < end)
        async with self.db.connect() as c:
            return [_record(r) for r in await c.execute(q.order_by(_u.c.uploaded_at, _u.c.id))]
