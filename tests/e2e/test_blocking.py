"""Blocking (XEP-0191) and the authorization policy end to end with slixmpp (SPEC C2, admin
guide 7.1): a blocked entity always sees the user unavailable and cannot write to the user,
the user cannot write to it, block and unblock pushes reach the user's other resources, and
the default policy block-all with an allow list governs presence and IM alike."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from parley.modules.policy import PolicyModule
from parley.server import Server
from tests.clients import TIMEOUT
from tests.conftest import ServerFactory, subscribed, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    Connect,
    Match,
    Peer,
    bodies,
    bounce_of,
    change_status,
    error_condition,
    local,
    message,
    presence,
    presences_from,
    say,
)

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"

BLOCKING = ("xep_0191",)


# --- helpers --------------------------------------------------------------------------------------


def block_push(action: str) -> Match:
    def match(el: Element) -> bool:
        return local(el) == "iq" and el.get("type") == "set" and el.find(f"{{{NS_BLOCKING}}}{action}") is not None

    return match


def push_items(push: Element) -> set[str]:
    return {it.get("jid", "") for it in push.iter(f"{{{NS_BLOCKING}}}item")}


async def blocklist(peer: Peer) -> set[str]:
    return {str(j) for j in await peer.c.plugin["xep_0191"].get_blocked_jids(timeout=TIMEOUT)}


async def quiet(*peers: Peer) -> None:
    for p in peers:
        await p.mark()


# --- XEP-0191 ---------------------------------------------------------------------------------------


async def test_block_and_unblock(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, ALICE, BOB, both=True)
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
    await subscribed(server, ALICE, BOB, both=True)
    await subscribed(server, ALICE, CAROL, both=True)
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
