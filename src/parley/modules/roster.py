"""Rosters (RFC 6121 section 2): get with versioning (XEP-0237), set, remove, pushes, and
the seed's contact list limits (SPEC C2: max contacts per user, default 200)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from xml.etree.ElementTree import Element, SubElement

from parley.module import Module
from parley.router import Routed
from parley.storage.repos import RosterItem
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, error_reply, iq_result, q

NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
MAX_NAME = 1023
MAX_GROUPS = 64
CACHE_SIZE = 20000


class RosterFull(Exception):
    """Adding the item would pass the owner's contact list limit."""


class Roster:
    """One user's roster, in memory, written through to the database."""

    def __init__(self, owner: str, version: int, items: dict[str, RosterItem]):
        self.owner = owner
        self.version = version
        self.items = items
        self.lock = asyncio.Lock()

    def get(self, contact: str) -> RosterItem | None:
        return self.items.get(contact)

    def visible(self) -> list[RosterItem]:
        return [i for i in self.items.values() if i.visible]

    def count(self) -> int:
        return sum(1 for i in self.items.values() if i.visible)

    def subscribers(self) -> list[str]:
        """Contacts that receive this user's presence."""
        return [c for c, i in self.items.items() if i.has_from]

    def subscriptions(self) -> list[str]:
        """Contacts whose presence this user receives."""
        return [c for c, i in self.items.items() if i.has_to]


class RosterModule(Module):
    name = "roster"
    account_features = (NS_ROSTER,)

    def __init__(self, server):  # type: ignore[no-untyped-def]
        super().__init__(server)
        self._cache: OrderedDict[str, Roster] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Roster]] = {}

    async def start(self) -> None:
        self.hooks.add(f"iq-get/bare/{NS_ROSTER}", self._on_get)
        self.hooks.add(f"iq-set/bare/{NS_ROSTER}", self._on_set)
        self.server.stream_features.append(Element(q(NS_ROSTERVER, "ver")))
        self.server.stream_features.append(Element(q(NS_PREAPPROVAL, "sub")))
        self.server.signals.connect("user-deleted", self._forget)
        self.server.signals.connect("session-binding", self._first_session)

    async def _first_session(self, session, full) -> None:  # type: ignore[no-untyped-def]
        # Bulk tools write rosters in the database; a user's first sign-in reloads it.
        roster = self._cache.get(session.bare)
        if roster is not None and not self.router.sessions.resources(session.bare) and not roster.lock.locked():
            del self._cache[session.bare]

    async def _forget(self, bare: str) -> None:
        self._cache.pop(bare, None)

    # --- access for other modules -------------------------------------------------------

    async def get(self, owner: str) -> Roster:
        roster = self._cache.get(owner)
        if roster is not None:
            self._cache.move_to_end(owner)
            return roster
        fut = self._loading.get(owner)
        if fut is not None:
            return await fut
        fut = asyncio.get_running_loop().create_future()
        self._loading[owner] = fut
        try:
            version, items = await self.repos.roster.load(owner)
            roster = Roster(owner, version, items)
            self._cache[owner] = roster
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            fut.set_result(roster)
            return roster
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            del self._loading[owner]

    def limit(self) -> int:
        return self.config.presence.max_contacts

    async def is_full(self, owner: str) -> bool:
        limit = self.limit()
        return bool(limit) and (await self.get(owner)).count() >= limit

    async def update(self, roster: Roster, items: Iterable[RosterItem], removed: Iterable[str] = (),
                     push: bool = True) -> None:
        """Write changed items durably, then update memory and push them to the owner's
        interested resources. Callers hold ``roster.lock``."""
        items = list(items)
        removed = list(removed)
        if not items and not removed:
            return
        roster.version = await self.repos.roster.save(roster.owner, items, removed)
        for it in items:
            roster.items[it.contact] = it
        for contact in removed:
            roster.items.pop(contact, None)
        if push:
            for it in items:
                if it.visible:
                    self.push(roster, it)
            for contact in removed:
                self.push(roster, RosterItem(contact, subscription="remove"))

    def push(self, roster: Roster, item: RosterItem) -> None:
        iq = Element(q(NS_CLIENT, "iq"), {"type": "set", "id": f"push{roster.version}-{id(item) & 0xffff:x}"})
        query = SubElement(iq, q(NS_ROSTER, "query"), {"ver": str(roster.version)})
        query.append(item_element(item))
        for s in self.router.sessions.of(roster.owner):
            if s.interested:
                iq.set("to", str(s.jid))
                s.send(iq)

    # --- the protocol ---------------------------------------------------------------------

    async def _on_get(self, ctx: Routed) -> bool:
        if ctx.origin is None or str(ctx.to) != ctx.origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", "you may only read your own roster", ctx.origin)
            return True
        roster = await self.get(ctx.origin.bare)
        ctx.origin.interested = True
        ver = ctx.stanza[0].get("ver")
        if ver is not None and ver == str(roster.version):
            ctx.origin.send(_own_result(ctx.stanza))
            return True
        query = Element(q(NS_ROSTER, "query"), {"ver": str(roster.version)})
        for it in sorted(roster.visible(), key=lambda i: i.contact):
            query.append(item_element(it))
        ctx.origin.send(_own_result(ctx.stanza, query))
        return True

    async def _on_set(self, ctx: Routed) -> bool:
        origin = ctx.origin
        if origin is None or str(ctx.to) != origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", "you may only change your own roster", origin)
            return True
        items = ctx.stanza[0].findall(q(NS_ROSTER, "item"))
        if len(items) != 1:
            origin.send(error_reply(ctx.stanza, "bad-request", "a roster set carries exactly one item"))
            return True
        el = items[0]
        try:
            contact = JID.parse(el.get("jid", ""))
        except InvalidJID as e:
            origin.send(error_reply(ctx.stanza, "jid-malformed", str(e)))
            return True
        if contact.resource is not None:
            contact = contact.bare
        contact_s = str(contact)
        if contact_s == origin.bare:
            origin.send(error_reply(ctx.stanza, "not-allowed", "you cannot add yourself as a contact"))
            return True
        roster = await self.get(origin.bare)
        if el.get("subscription") == "remove":
            await self._remove(ctx, roster, contact_s)
            return True
        name = el.get("name")
        groups = [(g.text or "").strip() for g in el.findall(q(NS_ROSTER, "group"))]
        problem = _check_item(name, groups)
        if problem:
            origin.send(error_reply(ctx.stanza, *problem))
            return True
        async with roster.lock:
            existing = roster.get(contact_s)
            if existing is None or not existing.visible:
                refusal = await self.refuse_new_contact(origin.bare, contact)
                if refusal:
                    origin.send(error_reply(ctx.stanza, "resource-constraint", refusal, type_="wait"))
                    return True
                base = existing or RosterItem(contact_s)
            else:
                base = existing
            item = replace(base, name=name, groups=groups, visible=True)
            await self.update(roster, [item])
        origin.send(_own_result(ctx.stanza))
        return True

    async def refuse_new_contact(self, owner: str, contact: JID) -> str | None:
        """Why the owner may not add this contact now (SPEC C2 contact limits), or None."""
        limit = self.limit()
        if limit and (await self.get(owner)).count() >= limit:
            return f"your contact list is full (at most {limit} contacts)"
        if limit and self.server.is_local_user_domain(contact):
            other = await self.get(str(contact))
            mine = other.get(owner)
            if (mine is None or not mine.visible) and other.count() >= limit:
                return f"{contact}'s contact list is full (at most {limit} contacts)"
        return None

    async def _remove(self, ctx: Routed, roster: Roster, contact: str) -> None:
        assert ctx.origin is not None
        async with roster.lock:
            item = roster.get(contact)
            if item is None or not item.visible:
                ctx.origin.send(error_reply(ctx.stanza, "item-not-found", f"{contact} is not in your roster"))
                return
            await self.update(roster, [], [contact])
        ctx.origin.send(_own_result(ctx.stanza))
        # RFC 6121 2.5.2: removing an item cancels the subscriptions both ways.
        presence = self.server.modules.get("presence")
        if presence is not None:
            await presence.item_removed(ctx.origin, item)  # type: ignore[attr-defined]


