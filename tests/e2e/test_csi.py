"""Client state indication (XEP-0352) end to end with slixmpp's xep_0352 and raw XML: while a
client is inactive the server holds presence (the newest per sender) and chat-state-only
messages, and sends them, in order, before anything that cannot wait or when the client is
active again.

That something was held is shown without waiting: by what the server holds for the session,
and by what the client never gets (an older presence replaced by a newer one)."""

from __future__ import annotations

import base64
from xml.etree.ElementTree import Element

from parley.modules.csi import ClientState
from parley.server import Server
from parley.xmpp.jid import JID
from tests.clients import Raw
from tests.conftest import ServerFactory, subscribed, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    Connect,
    Peer,
    change_status,
    local,
    message,
    presence,
    q,
    say,
)

NS_CSI = "urn:xmpp:csi:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_MAM = "urn:xmpp:mam:2"
CSI = ("xep_0352",)


def state_of(server: Server, peer: Peer) -> ClientState:
    session = server.router.sessions.get(JID.parse(peer.jid))
    assert session is not None
    state = getattr(session, "csi", None)
    assert isinstance(state, ClientState), "the session has no client state"
    return state


async def inactive(server: Server, connect: Connect, jid: str) -> Peer:
    peer = await connect(server, jid, plugins=CSI)
    assert peer.c.plugin["xep_0352"].enabled, "the server did not offer CSI"
    peer.c.plugin["xep_0352"].send_inactive()
    await peer.mark()
    assert state_of(server, peer).inactive
    return peer


def statuses(window: list[Element], frm: str) -> list[str | None]:
    return [el.findtext("{jabber:client}status") for el in window
            if local(el) == "presence" and el.get("from") == frm]


def after(window: list[Element], match: object) -> list[Element]:
    """The stanzas of the window before the first that matches."""
    for i, el in enumerate(window):
        if match(el):  # type: ignore[operator]
            return window[:i]
    raise AssertionError("the stanza is not in the window")


async def test_csi_is_a_stream_feature(server: Server) -> None:
    await users(server, ALICE)
    raw = await Raw.open(server)
    await raw.start()
    token = base64.b64encode(b"\0alice\0secret").decode()
    raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    await raw.read_until(b"</success>")
    features = await raw.start()
    assert f"<csi xmlns='{NS_CSI}'/>".encode() in features
    await raw.close()


async def test_presence_is_held_and_only_the_newest_is_sent(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await inactive(server, connect, f"{BOB}/phone")
    await bob.mark()

    for status in ("one", "two", "three"):
        change_status(alice, status)
    await alice.mark()
    assert state_of(server, bob).held == 1, "the presence updates were not held (or not merged)"

    say(alice, BOB, "wake up")
    got = await bob.next(message("wake up"), "the message")
    window = await bob.mark()
    before = after(window, lambda el: el is got)
    assert statuses(before, alice.jid) == ["three"], "older presence was sent, or the held one came late"
    assert statuses(window, alice.jid) == ["three"]


async def test_presence_of_several_senders_keeps_its_order(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, BOB, ALICE)
    await subscribed(server, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    bob = await inactive(server, connect, f"{BOB}/phone")
    await bob.mark()

    change_status(alice, "alice busy")
    await alice.mark()
    change_status(carol, "carol busy")
    await carol.mark()
    change_status(alice, "alice free")
    await alice.mark()
    assert state_of(server, bob).held == 2

    window = await bob.mark()  # an iq answer: everything held comes before it
    got = [(el.get("from"), el.findtext("{jabber:client}status")) for el in window if local(el) == "presence"]
    assert got == [(carol.jid, "carol busy"), (alice.jid, "alice free")]
    assert state_of(server, bob).held == 0


async def test_chat_states_wait_for_the_next_real_message(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await inactive(server, connect, f"{BOB}/phone")
    await bob.mark()

    alice.send(f"<message to='{bob.jid}' type='chat'><composing xmlns='{NS_CHATSTATES}'/></message>")
    alice.send(f"<message to='{bob.jid}' type='chat'><paused xmlns='{NS_CHATSTATES}'/></message>")
    await alice.mark()
    assert state_of(server, bob).held == 1

    alice.send(f"<message to='{bob.jid}' type='chat'><body>done typing</body>"
               f"<active xmlns='{NS_CHATSTATES}'/></message>")
    got = await bob.next(message("done typing"), "the message")
    window = await bob.mark()
    states = [next(iter(el)).tag for el in after(window, lambda el: el is got) if local(el) == "message"]
    assert states == [q(NS_CHATSTATES, "paused")], "the newest chat state did not come first, alone"
    assert all(el.find(q(NS_CHATSTATES, "composing")) is None for el in window)


async def test_active_sends_what_is_held(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await inactive(server, connect, f"{BOB}/phone")
    await bob.mark()
    change_status(alice, "held")
    await alice.mark()
    assert state_of(server, bob).held == 1

    bob.c.plugin["xep_0352"].send_active()
    await bob.next(presence(alice.jid, status="held"), "the held presence")
    await bob.mark()
    state = state_of(server, bob)
    assert not state.inactive and state.held == 0

    # Active again: nothing is held any more.
    change_status(alice, "live")
    await alice.mark()
    assert state_of(server, bob).held == 0
    await bob.next(presence(alice.jid, status="live"), "the live presence")


async def test_what_is_never_held(make_server: ServerFactory, connect: Connect) -> None:
    # Requests go to the user (not auto-approved), so there is one to deliver.
    server = await make_server(authorization={"auto_approve": False})
    await users(server, ALICE, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    bob = await inactive(server, connect, f"{BOB}/phone")

    # A subscription request wants an answer: it arrives while the client is inactive.
    carol.send(f"<presence to='{BOB}' type='subscribe'/>")
    await bob.next(presence(type_="subscribe", of=CAROL), "the subscription request")
    # A message with a body, straight away.
    say(alice, BOB, "right now")
    await bob.next(message("right now"), "the message")
    # A message with something besides a chat state.
    alice.send(f"<message to='{bob.jid}'><received xmlns='urn:xmpp:receipts' id='x'/></message>")
    await bob.next(lambda el: el.find("{urn:xmpp:receipts}received") is not None, "the receipt")
    assert state_of(server, bob).held == 0
    assert state_of(server, bob).inactive


async def test_archive_results_reach_an_inactive_client(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await inactive(server, connect, f"{BOB}/phone")
    say(alice, BOB, "for the record")
    await bob.next(message("for the record"), "the message")
    await bob.mark()
    await bob.query("set", f"<query xmlns='{NS_MAM}' queryid='csi'/>")
    window = await bob.mark()
    results = [el for el in window if el.find(q(NS_MAM, "result")) is not None]
    assert len(results) == 1


async def test_raw_nonzas(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    raw = await Raw.open(server)
    await raw.login("bob", "secret", resource="raw")
    raw.send("<presence/>")
    raw.send(f"<inactive xmlns='{NS_CSI}'/>")
    raw.send("<iq type='get' id='m1'><ping xmlns='urn:xmpp:ping'/></iq>")
    await raw.read_until(b"id='m1'")

    change_status(alice, "first")
    change_status(alice, "second")
    await alice.mark()
    raw.send(f"<active xmlns='{NS_CSI}'/>")
    raw.send("<iq type='get' id='m2'><ping xmlns='urn:xmpp:ping'/></iq>")
    data = await raw.read_until(b"id='m2'")
    assert b"second" in data and b"first" not in data
    await raw.close()
