"""One-to-one messages end to end with slixmpp (RFC 6121 section 8) and the seed's IM rules
(SPEC C2): forking to every available resource with non-negative priority, reply locking,
full JIDs, offline storage (XEP-0160) with delay stamps (XEP-0203) and flexible retrieval
(XEP-0013), the IM and offline switches and limits, the session cap per user, session
replacement and disabled accounts."""

from __future__ import annotations

import datetime as dt
from xml.etree.ElementTree import Element

import pytest

from parley.server import Server
from tests.clients import AuthFailed, Raw, close_all, slix
from tests.conftest import ServerFactory, add_user, subscribed, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DOMAIN,
    Connect,
    Peer,
    bodies,
    bounced,
    local,
    message,
    say,
)

NS_DELAY = "urn:xmpp:delay"
NS_OFFLINE = "http://jabber.org/protocol/offline"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


# --- message helpers -------------------------------------------------------------------------------


def errors(window: list[Element]) -> list[Element]:
    return [el for el in window if local(el) == "message" and el.get("type") == "error"]


async def locked_to_the_desk(server: Server, connect: Connect) -> tuple[Peer, Peer, Peer]:
    """alice/desk, bob/desk and bob/phone signed in, and the conversation between alice and
    bob locked to bob/desk by a message from there."""
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await connect(server, f"{BOB}/desk")
    phone = await connect(server, f"{BOB}/phone")
    say(desk, ALICE, "locked to the desk")
    await alice.next(message("locked to the desk"), "the reply")
    return alice, desk, phone


async def only_marker(peer: Peer, sender: Peer, marker: str) -> list[str]:
    """Sends a marker to the peer's full JID and returns the bodies the peer received since
    its previous mark, up to and including the marker (the sender's stanzas arrive in the
    order they were sent)."""
    say(sender, peer.jid, marker)
    await peer.next(message(marker), "the marker")
    return bodies(await peer.mark())


# --- forking and reply locking (SPEC C2) -----------------------------------------------------------------


