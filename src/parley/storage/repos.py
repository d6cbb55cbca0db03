"""Repositories: the only code that writes SQL. Every write returns once it is committed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from parley.storage import schema as t
from parley.storage.db import Database, Prepared, fetch
from parley.xmpp.sasl import ScramCredentials

MECHANISMS = ("SHA-1", "SHA-256")


class UserExists(Exception):
    pass


class NoSuchUser(Exception):
    pass


@dataclass
class UserRecord:
    jid: str
    enabled: bool
    created_at: float


class UserRepo:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, jid: str, domain: str, creds: dict[str, ScramCredentials]) -> None:
        async with self.db.begin() as c:
            exists = await c.scalar(sa.select(t.users.c.jid).where(t.users.c.jid == jid))
            if exists:
                raise UserExists(jid)
            try:
                await c.execute(t.users.insert().values(jid=jid, domain=domain, enabled=True, created_at=time.time()))
            except sa.exc.IntegrityError:
                # Another writer created the account between the check and the insert.
                raise UserExists(jid) from None
            await c.execute(t.credentials.insert(), _cred_rows(jid, creds))

    async def add_many(self, rows: Sequence[tuple[str, str, dict[str, ScramCredentials]]]) -> None:
        """Insert users in one transaction: all of them or none."""
        if not rows:
            # An empty executemany would run as one INSERT of defaults and fail on users.jid.
            return
        now = time.time()
        async with self.db.begin() as c:
            await c.execute(
                t.users.insert(),
                [{"jid": j, "domain": d, "enabled": True, "created_at": now} for j, d, _ in rows],
            )
            await c.execute(t.credentials.insert(), [r for j, _, cr in rows for r in _cred_rows(j, cr)])

    async def existing(self, jids: Iterable[str]) -> set[str]:
        jids = list(jids)
        found: set[str] = set()
        async with self.db.connect() as c:
            for i in range(0, len(jids), 500):
                chunk = jids[i : i + 500]
                res = await c.execute(sa.select(t.users.c.jid).where(t.users.c.jid.in_(chunk)))
                found.update(r[0] for r in res)
        return found

    async def delete(self, jid: str) -> None:
        async with self.db.begin() as c:
            res = await c.execute(t.users.delete().where(t.users.c.jid == jid))
            if res.rowcount == 0:
                raise NoSuchUser(jid)
            await c.execute(t.credentials.delete().where(t.credentials.c.jid == jid))
            for table in (t.roster, t.roster_versions, t.offline_messages, t.vcards, t.private_storage,
                          t.policy_entries, t.user_settings, t.last_activity):
                await c.execute(table.delete().where(table.c.owner == jid))
            # Other users keep no dangling items pointing at a deleted account.
            await c.execute(t.roster.delete().where(t.roster.c.contact == jid))
            for table in (t.archive, t.archive_prefs, t.push_registrations, t.privacy_lists):
                await c.execute(table.delete().where(table.c.owner == jid))
            for table in (t.pubsub_nodes, t.pubsub_items, t.pubsub_subscriptions, t.pubsub_affiliations):
                await c.execute(table.delete().where(table.c.service == jid))

    async def set_credentials(self, jid: str, creds: dict[str, ScramCredentials]) -> None:
        async with self.db.begin() as c:
            if not await c.scalar(sa.select(t.users.c.jid).where(t.users.c.jid == jid)):
                raise NoSuchUser(jid)
            await c.execute(t.credentials.delete().where(t.credentials.c.jid == jid))
            await c.execute(t.credentials.insert(), _cred_rows(jid, creds))

    async def set_enabled(self, jid: str, enabled: bool) -> None:
        async with self.db.begin() as c:
            res = await c.execute(t.users.update().where(t.users.c.jid == jid).values(enabled=enabled))
            if res.rowcount == 0:
                raise NoSuchUser(jid)

    async def get(self, jid: str) -> UserRecord | None:
        async with self.db.connect() as c:
            row = _first(await fetch(c, _USER_Q, {"jid": jid}))
        return UserRecord(row.jid, row.enabled, row.created_at) if row else None

    async def list(self, domain: str | None = None) -> list[UserRecord]:
        q = sa.select(t.users).order_by(t.users.c.jid)
        if domain:
            q = q.where(t.users.c.domain == domain)
        async with self.db.connect() as c:
            return [UserRecord(r.jid, r.enabled, r.created_at) for r in await c.execute(q)]

    async def count_in_domain(self, domain: str) -> int:
        async with self.db.connect() as c:
            return int(await c.scalar(sa.select(sa.func.count()).where(t.users.c.domain == domain)) or 0)

    async def credentials(self, jid: str, mechanism: str) -> tuple[bool, ScramCredentials] | None:
        """(enabled, keys) for the user, or None when there is no such user."""
        async with self.db.connect() as c:
            row = _first(await fetch(c, _CREDENTIALS_Q, {"jid": jid, "mechanism": mechanism}))
        if row is None:
            return None
        return row.enabled, ScramCredentials(row.salt, row.iterations, row.stored_key, row.server_key)


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


# Statements of the sign-in path, built once: building and keying a statement costs more
# than running it on an embedded database.
_USER_Q = Prepared(sa.select(t.users).where(t.users.c.jid == sa.bindparam("jid")))
_CREDENTIALS_Q = Prepared(
    sa.select(t.users.c.enabled, t.credentials)
    .join(t.credentials, t.credentials.c.jid == t.users.c.jid)
    .where(t.users.c.jid == sa.bindparam("jid"), t.credentials.c.mechanism == sa.bindparam("mechanism"))
)
_ROSTER_VERSION_Q = Prepared(
    sa.select(t.roster_versions.c.version).where(t.roster_versions.c.owner == sa.bindparam("owner")))
_ROSTER_Q = Prepared(sa.select(t.roster).where(t.roster.c.owner == sa.bindparam("owner")))
_OFFLINE_Q = Prepared(
    sa.select(t.offline_messages).where(t.offline_messages.c.owner == sa.bindparam("owner"))
    .order_by(t.offline_messages.c.id)
)
_POLICY_Q = Prepared(sa.select(t.policy_entries).where(t.policy_entries.c.owner == sa.bindparam("owner")))
_SETTINGS_Q = Prepared(sa.select(t.user_settings).where(t.user_settings.c.owner == sa.bindparam("owner")))


def _cred_rows(jid: str, creds: dict[str, ScramCredentials]) -> list[dict[str, object]]:
    return [
        {"jid": jid, "mechanism": m, "salt": c.salt, "iterations": c.iterations,
         "stored_key": c.stored_key, "server_key": c.server_key}
        for m, c in creds.items()
    ]


class DomainRepo:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, name: str, managed_by: str = "admin") -> bool:
        """False when the domain is already there."""
        try:
            async with self.db.begin() as c:
                if await c.scalar(sa.select(t.domains.c.name).where(t.domains.c.name == name)):
                    return False
                await c.execute(t.domains.insert().values(name=name, managed_by=managed_by, created_at=time.time()))
                return True
        except sa.exc.IntegrityError:
            return False  # added by someone else meanwhile

    async def delete(self, name: str) -> bool:
        async with self.db.begin() as c:
            res = await c.execute(t.domains.delete().where(t.domains.c.name == name))
            return bool(res.rowcount)

    async def list(self) -> list[tuple[str, str]]:
        async with self.db.connect() as c:
            res = await c.execute(sa.select(t.domains.c.name, t.domains.c.managed_by).order_by(t.domains.c.name))
            return [(r[0], r[1]) for r in res]


@dataclass
class RosterItem:
    contact: str
    name: str | None = None
    subscription: str = "none"  # none | to | from | both
    ask: bool = False
    pending_in: bool = False
    pending_in_stanza: str | None = None
    approved: bool = False
    visible: bool = True
    groups: list[str] = field(default_factory=list)

    @property
    def has_from(self) -> bool:
        return self.subscription in ("from", "both")

    @property
    def has_to(self) -> bool:
        return self.subscription in ("to", "both")


class RosterRepo:
    def __init__(self, db: Database):
        self.db = db

    async def load(self, owner: str) -> tuple[int, dict[str, RosterItem]]:
        async with self.db.connect() as c:
            ver_row = _first(await fetch(c, _ROSTER_VERSION_Q, {"owner": owner}))
            ver = ver_row[0] if ver_row else None
            res = await fetch(c, _ROSTER_Q, {"owner": owner})
            items = {
                r.contact: RosterItem(r.contact, r.name, r.subscription, r.ask, r.pending_in,
                                      r.pending_in_stanza, r.approved, r.visible, json.loads(r.groups))
                for r in res
            }
        return int(ver or 0), items

    async def all_items(self, owners: Sequence[str] | None = None) -> list[tuple[str, RosterItem]]:
        """(owner, item) for every stored item, hidden ones included, of the given owners (all
        owners when None), ordered by owner then contact. Bulk tools read many rosters at once
        with it instead of one ``load`` per user."""
        base = sa.select(t.roster).order_by(t.roster.c.owner, t.roster.c.contact)
        queries = [base]
        if owners is not None:
            wanted = sorted(set(owners))
            # Bounded IN lists: some databases cap the number of bound parameters.
            queries = [base.where(t.roster.c.owner.in_(wanted[i : i + 500])) for i in range(0, len(wanted), 500)]
        out: list[tuple[str, RosterItem]] = []
        async with self.db.connect() as c:
            for q in queries:
                for r in await c.execute(q):
                    out.append((r.owner, RosterItem(r.contact, r.name, r.subscription, r.ask, r.pending_in,
                                                    r.pending_in_stanza, r.approved, r.visible,
                                                    json.loads(r.groups))))
        return out

    async def save(self, owner: str, items: Sequence[RosterItem], removed: Sequence[str] = ()) -> int:
        """Write items (insert or replace) and removals; returns the new roster version."""
        async with self.db.begin() as c:
            for contact in removed:
                await c.execute(t.roster.delete().where(t.roster.c.owner == owner, t.roster.c.contact == contact))
            for it in items:
                values = {
                    "name": it.name, "subscription": it.subscription, "ask": it.ask,
                    "pending_in": it.pending_in, "pending_in_stanza": it.pending_in_stanza,
                    "approved": it.approved, "visible": it.visible, "groups": json.dumps(it.groups),
                }
                res = await c.execute(
                    t.roster.update().where(t.roster.c.owner == owner, t.roster.c.contact == it.contact).values(**values)
                )
                if res.rowcount == 0:
                    await c.execute(t.roster.insert().values(owner=owner, contact=it.contact, **values))
            return await _bump_version(c, owner)

    async def count_watchers(self, contact: str) -> int:
        """How many users receive this user's presence (subscription from their side is 'to'/'both')."""
        async with self.db.connect() as c:
            q = sa.select(sa.func.count()).where(
                t.roster.c.contact == contact, t.roster.c.subscription.in_(("to", "both"))
            )
            return int(await c.scalar(q) or 0)


