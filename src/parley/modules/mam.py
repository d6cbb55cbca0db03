"""Message archive management for users (XEP-0313, urn:xmpp:mam:2) with unique stanza ids
(XEP-0359) and result set paging (XEP-0059).

Every one-to-one chat or normal message with a body (or a ``<store/>`` hint, XEP-0334) goes
into the recipient's archive and, when a local session sent it, into the sender's, as each
owner's preferences allow. The rows are committed before any session or the offline store
gets the message, and the recipient's copy carries ``<stanza-id by='recipient'>`` with the
id of its archive row: live, offline and archived copies all show the same id. The sender's
id travels on the sender's ``sent`` carbons. Ids a client puts in under our users' names are
removed; a copy the server itself routes again (stream management handing on what a lost
session never acknowledged) keeps its id and gets no second row.

Queries take the XEP-0313 form (with, start, end and the extended before-id, after-id,
ids), RSM max/after/before (an empty before is the last page) and flip-page. With
``archive.retention_days`` set, a task deletes older messages once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

import sqlalchemy as sa

from parley.module import Module, Refusal
from parley.modules.message import Delivery
from parley.router import Routed
from parley.sessions import Session
from parley.storage.archive import (
    MODES,
    ArchivedMessage,
    ArchiveEntry,
    ArchiveFilter,
    ArchivePage,
    ArchivePrefs,
    ArchiveRepo,
    UnknownArchiveId,
)
from parley.storage.db import StorageUnavailable
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import (
    NS_CLIENT,
    child,
    error_reply,
    from_stored,
    iq_result,
    local_name,
    make,
    namespace,
    q,
)
from parley.xmpp.xmlstream import serialize

if TYPE_CHECKING:
    from parley.server import Server

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_SID = "urn:xmpp:sid:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_DATA = "jabber:x:data"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_HINTS = "urn:xmpp:hints"

PURGE_INTERVAL = 3600.0
PREFS_CACHE_SIZE = 20000
# The form a client fills in (XEP-0313 section 4.1.1): var -> field type.
QUERY_FIELDS = {
    "with": "jid-single",
    "start": "text-single",
    "end": "text-single",
    "before-id": "text-single",
    "after-id": "text-single",
    "ids": "list-multi",
}


# A query refused with an error condition.
QueryError = Refusal


def archivable(stanza: Element) -> bool:
    """Whether a one-to-one message belongs in the archive (XEP-0313 section 5.1.1)."""
    if stanza.get("type", "normal") not in ("chat", "normal"):
        return False
    hints = {local_name(c.tag) for c in stanza if namespace(c.tag) == NS_HINTS}
    if hints & {"no-store", "no-permanent-store"}:
        return False
    return "store" in hints or stanza.find(q(NS_CLIENT, "body")) is not None


def stamp(ts: float) -> str:
    """XEP-0082 date and time in UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_stamp(value: str, var: str) -> float:
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise QueryError("bad-request", f"{var}: {value!r} is not an XEP-0082 date and time") from None
    if when.tzinfo is None:
        raise QueryError("bad-request", f"{var}: {value!r} has no time zone")
    return when.timestamp()


def new_stanza_id() -> str:
    # Unpredictable, so that knowing one id tells nothing about another (XEP-0359 section 4).
    return secrets.token_urlsafe(12)


