"""Reads that overlap in time (a coroutine suspended inside one) each see their own rows."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database


async def test_overlapping_reads_do_not_mix(db_url: str) -> None:
    db = Database(db_url)
    await db.migrate()
    try:
        async with db.begin() as c:
            await c.execute(t.domains.insert(), [
                {"name": f"d{i}.test", "managed_by": "admin", "created_at": 0.0} for i in range(40)
            ])

        async def reader(k: int) -> list[str]:
            async with db.connect() as c:
                res = await c.execute(
                    sa.select(t.domains.c.name).where(t.domains.c.name.like(f"d{k % 4}%")).order_by(t.domains.c.name)
                )
                await asyncio.sleep(0.005 * (k % 3))
                return [r[0] for r in res]

        out = await asyncio.gather(*(reader(k) for k in range(24)))
        for k, names in enumerate(out):
            assert names and all(n.startswith(f"d{k % 4}") for n in names), (k, names)
    finally:
        await db.close()