async def _bump_version(c: sa.ext.asyncio.AsyncConnection, owner: str) -> int:
    # One insert-or-increment statement: a read then a write would let concurrent saves (on
    # PostgreSQL's READ COMMITTED) read the same version and hand it out twice.
    insert = postgresql.insert if c.dialect.name == "postgresql" else sqlite.insert
    await c.execute(
        insert(t.roster_versions)
        .values(owner=owner, version=1)
        .on_conflict_do_update(index_elements=[t.roster_versions.c.owner],
                               set_={"version": t.roster_versions.c.version + 1})
    )
    ver = await c.scalar(sa.select(t.roster_versions.c.version).where(t.roster_versions.c.owner == owner))
    return int(ver)


@dataclass
class OfflineMessage:
    id: int
    sender: str
    stanza: str
    created_at: float


class OfflineRepo:
    def __init__(self, db: Database):
        self.db = db

    async def store(self, owner: str, sender: str, stanza: str, limit: int = 0) -> bool:
        """False when the user's offline store is full (limit > 0)."""
        async with self.db.begin() as c:
            if limit:
                n = await c.scalar(sa.select(sa.func.count()).where(t.offline_messages.c.owner == owner))
                if (n or 0) >= limit:
                    return False
            await c.execute(
                t.offline_messages.insert().values(owner=owner, sender=sender, stanza=stanza, created_at=time.time())
            )
            return True

    async def fetch(self, owner: str) -> list[OfflineMessage]:
        async with self.db.connect() as c:
            return [OfflineMessage(r.id, r.sender, r.stanza, r.created_at)
                    for r in await fetch(c, _OFFLINE_Q, {"owner": owner})]

    async def count(self, owner: str) -> int:
        async with self.db.connect() as c:
            return int(await c.scalar(sa.select(sa.func.count()).where(t.offline_messages.c.owner == owner)) or 0)

    async def delete(self, owner: str, ids: Iterable[int] | None = None) -> None:
        q = t.offline_messages.delete().where(t.offline_messages.c.owner == owner)
        if ids is not None:
            q = q.where(t.offline_messages.c.id.in_(list(ids)))
        async with self.db.begin() as c:
            await c.execute(q)


