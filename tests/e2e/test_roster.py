"""Rosters end to end with slixmpp (RFC 6121 section 2): get, set, update and remove with
names and groups, pushes to every interested resource, versioning (XEP-0237), the error
cases of RFC 6121 2.3.3 and the seed's contact list limit (SPEC C2: presence.max_contacts,
default 200; a roster add past it is refused per item with resource-constraint, and nobody
can add a user whose list is full)."""

from __future__ import annotations

from xml.etree.ElementTree import Element

import pytest

from parley.server import Server
from parley.storage.repos import RosterItem
from tests.clients import close_all
from tests.conftest import ServerFactory, add_user, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DOMAIN,
    NS_ROSTER,
    Connect,
    is_push,
    item_xml,
    items_of,
    local,
    q,
    roster_get,
    roster_items,
    roster_set,
)

# --- roster helpers --------------------------------------------------------------------------


def groups_of(item: Element) -> list[str]:
    return sorted(g.text or "" for g in item.findall(q(NS_ROSTER, "group")))


def pushed_item(push: Element) -> Element:
    """The one item of a roster push, after checking the push is well formed (RFC 6121 2.1.6)."""
    query = push.find(q(NS_ROSTER, "query"))
    assert query is not None
    found = query.findall(q(NS_ROSTER, "item"))
    assert len(found) == 1, "a roster push carries exactly one item"
    return found[0]


def pushes(window: list[Element]) -> list[Element]:
    return [el for el in window if is_push()(el)]


# --- get, set, update, remove; pushes -----------------------------------------------------------


