"""One-to-one messages (RFC 6121 section 8) with the seed's IM forking and reply locking
(SPEC C2): a message to a bare JID goes to every available resource with non-negative
priority; once the recipient replies from resource R, later messages of that conversation
go to R only, until R goes unavailable or the recipient writes from another resource.

Chat and normal messages to a local account pass two server signals with a
:class:`Delivery`, so that features that copy, archive or tag messages need no code here:

- ``message-delivering``: before any session or the offline store gets the message; a
  listener may change the stanza or refuse the delivery.
- ``message-delivered``: once the chosen sessions (or the offline store) have it.
- ``message-undelivered``: the sender got an error instead; listeners undo what they did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.xmpp.stanza import NS_CLIENT, q
from parley.xmpp.xmlstream import serialize

CONVERSATION_TYPES = ("chat", "normal")


@dataclass(eq=False, slots=True)
class Delivery:
    """One chat or normal message on its way to a local account."""

    ctx: Routed
    # Sessions of the recipient that got the message itself.
    recipients: list[Session] = field(default_factory=list)
    # Handed to the offline store, which keeps it for the next login if it is worth keeping.
    offline: bool = False
    # XEP-0359 stanza ids the message was given, by the bare JID that assigned each.
    stanza_ids: dict[str, str] = field(default_factory=dict)
    # What a listener keeps about this message from one signal to the next, by its name.
    notes: dict[str, Any] = field(default_factory=dict)
    # (condition, text) when a listener stops the delivery; the sender gets that error.
    refusal: tuple[str, str | None] | None = None

    def refuse(self, condition: str, text: str | None = None) -> None:
        if self.refusal is None:
            self.refusal = (condition, text)


class MessageModule(Module):
    name = "message"

    def __init__(self, server):  # type: ignore[no-untyped-def]
        super().__init__(server)
        # (user bare JID, correspondent bare JID) -> the user's resource that last wrote
        self.locks: dict[tuple[str, str], str] = {}

    async def start(self) -> None:
        self.hooks.add("message/bare", self._on_bare)
        self.hooks.add("message/full", self._on_full)
        self.hooks.add("message/host", self._on_host)
        self.server.signals.connect("session-closed", self._session_closed)
        self.server.signals.connect("presence-unavailable", self._session_closed)

    async def _session_closed(self, session: Session) -> None:
        resource = session.jid.resource
        for key in [k for k, r in self.locks.items() if k[0] == session.bare and r == resource]:
            del self.locks[key]

    def _note_reply(self, ctx: Routed) -> None:
        origin = ctx.origin
        if origin is None or ctx.type not in CONVERSATION_TYPES:
            return
        peer = str(ctx.to.bare)
        if peer == origin.bare or ctx.stanza.find(q(NS_CLIENT, "body")) is None:
            return
        assert origin.jid.resource is not None
        self.locks[(origin.bare, peer)] = origin.jid.resource

    def _refuse_im(self, ctx: Routed) -> bool:
        if self.config.im.enabled:
            return False
        self.router.bounce(ctx.stanza, "service-unavailable", "instant messaging is disabled", ctx.origin)
        return True

    async def _on_host(self, ctx: Routed) -> bool:
        # Messages to the server itself are not stored or answered (RFC 6121 8.5.1).
        return True

    async def _on_full(self, ctx: Routed) -> bool:
        if ctx.type == "error":
            self.router.deliver_full(ctx.to, ctx.stanza)
            return True
        if self._refuse_im(ctx):
            return True
        self._note_reply(ctx)
        if ctx.type in CONVERSATION_TYPES:
            return await self._to_account(ctx)
        if self.router.deliver_full(ctx.to, ctx.stanza):
            return True
        if ctx.type == "groupchat":
            self.router.bounce(ctx.stanza, "service-unavailable", None, ctx.origin)
        return True

    async def _on_bare(self, ctx: Routed) -> bool:
        if ctx.type == "error":
            return True
        if self._refuse_im(ctx):
            return True
        if ctx.type == "groupchat":
            self.router.bounce(ctx.stanza, "service-unavailable", "not a chat room", ctx.origin)
            return True
        self._note_reply(ctx)
        return await self._to_account(ctx)

    async def _to_account(self, ctx: Routed) -> bool:
        bare = str(ctx.to.bare)
        if not self.router.sessions.of(bare) and await self.repos.users.get(bare) is None:
            self.router.bounce(ctx.stanza, "service-unavailable", None, ctx.origin)
            return True
        if ctx.type == "headline":
            data = serialize(ctx.stanza)
            for s in self._available(bare):
                s.send_bytes(data, ctx.stanza)
            return True
        delivery = Delivery(ctx)
        signals = self.server.signals
        await signals.emit("message-delivering", delivery)
        if delivery.refusal is not None:
            await self._undelivered(delivery, *delivery.refusal)
            return True
        # Chosen only now: sessions may have come or gone while the listeners worked.
        targets = self._targets(ctx)
        if len(targets) == 1:
            targets[0].send(ctx.stanza)
        elif targets:
            data = serialize(ctx.stanza)
            for s in targets:
                s.send_bytes(data, ctx.stanza)
        else:
            offline = self.server.modules.get("offline")
            if offline is None or not await offline.store(ctx):  # type: ignore[attr-defined]
                await self._undelivered(delivery, "service-unavailable", "the recipient is offline")
                return True
            delivery.offline = True
        delivery.recipients = targets
        await signals.emit("message-delivered", delivery)
        return True

    async def _undelivered(self, delivery: Delivery, condition: str, text: str | None) -> None:
        await self.server.signals.emit("message-undelivered", delivery)
        self.router.bounce(delivery.ctx.stanza, condition, text, delivery.ctx.origin)

    def _available(self, bare: str) -> list[Session]:
        return [s for s in self.router.sessions.of(bare) if s.available and s.priority >= 0]

    def _targets(self, ctx: Routed) -> list[Session]:
        """The sessions that get a chat or normal message; none means offline storage."""
        if ctx.to.resource is not None:
            session = self.router.sessions.get(ctx.to)
            if session is not None:
                return [session]
        bare = str(ctx.to.bare)
        available = self._available(bare)
        key = (bare, str(ctx.frm.bare))
        locked = self.locks.get(key)
        if locked is not None:
            target = next((s for s in available if s.jid.resource == locked), None)
            if target is not None:
                return [target]
            del self.locks[key]
        if available:
            return available
        sessions = self.router.sessions.of(bare)
        if sessions:
            # Signed in but not yet available: the highest priority, then the newest login.
            best = max(sessions, key=lambda s: (s.priority, s.login_at))
            if best.priority >= 0:
                return [best]
        return []


module_class = MessageModule
