"""Blocking (XEP-0191) and the authorization policy end to end with slixmpp (SPEC C2, admin
guide 7.1): a blocked entity always sees the user unavailable and cannot write to the user,
the user cannot write to it, block and unblock pushes reach the user's other resources, and
the default policy block-all with an allow list governs presence and IM alike."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from xml.etree.ElementTree import Element, fromstring

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from parley.modules.policy import PolicyModule
from parley.server import Server
from parley.storage.repos import RosterItem
from tests.clients import TIMEOUT, close_all, slix
from tests.conftest import DOMAIN, ServerFactory, add_user

NS_PING = "urn:xmpp:ping"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
BLOCKING = ("xep_0191",)

Match = Callable[[Element], bool]


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def local(el: Element) -> str:
    return el.tag.rpartition("}")[2]


class Peer:
    """A signed-in slixmpp client and every stanza it received, in arrival order."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.c = client
        self.jid = str(client.boundjid)
        self.got: list[Element] = []
        self._taken: set[int] = set()
        self._seen = 0
        self._arrived = asyncio.Event()
        client.add_filter("in", self._tap)

    def _tap(self, stanza: Any) -> Any:
        self.got.append(copy.deepcopy(stanza.xml))
        self._arrived.set()
        return stanza

    def send(self, xml: str) -> None:
        """Raw XML, queued behind whatever the client sent before (the wire keeps the order)."""
        self.c.send(xml)

    async def next(self, match: Match, what: str) -> Element:
        """The first stanza not handed out before that matches (the timeout is a safety net)."""

        async def look() -> Element:
            while True:
                for el in self.got:
                    if id(el) not in self._taken and match(el):
                        self._taken.add(id(el))
                        return el
                self._arrived.clear()
                await self._arrived.wait()

        try:
            return await asyncio.wait_for(look(), TIMEOUT)
        except TimeoutError:
            pytest.fail(f"{self.jid} never received {what}")

    async def mark(self) -> list[Element]:
        """Every stanza received since the previous mark. The server answers this client's
        ping only after everything it wrote to the client before, so the list is complete."""
        iq = self.c.make_iq(itype="get", ito=DOMAIN)
        iq.append(Element(q(NS_PING, "ping")))
        await iq.send(timeout=TIMEOUT)
        pos = max(i for i, el in enumerate(self.got) if local(el) == "iq" and el.get("id") == iq["id"])
        window, self._seen = self.got[self._seen:pos], pos + 1
        return window

    def _iq(self, type_: str, payload: str, to: str | None) -> Any:
        iq = self.c.make_iq(itype=type_, ito=to)
        iq.append(fromstring(payload))
        return iq

    async def query(self, type_: str, payload: str, to: str | None = None) -> Element:
        try:
            res = await self._iq(type_, payload, to).send(timeout=TIMEOUT)
        except IqError as e:
            pytest.fail(f"{payload} was refused: {e.iq['error']['condition']} {e.iq['error']['text']}")
        return copy.deepcopy(res.xml)

    async def refused(self, type_: str, payload: str, to: str | None = None) -> tuple[str, str]:
        """(error type, condition) of a request the server must refuse."""
        with pytest.raises(IqError) as err:
            await self._iq(type_, payload, to).send(timeout=TIMEOUT)
        return str(err.value.iq["error"]["type"]), str(err.value.iq["error"]["condition"])


Connect = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def connect(make_server: ServerFactory) -> AsyncIterator[Connect]:
    peers: list[Peer] = []

    async def go(server: Server, jid: str, *, roster: bool = True, available: bool = True,
                 plugins: tuple[str, ...] = (), **presence: Any) -> Peer:
        """Signs in; `presence` (pshow, pstatus, ppriority) goes into the initial presence,
        which the server has fully processed when this returns."""
        c = await slix(server, jid, presence=False, get_roster=roster, plugins=plugins)
        # The tests answer subscription requests themselves.
        c.auto_authorize = None
        c.auto_subscribe = False
        peer = Peer(c)
        peers.append(peer)
        if available:
            c.send_presence(**presence)
            await peer.mark()
        return peer

    yield go
    await close_all(*(p.c for p in peers))


# --- helpers --------------------------------------------------------------------------------------


def presence(frm: str | None = None, type_: str = "available", *, status: str | None = None) -> Match:
    def match(el: Element) -> bool:
        if local(el) != "presence" or (el.get("type") or "available") != type_:
            return False
        if frm is not None and el.get("from") != frm:
            return False
        return status is None or el.findtext("{jabber:client}status") == status

    return match


