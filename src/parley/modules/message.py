"""One-to-one messages (RFC 6121 section 8) with the seed's IM forking and reply locking
(SPEC C2): a message to a bare JID goes to every available resource with non-negative
priority; once the recipient replies from resource R, later messages of that conversation
go to R only, until R goes unavailable or the recipient writes from another resource."""

from __future__ import annotations

from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.xmpp.stanza import NS_CLIENT, q
from parley.xmpp.xmlstream import serialize

CONVERSATION_TYPES = ("chat", "normal")


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
        if self.router.deliver_full(ctx.to, ctx.stanza):
            return True
        if ctx.type in CONVERSATION_TYPES:
            return await self._to_account(ctx)
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
        sessions = self.router.sessions.of(bare)
        if not sessions and await self.repos.users.get(bare) is None:
            self.router.bounce(ctx.stanza, "service-unavailable", None, ctx.origin)
            return True
        available = [s for s in sessions if s.available and s.priority >= 0]
        if ctx.type == "headline":
            data = serialize(ctx.stanza)
            for s in available:
                s.send_bytes(data, ctx.stanza)
            return True
        key = (bare, str(ctx.frm.bare))
        locked = self.locks.get(key)
        if locked is not None:
            target = next((s for s in available if s.jid.resource == locked), None)
            if target is not None:
                target.send(ctx.stanza)
                return True
            del self.locks[key]
        if available:
            data = serialize(ctx.stanza)
            for s in available:
                s.send_bytes(data, ctx.stanza)
            return True
        if sessions:
            # Signed in but not yet available: the highest priority, then the newest login.
            best = max(sessions, key=lambda s: (s.priority, s.login_at))
            if best.priority >= 0:
                best.send(ctx.stanza)
                return True
        offline = self.server.modules.get("offline")
        if offline is not None and await offline.store(ctx):  # type: ignore[attr-defined]
            return True
        self.router.bounce(ctx.stanza, "service-unavailable", "the recipient is offline", ctx.origin)
        return True


module_class = MessageModule
