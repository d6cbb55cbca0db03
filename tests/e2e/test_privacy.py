"""Privacy lists (XEP-0016) end to end with slixmpp (SPEC C2): creating, reading, editing
and removing lists with every error the protocol names, active and default lists, items by
JID, roster group and subscription for messages, iqs and presence both ways, and the
mapping onto the blocking command (XEP-0191): the block list reads as the head of the
default list, and a full deny of a JID in a privacy list blocks as the block list does."""

from __future__ import annotations

from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

from parley.modules.privacy import PrivacyModule
from parley.server import Server
from parley.storage.repos import RosterItem
from tests.clients import close_all, eventually
from tests.conftest import users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    DOMAIN,
    Connect,
    Match,
    Peer,
    bodies,
    bounce_of,
    bounced,
    change_status,
    error_condition,
    local,
    message,
    presence,
    presences_from,
    q,
    say,
)

NS_PRIVACY = "jabber:iq:privacy"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
BLOCKLIST = "urn:xmpp:blocking"


# --- helpers --------------------------------------------------------------------------------------


def item(action: str, order: int, type_: str | None = None, value: str | None = None,
         kinds: tuple[str, ...] = ()) -> str:
    attrs = f"action={quoteattr(action)} order='{order}'"
    if type_ is not None:
        attrs += f" type={quoteattr(type_)}"
    if value is not None:
        attrs += f" value={quoteattr(value)}"
    return f"<item {attrs}>{''.join(f'<{k}/>' for k in kinds)}</item>"


def plist(name: str, *items: str) -> str:
    return f"<query xmlns='{NS_PRIVACY}'><list name={quoteattr(name)}>{''.join(items)}</list></query>"


def choose(what: str, name: str | None) -> str:
    attr = "" if name is None else f" name={quoteattr(name)}"
    return f"<query xmlns='{NS_PRIVACY}'><{what}{attr}/></query>"


async def save(peer: Peer, name: str, *items: str) -> None:
    await peer.query("set", plist(name, *items))


async def activate(peer: Peer, name: str | None) -> None:
    await peer.query("set", choose("active", name))


async def make_default(peer: Peer, name: str | None) -> None:
    await peer.query("set", choose("default", name))


async def names(peer: Peer) -> tuple[str | None, str | None, list[str]]:
    """(active list, default list, every list name)."""
    res = await peer.query("get", f"<query xmlns='{NS_PRIVACY}'/>")
    query = res.find(q(NS_PRIVACY, "query"))
    assert query is not None
    active = query.find(q(NS_PRIVACY, "active"))
    default = query.find(q(NS_PRIVACY, "default"))
    return (active.get("name") if active is not None else None,
            default.get("name") if default is not None else None,
            [el.get("name", "") for el in query.findall(q(NS_PRIVACY, "list"))])


async def read(peer: Peer, name: str) -> list[tuple[str | None, str | None, str, int, tuple[str, ...]]]:
    """The list's items in order: (type, value, action, order, child element names)."""
    res = await peer.query("get", f"<query xmlns='{NS_PRIVACY}'><list name={quoteattr(name)}/></query>")
    lst = res.find(f"{q(NS_PRIVACY, 'query')}/{q(NS_PRIVACY, 'list')}")
    assert lst is not None and lst.get("name") == name
    return [(it.get("type"), it.get("value"), it.get("action", ""), int(it.get("order", "-1")),
             tuple(local(c) for c in it)) for it in lst.findall(q(NS_PRIVACY, "item"))]


def list_push(name: str) -> Match:
    def match(el: Element) -> bool:
        lst = el.find(f"{q(NS_PRIVACY, 'query')}/{q(NS_PRIVACY, 'list')}")
        return local(el) == "iq" and el.get("type") == "set" and lst is not None and lst.get("name") == name

    return match


def block_push(action: str) -> Match:
    def match(el: Element) -> bool:
        return local(el) == "iq" and el.get("type") == "set" and el.find(f"{{{NS_BLOCKING}}}{action}") is not None

    return match


def push_items(push: Element) -> set[str]:
    return {it.get("jid", "") for it in push.iter(f"{{{NS_BLOCKING}}}item")}


