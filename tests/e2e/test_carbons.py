"""Message carbons (XEP-0280, urn:xmpp:carbons:2) end to end with slixmpp's xep_0280: who
gets received and sent copies, what is never copied, and that a resource that got a
message itself never gets a carbon of it as well."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from parley.server import Server
from tests.conftest import users
from tests.peer import ALICE, BOB, CAROL, DOMAIN, Connect, Peer, bodies, local, message, q, say

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_SID = "urn:xmpp:sid:0"
NS_HINTS = "urn:xmpp:hints"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
CARBONS = ("xep_0280",)


def carbon(el: Element, direction: str) -> Element | None:
    """The forwarded message of a carbon copy in that direction, if `el` is one."""
    if local(el) != "message":
        return None
    return el.find(f"{q(NS_CARBONS, direction)}/{q(NS_FORWARD, 'forwarded')}/{{jabber:client}}message")


def carbons_in(window: list[Element], direction: str) -> list[Element]:
    return [inner for el in window if (inner := carbon(el, direction)) is not None]


def originals(window: list[Element]) -> list[str]:
    """Bodies of the plain (not forwarded) messages in the window."""
    return bodies([el for el in window if carbon(el, "received") is None and carbon(el, "sent") is None])


async def with_carbons(connect: Connect, server: Server, jid: str, **presence: object) -> Peer:
    peer = await connect(server, jid, plugins=CARBONS, **presence)
    await peer.c.plugin["xep_0280"].enable(timeout=10)
    await peer.mark()
    return peer


async def test_the_server_advertises_carbons(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    info = await alice.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=DOMAIN)
    assert NS_CARBONS in {f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")}


async def test_message_to_a_full_jid_is_copied_to_the_other_resources(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await with_carbons(connect, server, f"{BOB}/desk")
    phone = await with_carbons(connect, server, f"{BOB}/phone")
    plain = await connect(server, f"{BOB}/plain")  # never enabled carbons
    events: list[object] = []
    phone.c.add_event_handler("carbon_received", events.append)

    say(alice, desk.jid, "to the desk")
    await desk.next(message("to the desk", frm=alice.jid), "the message")
    copy = await phone.next(lambda el: carbon(el, "received") is not None, "the received carbon")
    assert copy.get("from") == BOB and copy.get("to") == phone.jid
    inner = carbon(copy, "received")
    assert inner is not None
    assert inner.get("from") == alice.jid and inner.get("to") == desk.jid
    assert inner.findtext("{jabber:client}body") == "to the desk"
    # The copy shows the same archive id as the message itself.
    assert inner.find(q(NS_SID, "stanza-id")) is not None
    assert events, "slixmpp did not take the copy for a carbon of its own account"

    window = await desk.mark()
    assert carbons_in(window, "received") == [], "the resource that got the message also got a carbon"
    assert bodies(await plain.mark()) == [], "a resource without carbons got a copy"
    assert originals(await phone.mark()) == []


async def test_forked_message_is_not_copied_to_resources_that_got_it(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await with_carbons(connect, server, f"{BOB}/desk")
    phone = await with_carbons(connect, server, f"{BOB}/phone")
    hidden = await with_carbons(connect, server, f"{BOB}/hidden", ppriority=-1)

    say(alice, BOB, "to everyone")
    for b in (desk, phone):
        await b.next(message("to everyone"), "the forked message")
    # A negative-priority resource gets no forked message, so it gets the carbon.
    copy = await hidden.next(lambda el: carbon(el, "received") is not None, "the carbon")
    inner = carbon(copy, "received")
    assert inner is not None and inner.findtext("{jabber:client}body") == "to everyone"
    for b in (desk, phone):
        window = await b.mark()
        assert carbons_in(window, "received") == [], f"{b.jid} got the message twice"
    assert originals(await hidden.mark()) == []


async def test_a_locked_conversation_is_copied_to_the_other_resources(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await with_carbons(connect, server, f"{BOB}/desk")
    phone = await with_carbons(connect, server, f"{BOB}/phone")
    say(desk, ALICE, "from the desk")
    await alice.next(message("from the desk"), "the reply")
    await phone.mark()

    say(alice, BOB, "locked")
    await desk.next(message("locked"), "the locked message")
    copies = carbons_in(await phone.mark(), "received")
    assert [c.findtext("{jabber:client}body") for c in copies] == ["locked"]
    assert carbons_in(await desk.mark(), "received") == []


async def test_sent_messages_are_copied_to_the_senders_other_resources(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    bob = await connect(server, f"{BOB}/desk")
    desk = await with_carbons(connect, server, f"{ALICE}/desk")
    phone = await with_carbons(connect, server, f"{ALICE}/phone")
    events: list[object] = []
    phone.c.add_event_handler("carbon_sent", events.append)

    say(desk, BOB, "sent from the desk")
    got = await bob.next(message("sent from the desk"), "the message")
    copy = await phone.next(lambda el: carbon(el, "sent") is not None, "the sent carbon")
    assert copy.get("from") == ALICE
    inner = carbon(copy, "sent")
    assert inner is not None
    assert inner.get("from") == desk.jid and inner.get("to") == BOB
    assert inner.findtext("{jabber:client}body") == "sent from the desk"
    # Each side sees the id of its own archive only.
    ids = {s.get("by"): s.get("id") for s in inner.findall(q(NS_SID, "stanza-id"))}
    assert set(ids) == {ALICE}
    theirs = {s.get("by") for s in got.findall(q(NS_SID, "stanza-id"))}
    assert theirs == {BOB}
    assert events
    # The sender itself gets no copy of what it sent.
    assert carbons_in(await desk.mark(), "sent") == []


async def test_private_and_no_copy_messages_are_not_copied(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await with_carbons(connect, server, f"{BOB}/desk")
    phone = await with_carbons(connect, server, f"{BOB}/phone")
    other = await with_carbons(connect, server, f"{ALICE}/phone")

    alice.send(f"<message to='{desk.jid}' type='chat'><body>private</body>"
               f"<private xmlns='{NS_CARBONS}'/></message>")
    alice.send(f"<message to='{desk.jid}' type='chat'><body>no copy</body>"
               f"<no-copy xmlns='{NS_HINTS}'/></message>")
    got = await desk.next(message("private"), "the private message")
    assert got.find(q(NS_CARBONS, "private")) is None, "the private mark reached the recipient"
    await desk.next(message("no copy"), "the no-copy message")
    await alice.mark()
    assert carbons_in(await phone.mark(), "received") == []
    assert carbons_in(await other.mark(), "sent") == []


async def test_only_conversation_messages_are_copied(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await with_carbons(connect, server, f"{BOB}/desk")
    phone = await with_carbons(connect, server, f"{BOB}/phone")

    alice.send(f"<message to='{desk.jid}' type='headline'><body>news</body></message>")
    alice.send(f"<message to='{desk.jid}' type='normal'><subject>no body</subject></message>")
    alice.send(f"<message to='{desk.jid}' type='error'><body>an error</body>"
               f"<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
               f"</message>")
    alice.send(f"<message to='{desk.jid}' type='normal'><body>a normal one</body></message>")
    alice.send(f"<message to='{desk.jid}' type='chat'><composing xmlns='{NS_CHATSTATES}'/></message>")
    await desk.next(message("a normal one"), "the normal message")
    await alice.mark()
    copies = carbons_in(await phone.mark(), "received")
    assert [c.findtext("{jabber:client}body") for c in copies] == ["a normal one", None]
    assert copies[1].find(q(NS_CHATSTATES, "composing")) is not None


async def test_disabled_carbons_stop_the_copies(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await connect(server, f"{BOB}/desk")
    phone = await with_carbons(connect, server, f"{BOB}/phone")
    say(alice, desk.jid, "while enabled")
    await phone.next(lambda el: carbon(el, "received") is not None, "the carbon")
    await phone.mark()

    await phone.c.plugin["xep_0280"].disable(timeout=10)
    say(alice, desk.jid, "after disable")
    await desk.next(message("after disable"), "the message")
    await alice.mark()
    assert carbons_in(await phone.mark(), "received") == []


async def test_carbons_are_set_on_ones_own_account_only(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    assert await alice.refused("set", f"<enable xmlns='{NS_CARBONS}'/>", to=BOB) == ("auth", "forbidden")
    assert (await alice.refused("set", f"<bogus xmlns='{NS_CARBONS}'/>"))[1] == "bad-request"
    # Sent to the server itself, as some clients do, it works as well.
    await alice.query("set", f"<enable xmlns='{NS_CARBONS}'/>", to=DOMAIN)
    phone = await connect(server, f"{ALICE}/phone")
    carol = await connect(server, f"{CAROL}/desk")
    say(carol, phone.jid, "to the phone")
    await phone.next(message("to the phone"), "the message")
    await carol.mark()
    assert [c.findtext("{jabber:client}body") for c in carbons_in(await alice.mark(), "received")] == \
        ["to the phone"]


async def test_messages_to_oneself_are_not_copied_twice(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    desk = await with_carbons(connect, server, f"{ALICE}/desk")
    phone = await with_carbons(connect, server, f"{ALICE}/phone")
    laptop = await with_carbons(connect, server, f"{ALICE}/laptop")

    say(desk, phone.jid, "note to self")
    await phone.next(message("note to self"), "the message")
    assert carbons_in(await desk.mark(), "received") + carbons_in(desk.got, "sent") == []
    assert carbons_in(await phone.mark(), "received") == []
    window = await laptop.mark()
    assert [c.findtext("{jabber:client}body") for c in carbons_in(window, "received")] == ["note to self"]
    assert carbons_in(window, "sent") == []