async def test_set_update_remove_reach_every_interested_resource(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    desk = await connect(server, f"{ALICE}/desk")
    phone = await connect(server, f"{ALICE}/phone")
    # This resource never asked for the roster, so it is not an interested resource.
    bot = await connect(server, f"{ALICE}/bot", roster=False)

    await desk.query("set", roster_set(item_xml(BOB, "Bob", ("Work", "Friends"))))
    for peer in (desk, phone):
        push = await peer.next(is_push(BOB), "the push of the new item")
        assert push.get("from") in (None, ALICE), "a roster push comes from the account itself"
        query = push.find(q(NS_ROSTER, "query"))
        assert query is not None and query.get("ver"), "pushes carry the new roster version"
        item = pushed_item(push)
        assert item.get("name") == "Bob"
        assert item.get("subscription") == "none"
        assert item.get("ask") is None
        assert groups_of(item) == ["Friends", "Work"]
    assert not pushes(await bot.mark()), "a resource that never requested the roster got a push"

    got = await roster_items(phone)
    assert set(got) == {BOB}
    assert got[BOB].get("name") == "Bob"
    assert groups_of(got[BOB]) == ["Friends", "Work"]

    # Update from the other resource: the name and the groups are replaced, not merged.
    await phone.query("set", roster_set(item_xml(BOB, "Robert", ("Work",))))
    for peer in (desk, phone):
        item = pushed_item(await peer.next(is_push(BOB), "the push of the update"))
        assert item.get("name") == "Robert"
        assert groups_of(item) == ["Work"]
    assert groups_of((await roster_items(desk))[BOB]) == ["Work"]

    await desk.query("set", roster_set(item_xml(BOB, subscription="remove")))
    for peer in (desk, phone):
        item = pushed_item(await peer.next(is_push(BOB), "the push of the removal"))
        assert item.get("subscription") == "remove"
    assert await roster_items(phone) == {}
    assert not pushes(await bot.mark())


async def test_roster_survives_a_new_session(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    first = await connect(server, f"{ALICE}/one")
    await first.query("set", roster_set(item_xml(BOB, "Bob", ("Team",))))
    await first.query("set", roster_set(item_xml(CAROL)))
    await close_all(first.c)

    again = await connect(server, f"{ALICE}/two")
    got = await roster_items(again)
    assert set(got) == {BOB, CAROL}
    assert got[BOB].get("name") == "Bob" and groups_of(got[BOB]) == ["Team"]
    assert got[CAROL].get("name") is None and groups_of(got[CAROL]) == []


async def test_server_owns_the_subscription_state_and_the_jid_form(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    desk = await connect(server, f"{ALICE}/desk")
    # RFC 6121 2.1.2: a client cannot set 'subscription' (except remove), 'ask' or 'approved'.
    await desk.query("set", roster_set("<item jid='Bob@EXAMPLE.test' subscription='both' ask='subscribe' "
                                       "approved='true'/>"))
    item = pushed_item(await desk.next(is_push(BOB), "the push"))
    assert item.get("jid") == BOB, "the item's JID is normalized (RFC 7622)"
    assert item.get("subscription") == "none"
    assert item.get("ask") is None and item.get("approved") is None

    # The same contact in another form (full JID, other case) is the same item.
    await desk.query("set", roster_set(item_xml(f"BOB@{DOMAIN}/laptop", "Bob")))
    got = await roster_items(desk)
    assert set(got) == {BOB} and got[BOB].get("name") == "Bob"
    assert got[BOB].get("subscription") == "none"


# --- versioning (XEP-0237, RFC 6121 2.6) -------------------------------------------------------


async def test_roster_versioning(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    desk = await connect(server, f"{ALICE}/desk")
    assert "rosterver" in desk.c.features, "the server advertises roster versioning"

    first = (await desk.query("get", roster_get(""))).find(q(NS_ROSTER, "query"))
    assert first is not None and first.get("ver") is not None
    v0 = first.get("ver", "")
    assert items_of(first) == {}

    unchanged = await desk.query("get", roster_get(v0))
    assert list(unchanged) == [], "an unchanged roster is answered with an empty result"

    await desk.query("set", roster_set(item_xml(BOB, "Bob")))
    push = await desk.next(is_push(BOB), "the push")
    pushed = push.find(q(NS_ROSTER, "query"))
    assert pushed is not None
    v1 = pushed.get("ver", "")
    assert v1 and v1 != v0

    changed = (await desk.query("get", roster_get(v0))).find(q(NS_ROSTER, "query"))
    assert changed is not None, "a changed roster is sent in full"
    assert changed.get("ver") == v1
    assert set(items_of(changed)) == {BOB}

    assert list(await desk.query("get", roster_get(v1))) == []

    # The version is the account's, not the session's.
    await close_all(desk.c)
    later = await connect(server, f"{ALICE}/later")
    assert list(await later.query("get", roster_get(v1))) == []
    await later.query("set", roster_set(item_xml(CAROL)))
    full = (await later.query("get", roster_get(v1))).find(q(NS_ROSTER, "query"))
    assert full is not None and full.get("ver") not in (v0, v1)
    assert set(items_of(full)) == {BOB, CAROL}


# --- bad requests (RFC 6121 2.3.3, 2.5.3, 2.1.5) -------------------------------------------------


BAD_SETS = [
    pytest.param(roster_set(item_xml(BOB), item_xml(CAROL)), "bad-request", id="two-items"),
    pytest.param(roster_set(item_xml("a@b@c")), "jid-malformed", id="malformed-jid"),
    pytest.param(roster_set(item_xml(f"bad user@{DOMAIN}")), "jid-malformed", id="disallowed-char"),
    pytest.param(roster_set(item_xml(ALICE, "me")), "not-allowed", id="yourself"),
    pytest.param(roster_set(item_xml(BOB, groups=("",))), "not-acceptable", id="empty-group"),
    pytest.param(roster_set(item_xml(BOB, "x" * 2000)), "not-acceptable", id="name-too-long"),
    pytest.param(roster_set(item_xml(BOB, groups=("Work", "Work"))), "bad-request", id="duplicate-group"),
    pytest.param(roster_set(item_xml(CAROL, subscription="remove")), "item-not-found", id="remove-unknown"),
]


@pytest.mark.parametrize(("payload", "condition"), BAD_SETS)
async def test_bad_roster_set_is_refused_and_changes_nothing(server: Server, connect: Connect,
                                                             payload: str, condition: str) -> None:
    await users(server, ALICE, BOB, CAROL)
    desk = await connect(server, f"{ALICE}/desk")
    phone = await connect(server, f"{ALICE}/phone")
    _, got = await desk.refused("set", payload)
    assert got == condition
    assert await roster_items(desk) == {}
    assert not pushes(await desk.mark()) and not pushes(await phone.mark())


async def test_another_users_roster_is_forbidden(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    bob = await connect(server, f"{BOB}/desk")
    await bob.query("set", roster_set(item_xml(CAROL, "Carol")))
    await bob.mark()
    alice = await connect(server, f"{ALICE}/desk")

    assert (await alice.refused("get", roster_get(), to=BOB))[1] == "forbidden"
    assert (await alice.refused("set", roster_set(item_xml(CAROL, "mine")), to=BOB))[1] == "forbidden"
    got = await roster_items(bob)
    assert set(got) == {CAROL} and got[CAROL].get("name") == "Carol"
    assert not pushes(await bob.mark())


# --- the contact list limit (SPEC C2, admin guide 3.3) -------------------------------------------


async def test_seed_example_195_plus_6_adds_5_and_refuses_the_6th(server: Server, connect: Connect) -> None:
    assert server.config.presence.max_contacts == 200
    await add_user(server, ALICE)
    await server.repos.roster.save(ALICE, [RosterItem(f"c{i}@{DOMAIN}") for i in range(195)])
    desk = await connect(server, f"{ALICE}/desk")
    assert len(await roster_items(desk)) == 195

    for i in range(5):
        await desk.query("set", roster_set(item_xml(f"new{i}@{DOMAIN}")))
    err_type, condition = await desk.refused("set", roster_set(item_xml(f"new5@{DOMAIN}")))
    assert (err_type, condition) == ("wait", "resource-constraint")

    got = await roster_items(desk)
    assert len(got) == 200
    assert f"new4@{DOMAIN}" in got and f"new5@{DOMAIN}" not in got


async def test_adds_past_the_limit_are_refused_per_item(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"max_contacts": 5})
    await add_user(server, ALICE)
    desk = await connect(server, f"{ALICE}/desk")
    phone = await connect(server, f"{ALICE}/phone")
    for i in range(3):
        await desk.query("set", roster_set(item_xml(f"old{i}@{DOMAIN}")))
    await desk.mark()
    await phone.mark()

    await desk.query("set", roster_set(item_xml(f"new0@{DOMAIN}")))
    await desk.query("set", roster_set(item_xml(f"new1@{DOMAIN}")))
    assert (await desk.refused("set", roster_set(item_xml(f"new2@{DOMAIN}"))))[1] == "resource-constraint"
    pushed = {pushed_item(p).get("jid") for p in pushes(await phone.mark())}
    assert pushed == {f"new0@{DOMAIN}", f"new1@{DOMAIN}"}, "the refused item must not be pushed"
    assert len(await roster_items(desk)) == 5

    # At the limit, an existing contact can still be renamed and regrouped.
    await desk.query("set", roster_set(item_xml(f"old0@{DOMAIN}", "Renamed", ("G",))))
    assert (await roster_items(desk))[f"old0@{DOMAIN}"].get("name") == "Renamed"

    # A removal frees a place.
    await desk.query("set", roster_set(item_xml(f"old1@{DOMAIN}", subscription="remove")))
    await desk.query("set", roster_set(item_xml(f"new2@{DOMAIN}")))
    got = await roster_items(desk)
    assert len(got) == 5 and f"new2@{DOMAIN}" in got and f"old1@{DOMAIN}" not in got


async def test_nobody_can_add_a_user_whose_list_is_full(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(presence={"max_contacts": 2})
    friend = f"friend@{DOMAIN}"
    await users(server, ALICE, CAROL, friend)
    alice = await connect(server, f"{ALICE}/desk")
    await alice.query("set", roster_set(item_xml(friend)))
    await alice.query("set", roster_set(item_xml(f"other@{DOMAIN}")))

    carol = await connect(server, f"{CAROL}/desk")
    err_type, condition = await carol.refused("set", roster_set(item_xml(ALICE, "Alice")))
    assert (err_type, condition) == ("wait", "resource-constraint")
    assert await roster_items(carol) == {}

    # A subscription request is an add too: refused with a presence error, nothing kept.
    carol.send(f"<presence to='{ALICE}' type='subscribe'/>")
    err = await carol.next(lambda el: local(el) == "presence" and el.get("type") == "error", "a presence error")
    assert err.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}resource-constraint") is not None
    assert await roster_items(carol) == {}
    window = await alice.mark()
    assert not [el for el in window if local(el) == "presence" and el.get("type") == "subscribe"]

    # Someone already in the full list may still add its owner.
    buddy = await connect(server, f"{friend}/desk")
    await buddy.query("set", roster_set(item_xml(ALICE, "Alice")))
    assert set(await roster_items(buddy)) == {ALICE}