def presences_from(window: list[Element], bare: str) -> list[Element]:
    return [el for el in window if local(el) == "presence" and el.get("from", "").split("/")[0] == bare]


def message(body: str) -> Match:
    return lambda el: local(el) == "message" and el.findtext("{jabber:client}body") == body


def bodies(window: list[Element]) -> list[str]:
    return [el.findtext("{jabber:client}body") or "" for el in window
            if local(el) == "message" and el.get("type") != "error"]


def error_condition(el: Element) -> str | None:
    err = el.find("{jabber:client}error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith(f"{{{NS_STANZAS}}}") and local(c) != "text":
            return local(c)
    return None


async def bounce_of(peer: Peer, body: str) -> Element:
    return await peer.next(lambda el: local(el) == "message" and el.get("type") == "error"
                           and el.findtext("{jabber:client}body") == body, f"the error for {body!r}")


def say(peer: Peer, to: str, body: str) -> None:
    peer.send(f"<message to='{to}' type='chat'><body>{body}</body></message>")


def change_status(peer: Peer, status: str) -> None:
    peer.send(f"<presence><status>{status}</status></presence>")


def block_push(action: str) -> Match:
    def match(el: Element) -> bool:
        return local(el) == "iq" and el.get("type") == "set" and el.find(f"{{{NS_BLOCKING}}}{action}") is not None

    return match


def push_items(push: Element) -> set[str]:
    return {it.get("jid", "") for it in push.iter(f"{{{NS_BLOCKING}}}item")}


async def blocklist(peer: Peer) -> set[str]:
    return {str(j) for j in await peer.c.plugin["xep_0191"].get_blocked_jids(timeout=TIMEOUT)}


async def users(server: Server, *jids: str) -> None:
    for jid in jids:
        await add_user(server, jid)


async def friends(server: Server, a: str, b: str) -> None:
    """A mutual subscription stored before anyone signs in."""
    await server.repos.roster.save(a, [RosterItem(b, subscription="both")])
    await server.repos.roster.save(b, [RosterItem(a, subscription="both")])


async def quiet(*peers: Peer) -> None:
    for p in peers:
        await p.mark()


# --- XEP-0191 ---------------------------------------------------------------------------------------


async def test_block_and_unblock(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await friends(server, ALICE, BOB)
    desk = await connect(server, f"{ALICE}/desk", plugins=BLOCKING, pstatus="alice at her desk")
    phone = await connect(server, f"{ALICE}/phone", plugins=BLOCKING)
    bob = await connect(server, f"{BOB}/desk", pstatus="bob here")
    assert await blocklist(phone) == set()
    await quiet(desk, phone, bob)

    await desk.c.plugin["xep_0191"].block([BOB], timeout=TIMEOUT)
    push = await phone.next(block_push("block"), "the block push")
    assert push_items(push) == {BOB}
    assert await blocklist(desk) == {BOB}
    # The blocked contact sees the user go unavailable, from every resource.
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "alice/desk unavailable")
    await bob.next(presence(f"{ALICE}/phone", "unavailable"), "alice/phone unavailable")
    await quiet(desk, phone, bob)

    # Presence is cut both ways.
    change_status(desk, "hidden from bob")
    await desk.mark()
    assert not presences_from(await bob.mark(), ALICE)
    change_status(bob, "unseen by alice")
    await bob.mark()
    assert not presences_from(await desk.mark(), BOB)

    # The blocked contact cannot write to the user ...
    say(bob, ALICE, "let me in")
    assert error_condition(await bounce_of(bob, "let me in")) == "service-unavailable"
    bob.send(f"<iq type='get' id='v1' to='{ALICE}/desk'><query xmlns='jabber:iq:version'/></iq>")
    err = await bob.next(lambda el: local(el) == "iq" and el.get("id") == "v1", "the iq error")
    assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
    await bob.mark()
    assert bodies(await desk.mark()) == [] and bodies(await phone.mark()) == []

    # ... and the user cannot write to the blocked contact.
    say(desk, BOB, "hello bob")
    err = await bounce_of(desk, "hello bob")
    assert error_condition(err) == "not-acceptable"
    assert err.find(f"{{jabber:client}}error/{{{NS_BLOCKING_ERRORS}}}blocked") is not None
    await desk.mark()
    assert bodies(await bob.mark()) == []

    # Unblocking restores presence and messages.
    await phone.c.plugin["xep_0191"].unblock([BOB], timeout=TIMEOUT)
    push = await desk.next(block_push("unblock"), "the unblock push")
    assert push_items(push) == {BOB}
    assert await blocklist(desk) == set()
    await bob.next(presence(f"{ALICE}/desk", status="hidden from bob"), "alice/desk again")
    await bob.next(presence(f"{ALICE}/phone"), "alice/phone again")
    say(bob, ALICE, "hi again")
    await desk.next(message("hi again"), "bob's message")
    say(desk, BOB, "welcome back")
    await bob.next(message("welcome back"), "alice's message")
    change_status(bob, "visible again")
    await desk.next(presence(f"{BOB}/desk", status="visible again"), "bob's presence")


async def test_blocked_contact_logging_in_sees_the_user_unavailable(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await friends(server, ALICE, BOB)
    await friends(server, ALICE, CAROL)
    alice = await connect(server, f"{ALICE}/desk", plugins=BLOCKING, pstatus="online")
    await alice.c.plugin["xep_0191"].block([BOB, CAROL], timeout=TIMEOUT)
    assert await blocklist(alice) == {BOB, CAROL}

    bob = await connect(server, f"{BOB}/desk")
    assert not presences_from(bob.got, ALICE), "a probe of a blocked contact was answered"
    assert not presences_from(await alice.mark(), BOB), "the blocked contact's presence reached the user"

    # An empty unblock unblocks everyone, and the push says so with no items.
    await alice.query("set", f"<unblock xmlns='{NS_BLOCKING}'/>")
    push = await alice.next(block_push("unblock"), "the unblock-all push")
    assert push_items(push) == set()
    assert await blocklist(alice) == set()
    await bob.next(presence(f"{ALICE}/desk", status="online"), "alice after unblock-all")


# --- the default policy block-all with an allow list (SPEC C2) --------------------------------------


async def block_all(make_server: ServerFactory, **extra: Any) -> Server:
    server = await make_server(authorization={"default_policy": "block"}, **extra)
    await users(server, ALICE, BOB, CAROL)
    policy = server.modules["policy"]
    assert isinstance(policy, PolicyModule)
    await policy.repos.policy.add(ALICE, "allow", [BOB])
    policy.invalidate(ALICE)
    return server


async def test_block_all_only_allowed_users_reach_the_user(make_server: ServerFactory, connect: Connect) -> None:
    server = await block_all(make_server, presence={"adhoc_enabled": True})
    alice = await connect(server, f"{ALICE}/desk", pstatus="available")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/desk")

    # Allowed: messages go through, a subscription is approved.
    say(bob, ALICE, "from an allowed user")
    await alice.next(message("from an allowed user"), "the allowed message")
    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await bob.next(presence(ALICE, "subscribed"), "the approval")
    await bob.next(presence(f"{ALICE}/desk", status="available"), "alice's presence")

    # Not allowed: messages bounce, presence stays unavailable.
    say(carol, ALICE, "from a stranger")
    assert error_condition(await bounce_of(carol, "from a stranger")) == "service-unavailable"
    carol.send(f"<presence to='{ALICE}' type='probe'/>")
    await carol.mark()
    assert not [el for el in presences_from(carol.got, ALICE) if presence()(el)]
    change_status(alice, "changed")
    await bob.next(presence(f"{ALICE}/desk", status="changed"), "the change, for the allowed user")
    await alice.mark()
    assert not [el for el in presences_from(await carol.mark(), ALICE) if presence()(el)]
    assert bodies(await alice.mark()) == []


async def test_block_all_request_from_a_stranger_is_asked(make_server: ServerFactory, connect: Connect) -> None:
    server = await block_all(make_server)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    carol.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await carol.mark()
    window = await alice.mark()
    assert [el for el in window if presence(CAROL, "subscribe")(el)], \
        "under block-all a request from a user on no list must be put to the user, not dropped"
    alice.send(f"<presence to='{CAROL}' type='subscribed'/>")
    await carol.next(presence(ALICE, "subscribed"), "the approval")
    await carol.next(presence(f"{ALICE}/desk"), "alice's presence, once approved")


async def test_block_all_requester_in_the_roster_is_approved(make_server: ServerFactory, connect: Connect) -> None:
    # Seed 7.1: a requester already in the target's contact list is approved, even when the
    # target's default policy is block-all.
    server = await block_all(make_server)
    alice = await connect(server, f"{ALICE}/desk", pstatus="here")
    carol = await connect(server, f"{CAROL}/desk")
    await alice.query("set", f"<query xmlns='jabber:iq:roster'><item jid='{CAROL}'/></query>")
    await alice.mark()

    carol.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await carol.next(presence(ALICE, "subscribed"), "the approval")
    await carol.next(presence(f"{ALICE}/desk", status="here"), "alice's presence")
    assert not [el for el in await alice.mark() if presence(CAROL, "subscribe")(el)], "alice was asked"
