"""Privacy lists (XEP-0016), kept consistent with the blocking command (XEP-0191).

A user keeps named lists of rules (items of type jid, group or subscription, or none for
the fall-through; action allow or deny; a unique order; and the stanza kinds they cover:
message, iq, presence-in, presence-out, or with no child element every stanza both ways).
A session may make one list active; otherwise the user's default list applies, and with
neither nothing is filtered here. The first item in order that matches decides.

Enforcement: every locally routed stanza passes ``stanza/in`` (priority 90, after the
policy module's filter) and stanzas to other domains pass ``route/remote``. Inbound to
the user, a denied message or iq get/set is answered ``service-unavailable`` and anything
else is dropped without a word; outbound, a denied message or iq is answered
``not-acceptable``. Presence broadcasts and probe answers do not pass the router as one
stanza per contact: the presence module asks ``PolicyModule.may_send_presence``, which
asks :meth:`PrivacyModule.may_send_presence` (and the invisible module). A message or
presence notification to the bare JID is judged by the lists of the sessions it would
reach and refused only when all of them deny it (so a session whose own list denies it
still gets it when another session accepts it); anything else to the bare JID, and
anything for an account with no such session, by the default list. Stanzas between the
user's own resources and from the server itself are never filtered.

Mapping onto the XEP-0191 block list (the policy module's block list, which is also the
SPEC C2 per-user block list an administrator sets):

- The block list is the head of the default list. Read through jabber:iq:privacy, the
  default list starts with one ``<item type='jid' value=J action='deny'/>`` (no child
  element: every stanza) per blocked JID, orders 1..n, followed by the stored items. With
  no stored default list and a non-empty block list, the default list is the list named
  ``urn:xmpp:blocking``.
- ``urn:xmpp:blocking`` is a reserved name: that list is the block list and nothing else.
  Reading it gives the blocked JIDs; setting it (only jid/deny/all items) replaces the
  block list; removing it unblocks everyone; making it the default means "no stored
  default list"; making it active leaves the session with the block list alone.
- Editing the default list: its items of type jid, action deny and no child element that
  no allow item precedes (so moving them first changes no outcome) become the block list,
  replacing it; the other items are stored, renumbered from 1. Making a stored list the
  default moves such leading items of that list into the block list as well.
- So there is one store and one meaning: a JID blocked with the blocking command is a full
  deny in the default list, and a full deny at the head of the default list is a blocked
  JID. Elsewhere (another list, or after an allow item) a full deny of a JID stays a list
  item, with the same effect as a block while its list applies: the JID sees the session
  unavailable, its stanzas are refused as above and the user's to it get
  ``not-acceptable`` with XEP-0191's ``<blocked/>``.
- A change made through jabber:iq:privacy sends the XEP-0191 block/unblock pushes as well
  as the list pushes; one made with the blocking command sends the XEP-0191 pushes (the
  policy module's). Either way blocked contacts see the user unavailable and unblocked
  ones get the current presence.
- The block list applies to every session whatever list is active (SPEC C2: a blocked
  entity always sees the user unavailable); declining or removing the default list leaves
  it in force. A domain entry in the block list covers that domain exactly, not its
  subdomains as a privacy-list domain item does.

Any change of what applies to a session (a new active or default list, a list edit, the
block list) is followed by presence: contacts that no longer may see a session receive
unavailable, contacts that newly may see it receive its current presence, and the same
for the contacts' presence the session receives (local contacts only).
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from parley.module import Module
from parley.modules.policy import (
    MAX_ENTRIES,
    NS_BLOCKING,
    NS_BLOCKING_ERRORS,
    PolicyModule,
    UserPolicy,
)
from parley.modules.roster import Roster
from parley.router import Routed
from parley.sessions import Session
from parley.storage.privacy import PrivacyRepo
from parley.storage.repos import RosterItem
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, error_reply, iq_result, local_name, namespace, q

NS_PRIVACY = "jabber:iq:privacy"
BLOCKLIST = "urn:xmpp:blocking"
KINDS = ("message", "iq", "presence-in", "presence-out")
SUBSCRIPTIONS = ("both", "to", "from", "none")
MAX_LISTS = 50
MAX_ITEMS = MAX_ENTRIES
MAX_NAME = 1023
MAX_ORDER = 2**32 - 1
CACHE_SIZE = 20000
_DIGITS = re.compile(r"[0-9]{1,10}")

# Who a session's presence reaches and whose presence it receives, at one moment.
Snapshot = list[tuple[Session, set[str], dict[str, Element]]]


class BadList(Exception):
    def __init__(self, condition: str, text: str):
        super().__init__(text)
        self.condition = condition
        self.text = text


@dataclass(frozen=True, slots=True)
class PrivacyItem:
    action: str  # allow | deny
    order: int
    type: str | None = None  # jid | group | subscription; None: the fall-through
    value: str | None = None
    kinds: frozenset[str] = frozenset()  # empty: every stanza, inbound and outbound

    @property
    def blocks(self) -> bool:
        """A full block of one JID, which is what a XEP-0191 block list entry is."""
        return self.type == "jid" and self.action == "deny" and not self.kinds

    def covers(self, kind: str | None) -> bool:
        # kind None: a stanza only an item with no child element covers (subscriptions,
        # probes, outbound messages and iqs).
        return not self.kinds or (kind is not None and kind in self.kinds)

    def matches(self, other: JID, item: RosterItem | None) -> bool:
        if self.type is None:
            return True
        assert self.value is not None
        if self.type == "jid":
            return jid_matches(self.value, other)
        if self.type == "group":
            return item is not None and self.value in item.groups
        return (item.subscription if item is not None else "none") == self.value

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "order": self.order}
        if self.type is not None:
            out["type"] = self.type
            out["value"] = self.value
        if self.kinds:
            out["kinds"] = sorted(self.kinds)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PrivacyItem:
        return cls(d["action"], int(d["order"]), d.get("type"), d.get("value"), frozenset(d.get("kinds", ())))

    def element(self, order: int) -> Element:
        el = Element(q(NS_PRIVACY, "item"))
        if self.type is not None:
            el.set("type", self.type)
            el.set("value", self.value or "")
        el.set("action", self.action)
        el.set("order", str(order))
        for k in KINDS:
            if k in self.kinds:
                SubElement(el, q(NS_PRIVACY, k))
        return el


def jid_matches(value: str, other: JID) -> bool:
    """XEP-0016 JID matching: a full JID matches only itself, a bare JID any of its
    resources, domain/resource only that, a domain itself, its users and its subdomains."""
    try:
        v = JID.parse(value)
    except InvalidJID:
        return False
    if v.local is not None:
        if v.resource is not None:
            return other == v
        return other.local == v.local and other.domain == v.domain
    if v.resource is not None:
        return other.local is None and other.domain == v.domain and other.resource == v.resource
    return other.domain == v.domain or other.domain.endswith("." + v.domain)


def parse_item(el: Element, roster: Roster) -> PrivacyItem:
    if el.tag != q(NS_PRIVACY, "item"):
        raise BadList("bad-request", "a list holds <item/> elements only")
    action = el.get("action")
    if action not in ("allow", "deny"):
        raise BadList("bad-request", "an item's action is allow or deny")
    order_s = el.get("order", "")
    if not _DIGITS.fullmatch(order_s) or int(order_s) > MAX_ORDER:
        raise BadList("bad-request", "an item's order is a non-negative integer")
    type_ = el.get("type")
    value = el.get("value")
    if type_ is None:
        if value is not None:
            raise BadList("bad-request", "an item without a type is the fall-through and has no value")
    elif not value:
        raise BadList("bad-request", f"an item of type {type_} needs a value")
    elif type_ == "jid":
        try:
            value = str(JID.parse(value))
        except InvalidJID as e:
            raise BadList("bad-request", f"not a valid JID: {e}") from None
    elif type_ == "group":
        if not any(value in it.groups for it in roster.visible()):
            raise BadList("item-not-found", f"there is no group {value!r} in your roster")
    elif type_ == "subscription":
        if value not in SUBSCRIPTIONS:
            raise BadList("bad-request", "a subscription is both, to, from or none")
    else:
        raise BadList("bad-request", "an item's type is jid, group or subscription")
    kinds: set[str] = set()
    for c in el:
        if namespace(c.tag) != NS_PRIVACY or local_name(c.tag) not in KINDS:
            raise BadList("bad-request", f"an item may contain only {', '.join(KINDS)}")
        kinds.add(local_name(c.tag))
    return PrivacyItem(action, int(order_s), type_, value, frozenset(kinds))


def parse_items(lst: Element, roster: Roster) -> list[PrivacyItem]:
    items = [parse_item(el, roster) for el in lst]
    if len(items) > MAX_ITEMS:
        raise BadList("resource-constraint", f"at most {MAX_ITEMS} items in a list")
    if len({it.order for it in items}) != len(items):
        raise BadList("bad-request", "two items have the same order")
    return sorted(items, key=lambda it: it.order)


def split_head(items: list[PrivacyItem]) -> tuple[list[str], list[PrivacyItem]]:
    """The JIDs the list blocks outright before any allow item, and the other items."""
    head: list[str] = []
    rest: list[PrivacyItem] = []
    allowed = False
    for it in items:
        if it.blocks and not allowed:
            assert it.value is not None
            if it.value not in head:
                head.append(it.value)
            continue
        rest.append(it)
        allowed = allowed or it.action == "allow"
    return head, rest


def renumber(items: Iterable[PrivacyItem]) -> list[PrivacyItem]:
    return [replace(it, order=i + 1) for i, it in enumerate(items)]


def _presence(type_: str | None, frm: str, to: str) -> Element:
    el = Element(q(NS_CLIENT, "presence"), {"from": frm, "to": to})
    if type_:
        el.set("type", type_)
    return el


def _with_to(stanza: Element, to: str) -> Element:
    el = copy.copy(stanza)
    el.attrib = dict(stanza.attrib)
    el.set("to", to)
    return el


@dataclass
class UserLists:
    """One user's stored lists in memory, each sorted by order."""

    lists: dict[str, list[PrivacyItem]]
    default: str | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PrivacyModule(Module):
    name = "privacy"
    server_features = (NS_PRIVACY,)

    def __init__(self, server):  # type: ignore[no-untyped-def]
        super().__init__(server)
        self.store = PrivacyRepo(server.db)
        self._cache: OrderedDict[str, UserLists] = OrderedDict()

    async def start(self) -> None:
        self.hooks.add("stanza/in", self._filter, priority=90)
        self.hooks.add("route/remote", self._filter_remote, priority=90)
        self.hooks.add(f"iq-get/bare/{NS_PRIVACY}", self._get)
        self.hooks.add(f"iq-set/bare/{NS_PRIVACY}", self._set)
        self.server.signals.connect("user-deleted", self._forget)

    @property
    def policy(self) -> PolicyModule:
        mod = self.server.modules["policy"]
        assert isinstance(mod, PolicyModule)
        return mod

    async def _roster(self, owner: str) -> Roster:
        return await self.server.modules["roster"].get(owner)  # type: ignore[attr-defined, no-any-return]

    async def _forget(self, bare: str) -> None:
        self._cache.pop(bare, None)
        await self.store.delete_all(bare)

    async def lists(self, owner: str) -> UserLists:
        found = self._cache.get(owner)
        if found is not None:
            self._cache.move_to_end(owner)
            return found
        stored = await self.store.load(owner)
        found = self._cache.get(owner)
        if found is not None:
            # Loaded meanwhile by another task: keep the one whose lock is in use.
            return found
        default = next((n for n in sorted(stored) if stored[n].is_default), None)
        found = UserLists(
            {n: sorted((PrivacyItem.from_json(d) for d in s.items), key=lambda it: it.order)
             for n, s in stored.items()},
            default,
        )
        self._cache[owner] = found
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    # --- evaluation ------------------------------------------------------------------------

    async def _items_for(self, owner: str, session: Session | None) -> list[PrivacyItem]:
        ul = await self.lists(owner)
        name = getattr(session, "privacy_active", None) if session is not None else None
        if name is None:
            name = ul.default
        return ul.lists.get(name, []) if name is not None else []

    async def deciding(self, owner: str, session: Session | None, other: JID,
                       kind: str | None) -> PrivacyItem | None:
        """The item of the list that applies (the session's active list, else the default
        list) which decides a stanza of `kind` between the owner and `other`."""
        items = await self._items_for(owner, session)
        if not items:
            return None
        item: RosterItem | None = None
        if any(it.type in ("group", "subscription") for it in items):
            found = (await self._roster(owner)).get(str(other.bare))
            item = found if found is not None and found.visible else None
        for it in items:
            if it.covers(kind) and it.matches(other, item):
                return it
        return None

    async def denied(self, owner: str, session: Session | None, other: JID,
                     kind: str | None) -> PrivacyItem | None:
        it = await self.deciding(owner, session, other, kind)
        return it if it is not None and it.action == "deny" else None

    async def _user_denies(self, user: JID, other: JID, kind: str | None) -> bool:
        """Whether the local user `user` (a session's full JID, or the bare JID for the
        default list) denies a stanza of `kind` to or from `other`."""
        if not self.server.is_local_user_domain(user) or other.bare == user.bare:
            return False
        session = self.router.sessions.get(user) if user.resource is not None else None
        return await self.denied(str(user.bare), session, other, kind) is not None

    async def may_send_presence(self, frm: JID, to: JID, probe: bool = False) -> bool:
        """Presence-out of the sender and presence-in of the receiver (for a probe, the
        items that cover every stanza)."""
        if frm.bare == to.bare:
            return True
        if await self._user_denies(frm, to, None if probe else "presence-out"):
            return False
        return not await self._user_denies(to, frm, None if probe else "presence-in")

    # --- the router's filters -----------------------------------------------------------------

    def _from_server(self, jid: JID) -> bool:
        return jid.local is None and jid.domain in self.server.hosts

    async def _filter(self, ctx: Routed) -> bool:
        origin = ctx.origin
        if origin is not None and ctx.to.local is not None and str(ctx.to.bare) != origin.bare:
            if await self._refused_outbound(ctx, origin):
                return True
        if (not self.server.is_local_user_domain(ctx.to) or ctx.frm.bare == ctx.to.bare
                or self._from_server(ctx.frm)):
            return False
        kind = _inbound_kind(ctx)
        if not await self._inbound_denied(ctx, kind):
            return False
        if (ctx.kind == "message" and ctx.type in ("normal", "chat", "headline")) or \
                (ctx.kind == "iq" and ctx.type in ("get", "set")):
            self.router.bounce(ctx.stanza, "service-unavailable", None, ctx.origin)
        return True

    async def _filter_remote(self, ctx: Routed) -> bool:
        return ctx.origin is not None and await self._refused_outbound(ctx, ctx.origin)

    async def _refused_outbound(self, ctx: Routed, origin: Session) -> bool:
        kind = "presence-out" if ctx.kind == "presence" and ctx.type in ("available", "unavailable") else None
        item = await self.denied(origin.bare, origin, ctx.to, kind)
        if item is None:
            return False
        if ctx.kind in ("message", "iq") and ctx.type not in ("error", "result"):
            app = Element(q(NS_BLOCKING_ERRORS, "blocked")) if item.blocks else None
            origin.send(error_reply(ctx.stanza, "not-acceptable", "your privacy list blocks this contact", app=app))
        return True

    async def _inbound_denied(self, ctx: Routed, kind: str | None) -> bool:
        owner = str(ctx.to.bare)
        if ctx.to.resource is not None:
            return await self.denied(owner, self.router.sessions.get(ctx.to), ctx.frm, kind) is not None
        if ctx.kind == "message" or kind == "presence-in":
            reached = [s for s in self.router.sessions.of(owner)
                       if s.available and (ctx.kind != "message" or s.priority >= 0)]
            if reached:
                for s in reached:
                    if await self.denied(owner, s, ctx.frm, kind) is None:
                        return False
                return True
        return await self.denied(owner, None, ctx.frm, kind) is not None

    # --- presence after a change ------------------------------------------------------------

    async def audience(self, session: Session) -> set[str]:
        """Who receives the session's presence broadcasts now: the full JIDs of local
        contacts' available sessions and the bare JIDs of remote contacts, by the same
        checks as PresenceModule._to_contact."""
        if not self.config.presence.sharing:
            return set()
        policy = self.policy
        me = session.jid
        out: set[str] = set()
        for contact in (await self._roster(session.bare)).subscribers():
            try:
                cjid = JID.parse(contact)
            except InvalidJID:
                continue
            if not await policy.may_see(session.bare, cjid, subscribed=True):
                continue
            if not self.server.is_local_user_domain(cjid):
                if await policy.may_send_presence(me, cjid):
                    out.add(contact)
                continue
            if await policy.is_blocked(contact, me):
                continue
            for s in self.router.sessions.of(contact):
                if s.available and await policy.may_send_presence(me, s.jid):
                    out.add(str(s.jid))
        return out

    async def _sources(self, session: Session) -> dict[str, Element]:
        """The local contacts' sessions whose presence this session receives now."""
        if not self.config.presence.sharing:
            return {}
        policy = self.policy
        out: dict[str, Element] = {}
        for contact in (await self._roster(session.bare)).subscriptions():
            try:
                cjid = JID.parse(contact)
            except InvalidJID:
                continue
            if not self.server.is_local_user_domain(cjid):
                continue
            if not await policy.may_see(contact, session.jid.bare, subscribed=True):
                continue
            if await policy.is_blocked(session.bare, cjid):
                continue
            for s in self.router.sessions.of(contact):
                if s.available and s.presence is not None and await policy.may_send_presence(s.jid, session.jid):
                    out[str(s.jid)] = s.presence
        return out

    async def snapshot(self, sessions: Iterable[Session]) -> Snapshot:
        return [(s, await self.audience(s), await self._sources(s)) for s in sessions if s.available]

    async def transition(self, owner: str, swap: Callable[[], None],
                         write: Callable[[], Awaitable[None]] | None = None) -> None:
        """Change what applies to the owner's sessions and tell the contacts concerned.

        `write` makes the change durable first; `swap` then changes memory right after the
        'before' picture, with nothing awaited in between, so no broadcast falls between
        the picture and the change."""
        if write is not None:
            await write()
        before = await self.snapshot(self.router.sessions.of(owner))
        swap()
        after = await self.snapshot([s for s, _, _ in before])
        await self._announce(before, after)

    async def _announce(self, before: Snapshot, after: Snapshot) -> None:
        later = {id(s): (aud, src) for s, aud, src in after}
        for s, aud0, src0 in before:
            if id(s) not in later:
                continue
            aud1, src1 = later[id(s)]
            me = str(s.jid)
            for target in sorted(aud0 - aud1):
                await self._send(target, _presence("unavailable", me, target))
            if s.presence is not None:
                for target in sorted(aud1 - aud0):
                    await self._send(target, _with_to(s.presence, target))
            for src in sorted(src0.keys() - src1.keys()):
                s.send(_presence("unavailable", src, me))
            for src in sorted(src1.keys() - src0.keys()):
                s.send(_with_to(src1[src], me))

    async def _send(self, target: str, stanza: Element) -> None:
        try:
            jid = JID.parse(target)
        except InvalidJID:
            return
        if self.server.is_local_user_domain(jid):
            s = self.router.sessions.get(jid)
            if s is not None and s.available:
                s.send(stanza)
            return
        await self.router.route(stanza)

    # --- jabber:iq:privacy ----------------------------------------------------------------------

    def _own(self, ctx: Routed) -> Session | None:
        """The requesting session, when it asks about its own account."""
        origin = ctx.origin
        if origin is None or str(ctx.to) != origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", "privacy lists are the owner's business", ctx.origin)
            return None
        if ctx.stanza[0].tag != q(NS_PRIVACY, "query"):
            origin.send(_own_reply(error_reply(ctx.stanza, "bad-request", "expected <query/>")))
            return None
        return origin

    async def _get(self, ctx: Routed) -> bool:
        origin = self._own(ctx)
        if origin is None:
            return True
        children = list(ctx.stanza[0])
        ul = await self.lists(origin.bare)
        blocks = sorted((await self.policy.get(origin.bare)).block)
        query = Element(q(NS_PRIVACY, "query"))
        if not children:
            active = getattr(origin, "privacy_active", None)
            if active is not None:
                SubElement(query, q(NS_PRIVACY, "active"), {"name": active})
            default = ul.default or (BLOCKLIST if blocks else None)
            if default is not None:
                SubElement(query, q(NS_PRIVACY, "default"), {"name": default})
            for name in sorted(ul.lists) + ([BLOCKLIST] if blocks else []):
                SubElement(query, q(NS_PRIVACY, "list"), {"name": name})
        elif len(children) == 1 and children[0].tag == q(NS_PRIVACY, "list") and children[0].get("name"):
            name = children[0].get("name", "")
            view = self._view(ul, blocks, name)
            if view is None:
                origin.send(_own_reply(error_reply(ctx.stanza, "item-not-found", f"no list named {name!r}")))
                return True
            lst = SubElement(query, q(NS_PRIVACY, "list"), {"name": name})
            lst.extend(view)
        else:
            origin.send(_own_reply(error_reply(ctx.stanza, "bad-request",
                                               "ask for the list names or for one named list")))
            return True
        origin.send(_own_reply(iq_result(ctx.stanza, query)))
        return True

    def _view(self, ul: UserLists, blocks: list[str], name: str) -> list[Element] | None:
        head = [PrivacyItem("deny", 0, "jid", j).element(i + 1) for i, j in enumerate(blocks)]
        if name == BLOCKLIST:
            return head
        items = ul.lists.get(name)
        if items is None:
            return None
        if name != ul.default:
            return [it.element(it.order) for it in items]
        return head + [it.element(len(head) + i + 1) for i, it in enumerate(items)]

    async def _set(self, ctx: Routed) -> bool:
        origin = self._own(ctx)
        if origin is None:
            return True
        children = list(ctx.stanza[0])
        if len(children) != 1 or namespace(children[0].tag) != NS_PRIVACY:
            origin.send(_own_reply(error_reply(ctx.stanza, "bad-request",
                                               "a set carries exactly one <active/>, <default/> or <list/>")))
            return True
        el = children[0]
        what = local_name(el.tag)
        name = el.get("name")
        ul = await self.lists(origin.bare)
        try:
            async with ul.lock:
                if what == "active":
                    await self._set_active(origin, ul, name)
                elif what == "default":
                    await self._set_default(origin, ul, name)
                elif what == "list" and name:
                    if len(name) > MAX_NAME:
                        raise BadList("bad-request", f"a list name has at most {MAX_NAME} characters")
                    if len(el):
                        await self._edit(origin, ul, name, el)
                    else:
                        await self._remove(origin, ul, name)
                else:
                    raise BadList("bad-request", "expected <active/>, <default/> or a named <list/>")
        except BadList as e:
            origin.send(_own_reply(error_reply(ctx.stanza, e.condition, e.text)))
            return True
        origin.send(_own_reply(iq_result(ctx.stanza)))
        return True

    def _exists(self, ul: UserLists, name: str) -> bool:
        return name == BLOCKLIST or name in ul.lists

    def _used_elsewhere(self, origin: Session, ul: UserLists, name: str) -> bool:
        """Whether the list applies to a session of the user other than `origin`."""
        for s in self.router.sessions.of(origin.bare):
            if s is origin:
                continue
            active = getattr(s, "privacy_active", None)
            if active == name or (active is None and name == ul.default):
                return True
        return False

    async def _set_active(self, origin: Session, ul: UserLists, name: str | None) -> None:
        if name is not None and not self._exists(ul, name):
            raise BadList("item-not-found", f"no list named {name!r}")

        def swap() -> None:
            origin.privacy_active = name  # type: ignore[attr-defined]

        await self.transition(origin.bare, swap)

    async def _set_default(self, origin: Session, ul: UserLists, name: str | None) -> None:
        if name is not None and not self._exists(ul, name):
            raise BadList("item-not-found", f"no list named {name!r}")
        target = None if name in (None, BLOCKLIST) else name
        if target == ul.default:
            return
        if ul.default is not None and self._used_elsewhere(origin, ul, ul.default):
            raise BadList("conflict", f"the default list {ul.default!r} is in use by another of your sessions")
        owner = origin.bare
        pol = await self.policy.get(owner)
        head: list[str] = []
        rest: list[PrivacyItem] = []
        if target is not None:
            head, rest = split_head(ul.lists[target])
            rest = renumber(rest)
        add = [j for j in head if j not in pol.block]
        self._check_block_room(pol, add, [])

        async def write() -> None:
            if add:
                await self.repos.policy.add(owner, "block", add)
            if target is not None:
                await self.store.save(owner, target, [it.to_json() for it in rest], make_default=True)
            else:
                await self.store.set_default(owner, None)

        def swap() -> None:
            pol.block.update(add)
            if target is not None:
                ul.lists[target] = rest
            ul.default = target

        await self.transition(owner, swap, write)
        self._push_blocks(owner, "block", add)
        if target is not None and head:
            self._push_list(owner, target)

    async def _edit(self, origin: Session, ul: UserLists, name: str, el: Element) -> None:
        owner = origin.bare
        items = parse_items(el, await self._roster(owner))
        pol = await self.policy.get(owner)
        if name == BLOCKLIST:
            if not all(it.blocks for it in items):
                raise BadList("bad-request", f"{BLOCKLIST} holds blocked JIDs only: items of type jid, "
                                             "action deny, with no child element")
            await self._replace_blocks(owner, ul, pol, split_head(items)[0])
            return
        if name not in ul.lists and len(ul.lists) >= MAX_LISTS:
            raise BadList("resource-constraint", f"at most {MAX_LISTS} privacy lists")
        if name != ul.default:
            def swap() -> None:
                ul.lists[name] = items

            async def write() -> None:
                await self.store.save(owner, name, [it.to_json() for it in items])

            await self.transition(owner, swap, write)
            self._push_list(owner, name)
            return
        head, rest = split_head(items)
        rest = renumber(rest)
        await self._replace_blocks(owner, ul, pol, head, (name, rest))

    async def _replace_blocks(self, owner: str, ul: UserLists, pol: UserPolicy, blocks: list[str],
                              default: tuple[str, list[PrivacyItem]] | None = None) -> None:
        """Make `blocks` the block list, and store the default list's other items if given."""
        add = [j for j in blocks if j not in pol.block]
        remove = sorted(pol.block - set(blocks))
        self._check_block_room(pol, add, remove)

        async def write() -> None:
            # Blocking before unblocking: a failure half-way leaves too much blocked, not too little.
            if add:
                await self.repos.policy.add(owner, "block", add)
            if default is not None:
                await self.store.save(owner, default[0], [it.to_json() for it in default[1]])
            if remove:
                await self.repos.policy.remove(owner, "block", remove)

        def swap() -> None:
            pol.block.update(add)
            pol.block.difference_update(remove)
            if default is not None:
                ul.lists[default[0]] = default[1]

        await self.transition(owner, swap, write)
        self._push_blocks(owner, "block", add)
        if remove:
            self._push_blocks(owner, "unblock", remove)
        self._push_list(owner, BLOCKLIST)
        if ul.default is not None:
            self._push_list(owner, ul.default)

    def _check_block_room(self, pol: UserPolicy, add: list[str], remove: list[str]) -> None:
        if len(pol.block) + len(add) - len(remove) > MAX_ENTRIES:
            raise BadList("resource-constraint", f"at most {MAX_ENTRIES} blocked entries")

    async def _remove(self, origin: Session, ul: UserLists, name: str) -> None:
        owner = origin.bare
        if name == BLOCKLIST:
            await self._replace_blocks(owner, ul, await self.policy.get(owner), [])
            return
        if name not in ul.lists:
            raise BadList("item-not-found", f"no list named {name!r}")
        if self._used_elsewhere(origin, ul, name):
            raise BadList("conflict", f"the list {name!r} is in use by another of your sessions")

        def swap() -> None:
            del ul.lists[name]
            if ul.default == name:
                ul.default = None
            if getattr(origin, "privacy_active", None) == name:
                origin.privacy_active = None  # type: ignore[attr-defined]

        async def write() -> None:
            await self.store.delete(owner, name)

        await self.transition(owner, swap, write)
        self._push_list(owner, name)

    # --- pushes ---------------------------------------------------------------------------------

    def _push_list(self, owner: str, name: str) -> None:
        for s in self.router.sessions.of(owner):
            iq = Element(q(NS_CLIENT, "iq"), {"type": "set", "id": "privacy-push", "to": str(s.jid)})
            SubElement(SubElement(iq, q(NS_PRIVACY, "query")), q(NS_PRIVACY, "list"), {"name": name})
            s.send(iq)

    def _push_blocks(self, owner: str, action: str, targets: list[str]) -> None:
        if action == "block" and not targets:
            return
        for s in self.router.sessions.of(owner):
            iq = Element(q(NS_CLIENT, "iq"), {"type": "set", "id": "block-push", "to": str(s.jid)})
            el = SubElement(iq, q(NS_BLOCKING, action))
            for t in targets:
                SubElement(el, q(NS_BLOCKING, "item"), {"jid": t})
            s.send(iq)


def _inbound_kind(ctx: Routed) -> str | None:
    if ctx.kind == "presence":
        return "presence-in" if ctx.type in ("available", "unavailable") else None
    return ctx.kind  # message | iq


def _own_reply(stanza: Element) -> Element:
    # Answers to the user's own account carry no 'from', as for the roster and blocking.
    stanza.attrib.pop("from", None)
    return stanza


module_class = PrivacyModule
