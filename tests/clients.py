"""Real XMPP clients for the tests: slixmpp, aioxmpp and a raw socket for what libraries
refuse to send (malformed XML, bombs, oversized stanzas)."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import slixmpp

from parley.server import Server

TIMEOUT = 10


class AuthFailed(Exception):
    pass


async def slix(server: Server, jid: str, password: str = "secret", *, plugins: Iterable[str] = (),
               cert: Path | None = None, direct_tls: bool = False, presence: bool = True,
               get_roster: bool = True) -> slixmpp.ClientXMPP:
    """A connected, authenticated, bound slixmpp client (initial presence sent unless told not to)."""
    c = slixmpp.ClientXMPP(jid, password)
    for p in ("xep_0030", "xep_0199", *plugins):
        c.register_plugin(p)
    if cert is not None:
        c.ca_certs = str(cert)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.ssl_context = ctx
    c.enable_direct_tls = direct_tls
    c.enable_starttls = not direct_tls
    c.enable_plaintext = False
    loop = asyncio.get_running_loop()
    started: asyncio.Future[Any] = loop.create_future()

    async def on_start(_: Any) -> None:
        if get_roster:
            await c.get_roster()
        if presence:
            c.send_presence()
        if not started.done():
            started.set_result(True)

    def on_fail(ev: Any) -> None:
        if not started.done():
            started.set_exception(AuthFailed(str(ev)))

    c.add_event_handler("session_start", on_start)
    c.add_event_handler("failed_all_auth", on_fail)
    c.add_event_handler("stream_error", on_fail)
    port = server.ports["c2s_tls" if direct_tls else "c2s"]
    c.connect(host="127.0.0.1", port=port)
    try:
        await asyncio.wait_for(started, TIMEOUT)
    except BaseException:
        c.abort()
        raise
    return c


async def close_all(*clients: slixmpp.ClientXMPP) -> None:
    # slixmpp replaces `disconnected` once it resolves: take the futures first.
    waits = [c.disconnected for c in clients]
    for c in clients:
        c.disconnect()
    for c, fut in zip(clients, waits, strict=True):
        try:
            await asyncio.wait_for(asyncio.shield(fut), 5)
        except (TimeoutError, asyncio.CancelledError):
            c.abort()


async def close_each(*clients: slixmpp.ClientXMPP) -> None:
    """Closes the clients that are still connected, one at a time: close_all given several
    clients can sit out its safety timeout."""
    for c in clients:
        if c.transport is not None:
            await close_all(c)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Waits for state the server reaches asynchronously; the timeout only stops a hang."""
    async def go() -> None:
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(go(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def wait_event(client: slixmpp.ClientXMPP, event: str, timeout: float = TIMEOUT,
                     check: Any = None) -> Any:
    """The next `event` on the client (that satisfies `check`, if given)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def handler(arg: Any) -> None:
        if not fut.done() and (check is None or check(arg)):
            fut.set_result(arg)

    client.add_event_handler(event, handler)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        client.del_event_handler(event, handler)


class Raw:
    """A raw XMPP connection that writes exactly the bytes a test gives it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.buf = b""

    @classmethod
    async def open(cls, server: Server, *, direct_tls: bool = True) -> Raw:
        ctx = None
        if direct_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        port = server.ports["c2s_tls" if direct_tls else "c2s"]
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        return cls(r, w)

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def read_until(self, marker: bytes, timeout: float = TIMEOUT) -> bytes:
        async def go() -> bytes:
            while marker not in self.buf:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError(self.buf.decode(errors="replace"))
                self.buf += chunk
            i = self.buf.index(marker) + len(marker)
            out, self.buf = self.buf[:i], self.buf[i:]
            return out

        return await asyncio.wait_for(go(), timeout)

    async def read_until_any(self, *markers: bytes, timeout: float = TIMEOUT) -> bytes:
        async def go() -> bytes:
            while True:
                hits = [self.buf.index(m) + len(m) for m in markers if m in self.buf]
                if hits:
                    i = min(hits)
                    out, self.buf = self.buf[:i], self.buf[i:]
                    return out
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError(self.buf.decode(errors="replace"))
                self.buf += chunk

        return await asyncio.wait_for(go(), timeout)

    async def read_all(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the server closes the connection."""
        async def go() -> bytes:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    out, self.buf = self.buf, b""
                    return out
                self.buf += chunk

        return await asyncio.wait_for(go(), timeout)

    async def start(self, domain: str = "example.test") -> bytes:
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                  f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>")
        return await self.read_until(b"</stream:features>")

    async def authenticate(self, user: str, password: str, domain: str = "example.test") -> bytes:
        """PLAIN inside TLS and the new stream's features; no resource bound yet."""
        await self.start(domain)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        reply = await self.read_until_any(b"</success>", b"</failure>")
        if b"<success" not in reply:
            raise AuthFailed(reply.decode())
        return await self.start(domain)

    async def login(self, user: str, password: str, domain: str = "example.test",
                    resource: str = "raw") -> bytes:
        """PLAIN inside TLS, then bind; returns the bind result."""
        await self.authenticate(user, password, domain)
        self.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        return await self.read_until(b"</iq>")

    def abort(self) -> None:
        """Drop the connection as a broken network would: no closing tag, no TLS close."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
