"""Push notifications (XEP-0357) end to end: a slixmpp component on Parley's component port
plays the app server; clients enable and disable push; messages for an offline user (or
one whose sessions are all hibernated) reach the app server with the configured content."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from xml.etree.ElementTree import Element

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from parley.server import Server
from parley.xmpp.jid import JID
from tests.clients import close_all, eventually
from tests.conftest import ServerFactory, users
from tests.e2e.test_component import Component, start_component, stop_component
from tests.peer import ALICE, BOB, Connect, Peer, q, say

APP = "push.example.test"
APP_SECRET = "app-secret"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
NS_SUMMARY = "urn:xmpp:push:summary"
NS_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_COMPONENT = "jabber:component:accept"

PUBLISH_OPTIONS = (f"<x xmlns='{NS_DATA}' type='submit'>"
                   f"<field var='FORM_TYPE'><value>{NS_PUBLISH_OPTIONS}</value></field>"
                   "<field var='secret'><value>eruio234vzxc2kla-91</value></field></x>")


class AppServer:
    """The component side of push: answers every publish, with an error when told to."""

    def __init__(self, comp: Component):
        self.comp = comp
        self.refuse = False
        comp.xmpp.register_handler(Callback("push-publish", MatchXPath(
            f"{{{NS_COMPONENT}}}iq/{{{NS_PUBSUB}}}pubsub"), self._on_publish))

    def _on_publish(self, iq: Any) -> None:
        if iq["type"] != "set":
            return
        if self.refuse:
            err = iq.reply(clear=True)
            err["type"] = "error"
            err["error"]["condition"] = "item-not-found"
            err["error"]["type"] = "cancel"
            err.send()
        else:
            iq.reply(clear=True).send()

    async def notification(self) -> Element:
        return await self.comp.next(lambda el: el.find(q(NS_PUBSUB, "pubsub")) is not None, "a push notification")


AppFactory = Callable[[Server], Awaitable[AppServer]]


@pytest.fixture
async def app() -> AsyncIterator[AppFactory]:
    started: list[Component] = []

    async def go(server: Server) -> AppServer:
        comp = await start_component(server, APP, APP_SECRET)
        started.append(comp)
        return AppServer(comp)

    yield go
    for comp in started:
        if comp.xmpp.transport is not None:
            await stop_component(comp)


async def push_server(make_server: ServerFactory, include: str = "summary") -> Server:
    srv = await make_server(components={"enabled": True, "port": 0,
                                        "components": [{"domain": APP, "secret": APP_SECRET}]},
                            push={"include": include})
    await users(srv, ALICE, BOB)
    return srv


async def enable(peer: Peer, node: str = "yxs32uqsflafdk3iuqo", options: str = PUBLISH_OPTIONS) -> None:
    await peer.query("set", f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='{node}'>{options}</enable>")


async def sign_out(server: Server, peer: Peer) -> None:
    await close_all(peer.c)

    async def offline() -> bool:
        return not server.router.sessions.of(peer.jid.split("/")[0])

    await eventually(offline, f"{peer.jid} signed out")


def summary_of(iq: Element) -> dict[str, list[str]]:
    note = notification_of(iq)
    x = note.find(q(NS_DATA, "x"))
    assert x is not None and x.get("type") == "submit"
    return {f.get("var", ""): [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
            for f in x.findall(q(NS_DATA, "field"))}


def notification_of(iq: Element) -> Element:
    publish = iq.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}")
    assert publish is not None
    note = publish.find(f"{q(NS_PUBSUB, 'item')}/{q(NS_PUSH, 'notification')}")
    assert note is not None
    return note


async def test_offline_message_is_pushed_with_a_summary(make_server: ServerFactory, connect: Connect,
                                                       app: AppFactory) -> None:
    server = await push_server(make_server)
    appserver = await app(server)
    alice = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await enable(alice)
    await sign_out(server, alice)

    say(bob, ALICE, "are you there?")
    iq = await appserver.notification()
    assert (iq.get("type"), iq.get("from"), iq.get("to")) == ("set", ALICE, APP)
    publish = iq.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}")
    assert publish is not None and publish.get("node") == "yxs32uqsflafdk3iuqo"
    assert summary_of(iq) == {"FORM_TYPE": [NS_SUMMARY], "message-count": ["1"],
                              "last-message-sender": [f"{BOB}/desk"]}
    options = iq.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish-options')}/{q(NS_DATA, 'x')}")
    assert options is not None
    values = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in options.findall(q(NS_DATA, "field"))}
    assert values == {"FORM_TYPE": NS_PUBLISH_OPTIONS, "secret": "eruio234vzxc2kla-91"}

    say(bob, ALICE, "hello?")
    assert summary_of(await appserver.notification())["message-count"] == ["2"]


async def test_include_body(make_server: ServerFactory, connect: Connect, app: AppFactory) -> None:
    server = await push_server(make_server, include="body")
    appserver = await app(server)
    alice = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await enable(alice, options="")
    # While alice is online nothing is pushed; the first notification is for the later message.
    say(bob, f"{ALICE}/phone", "seen live")
    await alice.next(lambda el: el.findtext("{jabber:client}body") == "seen live", "the live message")
    await sign_out(server, alice)
    say(bob, ALICE, "the body")
    iq = await appserver.notification()
    assert summary_of(iq)["last-message-body"] == ["the body"]
    assert summary_of(iq)["message-count"] == ["1"]
    # Without options given, none are sent.
    assert iq.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish-options')}") is None


async def test_include_none_sends_an_empty_notification(make_server: ServerFactory, connect: Connect,
                                                        app: AppFactory) -> None:
    server = await push_server(make_server, include="none")
    appserver = await app(server)
    alice = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await enable(alice)
    await sign_out(server, alice)
    say(bob, ALICE, "secret content")
    iq = await appserver.notification()
    note = notification_of(iq)
    assert list(note) == [] and not (note.text or "").strip()
    assert "secret content" not in "".join(iq.itertext())


async def test_error_from_the_app_server_disables_the_registration(make_server: ServerFactory, connect: Connect,
                                                                   app: AppFactory) -> None:
    server = await push_server(make_server)
    appserver = await app(server)
    appserver.refuse = True
    alice = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await enable(alice, node="dead")
    await enable(alice, node="alive")
    push = server.modules["push"]
    assert len(await push.registrations.list(ALICE)) == 2  # type: ignore[attr-defined]
    await sign_out(server, alice)
    say(bob, ALICE, "wake up")
    await appserver.notification()
    await appserver.notification()

    async def disabled() -> bool:
        return not await push.registrations.list(ALICE)  # type: ignore[attr-defined]

    await eventually(disabled, "the refused registrations were disabled")


async def test_disable(make_server: ServerFactory, connect: Connect, app: AppFactory) -> None:
    server = await push_server(make_server, include="body")
    appserver = await app(server)
    alice = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await enable(alice, node="one")
    await enable(alice, node="two")
    await alice.query("set", f"<disable xmlns='{NS_PUSH}' jid='{APP}' node='one'/>")
    await sign_out(server, alice)
    say(bob, ALICE, "only to two")
    iq = await appserver.notification()
    publish = iq.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}")
    assert publish is not None and publish.get("node") == "two"

    alice = await connect(server, f"{ALICE}/phone")
    await alice.query("set", f"<disable xmlns='{NS_PUSH}' jid='{APP}'/>")
    push = server.modules["push"]
    assert await push.registrations.list(ALICE) == []  # type: ignore[attr-defined]


async def test_enable_refusals_and_account_feature(make_server: ServerFactory, connect: Connect) -> None:
    server = await push_server(make_server)
    alice = await connect(server, f"{ALICE}/phone")
    info = await alice.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=ALICE)
    assert NS_PUSH in {f.get("var") for f in info.iter(q(NS_DISCO_INFO, "feature"))}

    assert await alice.refused("set", f"<enable xmlns='{NS_PUSH}' node='n'/>") == ("modify", "bad-request")
    assert await alice.refused("set", f"<enable xmlns='{NS_PUSH}' jid='{APP}'/>") == ("modify", "bad-request")
    wrong_form = (f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='{NS_DATA}' type='submit'>"
                  "<field var='FORM_TYPE'><value>urn:example:other</value></field></x></enable>")
    assert await alice.refused("set", wrong_form) == ("modify", "bad-request")
    assert await alice.refused("set", f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'/>",
                               to=BOB) == ("auth", "forbidden")


class HibernatedSession:
    """Stands in for a session that stream management keeps after its connection dropped:
    registered and available, its connection closed."""

    def __init__(self, jid: str):
        self.jid = JID.parse(jid)
        self.bare = str(self.jid.bare)
        self.available = True
        self.priority = 0
        self.presence: Element | None = None
        self.interested = False
        self.login_at = 0.0
        self.closed = True
        self.sm = object()
        self.kept: list[Element] = []

    def send(self, stanza: Element) -> None:
        self.kept.append(stanza)

    def send_bytes(self, data: bytes, stanza: Element | None = None) -> None:
        if stanza is not None:
            self.kept.append(stanza)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        pass


async def test_hibernated_sessions_are_pushed(make_server: ServerFactory, connect: Connect,
                                              app: AppFactory) -> None:
    server = await push_server(make_server, include="body")
    appserver = await app(server)
    alice = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await enable(alice)
    await sign_out(server, alice)
    kept = HibernatedSession(f"{ALICE}/phone")
    server.router.sessions.add(kept)
    try:
        say(bob, ALICE, "while asleep")
        iq = await appserver.notification()
        assert summary_of(iq)["last-message-body"] == ["while asleep"]
        assert summary_of(iq)["message-count"] == ["1"]
        say(bob, f"{ALICE}/phone", "to the resource")
        assert summary_of(await appserver.notification())["message-count"] == ["2"]
        # The messages go on to the kept session (the notification leaves first), not to
        # offline storage.

        async def both_kept() -> bool:
            return [el.findtext("{jabber:client}body") for el in kept.kept] == ["while asleep", "to the resource"]

        await eventually(both_kept, "the messages reached the hibernated session")
        assert await server.repos.offline.count(ALICE) == 0
    finally:
        server.router.sessions.remove(kept)


async def test_no_push_registration_no_notification(make_server: ServerFactory, connect: Connect,
                                                    app: AppFactory) -> None:
    server = await push_server(make_server, include="body")
    appserver = await app(server)
    alice = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await sign_out(server, alice)
    say(bob, ALICE, "not pushed")

    async def stored() -> bool:
        return await server.repos.offline.count(ALICE) == 1

    await eventually(stored, "the message went to offline storage")
    # Enabling later and another message: the first notification is for the later one.
    alice = await connect(server, f"{ALICE}/phone")
    await enable(alice)
    await sign_out(server, alice)
    say(bob, ALICE, "pushed")
    iq = await appserver.notification()
    assert summary_of(iq)["last-message-body"] == ["pushed"]


async def test_cancelled_account_loses_its_registrations(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(registration={"enabled": True})
    await users(server, ALICE)
    alice = await connect(server, f"{ALICE}/phone")
    await enable(alice)
    push = server.modules["push"]
    assert len(await push.registrations.list(ALICE)) == 1  # type: ignore[attr-defined]
    await alice.query("set", "<query xmlns='jabber:iq:register'><remove/></query>")

    async def forgotten() -> bool:
        return not await push.registrations.list(ALICE)  # type: ignore[attr-defined]

    await eventually(forgotten, "the push registrations of the cancelled account were removed")
