"""The chat service (XEP-0045 multi-user chat) with the seed's room rules.

The service answers on each chat alias (``conference.<domain>`` and the node's system alias
``conference-<node>-<cluster>.<domain>`` by default). Those domains are never hosted IM
domains, so everything addressed to them reaches the router's ``route/remote`` event, which
this module takes, as external components do. Everything the rooms send goes through the
router, so the recipients' privacy lists and policies still apply.

Rooms are made on first join (an instant room: open at once with the service defaults,
its creator the owner). An ad-hoc room lives in memory and is gone, history and all, when
its last occupant leaves. An owner may make it persistent (the configuration form): it is
then written to the chat database with its settings, affiliations and subject, its
messages go to the archive under the room's JID (history after a restart, MAM on the
room), and it survives restarts.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

import sqlalchemy as sa

from parley.module import Module, Refusal
from parley.modules.mam import (
    fin_element,
    new_stanza_id,
    page_order,
    paging,
    parse_filter,
    query_form,
    result_message,
)
from parley.modules.muc import configform
from parley.modules.muc.room import (
    AFFILIATIONS,
    ROLES,
    Occupant,
    Room,
    RoomSettings,
    aff_rank,
    role_rank,
)
from parley.modules.muc.store import RoomStore
from parley.modules.offline import utc_stamp
from parley.router import Routed
from parley.storage.archive import ArchiveEntry, ArchiveFilter, UnknownArchiveId
from parley.storage.db import Database, StorageUnavailable
from parley.storage.muc import StoredRoom
from parley.xmpp.caps import Identity
from parley.xmpp.dataforms import Field, build_form, parse_form
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import (
    NS_CLIENT,
    child,
    error_reply,
    from_stored,
    local_name,
    make,
    namespace,
    q,
)
from parley.xmpp.xmlstream import FanOut, serialize

if TYPE_CHECKING:
    from parley.server import Server
    from parley.sessions import Session

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ADMIN = f"{NS_MUC}#admin"
NS_OWNER = f"{NS_MUC}#owner"
NS_REQUEST = f"{NS_MUC}#request"
NS_REGISTER_FORM = f"{NS_MUC}#register"
NS_ROOMINFO = f"{NS_MUC}#roominfo"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DELAY = "urn:xmpp:delay"
NS_DATA = "jabber:x:data"
NS_XHTML_IM = "http://jabber.org/protocol/xhtml-im"
NS_REGISTER = "jabber:iq:register"
NS_SEARCH = "jabber:iq:search"
NS_PING = "urn:xmpp:ping"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_SID = "urn:xmpp:sid:0"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
# A join carrying <hidden/> in its MUC element asks to be a hidden occupant.
NS_HIDDEN = "urn:parley:muc:hidden:0"

STARTUP_TIMEOUT = 15.0
# How often idle persistent rooms are looked for (when [muc] room_idle_timeout is set).
IDLE_SWEEP_PERIOD = 60.0
SEARCH_FIELDS = ("name", "description", "subject")

log = logging.getLogger("parley.muc")


def _database_url(url: str) -> str:
    """[muc] database in the form [storage] url takes; the async driver names are accepted too."""
    for prefix, plain in (("postgresql+asyncpg://", "postgresql://"), ("sqlite+aiosqlite:///", "sqlite:///")):
        if url.startswith(prefix):
            return plain + url[len(prefix):]
    return url


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__


class MucModule(Module):
    name = "muc"

    def __init__(self, server: Server):
        super().__init__(server)
        self.cfg = server.config.muc
        self.services: list[str] = self.cfg.aliases(server.config.server)
        self.rooms: dict[str, Room] = {}
        # full JID -> rooms it is in, so that a session going offline leaves them at once
        self.joined: dict[JID, set[str]] = defaultdict(set)
        # Why the chat service did not start (its database was unreachable), if it did not.
        self.broken: str | None = None
        self.store: RoomStore | None = None
        self._own_db: Database | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self.cfg.enabled and self.config.im.enabled

    def archived(self, room: Room) -> bool:
        return room.persistent and self.store is not None and self.cfg.archive_messages

    def is_service_admin(self, jid: JID) -> bool:
        return str(jid.bare) in self.cfg.admins

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for alias in self.services:
            if alias in self.server.hosts:
                raise ValueError(f"muc.service: {alias} is a hosted IM domain, it cannot be a chat alias")
        # Taken even when group chat is off, so that clients get a clear refusal; ahead of
        # external components, so that a chat alias is served here even when a component
        # of the parent domain is configured.
        self.hooks.add("route/remote", self._route, priority=6)
        self.server.signals.connect("session-closed", self._gone)
        self.server.signals.connect("presence-unavailable", self._gone)
        if not self.available:
            return
        if self.cfg.persistent:
            await self._open_store()
        disco = self.server.modules.get("disco")
        if disco is not None and self.broken is None:
            for alias in self.services:
                disco.add_item(alias, "Chat service")  # type: ignore[attr-defined]
        if self.cfg.room_idle_timeout and self.broken is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._close_idle_rooms())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.store is not None and self.store.available:
            try:
                await asyncio.wait_for(self.store.flushed(), 10)
            except TimeoutError:
                log.warning("chat database writes still queued at shutdown were not made")
        if self._own_db is not None:
            await self._own_db.close()

    async def _open_store(self) -> None:
        """Load the persistent rooms; a database that cannot be reached keeps the whole
        chat service of this node from starting (the seed's rule), and says why."""
        try:
            if self.cfg.database:
                self._own_db = Database(_database_url(self.cfg.database))
                await asyncio.wait_for(self._own_db.migrate(), STARTUP_TIMEOUT)
            db = self._own_db or self.server.db
            store = RoomStore(db, self._snapshot, self.cfg.database_retry)
            stored = await asyncio.wait_for(store.rooms.load(), STARTUP_TIMEOUT)
            for s in stored:
                room = self._restore(s)
                self.rooms[room.jid] = room
                if self.cfg.archive_messages:
                    await asyncio.wait_for(self._load_history(store, room), STARTUP_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - any failure to reach the database stops the service
            self.rooms.clear()
            self.broken = f"the chat service could not reach its database at start ({_brief(e)})"
            log.error("chat service not started: %s", self.broken)
            return
        self.store = store
        unaddressable = sorted(r.jid for r in self.rooms.values() if JID.parse(r.jid).domain not in self.services)
        if unaddressable:
            log.warning("persistent rooms under aliases this node no longer serves: %s", ", ".join(unaddressable))

    def _restore(self, s: StoredRoom) -> Room:
        settings = RoomSettings.restore(self.cfg, s.config)
        settings.persistent = True
        room = Room(s.jid, settings, subject=s.subject, subject_by=s.subject_by)
        for jid, (aff, nick) in s.affiliations.items():
            if aff != "none":
                room.affiliations[jid] = aff
            if nick:
                room.nicks[jid] = nick
        return room

    async def _load_history(self, store: RoomStore, room: Room) -> None:
        """The room's last messages from its archive (join and leave events skipped)."""
        before: str | None = None
        for _ in range(20):
            page = await store.archive.query(room.jid, ArchiveFilter(), limit=200, before=before, backwards=True)
            for m in reversed(page.items):
                el = from_stored(m.stanza)
                if local_name(el.tag) == "message":
                    room.history.appendleft((m.ts, el))
            if len(room.history) >= self.cfg.max_history or page.complete or not page.items:
                break
            before = page.items[0].stanza_id
        while len(room.history) > self.cfg.max_history:
            room.history.popleft()

    def _snapshot(self, jid: str) -> StoredRoom | None:
        room = self.rooms.get(jid)
        if room is None or not room.persistent or room.destroyed:
            return None
        affs: dict[str, tuple[str, str | None]] = {j: (a, room.nicks.get(j)) for j, a in room.affiliations.items()}
        for j, nick in room.nicks.items():
            affs.setdefault(j, ("none", nick))
        return StoredRoom(room.jid, room.settings.dump(), room.subject, room.subject_by, affs)

    def _persist(self, room: Room) -> None:
        if room.persistent and self.store is not None:
            self.store.save(room.jid)

    async def _close_idle_rooms(self) -> None:
        timeout = self.cfg.room_idle_timeout * 60
        while True:
            await asyncio.sleep(min(IDLE_SWEEP_PERIOD, timeout / 2))
            now = time.time()
            for room in list(self.rooms.values()):
                if room.persistent and room.by_full and now - room.last_active >= timeout:
                    log.info("closing %s after %d minutes without activity", room.jid, self.cfg.room_idle_timeout)
                    for occ in room.everyone():
                        await self._leave(room, occ, None, (), reason="the room was closed for inactivity")
                    room.history.clear()

    # --- sending -------------------------------------------------------------------------------

    async def _send(self, stanza: Element) -> None:
        await self.router.route(stanza)

    async def _error(self, ctx: Routed, condition: str, text: str | None = None) -> bool:
        """An error back to the sender, presence included (the router drops presence errors
        it makes itself, but a refused join must be told)."""
        if ctx.type == "error":
            return True
        reply = error_reply(ctx.stanza, condition, text)
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self._send(reply)
        return True

    def _role_of(self, room: Room, aff: str) -> str:
        if aff in ("owner", "admin"):
            return "moderator"
        if room.settings.moderated and aff == "none":
            return "visitor"
        return "participant"

    def affiliation(self, room: Room, jid: JID | str) -> str:
        bare = str(jid.bare) if isinstance(jid, JID) else jid
        if bare in self.cfg.admins:
            return "owner"
        return room.affiliations.get(bare, "none")

    def _item(self, room: Room, occ: Occupant, viewer: Occupant | None, **extra: str) -> Element:
        attrs = {"affiliation": self.affiliation(room, occ.jid), "role": occ.role}
        # Semi-anonymous rooms show real JIDs to moderators only.
        if not room.settings.anonymous or (viewer is not None and viewer.role == "moderator"):
            attrs["jid"] = str(occ.jid)
        attrs.update({k: v for k, v in extra.items() if k not in ("reason", "actor")})
        item = make(NS_USER, "item", attrs)
        if extra.get("actor"):
            child(item, NS_USER, "actor", {"nick": extra["actor"]})
        if extra.get("reason"):
            child(item, NS_USER, "reason").text = extra["reason"]
        return item

    def _presence_of(self, room: Room, occ: Occupant, to: Occupant, codes: tuple[int, ...] = (),
                     unavailable: bool = False, destroy: Element | None = None, **extra: str) -> Element:
        if unavailable:
            p = Element(q(NS_CLIENT, "presence"), {"type": "unavailable"})
            for c in occ.presence:
                if local_name(c.tag) == "status":
                    p.append(copy.deepcopy(c))
        else:
            p = copy.deepcopy(occ.presence)
        p.set("from", f"{room.jid}/{occ.nick}")
        p.set("to", str(to.jid))
        x = child(p, NS_USER, "x")
        x.append(self._item(room, occ, to, **extra))
        if destroy is not None:
            x.append(destroy)
        all_codes = list(codes)
        if to is occ:
            all_codes.append(110)
            if not room.settings.anonymous and not unavailable:
                all_codes.append(100)
            if self.archived(room) and not unavailable:
                all_codes.append(170)
        for code in sorted(set(all_codes)):
            child(x, NS_USER, "status", {"code": str(code)})
        child(p, NS_OCCUPANT_ID, "occupant-id", {"id": room.occupant_id(occ.jid)})
        return p

    async def _broadcast_presence(self, room: Room, occ: Occupant, codes: tuple[int, ...] = (),
                                  unavailable: bool = False, **extra: str) -> None:
        """The occupant's presence to everyone in the room, itself last. A hidden occupant's
        presence goes to itself only."""
        if not occ.hidden:
            for other in room.everyone():
                if other is not occ:
                    await self._send(self._presence_of(room, occ, other, codes, unavailable, **extra))
        await self._send(self._presence_of(room, occ, occ, codes, unavailable, **extra))

    def _archive(self, room: Room, stanza: Element, sender: JID, sid: str | None = None) -> str | None:
        if not self.archived(room) or self.store is None:
            return None
        sid = sid or new_stanza_id()
        self.store.archive_entry(ArchiveEntry(room.jid, sid, str(sender.bare), time.time(), serialize(stanza).decode()))
        return sid

    # --- routing -------------------------------------------------------------------------------

    async def _route(self, ctx: Routed) -> bool:
        if ctx.to.domain not in self.services:
            return False
        if not self.available:
            return await self._error(ctx, "service-unavailable", "group chat is disabled")
        if self.broken is not None:
            return await self._error(ctx, "service-unavailable", self.broken)
        try:
            if ctx.kind == "iq":
                await self._iq(ctx)
            elif ctx.kind == "presence":
                await self._presence(ctx)
            elif ctx.kind == "message":
                await self._message(ctx)
        except Refusal as r:
            await self._error(ctx, r.condition, r.text)
        return True

    def _room(self, ctx: Routed) -> Room | None:
        return self.rooms.get(str(ctx.to.bare)) if ctx.to.local is not None else None

    # --- presence ------------------------------------------------------------------------------

    async def _presence(self, ctx: Routed) -> None:
        room = self._room(ctx)
        occ = room.by_jid(ctx.frm) if room else None
        if ctx.type in ("error", "unavailable"):
            # An error means the occupant cannot be reached: it leaves, as XEP-0045 asks.
            if room is not None and occ is not None:
                await self._leave(room, occ, ctx.stanza)
            return
        if ctx.to.local is None or ctx.type != "available":
            return  # subscriptions and probes have no meaning for a room
        nick = ctx.to.resource
        if not nick or not nick.strip():
            raise Refusal("jid-malformed", "a nickname is required to join a room")
        if room is not None and occ is not None:
            if occ.hidden or nick == occ.nick:
                occ.presence = _clean(ctx.stanza)
                await self._broadcast_presence(room, occ)
            else:
                await self._change_nick(room, occ, nick, ctx.stanza)
            return
        await self._join(ctx, room, nick)

    async def _join(self, ctx: Routed, room: Room | None, nick: str) -> None:
        x = ctx.stanza.find(q(NS_MUC, "x"))
        created = room is None
        if room is None:
            if len(self.rooms) >= self.cfg.max_rooms:
                raise Refusal("resource-constraint", "the chat service has reached its room limit")
            room = Room(str(ctx.to.bare), RoomSettings.defaults(self.cfg))
            room.affiliations[str(ctx.frm.bare)] = "owner"
        s = room.settings
        if x is None and not s.backwards_compatible:
            raise Refusal("not-acceptable", "join with the multi-user chat protocol (XEP-0045): this room "
                                            "does not admit groupchat 1.0 clients")
        bare = str(ctx.frm.bare)
        aff = self.affiliation(room, ctx.frm)
        hidden = x is not None and x.find(q(NS_HIDDEN, "hidden")) is not None
        if aff == "outcast":
            raise Refusal("forbidden", "you are banned from this room")
        if s.password and not self.is_service_admin(ctx.frm):
            given = x.findtext(q(NS_MUC, "password")) if x is not None else None
            if given != s.password:
                raise Refusal("not-authorized", "this room needs a password" if given is None
                              else "that is not the room's password")
        if s.members_only and aff == "none":
            raise Refusal("registration-required", "this room is for members only")
        if hidden:
            if not (self.is_service_admin(ctx.frm) or aff in ("owner", "admin")):
                raise Refusal("forbidden", "only chat administrators and the room's owners and admins may join hidden")
            if len(room.hidden) >= self.cfg.max_hidden:
                raise Refusal("service-unavailable", "the room has its maximum of hidden occupants")
        else:
            if nick in room.occupants:
                raise Refusal("conflict", "that nickname is in use in this room")
            holder = room.nick_owner(nick)
            if holder is not None and holder != bare:
                raise Refusal("conflict", "that nickname is reserved by another user of this room")
        if room.count() >= min(s.max_occupants, self.cfg.max_occupants):
            raise Refusal("service-unavailable", "the room is full")
        if created:
            self.rooms[room.jid] = room
        occ = Occupant(nick, ctx.frm, self._role_of(room, aff), _clean(ctx.stanza), hidden)
        for other in list(room.occupants.values()):
            await self._send(self._presence_of(room, other, occ))
        if s.show_offline_members:
            await self._absent_members(room, occ)
        room.add(occ)
        self.joined[occ.jid].add(room.jid)
        room.last_active = time.time()
        await self._broadcast_presence(room, occ, (201,) if created else ())
        if self.cfg.archive_joins and not hidden:
            self._archive(room, self._presence_of(room, occ, occ), ctx.frm)
        await self._history(room, occ, x)
        subject = Element(q(NS_CLIENT, "message"), {"type": "groupchat", "to": str(occ.jid), "id": new_stanza_id(),
                                                   "from": f"{room.jid}/{room.subject_by}"
                                                   if room.subject_by else room.jid})
        child(subject, NS_CLIENT, "subject").text = room.subject
        await self._send(subject)

    async def _absent_members(self, room: Room, to: Occupant) -> None:
        """Members and admins who are not in the room, shown as unavailable occupants."""
        present = {str(o.jid.bare) for o in room.by_full.values()}
        for bare, aff in sorted(room.affiliations.items()):
            if aff in ("member", "admin", "owner") and bare not in present:
                nick = room.nicks.get(bare) or JID.parse(bare).local or bare
                p = Element(q(NS_CLIENT, "presence"), {"type": "unavailable", "from": f"{room.jid}/{nick}",
                                                       "to": str(to.jid)})
                attrs = {"affiliation": aff, "role": "none"}
                if not room.settings.anonymous or to.role == "moderator":
                    attrs["jid"] = bare
                child(child(p, NS_USER, "x"), NS_USER, "item", attrs)
                await self._send(p)

    async def _history(self, room: Room, occ: Occupant, x: Element | None) -> None:
        limit = min(room.settings.history_on_join, self.cfg.max_history)
        since = 0.0
        maxchars: int | None = None
        h = x.find(q(NS_MUC, "history")) if x is not None else None
        if h is not None:
            if h.get("maxstanzas", "").isdigit():
                limit = min(int(h.get("maxstanzas", "0")), self.cfg.max_history)
            if h.get("maxchars", "").isdigit():
                maxchars = int(h.get("maxchars", "0"))
            if h.get("seconds", "").isdigit():
                since = time.time() - int(h.get("seconds", "0"))
            if h.get("since"):
                try:
                    at = datetime.fromisoformat(h.get("since", "").replace("Z", "+00:00"))
                    # XEP-0082 stamps are UTC when they carry no offset.
                    since = max(since, (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())
                except ValueError:
                    pass
        wanted = [(ts, m) for ts, m in room.history if ts >= since][-limit:] if limit else []
        if maxchars is not None:
            # Counted over the serialised stanzas, newest first (XEP-0045 section 7.2.15).
            kept: list[tuple[float, Element]] = []
            used = 0
            for ts, m in reversed(wanted):
                used += len(serialize(m))
                if used > maxchars:
                    break
                kept.append((ts, m))
            wanted = list(reversed(kept))
        for ts, m in wanted:
            out = copy.deepcopy(m)
            out.set("to", str(occ.jid))
            child(out, NS_DELAY, "delay", {"from": room.jid, "stamp": utc_stamp(ts)})
            await self._send(out)

    async def _change_nick(self, room: Room, occ: Occupant, nick: str, stanza: Element) -> None:
        if nick in room.occupants:
            raise Refusal("conflict", "that nickname is in use in this room")
        holder = room.nick_owner(nick)
        if holder is not None and holder != str(occ.jid.bare):
            raise Refusal("conflict", "that nickname is reserved by another user of this room")
        await self._broadcast_presence(room, occ, (303,), unavailable=True, nick=nick)
        room.remove(occ)
        occ.nick = nick
        occ.presence = _clean(stanza)
        room.add(occ)
        await self._broadcast_presence(room, occ)

    async def _leave(self, room: Room, occ: Occupant, stanza: Element | None = None,
                     codes: tuple[int, ...] = (), **extra: str) -> None:
        if stanza is not None:
            status = stanza.find(q(NS_CLIENT, "status"))
            occ.presence = Element(q(NS_CLIENT, "presence"))
            if status is not None:
                occ.presence.append(copy.deepcopy(status))
        occ.role = "none"
        await self._broadcast_presence(room, occ, codes, unavailable=True, **extra)
        self._forget(room, occ)
        if self.cfg.archive_joins and not occ.hidden:
            self._archive(room, self._presence_of(room, occ, occ, unavailable=True), occ.jid)

    def _forget(self, room: Room, occ: Occupant) -> None:
        room.remove(occ)
        rooms = self.joined.get(occ.jid)
        if rooms is not None:
            rooms.discard(room.jid)
            if not rooms:
                del self.joined[occ.jid]
        room.last_active = time.time()
        if not room.by_full and not room.persistent:
            self.rooms.pop(room.jid, None)

    async def _gone(self, session: Session) -> None:
        """A session that went offline (or unavailable) leaves every room it was in."""
        for jid in list(self.joined.get(session.jid, ())):
            room = self.rooms.get(jid)
            occ = room.by_jid(session.jid) if room is not None else None
            if room is not None and occ is not None:
                await self._leave(room, occ)

    # --- messages ------------------------------------------------------------------------------

    async def _message(self, ctx: Routed) -> None:
        if ctx.type == "error":
            return
        room = self._room(ctx)
        if ctx.to.local is None:
            raise Refusal("service-unavailable", "the chat service takes no messages")
        if room is None:
            raise Refusal("item-not-found", "there is no such room")
        occ = room.by_jid(ctx.frm)
        if ctx.to.resource is not None:
            await self._private(ctx, room, occ, ctx.to.resource)
            return
        if ctx.type != "groupchat":
            x = ctx.stanza.find(q(NS_USER, "x"))
            form = ctx.stanza.find(q(NS_DATA, "x"))
            if x is not None and (x.find(q(NS_USER, "invite")) is not None or x.find(q(NS_USER, "decline")) is not None):
                await self._invitations(ctx, room, occ, x)
            elif form is not None and _form_type(form) == NS_REQUEST:
                await self._voice(ctx, room, occ, form)
            else:
                raise Refusal("bad-request", "messages to a room are of type groupchat")
            return
        if occ is None:
            raise Refusal("not-acceptable", "only occupants may send messages to the room")
        if occ.hidden:
            raise Refusal("forbidden", "hidden occupants cannot send messages to the room")
        body = ctx.stanza.find(q(NS_CLIENT, "body"))
        subject = ctx.stanza.find(q(NS_CLIENT, "subject"))
        if subject is not None and body is None:
            if role_rank(occ.role) < role_rank(room.settings.subject_role):
                raise Refusal("forbidden", f"only a {room.settings.subject_role} may change the subject")
            room.subject, room.subject_by = subject.text or "", occ.nick
            self._persist(room)
        elif occ.role == "visitor":
            raise Refusal("forbidden", "visitors have no voice in this room")
        out = self._from_room(ctx.stanza, room, f"{room.jid}/{occ.nick}")
        child(out, NS_OCCUPANT_ID, "occupant-id", {"id": room.occupant_id(occ.jid)})
        now = time.time()
        if body is not None:
            sid = new_stanza_id() if self.archived(room) else None
            if sid is not None:
                child(out, NS_SID, "stanza-id", {"by": room.jid, "id": sid})
                self._archive(room, out, occ.jid, sid)
            room.history.append((now, out))
            while len(room.history) > self.cfg.max_history:
                room.history.popleft()
        room.last_active = now
        copies = FanOut(out)
        for other in room.everyone():
            await self._send(copies.copy_to(str(other.jid)))

    def _from_room(self, stanza: Element, room: Room, frm: str) -> Element:
        out = Element(stanza.tag, {k: v for k, v in stanza.attrib.items() if k not in ("from", "to")})
        out.set("from", frm)
        for c in stanza:
            ns = namespace(c.tag)
            if room.settings.strip_xhtml and ns == NS_XHTML_IM:
                continue
            # Ids only the room may give: a sender's own would be forged.
            if ns == NS_OCCUPANT_ID or (ns == NS_SID and local_name(c.tag) == "stanza-id" and c.get("by") == room.jid):
                continue
            out.append(copy.deepcopy(c))
        return out

    async def _private(self, ctx: Routed, room: Room, occ: Occupant | None, nick: str) -> None:
        if occ is None:
            raise Refusal("not-acceptable", "only occupants may send private messages")
        if occ.hidden:
            raise Refusal("forbidden", "hidden occupants cannot send messages in the room")
        if ctx.type == "groupchat":
            raise Refusal("bad-request", "a private message cannot be of type groupchat")
        if role_rank(occ.role) < role_rank(room.settings.private_message_role):
            raise Refusal("forbidden", f"only a {room.settings.private_message_role} may send private messages")
        target = room.occupants.get(nick)
        if target is None:
            raise Refusal("item-not-found", f"nobody is called {nick!r} in this room")
        out = self._from_room(ctx.stanza, room, f"{room.jid}/{occ.nick}")
        out.set("to", str(target.jid))
        if out.find(q(NS_USER, "x")) is None:
            child(out, NS_USER, "x")
        child(out, NS_OCCUPANT_ID, "occupant-id", {"id": room.occupant_id(occ.jid)})
        await self._send(out)

    async def _invitations(self, ctx: Routed, room: Room, occ: Occupant | None, x: Element) -> None:
        """Mediated invitations and declines (XEP-0045 sections 7.8.2 and 7.8.3)."""
        s = room.settings
        invites = x.findall(q(NS_USER, "invite"))
        if invites:
            if occ is None:
                raise Refusal("not-acceptable", "only occupants may invite others to the room")
            if occ.hidden:
                raise Refusal("forbidden", "hidden occupants cannot invite")
            if role_rank(occ.role) < role_rank(s.invite_role):
                raise Refusal("forbidden", f"only a {s.invite_role} or above may invite to this room")
            if s.members_only and s.moderator_invites and occ.role != "moderator":
                raise Refusal("forbidden", "only moderators may invite people to this members-only room")
            targets: list[tuple[JID, Element]] = []
            for inv in invites:
                try:
                    targets.append((JID.parse(inv.get("to", "")), inv))
                except InvalidJID:
                    raise Refusal("jid-malformed", "an invitation is sent to an address") from None
            for to, inv in targets:
                if s.members_only and self.affiliation(room, to) == "none":
                    # XEP-0045 7.8.2: inviting to a members-only room makes the invitee a member.
                    room.affiliations[str(to.bare)] = "member"
                    self._persist(room)
                m = make(NS_CLIENT, "message", {"from": room.jid, "to": str(to), "id": new_stanza_id()})
                ux = child(m, NS_USER, "x")
                sent = child(ux, NS_USER, "invite", {"from": str(ctx.frm)})
                reason = inv.findtext(q(NS_USER, "reason"))
                if reason:
                    child(sent, NS_USER, "reason").text = reason
                if s.password:
                    child(ux, NS_USER, "password").text = s.password
                child(m, NS_CLIENT, "body").text = (f"{ctx.frm.bare} invites you to the room {room.jid}"
                                                    + (f": {reason}" if reason else ""))
                await self._send(m)
        for dec in x.findall(q(NS_USER, "decline")):
            try:
                to = JID.parse(dec.get("to", ""))
            except InvalidJID:
                raise Refusal("jid-malformed", "a decline is sent to an address") from None
            m = make(NS_CLIENT, "message", {"from": room.jid, "to": str(to), "id": new_stanza_id()})
            sent = child(child(m, NS_USER, "x"), NS_USER, "decline", {"from": str(ctx.frm.bare)})
            reason = dec.findtext(q(NS_USER, "reason"))
            if reason:
                child(sent, NS_USER, "reason").text = reason
            await self._send(m)

    async def _voice(self, ctx: Routed, room: Room, occ: Occupant | None, form: Element) -> None:
        """Voice requests (XEP-0045 section 8.6): a visitor asks, the moderators answer."""
        values = parse_form(form)
        if occ is None:
            raise Refusal("not-acceptable", "only occupants may ask for voice")
        if "muc#request_allow" in values and form.get("type") == "submit" and occ.role == "moderator":
            allow = (values["muc#request_allow"][:1] or [""])[0].strip().lower() in ("1", "true")
            target = room.occupants.get((values.get("muc#roomnick") or [""])[0])
            if allow and target is not None and target.role == "visitor":
                target.role = "participant"
                await self._broadcast_presence(room, target, (), actor=occ.nick)
            return
        if "muc#request_allow" in values and form.get("type") == "submit":
            raise Refusal("forbidden", "only moderators may grant voice")
        if (values.get("muc#role") or [""])[0] != "participant":
            raise Refusal("bad-request", "a voice request asks for the participant role")
        if occ.role != "visitor":
            return  # already has voice
        for mod in [o for o in room.occupants.values() if o.role == "moderator"]:
            m = make(NS_CLIENT, "message", {"from": room.jid, "to": str(mod.jid), "id": new_stanza_id()})
            m.append(build_form("form", [
                Field("muc#role", "list-single", "Requested role", ("participant",), options=("participant",)),
                Field("muc#jid", "jid-single", "User ID", (str(occ.jid),)),
                Field("muc#roomnick", "text-single", "Room nickname", (occ.nick,)),
                Field("muc#request_allow", "boolean", "Grant voice to this person?", ("false",)),
            ], form_type=NS_REQUEST, title="Voice request"))
            await self._send(m)

    # --- iq ------------------------------------------------------------------------------------

    async def _iq(self, ctx: Routed) -> None:
        if ctx.type not in ("get", "set"):
            return
        payload = ctx.stanza[0] if len(ctx.stanza) == 1 else None
        if payload is None:
            raise Refusal("bad-request", "an iq get or set carries exactly one payload")
        ns, get = namespace(payload.tag), ctx.type == "get"
        if ctx.to.local is None:
            await self._service_iq(ctx, payload, ns, get)
            return
        room = self._room(ctx)
        if room is None:
            raise Refusal("item-not-found", "there is no such room")
        if ctx.to.resource is not None:
            await self._occupant_iq(ctx, room, ns)
            return
        node = payload.get("node")
        if get and ns == NS_INFO and not node:
            await self.reply(ctx, self._room_info(room))
        elif get and ns == NS_INFO and node == "x-roomuser-item":
            query = make(NS_INFO, "query", {"node": node})
            nick = room.nicks.get(str(ctx.frm.bare))
            if nick:
                child(query, NS_INFO, "identity", {"category": "conference", "type": "text", "name": nick})
            await self.reply(ctx, query)
        elif get and ns == NS_ITEMS and not node:
            await self.reply(ctx, make(NS_ITEMS, "query"))
        elif ns == NS_ADMIN:
            await (self._admin_get(ctx, room, payload) if get else self._admin_set(ctx, room, payload))
        elif ns == NS_OWNER:
            await (self._owner_get(ctx, room) if get else self._owner_set(ctx, room, payload))
        elif ns == NS_REGISTER:
            await (self._register_get(ctx, room) if get else self._register_set(ctx, room, payload))
        elif ns == NS_MAM:
            await self._mam(ctx, room, payload, get)
        else:
            raise Refusal("service-unavailable", "the room does not answer that query")

    async def _service_iq(self, ctx: Routed, payload: Element, ns: str, get: bool) -> None:
        if get and ns == NS_INFO and not payload.get("node"):
            await self.reply(ctx, _info(Identity("conference", "text", "", "Chat service"),
                                        (NS_INFO, NS_ITEMS, NS_MUC, NS_SEARCH)))
        elif get and ns == NS_ITEMS and not payload.get("node"):
            items = make(NS_ITEMS, "query")
            for r in sorted(self.rooms.values(), key=lambda r: r.jid):
                if r.settings.public and JID.parse(r.jid).domain == ctx.to.domain:
                    child(items, NS_ITEMS, "item", {"jid": r.jid, "name": _room_name(r)})
            await self.reply(ctx, items)
        elif ns == NS_SEARCH:
            await (self.reply(ctx, _search_form()) if get else self._search(ctx, payload))
        else:
            raise Refusal("service-unavailable", "the chat service does not answer that query")

    async def _occupant_iq(self, ctx: Routed, room: Room, ns: str) -> None:
        me = room.by_jid(ctx.frm)
        if me is None:
            raise Refusal("not-acceptable", "you are not an occupant of this room")
        if ns == NS_PING and (ctx.to.resource == me.nick or me.hidden):
            # XEP-0410: a client checks that it is still in the room.
            await self.reply(ctx)
            return
        raise Refusal("service-unavailable", "queries to occupants are not relayed")

    def _room_info(self, room: Room) -> Element:
        query = _info(Identity("conference", "text", "", _room_name(room)), room.features(self.archived(room)))
        query.append(build_form("result", [
            Field("muc#roominfo_description", label="Description", values=(room.settings.description,)),
            Field("muc#roominfo_subject", label="Subject", values=(room.subject,)),
            Field("muc#roominfo_occupants", label="Number of occupants", values=(str(len(room.occupants)),)),
            Field("muc#roomconfig_roomname", label="Name", values=(_room_name(room),)),
            Field("muc#maxhistoryfetch", label="Most messages of history", values=(str(self.cfg.max_history),)),
        ], form_type=NS_ROOMINFO))
        return query

    # --- search --------------------------------------------------------------------------------

    async def _search(self, ctx: Routed, payload: Element) -> None:
        form = payload.find(q(NS_DATA, "x"))
        values = parse_form(form) if form is not None and form.get("type", "submit") == "submit" else {}
        terms = {k: " ".join(values.get(k, [])).strip().casefold() for k in SEARCH_FIELDS}
        terms = {k: v for k, v in terms.items() if v}
        if not terms:
            raise Refusal("bad-request", "fill in at least one of name, description and subject")
        found = [r for r in sorted(self.rooms.values(), key=lambda r: r.jid)
                 if r.settings.public and JID.parse(r.jid).domain == ctx.to.domain
                 and all(v in _searchable(r)[k].casefold() for k, v in terms.items())]
        x = make(NS_DATA, "x", {"type": "result"})
        ft = child(x, NS_DATA, "field", {"var": "FORM_TYPE", "type": "hidden"})
        child(ft, NS_DATA, "value").text = NS_SEARCH
        reported = child(x, NS_DATA, "reported")
        columns = (("jid", "Room", "jid-single"), ("name", "Name", "text-single"),
                   ("description", "Description", "text-single"), ("subject", "Subject", "text-single"),
                   ("occupants", "Occupants", "text-single"))
        for var, label, type_ in columns:
            child(reported, NS_DATA, "field", {"var": var, "label": label, "type": type_})
        for r in found:
            item = child(x, NS_DATA, "item")
            row = {"jid": r.jid, **_searchable(r), "occupants": str(len(r.occupants))}
            for var, _label, _type in columns:
                child(child(item, NS_DATA, "field", {"var": var}), NS_DATA, "value").text = row[var]
        await self.reply(ctx, make(NS_SEARCH, "query", None, x))

    # --- owner ---------------------------------------------------------------------------------

    def _require_owner(self, room: Room, jid: JID) -> None:
        if self.affiliation(room, jid) != "owner":
            raise Refusal("forbidden", "only an owner of the room may do that")

    async def _owner_get(self, ctx: Routed, room: Room) -> None:
        self._require_owner(room, ctx.frm)
        await self.reply(ctx, make(NS_OWNER, "query", None, configform.build(room, self.cfg)))

    async def _owner_set(self, ctx: Routed, room: Room, payload: Element) -> None:
        self._require_owner(room, ctx.frm)
        destroy = payload.find(q(NS_OWNER, "destroy"))
        if destroy is not None:
            await self._destroy(room, destroy)
            await self.reply(ctx)
            return
        form = payload.find(q(NS_DATA, "x"))
        if form is None or form.get("type") == "cancel":
            await self.reply(ctx)
            return
        if form.get("type") != "submit":
            raise Refusal("bad-request", "the configuration form must be submitted (type submit)")
        values = parse_form(form)
        declared = values.pop("FORM_TYPE", [configform.NS_ROOMCONFIG])
        if declared[:1] != [configform.NS_ROOMCONFIG]:
            raise Refusal("bad-request", f"FORM_TYPE must be {configform.NS_ROOMCONFIG}")
        try:
            change = configform.apply(room, self.cfg, values)
        except configform.FormError as e:
            raise Refusal(e.condition, e.text) from None
        before = room.settings
        if change.settings.persistent and not before.persistent:
            self._may_make_persistent(ctx.frm)
        room.settings = change.settings
        if change.settings.persistent and not before.persistent:
            assert self.store is not None  # checked above
            try:
                await self.store.write_now(room.jid)
            except (StorageUnavailable, TimeoutError):
                room.settings = before
                raise Refusal("service-unavailable", "persistent rooms cannot be created while the chat database "
                                                     "is unreachable; try again later") from None
        elif before.persistent and not change.settings.persistent and self.store is not None:
            self.store.delete(room.jid)
        if change.owners is not None:
            self._replace_affiliation(room, "owner", change.owners)
        if change.admins is not None:
            self._replace_affiliation(room, "admin", change.admins)
        self._persist(room)
        await self.reply(ctx)
        if room.settings != before or change.owners is not None or change.admins is not None:
            await self._after_config(room, before)
        elif not room.by_full and not room.persistent:
            self.rooms.pop(room.jid, None)

    def _may_make_persistent(self, jid: JID) -> None:
        if not self.cfg.persistent or self.store is None:
            raise Refusal("not-allowed", "persistent chat is not enabled on this service")
        if self.cfg.only_admins_create_persistent and not self.is_service_admin(jid):
            raise Refusal("forbidden", "only chat administrators may create persistent rooms")
        if sum(1 for r in self.rooms.values() if r.persistent) >= self.cfg.max_persistent_rooms:
            raise Refusal("resource-constraint",
                          f"the chat service has reached its limit of {self.cfg.max_persistent_rooms} persistent rooms")
        if not self.store.available:
            raise Refusal("service-unavailable", "persistent rooms cannot be created while the chat database "
                                                 "is unreachable; try again later")

    def _replace_affiliation(self, room: Room, aff: str, jids: list[str]) -> None:
        for bare, current in list(room.affiliations.items()):
            if current == aff and bare not in jids:
                del room.affiliations[bare]
        for bare in jids:
            room.affiliations[bare] = aff

    async def _after_config(self, room: Room, before: RoomSettings) -> None:
        """Occupants learn of the change (status 104); roles and membership follow it."""
        s = room.settings
        for occ in list(room.everyone()):
            aff = self.affiliation(room, occ.jid)
            if s.members_only and aff == "none":
                await self._leave(room, occ, None, (322,), reason="the room is now for members only")
                continue
            role = self._role_of(room, aff)
            if occ.role != role and (occ.role == "moderator" or role == "moderator" or s.moderated != before.moderated):
                occ.role = role
                await self._broadcast_presence(room, occ)
        codes = [104]
        if s.anonymous != before.anonymous:
            codes.append(173 if s.anonymous else 172)
        if s.persistent != before.persistent and self.cfg.archive_messages:
            codes.append(170 if s.persistent else 171)
        for occ in room.everyone():
            m = make(NS_CLIENT, "message", {"type": "groupchat", "from": room.jid, "to": str(occ.jid),
                                            "id": new_stanza_id()})
            x = child(m, NS_USER, "x")
            for code in codes:
                child(x, NS_USER, "status", {"code": str(code)})
            await self._send(m)
        if not room.by_full and not room.persistent:
            self.rooms.pop(room.jid, None)

    async def _destroy(self, room: Room, destroy: Element | None, reason: str = "") -> None:
        notice = make(NS_USER, "destroy")
        if destroy is not None:
            if destroy.get("jid"):
                try:
                    notice.set("jid", str(JID.parse(destroy.get("jid", ""))))
                except InvalidJID:
                    raise Refusal("jid-malformed", "the alternate venue is not a room address") from None
            reason = destroy.findtext(q(NS_OWNER, "reason")) or reason
            password = destroy.findtext(q(NS_OWNER, "password"))
            if password:
                child(notice, NS_USER, "password").text = password
        if reason:
            child(notice, NS_USER, "reason").text = reason
        room.destroyed = True
        for occ in list(room.everyone()):
            occ.role = "none"
            p = self._presence_of(room, occ, occ, (), unavailable=True, destroy=copy.deepcopy(notice))
            item = p.find(f"{q(NS_USER, 'x')}/{q(NS_USER, 'item')}")
            if item is not None:
                item.set("affiliation", "none")
            await self._send(p)
            self._forget(room, occ)
        self.rooms.pop(room.jid, None)
        if room.persistent and self.store is not None:
            self.store.delete(room.jid)

    # --- nickname registration -----------------------------------------------------------------

    async def _register_get(self, ctx: Routed, room: Room) -> None:
        query = make(NS_REGISTER, "query")
        nick = room.nicks.get(str(ctx.frm.bare))
        if nick:
            child(query, NS_REGISTER, "registered")
            child(query, NS_REGISTER, "username").text = nick
        child(query, NS_REGISTER, "instructions").text = "Reserve your nickname in this room."
        query.append(build_form("form", [Field("muc#register_roomnick", "text-single", "Nickname",
                                               (nick,) if nick else (), required=True)],
                                form_type=NS_REGISTER_FORM, title=f"Registration with {room.jid}"))
        await self.reply(ctx, query)

    async def _register_set(self, ctx: Routed, room: Room, payload: Element) -> None:
        bare = str(ctx.frm.bare)
        aff = self.affiliation(room, ctx.frm)
        if payload.find(q(NS_REGISTER, "remove")) is not None:
            room.nicks.pop(bare, None)
            if room.settings.open_membership and room.affiliations.get(bare) == "member":
                del room.affiliations[bare]
            self._persist(room)
            await self.reply(ctx)
            return
        form = payload.find(q(NS_DATA, "x"))
        if form is not None and form.get("type") == "cancel":
            await self.reply(ctx)
            return
        values = parse_form(form) if form is not None else {}
        nick = " ".join(values.get("muc#register_roomnick", [])).strip()
        if not nick:
            raise Refusal("not-acceptable", "muc#register_roomnick: a nickname is required")
        if aff == "outcast":
            raise Refusal("forbidden", "you are banned from this room")
        if aff == "none" and not room.settings.open_membership:
            raise Refusal("not-allowed", "membership of this room is granted by its owners and admins")
        holder = room.nick_owner(nick)
        taken = room.occupants.get(nick)
        if (holder is not None and holder != bare) or (taken is not None and str(taken.jid.bare) != bare):
            raise Refusal("conflict", "that nickname is taken in this room")
        if aff == "none":
            room.affiliations[bare] = "member"
        room.nicks[bare] = nick
        self._persist(room)
        await self.reply(ctx)

    # --- room archive (XEP-0313 on the room) ---------------------------------------------------

    async def _mam(self, ctx: Routed, room: Room, payload: Element, get: bool) -> None:
        if not self.archived(room) or self.store is None:
            raise Refusal("service-unavailable", "this room keeps no archive (only persistent rooms do)")
        aff = self.affiliation(room, ctx.frm)
        if aff == "outcast" or (room.settings.members_only and aff == "none"):
            raise Refusal("forbidden", "only members may read this room's archive")
        if get:
            await self.reply(ctx, query_form())
            return
        if local_name(payload.tag) != "query":
            raise Refusal("bad-request", "a room archive answers <query/> only")
        try:
            flt = parse_filter(payload.find(q(NS_DATA, "x")))
            limit, after, before, backwards = paging(payload.find(q(NS_RSM, "set")), self.config.archive.max_page)
            if self.store.available:
                await asyncio.wait_for(self.store.flushed(), 5)
            page = await self.store.archive.query(room.jid, flt, limit=limit, after=after, before=before,
                                                  backwards=backwards)
        except UnknownArchiveId as e:
            raise Refusal("item-not-found", f"there is no message {e.stanza_id!r} in the archive") from None
        except (TimeoutError, StorageUnavailable, OSError, sa.exc.SQLAlchemyError) as e:
            raise Refusal("service-unavailable", f"the room archive cannot be read now ({_brief(e)})") from None
        for m in page_order(payload, page):
            await self._send(result_message(m, room.jid, str(ctx.frm), payload.get("queryid")))
        await self.reply(ctx, fin_element(page))

    # --- admin (muc#admin) ---------------------------------------------------------------------

    async def _admin_get(self, ctx: Routed, room: Room, payload: Element) -> None:
        actor = room.by_jid(ctx.frm)
        aff = self.affiliation(room, ctx.frm)
        item = payload.find(q(NS_ADMIN, "item"))
        if item is None:
            raise Refusal("bad-request", "say which role or affiliation to list")
        out = make(NS_ADMIN, "query")
        if item.get("role"):
            if actor is None or actor.role != "moderator":
                raise Refusal("forbidden", "only moderators may list roles")
            for occ in room.occupants.values():
                if occ.role == item.get("role"):
                    child(out, NS_ADMIN, "item", {"nick": occ.nick, "role": occ.role, "jid": str(occ.jid),
                                                  "affiliation": self.affiliation(room, occ.jid)})
        elif item.get("affiliation") in AFFILIATIONS:
            if aff_rank(aff) < aff_rank("admin"):
                raise Refusal("forbidden", "only admins and owners may list affiliations")
            for jid, a in sorted(room.affiliations.items()):
                if a == item.get("affiliation"):
                    attrs = {"jid": jid, "affiliation": a}
                    if room.nicks.get(jid):
                        attrs["nick"] = room.nicks[jid]
                    child(out, NS_ADMIN, "item", attrs)
        else:
            raise Refusal("bad-request", "unknown role or affiliation")
        await self.reply(ctx, out)

    async def _admin_set(self, ctx: Routed, room: Room, payload: Element) -> None:
        actor = room.by_jid(ctx.frm)
        items = payload.findall(q(NS_ADMIN, "item"))
        if not items:
            raise Refusal("bad-request", "no item to change")
        # Every item is checked before any is applied: a refused batch changes nothing.
        for item in items:
            problem = self._check_admin(room, ctx.frm, actor, item)
            if problem is not None:
                raise Refusal(*problem)
        for item in items:
            await self._apply_admin(room, actor, item, item.findtext(q(NS_ADMIN, "reason")) or "")
        self._persist(room)
        await self.reply(ctx)

    def _check_admin(self, room: Room, frm: JID, actor: Occupant | None,
                     item: Element) -> tuple[str, str] | None:
        my_aff = self.affiliation(room, frm)
        role, aff = item.get("role"), item.get("affiliation")
        if role is not None:
            if role not in ROLES or aff is not None:
                return "bad-request", "an item changes a known role or an affiliation, not both"
            target = room.occupants.get(item.get("nick", ""))
            if target is None:
                return "item-not-found", "nobody has that nickname in this room"
            if actor is None or actor.role != "moderator":
                return "forbidden", "only moderators may change roles"
            target_aff = self.affiliation(room, target.jid)
            if aff_rank(target_aff) > aff_rank(my_aff) or (
                    target_aff in ("admin", "owner") and role != "moderator"):
                return "not-allowed", "that occupant's affiliation is above yours"
            if (role == "moderator" or target.role == "moderator") and aff_rank(my_aff) < aff_rank("admin"):
                return "not-allowed", "only admins and owners may grant or revoke moderation"
            return None
        if aff is None or aff not in AFFILIATIONS:
            return "bad-request", "an item needs a known role or affiliation"
        target_jid = _target(room, item)
        if target_jid is None:
            return "jid-malformed", "an affiliation is given to a JID (or the nickname of an occupant)"
        if aff_rank(my_aff) < aff_rank("admin"):
            return "forbidden", "only admins and owners may change affiliations"
        current = self.affiliation(room, target_jid)
        if my_aff != "owner" and ("owner" in (current, aff) or "admin" in (current, aff)):
            return "not-allowed", "only owners may grant or revoke admin and owner"
        if current == "owner" and aff != "owner":
            owners = room.owners()
            if owners == [str(target_jid)]:
                return "conflict", "a room keeps at least one owner"
        return None

    async def _apply_admin(self, room: Room, actor: Occupant | None, item: Element, reason: str) -> None:
        extra = {"reason": reason, "actor": actor.nick if actor else ""}
        role = item.get("role")
        if role is not None:
            target = room.occupants[item.get("nick", "")]
            if role == "none":
                await self._leave(room, target, None, (307,), **extra)
            else:
                target.role = role
                await self._broadcast_presence(room, target, (), **extra)
            return
        aff = item.get("affiliation", "none")
        target = _target(room, item)
        assert target is not None  # checked before
        bare = str(target)
        if aff == "none":
            room.affiliations.pop(bare, None)
        else:
            room.affiliations[bare] = aff
        if aff == "outcast":
            room.nicks.pop(bare, None)
        for occ in [o for o in room.everyone() if str(o.jid.bare) == bare]:
            if aff == "outcast":
                await self._leave(room, occ, None, (301,), **extra)
            elif room.settings.members_only and aff == "none":
                await self._leave(room, occ, None, (321,), **extra)
            else:
                occ.role = self._role_of(room, aff)
                await self._broadcast_presence(room, occ, (), **extra)


def _target(room: Room, item: Element) -> JID | None:
    if item.get("jid"):
        try:
            return JID.parse(item.get("jid", "")).bare
        except InvalidJID:
            return None
    occ = room.occupants.get(item.get("nick", ""))
    return occ.jid.bare if occ is not None else None


def _clean(presence: Element) -> Element:
    """An occupant's presence as the room relays it: its show, status and extensions."""
    out = Element(q(NS_CLIENT, "presence"))
    for c in presence:
        if namespace(c.tag) not in (NS_MUC, NS_USER, NS_OCCUPANT_ID) and local_name(c.tag) != "error":
            out.append(copy.deepcopy(c))
    return out


def _form_type(form: Element) -> str | None:
    for f in form.findall(q(NS_DATA, "field")):
        if f.get("var") == "FORM_TYPE":
            return f.findtext(q(NS_DATA, "value"))
    return None


def _room_name(room: Room) -> str:
    return room.settings.name or JID.parse(room.jid).local or room.jid


def _searchable(room: Room) -> dict[str, str]:
    return {"name": _room_name(room), "description": room.settings.description, "subject": room.subject}


def _search_form() -> Element:
    query = make(NS_SEARCH, "query")
    child(query, NS_SEARCH, "instructions").text = "Find rooms by words in their name, description or subject."
    query.append(build_form("form", [Field("name", label="Name"), Field("description", label="Description"),
                                     Field("subject", label="Subject")], form_type=NS_SEARCH,
                            title="Room search"))
    return query


def _info(identity: Identity, features: tuple[str, ...]) -> Element:
    query = make(NS_INFO, "query")
    attrs = {"category": identity.category, "type": identity.type}
    if identity.name:
        attrs["name"] = identity.name
    child(query, NS_INFO, "identity", attrs)
    for var in sorted(set(features)):
        child(query, NS_INFO, "feature", {"var": var})
    return query
