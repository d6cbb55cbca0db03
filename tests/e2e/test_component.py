"""External components (XEP-0114) end to end: the handshake and its refusals on a raw
socket, and routing both ways between a slixmpp component and slixmpp clients."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from xml.etree.ElementTree import Element

import pytest
import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from parley.server import Server
from tests.clients import TIMEOUT, eventually
from tests.conftest import ServerFactory, users
from tests.peer import ALICE, DOMAIN, Connect, bounced, local, message, say

BOT = "bot.example.test"
BOT_SECRET = "bot-secret"
SLEEPER = "sleeper.example.test"  # configured, never connected
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"


def components_section(*extra: dict[str, str]) -> dict[str, Any]:
    return {"enabled": True, "port": 0, "components": [
        {"domain": BOT, "secret": BOT_SECRET}, {"domain": SLEEPER, "secret": "zzz"}, *extra]}


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    srv = await make_server(components=components_section())
    await users(srv, ALICE)
    return srv


# --- a raw component connection --------------------------------------------------------------


class RawComponent:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.stream_id = ""

    @classmethod
    async def open(cls, server: Server) -> RawComponent:
        r, w = await asyncio.open_connection("127.0.0.1", server.ports["component"])
        return cls(r, w)

    def send(self, data: str) -> None:
        self.writer.write(data.encode())

    async def read_until(self, marker: bytes) -> bytes:
        async def go() -> bytes:
            while marker not in self.buf:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError(self.buf.decode(errors="replace"))
                self.buf += chunk
            i = self.buf.index(marker) + len(marker)
            out, self.buf = self.buf[:i], self.buf[i:]
            return out

        return await asyncio.wait_for(go(), TIMEOUT)

    async def read_all(self) -> bytes:
        async def go() -> bytes:
            while chunk := await self.reader.read(65536):
                self.buf += chunk
            out, self.buf = self.buf, b""
            return out

        return await asyncio.wait_for(go(), TIMEOUT)

    async def start(self, domain: str, ns: str = "jabber:component:accept") -> bytes:
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='{ns}' "
                  f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>")
        header = await self.read_until(b">")
        if b"<?xml" in header:
            header += await self.read_until(b">")
        m = re.search(rb"id='([^']+)'", header)
        self.stream_id = m.group(1).decode() if m else ""
        return header

    async def handshake(self, secret: str) -> None:
        digest = hashlib.sha1((self.stream_id + secret).encode()).hexdigest()
        self.send(f"<handshake>{digest}</handshake>")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def stream_error_of(raw: RawComponent) -> str:
    rest = await raw.read_all()
    assert b"<stream:error>" in rest, rest
    m = re.search(rb"<([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-streams'", rest)
    assert m is not None, rest
    return m.group(1).decode()


async def test_good_handshake(server: Server) -> None:
    raw = await RawComponent.open(server)
    header = await raw.start(BOT)
    assert b"jabber:component:accept" in header and f"from='{BOT}'".encode() in header
    assert raw.stream_id
    await raw.handshake(BOT_SECRET)
    assert b"handshake" in await raw.read_until(b"/>")
    await raw.close()


async def test_wrong_secret_is_not_authorized(server: Server) -> None:
    raw = await RawComponent.open(server)
    await raw.start(BOT)
    await raw.handshake("not-the-secret")
    assert await stream_error_of(raw) == "not-authorized"


async def test_unknown_domain_is_host_unknown(server: Server) -> None:
    raw = await RawComponent.open(server)
    await raw.start("stranger.example.test")
    assert await stream_error_of(raw) == "host-unknown"


async def test_client_namespace_is_refused(server: Server) -> None:
    raw = await RawComponent.open(server)
    await raw.start(BOT, ns="jabber:client")
    assert await stream_error_of(raw) == "invalid-namespace"


async def test_stanza_before_handshake_is_not_authorized(server: Server) -> None:
    raw = await RawComponent.open(server)
    await raw.start(BOT)
    raw.send(f"<message from='{BOT}' to='{ALICE}'><body>early</body></message>")
    assert await stream_error_of(raw) == "not-authorized"


async def test_second_connection_for_a_domain_is_a_conflict(server: Server, connect: Connect) -> None:
    first = await RawComponent.open(server)
    await first.start(BOT)
    await first.handshake(BOT_SECRET)
    await first.read_until(b"/>")
    second = await RawComponent.open(server)
    await second.start(BOT)
    await second.handshake(BOT_SECRET)
    assert await stream_error_of(second) == "conflict"

    # The first connection still serves the domain.
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, f"echo@{BOT}", "still there")
    assert b"still there" in await first.read_until(b"</message>")
    await first.close()


async def test_sending_from_a_foreign_domain_is_invalid_from(server: Server) -> None:
    raw = await RawComponent.open(server)
    await raw.start(BOT)
    await raw.handshake(BOT_SECRET)
    await raw.read_until(b"/>")
    raw.send(f"<message from='mallory@{DOMAIN}' to='{ALICE}'><body>spoofed</body></message>")
    assert await stream_error_of(raw) == "invalid-from"


# --- a slixmpp component -------------------------------------------------------------------------


class Component:
    """A connected slixmpp component that keeps every stanza it receives."""

    def __init__(self, xmpp: slixmpp.ComponentXMPP):
        self.xmpp = xmpp
        self.got: list[Element] = []
        self._arrived = asyncio.Event()
        xmpp.add_filter("in", self._tap)

    def _tap(self, stanza: Any) -> Any:
        self.got.append(stanza.xml)
        self._arrived.set()
        return stanza

    async def next(self, match: Callable[[Element], bool], what: str) -> Element:
        async def look() -> Element:
            while True:
                for el in self.got:
                    if match(el):
                        self.got.remove(el)
                        return el
                self._arrived.clear()
                await self._arrived.wait()

        try:
            return await asyncio.wait_for(look(), TIMEOUT)
        except TimeoutError:
            pytest.fail(f"the component never received {what}")


async def start_component(server: Server, domain: str, secret: str) -> Component:
    xmpp = slixmpp.ComponentXMPP(domain, secret, "127.0.0.1", server.ports["component"])
    comp = Component(xmpp)
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    xmpp.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    xmpp.connect()
    try:
        await asyncio.wait_for(started, TIMEOUT)
    except BaseException:
        xmpp.abort()
        raise
    return comp


async def stop_component(comp: Component) -> None:
    fut = comp.xmpp.disconnected
    comp.xmpp.disconnect()
    try:
        await asyncio.wait_for(asyncio.shield(fut), 5)
    except (TimeoutError, asyncio.CancelledError):
        comp.xmpp.abort()


ComponentFactory = Callable[[Server, str, str], Awaitable[Component]]


@pytest.fixture
async def component() -> AsyncIterator[ComponentFactory]:
    started: list[Component] = []

    async def go(server: Server, domain: str = BOT, secret: str = BOT_SECRET) -> Component:
        comp = await start_component(server, domain, secret)
        started.append(comp)
        return comp

    yield go
    for comp in started:
        if comp.xmpp.transport is not None:
            await stop_component(comp)


def is_message(body: str) -> Callable[[Element], bool]:
    return lambda el: local(el) == "message" and el.findtext("{jabber:component:accept}body") == body


async def test_messages_both_ways(server: Server, connect: Connect, component: ComponentFactory) -> None:
    comp = await component(server)
    alice = await connect(server, f"{ALICE}/desk")

    say(alice, f"echo@{BOT}", "to the bot")
    got = await comp.next(is_message("to the bot"), "alice's message")
    assert got.get("from") == f"{ALICE}/desk"
    assert got.get("to") == f"echo@{BOT}"

    # JIDs below the component's domain are the component's too.
    say(alice, f"room@muc.{BOT}", "to a subdomain")
    assert (await comp.next(is_message("to a subdomain"), "the subdomain message")).get("to") == f"room@muc.{BOT}"

    comp.xmpp.send_message(mto=f"{ALICE}/desk", mfrom=f"echo@{BOT}", mbody="from the bot", mtype="chat")
    reply = await alice.next(message("from the bot"), "the bot's message")
    assert reply.get("from") == f"echo@{BOT}"
    # To the bare JID as well: it is delivered like any message.
    comp.xmpp.send_message(mto=ALICE, mfrom=f"echo@{BOT}", mbody="to the bare JID", mtype="chat")
    await alice.next(message("to the bare JID"), "the bot's message to the bare JID")


async def test_iqs_both_ways(server: Server, connect: Connect, component: ComponentFactory) -> None:
    comp = await component(server)
    alice = await connect(server, f"{ALICE}/desk")

    # The component asks the server, and a client, and gets the answers.
    info = await comp.xmpp.make_iq_get(queryxmlns=NS_DISCO_INFO, ito=DOMAIN, ifrom=BOT).send(timeout=TIMEOUT)
    assert info["type"] == "result"
    ping = comp.xmpp.make_iq_get(ito=f"{ALICE}/desk", ifrom=BOT)
    ping.append(Element(f"{{{NS_PING}}}ping"))
    assert (await ping.send(timeout=TIMEOUT))["type"] == "result"

    # A client asks the component, which answers with an error the client gets back.
    def on_disco(iq: Any) -> None:
        if iq["type"] == "get":
            err = iq.reply(clear=True)
            err["type"] = "error"
            err["error"]["condition"] = "item-not-found"
            err["error"]["type"] = "cancel"
            err.send()

    comp.xmpp.register_handler(Callback("test-disco", MatchXPath(
        f"{{jabber:component:accept}}iq/{{{NS_DISCO_INFO}}}query"), on_disco))
    with pytest.raises(IqError) as e:
        await alice.c.plugin["xep_0030"].get_info(jid=BOT, timeout=TIMEOUT)
    assert e.value.iq["error"]["condition"] == "item-not-found"
    assert e.value.iq["from"] == BOT


async def test_listed_in_disco_items_while_connected(server: Server, connect: Connect,
                                                    component: ComponentFactory) -> None:
    alice = await connect(server, f"{ALICE}/desk")

    async def items() -> set[str]:
        res = await alice.query("get", f"<query xmlns='{NS_DISCO_ITEMS}'/>", to=DOMAIN)
        return {it.get("jid", "") for it in res.iter(f"{{{NS_DISCO_ITEMS}}}item")}

    assert BOT not in await items()
    comp = await component(server)
    assert BOT in await items()
    assert SLEEPER not in await items()
    await stop_component(comp)

    async def gone() -> bool:
        return BOT not in await items()

    await eventually(gone, "the component left disco#items")


async def test_configured_but_not_connected_is_service_unavailable(server: Server, connect: Connect) -> None:
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, f"someone@{SLEEPER}", "anyone there?")
    assert await bounced(alice, "anyone there?") == "service-unavailable"
    # A domain that is no component at all is still remote.
    say(alice, "someone@elsewhere.test", "far away")
    assert await bounced(alice, "far away") == "remote-server-not-found"


async def test_disabled_by_default(make_server: ServerFactory) -> None:
    srv = await make_server()
    assert "component" not in srv.ports
    assert "component" not in srv.modules