class Mam(Module):
    name = "mam"
    account_features = (NS_MAM, NS_MAM_EXTENDED, NS_SID)

    def __init__(self, server: Server):
        super().__init__(server)
        self.archive = ArchiveRepo(server.db)
        self.enabled = self.config.archive.enabled
        if not self.enabled:
            self.account_features = ()
        self._prefs: OrderedDict[str, ArchivePrefs] = OrderedDict()
        self._purger: asyncio.Task[None] | None = None

    async def start(self) -> None:
        signals = self.server.signals
        # Forged ids are removed even with the archive off: clients trust ids by our users.
        signals.connect("message-delivering", self._delivering)
        signals.connect("message-undelivered", self._undelivered)
        signals.connect("user-deleted", self._forget)
        if not self.enabled:
            return
        self.hooks.add(f"iq-set/bare/{NS_MAM}", self._on_set)
        self.hooks.add(f"iq-get/bare/{NS_MAM}", self._on_get)
        self.server.durability.append(self.archive.flushed)
        if self.config.archive.retention_days > 0:
            self._purger = asyncio.get_running_loop().create_task(self._purge_forever())

    async def stop(self) -> None:
        await self.archive.flushed()
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None

    # --- retention ---------------------------------------------------------------------------

    async def purge(self) -> int:
        """Delete what is older than the retention period; returns how many messages went."""
        days = self.config.archive.retention_days
        if days <= 0:
            return 0
        removed = await self.archive.purge_before(time.time() - days * 86400)
        if removed:
            self.log.info("retention: removed %d archived messages older than %d days", removed, days)
        return removed

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge()
            except (sa.exc.SQLAlchemyError, OSError, StorageUnavailable):
                # The next round tries again; retention is not worth stopping the server for.
                self.log.exception("archive retention purge failed")
            await asyncio.sleep(PURGE_INTERVAL)

    async def _forget(self, bare: str) -> None:
        self._prefs.pop(bare, None)
        await self.archive.delete_owner(bare)

    # --- archiving -----------------------------------------------------------------------------

    async def _delivering(self, delivery: Delivery) -> None:
        ctx = delivery.ctx
        try:
            await self._archive(delivery)
        except (sa.exc.SQLAlchemyError, OSError, StorageUnavailable):
            self.log.exception("archiving a message from %s to %s failed", ctx.frm, ctx.to)
            # Delivered but not archived would break the promise that history is complete.
            delivery.refuse("internal-server-error", "the message archive is unavailable; try again")

    async def _archive(self, delivery: Delivery) -> None:
        ctx = delivery.ctx
        stanza = ctx.stanza
        recipient, sender = str(ctx.to.bare), str(ctx.frm.bare)
        # A client must not forge ids of its own archive; a service (a chat room) stamps
        # its own archive ids, which the recipient keeps.
        ours = {recipient, *self.server.hosts, *((sender,) if ctx.origin is not None else ())}
        archived: str | None = None
        for sid in stanza.findall(q(NS_SID, "stanza-id")):
            if sid.get("by") not in ours:
                continue
            if archived is None and await self._redelivered(delivery, sid):
                archived = sid.get("id")
                continue
            stanza.remove(sid)
        if archived is not None:
            # Already in the archive under this id: the copy keeps it and no second row is made.
            delivery.stanza_ids[recipient] = archived
            return
        if not self.enabled or not archivable(stanza):
            return
        sides: list[tuple[str, str]] = []
        if await self._wants(recipient, sender, ctx.frm):
            sides.append((recipient, sender))
        if ctx.origin is not None and sender != recipient and await self._wants(sender, recipient, ctx.to):
            sides.append((sender, recipient))
        if not sides:
            return
        xml = serialize(stanza).decode()
        now = time.time()
        entries = [ArchiveEntry(owner, new_stanza_id(), peer, now, xml) for owner, peer in sides]
        # Write-behind in group commits: acknowledgements wait for it (server.durability).
        await self.archive.append(entries, wait=self.config.archive.synchronous)
        delivery.notes[self.name] = [(e.owner, e.stanza_id) for e in entries]
        for e in entries:
            delivery.stanza_ids[e.owner] = e.stanza_id
        own = delivery.stanza_ids.get(recipient)
        if own is not None:
            stanza.append(make(NS_SID, "stanza-id", {"by": recipient, "id": own}))

    async def _redelivered(self, delivery: Delivery, sid: Element) -> bool:
        """Whether a stanza id by the recipient is genuine: the server itself sends the
        message again (stream management hands on what a lost session never acknowledged)
        and the archive has it, from that sender, under that id. A client's ids never are."""
        ctx = delivery.ctx
        recipient = str(ctx.to.bare)
        if ctx.origin is not None or not self.enabled or sid.get("by") != recipient or not sid.get("id"):
            return False
        return await self.archive.contains(recipient, sid.get("id", ""), str(ctx.frm.bare))

    async def _undelivered(self, delivery: Delivery) -> None:
        # Only the rows this delivery wrote: a message sent again keeps its first row.
        written: list[tuple[str, str]] = delivery.notes.get(self.name, [])
        if not written:
            return
        try:
            await self.archive.remove(written)
        except (sa.exc.SQLAlchemyError, OSError, StorageUnavailable):
            self.log.exception("could not remove an undelivered message from the archive")

    async def _wants(self, owner: str, peer_bare: str, peer: JID) -> bool:
        prefs = await self.prefs(owner)
        listed = {peer_bare, str(peer)}
        if listed & set(prefs.never):
            return False
        if listed & set(prefs.always):
            return True
        if prefs.default == "roster":
            item = (await self.server.modules["roster"].get(owner)).get(peer_bare)  # type: ignore[attr-defined]
            return item is not None and item.visible
        return prefs.default == "always"

    async def prefs(self, owner: str) -> ArchivePrefs:
        prefs = self._prefs.get(owner)
        if prefs is not None:
            self._prefs.move_to_end(owner)
            return prefs
        prefs = await self.archive.get_prefs(owner) or ArchivePrefs(self.config.archive.default_mode)
        self._prefs[owner] = prefs
        while len(self._prefs) > PREFS_CACHE_SIZE:
            self._prefs.popitem(last=False)
        return prefs

    # --- requests ---------------------------------------------------------------------------------

    def _owner(self, ctx: Routed) -> Session | None:
        """The requesting session, if the archive it addresses is its own."""
        if ctx.origin is not None and ctx.origin.bare == str(ctx.to):
            return ctx.origin
        self.router.bounce(ctx.stanza, "forbidden", "you may only use your own archive", ctx.origin)
        return None

    async def _on_get(self, ctx: Routed) -> bool:
        session = self._owner(ctx)
        if session is None:
            return True
        what = local_name(ctx.stanza[0].tag)
        if what == "query":
            session.send(iq_result(ctx.stanza, query_form()))
        elif what == "prefs":
            session.send(iq_result(ctx.stanza, _prefs_element(await self.prefs(session.bare))))
        elif what == "metadata":
            session.send(iq_result(ctx.stanza, await self._metadata(session.bare)))
        else:
            session.send(error_reply(ctx.stanza, "bad-request", f"nothing to get in <{what}/>"))
        return True

    async def _on_set(self, ctx: Routed) -> bool:
        session = self._owner(ctx)
        if session is None:
            return True
        what = local_name(ctx.stanza[0].tag)
        try:
            if what == "query":
                await self._query(ctx, session)
            elif what == "prefs":
                await self._set_prefs(ctx, session)
            else:
                raise QueryError("bad-request", f"nothing to set in <{what}/>")
        except QueryError as e:
            session.send(error_reply(ctx.stanza, e.condition, e.text))
        return True

    async def _metadata(self, owner: str) -> Element:
        meta = make(NS_MAM, "metadata")
        bounds = await self.archive.bounds(owner)
        if bounds is not None:
            for name, m in zip(("start", "end"), bounds, strict=True):
                child(meta, NS_MAM, name, {"id": m.stanza_id, "timestamp": stamp(m.ts)})
        return meta

    async def _set_prefs(self, ctx: Routed, session: Session) -> None:
        el = ctx.stanza[0]
        default = el.get("default")
        if default not in MODES:
            raise QueryError("bad-request", "default must be always, never or roster")
        lists: dict[str, tuple[str, ...]] = {}
        for name in ("always", "never"):
            jids: list[str] = []
            holder = el.find(q(NS_MAM, name))
            for j in holder.findall(q(NS_MAM, "jid")) if holder is not None else ():
                try:
                    jid = str(JID.parse((j.text or "").strip()))
                except InvalidJID as e:
                    raise QueryError("jid-malformed", f"{name}: {e}") from None
                if jid not in jids:
                    jids.append(jid)
            lists[name] = tuple(jids)
        prefs = ArchivePrefs(default, lists["always"], lists["never"])
        await self.archive.set_prefs(session.bare, prefs)
        self._prefs[session.bare] = prefs
        session.send(iq_result(ctx.stanza, _prefs_element(prefs)))

    async def _query(self, ctx: Routed, session: Session) -> None:
        el = ctx.stanza[0]
        flt = parse_filter(el.find(q(NS_DATA, "x")))
        limit, after, before, backwards = paging(el.find(q(NS_RSM, "set")), self.config.archive.max_page)
        try:
            page = await self.archive.query(session.bare, flt, limit=limit, after=after, before=before,
                                            backwards=backwards)
        except UnknownArchiveId as e:
            raise QueryError("item-not-found", f"there is no message {e.stanza_id!r} in the archive") from None
        for m in page_order(el, page):
            session.send(result_message(m, session.bare, str(session.jid), el.get("queryid")))
        session.send(iq_result(ctx.stanza, fin_element(page)))

