"""Publish-subscribe storage: nodes, their configuration and items, for PEP (the service is
the account's bare JID) and for a pubsub component alike.

Items are ordered by their row id: publishing an item id again replaces the row, so the
newest item of a node is always the one with the highest id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database

# Bound parameters per IN list: some databases cap how many one statement may carry.
_CHUNK = 500


@dataclass
class NodeRecord:
    service: str
    node: str
    owner: str
    config: dict[str, Any]
    created_at: float


@dataclass
class ItemRecord:
    node: str
    item_id: str
    publisher: str
    payload: str
    ts: float


@dataclass
class Published:
    """What a publish did: the node as it now is, whether it was created, and the items
    that were dropped to respect the node's item limit."""

    node: NodeRecord
    created: bool
    evicted: list[str]


def _node(row: Any) -> NodeRecord:
    try:
        config = json.loads(row.config or "{}")
    except ValueError:
        config = {}
    return NodeRecord(row.service, row.node, row.owner, config, row.created_at)


def _item(row: Any) -> ItemRecord:
    return ItemRecord(row.node, row.item_id, row.publisher, row.payload, row.ts)


class PubsubRepo:
    def __init__(self, db: Database):
        self.db = db

    # --- nodes --------------------------------------------------------------------------------

    async def get_node(self, service: str, node: str) -> NodeRecord | None:
        q = sa.select(t.pubsub_nodes).where(t.pubsub_nodes.c.service == service, t.pubsub_nodes.c.node == node)
        async with self.db.connect() as c:
            row = (await c.execute(q)).first()
        return _node(row) if row else None

    async def list_nodes(self, service: str) -> list[NodeRecord]:
        q = (sa.select(t.pubsub_nodes).where(t.pubsub_nodes.c.service == service)
             .order_by(t.pubsub_nodes.c.created_at, t.pubsub_nodes.c.node))
        async with self.db.connect() as c:
            return [_node(r) for r in await c.execute(q)]

    async def nodes_of(self, services: Sequence[str], nodes: Sequence[str]) -> list[NodeRecord]:
        """The nodes with one of these names on any of these services."""
        if not services or not nodes:
            return []
        wanted = sorted(set(nodes))[:_CHUNK]
        out: list[NodeRecord] = []
        svcs = sorted(set(services))
        async with self.db.connect() as c:
            for i in range(0, len(svcs), _CHUNK):
                q = sa.select(t.pubsub_nodes).where(
                    t.pubsub_nodes.c.service.in_(svcs[i : i + _CHUNK]), t.pubsub_nodes.c.node.in_(wanted)
                )
                out.extend(_node(r) for r in await c.execute(q))
        return out

    async def count_nodes(self, service: str) -> int:
        q = sa.select(sa.func.count()).where(t.pubsub_nodes.c.service == service)
        async with self.db.connect() as c:
            return int(await c.scalar(q) or 0)

    async def create_node(self, service: str, node: str, owner: str, config: dict[str, Any]) -> bool:
        """False when the node already exists."""
        try:
            async with self.db.begin() as c:
                if await self._exists(c, service, node):
                    return False
                await c.execute(t.pubsub_nodes.insert().values(
                    service=service, node=node, owner=owner, config=json.dumps(config), created_at=time.time()))
                return True
        except sa.exc.IntegrityError:
            return False  # created by someone else meanwhile

    async def set_config(self, service: str, node: str, config: dict[str, Any], max_items: int | None = None) -> bool:
        """Replace a node's configuration; with `max_items`, drop the oldest items past it."""
        async with self.db.begin() as c:
            res = await c.execute(
                t.pubsub_nodes.update()
                .where(t.pubsub_nodes.c.service == service, t.pubsub_nodes.c.node == node)
                .values(config=json.dumps(config))
            )
            if not res.rowcount:
                return False
            if max_items is not None:
                await self._trim(c, service, node, max_items)
            return True

    async def delete_node(self, service: str, node: str) -> bool:
        async with self.db.begin() as c:
            res = await c.execute(
                t.pubsub_nodes.delete().where(t.pubsub_nodes.c.service == service, t.pubsub_nodes.c.node == node)
            )
            for table in (t.pubsub_items, t.pubsub_subscriptions, t.pubsub_affiliations):
                await c.execute(table.delete().where(table.c.service == service, table.c.node == node))
            return bool(res.rowcount)

    async def delete_service(self, service: str) -> None:
        """Everything a service holds (an account that is deleted takes its PEP nodes along)."""
        async with self.db.begin() as c:
            for table in (t.pubsub_nodes, t.pubsub_items, t.pubsub_subscriptions, t.pubsub_affiliations):
                await c.execute(table.delete().where(table.c.service == service))

    # --- items --------------------------------------------------------------------------------

    async def publish(self, service: str, node: str, owner: str, item_id: str, publisher: str,
                      payload: str | None, max_items: int, new_config: dict[str, Any]) -> Published:
        """Store an item (replacing one with the same id) and keep at most `max_items`;
        creates the node with `new_config` first when it does not exist. A None payload
        stores nothing (a node that does not persist items) but still creates the node.
        `max_items` applies to an existing node; a new node uses `new_config`'s own."""
        for attempt in (1, 2):
            try:
                return await self._publish(service, node, owner, item_id, publisher, payload, max_items,
                                           new_config)
            except sa.exc.IntegrityError:
                # The node was created (or the item written) by a concurrent publish.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _publish(self, service: str, node: str, owner: str, item_id: str, publisher: str,
                       payload: str | None, max_items: int, new_config: dict[str, Any]) -> Published:
        async with self.db.begin() as c:
            row = (await c.execute(sa.select(t.pubsub_nodes).where(
                t.pubsub_nodes.c.service == service, t.pubsub_nodes.c.node == node))).first()
            created = row is None
            if created:
                now = time.time()
                await c.execute(t.pubsub_nodes.insert().values(
                    service=service, node=node, owner=owner, config=json.dumps(new_config), created_at=now))
                record = NodeRecord(service, node, owner, dict(new_config), now)
            else:
                record = _node(row)
            await c.execute(t.pubsub_items.delete().where(
                t.pubsub_items.c.service == service, t.pubsub_items.c.node == node,
                t.pubsub_items.c.item_id == item_id))
            evicted: list[str] = []
            if payload is not None:
                await c.execute(t.pubsub_items.insert().values(
                    service=service, node=node, item_id=item_id, publisher=publisher, payload=payload,
                    ts=time.time()))
                evicted = await self._trim(c, service, node, max_items)
            return Published(record, created, evicted)

    async def _trim(self, c: Any, service: str, node: str, keep: int) -> list[str]:
        q = (sa.select(t.pubsub_items.c.id, t.pubsub_items.c.item_id)
             .where(t.pubsub_items.c.service == service, t.pubsub_items.c.node == node)
             .order_by(t.pubsub_items.c.id.desc()).offset(keep))
        old = list(await c.execute(q))
        if not old:
            return []
        ids = [r.id for r in old]
        for i in range(0, len(ids), _CHUNK):
            await c.execute(t.pubsub_items.delete().where(t.pubsub_items.c.id.in_(ids[i : i + _CHUNK])))
        return [r.item_id for r in old]

    async def retract(self, service: str, node: str, item_ids: Sequence[str]) -> list[str]:
        """Remove items; returns the ids that existed."""
        ids = list(dict.fromkeys(item_ids))
        found: list[str] = []
        async with self.db.begin() as c:
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                where = (t.pubsub_items.c.service == service, t.pubsub_items.c.node == node,
                         t.pubsub_items.c.item_id.in_(chunk))
                found.extend(r[0] for r in await c.execute(sa.select(t.pubsub_items.c.item_id).where(*where)))
                await c.execute(t.pubsub_items.delete().where(*where))
        return found

    async def purge(self, service: str, node: str) -> int:
        async with self.db.begin() as c:
            res = await c.execute(t.pubsub_items.delete().where(
                t.pubsub_items.c.service == service, t.pubsub_items.c.node == node))
            return int(res.rowcount or 0)

    async def items(self, service: str, node: str, max_items: int | None = None,
                    item_ids: Sequence[str] | None = None) -> list[ItemRecord]:
        """Items oldest first: the `max_items` newest, or the ones named, or all."""
        base = sa.select(t.pubsub_items).where(t.pubsub_items.c.service == service,
                                               t.pubsub_items.c.node == node)
        async with self.db.connect() as c:
            if item_ids is not None:
                ids = list(dict.fromkeys(item_ids))
                rows: list[Any] = []
                for i in range(0, len(ids), _CHUNK):
                    rows.extend(await c.execute(base.where(t.pubsub_items.c.item_id.in_(ids[i : i + _CHUNK]))))
                rows.sort(key=lambda r: r.id)
                return [_item(r) for r in rows]
            q = base.order_by(t.pubsub_items.c.id.desc())
            if max_items is not None:
                q = q.limit(max_items)
            rows = list(await c.execute(q))
        rows.reverse()
        return [_item(r) for r in rows]

    async def item_ids(self, service: str, node: str) -> list[str]:
        q = (sa.select(t.pubsub_items.c.item_id)
             .where(t.pubsub_items.c.service == service, t.pubsub_items.c.node == node)
             .order_by(t.pubsub_items.c.id))
        async with self.db.connect() as c:
            return [r[0] for r in await c.execute(q)]

    async def last_items(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], ItemRecord]:
        """The newest item of each (service, node) that has one."""
        wanted = set(pairs)
        if not wanted:
            return {}
        services = sorted({s for s, _ in wanted})
        nodes = sorted({n for _, n in wanted})[:_CHUNK]
        out: dict[tuple[str, str], ItemRecord] = {}
        async with self.db.connect() as c:
            for i in range(0, len(services), _CHUNK):
                newest = (
                    sa.select(sa.func.max(t.pubsub_items.c.id))
                    .where(t.pubsub_items.c.service.in_(services[i : i + _CHUNK]),
                           t.pubsub_items.c.node.in_(nodes))
                    .group_by(t.pubsub_items.c.service, t.pubsub_items.c.node)
                )
                q = sa.select(t.pubsub_items).where(t.pubsub_items.c.id.in_(newest))
                for r in await c.execute(q):
                    if (r.service, r.node) in wanted:
                        out[(r.service, r.node)] = _item(r)
        return out

    @staticmethod
    async def _exists(c: Any, service: str, node: str) -> bool:
        q = sa.select(t.pubsub_nodes.c.node).where(t.pubsub_nodes.c.service == service,
                                                   t.pubsub_nodes.c.node == node)
        return (await c.scalar(q)) is not None
