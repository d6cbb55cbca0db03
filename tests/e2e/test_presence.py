"""Presence end to end with slixmpp (RFC 6121 sections 3 and 4) and the seed's presence rules
(SPEC C2, admin guide sections 3 and 7.1): subscription requests, approval, denial and
cancellation with two users on two resources each, pre-approval, the authorization policy
(auto-approve on by default; off: the contact's client is asked, except for a requester
already in the contact's roster), unavailable presence on disconnect, probes at login,
directed presence, the presence sharing switch, max watchers, ad-hoc (non-roster)
subscriptions and the presence change throttle."""

from __future__ import annotations

import asyncio
from xml.etree.ElementTree import Element

from parley.server import Server
from tests.clients import close_all
from tests.conftest import ServerFactory, add_user, subscribed, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    DOMAIN,
    NS_ROSTER,
    Connect,
    Peer,
    change_status,
    error_condition,
    is_push,
    local,
    presence,
    presences_from,
    q,
    roster_items,
)

NO_AUTO_APPROVE = {"authorization": {"auto_approve": False}}


# --- presence and roster helpers ------------------------------------------------------------------


def pushed(push: Element) -> dict[str, str]:
    item = push.find(f"{q(NS_ROSTER, 'query')}/{q(NS_ROSTER, 'item')}")
    assert item is not None
    return dict(item.attrib)


async def next_push(peer: Peer, jid: str, what: str) -> dict[str, str]:
    return pushed(await peer.next(is_push(jid), what))


async def roster_state(peer: Peer) -> dict[str, dict[str, str]]:
    return {jid: dict(it.attrib) for jid, it in (await roster_items(peer)).items()}


def state(attrs: dict[str, str] | None) -> tuple[str, bool, bool]:
    """(subscription, pending out, pre-approved) of a roster item."""
    assert attrs is not None, "the item is missing"
    return attrs.get("subscription", "none"), attrs.get("ask") == "subscribe", attrs.get("approved") == "true"


# --- a request, approved (auto-approve off) ----------------------------------------------------------