def page_order(query: Element, page: ArchivePage) -> list[ArchivedMessage]:
    """The page's messages in the order the query asked for (XEP-0313 flip-page)."""
    return list(reversed(page.items)) if query.find(q(NS_MAM, "flip-page")) is not None else page.items


def result_message(m: ArchivedMessage, frm: str, to: str, queryid: str | None) -> Element:
    """One archived message as a query result, from the archive's owner to the asker."""
    attrs = {"id": m.stanza_id}
    if queryid is not None:
        attrs["queryid"] = queryid
    forwarded = make(NS_FORWARD, "forwarded", None, make(NS_DELAY, "delay", {"stamp": stamp(m.ts)}),
                     from_stored(m.stanza))
    return make(NS_CLIENT, "message", {"from": frm, "to": to, "id": new_stanza_id()},
                make(NS_MAM, "result", attrs, forwarded))


def fin_element(page: ArchivePage) -> Element:
    fin = make(NS_MAM, "fin", {"complete": "true" if page.complete else "false"})
    rset = child(fin, NS_RSM, "set")
    if page.items:
        child(rset, NS_RSM, "first").text = page.items[0].stanza_id
        child(rset, NS_RSM, "last").text = page.items[-1].stanza_id
    child(rset, NS_RSM, "count").text = str(page.count)
    return fin


