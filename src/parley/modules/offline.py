"""Offline messages (XEP-0160) with delayed delivery stamps (XEP-0203) and flexible offline
retrieval (XEP-0013). SPEC C2: stored and delivered at next login; with storage switched
off the sender gets service-unavailable, nothing is silently dropped. Chat states and
errors are never stored."""

from __future__ import annotations

import copy
import datetime as dt
from xml.etree.ElementTree import Element, SubElement

from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.xmpp.stanza import (
    NS_CLIENT,
    error_reply,
    from_stored,
    iq_result,
    local_name,
    namespace,
    q,
)
from parley.xmpp.xmlstream import serialize

NS_DELAY = "urn:xmpp:delay"
NS_OFFLINE = "http://jabber.org/protocol/offline"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_HINTS = "urn:xmpp:hints"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
# Payloads that carry nothing a person would miss when they come back.
_TRANSIENT = {NS_CHATSTATES}


def storable(stanza: Element) -> bool:
    """Whether an undeliverable message is worth keeping (XEP-0160 section 3, XEP-0334)."""
    if stanza.get("type", "normal") not in ("normal", "chat"):
        return False
    hints = {local_name(c.tag) for c in stanza if namespace(c.tag) == NS_HINTS}
    if "store" in hints:
        return True
    if hints & {"no-store", "no-permanent-store"}:
        return False
    for c in stanza:
        ns = namespace(c.tag)
        if ns == NS_CLIENT and local_name(c.tag) in ("body", "subject"):
            return True
        if ns not in _TRANSIENT and ns != NS_CLIENT and ns != NS_HINTS:
            return True
    return False