class DocumentRepo:
    """Per-user XML documents: vCards, private XML storage, last activity."""

    def __init__(self, db: Database):
        self.db = db

    async def get_vcard(self, owner: str) -> str | None:
        async with self.db.connect() as c:
            return await c.scalar(sa.select(t.vcards.c.xml).where(t.vcards.c.owner == owner))

    async def set_vcard(self, owner: str, xml: str) -> None:
        async with self.db.begin() as c:
            res = await c.execute(t.vcards.update().where(t.vcards.c.owner == owner).values(xml=xml))
            if res.rowcount == 0:
                await c.execute(t.vcards.insert().values(owner=owner, xml=xml))

    async def get_private(self, owner: str, namespace: str) -> str | None:
        q = sa.select(t.private_storage.c.xml).where(
            t.private_storage.c.owner == owner, t.private_storage.c.namespace == namespace
        )
        async with self.db.connect() as c:
            return await c.scalar(q)

    async def set_private(self, owner: str, docs: dict[str, str]) -> None:
        async with self.db.begin() as c:
            for ns, xml in docs.items():
                res = await c.execute(
                    t.private_storage.update()
                    .where(t.private_storage.c.owner == owner, t.private_storage.c.namespace == ns)
                    .values(xml=xml)
                )
                if res.rowcount == 0:
                    await c.execute(t.private_storage.insert().values(owner=owner, namespace=ns, xml=xml))

    async def get_last(self, owner: str) -> tuple[float, str | None] | None:
        async with self.db.connect() as c:
            row = (await c.execute(sa.select(t.last_activity).where(t.last_activity.c.owner == owner))).first()
        return (row.at, row.status) if row else None

    async def set_last(self, owner: str, at: float, status: str | None) -> None:
        async with self.db.begin() as c:
            res = await c.execute(
                t.last_activity.update().where(t.last_activity.c.owner == owner).values(at=at, status=status)
            )
            if res.rowcount == 0:
                await c.execute(t.last_activity.insert().values(owner=owner, at=at, status=status))


