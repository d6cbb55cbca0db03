"""Group chat (XEP-0045 multi-user chat) with the seed's room defaults.

The chat service answers on each configured alias (``conference.<domain>`` by default).
Those domains are never hosted IM domains, so everything addressed to them reaches the
router's ``route/remote`` event, which this module takes, as external components do.

Rooms are made on first join (an instant room: open at once with the configured defaults,
its creator the owner) and live in memory; an ad-hoc room is gone, history and all, when
its last occupant leaves. Messages from the room are sent through the router, so the
recipients' privacy lists and policies still apply.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.modules.offline import utc_stamp
from parley.router import Routed
from parley.xmpp.caps import Identity
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, child, error_reply, local_name, make, namespace, q

if TYPE_CHECKING:
    from parley.server import Server
    from parley.sessions import Session

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ADMIN = f"{NS_MUC}#admin"
NS_OWNER = f"{NS_MUC}#owner"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DELAY = "urn:xmpp:delay"
NS_DATA = "jabber:x:data"
NS_XHTML_IM = "http://jabber.org/protocol/xhtml-im"

ROLES = ("none", "visitor", "participant", "moderator")
AFFILIATIONS = ("outcast", "none", "member", "admin", "owner")


def _rank(role: str) -> int:
    return ROLES.index(role)


def _aff_rank(aff: str) -> int:
    return AFFILIATIONS.index(aff)


@dataclass(slots=True)
class Occupant:
    nick: str
    jid: JID  # the occupant's full JID
    role: str
    presence: Element  # the occupant's last presence, without the MUC payloads


@dataclass(slots=True)
class Room:
    jid: str  # room@service
    members_only: bool
    moderated: bool
    anonymous: bool
    max_occupants: int
    occupants: dict[str, Occupant] = field(default_factory=dict)  # by nick
    affiliations: dict[str, str] = field(default_factory=dict)  # by bare JID
    history: deque[tuple[float, Element]] = field(default_factory=deque)
    subject: str = ""
    subject_by: str | None = None
    public: bool = True
    persistent: bool = False

    def by_jid(self, jid: JID) -> Occupant | None:
        for occ in self.occupants.values():
            if occ.jid == jid:
                return occ
        return None


class MucModule(Module):
    name = "muc"

    def __init__(self, server: Server):
        super().__init__(server)
        self.cfg = server.config.muc
        self.services: list[str] = self.cfg.aliases(server.domain)
        self.rooms: dict[str, Room] = {}

    @property
    def available(self) -> bool:
        return self.cfg.enabled and self.config.im.enabled

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
        disco = self.server.modules.get("disco")
        if disco is not None and self.config.im.enabled and self.config.muc.enabled:
            for alias in self.services:
                disco.add_item(alias, "Chat service")  # type: ignore[attr-defined]

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
        if room.moderated and aff == "none":
            return "visitor"
        return "participant"

    def affiliation(self, room: Room, jid: JID) -> str:
        bare = str(jid.bare)
        if bare in self.cfg.admins:
            return "owner"
        return room.affiliations.get(bare, "none")

    def _item(self, room: Room, occ: Occupant, viewer: Occupant | None, **extra: str) -> Element:
        attrs = {"affiliation": self.affiliation(room, occ.jid), "role": occ.role}
        # Semi-anonymous rooms show real JIDs to moderators only.
        if not room.anonymous or (viewer is not None and viewer.role == "moderator"):
            attrs["jid"] = str(occ.jid)
        attrs.update({k: v for k, v in extra.items() if k not in ("reason", "actor")})
        item = make(NS_USER, "item", attrs)
        if extra.get("actor"):
            child(item, NS_USER, "actor", {"nick": extra["actor"]})
        if extra.get("reason"):
            child(item, NS_USER, "reason").text = extra["reason"]
        return item

    def _presence_of(self, room: Room, occ: Occupant, to: Occupant, codes: tuple[int, ...] = (),
                     unavailable: bool = False, **extra: str) -> Element:
        if unavailable:
            p = Element(q(NS_CLIENT, "presence"), {"type": "unavailable"})
        else:
            p = copy.deepcopy(occ.presence)
        p.set("from", f"{room.jid}/{occ.nick}")
        p.set("to", str(to.jid))
        x = child(p, NS_USER, "x")
        x.append(self._item(room, occ, to, **extra))
        own = to is occ
        all_codes = list(codes)
        if own:
            all_codes.append(110)
            if not room.anonymous and not unavailable:
                all_codes.append(100)
        for code in sorted(set(all_codes)):
            child(x, NS_USER, "status", {"code": str(code)})
        return p

    async def _broadcast_presence(self, room: Room, occ: Occupant, codes: tuple[int, ...] = (),
                                  unavailable: bool = False, **extra: str) -> None:
        for other in list(room.occupants.values()):
            if other is not occ:
                await self._send(self._presence_of(room, occ, other, codes, unavailable, **extra))
        await self._send(self._presence_of(room, occ, occ, codes, unavailable, **extra))

    # --- routing -------------------------------------------------------------------------------

    async def _route(self, ctx: Routed) -> bool:
        if ctx.to.domain not in self.services:
            return False
        if not self.available:
            return await self._error(ctx, "service-unavailable", "group chat is disabled")
        if ctx.kind == "iq":
            await self._iq(ctx)
        elif ctx.kind == "presence":
            await self._presence(ctx)
        elif ctx.kind == "message":
            await self._message(ctx)
        return True

    def _room(self, ctx: Routed) -> Room | None:
        return self.rooms.get(str(ctx.to.bare)) if ctx.to.local is not None else None

    # --- presence ------------------------------------------------------------------------------

    async def _presence(self, ctx: Routed) -> None:
        if ctx.type == "error":
            # The occupant cannot be reached: it leaves, as XEP-0045 asks.
            room = self._room(ctx)
            occ = room.by_jid(ctx.frm) if room else None
            if room is not None and occ is not None:
                await self._leave(room, occ, ctx.stanza)
            return
        if ctx.to.local is None:
            return
        room = self._room(ctx)
        occ = room.by_jid(ctx.frm) if room else None
        if ctx.type == "unavailable":
            if room is not None and occ is not None:
                await self._leave(room, occ, ctx.stanza)
            return
        if ctx.type != "available":
            return  # subscriptions and probes have no meaning for a room
        nick = ctx.to.resource
        if not nick or not nick.strip():
            await self._error(ctx, "jid-malformed", "a nickname is required to join a room")
            return
        if room is not None and occ is not None:
            if nick == occ.nick:
                occ.presence = _clean(ctx.stanza)
                await self._broadcast_presence(room, occ)
            else:
                await self._change_nick(ctx, room, occ, nick)
            return
        await self._join(ctx, room, nick)

    async def _join(self, ctx: Routed, room: Room | None, nick: str) -> None:
        created = room is None
        if room is None:
            if len(self.rooms) >= self.cfg.max_rooms:
                await self._error(ctx, "resource-constraint", "the chat service has reached its room limit")
                return
            room = Room(str(ctx.to.bare), members_only=self.cfg.members_only, moderated=self.cfg.moderated,
                        anonymous=self.cfg.anonymous, max_occupants=min(self.cfg.default_room_size,
                                                                         self.cfg.max_occupants))
            room.affiliations[str(ctx.frm.bare)] = "owner"
        aff = self.affiliation(room, ctx.frm)
        if aff == "outcast":
            await self._error(ctx, "forbidden", "you are banned from this room")
            return
        if room.members_only and aff == "none":
            await self._error(ctx, "registration-required", "this room is for members only")
            return
        if nick in room.occupants:
            await self._error(ctx, "conflict", "that nickname is in use in this room")
            return
        if len(room.occupants) >= min(room.max_occupants, self.cfg.max_occupants):
            await self._error(ctx, "service-unavailable", "the room is full")
            return
        if created:
            self.rooms[room.jid] = room
        occ = Occupant(nick, ctx.frm, self._role_of(room, aff), _clean(ctx.stanza))
        for other in list(room.occupants.values()):
            await self._send(self._presence_of(room, other, occ))
        room.occupants[nick] = occ
        await self._broadcast_presence(room, occ, (201,) if created else ())
        await self._history(room, occ, ctx.stanza.find(q(NS_MUC, "x")))
        subject = Element(q(NS_CLIENT, "message"), {"type": "groupchat", "to": str(occ.jid),
                                                   "from": f"{room.jid}/{room.subject_by}"
                                                   if room.subject_by else room.jid})
        child(subject, NS_CLIENT, "subject").text = room.subject
        await self._send(subject)

    async def _history(self, room: Room, occ: Occupant, x: Element | None) -> None:
        limit = min(self.cfg.history_on_join, self.cfg.max_history)
        since = 0.0
        h = x.find(q(NS_MUC, "history")) if x is not None else None
        if h is not None:
            if h.get("maxstanzas", "").isdigit():
                limit = min(int(h.get("maxstanzas", "0")), self.cfg.max_history)
            if h.get("maxchars") == "0":
                limit = 0
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
        for ts, m in wanted:
            out = copy.deepcopy(m)
            out.set("to", str(occ.jid))
            child(out, NS_DELAY, "delay", {"from": room.jid, "stamp": utc_stamp(ts)})
            await self._send(out)

    async def _change_nick(self, ctx: Routed, room: Room, occ: Occupant, nick: str) -> None:
        if nick in room.occupants:
            await self._error(ctx, "conflict", "that nickname is in use in this room")
            return
        await self._broadcast_presence(room, occ, (303,), unavailable=True, nick=nick)
        del room.occupants[occ.nick]
        occ.nick = nick
        occ.presence = _clean(ctx.stanza)
        room.occupants[nick] = occ
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
        room.occupants.pop(occ.nick, None)
        if not room.occupants and not room.persistent:
            self.rooms.pop(room.jid, None)

    async def _gone(self, session: Session) -> None:
        """A session that went offline (or unavailable) leaves every room it was in."""
        for room in list(self.rooms.values()):
            occ = room.by_jid(session.jid)
            if occ is not None:
                await self._leave(room, occ)

    # --- messages ------------------------------------------------------------------------------

    async def _message(self, ctx: Routed) -> None:
        if ctx.type == "error":
            return
        room = self._room(ctx)
        if ctx.to.local is None:
            await self._error(ctx, "service-unavailable", "the chat service takes no messages")
            return
        if room is None:
            await self._error(ctx, "item-not-found", "there is no such room")
            return
        occ = room.by_jid(ctx.frm)
        if ctx.to.resource is not None:
            await self._private(ctx, room, occ, ctx.to.resource)
            return
        if occ is None:
            await self._error(ctx, "not-acceptable", "only occupants may send messages to the room")
            return
        if ctx.type != "groupchat":
            await self._error(ctx, "feature-not-implemented", "invitations and requests are not supported yet")
            return
        body = ctx.stanza.find(q(NS_CLIENT, "body"))
        subject = ctx.stanza.find(q(NS_CLIENT, "subject"))
        if subject is not None and body is None:
            if _rank(occ.role) < _rank(self.cfg.subject_role):
                await self._error(ctx, "forbidden", f"only a {self.cfg.subject_role} may change the subject")
                return
            room.subject, room.subject_by = subject.text or "", occ.nick
        elif occ.role == "visitor":
            await self._error(ctx, "forbidden", "visitors have no voice in this room")
            return
        out = self._from_room(ctx.stanza, f"{room.jid}/{occ.nick}")
        if body is not None:
            room.history.append((time.time(), out))
            while len(room.history) > self.cfg.max_history:
                room.history.popleft()
        for other in list(room.occupants.values()):
            m = copy.deepcopy(out)
            m.set("to", str(other.jid))
            await self._send(m)

    def _from_room(self, stanza: Element, frm: str) -> Element:
        out = Element(stanza.tag, {k: v for k, v in stanza.attrib.items() if k not in ("from", "to")})
        out.set("from", frm)
        for c in stanza:
            if self.cfg.strip_xhtml and namespace(c.tag) == NS_XHTML_IM:
                continue
            out.append(copy.deepcopy(c))
        return out

    async def _private(self, ctx: Routed, room: Room, occ: Occupant | None, nick: str) -> None:
        if occ is None:
            await self._error(ctx, "not-acceptable", "only occupants may send private messages")
            return
        if ctx.type == "groupchat":
            await self._error(ctx, "bad-request", "a private message cannot be of type groupchat")
            return
        if _rank(occ.role) < _rank(self.cfg.private_message_role):
            await self._error(ctx, "forbidden", f"only a {self.cfg.private_message_role} may send private messages")
            return
        target = room.occupants.get(nick)
        if target is None:
            await self._error(ctx, "item-not-found", f"nobody is called {nick!r} in this room")
            return
        out = self._from_room(ctx.stanza, f"{room.jid}/{occ.nick}")
        out.set("to", str(target.jid))
        if out.find(q(NS_USER, "x")) is None:
            child(out, NS_USER, "x")
        await self._send(out)

    # --- iq ------------------------------------------------------------------------------------

    async def _iq(self, ctx: Routed) -> None:
        if ctx.type not in ("get", "set"):
            return
        payload = ctx.stanza[0] if len(ctx.stanza) == 1 else None
        if payload is None:
            await self._error(ctx, "bad-request", "an iq get or set carries exactly one payload")
            return
        ns, get = namespace(payload.tag), ctx.type == "get"
        room = self._room(ctx)
        if ctx.to.local is None:
            if get and ns == NS_INFO and not payload.get("node"):
                await self.reply(ctx, _info(Identity("conference", "text", "", "Chat service"),
                                            (NS_INFO, NS_ITEMS, NS_MUC)))
            elif get and ns == NS_ITEMS and not payload.get("node"):
                items = make(NS_ITEMS, "query")
                for r in sorted(self.rooms.values(), key=lambda r: r.jid):
                    if r.public:
                        child(items, NS_ITEMS, "item", {"jid": r.jid, "name": JID.parse(r.jid).local or ""})
                await self.reply(ctx, items)
            else:
                await self._error(ctx, "service-unavailable")
            return
        if room is None:
            await self._error(ctx, "item-not-found", "there is no such room")
            return
        if ctx.to.resource is not None:
            await self._error(ctx, "service-unavailable", "queries to occupants are not relayed")
            return
        if get and ns == NS_INFO and not payload.get("node"):
            await self.reply(ctx, _info(Identity("conference", "text", "", JID.parse(room.jid).local or ""),
                                        _room_features(room)))
        elif get and ns == NS_ITEMS and not payload.get("node"):
            await self.reply(ctx, make(NS_ITEMS, "query"))
        elif ns == NS_ADMIN:
            await (self._admin_get(ctx, room, payload) if get else self._admin_set(ctx, room, payload))
        elif not get and ns == NS_OWNER:
            await self._owner_set(ctx, room, payload)
        else:
            await self._error(ctx, "feature-not-implemented")

    async def _owner_set(self, ctx: Routed, room: Room, payload: Element) -> None:
        if self.affiliation(room, ctx.frm) != "owner":
            await self._error(ctx, "forbidden", "only an owner may configure the room")
            return
        form = payload.find(q(NS_DATA, "x"))
        # An instant room is already open: accepting the default (an empty form or a cancel)
        # is all a client may do until room configuration exists.
        if form is not None and (form.get("type") == "cancel" or (
                form.get("type") == "submit" and not [f for f in form if f.get("var") != "FORM_TYPE"])):
            await self.reply(ctx)
            return
        await self._error(ctx, "feature-not-implemented", "room configuration is not supported yet")

    async def _admin_get(self, ctx: Routed, room: Room, payload: Element) -> None:
        actor = room.by_jid(ctx.frm)
        aff = self.affiliation(room, ctx.frm)
        item = payload.find(q(NS_ADMIN, "item"))
        if item is None:
            await self._error(ctx, "bad-request", "say which role or affiliation to list")
            return
        out = make(NS_ADMIN, "query")
        if item.get("role"):
            if actor is None or actor.role != "moderator":
                await self._error(ctx, "forbidden", "only moderators may list roles")
                return
            for occ in room.occupants.values():
                if occ.role == item.get("role"):
                    child(out, NS_ADMIN, "item", {"nick": occ.nick, "role": occ.role, "jid": str(occ.jid),
                                                  "affiliation": self.affiliation(room, occ.jid)})
        elif item.get("affiliation") in AFFILIATIONS:
            if _aff_rank(aff) < _aff_rank("admin"):
                await self._error(ctx, "forbidden", "only admins and owners may list affiliations")
                return
            for jid, a in sorted(room.affiliations.items()):
                if a == item.get("affiliation"):
                    child(out, NS_ADMIN, "item", {"jid": jid, "affiliation": a})
        else:
            await self._error(ctx, "bad-request", "unknown role or affiliation")
            return
        await self.reply(ctx, out)

    async def _admin_set(self, ctx: Routed, room: Room, payload: Element) -> None:
        actor = room.by_jid(ctx.frm)
        items = payload.findall(q(NS_ADMIN, "item"))
        if not items:
            await self._error(ctx, "bad-request", "no item to change")
            return
        # Every item is checked before any is applied: a refused batch changes nothing.
        plans: list[tuple[Element, str | None]] = []
        for item in items:
            problem = self._check_admin(room, ctx.frm, actor, item)
            if problem is not None:
                await self._error(ctx, *problem)
                return
            plans.append((item, item.findtext(q(NS_ADMIN, "reason"))))
        for item, reason in plans:
            await self._apply_admin(room, actor, item, reason or "")
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
            if _aff_rank(target_aff) > _aff_rank(my_aff) or (
                    target_aff in ("admin", "owner") and role != "moderator"):
                return "not-allowed", "that occupant's affiliation is above yours"
            if (role == "moderator" or target.role == "moderator") and _aff_rank(my_aff) < _aff_rank("admin"):
                return "not-allowed", "only admins and owners may grant or revoke moderation"
            return None
        if aff is None or aff not in AFFILIATIONS:
            return "bad-request", "an item needs a known role or affiliation"
        target_jid = _target(room, item)
        if target_jid is None:
            return "jid-malformed", "an affiliation is given to a JID (or the nickname of an occupant)"
        if _aff_rank(my_aff) < _aff_rank("admin"):
            return "forbidden", "only admins and owners may change affiliations"
        current = self.affiliation(room, target_jid)
        if my_aff != "owner" and ("owner" in (current, aff) or "admin" in (current, aff)):
            return "not-allowed", "only owners may grant or revoke admin and owner"
        if current == "owner" and aff != "owner":
            owners = [j for j, a in room.affiliations.items() if a == "owner"]
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
        for occ in [o for o in room.occupants.values() if str(o.jid.bare) == bare]:
            if aff == "outcast":
                await self._leave(room, occ, None, (301,), **extra)
            elif room.members_only and aff == "none":
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
        if namespace(c.tag) not in (NS_MUC, NS_USER) and local_name(c.tag) != "error":
            out.append(copy.deepcopy(c))
    return out


def _info(identity: Identity, features: tuple[str, ...]) -> Element:
    query = make(NS_INFO, "query")
    attrs = {"category": identity.category, "type": identity.type}
    if identity.name:
        attrs["name"] = identity.name
    child(query, NS_INFO, "identity", attrs)
    for var in sorted(set(features)):
        child(query, NS_INFO, "feature", {"var": var})
    return query


def _room_features(room: Room) -> tuple[str, ...]:
    return (
        NS_MUC, NS_INFO,
        "muc_public" if room.public else "muc_hidden",
        "muc_persistent" if room.persistent else "muc_temporary",
        "muc_membersonly" if room.members_only else "muc_open",
        "muc_moderated" if room.moderated else "muc_unmoderated",
        "muc_semianonymous" if room.anonymous else "muc_nonanonymous",
        "muc_unsecured",
    )

module_class = MucModule
