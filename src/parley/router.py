"""The one router: every stanza, from any source, is delivered here.

Features never write to another session's socket; they register handlers on events whose
names say what they handle, as in ``iq-get/host/urn:xmpp:ping`` or ``message/bare``:

- ``iq-{get,set}/{host,bare,full}/{payload namespace}``
- ``iq-{result,error}/{host,bare}``
- ``message/{host,bare,full}`` and ``presence/{host,bare,full}``
- ``presence/broadcast``: a client's presence without a ``to``
- ``stanza/in``: every locally addressed stanza, before the events above (policy checks)

A handler returns True when it has dealt with the stanza; the router then stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.sessions import Session, SessionRegistry
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import error_reply, local_name, namespace

if TYPE_CHECKING:
    from parley.server import Server

log = logging.getLogger("parley.router")


@dataclass(slots=True)
class Routed:
    stanza: Element
    kind: str  # message | presence | iq
    type: str
    frm: JID
    to: JID
    origin: Session | None  # the local session it came from, if any
    # Sent again by the server (a session ended before acknowledging it): features that
    # already acted on the first delivery (push, archive) do not act twice.
    rerouted: bool = False

    @property
    def target(self) -> str:
        if self.to.local is None:
            return "host"
        return "bare" if self.to.resource is None else "full"


Handler = Callable[[Routed], Awaitable[bool | None]]


class Hooks:
    def __init__(self) -> None:
        self._handlers: dict[str, list[tuple[int, Handler]]] = {}

    def add(self, event: str, handler: Handler, priority: int = 0) -> None:
        lst = self._handlers.setdefault(event, [])
        lst.append((priority, handler))
        lst.sort(key=lambda p: -p[0])

    def has(self, event: str) -> bool:
        return event in self._handlers

    async def fire(self, event: str, ctx: Routed) -> bool:
        for _, handler in self._handlers.get(event, ()):
            if await handler(ctx):
                return True
        return False


class Router:
    def __init__(self, server: Server):
        self.server = server
        self.hooks = Hooks()
        self.sessions = SessionRegistry()

    def is_local(self, domain: str) -> bool:
        return domain in self.server.hosts

    async def route(self, stanza: Element, origin: Session | None = None, *, rerouted: bool = False) -> None:
        kind = local_name(stanza.tag)
        type_ = stanza.get("type") or ("get" if kind == "iq" else "normal" if kind == "message" else "available")
        try:
            frm = JID.parse(stanza.get("from", "")) if stanza.get("from") else JID(None, self.server.domain, None)
            to_s = stanza.get("to")
            to = JID.parse(to_s) if to_s else (origin.jid.bare if origin else JID(None, self.server.domain, None))
        except InvalidJID as e:
            self.bounce(stanza, "jid-malformed", str(e), origin)
            return
        ctx = Routed(stanza, kind, type_, frm, to, origin, rerouted)
        if not self.is_local(to.domain):
            # No federation yet: remote domains cannot be reached.
            if not await self.hooks.fire("route/remote", ctx):
                self.bounce(stanza, "remote-server-not-found", f"{to.domain} is not served here", origin)
            return
        if await self.hooks.fire("stanza/in", ctx):
            return
        await self._local(ctx)

    async def _local(self, ctx: Routed) -> None:
        target = ctx.target
        if ctx.kind == "iq":
            if ctx.type in ("get", "set"):
                children = list(ctx.stanza)
                if len(children) != 1:
                    self.bounce(ctx.stanza, "bad-request", "an iq get or set carries exactly one payload", ctx.origin)
                    return
                if await self.hooks.fire(f"iq-{ctx.type}/{target}/{namespace(children[0].tag)}", ctx):
                    return
                if target == "full" and self.deliver_full(ctx.to, ctx.stanza):
                    return
                self.bounce(ctx.stanza, "service-unavailable", None, ctx.origin)
                return
            if ctx.type in ("result", "error"):
                if target == "full":
                    self.deliver_full(ctx.to, ctx.stanza)
                    return
                await self.hooks.fire(f"iq-{ctx.type}/{target}", ctx)
                return
            self.bounce(ctx.stanza, "bad-request", f"unknown iq type {ctx.type!r}", ctx.origin)
            return
        if ctx.kind in ("message", "presence"):
            if await self.hooks.fire(f"{ctx.kind}/{target}", ctx):
                return
            if target == "full" and self.deliver_full(ctx.to, ctx.stanza):
                return
            if ctx.kind == "message" and ctx.type != "error":
                self.bounce(ctx.stanza, "service-unavailable", None, ctx.origin)
            return
        log.debug("dropping unknown stanza kind %s", ctx.kind)

    def deliver_full(self, to: JID, stanza: Element) -> bool:
        session = self.sessions.get(to)
        if session is None:
            return False
        session.send(stanza)
        return True

    def bounce(self, stanza: Element, condition: str, text: str | None = None, origin: Session | None = None) -> None:
        """Answer a stanza with an error; errors are never answered with errors."""
        if stanza.get("type") == "error":
            return
        if local_name(stanza.tag) == "presence" and condition == "service-unavailable":
            return
        reply = error_reply(stanza, condition, text)
        if origin is not None:
            origin.send(reply)
            return
        to = reply.get("to")
        if not to:
            return
        try:
            jid = JID.parse(to)
        except InvalidJID:
            return
        if not self.is_local(jid.domain):
            # Components and, later, other servers: the error takes the remote route.
            asyncio.get_running_loop().create_task(self.route(reply))
        elif jid.resource:
            self.deliver_full(jid, reply)