def utc_stamp(at: float | None = None) -> str:
    t = dt.datetime.now(dt.UTC) if at is None else dt.datetime.fromtimestamp(at, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class OfflineModule(Module):
    name = "offline"
    server_features = ("msgoffline", NS_OFFLINE)

    async def start(self) -> None:
        self.server.signals.connect("initial-presence", self._flush)
        self.hooks.add(f"iq-get/bare/{NS_OFFLINE}", self._flexible)
        self.hooks.add(f"iq-set/bare/{NS_OFFLINE}", self._flexible)
        self.hooks.add(f"iq-get/bare/{NS_DISCO_INFO}", self._node_info, priority=10)
        self.hooks.add(f"iq-get/bare/{NS_DISCO_ITEMS}", self._node_items, priority=10)

    def _own_node(self, ctx: Routed) -> bool:
        return ctx.stanza[0].get("node") == NS_OFFLINE

    async def _node_info(self, ctx: Routed) -> bool:
        """XEP-0013 2.2: the number of stored messages, on the offline node."""
        if not self._own_node(ctx):
            return False
        if ctx.origin is None or str(ctx.to) != ctx.origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", None, ctx.origin)
            return True
        ctx.origin.flexible_offline = True  # type: ignore[attr-defined]
        query = Element(q(NS_DISCO_INFO, "query"), {"node": NS_OFFLINE})
        SubElement(query, q(NS_DISCO_INFO, "identity"), {"category": "automation", "type": "message-list"})
        SubElement(query, q(NS_DISCO_INFO, "feature"), {"var": NS_OFFLINE})
        form = SubElement(query, q(NS_DATA, "x"), {"type": "result"})
        ft = SubElement(form, q(NS_DATA, "field"), {"var": "FORM_TYPE", "type": "hidden"})
        SubElement(ft, q(NS_DATA, "value")).text = NS_OFFLINE
        count = SubElement(form, q(NS_DATA, "field"), {"var": "number_of_messages"})
        SubElement(count, q(NS_DATA, "value")).text = str(await self.repos.offline.count(ctx.origin.bare))
        res = iq_result(ctx.stanza, query)
        res.attrib.pop("from", None)
        ctx.origin.send(res)
        return True

    async def _node_items(self, ctx: Routed) -> bool:
        """XEP-0013 2.3: one item per stored message, named by its sender."""
        if not self._own_node(ctx):
            return False
        if ctx.origin is None or str(ctx.to) != ctx.origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", None, ctx.origin)
            return True
        ctx.origin.flexible_offline = True  # type: ignore[attr-defined]
        query = Element(q(NS_DISCO_ITEMS, "query"), {"node": NS_OFFLINE})
        for node, sender in await self.headers(ctx.origin.bare):
            SubElement(query, q(NS_DISCO_ITEMS, "item"), {"jid": ctx.origin.bare, "node": node, "name": sender})
        res = iq_result(ctx.stanza, query)
        res.attrib.pop("from", None)
        ctx.origin.send(res)
        return True

    async def store(self, ctx: Routed) -> bool:
        """Keep a message for an offline user; False means the sender must get an error."""
        if not storable(ctx.stanza):
            return True  # dropped on purpose: nothing to keep
        if not self.config.im.offline:
            return False
        stanza = copy.copy(ctx.stanza)
        stanza.attrib = dict(ctx.stanza.attrib)
        for old in stanza.findall(q(NS_DELAY, "delay")):
            if old.get("from") == self.server.domain:
                stanza.remove(old)
        SubElement(stanza, q(NS_DELAY, "delay"), {"from": self.server.domain, "stamp": utc_stamp()}).text = "Offline Storage"
        owner = str(ctx.to.bare)
        ok = await self.repos.offline.store(owner, str(ctx.frm), serialize(stanza).decode(),
                                            self.config.im.max_offline_per_user)
        if not ok:
            self.log.info("offline store of %s is full", owner)
        else:
            await self.server.signals.emit("message-offline", ctx)
        return ok

    async def _flush(self, session: Session) -> None:
        if session.priority < 0:
            return
        # While any resource retrieves by XEP-0013, no resource is flooded (XEP-0013 2.2).
        if any(getattr(s, "flexible_offline", False) for s in self.router.sessions.of(session.bare)):
            return
        msgs = await self.repos.offline.fetch(session.bare)
        if not msgs:
            return
        for m in msgs:
            el = from_stored(m.stanza)
            el.set("to", str(session.jid))
            session.send(el)
        await self.repos.offline.delete(session.bare, [m.id for m in msgs])

    async def _flexible(self, ctx: Routed) -> bool:
        origin = ctx.origin
        if origin is None or str(ctx.to) != origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", None, origin)
            return True
        # A client that uses XEP-0013 retrieves the messages itself.
        origin.flexible_offline = True  # type: ignore[attr-defined]
        query = ctx.stanza[0]
        msgs = await self.repos.offline.fetch(origin.bare)
        by_node = {_node(m.created_at, m.id): m for m in msgs}
        remove: list[int] = []
        if query.find(q(NS_OFFLINE, "fetch")) is not None:
            if ctx.type != "get":
                origin.send(error_reply(ctx.stanza, "bad-request", "fetch is a get"))
                return True
            for node, m in by_node.items():
                origin.send(self._tagged(m.stanza, node, origin))
        elif query.find(q(NS_OFFLINE, "purge")) is not None:
            if ctx.type != "set":
                origin.send(error_reply(ctx.stanza, "bad-request", "purge is a set"))
                return True
            remove = [m.id for m in msgs]
        else:
            items = query.findall(q(NS_OFFLINE, "item"))
            if not items:
                origin.send(error_reply(ctx.stanza, "bad-request", "expected fetch, purge or item"))
                return True
            for it in items:
                m = by_node.get(it.get("node", ""))
                if m is None:
                    origin.send(error_reply(ctx.stanza, "item-not-found", f"no offline message {it.get('node')}"))
                    return True
                if it.get("action") == "view":
                    origin.send(self._tagged(m.stanza, it.get("node", ""), origin))
                elif it.get("action") == "remove":
                    remove.append(m.id)
                else:
                    origin.send(error_reply(ctx.stanza, "bad-request", "action is view or remove"))
                    return True
        if remove:
            await self.repos.offline.delete(origin.bare, remove)
        res = iq_result(ctx.stanza)
        res.attrib.pop("from", None)
        origin.send(res)
        return True

    def _tagged(self, xml: str, node: str, session: Session) -> Element:
        el = from_stored(xml)
        el.set("to", str(session.jid))
        SubElement(el, q(NS_OFFLINE, "offline")).append(Element(q(NS_OFFLINE, "item"), {"node": node}))
        return el

    async def headers(self, owner: str) -> list[tuple[str, str]]:
        """(node, sender) of each stored message, for disco#items on the offline node."""
        return [(_node(m.created_at, m.id), m.sender) for m in await self.repos.offline.fetch(owner)]


def _node(created_at: float, id_: int) -> str:
    return f"{utc_stamp(created_at)}-{id_}"


module_class = OfflineModule
