"""Presence (RFC 6121 sections 3 and 4) with the seed's rules (SPEC C2): subscriptions and
every transition of RFC 6121 Appendix A, pre-approval, probes, broadcast to subscribers,
directed presence, unavailable presence on disconnect, presence sharing switch, auto-approval
policy, max watchers, ad-hoc (non-roster) subscriptions and the presence change throttle.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import replace
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.modules.roster import Roster
from parley.router import Routed
from parley.sessions import Session
from parley.storage.repos import RosterItem
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, error_element, error_reply, from_stored, q
from parley.xmpp.xmlstream import serialize

SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")


def _presence(type_: str | None, frm: str, to: str) -> Element:
    el = Element(q(NS_CLIENT, "presence"), {"from": frm, "to": to})
    if type_:
        el.set("type", type_)
    return el


class PresenceModule(Module):
    name = "presence"

    def __init__(self, server):  # type: ignore[no-untyped-def]
        super().__init__(server)
        # watched bare JID -> {watcher full JID: expiry (monotonic)}
        self.adhoc: dict[str, dict[str, float]] = {}
        self._last_broadcast: dict[str, float] = {}
        self._held: dict[int, tuple[Session, Element, asyncio.TimerHandle]] = {}

    async def start(self) -> None:
        self.hooks.add("presence/broadcast", self._on_broadcast)
        self.hooks.add("presence/bare", self._on_addressed)
        self.hooks.add("presence/full", self._on_addressed)
        self.hooks.add("presence/host", self._on_host)
        self.server.signals.connect("session-closed", self._session_closed)

    @property
    def roster(self):  # type: ignore[no-untyped-def]
        return self.server.modules["roster"]

    @property
    def policy(self):  # type: ignore[no-untyped-def]
        return self.server.modules["policy"]

    @property
    def sharing(self) -> bool:
        return self.config.presence.sharing

    # --- a client's own presence ------------------------------------------------------------

    async def _on_broadcast(self, ctx: Routed) -> bool:
        session = ctx.origin
        assert session is not None
        if ctx.type not in ("available", "unavailable"):
            if ctx.type in SUBSCRIPTION_TYPES or ctx.type == "probe":
                session.send(error_reply(ctx.stanza, "bad-request", f"a {ctx.type} presence needs a 'to'"))
            return True
        if ctx.type == "available":
            prio = ctx.stanza.findtext(q(NS_CLIENT, "priority"))
            try:
                priority = int(prio) if prio is not None else 0
                if not -128 <= priority <= 127:
                    raise ValueError
            except ValueError:
                session.send(error_reply(ctx.stanza, "bad-request", "priority must be an integer from -128 to 127"))
                return True
            session.priority = priority
        rate = self.config.presence.throttle_per_second
        if rate and session.available and ctx.type == "available":
            now = time.monotonic()
            last = self._last_broadcast.get(session.bare, 0.0)
            if now - last < 1.0 / rate:
                self._hold(session, ctx.stanza, last + 1.0 / rate - now)
                return True
            self._last_broadcast[session.bare] = now
        await self.broadcast(session, ctx.stanza)
        return True

    def _hold(self, session: Session, stanza: Element, delay: float) -> None:
        """Keep only the newest presence of a user who changes too fast; send it later."""
        key = id(session)
        held = self._held.pop(key, None)
        if held is not None:
            held[2].cancel()

        def flush() -> None:
            self._held.pop(key, None)
            self._last_broadcast[session.bare] = time.monotonic()
            asyncio.get_running_loop().create_task(self.broadcast(session, stanza))

        handle = asyncio.get_running_loop().call_later(delay, flush)
        self._held[key] = (session, stanza, handle)

    async def broadcast(self, session: Session, stanza: Element) -> None:
        available = stanza.get("type") != "unavailable"
        first = available and not session.available
        stanza.set("from", str(session.jid))
        stanza.attrib.pop("to", None)
        if not available and not session.available:
            return
        session.available = available
        session.presence = stanza if available else None
        if not available:
            held = self._held.pop(id(session), None)
            if held is not None:
                held[2].cancel()
        roster: Roster = await self.roster.get(session.bare)
        me = session.jid
        if self.sharing:
            for contact in roster.subscribers():
                await self._to_contact(me, contact, stanza)
            for watcher in self._adhoc_watchers(session.bare):
                self._deliver_full(watcher, stanza)
        # The user's own resources always see the change, the sender included (RFC 6121 4.2.2).
        data = serialize(stanza)
        for other in self.router.sessions.of(session.bare):
            if other.available or other is session:
                other.send_bytes(data)
        if not available:
            await self.server.signals.emit("presence-unavailable", session)
            for target in getattr(session, "directed", set()):
                await self._deliver(JID.parse(target), stanza)
            getattr(session, "directed", set()).clear()
            return
        if first:
            await self._initial(session, roster)

    async def _initial(self, session: Session, roster: Roster) -> None:
        # Probes: the current presence of everyone the user is subscribed to.
        if self.sharing:
            for contact in roster.subscriptions():
                await self.send_presence_of(contact, session.jid, probe=True)
        for other in self.router.sessions.of(session.bare):
            if other is not session and other.available and other.presence is not None:
                session.send(other.presence)
        for item in list(roster.items.values()):
            if item.pending_in and item.pending_in_stanza:
                session.send(from_stored(item.pending_in_stanza))
        await self.server.signals.emit("initial-presence", session)

    async def _to_contact(self, me: JID, contact: str, stanza: Element) -> None:
        """Deliver my presence to one subscriber, as both users' policies allow."""
        try:
            cjid = JID.parse(contact)
        except InvalidJID:
            return
        if not await self.policy.may_see(str(me.bare), cjid, subscribed=True):
            return
        if not self.server.is_local_user_domain(cjid):
            if await self.policy.may_send_presence(me, cjid):
                await self.router.route(_with_to(stanza, contact))
            return
        if await self.policy.is_blocked(contact, me):
            return
        sessions = [s for s in self.router.sessions.of(contact)
                    if s.available and await self.policy.may_send_presence(me, s.jid)]
        if sessions:
            data = serialize(_with_to(stanza, contact))
            for s in sessions:
                s.send_bytes(data)

    async def send_presence_of(self, owner: str, to: JID, probe: bool = False) -> None:
        """Send `owner`'s current presence (every available resource) to `to`."""
        if not self.sharing:
            return
        try:
            owner_jid = JID.parse(owner)
        except InvalidJID:
            return
        if not self.server.is_local_user_domain(owner_jid):
            if probe and await self.policy.may_send_presence(to, owner_jid, probe=True):
                await self.router.route(_presence("probe", str(to.bare), owner))
            return
        if not await self.policy.may_see(owner, to, subscribed=True) or await self.policy.is_blocked(str(to.bare), owner_jid):
            return
        if probe and not await self.policy.may_send_presence(to, owner_jid, probe=True):
            return
        for s in self.router.sessions.of(owner):
            if s.available and s.presence is not None and await self.policy.may_send_presence(s.jid, to):
                await self._deliver(to, _with_to(s.presence, str(to)))

    async def _deliver(self, to: JID, stanza: Element) -> None:
        """Presence to a JID: a full JID's session, every available resource of a bare
        JID, or the router for anything not local."""
        if not self.server.is_local_user_domain(to):
            await self.router.route(stanza)
            return
        if to.resource is not None:
            self._deliver_full(str(to), stanza)
            return
        data = serialize(stanza)
        for s in self.router.sessions.of(str(to)):
            if s.available:
                s.send_bytes(data)

    def _deliver_full(self, full: str, stanza: Element) -> None:
        try:
            jid = JID.parse(full)
        except InvalidJID:
            return
        s = self.router.sessions.get(jid)
        if s is not None:
            s.send(_with_to(stanza, full))

    async def _session_closed(self, session: Session) -> None:
        self.adhoc_forget(str(session.jid))
        held = self._held.pop(id(session), None)
        if held is not None:
            held[2].cancel()
        if session.available:
            await self.broadcast(session, _presence("unavailable", str(session.jid), ""))

    # --- presence addressed to someone ------------------------------------------------------------

    async def _on_host(self, ctx: Routed) -> bool:
        return True  # presence to the server itself has no meaning here

    async def _on_addressed(self, ctx: Routed) -> bool:
        t = ctx.type
        if t in SUBSCRIPTION_TYPES:
            await self._subscription(ctx)
            return True
        if t == "probe":
            await self._probe(ctx)
            return True
        if t == "error":
            if ctx.to.resource is not None:
                self.router.deliver_full(ctx.to, ctx.stanza)
            return True
        if t not in ("available", "unavailable"):
            self.router.bounce(ctx.stanza, "bad-request", f"unknown presence type {t!r}", ctx.origin)
            return True
        # Directed presence (RFC 6121 4.6).
        if ctx.origin is not None:
            roster: Roster = await self.roster.get(ctx.origin.bare)
            item = roster.get(str(ctx.to.bare))
            directed = getattr(ctx.origin, "directed", None)
            if directed is not None:
                if t == "available" and not (item and item.has_from):
                    directed.add(str(ctx.to))
                elif t == "unavailable":
                    directed.discard(str(ctx.to))
        if not self.sharing and ctx.origin is not None and ctx.frm.bare != ctx.to.bare:
            return True
        await self._deliver(ctx.to, ctx.stanza)
        return True

    async def _probe(self, ctx: Routed) -> None:
        """A probe from a client: answered when subscribed; a temporary (ad-hoc) subscription
        when the target is not a contact and the administrator allows those."""
        if ctx.origin is None:
            await self.send_presence_of(str(ctx.to.bare), ctx.frm)
            return
        roster: Roster = await self.roster.get(ctx.origin.bare)
        target = str(ctx.to.bare)
        item = roster.get(target)
        if item is not None and item.has_to:
            await self.send_presence_of(target, ctx.origin.jid)
            return
        cfg = self.config.presence
        if not cfg.adhoc_enabled:
            self.router.bounce(ctx.stanza, "not-allowed", "ad-hoc presence subscriptions are disabled", ctx.origin)
            return
        if await self.policy.auto_approve(target, ctx.origin.jid) is not True:
            self.router.bounce(ctx.stanza, "forbidden", "this user does not share presence with you", ctx.origin)
            return
        now = time.monotonic()
        self._adhoc_expire(now)
        total = sum(len(w) for w in self.adhoc.values())
        watchers = self.adhoc.setdefault(target, {})
        if cfg.adhoc_max and str(ctx.origin.jid) not in watchers and total >= cfg.adhoc_max:
            self.router.bounce(ctx.stanza, "resource-constraint",
                               f"at most {cfg.adhoc_max} ad-hoc subscriptions at once", ctx.origin)
            return
        watchers[str(ctx.origin.jid)] = now + cfg.adhoc_ttl
        await self.send_presence_of(target, ctx.origin.jid)

    def _adhoc_expire(self, now: float) -> None:
        for target in list(self.adhoc):
            live = {w: exp for w, exp in self.adhoc[target].items() if exp > now}
            if live:
                self.adhoc[target] = live
            else:
                del self.adhoc[target]

    def _adhoc_watchers(self, target: str) -> list[str]:
        watchers = self.adhoc.get(target)
        if not watchers:
            return []
        now = time.monotonic()
        live = [w for w, exp in watchers.items() if exp > now]
        if len(live) != len(watchers):
            self._adhoc_expire(now)
        return live

    def adhoc_forget(self, watcher: str) -> None:
        for target in list(self.adhoc):
            self.adhoc[target].pop(watcher, None)
            if not self.adhoc[target]:
                del self.adhoc[target]

    # --- subscriptions (RFC 6121 section 3 and Appendix A) ------------------------------------------

    async def _subscription(self, ctx: Routed) -> None:
        user = ctx.frm.bare
        contact = ctx.to.bare
        stanza = _with_to(ctx.stanza, str(contact))
        stanza.set("from", str(user))
        if ctx.origin is not None:
            if not await self._outbound(ctx, user, contact, stanza):
                return
        if self.server.is_local_user_domain(contact):
            await self.inbound(ctx.type, user, contact, stanza)
        elif ctx.origin is not None:
            await self.router.route(stanza)

    async def _outbound(self, ctx: Routed, user: JID, contact: JID, stanza: Element) -> bool:
        """The sender's side of a subscription stanza; False when it must not be routed."""
        assert ctx.origin is not None
        roster: Roster = await self.roster.get(str(user))
        c = str(contact)
        t = ctx.type
        async with roster.lock:
            item = roster.get(c)
            if t == "subscribe":
                if item is None or not item.visible:
                    refusal = await self.roster.refuse_new_contact(str(user), contact)
                    if refusal:
                        ctx.origin.send(error_reply(ctx.stanza, "resource-constraint", refusal, type_="wait"))
                        return False
                base = item if item is not None else RosterItem(c)
                if not base.has_to and not (base.ask and base.visible):
                    await self.roster.update(roster, [replace(base, ask=True, visible=True)])
                elif not base.visible:
                    await self.roster.update(roster, [replace(base, visible=True)])
                return True
            if t == "unsubscribe":
                if item is not None and (item.has_to or item.ask):
                    sub = {"to": "none", "both": "from"}.get(item.subscription, item.subscription)
                    await self.roster.update(roster, [replace(item, subscription=sub, ask=False)])
                return True
            if t == "subscribed":
                if item is not None and item.has_from:
                    return False
                if item is not None and item.pending_in:
                    if await self._watchers_full(roster):
                        ctx.origin.send(error_reply(ctx.stanza, "resource-constraint",
                                                    f"you have the most watchers allowed ({self.config.presence.max_watchers})"))
                        return False
                    if not item.visible:
                        refusal = await self.roster.refuse_new_contact(str(user), contact)
                        if refusal:
                            ctx.origin.send(error_reply(ctx.stanza, "resource-constraint", refusal, type_="wait"))
                            return False
                    sub = {"none": "from", "to": "both"}[item.subscription]
                    await self.roster.update(roster, [replace(item, subscription=sub, pending_in=False,
                                                              pending_in_stanza=None, visible=True)])
                    approved = True
                else:
                    # Pre-approval (RFC 6121 3.4): remembered, nothing is sent.
                    if item is None or not item.visible:
                        refusal = await self.roster.refuse_new_contact(str(user), contact)
                        if refusal:
                            ctx.origin.send(error_reply(ctx.stanza, "resource-constraint", refusal, type_="wait"))
                            return False
                    base = item if item is not None else RosterItem(c)
                    await self.roster.update(roster, [replace(base, approved=True, visible=True)])
                    return False
            else:  # unsubscribed
                if item is None:
                    return True
                if item.has_from or item.pending_in or item.approved:
                    sub = {"from": "none", "both": "to"}.get(item.subscription, item.subscription)
                    await self.roster.update(roster, [replace(item, subscription=sub, pending_in=False,
                                                              pending_in_stanza=None, approved=False)])
                approved = False
        if t == "subscribed" and approved:
            # Routed first so the contact's roster says 'to' before the presence arrives.
            if self.server.is_local_user_domain(contact):
                await self.inbound("subscribed", user, contact, stanza)
            else:
                await self.router.route(stanza)
            await self.send_presence_of(str(user), contact)
            return False
        if t == "unsubscribed":
            await self._unavailable_to(str(user), contact)
        return True

    async def _watchers_full(self, roster: Roster) -> bool:
        limit = self.config.presence.max_watchers
        return bool(limit) and len(roster.subscribers()) >= limit

    async def inbound(self, t: str, user: JID, contact: JID, stanza: Element) -> None:
        """The contact's side: `user` sent `t` to our local user `contact`."""
        if await self.server.repos.users.get(str(contact)) is None:
            if t == "subscribe":
                await self._reply(contact, user, "unsubscribed")
            return
        roster: Roster = await self.roster.get(str(contact))
        u = str(user)
        async with roster.lock:
            item = roster.get(u)
            if t == "subscribe":
                if item is not None and item.has_from:
                    reply = "subscribed"
                elif item is not None and item.approved:
                    if await self._watchers_full(roster):
                        reply = "error"
                    else:
                        sub = {"none": "from", "to": "both"}[item.subscription]
                        await self.roster.update(roster, [replace(item, subscription=sub, approved=False)])
                        reply = "approved"
                else:
                    decision = await self.policy.auto_approve(str(contact), user)
                    # A requester already in the target's contact list is approved (seed).
                    if decision is False and item is not None and item.visible:
                        decision = True
                    if decision is None:
                        return
                    if decision and await self._watchers_full(roster):
                        reply = "error"
                    elif decision:
                        if (item is None or not item.visible) and await self.roster.is_full(str(contact)):
                            reply = "error"
                        else:
                            base = item if item is not None else RosterItem(u)
                            sub = {"none": "from", "to": "both"}.get(base.subscription, base.subscription)
                            await self.roster.update(roster, [replace(base, subscription=sub, visible=True,
                                                                      pending_in=False, pending_in_stanza=None)])
                            reply = "approved"
                    else:
                        base = item if item is not None else RosterItem(u, visible=False)
                        clean = copy.copy(stanza)
                        await self.roster.update(roster, [replace(base, pending_in=True,
                                                                  pending_in_stanza=serialize(clean).decode())],
                                                 push=base.visible)
                        reply = "ask"
            elif t == "subscribed":
                if item is None or not item.ask:
                    return
                sub = {"none": "to", "from": "both"}.get(item.subscription, item.subscription)
                await self.roster.update(roster, [replace(item, subscription=sub, ask=False)])
                reply = "deliver"
            elif t == "unsubscribe":
                if item is None or not (item.has_from or item.pending_in):
                    return
                sub = {"from": "none", "both": "to"}.get(item.subscription, item.subscription)
                await self.roster.update(roster, [replace(item, subscription=sub, pending_in=False,
                                                          pending_in_stanza=None)], push=item.visible)
                reply = "deliver-unavailable"
            else:  # unsubscribed
                if item is None or not (item.has_to or item.ask):
                    return
                sub = {"to": "none", "both": "from"}.get(item.subscription, item.subscription)
                await self.roster.update(roster, [replace(item, subscription=sub, ask=False)])
                reply = "deliver"
        if reply == "subscribed":
            await self._reply(contact, user, "subscribed")
        elif reply == "approved":
            await self._reply(contact, user, "subscribed")
            await self.send_presence_of(str(contact), user)
        elif reply == "error":
            err = _presence("error", str(contact), u)
            err.append(error_element("resource-constraint", f"{contact} cannot take more contacts or watchers", "wait"))
            await self._deliver(user, err)
            await self._reply(contact, user, "unsubscribed")
        elif reply == "ask":
            await self._deliver_to_user(str(contact), stanza)
        elif reply.startswith("deliver"):
            await self._deliver_to_user(str(contact), stanza)
            if reply == "deliver-unavailable":
                await self._unavailable_to(str(contact), user)

    async def _reply(self, frm: JID, to: JID, t: str) -> None:
        """A subscription answer the server gives on the user's behalf."""
        stanza = _presence(t, str(frm), str(to))
        if self.server.is_local_user_domain(to):
            await self.inbound(t, frm, to, stanza)
        else:
            await self.router.route(stanza)

    async def _deliver_to_user(self, bare: str, stanza: Element) -> None:
        data = serialize(stanza)
        for s in self.router.sessions.of(bare):
            if s.available or s.interested:
                s.send_bytes(data)

    async def _unavailable_to(self, owner: str, to: JID) -> None:
        for s in self.router.sessions.of(owner):
            if s.available:
                await self._deliver(to, _presence("unavailable", str(s.jid), str(to)))

    # --- called by other modules ----------------------------------------------------------------------

    async def item_removed(self, session: Session, item: RosterItem) -> None:
        user = session.jid.bare
        contact = JID.parse(item.contact)
        if item.has_to or item.ask:
            await self._route_or_inbound("unsubscribe", user, contact)
        if item.has_from or item.pending_in:
            await self._route_or_inbound("unsubscribed", user, contact)
            await self._unavailable_to(str(user), contact)

    async def _route_or_inbound(self, t: str, user: JID, contact: JID) -> None:
        stanza = _presence(t, str(user), str(contact))
        if self.server.is_local_user_domain(contact):
            await self.inbound(t, user, contact, stanza)
        else:
            await self.router.route(stanza)

    async def block_changed(self, owner: str, targets: list[str], blocked: bool) -> None:
        roster: Roster = await self.roster.get(owner)
        for target in targets:
            try:
                jid = JID.parse(target)
            except InvalidJID:
                continue
            if jid.local is None:
                continue
            if blocked:
                await self._unavailable_to(owner, jid)
            else:
                item = roster.get(str(jid.bare))
                if item is not None and item.has_from:
                    await self.send_presence_of(owner, jid)


def _with_to(stanza: Element, to: str) -> Element:
    el = copy.copy(stanza)
    el.attrib = dict(stanza.attrib)
    if to:
        el.set("to", to)
    else:
        el.attrib.pop("to", None)
    return el


module_class = PresenceModule