async def test_request_approval_gives_one_way_presence(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(**NO_AUTO_APPROVE)
    await users(server, ALICE, BOB)
    a1 = await connect(server, f"{ALICE}/desk")
    a2 = await connect(server, f"{ALICE}/phone")
    b1 = await connect(server, f"{BOB}/desk")
    b2 = await connect(server, f"{BOB}/phone", pstatus="on the road")

    a1.send(f"<presence to='{BOB}' type='subscribe'/>")
    for a in (a1, a2):
        assert state(await next_push(a, BOB, "the pending item")) == ("none", True, False)
    for b in (b1, b2):
        await b.next(presence(ALICE, "subscribe"), "the subscription request")

    b1.send(f"<presence to='{ALICE}' type='subscribed'/>")
    for b in (b1, b2):
        assert state(await next_push(b, ALICE, "the approved item")) == ("from", False, False)
    for a in (a1, a2):
        await a.next(presence(BOB, "subscribed"), "the approval")
        assert state(await next_push(a, BOB, "the subscribed item")) == ("to", False, False)
        await a.next(presence(f"{BOB}/desk"), "bob/desk's presence")
        await a.next(presence(f"{BOB}/phone", status="on the road"), "bob/phone's presence")

    assert state((await roster_state(a1)).get(BOB)) == ("to", False, False)
    assert state((await roster_state(b2)).get(ALICE)) == ("from", False, False)

    # One way only: bob's changes reach alice, alice's do not reach bob.
    change_status(b2, "back")
    for a in (a1, a2):
        await a.next(presence(f"{BOB}/phone", status="back"), "bob's new status")
    for b in (b1, b2):
        await b.mark()
    change_status(a1, "busy")
    await a1.mark()
    for b in (b1, b2):
        assert not presences_from(await b.mark(), ALICE), "bob sees alice without a subscription"


async def test_request_to_an_offline_contact_waits_for_the_next_login(make_server: ServerFactory,
                                                                       connect: Connect) -> None:
    server = await make_server(**NO_AUTO_APPROVE)
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    alice.send(f"<presence to='{BOB}' type='subscribe' id='s1'><status>it is alice</status></presence>")
    assert state(await next_push(alice, BOB, "the pending item")) == ("none", True, False)

    first = await connect(server, f"{BOB}/desk")
    req = await first.next(presence(ALICE, "subscribe"), "the stored request")
    assert req.findtext("{jabber:client}status") == "it is alice"
    await close_all(first.c)

    # Not answered yet: asked again at the next login.
    bob = await connect(server, f"{BOB}/laptop")
    await bob.next(presence(ALICE, "subscribe"), "the stored request, again")
    bob.send(f"<presence to='{ALICE}' type='subscribed'/>")
    await alice.next(presence(BOB, "subscribed"), "the approval")
    await alice.next(presence(f"{BOB}/laptop"), "bob's presence")
    assert state(await next_push(alice, BOB, "the subscribed item")) == ("to", False, False)

    # Answered: never asked again.
    again = await connect(server, f"{BOB}/tablet")
    assert not [el for el in again.got if presence(ALICE, "subscribe")(el)]


async def test_denied_request(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(**NO_AUTO_APPROVE)
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    assert state(await next_push(alice, BOB, "the pending item")) == ("none", True, False)
    await bob.next(presence(ALICE, "subscribe"), "the request")
    await alice.mark()
    bob.send(f"<presence to='{ALICE}' type='unsubscribed'/>")
    await alice.next(presence(BOB, "unsubscribed"), "the denial")
    assert state(await next_push(alice, BOB, "the item after the denial")) == ("none", False, False)
    assert state((await roster_state(alice)).get(BOB)) == ("none", False, False)
    bobs = await roster_state(bob)
    assert ALICE not in bobs or state(bobs[ALICE])[0] == "none", "a denied requester became a watcher"
    assert not [el for el in presences_from(await alice.mark(), BOB) if presence(of=BOB)(el)], \
        "a denied requester received the contact's presence"

    later = await connect(server, f"{BOB}/laptop")
    assert not [el for el in later.got if presence(ALICE, "subscribe")(el)], "a denied request came back"


async def test_request_to_a_nonexistent_user_is_answered_unsubscribed(server: Server, connect: Connect) -> None:
    await add_user(server, ALICE)
    nobody = f"nobody@{DOMAIN}"
    alice = await connect(server, f"{ALICE}/desk")
    alice.send(f"<presence to='{nobody}' type='subscribe'/>")
    await alice.next(presence(nobody, "unsubscribed"), "the answer for a user that does not exist")
    assert state((await roster_state(alice)).get(nobody)) == ("none", False, False)


# --- the seed's authorization policy ---------------------------------------------------------------------


async def test_auto_approve_is_the_default(server: Server, connect: Connect) -> None:
    assert server.config.authorization.auto_approve is True
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk", pstatus="free")

    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    await alice.next(presence(BOB, "subscribed"), "the automatic approval")
    await alice.next(presence(f"{BOB}/desk", status="free"), "bob's presence")
    assert state((await roster_state(alice)).get(BOB)) == ("to", False, False)
    assert state(await next_push(bob, ALICE, "bob's new watcher")) == ("from", False, False)
    assert not [el for el in await bob.mark() if presence(ALICE, "subscribe")(el)], \
        "with auto-approve on, the contact's client is not asked"


async def test_requester_already_in_the_roster_is_approved_without_asking(make_server: ServerFactory,
                                                                          connect: Connect) -> None:
    server = await make_server(**NO_AUTO_APPROVE)
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    # Alice keeps bob in her contact list (no subscription either way).
    await alice.query("set", f"<query xmlns='{NS_ROSTER}'><item jid='{BOB}' name='Bob'/></query>")
    await alice.mark()

    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await bob.next(presence(ALICE, "subscribed"), "the automatic approval")
    await bob.next(presence(f"{ALICE}/desk"), "alice's presence")
    assert state((await roster_state(bob)).get(ALICE)) == ("to", False, False)
    after = (await roster_state(alice)).get(BOB)
    assert state(after) == ("from", False, False) and after and after.get("name") == "Bob"
    assert not [el for el in await alice.mark() if presence(BOB, "subscribe")(el)], "alice was asked"


async def test_mutual_subscription(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(**NO_AUTO_APPROVE)
    await users(server, ALICE, BOB)
    a1 = await connect(server, f"{ALICE}/desk", pstatus="alice here")
    a2 = await connect(server, f"{ALICE}/phone")
    b1 = await connect(server, f"{BOB}/desk", pstatus="bob here")

    a1.send(f"<presence to='{BOB}' type='subscribe'/>")
    await b1.next(presence(ALICE, "subscribe"), "alice's request")
    b1.send(f"<presence to='{ALICE}' type='subscribed'/>")
    await a1.next(presence(f"{BOB}/desk", status="bob here"), "bob's presence")

    # Bob asks back; alice already has him in her roster, so she is not asked (seed 7.1).
    b1.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await b1.next(presence(ALICE, "subscribed"), "the approval of bob's request")
    await b1.next(presence(f"{ALICE}/desk", status="alice here"), "alice/desk's presence")
    await b1.next(presence(f"{ALICE}/phone"), "alice/phone's presence")
    for a in (a1, a2):
        assert not [el for el in await a.mark() if presence(BOB, "subscribe")(el)]
    assert state((await roster_state(a2)).get(BOB)) == ("both", False, False)
    assert state((await roster_state(b1)).get(ALICE)) == ("both", False, False)

    change_status(a2, "both ways")
    await b1.next(presence(f"{ALICE}/phone", status="both ways"), "alice's change")
    change_status(b1, "indeed")
    for a in (a1, a2):
        await a.next(presence(f"{BOB}/desk", status="indeed"), "bob's change")


async def test_pre_approval_answers_the_later_request(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(**NO_AUTO_APPROVE)
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk", pstatus="pre")
    assert "preapproval" in alice.c.features, "the server advertises pre-approval (RFC 6121 3.4)"
    bob = await connect(server, f"{BOB}/desk")

    alice.send(f"<presence to='{BOB}' type='subscribed'/>")
    assert state(await next_push(alice, BOB, "the pre-approved item")) == ("none", False, True)
    await alice.mark()
    assert not presences_from(await bob.mark(), ALICE), "a pre-approval is not sent to the contact"

    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await bob.next(presence(ALICE, "subscribed"), "the answer on alice's behalf")
    await bob.next(presence(f"{ALICE}/desk", status="pre"), "alice's presence")
    assert state(await next_push(alice, BOB, "the item after the request")) == ("from", False, False)
    assert not [el for el in await alice.mark() if presence(BOB, "subscribe")(el)], "alice was asked"


# --- cancelling ------------------------------------------------------------------------------------------


async def test_unsubscribe_then_unsubscribed(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, ALICE, BOB, both=True)
    a1 = await connect(server, f"{ALICE}/desk")
    a2 = await connect(server, f"{ALICE}/phone")
    b1 = await connect(server, f"{BOB}/desk")
    b2 = await connect(server, f"{BOB}/phone")

    # Alice stops receiving bob's presence.
    a1.send(f"<presence to='{BOB}' type='unsubscribe'/>")
    for a in (a1, a2):
        assert state(await next_push(a, BOB, "alice's item after unsubscribe")) == ("from", False, False)
        await a.next(presence(f"{BOB}/desk", "unavailable"), "bob/desk unavailable")
        await a.next(presence(f"{BOB}/phone", "unavailable"), "bob/phone unavailable")
    for b in (b1, b2):
        await b.next(presence(ALICE, "unsubscribe"), "the unsubscribe")
        assert state(await next_push(b, ALICE, "bob's item after unsubscribe")) == ("to", False, False)
    await a1.mark()
    change_status(b1, "unseen")
    await b1.mark()
    assert not presences_from(await a1.mark(), BOB)
    change_status(a1, "still seen")
    await b2.next(presence(f"{ALICE}/desk", status="still seen"), "alice's change")

    # Alice cancels bob's subscription to her.
    a1.send(f"<presence to='{BOB}' type='unsubscribed'/>")
    for a in (a1, a2):
        assert state(await next_push(a, BOB, "alice's item after unsubscribed")) == ("none", False, False)
    for b in (b1, b2):
        await b.next(presence(ALICE, "unsubscribed"), "the cancellation")
        assert state(await next_push(b, ALICE, "bob's item after unsubscribed")) == ("none", False, False)
        await b.next(presence(f"{ALICE}/desk", "unavailable"), "alice/desk unavailable")
        await b.next(presence(f"{ALICE}/phone", "unavailable"), "alice/phone unavailable")
    await b1.mark()
    change_status(a2, "nobody sees this")
    await a2.mark()
    assert not presences_from(await b1.mark(), ALICE)


async def test_removing_the_item_cancels_both_ways(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, ALICE, BOB, both=True)
    a1 = await connect(server, f"{ALICE}/desk")
    a2 = await connect(server, f"{ALICE}/phone")
    b1 = await connect(server, f"{BOB}/desk")

    await a1.query("set", f"<query xmlns='{NS_ROSTER}'><item jid='{BOB}' subscription='remove'/></query>")
    for a in (a1, a2):
        assert (await next_push(a, BOB, "the removal")).get("subscription") == "remove"
        await a.next(presence(f"{BOB}/desk", "unavailable"), "bob unavailable")
    await b1.next(presence(ALICE, "unsubscribe"), "the unsubscribe")
    await b1.next(presence(ALICE, "unsubscribed"), "the unsubscribed")
    await b1.next(presence(f"{ALICE}/desk", "unavailable"), "alice/desk unavailable")
    await b1.next(presence(f"{ALICE}/phone", "unavailable"), "alice/phone unavailable")
    assert state((await roster_state(b1)).get(ALICE)) == ("none", False, False)
    assert BOB not in await roster_state(a1)

    for peer in (a1, a2, b1):
        await peer.mark()
    change_status(a1, "gone")
    change_status(b1, "gone too")
    await a1.mark()
    await b1.mark()
    assert not presences_from(await b1.mark(), ALICE)
    assert not presences_from(await a2.mark(), BOB)


# --- availability ----------------------------------------------------------------------------------------


async def test_unavailable_on_disconnect_reaches_contacts_and_own_resources(server: Server,
                                                                            connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    a1 = await connect(server, f"{ALICE}/desk")
    a2 = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")

    await close_all(a1.c)
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "unavailable after a clean close")
    await a2.next(presence(f"{ALICE}/desk", "unavailable"), "unavailable of the own other resource")

    a2.c.abort()  # the connection just drops
    await bob.next(presence(f"{ALICE}/phone", "unavailable"), "unavailable after a dropped connection")


async def test_probes_at_login_give_the_contacts_current_presence(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, ALICE, BOB)
    await connect(server, f"{BOB}/desk", pshow="dnd", pstatus="in a meeting")
    phone = await connect(server, f"{BOB}/phone", pstatus="mobile", ppriority=-1)
    change_status(phone, "mobile, changed")
    await phone.mark()

    alice = await connect(server, f"{ALICE}/desk")
    desk = await alice.next(presence(f"{BOB}/desk", status="in a meeting"), "bob/desk's presence")
    assert desk.findtext("{jabber:client}show") == "dnd"
    await alice.next(presence(f"{BOB}/phone", status="mobile, changed"), "bob/phone's latest presence")

    # A contact who is not subscribed learns nothing at login.
    await add_user(server, CAROL)
    carol = await connect(server, f"{CAROL}/desk")
    assert not presences_from(carol.got, BOB)


async def test_a_new_resource_learns_the_users_other_resources(server: Server, connect: Connect) -> None:
    await add_user(server, ALICE)
    await connect(server, f"{ALICE}/desk", pstatus="at my desk")
    phone = await connect(server, f"{ALICE}/phone")
    await phone.next(presence(f"{ALICE}/desk", status="at my desk"), "the other resource's presence")


async def test_own_presence_is_reflected_to_the_sender(server: Server, connect: Connect) -> None:
    await add_user(server, ALICE)
    desk = await connect(server, f"{ALICE}/desk", available=False)
    phone = await connect(server, f"{ALICE}/phone")
    desk.send("<presence><status>first</status></presence>")
    await phone.next(presence(f"{ALICE}/desk", status="first"), "the other resource's presence")
    assert [el for el in await desk.mark() if presence(f"{ALICE}/desk", status="first")(el)], \
        "the initial presence was not sent back to its sender"
    change_status(desk, "second")
    await phone.next(presence(f"{ALICE}/desk", status="second"), "the other resource's change")
    assert [el for el in await desk.mark() if presence(f"{ALICE}/desk", status="second")(el)], \
        "the presence update was not sent back to its sender"


async def test_directed_presence_to_a_non_contact(server: Server, connect: Connect) -> None:
    await users(server, ALICE, CAROL, DAVE)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    dave = await connect(server, f"{DAVE}/desk")

    alice.send(f"<presence to='{CAROL}'><status>hello carol</status></presence>")
    await carol.next(presence(f"{ALICE}/desk", status="hello carol"), "the directed presence")
    alice.send(f"<presence to='{DAVE}/desk'><status>hello dave</status></presence>")
    await dave.next(presence(f"{ALICE}/desk", status="hello dave"), "the directed presence")
    alice.send(f"<presence to='{DAVE}/desk' type='unavailable'/>")
    await dave.next(presence(f"{ALICE}/desk", "unavailable"), "the directed unavailable")

    # Broadcasts do not go to the target of a directed presence.
    await carol.mark()
    await dave.mark()
    change_status(alice, "broadcast")
    await alice.mark()
    assert not presences_from(await carol.mark(), ALICE)

    await close_all(alice.c)
    await carol.next(presence(f"{ALICE}/desk", "unavailable"), "unavailable on disconnect")
    # Dave already had the unavailable presence: not a second one.
    assert not presences_from(await dave.mark(), ALICE)


async def test_sharing_off_every_contact_sees_nothing(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"sharing": False})
    await users(server, ALICE, BOB)
    await subscribed(server, ALICE, BOB, both=True)
    a1 = await connect(server, f"{ALICE}/desk", pstatus="desk")
    bob = await connect(server, f"{BOB}/desk", pstatus="bob")
    assert not presences_from(bob.got, ALICE), "a probe answered with sharing off"
    a2 = await connect(server, f"{ALICE}/phone")
    assert not presences_from(a2.got, BOB)
    await a2.next(presence(f"{ALICE}/desk", status="desk"), "the own other resource")

    change_status(a1, "only for me")
    await a2.next(presence(f"{ALICE}/desk", status="only for me"), "the own change")
    alice_dir = f"<presence to='{BOB}'><status>directed</status></presence>"
    a1.send(alice_dir)
    await a1.mark()
    assert not presences_from(await bob.mark(), ALICE)
    change_status(bob, "bob changed")
    await bob.mark()
    assert not presences_from(await a1.mark(), BOB)


# --- max watchers (SPEC C2, admin guide 3.4) ------------------------------------------------------------


async def test_max_watchers_refuses_the_next_subscription(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"max_watchers": 1})
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, ALICE, CAROL)
    carol = await connect(server, f"{CAROL}/desk")
    bob = await connect(server, f"{BOB}/desk")

    bob.send(f"<presence to='{CAROL}' type='subscribe'/>")
    err = await bob.next(presence(CAROL, "error"), "the refusal")
    assert error_condition(err) == "resource-constraint"
    await bob.next(presence(CAROL, "unsubscribed"), "the unsubscribed that closes the request")
    assert state((await roster_state(bob)).get(CAROL)) == ("none", False, False)
    assert BOB not in await roster_state(carol)
    window = await carol.mark()
    assert not [el for el in window if presence(BOB, "subscribe")(el)]
    assert not [el for el in window if is_push(BOB)(el)]


async def test_max_watchers_refuses_a_manual_approval(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"max_watchers": 1}, **NO_AUTO_APPROVE)
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, ALICE, CAROL)
    carol = await connect(server, f"{CAROL}/desk")
    bob = await connect(server, f"{BOB}/desk")

    bob.send(f"<presence to='{CAROL}' type='subscribe'/>")
    await carol.next(presence(BOB, "subscribe"), "the request")
    carol.send(f"<presence to='{BOB}' type='subscribed'/>")
    err = await carol.next(lambda el: local(el) == "presence" and el.get("type") == "error", "the refusal")
    assert error_condition(err) == "resource-constraint"
    await carol.mark()
    assert not [el for el in await bob.mark() if presence(CAROL, "subscribed")(el)]
    assert state((await roster_state(bob)).get(CAROL)) == ("none", True, False)


