"""Contact lists in bulk: ``parley contacts import`` and ``parley contacts export``.

Import turns every valid line into a mutual subscription: the user gets an item for the contact
with subscription 'both' and, when the contact is a local account, the contact gets one for the
user. Lines are handled in chunks; within a chunk every roster involved is read once and written
once, whatever the number of lines naming it.

Rosters are written straight to the database: a running server keeps the rosters of signed-in
users in memory, so they see imported contacts after signing in again or a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TextIO

import sqlalchemy as sa

from parley.bulk.contacts import (
    ContactRow,
    ImportReport,
    Reason,
    Rejected,
    format_contact_row,
    parse_contacts,
    split_im_address,
)
from parley.bulk.user_import import count_lines, progress_bar
from parley.config import Config
from parley.storage.repos import Repos, RosterItem
from parley.xmpp.jid import JID, InvalidJID, escape_node

__all__ = ["CHUNK", "export_contacts", "import_contacts"]

log = logging.getLogger("parley.bulk")

# Lines per chunk: bounds memory on large files while keeping database round trips few.
CHUNK = 1000

_DB_ERRORS = (sa.exc.SQLAlchemyError, OSError)

Key = tuple[str, str]  # (owner, contact)


class _DatabaseGone(Exception):
    """The database no longer answers at all; the import cannot go on."""


def _address(user_id: str, domain: str) -> JID:
    """The account a user ID names. IDs that are not valid localparts, such as the seed's
    'bjones@usa', are tried again with XEP-0106 escaping, the standard way to carry them."""
    try:
        return JID.make(user_id, domain)
    except InvalidJID:
        return JID.make(escape_node(user_id), domain)


@dataclass
class _Row:
    row: ContactRow
    user: str
    contact: str
    contact_local: bool
    writes: list[Key] = field(default_factory=list)


def _reject(row: ContactRow, reason: Reason, detail: str) -> Rejected:
    raw = format_contact_row(row.user_id, row.user_domain, row.contact_id, row.contact_domain,
                             row.nickname, row.group)
    return Rejected(row.line, raw, reason, detail)


class _Importer:
    def __init__(self, repos: Repos, hosts: set[str], limit: int, report: ImportReport):
        self.repos = repos
        self.hosts = hosts
        self.limit = limit
        self.report = report
        # Items this run created or updated on the user's side: a contact exported once per
        # group arrives as several lines, and each line adds its group instead of replacing.
        self.touched: set[Key] = set()

    async def _gone(self) -> bool:
        try:
            await self.repos.domains.list()
        except _DB_ERRORS:
            return True
        return False

    def _resolve(self, row: ContactRow) -> tuple[str, str] | Rejected:
        if row.user_domain not in self.hosts:
            return _reject(row, Reason.NOT_LOCAL, f"{row.user_domain} is not a domain of this server")
        try:
            user = str(_address(row.user_id, row.user_domain))
        except InvalidJID as e:
            return _reject(row, Reason.NOT_LOCAL, f"{row.user_id!r} cannot be a user of this server ({e})")
        try:
            contact = str(_address(row.contact_id, row.contact_domain))
        except InvalidJID as e:
            return _reject(row, Reason.INVALID_FORMAT, f"Contact ID {row.contact_id!r} is not usable in an address ({e})")
        # Case mapping can make two spellings one account, which the parser cannot know.
        if user == contact:
            return _reject(row, Reason.SELF_CONTACT, f"{row.contact_id}@{row.contact_domain} is the user {user}")
        return user, contact

    async def chunk(self, rows: list[ContactRow]) -> None:
        """Import one chunk; raises _DatabaseGone, having counted what it could not do."""
        resolved: list[tuple[ContactRow, str, str]] = []
        for row in rows:
            r = self._resolve(row)
            if isinstance(r, Rejected):
                self.report.ignored.append(r)
            else:
                resolved.append((row, *r))
        if not resolved:
            return
        try:
            candidates = {u for _, u, _ in resolved}
            candidates.update(c for _, _, c in resolved if c.rpartition("@")[2] in self.hosts)
            local = await self.repos.users.existing(candidates)
            owners = {u for _, u, _ in resolved if u in local}
            owners.update(c for _, u, c in resolved if u in local and c in local)
            loaded = await self.repos.roster.all_items(sorted(owners)) if owners else []
        except _DB_ERRORS as e:
            if await self._gone():
                self.report.unprocessed += len(resolved)
                raise _DatabaseGone(str(e)) from e
            log.warning("contact import: reading rosters for lines %d-%d failed: %s",
                        resolved[0][0].line, resolved[-1][0].line, e)
            self.report.internal_errors += len(resolved)
            return
        rosters: dict[str, dict[str, RosterItem]] = {o: {} for o in owners}
        for owner, item in loaded:
            rosters[owner][item.contact] = item
        work: list[_Row] = []
        for row, user, contact in resolved:
            if user not in local:
                self.report.ignored.append(_reject(row, Reason.NOT_LOCAL, f"{user} is not a user of this server"))
            else:
                work.append(_Row(row, user, contact, contact in local))

        before = {o: dict(items) for o, items in rosters.items()}
        counts = {o: sum(1 for i in items.values() if i.visible) for o, items in rosters.items()}
        applied: list[_Row] = []
        for w in work:
            if self._apply(w, rosters, counts):
                applied.append(w)
        await self._save(applied, rosters, before)

    def _full(self, owner: str, contact: str, rosters: dict[str, dict[str, RosterItem]],
              counts: dict[str, int]) -> bool:
        existing = rosters[owner].get(contact)
        is_new = existing is None or not existing.visible
        return bool(self.limit) and is_new and counts[owner] >= self.limit

    def _put(self, owner: str, item: RosterItem, rosters: dict[str, dict[str, RosterItem]],
             counts: dict[str, int]) -> None:
        old = rosters[owner].get(item.contact)
        if old is None or not old.visible:
            counts[owner] += 1
        rosters[owner][item.contact] = item

    def _apply(self, w: _Row, rosters: dict[str, dict[str, RosterItem]], counts: dict[str, int]) -> bool:
        row = w.row
        if self._full(w.user, w.contact, rosters, counts):
            self.report.ignored.append(_reject(
                row, Reason.LIST_FULL, f"{w.user} has {counts[w.user]} contacts (at most {self.limit})"))
            return False
        # A mutual subscription needs room on both lists: nobody can add a user whose list is full.
        if w.contact_local and self._full(w.contact, w.user, rosters, counts):
            self.report.ignored.append(_reject(
                row, Reason.LIST_FULL,
                f"the contact {w.contact} has {counts[w.contact]} contacts (at most {self.limit})"))
            return False

        mine = rosters[w.user].get(w.contact)
        groups = [row.group]
        name = row.nickname or None
        if mine is not None and (w.user, w.contact) in self.touched:
            groups = mine.groups + ([row.group] if row.group not in mine.groups else [])
            name = name or mine.name
        # 'both' settles any request in flight either way.
        item = replace(mine or RosterItem(w.contact), name=name, groups=groups, subscription="both",
                       ask=False, pending_in=False, pending_in_stanza=None, visible=True)
        self._put(w.user, item, rosters, counts)
        self.touched.add((w.user, w.contact))
        w.writes.append((w.user, w.contact))

        if w.contact_local:
            theirs = rosters[w.contact].get(w.user)
            if theirs is None:
                back = RosterItem(w.user, groups=[row.group])
            else:
                # The contact's own naming and grouping of the user is theirs to keep.
                back = replace(theirs, groups=theirs.groups or [row.group])
            back = replace(back, subscription="both", ask=False, pending_in=False,
                           pending_in_stanza=None, visible=True)
            self._put(w.contact, back, rosters, counts)
            w.writes.append((w.contact, w.user))
        return True

    async def _save(self, applied: list[_Row], rosters: dict[str, dict[str, RosterItem]],
                    before: dict[str, dict[str, RosterItem]]) -> None:
        # Dicts as ordered sets: each item is written once, in the order the lines gave.
        changed: dict[str, dict[str, None]] = {}
        for w in applied:
            for owner, contact in w.writes:
                changed.setdefault(owner, {})[contact] = None
        saved: set[Key] = set()
        failed: set[Key] = set()
        try:
            for owner, contacts in changed.items():
                try:
                    await self.repos.roster.save(owner, [rosters[owner][c] for c in contacts])
                    saved.update((owner, c) for c in contacts)
                    continue
                except _DB_ERRORS as e:
                    if await self._gone():
                        raise _DatabaseGone(str(e)) from e
                # One bad item must not sink the others: find it by writing them one by one.
                for c in contacts:
                    try:
                        await self.repos.roster.save(owner, [rosters[owner][c]])
                        saved.add((owner, c))
                    except _DB_ERRORS as e:
                        if await self._gone():
                            raise _DatabaseGone(str(e)) from e
                        log.warning("contact import: writing %s on the roster of %s failed: %s", c, owner, e)
                        failed.add((owner, c))
        except _DatabaseGone:
            for w in applied:
                if all(k in saved for k in w.writes):
                    self.report.succeeded += 1
                else:
                    self.report.unprocessed += 1
            raise

        ok = [w for w in applied if not any(k in failed for k in w.writes)]
        bad = [w for w in applied if any(k in failed for k in w.writes)]
        self.report.succeeded += len(ok)
        self.report.internal_errors += len(bad)
        # A line that failed on one side must not leave the other side behind, unless a line that
        # did succeed wrote that same item.
        keep = {k for w in ok for k in w.writes}
        undo = {k for w in bad for k in w.writes if k in saved and k not in keep}
        for owner, contact in sorted(undo):
            self.touched.discard((owner, contact))
            old = before[owner].get(contact)
            try:
                if old is None:
                    await self.repos.roster.save(owner, [], [contact])
                else:
                    await self.repos.roster.save(owner, [old])
            except _DB_ERRORS as e:
                log.error("contact import: could not undo %s on the roster of %s: %s", contact, owner, e)


async def import_contacts(repos: Repos, cfg: Config, lines: Iterable[str]) -> ImportReport:
    """Import contact lines (see :mod:`parley.bulk.contacts` for the format) as mutual
    subscriptions and return the result log. ``cfg.presence.max_contacts`` (0 = no limit) bounds
    every list written to; a database failure on one line is counted as an internal error and
    the import goes on, while losing the database counts every line not done as unprocessed."""
    report = ImportReport()
    try:
        hosts = {cfg.server.domain, *(name for name, _ in await repos.domains.list())}
    except _DB_ERRORS:
        report.unprocessed = sum(1 for _ in parse_contacts(lines))
        return report
    importer = _Importer(repos, hosts, cfg.presence.max_contacts, report)
    total = count_lines(lines)
    items = parse_contacts(lines)
    chunk: list[ContactRow] = []
    with progress_bar("importing contacts") as progress:
        task = progress.add_task("contacts", total=total)
        try:
            for item in items:
                if isinstance(item, Rejected):
                    report.ignored.append(item)
                    continue
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    rows, chunk = chunk, []
                    await importer.chunk(rows)
                    progress.update(task, completed=rows[-1].line)
            if chunk:
                rows, chunk = chunk, []
                await importer.chunk(rows)
            progress.update(task, completed=total)
        except _DatabaseGone as e:
            log.error("contact import stopped: the database is unavailable: %s", e)
            # Nothing after this point was looked at, good or bad.
            report.unprocessed += len(chunk) + sum(1 for _ in items)
    return report


async def export_contacts(repos: Repos, out: TextIO, user_jid: str | None, domain: str | None) -> int:
    """Write the visible roster items of the selected users (one user, the users of a domain,
    or everybody) as contact lines and return how many lines were written.

    An item in several groups gives one line per group, which import merges back. Items for a
    bare domain (a gateway, say) have no contact ID and cannot be written in this format.
    """
    if user_jid is not None:
        try:
            owner = str(JID.parse(user_jid.strip()).bare)
        except InvalidJID:
            return 0
        if domain is not None and owner.rpartition("@")[2] != domain.strip().lower():
            return 0
        owners = [owner]
    else:
        owners = [u.jid for u in await repos.users.list(domain.strip().lower() if domain else None)]
    written = 0
    # A slice of users at a time keeps memory flat on large deployments.
    for i in range(0, len(owners), 500):
        for owner, item in await repos.roster.all_items(owners[i : i + 500]):
            if not item.visible:
                continue
            try:
                user_id, user_domain = split_im_address(owner)
                contact_id, contact_domain = split_im_address(item.contact)
            except ValueError:
                continue
            groups: list[str | None] = list(item.groups) or [None]
            for group in groups:
                out.write(format_contact_row(user_id, user_domain, contact_id, contact_domain,
                                             item.name, group) + "\n")
                written += 1
    return written