async def blocklist(peer: Peer) -> set[str]:
    res = await peer.query("get", f"<blocklist xmlns='{NS_BLOCKING}'/>")
    return {it.get("jid", "") for it in res.iter(f"{{{NS_BLOCKING}}}item")}


async def contacts(server: Server, owner: str, **groups: tuple[str, ...]) -> None:
    """Mutual subscriptions between `owner` and each contact (keyword: the local part),
    with the owner's roster groups for that contact."""
    items = []
    for name, gs in groups.items():
        contact = f"{name}@{DOMAIN}"
        items.append(RosterItem(contact, subscription="both", groups=list(gs)))
        await server.repos.roster.save(contact, [RosterItem(owner, subscription="both")])
    await server.repos.roster.save(owner, items)


def visible_presences(window: list[Element], bare: str) -> list[Element]:
    return [el for el in presences_from(window, bare) if presence()(el)]


# --- managing lists ---------------------------------------------------------------------------------


async def test_lists_are_created_read_edited_and_removed(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    desk = await connect(server, f"{ALICE}/desk")
    phone = await connect(server, f"{ALICE}/phone")
    assert await names(desk) == (None, None, [])

    await save(desk, "public", item("deny", 3, "jid", f"tybalt@{DOMAIN}"), item("allow", 68))
    await phone.next(list_push("public"), "the push for the new list")
    await desk.next(list_push("public"), "the push, to the sender too")
    await save(desk, "special",
               item("allow", 42, "jid", f"mercutio@{DOMAIN}"),
               item("allow", 6, "jid", f"juliet@{DOMAIN}/balcony", ("message", "presence-in")),
               item("deny", 666))
    assert await names(phone) == (None, None, ["public", "special"])
    # Items come back in evaluation order, with the orders the client gave.
    assert await read(phone, "special") == [
        ("jid", f"juliet@{DOMAIN}/balcony", "allow", 6, ("message", "presence-in")),
        ("jid", f"mercutio@{DOMAIN}", "allow", 42, ()),
        (None, None, "deny", 666, ()),
    ]

    # An edit replaces the whole list.
    await save(phone, "public", item("deny", 5, "jid", f"paris@{DOMAIN}", ("message",)),
               item("deny", 1, "subscription", "none", ("iq",)))
    await desk.next(list_push("public"), "the push for the edit")
    assert await read(desk, "public") == [
        ("subscription", "none", "deny", 1, ("iq",)),
        ("jid", f"paris@{DOMAIN}", "deny", 5, ("message",)),
    ]

    # An empty list element removes the list.
    await desk.query("set", f"<query xmlns='{NS_PRIVACY}'><list name='special'/></query>")
    await phone.next(list_push("special"), "the push for the removal")
    assert await names(desk) == (None, None, ["public"])

    await make_default(desk, "public")
    await activate(phone, "public")
    assert await names(phone) == ("public", "public", ["public"])
    assert await names(desk) == (None, "public", ["public"])

    # The lists are stored: read again from the database, they are the same.
    module = server.modules["privacy"]
    assert isinstance(module, PrivacyModule)
    module._cache.clear()
    assert await names(desk) == (None, "public", ["public"])
    assert await read(desk, "public") == [
        ("subscription", "none", "deny", 1, ("iq",)),
        ("jid", f"paris@{DOMAIN}", "deny", 2, ("message",)),
    ], "the default list is numbered from 1"


async def test_every_error(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await contacts(server, ALICE, bob=("Friends",))
    desk = await connect(server, f"{ALICE}/desk")
    phone = await connect(server, f"{ALICE}/phone")
    await save(desk, "a", item("allow", 1))
    await save(desk, "b", item("deny", 1, kinds=("message",)))
    await save(desk, "work", item("deny", 1, kinds=("presence-out",)))

    # Unknown lists.
    assert await desk.refused("get", f"<query xmlns='{NS_PRIVACY}'><list name='nope'/></query>") \
        == ("cancel", "item-not-found")
    assert await desk.refused("set", choose("active", "nope")) == ("cancel", "item-not-found")
    assert await desk.refused("set", choose("default", "nope")) == ("cancel", "item-not-found")
    assert await desk.refused("set", f"<query xmlns='{NS_PRIVACY}'><list name='nope'/></query>") \
        == ("cancel", "item-not-found")

    # Malformed requests.
    assert (await desk.refused("get", f"<query xmlns='{NS_PRIVACY}'><list name='a'/><list name='b'/></query>"))[1] \
        == "bad-request"
    assert (await desk.refused("set", f"<query xmlns='{NS_PRIVACY}'><active name='a'/><default name='a'/></query>"))[1] \
        == "bad-request"
    assert (await desk.refused("set", f"<query xmlns='{NS_PRIVACY}'/>"))[1] == "bad-request"
    assert (await desk.refused("set", f"<query xmlns='{NS_PRIVACY}'><list>{item('allow', 1)}</list></query>"))[1] \
        == "bad-request"

    # Bad items: each one refused, and the list left as it was.
    bad = [
        (item("allow", 1), item("deny", 1)),  # the same order twice
        ("<item order='1'/>",),  # no action
        (item("block", 1),),  # not an action
        ("<item action='allow'/>",),  # no order
        (item("allow", -1),),
        ("<item action='allow' order='x'/>",),
        (item("deny", 1, "jid", "not a jid@"),),
        (item("deny", 1, "subscription", "sometimes"),),
        (item("deny", 1, "colour", "blue"),),
        (item("deny", 1, "jid"),),  # a type with no value
        ("<item action='deny' order='1' value='x'/>",),  # a value with no type
        (item("deny", 1, kinds=("everything",)),),
        ("<thing/>",),
    ]
    for items in bad:
        assert await desk.refused("set", plist("a", *items)) == ("modify", "bad-request"), items
    assert await read(desk, "a") == [(None, None, "allow", 1, ())]
    # A group that is not in the roster.
    assert await desk.refused("set", plist("a", item("deny", 1, "group", "Enemies"))) == ("cancel", "item-not-found")
    await save(desk, "a", item("deny", 1, "group", "Friends"))

    # Lists in use by another session.
    await make_default(desk, "a")  # the first default: nothing was in use
    assert await desk.refused("set", choose("default", "b")) == ("cancel", "conflict"), \
        "the default list applies to alice/phone"
    assert await desk.refused("set", choose("default", None)) == ("cancel", "conflict")
    assert await desk.refused("set", f"<query xmlns='{NS_PRIVACY}'><list name='a'/></query>") == ("cancel", "conflict")
    await activate(phone, "work")
    assert await desk.refused("set", f"<query xmlns='{NS_PRIVACY}'><list name='work'/></query>") \
        == ("cancel", "conflict")
    # With alice/phone on a list of its own, the default applies to alice/desk alone.
    await make_default(desk, "b")
    # The session that uses a list may remove it; its active list is gone with it.
    await phone.query("set", f"<query xmlns='{NS_PRIVACY}'><list name='work'/></query>")
    assert await names(phone) == (None, "b", ["a", "b"])

    # Someone else's lists are not theirs to see.
    bob = await connect(server, f"{BOB}/desk")
    assert (await bob.refused("get", f"<query xmlns='{NS_PRIVACY}'/>", to=ALICE))[1] == "forbidden"


# --- what the lists do ------------------------------------------------------------------------------


async def test_deny_messages_from_a_jid(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await contacts(server, ALICE, bob=(), carol=())
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    await save(alice, "no-bob-messages", item("deny", 3, "jid", BOB, ("message",)))
    await make_default(alice, "no-bob-messages")
    await alice.mark()

    say(bob, ALICE, "to the account")
    assert await bounced(bob, "to the account") == "service-unavailable"
    say(bob, f"{ALICE}/desk", "to the resource")
    assert await bounced(bob, "to the resource") == "service-unavailable"
    say(carol, ALICE, "from carol")
    await alice.next(message("from carol"), "carol's message")
    # Only messages: bob's presence and iqs still reach alice.
    change_status(bob, "still here")
    await alice.next(presence(f"{BOB}/desk", status="still here"), "bob's presence")
    bob.send(f"<iq type='get' id='v1' to='{ALICE}/desk'><query xmlns='jabber:iq:version'/></iq>")
    await alice.next(lambda el: local(el) == "iq" and el.get("id") == "v1", "bob's iq")
    await bob.mark()
    assert bodies(await alice.mark()) == ["from carol"]

    # Alice may still write to bob: the item covers inbound messages only.
    say(alice, BOB, "one way")
    await bob.next(message("one way"), "alice's message")


async def test_deny_iqs(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    await save(alice, "no-iq", item("deny", 1, kinds=("iq",)))
    await activate(alice, "no-iq")
    bob.send(f"<iq type='get' id='v2' to='{ALICE}/desk'><query xmlns='jabber:iq:version'/></iq>")
    err = await bob.next(lambda el: local(el) == "iq" and el.get("id") == "v2", "the answer")
    assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
    await bob.mark()
    assert not [el for el in await alice.mark() if local(el) == "iq" and el.get("id") == "v2"]
    # The user's own resources and server are never filtered.
    assert (await alice.query("get", "<query xmlns='jabber:iq:roster'/>")).get("type") == "result"


async def test_deny_presence_out_to_a_group(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await contacts(server, ALICE, bob=("Work",), carol=("Friends",))
    desk = await connect(server, f"{ALICE}/desk", pstatus="at my desk")
    phone = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    await bob.next(presence(f"{ALICE}/desk", status="at my desk"), "alice before the list")
    for p in (desk, phone, bob, carol):
        await p.mark()

    await save(desk, "off-work", item("deny", 1, "group", "Work", ("presence-out",)))
    await activate(desk, "off-work")
    # Made active, the list hides alice/desk from the group at once.
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "alice/desk unavailable")
    await bob.mark()
    assert not presences_from(await carol.mark(), ALICE), "carol is not in the group"

    change_status(desk, "evening")
    await carol.next(presence(f"{ALICE}/desk", status="evening"), "the change, outside the group")
    await phone.next(presence(f"{ALICE}/desk", status="evening"), "the change, on alice's other resource")
    await desk.mark()
    assert not presences_from(await bob.mark(), ALICE), "the group saw alice/desk"
    # alice/phone has no list: bob still sees it.
    change_status(phone, "phone on")
    await bob.next(presence(f"{ALICE}/phone", status="phone on"), "alice/phone")
    # Only presence: bob's messages still arrive.
    say(bob, f"{ALICE}/desk", "a work question")
    await desk.next(message("a work question"), "bob's message")

    # Declining the list shows alice/desk again, with its current presence.
    await activate(desk, None)
    await bob.next(presence(f"{ALICE}/desk", status="evening"), "alice/desk again")


async def test_deny_presence_in(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await contacts(server, ALICE, bob=())
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk", pstatus="hi")
    await alice.next(presence(f"{BOB}/desk", status="hi"), "bob before the list")
    await save(alice, "calm", item("deny", 1, "jid", BOB, ("presence-in",)))
    await activate(alice, "calm")
    # Bob was available: alice is told he is gone.
    await alice.next(presence(f"{BOB}/desk", "unavailable"), "bob unavailable")
    await alice.mark()
    change_status(bob, "unseen")
    await bob.mark()
    assert not presences_from(await alice.mark(), BOB)
    # Alice's presence still reaches bob.
    change_status(alice, "seen")
    await bob.next(presence(f"{ALICE}/desk", status="seen"), "alice's presence")


async def test_subscription_items(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL, DAVE)
    await contacts(server, ALICE, bob=())
    # Carol is subscribed to alice's presence, alice is not subscribed to carol's.
    await server.repos.roster.save(ALICE, [RosterItem(CAROL, subscription="from")])
    await server.repos.roster.save(CAROL, [RosterItem(ALICE, subscription="to")])
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    dave = await connect(server, f"{DAVE}/desk")
    # The heuristic of XEP-0016: nobody outside the roster may write; only mutual
    # contacts see alice.
    await save(alice, "strangers",
               item("deny", 1, "subscription", "none", ("message",)),
               item("deny", 2, "subscription", "from", ("presence-out",)))
    await make_default(alice, "strangers")
    await carol.next(presence(f"{ALICE}/desk", "unavailable"), "alice hidden from a one-way watcher")

    say(dave, ALICE, "who are you")
    assert await bounced(dave, "who are you") == "service-unavailable"
    say(bob, ALICE, "a friend")
    await alice.next(message("a friend"), "bob's message")
    say(carol, ALICE, "a watcher")
    await alice.next(message("a watcher"), "carol's message")

    change_status(alice, "friends only")
    await bob.next(presence(f"{ALICE}/desk", status="friends only"), "alice, for bob")
    await alice.mark()
    assert not visible_presences(await carol.mark(), ALICE)


async def test_active_list_replaces_the_default(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    desk = await connect(server, f"{ALICE}/desk")
    phone = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    await save(desk, "quiet", item("deny", 1, "jid", BOB, ("message",)))
    await save(desk, "open", item("allow", 1))
    await make_default(desk, "quiet")
    await activate(phone, "open")
    assert await names(phone) == ("open", "quiet", ["open", "quiet"])
    assert await names(desk) == (None, "quiet", ["open", "quiet"])

    say(bob, f"{ALICE}/desk", "to the desk")
    assert await bounced(bob, "to the desk") == "service-unavailable"
    say(bob, f"{ALICE}/phone", "to the phone")
    await phone.next(message("to the phone"), "the message on the phone's own list")

    # No layering: with its active list declined, the phone is back on the default.
    await activate(phone, None)
    say(bob, f"{ALICE}/phone", "again")
    assert await bounced(bob, "again") == "service-unavailable"
    # To the bare JID, with every session denying it, the message is refused.
    say(bob, ALICE, "to the account")
    assert await bounced(bob, "to the account") == "service-unavailable"
    await bob.mark()
    assert bodies(await desk.mark()) == [] and bodies(await phone.mark()) == ["to the phone"]


async def test_the_default_list_applies_offline(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    await save(alice, "quiet", item("deny", 1, "jid", BOB, ("message",)))
    await make_default(alice, "quiet")
    await alice.query("set", f"<query xmlns='{NS_PRIVACY}'><list name='spare'>{item('allow', 1)}</list></query>")
    await activate(alice, "spare")
    await close_all(alice.c)

    async def signed_out() -> bool:
        return not server.router.sessions.of(ALICE)

    await eventually(signed_out, "alice's session ended")
    bob = await connect(server, f"{BOB}/desk")
    say(bob, ALICE, "while you were out")
    assert await bounced(bob, "while you were out") == "service-unavailable"
    # The active list ended with its session.
    again = await connect(server, f"{ALICE}/desk")
    assert (await names(again))[0] is None
    assert bodies(again.got) == []


# --- the blocking command and privacy lists -------------------------------------------------------


async def test_blocking_reads_as_the_default_list(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await contacts(server, ALICE, bob=(), carol=())
    alice = await connect(server, f"{ALICE}/desk", pstatus="online")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    await alice.query("set", f"<block xmlns='{NS_BLOCKING}'><item jid='{BOB}'/></block>")
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "alice hidden from bob")

    # The block list is the default list.
    assert await names(alice) == (None, BLOCKLIST, [BLOCKLIST])
    assert await read(alice, BLOCKLIST) == [("jid", BOB, "deny", 1, ())]

    # A stored list made the default keeps the block list at its head, and its own full
    # blocks of a JID become blocked JIDs.
    await save(alice, "public", item("deny", 5, "jid", CAROL), item("deny", 7, "jid", DAVE, ("message",)),
               item("allow", 10))
    await make_default(alice, "public")
    await alice.next(lambda el: block_push("block")(el) and push_items(el) == {CAROL}, "the block push for carol")
    await carol.next(presence(f"{ALICE}/desk", "unavailable"), "alice hidden from carol")
    assert await blocklist(alice) == {BOB, CAROL}
    assert await names(alice) == (None, "public", ["public", BLOCKLIST])
    assert await read(alice, "public") == [
        ("jid", BOB, "deny", 1, ()),
        ("jid", CAROL, "deny", 2, ()),
        ("jid", DAVE, "deny", 3, ("message",)),
        (None, None, "allow", 4, ()),
    ]
    say(carol, ALICE, "blocked by a list")
    assert await bounced(carol, "blocked by a list") == "service-unavailable"

    # Editing the default list without bob unblocks him, for both protocols.
    await save(alice, "public", item("deny", 1, "jid", CAROL), item("allow", 2))
    await alice.next(lambda el: block_push("unblock")(el) and push_items(el) == {BOB}, "the unblock push for bob")
    await alice.next(list_push("public"), "the list push")
    assert await blocklist(alice) == {CAROL}
    await bob.next(presence(f"{ALICE}/desk", status="online"), "alice visible to bob again")
    say(bob, ALICE, "hello again")
    await alice.next(message("hello again"), "bob's message")

    # Unblocking through XEP-0191 takes the JID off the default list.
    await alice.query("set", f"<unblock xmlns='{NS_BLOCKING}'><item jid='{CAROL}'/></unblock>")
    await carol.next(presence(f"{ALICE}/desk", status="online"), "alice visible to carol again")
    assert await read(alice, "public") == [(None, None, "allow", 1, ())]
    assert await names(alice) == (None, "public", ["public"])

    # Declining the default list never unblocks anyone.
    await alice.query("set", f"<block xmlns='{NS_BLOCKING}'><item jid='{BOB}'/></block>")
    await make_default(alice, None)
    assert await names(alice) == (None, BLOCKLIST, ["public", BLOCKLIST])
    assert await blocklist(alice) == {BOB}
    # Removing the block list's list unblocks everyone.
    await alice.query("set", f"<query xmlns='{NS_PRIVACY}'><list name='{BLOCKLIST}'/></query>")
    await alice.next(lambda el: block_push("unblock")(el) and push_items(el) == {BOB}, "the unblock-all push")
    assert await blocklist(alice) == set()


async def test_the_block_list_holds_only_full_blocks(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    assert await alice.refused("set", plist(BLOCKLIST, item("deny", 1, "jid", BOB, ("message",)))) \
        == ("modify", "bad-request")
    await save(alice, BLOCKLIST, item("deny", 1, "jid", BOB), item("deny", 2, "jid", CAROL))
    assert await blocklist(alice) == {BOB, CAROL}
    assert await read(alice, BLOCKLIST) == [("jid", BOB, "deny", 1, ()), ("jid", CAROL, "deny", 2, ())]


async def test_full_deny_in_a_list_blocks_like_the_block_list(server: Server, connect: Connect) -> None:
    await users(server, ALICE, DAVE)
    await contacts(server, ALICE, dave=())
    alice = await connect(server, f"{ALICE}/desk", pstatus="here")
    dave = await connect(server, f"{DAVE}/desk", pstatus="dave here")
    await dave.next(presence(f"{ALICE}/desk", status="here"), "alice before the list")
    # In an active list, not the default: no block list entry, the same effect.
    await save(alice, "no-dave", item("allow", 1, "jid", BOB), item("deny", 2, "jid", DAVE))
    await activate(alice, "no-dave")
    assert await blocklist(alice) == set()

    # Dave sees alice unavailable, and she sees him unavailable ...
    await dave.next(presence(f"{ALICE}/desk", "unavailable"), "alice unavailable")
    await alice.next(presence(f"{DAVE}/desk", "unavailable"), "dave unavailable")
    change_status(alice, "hidden")
    await alice.mark()
    assert not visible_presences(await dave.mark(), ALICE)
    # ... dave cannot write to her or ask her anything ...
    say(dave, ALICE, "knock knock")
    assert await bounced(dave, "knock knock") == "service-unavailable"
    dave.send(f"<iq type='get' id='v3' to='{ALICE}/desk'><query xmlns='jabber:iq:version'/></iq>")
    err = await dave.next(lambda el: local(el) == "iq" and el.get("id") == "v3", "the iq error")
    assert error_condition(err) == "service-unavailable"
    dave.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await dave.mark()
    window = await alice.mark()
    assert bodies(window) == [] and not presences_from(window, DAVE)
    # ... and she cannot write to him.
    say(alice, DAVE, "hello dave")
    err = await bounce_of(alice, "hello dave")
    assert error_condition(err) == "not-acceptable"
    assert err.find(f"{{jabber:client}}error/{{{NS_BLOCKING_ERRORS}}}blocked") is not None
    await alice.mark()
    assert bodies(await dave.mark()) == []