async def test_bare_jid_forks_to_every_non_negative_resource(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    b1 = await connect(server, f"{BOB}/desk", ppriority=5)
    b2 = await connect(server, f"{BOB}/phone", ppriority=0)
    b3 = await connect(server, f"{BOB}/away", ppriority=-1)
    for b in (b1, b2, b3):
        await b.mark()

    say(alice, BOB, "hello all")
    for b in (b1, b2):
        got = await b.next(message("hello all", frm=f"{ALICE}/desk", type_="chat"), "the forked message")
        assert got.get("to") in (BOB, b.jid)
    assert bodies(await b3.mark()) == []
    # A negative-priority resource still gets what is sent to its full JID, and nothing else.
    say(alice, b3.jid, "just you")
    await b3.next(message("just you"), "the message to the full JID")
    assert bodies(await b3.mark()) == ["just you"]


async def test_reply_locks_the_conversation_to_the_replying_resource(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    desk = await connect(server, f"{BOB}/desk")
    phone = await connect(server, f"{BOB}/phone")

    say(alice, BOB, "one")
    for b in (desk, phone):
        await b.next(message("one"), "the first message")
    say(desk, ALICE, "answer from the desk")
    await alice.next(message("answer from the desk", frm=desk.jid), "the reply")

    await phone.mark()
    say(alice, BOB, "two")
    await desk.next(message("two"), "the locked message")
    assert await only_marker(phone, alice, "m1") == ["m1"], "the other resource got a locked message"

    # The lock belongs to one conversation: another correspondent still reaches both.
    say(carol, BOB, "from carol")
    for b in (desk, phone):
        await b.next(message("from carol"), "carol's message")

    # The recipient writes from another resource: the conversation follows it.
    say(phone, ALICE, "answer from the phone")
    await alice.next(message("answer from the phone", frm=phone.jid), "the reply from the phone")
    await desk.mark()
    say(alice, BOB, "three")
    await phone.next(message("three"), "the message after the switch")
    assert await only_marker(desk, alice, "m2") == ["m2"], "the old resource still got the conversation"


async def test_lock_ends_when_the_resource_disconnects(server: Server, connect: Connect) -> None:
    alice, desk, phone = await locked_to_the_desk(server, connect)
    await close_all(desk.c)
    await phone.next(lambda el: local(el) == "presence" and el.get("from") == desk.jid
                     and el.get("type") == "unavailable", "the desk going away")

    say(alice, BOB, "after the desk left")
    await phone.next(message("after the desk left"), "the message once the lock is gone")
    # Back with the same resource: not locked any more, both resources get the conversation.
    desk2 = await connect(server, f"{BOB}/desk")
    say(alice, BOB, "both again")
    for b in (desk2, phone):
        await b.next(message("both again"), "the forked message")


async def test_lock_ends_when_the_resource_goes_unavailable(server: Server, connect: Connect) -> None:
    alice, desk, phone = await locked_to_the_desk(server, connect)

    desk.send("<presence type='unavailable'/>")
    await desk.mark()
    say(alice, BOB, "while the desk is away")
    await phone.next(message("while the desk is away"), "the message once the desk is unavailable")
    assert await only_marker(desk, alice, "m1") == ["m1"], "an unavailable resource got a bare-JID message"


async def test_lock_does_not_come_back_with_the_resource(server: Server, connect: Connect) -> None:
    alice, desk, phone = await locked_to_the_desk(server, connect)
    desk.send("<presence type='unavailable'/>")
    desk.send("<presence/>")
    await desk.mark()
    await phone.mark()

    say(alice, BOB, "after the desk came back")
    await desk.next(message("after the desk came back"), "the message on the desk")
    assert await only_marker(phone, alice, "m1") == ["after the desk came back", "m1"], \
        "the lock outlived the resource's unavailable presence"


async def test_no_available_resource_the_newest_login_gets_it(server: Server, connect: Connect) -> None:
    # SPEC C2: with no available resource, the highest priority, then the most recent login.
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    older = await connect(server, f"{BOB}/older", available=False)
    newer = await connect(server, f"{BOB}/newer", available=False)
    say(alice, BOB, "anyone?")
    await newer.next(message("anyone?"), "the message on the newest session")
    assert await only_marker(older, alice, "m1") == ["m1"]
    assert not errors(await alice.mark())


# --- full JIDs ---------------------------------------------------------------------------------------------


async def test_full_jid_reaches_that_resource_only(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await connect(server, f"{BOB}/desk")
    phone = await connect(server, f"{BOB}/phone")
    await desk.mark()
    say(alice, phone.jid, "to the phone")
    await phone.next(message("to the phone", frm=alice.jid), "the message")
    assert await only_marker(desk, alice, "m1") == ["m1"]


async def test_full_jid_of_an_absent_resource_follows_the_bare_jid_rules(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    desk = await connect(server, f"{BOB}/desk")
    phone = await connect(server, f"{BOB}/phone")
    say(alice, f"{BOB}/gone", "to a resource that left")
    for b in (desk, phone):
        await b.next(message("to a resource that left"), "the message")
    say(alice, f"{BOB}/gone", "a normal one", type_="normal")
    for b in (desk, phone):
        await b.next(message("a normal one"), "the normal message")
    assert not errors(await alice.mark())


# --- offline messages (XEP-0160, XEP-0203) -------------------------------------------------------------------


def delay_of(el: Element) -> Element:
    delay = el.find(f"{{{NS_DELAY}}}delay")
    assert delay is not None, "an offline message carries a delay element (XEP-0203)"
    return delay


async def test_offline_messages_are_delivered_at_next_login(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    say(alice, BOB, "first")
    say(alice, BOB, "second", type_="normal")
    say(alice, f"{BOB}/phone", "third")
    assert not errors(await alice.mark())

    bob = await connect(server, f"{BOB}/desk")
    got = [el for el in bob.got if message()(el)]
    assert bodies(got) == ["first", "second", "third"]
    for el in got:
        assert el.get("from") == alice.jid
        delay = delay_of(el)
        assert delay.get("from") == DOMAIN
        stamp = dt.datetime.fromisoformat(delay.get("stamp", ""))
        assert stamp.tzinfo is not None and stamp >= before

    again = await connect(server, f"{BOB}/laptop")
    assert bodies(again.got) == [], "offline messages were delivered twice"


async def test_offline_messages_wait_for_a_non_negative_priority(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, BOB, "kept for later")
    await alice.mark()

    hidden = await connect(server, f"{BOB}/hidden", ppriority=-1)
    assert bodies(hidden.got) == [], "a negative-priority resource was flushed the offline messages"
    desk = await connect(server, f"{BOB}/desk", ppriority=1)
    assert bodies(desk.got) == ["kept for later"]
    assert bodies(await hidden.mark()) == []


async def test_chat_states_alone_are_not_stored(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    alice.send(f"<message to='{BOB}' type='chat'><composing xmlns='{NS_CHATSTATES}'/></message>")
    alice.send(f"<message to='{BOB}' type='chat'><body>typed</body><active xmlns='{NS_CHATSTATES}'/></message>")
    assert not errors(await alice.mark()), "a chat state for an offline user is dropped without an error"

    bob = await connect(server, f"{BOB}/desk")
    got = [el for el in bob.got if message()(el)]
    assert bodies(got) == ["typed"]
    assert got[0].find(f"{{{NS_CHATSTATES}}}active") is not None


async def test_offline_storage_off_answers_service_unavailable(make_server: ServerFactory,
                                                                connect: Connect) -> None:
    server = await make_server(im={"offline": False})
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, BOB, "not kept")
    assert await bounced(alice, "not kept") == "service-unavailable"
    bob = await connect(server, f"{BOB}/desk")
    assert bodies(bob.got) == []


async def test_full_offline_store_answers_service_unavailable(make_server: ServerFactory,
                                                               connect: Connect) -> None:
    server = await make_server(im={"max_offline_per_user": 2})
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    for body in ("one", "two", "three"):
        say(alice, BOB, body)
    assert await bounced(alice, "three") == "service-unavailable"
    assert len(errors(await alice.mark())) == 1
    bob = await connect(server, f"{BOB}/desk")
    assert bodies(bob.got) == ["one", "two"]


async def test_unknown_user_answers_service_unavailable(server: Server, connect: Connect) -> None:
    await add_user(server, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, f"nobody@{DOMAIN}", "anyone there?")
    assert await bounced(alice, "anyone there?") == "service-unavailable"
    say(alice, f"nobody@{DOMAIN}/res", "anyone at all?")
    assert await bounced(alice, "anyone at all?") == "service-unavailable"


async def test_im_disabled_answers_service_unavailable(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(im={"enabled": False})
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    say(alice, BOB, "to the bare JID")
    assert await bounced(alice, "to the bare JID") == "service-unavailable"
    say(alice, bob.jid, "to the full JID")
    assert await bounced(alice, "to the full JID") == "service-unavailable"
    say(alice, f"{BOB}/offline", "to an absent resource")
    assert await bounced(alice, "to an absent resource") == "service-unavailable"
    await alice.mark()
    assert bodies(await bob.mark()) == []


# --- flexible offline retrieval (XEP-0013) ----------------------------------------------------------------


def offline_node(el: Element) -> str:
    item = el.find(f"{{{NS_OFFLINE}}}offline/{{{NS_OFFLINE}}}item")
    assert item is not None and item.get("node"), "a retrieved message names its node"
    return item.get("node", "")


async def fetch(peer: Peer) -> list[Element]:
    """Every stored message, as the server sends them before the result of a fetch."""
    await peer.mark()
    await peer.query("get", f"<offline xmlns='{NS_OFFLINE}'><fetch/></offline>")
    return [el for el in await peer.mark() if message()(el)]


async def test_flexible_offline_retrieval(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    for body in ("m1", "m2", "m3"):
        say(alice, BOB, body)
    await alice.mark()

    bob = await connect(server, f"{BOB}/desk", available=False)
    got = await fetch(bob)
    assert bodies(got) == ["m1", "m2", "m3"]
    nodes = [offline_node(el) for el in got]
    assert len(set(nodes)) == 3
    for el in got:
        assert delay_of(el).get("from") == DOMAIN

    # View one message by its node.
    await bob.query("get", f"<offline xmlns='{NS_OFFLINE}'><item action='view' node='{nodes[1]}'/></offline>")
    viewed = [el for el in await bob.mark() if message()(el)]
    assert bodies(viewed) == ["m2"] and offline_node(viewed[0]) == nodes[1]

    # Remove one; it is gone, the others stay.
    await bob.query("set", f"<offline xmlns='{NS_OFFLINE}'><item action='remove' node='{nodes[0]}'/></offline>")
    _, condition = await bob.refused(
        "get", f"<offline xmlns='{NS_OFFLINE}'><item action='view' node='{nodes[0]}'/></offline>")
    assert condition == "item-not-found"

    # The client uses XEP-0013: its initial presence does not flood it with the messages.
    bob.c.send_presence()
    assert bodies(await bob.mark()) == []
    assert bodies(await fetch(bob)) == ["m2", "m3"]

    await bob.query("set", f"<offline xmlns='{NS_OFFLINE}'><purge/></offline>")
    assert await fetch(bob) == []
    later = await connect(server, f"{BOB}/laptop")
    assert bodies(later.got) == []


async def test_flexible_offline_headers_and_count(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    for body in ("h1", "h2"):
        say(alice, BOB, body)
    await alice.mark()

    bob = await connect(server, f"{BOB}/desk", available=False)
    info = await bob.query("get", f"<query xmlns='{NS_DISCO_INFO}' node='{NS_OFFLINE}'/>", to=BOB)
    fields = {f.get("var"): f.findtext("{jabber:x:data}value")
              for f in info.iter("{jabber:x:data}field")}
    assert fields.get("number_of_messages") == "2"
    items = await bob.query("get", f"<query xmlns='{NS_DISCO_ITEMS}' node='{NS_OFFLINE}'/>", to=BOB)
    headers = list(items.iter(f"{{{NS_DISCO_ITEMS}}}item"))
    assert [h.get("name") for h in headers] == [alice.jid, alice.jid]
    assert all(h.get("node") for h in headers)
    # Asking for the headers means the client retrieves the messages itself.
    bob.c.send_presence()
    assert bodies(await bob.mark()) == []


async def test_asking_the_offline_count_stops_the_flood(server: Server, connect: Connect) -> None:
    # XEP-0013 2.2: after a disco#info (or disco#items) request on the offline node, the
    # server must not flood the session with the messages when it sends initial presence.
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, BOB, "counted")
    await alice.mark()

    bob = await connect(server, f"{BOB}/desk", available=False)
    await bob.query("get", f"<query xmlns='{NS_DISCO_INFO}' node='{NS_OFFLINE}'/>", to=BOB)
    bob.c.send_presence()
    assert bodies(await bob.mark()) == [], "the session was flooded after asking for the count"
    assert bodies(await fetch(bob)) == ["counted"]


async def test_no_flood_for_another_resource_while_a_flexible_one_is_on(server: Server,
                                                                        connect: Connect) -> None:
    # XEP-0013 section 2: while a resource that retrieves the messages itself is signed in, another
    # resource of the same account is not flooded when it becomes available.
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, BOB, "left on the server")
    await alice.mark()

    reader = await connect(server, f"{BOB}/reader", available=False)
    assert bodies(await fetch(reader)) == ["left on the server"]
    phone = await connect(server, f"{BOB}/phone")
    assert bodies(phone.got) == [], "a second resource was flooded"
    assert bodies(await fetch(reader)) == ["left on the server"]


# --- sessions ---------------------------------------------------------------------------------------------


async def raw_login(server: Server, user: str, resource: str) -> tuple[Raw, bytes]:
    raw = await Raw.open(server)
    return raw, await raw.login(user, "secret", resource=resource)


async def test_session_cap_refuses_the_next_bind(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(sessions={"max_per_user": 2})
    await users(server, ALICE, BOB)
    bob = await connect(server, f"{BOB}/desk")
    one, reply1 = await raw_login(server, "alice", "one")
    two, reply2 = await raw_login(server, "alice", "two")
    assert b"type='result'" in reply1 or b'type="result"' in reply1
    assert b"type='result'" in reply2 or b'type="result"' in reply2

    three, reply3 = await raw_login(server, "alice", "three")
    assert b"error" in reply3 and b"policy-violation" in reply3, reply3.decode()

    # The sessions in place keep working.
    say(bob, f"{ALICE}/two", "still here")
    assert b"still here" in await two.read_until(b"</message>")

    # At the cap, the same resource again is a replacement, not one more session.
    again, reply4 = await raw_login(server, "alice", "one")
    assert b"<jid>" in reply4 and f"{ALICE}/one".encode() in reply4, reply4.decode()
    assert b"conflict" in await one.read_all()
    for raw in (two, three, again):
        await raw.close()


async def test_same_resource_replaces_the_first_session(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    bob = await connect(server, f"{BOB}/desk")
    old, _ = await raw_login(server, "alice", "desk")

    new = await connect(server, f"{ALICE}/desk")
    closing = await old.read_all()
    assert b"<stream:error>" in closing or b"stream:error" in closing
    assert b"conflict" in closing and closing.rstrip().endswith(b"</stream:stream>")

    say(bob, f"{ALICE}/desk", "to the new session")
    await new.next(message("to the new session"), "the message")
    say(new, BOB, "from the new session")
    await bob.next(message("from the new session", frm=f"{ALICE}/desk"), "the reply")
    await old.close()


async def test_replaced_session_goes_unavailable_for_contacts(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    bob = await connect(server, f"{BOB}/desk")
    old, _ = await raw_login(server, "alice", "desk")
    old.send("<presence><status>old session</status></presence>")
    await bob.next(lambda el: local(el) == "presence" and el.findtext("{jabber:client}status") == "old session",
                   "the old session's presence")

    # The new session has not sent presence (yet): the old one's presence must not linger.
    await connect(server, f"{ALICE}/desk", available=False)
    assert b"conflict" in await old.read_all()
    await old.close()
    window = await bob.mark()
    assert [el for el in window if local(el) == "presence" and el.get("from") == f"{ALICE}/desk"
            and el.get("type") == "unavailable"], "contacts still see the replaced session available"


async def test_disabled_user_cannot_sign_in(server: Server) -> None:
    await add_user(server, ALICE)
    await server.repos.users.set_enabled(ALICE, False)
    raw = await Raw.open(server)
    with pytest.raises(AuthFailed) as failure:
        await raw.login("alice", "secret")
    assert "account-disabled" in str(failure.value)
    await raw.close()
    with pytest.raises(AuthFailed):
        await slix(server, f"{ALICE}/desk")

    await server.repos.users.set_enabled(ALICE, True)
    back = await slix(server, f"{ALICE}/desk")
    await close_all(back)
