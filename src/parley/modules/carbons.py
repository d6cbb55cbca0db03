"""Message carbons (XEP-0280, urn:xmpp:carbons:2): a session that enables carbons sees
the conversations of its account's other resources, forwarded (XEP-0297).

- ``received``: a message to the account goes, as a copy, to every other available
  resource that enabled carbons and did not get the message itself.
- ``sent``: a message one resource sends goes, as a copy, to the account's other
  resources that enabled carbons.

Eligible (XEP-0280 section 6): type chat; type normal with a body or an IM payload
(chat states, receipts, markers). Never: errors, groupchat, headline, messages marked
``<private/>`` (the mark is removed before delivery) or hinted ``<no-copy/>`` (XEP-0334).
"""

from __future__ import annotations

import copy
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.modules.message import Delivery
from parley.router import Routed
from parley.sessions import Session
from parley.xmpp.stanza import NS_CLIENT, error_reply, iq_result, local_name, make, namespace, q

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
NS_SID = "urn:xmpp:sid:0"
# Payloads that make a normal message part of a conversation without a body.
IM_PAYLOADS = frozenset({
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:receipts",
    "urn:xmpp:chat-markers:0",
})


def carbons_enabled(session: Session) -> bool:
    return bool(getattr(session, "carbons", False))


def eligible(stanza: Element) -> bool:
    """Whether a message is copied at all (XEP-0280 section 6), before its private mark
    is removed."""
    type_ = stanza.get("type", "normal")
    if type_ not in ("chat", "normal"):
        return False
    if stanza.find(q(NS_CARBONS, "private")) is not None or stanza.find(q(NS_HINTS, "no-copy")) is not None:
        return False
    # A client's own carbon wrappers are never wrapped again.
    if stanza.find(q(NS_CARBONS, "received")) is not None or stanza.find(q(NS_CARBONS, "sent")) is not None:
        return False
    if type_ == "chat":
        return True
    return any(
        (namespace(c.tag) == NS_CLIENT and local_name(c.tag) == "body") or namespace(c.tag) in IM_PAYLOADS
        for c in stanza
    )


def wrap(direction: str, inner: Element, session: Session) -> Element:
    """The copy of `inner` for `session`: from the account's bare JID, which is how the
    client tells a real carbon from a forged one."""
    attrs = {"from": session.bare, "to": str(session.jid)}
    if inner.get("type"):
        attrs["type"] = inner.get("type", "")
    return make(NS_CLIENT, "message", attrs,
                make(NS_CARBONS, direction, None, make(NS_FORWARD, "forwarded", None, inner)))


class Carbons(Module):
    name = "carbons"
    server_features = (NS_CARBONS,)

    async def start(self) -> None:
        for target in ("bare", "host"):
            self.hooks.add(f"iq-set/{target}/{NS_CARBONS}", self._toggle)
        signals = self.server.signals
        signals.connect("message-delivering", self._delivering)
        signals.connect("message-delivered", self._delivered)

    async def _toggle(self, ctx: Routed) -> bool:
        origin = ctx.origin
        if origin is None:
            self.router.bounce(ctx.stanza, "forbidden", "carbons are for local sessions", None)
            return True
        if ctx.target == "bare" and str(ctx.to) != origin.bare:
            origin.send(error_reply(ctx.stanza, "forbidden", "carbons are set on your own account"))
            return True
        what = local_name(ctx.stanza[0].tag)
        if what not in ("enable", "disable"):
            origin.send(error_reply(ctx.stanza, "bad-request", "expected enable or disable"))
            return True
        origin.carbons = what == "enable"  # type: ignore[attr-defined]
        reply = iq_result(ctx.stanza)
        reply.attrib.pop("from", None)
        origin.send(reply)
        return True

    async def _delivering(self, delivery: Delivery) -> None:
        stanza = delivery.ctx.stanza
        delivery.notes[self.name] = eligible(stanza)
        # The mark only tells this server not to copy; nobody else needs to see it.
        for mark in stanza.findall(q(NS_CARBONS, "private")):
            stanza.remove(mark)

    async def _delivered(self, delivery: Delivery) -> None:
        if not delivery.notes.get(self.name):
            return
        ctx = delivery.ctx
        recipient = str(ctx.to.bare)
        origin = ctx.origin
        got = {id(s) for s in delivery.recipients}
        for s in self.router.sessions.of(recipient):
            if id(s) in got or s is origin or not s.available or not carbons_enabled(s):
                continue
            s.send(wrap("received", copy.deepcopy(ctx.stanza), s))
        if origin is None or origin.bare == recipient:
            return
        others = [s for s in self.router.sessions.of(origin.bare) if s is not origin and carbons_enabled(s)]
        if not others:
            return
        for s in others:
            s.send(wrap("sent", self._as_sent(delivery, origin.bare, recipient), s))

    @staticmethod
    def _as_sent(delivery: Delivery, sender: str, recipient: str) -> Element:
        """The message as its sender's account knows it: the recipient's archive id is the
        recipient's business, the sender's own is what its clients match the archive by."""
        inner = copy.deepcopy(delivery.ctx.stanza)
        for sid in inner.findall(q(NS_SID, "stanza-id")):
            if sid.get("by") == recipient:
                inner.remove(sid)
        own = delivery.stanza_ids.get(sender)
        if own is not None:
            inner.append(make(NS_SID, "stanza-id", {"by": sender, "id": own}))
        return inner


module_class = Carbons
