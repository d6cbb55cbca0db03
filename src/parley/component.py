"""External components (XEP-0114) on the component port.

A component (a gateway, a push app server, a bot service) opens a stream in
``jabber:component:accept`` to its domain, proves that it knows the domain's shared secret
with the handshake (hex SHA-1 of the stream id and the secret), and from then on:

- stanzas to its domain, or to any JID at that domain or below it, are written to it
  (a ``route/remote`` hook: component domains are never hosted domains);
- stanzas it sends are routed like any other, but only from its own domain (or below).

A configured component that is not connected answers ``service-unavailable``. Connected
components are listed in the server's disco#items.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.router import Routed
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, NS_STREAMS, local_name, namespace, q
from parley.xmpp.xmlstream import (
    STREAM_CLOSE,
    Limits,
    StanzaEvent,
    StreamClose,
    StreamError,
    StreamOpen,
    XMLStreamParser,
    serialize,
    stream_error,
)

if TYPE_CHECKING:
    from parley.server import Server

log = logging.getLogger("parley.component")

NS_COMPONENT = "jabber:component:accept"
STANZAS = ("message", "presence", "iq")
# Same back-pressure thresholds as client connections.
QUEUE_HIGH = 256
QUEUE_LOW = 32


def _domain(name: str) -> str:
    try:
        jid = JID.parse(name)
    except InvalidJID as e:
        raise ValueError(f"components: {name!r} is not a valid domain: {e}") from None
    if jid.local is not None or jid.resource is not None:
        raise ValueError(f"components: {name!r} is not a bare domain")
    return jid.domain


class ComponentService(Module):
    name = "component"

    def __init__(self, server: Server):
        super().__init__(server)
        self.cfg = server.config.components
        self.secrets: dict[str, str] = {}
        for comp in self.cfg.components:
            domain = _domain(comp.domain)
            if domain in server.hosts:
                raise ValueError(f"components: {domain} is a hosted domain, it cannot be a component")
            self.secrets[domain] = comp.secret
        self.connected: dict[str, ComponentConnection] = {}
        self.connections: set[ComponentConnection] = set()
        self._listener: asyncio.Server | None = None

    @classmethod
    async def listen(cls, server: Server) -> ComponentService:
        service = cls(server)
        await service.start()
        return service

    async def start(self) -> None:
        # After the outbound filters (privacy lists, invisibility) have had their say, and
        # ahead of federation: these domains are ours, never looked up in DNS.
        self.hooks.add("route/remote", self._route, priority=5)
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: ComponentConnection(self), self.cfg.host,
                                                  self.cfg.port, reuse_address=True)
        self.server.ports["component"] = self._listener.sockets[0].getsockname()[1]
        log.info("listening for components on %s port %s (%s)", self.cfg.host,
                 self.server.ports["component"], ", ".join(sorted(self.secrets)) or "none configured")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.close("system-shutdown", "the server is stopping")
        if self._listener is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), 2)
            self._listener = None

    # --- routing --------------------------------------------------------------------------

    def configured_for(self, domain: str) -> str | None:
        """The configured component domain that serves this domain: itself or the nearest
        parent (so that a.b.example can be a component of its own beside b.example)."""
        d = domain
        while d:
            if d in self.secrets:
                return d
            d = d.partition(".")[2]
        return None

    async def _route(self, ctx: Routed) -> bool:
        domain = self.configured_for(ctx.to.domain)
        if domain is None:
            return False
        conn = self.connected.get(domain)
        if conn is None:
            self.router.bounce(ctx.stanza, "service-unavailable", f"{domain} is not connected", ctx.origin)
            return True
        if ctx.stanza.get("from") is None:
            # The component needs a sender to answer; it is the server when none is given.
            ctx.stanza.set("from", str(ctx.frm))
        conn.deliver(ctx.stanza)
        return True

    def authenticated(self, conn: ComponentConnection) -> bool:
        """Register a connection that passed the handshake; False when its domain is taken."""
        assert conn.domain is not None
        if conn.domain in self.connected:
            return False
        self.connected[conn.domain] = conn
        disco = self.server.modules.get("disco")
        if disco is not None:
            disco.add_item(conn.domain)  # type: ignore[attr-defined]
        log.info("component %s connected from %s", conn.domain, conn.peer)
        return True

    def gone(self, conn: ComponentConnection) -> None:
        self.connections.discard(conn)
        if conn.domain is None or self.connected.get(conn.domain) is not conn:
            return
        del self.connected[conn.domain]
        disco = self.server.modules.get("disco")
        if disco is not None:
            # disco has no removal method; its items are plain (jid, name, node) tuples.
            with contextlib.suppress(ValueError):
                disco.items.remove((conn.domain, None, None))  # type: ignore[attr-defined]
        log.info("component %s disconnected", conn.domain)


class ComponentConnection(asyncio.Protocol):
    def __init__(self, service: ComponentService):
        self.service = service
        self.server = service.server
        c2s = self.server.config.c2s
        self.parser = XMLStreamParser(Limits(max_stanza_bytes=c2s.max_stanza_bytes, max_depth=c2s.max_depth,
                                             max_attributes=c2s.max_attributes))
        self.queue: asyncio.Queue[StreamOpen | StanzaEvent | StreamClose | None] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.worker: asyncio.Task[None] | None = None
        self.auth_timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.closed = False
        self.stream_open = False
        self.stream_id = secrets.token_hex(16)
        # The domain asked for in the stream header; authenticated once `ready`.
        self.domain: str | None = None
        self.ready = False
        self.peer = "?"

    # --- transport events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self.auth_timer = loop.call_later(self.server.config.c2s.auth_timeout, self._auth_timeout)
        self.worker = loop.create_task(self._work())
        self.service.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.parser.feed(data)
        except StreamError as e:
            self.close(e.condition, e.text)
            return
        for ev in events:
            self.queue.put_nowait(ev)
        if not self.paused and self.queue.qsize() > QUEUE_HIGH and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.queue.put_nowait(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        self.service.gone(self)

    def _auth_timeout(self) -> None:
        if not self.ready:
            self.close("connection-timeout", "the handshake took too long")

    # --- output ------------------------------------------------------------------------------

    def deliver(self, stanza: Element) -> None:
        # Written as for a client stream: jabber:client elements come out unprefixed and
        # without xmlns, so on this stream they are in jabber:component:accept, while
        # stanzas nested in other namespaces (forwarded ones) keep their declaration.
        if not self.closed and self.transport is not None:
            self.transport.write(serialize(stanza, NS_CLIENT))

    def _header(self, domain: str) -> bytes:
        # XEP-0114 streams carry no version; the domain passed JID validation, so it needs
        # no escaping.
        return (f"<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' "
                f"xmlns:stream='{NS_STREAMS}' from='{domain}' id='{self.stream_id}'>").encode()

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        if self.closed or self.transport is None:
            return
        out = b""
        if not self.stream_open:
            out += self._header(self.server.domain)
            self.stream_open = True
        if condition:
            log.info("stream error %s to component %s (%s): %s", condition, self.domain or "-", self.peer, text or "")
            out += stream_error(condition, text)
        out += STREAM_CLOSE
        self.transport.write(out)
        self.closed = True
        self.transport.close()
        self.service.gone(self)

    # --- input ---------------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while not self.closed:
                ev = await self.queue.get()
                if self.paused and self.queue.qsize() < QUEUE_LOW and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                if ev is None or isinstance(ev, StreamClose):
                    self.close()
                    return
                if isinstance(ev, StreamOpen):
                    self._on_stream_open(ev)
                elif self.ready:
                    await self._on_stanza(ev.element)
                else:
                    self._on_handshake(ev.element)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error on component connection %s", self.peer)
            self.close("internal-server-error")

    def _on_stream_open(self, ev: StreamOpen) -> None:
        if self.stream_open:
            self.close("not-authorized", "the stream was already opened")
            return
        to = ev.attrs.get("to", "")
        try:
            domain = _domain(to) if to else ""
        except ValueError:
            domain = ""
        known = domain in self.service.secrets
        assert self.transport is not None
        self.transport.write(self._header(domain if known else self.server.domain))
        self.stream_open = True
        if ev.default_ns != NS_COMPONENT:
            self.close("invalid-namespace", f"this port serves {NS_COMPONENT}")
            return
        if not known:
            self.close("host-unknown", f"{to or '(no to)'} is not a component of this server")
            return
        self.domain = domain

    def _on_handshake(self, el: Element) -> None:
        if el.tag != q(NS_COMPONENT, "handshake") or self.domain is None:
            self.close("not-authorized", "send the handshake first")
            return
        secret = self.service.secrets[self.domain]
        expected = hashlib.sha1((self.stream_id + secret).encode()).hexdigest()
        given = (el.text or "").strip().lower()
        if not hmac.compare_digest(expected.encode(), given.encode()):
            self.close("not-authorized", "wrong handshake")
            return
        if not self.service.authenticated(self):
            self.close("conflict", f"{self.domain} is already connected")
            return
        self.ready = True
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        assert self.transport is not None
        self.transport.write(b"<handshake/>")

    async def _on_stanza(self, el: Element) -> None:
        kind = local_name(el.tag)
        if namespace(el.tag) not in (NS_COMPONENT, NS_CLIENT) or kind not in STANZAS:
            self.close("unsupported-stanza-type", f"{el.tag} is not a stanza")
            return
        frm, to = el.get("from"), el.get("to")
        if not frm or not to:
            self.close("improper-addressing", "a component stanza needs both 'from' and 'to'")
            return
        try:
            sender = JID.parse(frm)
        except InvalidJID as e:
            self.close("invalid-from", f"{frm!r} is not a JID: {e}")
            return
        assert self.domain is not None
        if sender.domain != self.domain and not sender.domain.endswith("." + self.domain):
            self.close("invalid-from", f"this component may only send from {self.domain}")
            return
        # Inside the server every stanza is in jabber:client, whichever stream it came on.
        for e in el.iter():
            if isinstance(e.tag, str) and e.tag.startswith("{" + NS_COMPONENT + "}"):
                e.tag = q(NS_CLIENT, local_name(e.tag))
        await self.server.router.route(el)