# --- ad-hoc (non-roster) subscriptions (SPEC C2, admin guide 3.2) -----------------------------------------


async def test_adhoc_probe_of_a_non_contact(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"adhoc_enabled": True, "adhoc_max": 1})
    await users(server, ALICE, CAROL, DAVE)
    carol = await connect(server, f"{CAROL}/desk", pstatus="busy")
    alice = await connect(server, f"{ALICE}/desk")
    dave = await connect(server, f"{DAVE}/desk")

    alice.send(f"<presence to='{CAROL}' type='probe'/>")
    await alice.next(presence(f"{CAROL}/desk", status="busy"), "carol's presence")
    change_status(carol, "free now")
    await alice.next(presence(f"{CAROL}/desk", status="free now"), "carol's change while watched")
    assert await roster_state(alice) == {}, "an ad-hoc subscription is not a roster item"

    # The cap on concurrent ad-hoc subscriptions.
    dave.send(f"<presence to='{CAROL}' type='probe'/>")
    err = await dave.next(presence(CAROL, "error"), "the refusal past the cap")
    assert error_condition(err) == "resource-constraint"

    # The watcher goes away: its place is free again.
    await close_all(alice.c)
    dave.send(f"<presence to='{CAROL}' type='probe'/>")
    await dave.next(presence(f"{CAROL}/desk", status="free now"), "carol's presence")