def query_form() -> Element:
    query = make(NS_MAM, "query")
    form = child(query, NS_DATA, "x", {"type": "form"})
    ft = child(form, NS_DATA, "field", {"var": "FORM_TYPE", "type": "hidden"})
    child(ft, NS_DATA, "value").text = NS_MAM
    for var, type_ in QUERY_FIELDS.items():
        child(form, NS_DATA, "field", {"var": var, "type": type_})
    return query


def parse_filter(form: Element | None) -> ArchiveFilter:
    if form is None:
        return ArchiveFilter()
    if form.get("type", "submit") != "submit":
        raise QueryError("bad-request", "the query form must be of type submit")
    values: dict[str, list[str]] = {}
    for field in form.findall(q(NS_DATA, "field")):
        var = field.get("var", "")
        values[var] = [(v.text or "").strip() for v in field.findall(q(NS_DATA, "value"))]
    form_type = values.pop("FORM_TYPE", [NS_MAM])
    if form_type != [NS_MAM]:
        raise QueryError("bad-request", f"FORM_TYPE must be {NS_MAM}")
    unknown = sorted(set(values) - set(QUERY_FIELDS))
    if unknown:
        raise QueryError("bad-request", f"unknown field {unknown[0]!r}")

    def single(var: str) -> str | None:
        vals = [v for v in values.get(var, ()) if v]
        if len(vals) > 1:
            raise QueryError("bad-request", f"{var} takes one value")
        return vals[0] if vals else None

    peer = single("with")
    if peer is not None:
        try:
            # Rows keep the other party's bare JID only, so a full JID matches its whole account.
            peer = str(JID.parse(peer).bare)
        except InvalidJID as e:
            raise QueryError("bad-request", f"with: {e}") from None
    start, end = single("start"), single("end")
    ids = [v for v in values.get("ids", ()) if v] if "ids" in values else None
    return ArchiveFilter(
        peer=peer,
        start=parse_stamp(start, "start") if start is not None else None,
        end=parse_stamp(end, "end") if end is not None else None,
        after_id=single("after-id"),
        before_id=single("before-id"),
        ids=tuple(ids) if ids is not None else None,
    )


def paging(rset: Element | None, cap: int) -> tuple[int, str | None, str | None, bool]:
    """(page size, after, before, backwards) from an RSM request."""
    if rset is None:
        return cap, None, None, False
    limit = cap
    max_el = rset.find(q(NS_RSM, "max"))
    if max_el is not None:
        try:
            limit = int((max_el.text or "").strip())
        except ValueError:
            raise QueryError("bad-request", "max must be a number") from None
        if limit < 0:
            raise QueryError("bad-request", "max cannot be negative")
        # Asking for more than the server gives is not an error: the page is capped.
        limit = min(limit, cap)
    if rset.find(q(NS_RSM, "index")) is not None:
        raise QueryError("feature-not-implemented", "paging by index is not supported; use after or before")
    after_el, before_el = rset.find(q(NS_RSM, "after")), rset.find(q(NS_RSM, "before"))
    after = ((after_el.text or "").strip() or None) if after_el is not None else None
    if after_el is not None and after is None:
        raise QueryError("bad-request", "after needs an id")
    # An empty <before/> asks for the last page: backwards from the end, no bound.
    before = ((before_el.text or "").strip() or None) if before_el is not None else None
    return limit, after, before, before_el is not None


def _prefs_element(prefs: ArchivePrefs) -> Element:
    el = make(NS_MAM, "prefs", {"default": prefs.default})
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        holder = child(el, NS_MAM, name)
        for j in jids:
            child(holder, NS_MAM, "jid").text = j
    return el


module_class = Mam