class PolicyRepo:
    """The user's allow and block lists (the block list is also XEP-0191's) and defaults."""

    def __init__(self, db: Database):
        self.db = db

    async def load(self, owner: str) -> tuple[dict[str, set[str]], str | None, bool | None]:
        lists: dict[str, set[str]] = {"allow": set(), "block": set()}
        async with self.db.connect() as c:
            for r in await fetch(c, _POLICY_Q, {"owner": owner}):
                lists.setdefault(r.list, set()).add(r.target)
            row = _first(await fetch(c, _SETTINGS_Q, {"owner": owner}))
        return lists, (row.default_policy if row else None), (row.auto_approve if row else None)

    async def add(self, owner: str, list_name: str, targets: Iterable[str]) -> None:
        targets = list(targets)
        try:
            await self._add(owner, list_name, targets)
        except sa.exc.IntegrityError:
            # A concurrent add of the same entry; the second pass finds it and skips it.
            await self._add(owner, list_name, targets)

    async def _add(self, owner: str, list_name: str, targets: list[str]) -> None:
        async with self.db.begin() as c:
            for target in targets:
                exists = await c.scalar(
                    sa.select(sa.func.count()).where(
                        t.policy_entries.c.owner == owner, t.policy_entries.c.list == list_name,
                        t.policy_entries.c.target == target,
                    )
                )
                if not exists:
                    await c.execute(t.policy_entries.insert().values(owner=owner, list=list_name, target=target))

    async def remove(self, owner: str, list_name: str, targets: Iterable[str] | None) -> None:
        q = t.policy_entries.delete().where(t.policy_entries.c.owner == owner, t.policy_entries.c.list == list_name)
        if targets is not None:
            q = q.where(t.policy_entries.c.target.in_(list(targets)))
        async with self.db.begin() as c:
            await c.execute(q)

    async def set_settings(self, owner: str, default_policy: str | None, auto_approve: bool | None) -> None:
        async with self.db.begin() as c:
            await c.execute(t.user_settings.delete().where(t.user_settings.c.owner == owner))
            await c.execute(
                t.user_settings.insert().values(owner=owner, default_policy=default_policy, auto_approve=auto_approve)
            )


class Repos:
    """All repositories over one database."""

    def __init__(self, db: Database):
        self.db = db
        self.users = UserRepo(db)
        self.domains = DomainRepo(db)
        self.roster = RosterRepo(db)
        self.offline = OfflineRepo(db)
        self.docs = DocumentRepo(db)
        self.policy = PolicyRepo(db)