async def test_adhoc_subscription_expires(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"adhoc_enabled": True, "adhoc_ttl": 1})
    await users(server, ALICE, CAROL)
    carol = await connect(server, f"{CAROL}/desk", pstatus="busy")
    alice = await connect(server, f"{ALICE}/desk")
    alice.send(f"<presence to='{CAROL}' type='probe'/>")
    await alice.next(presence(f"{CAROL}/desk", status="busy"), "carol's presence")
    await alice.mark()
    await asyncio.sleep(1.2)  # let the one-second time-to-live pass
    change_status(carol, "after expiry")
    await carol.mark()
    assert not presences_from(await alice.mark(), CAROL)


async def test_adhoc_disabled_probe_is_not_allowed(server: Server, connect: Connect) -> None:
    assert server.config.presence.adhoc_enabled is False
    await users(server, ALICE, CAROL)
    await connect(server, f"{CAROL}/desk", pstatus="busy")
    alice = await connect(server, f"{ALICE}/desk")
    alice.send(f"<presence to='{CAROL}' type='probe'/>")
    err = await alice.next(presence(CAROL, "error"), "the refusal")
    assert error_condition(err) == "not-allowed"
    assert not [el for el in await alice.mark() if presence(f"{CAROL}/desk")(el)]


# --- the presence change throttle (SPEC C2) -------------------------------------------------------------


