"""Group chat (XEP-0045) end to end: slixmpp's xep_0045 plugin for joins, raw XML where a
test needs to see exactly what the room sends or must send something odd."""

from __future__ import annotations

import asyncio
from typing import Any
from xml.etree.ElementTree import Element

import pytest
from slixmpp import JID

from parley.config import ConfigError, from_dict
from parley.server import Server
from tests.clients import TIMEOUT
from tests.conftest import ServerFactory, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DOMAIN,
    Connect,
    Peer,
    error_condition,
    local,
    message,
    presence,
    q,
    say,
)

SERVICE = f"conference.{DOMAIN}"
ROOM = f"lounge@{SERVICE}"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ADMIN = f"{NS_MUC}#admin"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DELAY = "urn:xmpp:delay"


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    srv = await make_server()
    await users(srv, ALICE, BOB, CAROL)
    return srv


def codes(el: Element) -> set[int]:
    x = el.find(q(NS_USER, "x"))
    return set() if x is None else {int(s.get("code", "0")) for s in x.findall(q(NS_USER, "status"))}


def item(el: Element) -> Element:
    found = el.find(f"{q(NS_USER, 'x')}/{q(NS_USER, 'item')}")
    assert found is not None, "no muc#user item"
    return found


def join(peer: Peer, nick: str, room: str = ROOM, history: str = "") -> None:
    peer.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{history}</x></presence>")


async def joined(peer: Peer, nick: str, room: str = ROOM, history: str = "") -> Element:
    """Joins and waits for the self-presence and the subject that closes the join."""
    join(peer, nick, room, history)
    own = await peer.next(lambda el: presence(f"{room}/{nick}")(el) and 110 in codes(el), f"{nick}'s self-presence")
    await peer.next(lambda el: local(el) == "message" and el.find("{jabber:client}subject") is not None,
                    "the room subject")
    return own


async def refused_join(peer: Peer, nick: str, room: str = ROOM) -> str | None:
    join(peer, nick, room)
    err = await peer.next(presence(f"{room}/{nick}", "error"), f"the refusal of {nick}")
    return error_condition(err)


def groupchat(peer: Peer, body: str, room: str = ROOM) -> None:
    say(peer, room, body, "groupchat")


async def room_items(peer: Peer) -> set[str]:
    res = await peer.query("get", f"<query xmlns='{NS_DISCO_ITEMS}'/>", SERVICE)
    return {it.get("jid", "") for it in res.iter(q(NS_DISCO_ITEMS, "item"))}