def item_element(item: RosterItem) -> Element:
    el = Element(q(NS_ROSTER, "item"), {"jid": item.contact})
    if item.subscription == "remove":
        el.set("subscription", "remove")
        return el
    el.set("subscription", item.subscription)
    if item.name:
        el.set("name", item.name)
    if item.ask:
        el.set("ask", "subscribe")
    if item.approved:
        el.set("approved", "true")
    for g in item.groups:
        SubElement(el, q(NS_ROSTER, "group")).text = g
    return el


def _own_result(iq: Element, *payload: Element) -> Element:
    """A result to an iq the client addressed to its own account (no 'from' needed)."""
    res = iq_result(iq, *payload)
    res.attrib.pop("from", None)
    return res


def _check_item(name: str | None, groups: list[str]) -> tuple[str, str] | None:
    """(condition, text) when the item is refused (RFC 6121 2.3.3)."""
    if name is not None and len(name) > MAX_NAME:
        return "not-acceptable", f"the name is longer than {MAX_NAME} characters"
    if len(groups) > MAX_GROUPS:
        return "not-acceptable", f"at most {MAX_GROUPS} groups per contact"
    for g in groups:
        if not g:
            return "not-acceptable", "a group name must not be empty"
        if len(g) > MAX_NAME:
            return "not-acceptable", f"a group name is longer than {MAX_NAME} characters"
    if len(set(groups)) != len(groups):
        return "bad-request", "a group is named twice"
    return None


module_class = RosterModule
