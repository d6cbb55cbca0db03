"""The server: configuration, storage, router, modules and listeners of one node."""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.certs import load_certificate_der, server_context
from parley.config import Config
from parley.module import Module, Signals
from parley.router import Routed, Router
from parley.storage.db import Database
from parley.storage.repos import Repos
from parley.xmpp.jid import JID
from parley.xmpp.sasl import tls_server_end_point

if TYPE_CHECKING:
    from parley.c2s import C2SConnection
    from parley.sessions import Session

log = logging.getLogger("parley.server")

# Feature modules, in load order; each lives in parley/modules/<name>.py.
CORE_MODULES = (
    "disco",
    "policy",
    "roster",
    "presence",
    "message",
    "offline",
    "vcard",
    "private",
    "version",
    "time",
    "ping",
    "last",
    "sm",
    "carbons",
    "mam",
    "csi",
    "pep",
    "bookmarks",
    "avatar",
    "vcard4",
    "adhoc",
    "register",
    "extdisco",
    "push",
    "privacy",
    "invisible",
    "upload",
    "muc",
)

NonzaHandler = Callable[[Element, "C2SConnection"], Awaitable[bool]]


class NonzaHandlers:
    """Top-level elements of a bound stream that are not stanzas (stream management, CSI)."""

    def __init__(self) -> None:
        self._by_tag: dict[str, NonzaHandler] = {}

    def add(self, tag: str, fn: NonzaHandler) -> None:
        self._by_tag[tag] = fn

    async def fire(self, el: Element, conn: C2SConnection) -> bool:
        fn = self._by_tag.get(el.tag)
        return bool(fn and await fn(el, conn))


class Server:
    def __init__(self, config: Config):
        self.config = config
        self.domain = config.server.domain
        self.hosts: set[str] = {self.domain}
        self.db = Database(config.storage_url())
        self.repos = Repos(self.db)
        self.router = Router(self)
        self.signals = Signals()
        self.signals_stream = NonzaHandlers()
        self.stream_features: list[Element] = []
        # Features offered before authentication (in-band registration) and the iq
        # namespaces a client may use then: namespace -> handler(iq, connection).
        self.preauth_features: list[Element] = []
        self.preauth_iq: dict[str, Callable[[Element, C2SConnection], Awaitable[None]]] = {}
        # What must be committed before the server acknowledges a client's stanzas
        # (stream management): write-behind stores register a wait here.
        self.durability: list[Callable[[], Awaitable[None]]] = []
        self.modules: dict[str, Module] = {}
        self.c2s_connections: set[C2SConnection] = set()
        self.tls_context: ssl.SSLContext | None = None
        self.cb_data: bytes | None = None
        self._servers: list[asyncio.Server] = []
        self.started = asyncio.Event()
        self.ports: dict[str, int] = {}
        self.sasl_secret = secrets.token_bytes(32)

    def module(self, name: str) -> Module:
        return self.modules[name]

    async def start(self) -> None:
        await self.db.migrate()
        for name, _ in await self.repos.domains.list():
            self.hosts.add(name)
        cert, key = self.config.path(self.config.tls.cert), self.config.path(self.config.tls.key)
        if cert.exists() and key.exists():
            self.tls_context = server_context(cert, key, self.config.tls.min_version)
            try:
                self.cb_data = tls_server_end_point(load_certificate_der(cert))
            except ValueError:
                # RFC 5929 defines no binding for this key type: offer no -PLUS mechanisms.
                self.cb_data = None
        elif self.config.c2s.require_tls:
            raise FileNotFoundError(f"TLS is required but the certificate {cert} or key {key} is missing")
        for name in CORE_MODULES:
            mod = importlib.import_module(f"parley.modules.{name}")
            instance: Module = mod.module_class(self)
            self.modules[name] = instance
            await instance.start()
        await self._listen()
        self.started.set()

    async def _listen(self) -> None:
        from parley.c2s import C2SConnection

        loop = asyncio.get_running_loop()
        c2s = self.config.c2s
        srv = await loop.create_server(lambda: C2SConnection(self, False), c2s.host, c2s.port, reuse_address=True)
        self._servers.append(srv)
        self.ports["c2s"] = srv.sockets[0].getsockname()[1]
        if c2s.direct_tls and self.tls_context is not None:
            tls = await loop.create_server(
                lambda: C2SConnection(self, True), c2s.host, c2s.tls_port, ssl=self.tls_context,
                reuse_address=True, ssl_handshake_timeout=c2s.auth_timeout,
            )
            self._servers.append(tls)
            self.ports["c2s_tls"] = tls.sockets[0].getsockname()[1]
        log.info("listening for clients on %s port %s (STARTTLS) and %s (direct TLS)",
                 c2s.host, self.ports.get("c2s"), self.ports.get("c2s_tls", "-"))
        if self.config.components.enabled:
            from parley.component import ComponentService
            self.modules["component"] = await ComponentService.listen(self)

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        for conn in list(self.c2s_connections):
            conn.close("system-shutdown", "the server is stopping")
        # Let closing sessions run their unavailable-presence and last-activity work.
        await asyncio.sleep(0)
        for srv in self._servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2)
            except TimeoutError:
                pass
        for mod in reversed(list(self.modules.values())):
            await mod.stop()
        await self.db.close()

    async def session_closed(self, session: Session) -> None:
        if self.router.sessions.remove(session):
            await self.signals.emit("session-closed", session)

    async def presence_broadcast(self, stanza: Element, session: Session) -> None:
        ctx = Routed(stanza, "presence", stanza.get("type") or "available", session.jid,
                     session.jid.bare, session)
        await self.router.hooks.fire("presence/broadcast", ctx)

    def is_local_user_domain(self, jid: JID) -> bool:
        return jid.domain in self.hosts and jid.local is not None