async def test_service_is_discoverable(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    info = await alice.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", SERVICE)
    idents = [(i.get("category"), i.get("type")) for i in info.iter(q(NS_DISCO_INFO, "identity"))]
    assert ("conference", "text") in idents
    assert NS_MUC in {f.get("var") for f in info.iter(q(NS_DISCO_INFO, "feature"))}


async def test_create_join_and_talk_with_slixmpp(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE, plugins=("xep_0045",))
    bob = await connect(server, BOB, plugins=("xep_0045",))
    muc: Any = alice.c.plugin["xep_0045"]
    own, _subject, _occupants, _history = await muc.join_muc_wait(JID(ROOM), "Alice", timeout=TIMEOUT)
    assert {110, 201} <= {int(c) for c in own["muc"]["status_codes"]}
    assert own["muc"]["affiliation"] == "owner" and own["muc"]["role"] == "moderator"
    bmuc: Any = bob.c.plugin["xep_0045"]
    await bmuc.join_muc_wait(JID(ROOM), "Bob", timeout=TIMEOUT)
    # Each sees the other (the room is not anonymous by default: real JIDs are shown).
    seen = await alice.next(presence(f"{ROOM}/Bob"), "Bob's arrival")
    assert item(seen).get("jid") == bob.jid and item(seen).get("role") == "participant"
    await bob.next(presence(f"{ROOM}/Alice"), "Alice's presence")
    assert sorted(muc.get_roster(JID(ROOM))) == ["Alice", "Bob"]
    groupchat(alice, "hello room")
    groupchat(bob, "hello Alice")
    for peer in (alice, bob):
        await peer.next(message("hello room", frm=f"{ROOM}/Alice", type_="groupchat"), "Alice's line")
        await peer.next(message("hello Alice", frm=f"{ROOM}/Bob", type_="groupchat"), "Bob's line")
    assert ROOM in await room_items(alice)


async def test_history_for_a_late_joiner(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    await joined(alice, "Alice")
    for i in range(20):
        groupchat(alice, f"line {i}")
    await alice.next(message("line 19", type_="groupchat"), "the last line")
    bob = await connect(server, BOB)
    await joined(bob, "Bob")
    window = await bob.mark()
    history = [el for el in window if local(el) == "message" and el.findtext("{jabber:client}body")]
    # The seed's default: the last 15 messages, each stamped by the room.
    assert [el.findtext("{jabber:client}body") for el in history] == [f"line {i}" for i in range(5, 20)]
    for el in history:
        delay = el.find(q(NS_DELAY, "delay"))
        assert delay is not None and delay.get("from") == ROOM and delay.get("stamp")
        assert el.get("from") == f"{ROOM}/Alice"
    carol = await connect(server, CAROL)
    await joined(carol, "Carol", history="<history maxstanzas='3'/>")
    got = [el.findtext("{jabber:client}body") for el in await carol.mark()
           if local(el) == "message" and el.findtext("{jabber:client}body")]
    assert got == ["line 17", "line 18", "line 19"]


async def test_nickname_conflict_and_change(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    assert await refused_join(bob, "Alice") == "conflict"
    await joined(bob, "Bob")
    bob.send(f"<presence to='{ROOM}/Robert'/>")
    gone = await alice.next(presence(f"{ROOM}/Bob", "unavailable"), "Bob's old nick going")
    assert 303 in codes(gone) and item(gone).get("nick") == "Robert"
    await alice.next(presence(f"{ROOM}/Robert"), "Bob's new nick")
    groupchat(bob, "renamed")
    await alice.next(message("renamed", frm=f"{ROOM}/Robert"), "a line from the new nick")


async def test_private_message_between_occupants(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    say(alice, f"{ROOM}/Bob", "just you", "chat")
    pm = await bob.next(message("just you", frm=f"{ROOM}/Alice", type_="chat"), "the private message")
    assert pm.find(q(NS_USER, "x")) is not None
    say(alice, f"{ROOM}/Nobody", "anyone?", "chat")
    err = await alice.next(message(type_="error"), "the error for a missing nick")
    assert error_condition(err) == "item-not-found"


async def test_subject_change(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    bob.send(f"<message to='{ROOM}' type='groupchat'><subject>Plans</subject></message>")
    got = await alice.next(lambda el: el.findtext("{jabber:client}subject") == "Plans", "the new subject")
    assert got.get("from") == f"{ROOM}/Bob"
    carol = await connect(server, CAROL)
    join(carol, "Carol")
    subject = await carol.next(lambda el: el.findtext("{jabber:client}subject") == "Plans", "the subject on join")
    assert subject.get("from") == f"{ROOM}/Bob"


async def test_leave_destroys_the_adhoc_room(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    left = await alice.next(presence(f"{ROOM}/Bob", "unavailable"), "Bob leaving")
    assert item(left).get("role") == "none"
    own = await bob.next(presence(f"{ROOM}/Bob", "unavailable"), "Bob's own leave")
    assert 110 in codes(own)
    assert ROOM in await room_items(alice)
    groupchat(alice, "first")
    await alice.next(message("first"), "a line before leaving")
    alice.send(f"<presence to='{ROOM}/Alice' type='unavailable'/>")
    await alice.next(presence(f"{ROOM}/Alice", "unavailable"), "Alice leaving")
    assert ROOM not in await room_items(alice)
    # A new room of that name starts empty: nothing of the old one was kept.
    own_again = await joined(alice, "Alice")
    assert 201 in codes(own_again)
    assert not [el for el in await alice.mark() if el.find(q(NS_DELAY, "delay")) is not None]


async def test_disconnect_leaves_the_room(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    bob.c.disconnect()
    await alice.next(presence(f"{ROOM}/Bob", "unavailable"), "Bob gone with his session")


async def test_kick_and_ban_by_the_owner(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    carol = await connect(server, CAROL)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    await joined(carol, "Carol")
    # A participant may not kick.
    assert (await carol.refused("set", f"<query xmlns='{NS_ADMIN}'><item nick='Bob' role='none'/></query>",
                                ROOM))[1] == "forbidden"
    await alice.query("set", f"<query xmlns='{NS_ADMIN}'><item nick='Bob' role='none'>"
                             "<reason>be nice</reason></item></query>", ROOM)
    kicked = await bob.next(presence(f"{ROOM}/Bob", "unavailable"), "Bob's kick")
    assert {110, 307} <= codes(kicked)
    assert item(kicked).findtext(q(NS_USER, "reason")) == "be nice"
    seen = await carol.next(presence(f"{ROOM}/Bob", "unavailable"), "the kick seen by Carol")
    assert 307 in codes(seen)
    # Kicked is not banned: Bob comes back, then is banned.
    await joined(bob, "Bob")
    await alice.query("set", f"<query xmlns='{NS_ADMIN}'><item jid='{BOB}' affiliation='outcast'>"
                             "<reason>again</reason></item></query>", ROOM)
    banned = await bob.next(lambda el: presence(f"{ROOM}/Bob", "unavailable")(el) and 301 in codes(el), "the ban")
    assert 110 in codes(banned)
    assert await refused_join(bob, "Bobby") == "forbidden"
    outcasts = await alice.query("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='outcast'/></query>", ROOM)
    assert [i.get("jid") for i in outcasts.iter(q(NS_ADMIN, "item"))] == [BOB]


async def test_message_from_a_non_occupant_is_refused(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    groupchat(bob, "let me in")
    err = await bob.next(message(type_="error"), "the refusal")
    assert error_condition(err) == "not-acceptable"
    assert not [el for el in await alice.mark() if el.findtext("{jabber:client}body") == "let me in"]


async def test_im_disabled_refuses_joins(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(im={"enabled": False})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    assert await refused_join(alice, "Alice") == "service-unavailable"
    assert (await alice.refused("get", f"<query xmlns='{NS_DISCO_INFO}'/>", SERVICE))[1] == "service-unavailable"


async def test_room_full(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={"max_occupants": 2, "default_room_size": 2})
    await users(srv, ALICE, BOB, CAROL)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    carol = await connect(srv, CAROL)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    assert await refused_join(carol, "Carol") == "service-unavailable"


async def test_room_limit(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={"max_rooms": 1})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    assert await refused_join(alice, "Alice", f"other@{SERVICE}") == "resource-constraint"


async def test_group_chat_switched_off(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={"enabled": False})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    assert await refused_join(alice, "Alice") == "service-unavailable"
    assert (await alice.refused("get", f"<query xmlns='{NS_DISCO_ITEMS}'/>", SERVICE))[1] == "service-unavailable"


def test_chat_alias_never_an_im_domain() -> None:
    with pytest.raises(ConfigError, match="IM domain"):
        from_dict({"server": {"domain": DOMAIN}, "muc": {"service": [DOMAIN]}})
    with pytest.raises(ConfigError, match="max_occupants"):
        from_dict({"server": {"domain": DOMAIN}, "muc": {"default_room_size": 2000}})
    cfg = from_dict({"server": {"domain": DOMAIN}, "muc": {"service": ["Chat.Example.Test", "rooms.example.test"]}})
    assert cfg.muc.aliases(cfg.server) == ["chat.example.test", "rooms.example.test", f"conference-1-parley.{DOMAIN}"]
    plain = from_dict({"server": {"domain": DOMAIN}, "muc": {"system_alias": False}})
    assert plain.muc.aliases(plain.server) == [SERVICE]


async def test_idle_persistent_room_is_closed(make_server: ServerFactory, connect: Connect,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """[muc] room_idle_timeout: a persistent room without activity for that many minutes
    is closed (its occupants removed); the room itself stays, and can be joined again."""
    from parley.modules.muc import service

    monkeypatch.setattr(service, "IDLE_SWEEP_PERIOD", 0.05)
    srv = await make_server(muc={"room_idle_timeout": 1})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    await alice.query("set", f"<query xmlns='{NS_MUC}#owner'><x xmlns='jabber:x:data' type='submit'>"
                             "<field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query>", ROOM)
    muc = srv.modules["muc"]
    room = muc.rooms[ROOM]  # type: ignore[attr-defined]
    room.last_active -= 30  # active half a minute ago: not idle yet
    await asyncio.sleep(0.3)
    assert room.by_full
    room.last_active -= 60
    gone = await alice.next(lambda el: presence(f"{ROOM}/Alice", "unavailable")(el) and 110 in codes(el),
                            "alice removed from the idle room")
    assert item(gone).findtext(q(NS_USER, "reason")) == "the room was closed for inactivity"
    assert ROOM in muc.rooms  # type: ignore[attr-defined]
    await joined(alice, "Alice")


async def test_a_blocked_room_cannot_be_written_to(server: Server, connect: Connect) -> None:
    """The block list (XEP-0191) covers the chat service too: a message to a blocked room is
    refused with not-acceptable and <blocked/>, and a join goes nowhere."""
    alice = await connect(server, ALICE)
    await alice.query("set", f"<block xmlns='urn:xmpp:blocking'><item jid='{ROOM}'/></block>")
    groupchat(alice, "anyone there?")
    err = await alice.next(lambda el: local(el) == "message" and el.get("type") == "error", "the refusal")
    assert error_condition(err) == "not-acceptable"
    assert err.find(".//{urn:xmpp:blocking:errors}blocked") is not None
    join(alice, "Alice")
    await alice.mark()
    assert ROOM not in server.modules["muc"].rooms  # type: ignore[attr-defined]
