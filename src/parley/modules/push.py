"""Push notifications (XEP-0357).

A mobile client enables push with the JID of its app server (a component or a remote
service) and a node; the registration is kept with the account. When a message with a
body arrives and nothing can deliver it right now (the user is offline and it went to
offline storage, or every session is hibernated by stream management), the server
publishes a notification to each registered app server, which wakes the device.

``[push] include`` decides what leaves the server: ``summary`` (message count and sender),
``body`` (the body as well) or ``none`` (an empty notification, enough to wake an iOS
client without handing content to Apple or Google). An error from the app server means
the registration is dead (the app was uninstalled, say), so it is disabled.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.storage.push import FormValues, PushRepo
from parley.xmpp.dataforms import submitted
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, child, error_reply, iq_result, make, q

if TYPE_CHECKING:
    from parley.server import Server

NS_PUSH = "urn:xmpp:push:0"
NS_SUMMARY = "urn:xmpp:push:summary"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
NS_DATA = "jabber:x:data"

MAX_REGISTRATIONS = 32
# Notifications waiting for the app server's answer; one that never answers is
# forgotten after this many seconds.
PENDING_TTL = 120.0
MAX_PENDING = 10000
MAX_BODY_CHARS = 1000


@dataclass(slots=True)
class Pending:
    owner: str
    service: str
    node: str
    sent_at: float


def hibernated(session: Session) -> bool:
    """A session whose connection is gone while stream management keeps it for resumption."""
    return bool(getattr(session, "closed", False)) and getattr(session, "sm", None) is not None


def submit_form(form_type: str, fields: list[tuple[str, list[str]]]) -> Element:
    x = make(NS_DATA, "x", {"type": "submit"})
    ft = child(x, NS_DATA, "field", {"var": "FORM_TYPE", "type": "hidden"})
    child(ft, NS_DATA, "value").text = form_type
    for var, values in fields:
        f = child(x, NS_DATA, "field", {"var": var})
        for v in values:
            child(f, NS_DATA, "value").text = v
    return x


class PushModule(Module):
    name = "push"
    account_features = (NS_PUSH,)

    def __init__(self, server: Server):
        super().__init__(server)
        self.registrations = PushRepo(server.db)
        self.pending: dict[str, Pending] = {}
        # Messages that reached hibernated sessions since the user was last connected.
        self.waiting: dict[str, int] = {}

    async def start(self) -> None:
        self.hooks.add(f"iq-set/bare/{NS_PUSH}", self._configure)
        # Ahead of message delivery, only looking: the message goes on as usual.
        self.hooks.add("message/bare", self._on_message, priority=50)
        self.hooks.add("message/full", self._on_message, priority=50)
        self.hooks.add("iq-result/bare", self._answer, priority=10)
        self.hooks.add("iq-error/bare", self._answer, priority=10)
        self.server.signals.connect("message-offline", self._offline)
        self.server.signals.connect("session-bound", self._back)
        self.server.signals.connect("session-closed", self._gone)
        self.server.signals.connect("user-deleted", self._forget)

    # --- enable / disable ----------------------------------------------------------------------

    async def _configure(self, ctx: Routed) -> bool:
        origin = ctx.origin
        if origin is None or ctx.to != ctx.frm.bare:
            self.router.bounce(ctx.stanza, "forbidden", "only the account owner configures push", origin)
            return True
        el = ctx.stanza[0]
        op = el.tag.rpartition("}")[2]
        if op not in ("enable", "disable"):
            origin.send(error_reply(ctx.stanza, "bad-request", "expected <enable/> or <disable/>"))
            return True
        try:
            service = str(JID.parse(el.get("jid", "")))
        except InvalidJID as e:
            origin.send(error_reply(ctx.stanza, "bad-request", f"jid: {e}" if el.get("jid") else "jid is required"))
            return True
        node = el.get("node") or None
        owner = origin.bare
        if op == "disable":
            await self.registrations.disable(owner, service, node)
            origin.send(iq_result(ctx.stanza))
            return True
        if node is None:
            origin.send(error_reply(ctx.stanza, "bad-request", "node is required"))
            return True
        options: FormValues = submitted(el) or {}
        if options and options.get("FORM_TYPE", [NS_PUBLISH_OPTIONS]) != [NS_PUBLISH_OPTIONS]:
            origin.send(error_reply(ctx.stanza, "bad-request", f"the form must be of type {NS_PUBLISH_OPTIONS}"))
            return True
        options.pop("FORM_TYPE", None)
        existing = await self.registrations.list(owner)
        if len(existing) >= MAX_REGISTRATIONS and not any(r.service == service and r.node == node for r in existing):
            origin.send(error_reply(ctx.stanza, "resource-constraint",
                                    f"at most {MAX_REGISTRATIONS} push registrations per account"))
            return True
        await self.registrations.enable(owner, service, node, options)
        self.log.info("%s enabled push at %s", owner, service)
        origin.send(iq_result(ctx.stanza))
        return True

    async def _forget(self, bare: str) -> None:
        await self.registrations.remove_all(bare)
        self.waiting.pop(bare, None)

    async def _back(self, session: Session) -> None:
        self.waiting.pop(session.bare, None)

    async def _gone(self, session: Session) -> None:
        # Once the last kept session expires, offline storage keeps the count.
        if not self.router.sessions.of(session.bare):
            self.waiting.pop(session.bare, None)

    # --- when to notify ----------------------------------------------------------------------

    @staticmethod
    def _worth(ctx: Routed) -> bool:
        return ctx.type != "error" and ctx.stanza.find(q(NS_CLIENT, "body")) is not None

    async def _on_message(self, ctx: Routed) -> bool:
        if not self._worth(ctx) or not self.config.im.enabled:
            return False
        owner = str(ctx.to.bare)
        sessions = self.router.sessions.of(owner)
        # No session at all is offline storage's case, which signals message-offline.
        if sessions and all(hibernated(s) for s in sessions):
            self.waiting[owner] = self.waiting.get(owner, 0) + 1
            await self._notify(owner, ctx, self.waiting[owner])
        return False

    async def _offline(self, ctx: Routed) -> None:
        # A message handed on from an ended session was notified when it first came.
        if ctx.rerouted or not self._worth(ctx):
            return
        await self._notify(str(ctx.to.bare), ctx, None)

    # --- the notification --------------------------------------------------------------------

    def _notification(self, ctx: Routed, count: int) -> Element:
        note = make(NS_PUSH, "notification")
        include = self.config.push.include
        if include == "none":
            return note
        fields = [("message-count", [str(count)]), ("last-message-sender", [str(ctx.frm)])]
        if include == "body":
            body = ctx.stanza.findtext(q(NS_CLIENT, "body")) or ""
            fields.append(("last-message-body", [body[:MAX_BODY_CHARS]]))
        note.append(submit_form(NS_SUMMARY, fields))
        return note

    async def _notify(self, owner: str, ctx: Routed, count: int | None) -> None:
        """Publish to every app server of the owner; count None means the offline store's."""
        try:
            await self._publish(owner, ctx, count)
        except Exception:
            # Runs inside message delivery: a push failure must never cost the message.
            self.log.exception("push notification for %s failed", owner)

    async def _publish(self, owner: str, ctx: Routed, count: int | None) -> None:
        regs = await self.registrations.list(owner)
        if not regs:
            return
        if count is None:
            # The stored messages are what the user will find when they come back.
            count = await self.repos.offline.count(owner)
        self._prune()
        note = self._notification(ctx, count)
        for reg in regs:
            iq_id = "push-" + secrets.token_hex(8)
            iq = make(NS_CLIENT, "iq", {"type": "set", "from": owner, "to": reg.service, "id": iq_id})
            pubsub = child(iq, NS_PUBSUB, "pubsub")
            child(child(pubsub, NS_PUBSUB, "publish", {"node": reg.node}), NS_PUBSUB, "item").append(note)
            if reg.options:
                child(pubsub, NS_PUBSUB, "publish-options").append(
                    submit_form(NS_PUBLISH_OPTIONS, list(reg.options.items())))
            self.pending[iq_id] = Pending(owner, reg.service, reg.node, time.monotonic())
            await self.router.route(iq)

    def _prune(self) -> None:
        # Insertion order is sending order, so the stale entries are all at the front.
        cutoff = time.monotonic() - PENDING_TTL
        while self.pending:
            oldest = next(iter(self.pending))
            if self.pending[oldest].sent_at >= cutoff and len(self.pending) < MAX_PENDING:
                break
            del self.pending[oldest]

    async def _answer(self, ctx: Routed) -> bool:
        p = self.pending.get(ctx.stanza.get("id", ""))
        if p is None or str(ctx.to) != p.owner or str(ctx.frm) != p.service:
            return False
        del self.pending[ctx.stanza.get("id", "")]
        if ctx.type == "error":
            await self.registrations.disable(p.owner, p.service, p.node)
            self.log.info("push to %s node %s for %s refused; registration disabled", p.service, p.node, p.owner)
        return True


module_class = PushModule