async def test_throttle_keeps_the_last_state(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"throttle_per_second": 1})
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    alice = await connect(server, f"{ALICE}/desk", pstatus="s0")
    bob = await connect(server, f"{BOB}/desk")
    await bob.next(presence(f"{ALICE}/desk", status="s0"), "alice's first presence")
    await bob.mark()

    for i in range(1, 6):
        change_status(alice, f"s{i}")
    await bob.next(presence(f"{ALICE}/desk", status="s5"), "the final state")
    change_status(alice, "marker")
    await bob.next(presence(f"{ALICE}/desk", status="marker"), "the marker")

    seen = [el.findtext("{jabber:client}status") for el in presences_from(await bob.mark(), ALICE)]
    assert seen[-1] == "marker"
    changes = seen[:-1]
    assert changes[-1] == "s5", f"the final state must be the last one seen: {seen}"
    assert len(changes) < 5, f"every change went through: {seen}"
    assert changes == sorted(changes), f"changes arrived out of order: {seen}"


async def test_approving_a_request_cannot_pass_the_contact_limit(make_server: ServerFactory,
                                                                  connect: Connect) -> None:
    server = await make_server(presence={"max_contacts": 1}, **NO_AUTO_APPROVE)
    await users(server, ALICE, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await alice.next(presence(BOB, "subscribe"), "bob's request, while alice has room")
    await alice.query("set", f"<query xmlns='{NS_ROSTER}'><item jid='{CAROL}'/></query>")

    # Alice's list is full now: approving bob would add him as a second contact.
    alice.send(f"<presence to='{BOB}' type='subscribed'/>")
    refusals = [el for el in await alice.mark() if presence(BOB, "error")(el)]
    assert refusals and error_condition(refusals[0]) == "resource-constraint"
    assert set(await roster_state(alice)) == {CAROL}
    assert not [el for el in await bob.mark() if presence(ALICE, "subscribed")(el)]
