"""Group chat rooms beyond the ad-hoc room (XEP-0045 and friends), end to end: room
configuration by owners (muc#owner) and its locked switches, persistent rooms that outlive
their occupants and a restart, passwords, members-only rooms, destruction, mediated and
direct invitations (XEP-0249), nickname registration, voice requests, hidden occupants,
room info and search, the room archive (XEP-0313), occupant ids (XEP-0421), self-ping
(XEP-0410), limits, the per-node system alias and the chat node's own database.

Raw XML through the Peer helper wherever the test must see exactly what the room sends;
slixmpp's xep_0045 and xep_0249 plugins where a client library's way of asking is the point.
The helpers of tests/e2e/test_muc.py (join, joined, codes, item, ...) are reused."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, fromstring
from xml.sax.saxutils import escape, quoteattr

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError

from parley.config import from_dict
from parley.server import Server
from tests.clients import TIMEOUT, eventually, wait_event
from tests.conftest import ServerFactory, users
from tests.e2e.test_mam import archive, rsm, stanza_ids
from tests.e2e.test_muc import (
    NS_ADMIN,
    NS_DELAY,
    NS_DISCO_INFO,
    NS_MUC,
    NS_USER,
    ROOM,
    SERVICE,
    codes,
    groupchat,
    item,
    join,
    joined,
    refused_join,
    room_items,
)
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    DOMAIN,
    NS_STANZAS,
    Connect,
    Peer,
    error_condition,
    local,
    message,
    presence,
    q,
)
from tests.pg import PgServer, PgStartFailed, PgUnavailable, start_server
from tests.pg_fixtures import SKIP_ENV

EVE = f"eve@{DOMAIN}"

NS_OWNER = f"{NS_MUC}#owner"
NS_DATA = "jabber:x:data"
NS_REGISTER = "jabber:iq:register"
NS_SEARCH = "jabber:iq:search"
NS_MAM = "urn:xmpp:mam:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_PING = "urn:xmpp:ping"
NS_HIDDEN = "urn:parley:muc:hidden:0"
NS_DIRECT_INVITE = "jabber:x:conference"
ROOMCONFIG = f"{NS_MUC}#roomconfig"
ROOMINFO = f"{NS_MUC}#roominfo"
REQUEST = f"{NS_MUC}#request"
MUC_REGISTER = f"{NS_MUC}#register"

# Inside the join's <x xmlns='http://jabber.org/protocol/muc'>: join() puts it there.
HIDDEN = f"<hidden xmlns='{NS_HIDDEN}'/>"

# Owners may make rooms persistent: the contract's default, spelled out so that tests of
# other things do not hang on it (test_new_chat_settings_and_their_defaults checks it).
MUC: dict[str, Any] = {"only_admins_create_persistent": False}

# Fields owners may always change.
ALWAYS = {
    "muc#roomconfig_roomname": "text-single",
    "muc#roomconfig_roomdesc": "text-single",
    "muc#roomconfig_publicroom": "boolean",
    "muc#roomconfig_persistentroom": "boolean",
    "muc#roomconfig_passwordprotectedroom": "boolean",
    "muc#roomconfig_roomsecret": "text-private",
    "muc#roomconfig_roomowners": "jid-multi",
    "muc#roomconfig_roomadmins": "jid-multi",
}
# The field each "room owners can change ..." switch puts in the form.
SWITCHED = {
    "members_only": "muc#roomconfig_membersonly",
    "moderated": "muc#roomconfig_moderatedroom",
    "anonymous": "muc#roomconfig_whois",
    "room_size": "muc#roomconfig_maxusers",
    "private_message_role": "muc#roomconfig_allowpm",
    "subject_role": "muc#roomconfig_changesubject",
    "invite_role": "x-parley#invite_role",
    "moderator_invites": "x-parley#moderator_invites",
    "open_membership": "x-parley#open_membership",
    "show_offline_members": "x-parley#show_offline_members",
    "backwards_compatible": "x-parley#backwards_compatible",
    "strip_xhtml": "x-parley#strip_xhtml",
    "history_on_join": "x-parley#history_on_join",
}

NAME = "muc#roomconfig_roomname"
DESC = "muc#roomconfig_roomdesc"
PUBLIC = "muc#roomconfig_publicroom"
PERSISTENT = "muc#roomconfig_persistentroom"
PROTECTED = "muc#roomconfig_passwordprotectedroom"
SECRET = "muc#roomconfig_roomsecret"


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    srv = await make_server(muc=MUC)
    await users(srv, ALICE, BOB, CAROL, DAVE)
    return srv


# --- data forms ---------------------------------------------------------------------------------


def fields_of(form: Element) -> dict[str, Element]:
    return {f.get("var", ""): f for f in form.findall(q(NS_DATA, "field"))}


def values_of(form: Element, var: str) -> list[str]:
    field = fields_of(form).get(var)
    return [] if field is None else [v.text or "" for v in field.findall(q(NS_DATA, "value"))]


def value_of(form: Element, var: str) -> str | None:
    values = values_of(form, var)
    return values[0] if values else None


def options_of(form: Element, var: str) -> set[str]:
    field = fields_of(form).get(var)
    assert field is not None, f"the form has no {var}"
    return {o.findtext(q(NS_DATA, "value")) or "" for o in field.findall(q(NS_DATA, "option"))}


def true(value: str | None) -> bool:
    """An XEP-0004 boolean: '1' or 'true' is true, '0', 'false' or nothing is false."""
    assert value in (None, "0", "1", "false", "true"), f"{value!r} is not an x:data boolean"
    return value in ("1", "true")


def x_data(el: Element | None, form_type: str) -> Element | None:
    """The data form of that FORM_TYPE anywhere in `el`."""
    if el is None:
        return None
    for x in el.iter(q(NS_DATA, "x")):
        if value_of(x, "FORM_TYPE") == form_type:
            return x
    return None


def submit(form_type: str, values: Mapping[str, str | list[str]], type_: str = "submit") -> str:
    parts = [f"<x xmlns='{NS_DATA}' type='{type_}'><field var='FORM_TYPE' type='hidden'>"
             f"<value>{form_type}</value></field>"]
    for var, value in values.items():
        inner = "".join(f"<value>{escape(v)}</value>" for v in (value if isinstance(value, list) else [value]))
        parts.append(f"<field var={quoteattr(var)}>{inner}</field>")
    return "".join(parts) + "</x>"


# --- requests and what answers them ------------------------------------------------------------


def owner_query(inner: str = "") -> str:
    return f"<query xmlns='{NS_OWNER}'>{inner}</query>"


async def config_form(peer: Peer, room: str = ROOM) -> Element:
    res = await peer.query("get", owner_query(), room)
    form = x_data(res.find(q(NS_OWNER, "query")), ROOMCONFIG)
    assert form is not None, "the owner query answers with the muc#roomconfig form"
    return form


async def configure(peer: Peer, values: Mapping[str, str | list[str]], room: str = ROOM) -> None:
    await peer.query("set", owner_query(submit(ROOMCONFIG, values)), room)


async def configure_refused(peer: Peer, values: Mapping[str, str | list[str]], room: str = ROOM) -> str:
    return (await peer.refused("set", owner_query(submit(ROOMCONFIG, values)), room))[1]


async def try_configure(peer: Peer, values: Mapping[str, str | list[str]], room: str = ROOM) -> bool:
    """Whether the room took the form (a refusal is an answer here, not a failure)."""
    iq = peer.c.make_iq(itype="set", ito=room)
    iq.append(fromstring(owner_query(submit(ROOMCONFIG, values))))
    try:
        await iq.send(timeout=TIMEOUT)
    except IqError:
        return False
    return True


async def refusal(peer: Peer, type_: str, payload: str, to: str) -> tuple[str, str]:
    """(condition, text) of an iq the server must refuse."""
    iq = peer.c.make_iq(itype=type_, ito=to)
    iq.append(fromstring(payload))
    with pytest.raises(IqError) as err:
        await iq.send(timeout=TIMEOUT)
    return str(err.value.iq["error"]["condition"]), str(err.value.iq["error"]["text"])


def error_text(el: Element) -> str:
    return el.findtext(f"{{jabber:client}}error/{q(NS_STANZAS, 'text')}") or ""


async def room_info(peer: Peer, room: str = ROOM, node: str | None = None) -> Element:
    attr = "" if node is None else f" node={quoteattr(node)}"
    res = await peer.query("get", f"<query xmlns='{NS_DISCO_INFO}'{attr}/>", room)
    query = res.find(q(NS_DISCO_INFO, "query"))
    assert query is not None
    return query


def features(info: Element) -> set[str]:
    return {f.get("var", "") for f in info.iter(q(NS_DISCO_INFO, "feature"))}


async def room_gone(peer: Peer, room: str = ROOM) -> bool:
    return (await peer.refused("get", f"<query xmlns='{NS_DISCO_INFO}'/>", room))[1] == "item-not-found"


async def affiliate(peer: Peer, jid: str, affiliation: str, room: str = ROOM) -> None:
    await peer.query("set", f"<query xmlns='{NS_ADMIN}'><item jid='{jid}' affiliation='{affiliation}'/></query>",
                     room)


async def affiliated(peer: Peer, affiliation: str, room: str = ROOM) -> list[str]:
    res = await peer.query("get", f"<query xmlns='{NS_ADMIN}'><item affiliation='{affiliation}'/></query>", room)
    return sorted(i.get("jid", "") for i in res.iter(q(NS_ADMIN, "item")))


async def with_role(peer: Peer, role: str, room: str = ROOM) -> list[str]:
    res = await peer.query("get", f"<query xmlns='{NS_ADMIN}'><item role='{role}'/></query>", room)
    return sorted(i.get("nick", "") for i in res.iter(q(NS_ADMIN, "item")))


async def left(peer: Peer, nick: str, room: str = ROOM) -> None:
    peer.send(f"<presence to='{room}/{nick}' type='unavailable'/>")
    await peer.next(lambda el: presence(f"{room}/{nick}", "unavailable")(el) and 110 in codes(el),
                    f"{nick}'s own leave")


async def set_subject(peer: Peer, subject: str, room: str = ROOM) -> None:
    peer.send(f"<message to='{room}' type='groupchat'><subject>{subject}</subject></message>")
    await peer.next(lambda el: local(el) == "message" and el.findtext("{jabber:client}subject") == subject,
                    f"the subject {subject!r}")


async def refused_join_with(peer: Peer, nick: str, extra: str, room: str = ROOM) -> Element:
    """The presence error that answers a join whose muc <x> carries `extra`."""
    join(peer, nick, room, extra)
    return await peer.next(presence(f"{room}/{nick}", "error"), f"the refusal of {nick}")


async def hidden_joined(peer: Peer, nick: str, room: str = ROOM) -> Element:
    join(peer, nick, room, HIDDEN)
    return await peer.next(lambda el: presence(f"{room}/{nick}")(el) and 110 in codes(el),
                           f"{nick}'s hidden self-presence")


async def refused_message(peer: Peer, id_: str) -> str | None:
    """The condition of the error that answers the message with that id."""
    err = await peer.next(lambda el: local(el) == "message" and el.get("type") == "error" and el.get("id") == id_,
                          f"the refusal of message {id_}")
    return error_condition(err)


def invite_xml(to: str, reason: str = "join us", id_: str = "inv1", room: str = ROOM) -> str:
    return (f"<message to='{room}' id='{id_}'><x xmlns='{NS_USER}'><invite to='{to}'>"
            f"<reason>{reason}</reason></invite></x></message>")


def user_x(el: Element, name: str) -> Element | None:
    return el.find(f"{q(NS_USER, 'x')}/{q(NS_USER, name)}")


async def invitation(peer: Peer, room: str = ROOM) -> Element:
    return await peer.next(lambda el: local(el) == "message" and el.get("from") == room
                           and el.get("type") != "error" and user_x(el, "invite") is not None,
                           f"an invitation to {room}")


def invitations(window: list[Element]) -> list[Element]:
    return [el for el in window if local(el) == "message" and user_x(el, "invite") is not None]


def occupant_id(el: Element) -> str | None:
    found = el.findall(q(NS_OCCUPANT_ID, "occupant-id"))
    assert len(found) <= 1, "one occupant-id per stanza"
    return found[0].get("id") if found else None


async def restarted(make_server: ServerFactory, old: Server, **sections: Any) -> Server:
    """Stops `old` and starts a new server on the same configuration and data directory.
    make_server builds a configuration from the test's directory and the sections given, so
    the sections `old` was made with give it the same configuration (checked)."""
    await old.stop()
    new = await make_server(**sections)
    assert new.config.model_dump() == old.config.model_dump(), "restarted on another configuration"
    return new


# --- settings ----------------------------------------------------------------------------------


def test_new_chat_settings_and_their_defaults() -> None:
    muc = from_dict({"server": {"domain": DOMAIN}}).muc
    defaults = {
        "persistent": True, "database": "", "only_admins_create_persistent": False, "admins": [],
        "max_hidden": 1000, "invite_role": "participant", "moderator_invites": False,
        "open_membership": False, "show_offline_members": False, "backwards_compatible": False,
        "archive_messages": True, "archive_joins": False, "owner_can_change": [],
    }
    assert {k: getattr(muc, k) for k in defaults} == defaults
    cfg = from_dict({"server": {"domain": DOMAIN, "node": "1", "cluster": "parley"},
                     "muc": {"system_alias": True, "owner_can_change": list(SWITCHED), "max_hidden": 5,
                             "database": "postgresql+asyncpg://chat@db.example.test/chat"}})
    assert cfg.muc.owner_can_change == list(SWITCHED)
    assert cfg.muc.max_hidden == 5


# --- 1. owner configuration --------------------------------------------------------------------


async def test_owner_gets_the_configuration_form(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    form = await config_form(alice)
    assert form.get("type") == "form"
    types = {var: f.get("type") for var, f in fields_of(form).items()}
    assert types["FORM_TYPE"] == "hidden"
    for var, type_ in ALWAYS.items():
        assert types.get(var) == type_, f"{var} is always in the form, as {type_}"
    # owner_can_change is empty by default: no switch is offered.
    assert not set(types) & set(SWITCHED.values())
    assert ALICE in values_of(form, "muc#roomconfig_roomowners")
    assert not true(value_of(form, PERSISTENT))
    assert true(value_of(form, PUBLIC))
    assert not true(value_of(form, PROTECTED))
    # Only owners see it (bob is a mere participant; carol is not even in the room).
    carol = await connect(server, CAROL)
    for peer in (bob, carol):
        assert (await peer.refused("get", owner_query(), ROOM))[1] == "forbidden"


async def test_switches_owners_may_change_add_their_fields(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "owner_can_change": list(SWITCHED)})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    form = await config_form(alice)
    present = set(fields_of(form))
    assert set(SWITCHED.values()) <= present and set(ALWAYS) <= present
    types = {var: f.get("type") for var, f in fields_of(form).items()}
    for var in ("muc#roomconfig_membersonly", "muc#roomconfig_moderatedroom", "muc#roomconfig_changesubject"):
        assert types[var] == "boolean"
    assert types["x-parley#history_on_join"] == "text-single"
    assert options_of(form, "muc#roomconfig_whois") == {"anyone", "moderators"}
    assert options_of(form, "muc#roomconfig_allowpm") == {"anyone", "participants", "moderators"}
    assert options_of(form, "x-parley#invite_role") == {"visitor", "participant", "moderator"}
    # The current values are the [muc] defaults.
    assert not true(value_of(form, "muc#roomconfig_membersonly"))
    assert not true(value_of(form, "muc#roomconfig_moderatedroom"))
    assert value_of(form, "muc#roomconfig_whois") == "anyone"  # anonymous = false
    assert value_of(form, "muc#roomconfig_allowpm") == "anyone"  # private_message_role = visitor
    assert true(value_of(form, "muc#roomconfig_changesubject"))  # subject_role = participant
    assert value_of(form, "x-parley#invite_role") == "participant"
    assert value_of(form, "x-parley#history_on_join") == "15"
    assert value_of(form, "muc#roomconfig_maxusers") == "50"


async def test_configuration_applies_and_is_announced(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    await configure(alice, {NAME: "The Lounge", DESC: "Tea and talk"})
    for peer in (alice, bob):
        notice = await peer.next(lambda el: local(el) == "message" and el.get("from") == ROOM and 104 in codes(el),
                                 "the configuration change notice (104)")
        assert notice.get("type") == "groupchat"
    form = await config_form(alice)
    assert value_of(form, NAME) == "The Lounge" and value_of(form, DESC) == "Tea and talk"
    # A cancel changes nothing and is accepted.
    await alice.query("set", owner_query(f"<x xmlns='{NS_DATA}' type='cancel'/>"), ROOM)
    assert value_of(await config_form(alice), NAME) == "The Lounge"
    # Bob is no owner: he may not submit either.
    assert await configure_refused(bob, {NAME: "Bob's"}) == "forbidden"
    assert value_of(await config_form(alice), NAME) == "The Lounge"


async def test_locked_switch_is_refused_and_nothing_applies(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    await joined(alice, "Alice")
    before = value_of(await config_form(alice), NAME)
    # members_only is not in owner_can_change: a different value is refused, with the name.
    assert await configure_refused(alice, {NAME: "Changed", "muc#roomconfig_membersonly": "1"}) == "not-allowed"
    assert value_of(await config_form(alice), NAME) == before
    assert "muc_open" in features(await room_info(alice))
    assert await configure_refused(alice, {"muc#roomconfig_moderatedroom": "true"}) == "not-allowed"
    assert "muc_unmoderated" in features(await room_info(alice))
    # The current value of a locked switch is accepted, and the rest of the form applies.
    await configure(alice, {NAME: "Changed", "muc#roomconfig_membersonly": "0"})
    assert value_of(await config_form(alice), NAME) == "Changed"
    assert "muc_open" in features(await room_info(alice))


async def test_room_size_set_by_the_owner(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "owner_can_change": ["room_size"], "max_occupants": 3,
                                 "default_room_size": 3})
    await users(srv, ALICE, BOB, CAROL)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    assert value_of(await config_form(alice), "muc#roomconfig_maxusers") == "3"
    assert await configure_refused(alice, {"muc#roomconfig_maxusers": "4"}) == "not-acceptable"
    await configure(alice, {"muc#roomconfig_maxusers": "2"})
    bob = await connect(srv, BOB)
    carol = await connect(srv, CAROL)
    await joined(bob, "Bob")
    assert await refused_join(carol, "Carol") == "service-unavailable"


# --- 2. persistent rooms -----------------------------------------------------------------------


async def test_persistent_room_survives_the_last_leave_and_a_restart(make_server: ServerFactory,
                                                                     connect: Connect) -> None:
    sections: dict[str, Any] = {"muc": {**MUC, "history_on_join": 2}}
    srv = await make_server(**sections)
    await users(srv, ALICE, BOB, CAROL, DAVE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    await configure(alice, {NAME: "The Lounge", DESC: "Tea and talk", PERSISTENT: "1", PROTECTED: "1",
                            SECRET: "cauldron"})
    info = await room_info(alice)
    assert "muc_persistent" in features(info) and "muc_temporary" not in features(info)
    for jid, aff in ((BOB, "admin"), (CAROL, "member"), (DAVE, "outcast")):
        await affiliate(alice, jid, aff)
    await set_subject(alice, "Plans")
    for i in range(3):
        groupchat(alice, f"line {i}")
    await alice.next(message("line 2", frm=f"{ROOM}/Alice"), "the last line")
    await left(alice, "Alice")
    # Nobody is left, the room stays.
    assert ROOM in await room_items(alice)
    assert "muc_persistent" in features(await room_info(alice))

    srv = await restarted(make_server, srv, **sections)
    alice = await connect(srv, ALICE)
    assert ROOM in await room_items(alice)
    info = await room_info(alice)
    assert "muc_persistent" in features(info)
    roominfo = x_data(info, ROOMINFO)
    assert roominfo is not None
    assert value_of(roominfo, NAME) == "The Lounge"
    assert value_of(roominfo, "muc#roominfo_description") == "Tea and talk"
    assert value_of(roominfo, "muc#roominfo_subject") == "Plans"
    form = await config_form(alice)
    assert true(value_of(form, PERSISTENT)) and value_of(form, NAME) == "The Lounge"
    assert true(value_of(form, PROTECTED)) and "muc_passwordprotected" in features(info)
    assert await affiliated(alice, "owner") == [ALICE]
    assert await affiliated(alice, "admin") == [BOB]
    assert await affiliated(alice, "member") == [CAROL]
    assert await affiliated(alice, "outcast") == [DAVE]

    dave = await connect(srv, DAVE)
    assert error_condition(await refused_join_with(dave, "Dave", "<password>cauldron</password>")) == "forbidden"
    carol = await connect(srv, CAROL)
    assert error_condition(await refused_join_with(carol, "Carol", "")) == "not-authorized"
    bob = await connect(srv, BOB)
    join(bob, "Bob", history="<password>cauldron</password>")
    own = await bob.next(lambda el: presence(f"{ROOM}/Bob")(el) and 110 in codes(el), "Bob's self-presence")
    assert 201 not in codes(own), "the room was not made again"
    assert item(own).get("affiliation") == "admin" and item(own).get("role") == "moderator"
    subject = await bob.next(lambda el: el.findtext("{jabber:client}subject") is not None, "the subject")
    assert subject.findtext("{jabber:client}subject") == "Plans"
    window = await bob.mark()
    history = [el for el in window if local(el) == "message" and el.findtext("{jabber:client}body")]
    # history_on_join = 2: the last two lines, stamped by the room.
    assert [el.findtext("{jabber:client}body") for el in history] == ["line 1", "line 2"]
    for el in history:
        assert el.get("from") == f"{ROOM}/Alice"
        delay = el.find(q(NS_DELAY, "delay"))
        assert delay is not None and delay.get("stamp")


async def test_only_chat_admins_make_rooms_persistent(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={"only_admins_create_persistent": True, "admins": [CAROL]})
    await users(srv, ALICE, CAROL)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    assert await configure_refused(alice, {PERSISTENT: "1"}) == "forbidden"
    assert "muc_temporary" in features(await room_info(alice))
    # A chat administrator owns every room, alice's too.
    carol = await connect(srv, CAROL)
    await configure(carol, {PERSISTENT: "1"})
    assert "muc_persistent" in features(await room_info(alice))


async def test_persistent_room_limit(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "max_persistent_rooms": 1})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    other = f"other@{SERVICE}"
    await joined(alice, "Alice")
    await joined(alice, "Alice", other)
    await configure(alice, {PERSISTENT: "1"})
    assert await configure_refused(alice, {PERSISTENT: "1"}, other) == "resource-constraint"
    assert "muc_temporary" in features(await room_info(alice, other))


async def test_persistent_chat_switched_off(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "persistent": False})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    assert await configure_refused(alice, {PERSISTENT: "1"}) == "not-allowed"
    assert "muc_temporary" in features(await room_info(alice))


async def test_room_made_temporary_again_goes(server: Server, make_server: ServerFactory,
                                              connect: Connect) -> None:
    alice = await connect(server, ALICE)
    await joined(alice, "Alice")
    await configure(alice, {PERSISTENT: "1"})
    await configure(alice, {PERSISTENT: "0"})
    assert "muc_temporary" in features(await room_info(alice))
    await left(alice, "Alice")
    assert ROOM not in await room_items(alice)
    assert await room_gone(alice)
    srv = await restarted(make_server, server, muc=MUC)
    alice = await connect(srv, ALICE)
    assert await room_gone(alice)
    own = await joined(alice, "Alice")
    assert 201 in codes(own), "a new room"


async def test_persistent_room_counts_towards_max_rooms(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "max_rooms": 1})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    await configure(alice, {PERSISTENT: "1"})
    await left(alice, "Alice")
    assert await refused_join(alice, "Alice", f"other@{SERVICE}") == "resource-constraint"


# --- 3. passwords ------------------------------------------------------------------------------


async def test_password_protected_room(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await configure(alice, {PROTECTED: "1", SECRET: "cauldron"})
    info = features(await room_info(alice))
    assert "muc_passwordprotected" in info and "muc_unsecured" not in info
    for extra in ("", "<password>wrong</password>"):
        err = await refused_join_with(bob, "Bob", extra)
        assert error_condition(err) == "not-authorized"
    assert not [el for el in await alice.mark() if el.get("from") == f"{ROOM}/Bob"], "Bob never got in"
    own = await joined(bob, "Bob", history="<password>cauldron</password>")
    assert item(own).get("role") == "participant"
    await alice.next(presence(f"{ROOM}/Bob"), "Bob in the room")


# --- 4. members-only ---------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["setting", "owner"])
async def test_members_only_room(make_server: ServerFactory, connect: Connect, by: str) -> None:
    extra = {"members_only": True} if by == "setting" else {"owner_can_change": ["members_only"]}
    srv = await make_server(muc={**MUC, **extra})
    await users(srv, ALICE, BOB, CAROL)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    carol = await connect(srv, CAROL)
    await joined(alice, "Alice")
    if by == "owner":
        await configure(alice, {"muc#roomconfig_membersonly": "1"})
    assert "muc_membersonly" in features(await room_info(alice))
    assert await refused_join(bob, "Bob") == "registration-required"
    await affiliate(alice, BOB, "member")
    own = await joined(bob, "Bob")
    assert item(own).get("affiliation") == "member"
    await affiliate(alice, CAROL, "outcast")
    assert await refused_join(carol, "Carol") == "forbidden"


# --- 5. destruction ----------------------------------------------------------------------------


async def test_destroy_room(server: Server, make_server: ServerFactory, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    carol = await connect(server, CAROL)
    for peer, nick in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
        await joined(peer, nick)
    await configure(alice, {PERSISTENT: "1"})
    destroy = owner_query(f"<destroy jid='other@{SERVICE}'><reason>moved</reason></destroy>")
    assert (await bob.refused("set", destroy, ROOM))[1] == "forbidden"
    await alice.query("set", destroy, ROOM)
    for peer, nick in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
        gone = await peer.next(lambda el, n=nick: presence(f"{ROOM}/{n}", "unavailable")(el)
                               and user_x(el, "destroy") is not None, f"the destruction, seen by {nick}")
        found = user_x(gone, "destroy")
        assert found is not None
        assert found.get("jid") == f"other@{SERVICE}"
        assert found.findtext(q(NS_USER, "reason")) == "moved"
    assert await room_gone(alice)
    assert ROOM not in await room_items(alice)
    srv = await restarted(make_server, server, muc=MUC)
    alice = await connect(srv, ALICE)
    assert await room_gone(alice)


# --- 6. invitations ----------------------------------------------------------------------------


async def test_mediated_invitation_and_decline(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE, plugins=("xep_0045",))
    bob = await connect(server, BOB, plugins=("xep_0045",))
    await joined(alice, "Alice")
    alice.c.plugin["xep_0045"].invite(ROOM, BOB, "join us")
    got = await invitation(bob)
    invite = user_x(got, "invite")
    assert invite is not None
    assert invite.get("from") == alice.jid
    assert invite.findtext(q(NS_USER, "reason")) == "join us"
    assert user_x(got, "password") is None, "the room has no password"
    bob.c.plugin["xep_0045"].decline(ROOM, ALICE, "busy")
    answer = await alice.next(lambda el: local(el) == "message" and el.get("from") == ROOM
                              and user_x(el, "decline") is not None, "bob's decline")
    decline = user_x(answer, "decline")
    assert decline is not None
    assert JID(decline.get("from", "")).bare == BOB
    assert decline.findtext(q(NS_USER, "reason")) == "busy"


async def test_invitation_carries_the_room_password(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    await configure(alice, {PROTECTED: "1", SECRET: "cauldron"})
    alice.send(invite_xml(BOB))
    got = await invitation(bob)
    assert got.findtext(f"{q(NS_USER, 'x')}/{q(NS_USER, 'password')}") == "cauldron"
    await joined(bob, "Bob", history="<password>cauldron</password>")


async def test_invitation_to_members_only_room_makes_a_member(make_server: ServerFactory,
                                                              connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "members_only": True})
    await users(srv, ALICE, BOB)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    await joined(alice, "Alice")
    alice.send(invite_xml(BOB))
    await invitation(bob)
    assert BOB in await affiliated(alice, "member")
    own = await joined(bob, "Bob")
    assert item(own).get("affiliation") == "member"


async def test_invitation_below_the_invite_role_is_refused(make_server: ServerFactory,
                                                           connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "invite_role": "moderator"})
    await users(srv, ALICE, BOB, CAROL)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    carol = await connect(srv, CAROL)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    bob.send(invite_xml(CAROL, id_="low"))
    assert await refused_message(bob, "low") == "forbidden"
    assert not invitations(await carol.mark())
    # A moderator is at the invite role.
    alice.send(invite_xml(CAROL, id_="high"))
    invite = user_x(await invitation(carol), "invite")
    assert invite is not None and invite.get("from") == alice.jid


async def test_invitation_from_a_non_occupant_is_refused(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    carol = await connect(server, CAROL)
    dave = await connect(server, DAVE)
    await joined(alice, "Alice")
    dave.send(invite_xml(CAROL, id_="outsider"))
    assert await refused_message(dave, "outsider") == "not-acceptable"
    assert not invitations(await carol.mark())


async def test_moderator_invites_in_a_members_only_room(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "members_only": True, "moderator_invites": True})
    await users(srv, ALICE, BOB, CAROL)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    carol = await connect(srv, CAROL)
    await joined(alice, "Alice")
    await affiliate(alice, BOB, "member")
    await joined(bob, "Bob")
    bob.send(invite_xml(CAROL, id_="member"))
    assert await refused_message(bob, "member") == "forbidden"
    assert not invitations(await carol.mark())
    assert CAROL not in await affiliated(alice, "member")
    alice.send(invite_xml(CAROL, id_="moderator"))
    await invitation(carol)
    await joined(carol, "Carol")


async def test_direct_invitation_is_relayed(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE, plugins=("xep_0249",))
    bob = await connect(server, BOB, plugins=("xep_0249",))
    await joined(alice, "Alice")
    waiting = asyncio.ensure_future(wait_event(bob.c, "groupchat_direct_invite"))
    await asyncio.sleep(0)
    alice.c.plugin["xep_0249"].send_invitation(JID(BOB), JID(ROOM), reason="come along")
    msg = await waiting
    assert str(msg["groupchat_invite"]["jid"]) == ROOM
    assert msg["groupchat_invite"]["reason"] == "come along"
    assert str(msg["from"]) == alice.jid
    raw = await bob.next(lambda el: el.find(q(NS_DIRECT_INVITE, "x")) is not None, "the direct invitation")
    assert raw.get("from") == alice.jid


# --- 7. hidden occupants -----------------------------------------------------------------------


async def test_hidden_occupant_sees_all_and_is_not_seen(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "admins": [DAVE]})
    await users(srv, ALICE, BOB, DAVE)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    dave = await connect(srv, DAVE)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    await alice.mark()
    await bob.mark()
    own = await hidden_joined(dave, "Ghost")
    assert 110 in codes(own)
    await dave.next(presence(f"{ROOM}/Alice"), "Alice's presence")
    await dave.next(presence(f"{ROOM}/Bob"), "Bob's presence")
    groupchat(alice, "hello all")
    await dave.next(message("hello all", frm=f"{ROOM}/Alice", type_="groupchat"), "Alice's line")
    for peer in (alice, bob):
        await peer.next(message("hello all"), "Alice's line")
        assert not [el for el in await peer.mark() if el.get("from") == f"{ROOM}/Ghost"], \
            "nobody sees the hidden occupant join"
    # Not in the role lists either.
    assert await with_role(alice, "moderator") == ["Alice"]
    assert await with_role(alice, "participant") == ["Bob"]
    # A hidden occupant does not speak.
    dave.send(f"<message to='{ROOM}' type='groupchat' id='ghost1'><body>boo</body></message>")
    assert await refused_message(dave, "ghost1") == "forbidden"
    # Nor is it seen leaving.
    await left(dave, "Ghost")
    groupchat(alice, "still here")
    for peer in (alice, bob):
        await peer.next(message("still here"), "the next line")
        window = await peer.mark()
        assert not [el for el in window if el.get("from") == f"{ROOM}/Ghost"]
        assert "boo" not in [el.findtext("{jabber:client}body") for el in window]


async def test_hidden_join_needs_chat_or_room_admin(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    carol = await connect(server, CAROL)
    await joined(alice, "Alice")
    await affiliate(alice, BOB, "member")
    for peer, nick in ((bob, "Bob"), (carol, "Carol")):
        err = await refused_join_with(peer, nick, HIDDEN)
        assert error_condition(err) == "forbidden"
    await affiliate(alice, CAROL, "admin")
    await alice.mark()
    await hidden_joined(carol, "Carol")
    groupchat(alice, "anyone?")
    await carol.next(message("anyone?"), "the line, heard by hidden Carol")
    await alice.next(message("anyone?"), "the line")
    assert not [el for el in await alice.mark() if el.get("from") == f"{ROOM}/Carol"]


async def test_hidden_occupants_count_and_have_their_own_limit(make_server: ServerFactory,
                                                               connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "admins": [CAROL, DAVE], "max_hidden": 1, "max_occupants": 3,
                                 "default_room_size": 3})
    await users(srv, ALICE, BOB, CAROL, DAVE, EVE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    dave = await connect(srv, DAVE)
    await hidden_joined(dave, "Ghost")
    carol = await connect(srv, CAROL)
    err = await refused_join_with(carol, "Spook", HIDDEN)
    assert error_condition(err) == "service-unavailable"
    bob = await connect(srv, BOB)
    await joined(bob, "Bob")
    # Alice, Bob and the hidden Ghost: the room of three is full.
    eve = await connect(srv, EVE)
    assert await refused_join(eve, "Eve") == "service-unavailable"


# --- 8. voice requests -------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["setting", "owner"])
async def test_voice_request_granted(make_server: ServerFactory, connect: Connect, by: str) -> None:
    extra = {"moderated": True} if by == "setting" else {"owner_can_change": ["moderated"]}
    srv = await make_server(muc={**MUC, **extra})
    await users(srv, ALICE, BOB)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB, plugins=("xep_0045",))
    await joined(alice, "Alice")
    if by == "owner":
        await configure(alice, {"muc#roomconfig_moderatedroom": "1"})
    assert "muc_moderated" in features(await room_info(alice))
    own = await joined(bob, "Bob")
    assert item(own).get("role") == "visitor"
    bob.send(f"<message to='{ROOM}' type='groupchat' id='mute'><body>may I?</body></message>")
    assert await refused_message(bob, "mute") == "forbidden"

    bob.c.plugin["xep_0045"].request_voice(ROOM, "participant")
    request = await alice.next(lambda el: local(el) == "message" and el.get("from") == ROOM
                               and x_data(el, REQUEST) is not None, "the voice request")
    form = x_data(request, REQUEST)
    assert form is not None and form.get("type") == "form"
    assert value_of(form, "muc#role") == "participant"
    assert JID(value_of(form, "muc#jid") or "").bare == BOB
    assert value_of(form, "muc#roomnick") == "Bob"
    assert fields_of(form)["muc#request_allow"].get("type") == "boolean"
    answer = submit(REQUEST, {"muc#role": "participant", "muc#jid": value_of(form, "muc#jid") or "",
                              "muc#roomnick": "Bob", "muc#request_allow": "true"})
    alice.send(f"<message to='{ROOM}'>{answer}</message>")
    for peer in (alice, bob):
        await peer.next(lambda el: presence(f"{ROOM}/Bob")(el) and item(el).get("role") == "participant",
                        "Bob's voice")
    groupchat(bob, "thank you")
    await alice.next(message("thank you", frm=f"{ROOM}/Bob", type_="groupchat"), "Bob's line")


# --- 9. nickname registration ------------------------------------------------------------------


def register_set(nick: str) -> str:
    return f"<query xmlns='{NS_REGISTER}'>{submit(MUC_REGISTER, {'muc#register_roomnick': nick})}</query>"


async def test_nickname_registration(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    carol = await connect(server, CAROL)
    await joined(alice, "Alice")
    await affiliate(alice, CAROL, "member")
    res = await bob.query("get", f"<query xmlns='{NS_REGISTER}'/>", ROOM)
    form = x_data(res, MUC_REGISTER)
    assert form is not None and form.get("type") == "form"
    assert "muc#register_roomnick" in fields_of(form)
    # Bob has no affiliation and membership is not open.
    assert (await bob.refused("set", register_set("Bobby"), ROOM))[1] == "not-allowed"
    await carol.query("set", register_set("Caz"), ROOM)
    mine = await carol.query("get", f"<query xmlns='{NS_REGISTER}'/>", ROOM)
    query = mine.find(q(NS_REGISTER, "query"))
    assert query is not None and query.find(q(NS_REGISTER, "registered")) is not None
    shown = x_data(query, MUC_REGISTER)
    assert "Caz" in ([query.findtext(q(NS_REGISTER, "username"))]
                     + (values_of(shown, "muc#register_roomnick") if shown is not None else []))
    info = await room_info(carol, node="x-roomuser-item")
    idents = [(i.get("category"), i.get("type"), i.get("name")) for i in info.iter(q(NS_DISCO_INFO, "identity"))]
    assert idents == [("conference", "text", "Caz")]
    # The nick is Carol's now: nobody else registers or joins with it.
    assert (await alice.refused("set", register_set("Caz"), ROOM))[1] == "conflict"
    await alice.query("set", register_set("Boss"), ROOM)
    assert [i.get("name") for i in (await room_info(alice, node="x-roomuser-item")).iter(
        q(NS_DISCO_INFO, "identity"))] == ["Boss"]
    assert await refused_join(bob, "Caz") == "conflict"
    await joined(carol, "Caz")


async def test_registration_with_open_membership(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "open_membership": True})
    await users(srv, ALICE, BOB)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    await joined(alice, "Alice")
    await bob.query("set", register_set("Bobby"), ROOM)
    assert BOB in await affiliated(alice, "member")
    res = await bob.query("get", f"<query xmlns='{NS_REGISTER}'/>", ROOM)
    assert res.find(f"{q(NS_REGISTER, 'query')}/{q(NS_REGISTER, 'registered')}") is not None
    own = await joined(bob, "Bobby")
    assert item(own).get("affiliation") == "member"


# --- 10. room info -----------------------------------------------------------------------------


async def test_room_info_features_and_form(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    carol = await connect(server, CAROL)
    await joined(alice, "Alice")
    await joined(bob, "Bob")
    await set_subject(alice, "Tea time")
    await configure(alice, {NAME: "The Lounge", DESC: "Tea and talk"})
    info = await room_info(carol)
    have = features(info)
    assert {NS_MUC, "muc_public", "muc_temporary", "muc_open", "muc_unmoderated", "muc_nonanonymous",
            "muc_unsecured", NS_OCCUPANT_ID} <= have
    assert not have & {"muc_hidden", "muc_persistent", "muc_membersonly", "muc_moderated", "muc_semianonymous",
                       "muc_passwordprotected", NS_MAM}
    form = x_data(info, ROOMINFO)
    assert form is not None and form.get("type") == "result"
    assert value_of(form, "muc#roominfo_description") == "Tea and talk"
    assert value_of(form, "muc#roominfo_subject") == "Tea time"
    assert value_of(form, "muc#roominfo_occupants") == "2"
    assert value_of(form, NAME) == "The Lounge"
    # Persistent and archived (archive_messages is on by default): MAM on the room.
    await configure(alice, {PERSISTENT: "1"})
    have = features(await room_info(carol))
    assert {"muc_persistent", NS_MAM} <= have and "muc_temporary" not in have


async def test_room_info_follows_the_settings(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "members_only": True, "moderated": True, "anonymous": True,
                                 "archive_messages": False})
    await users(srv, ALICE)
    alice = await connect(srv, ALICE)
    await joined(alice, "Alice")
    await configure(alice, {PERSISTENT: "1", PUBLIC: "0", PROTECTED: "1", SECRET: "s"})
    have = features(await room_info(alice))
    assert {"muc_membersonly", "muc_moderated", "muc_semianonymous", "muc_hidden", "muc_persistent",
            "muc_passwordprotected"} <= have
    assert not have & {"muc_open", "muc_unmoderated", "muc_nonanonymous", "muc_public", "muc_unsecured"}
    assert NS_MAM not in have, "archive_messages = false: no room archive"


# --- 11. room search ---------------------------------------------------------------------------


async def search(peer: Peer, **values: str) -> dict[str, dict[str, str]]:
    """The rooms found, by JID, each with its reported fields."""
    res = await peer.query("set", f"<query xmlns='{NS_SEARCH}'>{submit(NS_SEARCH, values)}</query>", SERVICE)
    form = res.find(f"{q(NS_SEARCH, 'query')}/{q(NS_DATA, 'x')}")
    assert form is not None and form.get("type") == "result"
    reported = form.find(q(NS_DATA, "reported"))
    assert reported is not None
    assert {f.get("var") for f in reported.findall(q(NS_DATA, "field"))} == {
        "jid", "name", "description", "subject", "occupants"}
    out = {}
    for it in form.findall(q(NS_DATA, "item")):
        row = {var: value_of(it, var) or "" for var in fields_of(it)}
        out[row["jid"]] = row
    return out


async def test_room_search_and_listing(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    kitchen, attic = f"kitchen@{SERVICE}", f"attic@{SERVICE}"
    await joined(alice, "Alice")
    await joined(alice, "Alice", kitchen)
    await joined(alice, "Alice", attic)
    await configure(alice, {NAME: "Tea Lounge", DESC: "Talk over a cup"})
    await set_subject(alice, "Green tea today")
    await configure(alice, {NAME: "Kitchen", DESC: "Cooking and TEA recipes"}, kitchen)
    await configure(alice, {NAME: "Tea attic", DESC: "Hidden away", PUBLIC: "0"}, attic)
    listed = await room_items(alice)
    assert {ROOM, kitchen} <= listed and attic not in listed

    res = await alice.query("get", f"<query xmlns='{NS_SEARCH}'/>", SERVICE)
    form = x_data(res, NS_SEARCH)
    assert form is not None and form.get("type") == "form"
    for var in ("name", "description", "subject"):
        assert fields_of(form)[var].get("type") == "text-single"

    assert set(await search(alice, name="tea")) == {ROOM}
    assert set(await search(alice, description="tea")) == {kitchen}
    assert set(await search(alice, subject="GREEN")) == {ROOM}
    assert set(await search(alice, name="tea", description="cooking")) == set()
    assert set(await search(alice, name="attic")) == set()
    row = (await search(alice, name="kitchen"))[kitchen]
    assert row == {"jid": kitchen, "name": "Kitchen", "description": "Cooking and TEA recipes", "subject": "",
                   "occupants": "1"}
    # Nothing filled in: not a search.
    empty = f"<query xmlns='{NS_SEARCH}'>{submit(NS_SEARCH, {'name': ''})}</query>"
    assert (await alice.refused("set", empty, SERVICE))[1] == "bad-request"
    bare = f"<query xmlns='{NS_SEARCH}'>{submit(NS_SEARCH, {})}</query>"
    assert (await alice.refused("set", bare, SERVICE))[1] == "bad-request"


# --- 12. room archive --------------------------------------------------------------------------


async def test_room_archive_with_paging(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    carol = await connect(server, CAROL)
    await joined(alice, "Alice")
    await configure(alice, {PERSISTENT: "1"})
    await joined(bob, "Bob")
    live = []
    for i in range(5):
        groupchat(alice, f"line {i}")
        got = await bob.next(message(f"line {i}", frm=f"{ROOM}/Alice", type_="groupchat"), f"line {i}")
        sid = stanza_ids(got).get(ROOM)
        assert sid, "a live line carries the room's stanza-id"
        live.append(sid)
    assert len(set(live)) == 5

    page = await archive(bob, to=ROOM)
    assert page.bodies == [f"line {i}" for i in range(5)]
    assert page.ids == live
    assert page.complete
    for res, inner in zip(page.results, page.messages, strict=True):
        assert res.get("from") == ROOM
        forwarded = res.find(f"{q(NS_MAM, 'result')}/{q(NS_FORWARD, 'forwarded')}")
        assert forwarded is not None
        delay = forwarded.find(q(NS_DELAY, "delay"))
        assert delay is not None and delay.get("stamp")
        assert inner.get("from") == f"{ROOM}/Alice" and inner.get("type") == "groupchat"

    first = await archive(bob, rsm(max_=2), to=ROOM)
    assert first.bodies == ["line 0", "line 1"] and not first.complete
    assert (first.rsm("first"), first.rsm("last")) == (live[0], live[1])
    second = await archive(bob, rsm(max_=2, after=first.rsm("last")), to=ROOM)
    assert second.bodies == ["line 2", "line 3"] and not second.complete
    third = await archive(bob, rsm(max_=2, after=second.rsm("last")), to=ROOM)
    assert third.bodies == ["line 4"] and third.complete
    latest = await archive(bob, rsm(max_=2, before=""), to=ROOM)
    assert latest.bodies == ["line 3", "line 4"]
    earlier = await archive(bob, rsm(max_=2, before=live[3]), to=ROOM)
    assert earlier.bodies == ["line 1", "line 2"]
    assert (earlier.rsm("first"), earlier.rsm("last")) == (live[1], live[2])
    # An open room's archive is anyone's to read.
    outsider = await archive(carol, to=ROOM)
    assert outsider.ids == live


async def test_members_only_room_archive_refuses_non_members(make_server: ServerFactory,
                                                             connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "members_only": True})
    await users(srv, ALICE, CAROL)
    alice = await connect(srv, ALICE)
    carol = await connect(srv, CAROL)
    await joined(alice, "Alice")
    await configure(alice, {PERSISTENT: "1"})
    groupchat(alice, "members only")
    await alice.next(message("members only"), "the line")
    page = await archive(alice, to=ROOM)
    assert page.bodies == ["members only"]
    query = f"<query xmlns='{NS_MAM}' queryid='q1'/>"
    assert (await carol.refused("set", query, ROOM))[1] == "forbidden"
    assert not [el for el in await carol.mark() if el.find(q(NS_MAM, "result")) is not None]


async def test_room_archive_with_joins_and_leaves(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "archive_joins": True})
    await users(srv, ALICE, BOB)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    await joined(alice, "Alice")
    await configure(alice, {PERSISTENT: "1"})
    await joined(bob, "Bob")
    groupchat(bob, "hi and bye")
    await alice.next(message("hi and bye"), "bob's line")
    await left(bob, "Bob")
    await alice.next(presence(f"{ROOM}/Bob", "unavailable"), "bob leaving")
    page = await archive(alice, to=ROOM)
    kinds = []
    for res in page.results:
        forwarded = res.find(f"{q(NS_MAM, 'result')}/{q(NS_FORWARD, 'forwarded')}")
        assert forwarded is not None
        stanza = [c for c in forwarded if local(c) in ("message", "presence")]
        assert len(stanza) == 1
        el = stanza[0]
        if el.get("from") == f"{ROOM}/Bob":
            kinds.append(local(el) if local(el) == "message" else f"presence:{el.get('type') or 'available'}")
    assert kinds == ["presence:available", "message", "presence:unavailable"]


# --- 13. occupant-id ---------------------------------------------------------------------------


async def test_occupant_id(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    own_alice = await joined(alice, "Alice")
    alice_id = occupant_id(own_alice)
    assert alice_id
    own_bob = await joined(bob, "Bob")
    bob_id = occupant_id(own_bob)
    assert bob_id and bob_id != alice_id
    seen = await alice.next(presence(f"{ROOM}/Bob"), "Bob's arrival")
    assert occupant_id(seen) == bob_id
    assert occupant_id(await bob.next(presence(f"{ROOM}/Alice"), "Alice's presence")) == alice_id
    # A forged id from the client is replaced by the room's.
    bob.send(f"<message to='{ROOM}' type='groupchat'><body>hi</body>"
             f"<occupant-id xmlns='{NS_OCCUPANT_ID}' id='forged'/></message>")
    line = await alice.next(message("hi", frm=f"{ROOM}/Bob"), "Bob's line")
    assert occupant_id(line) == bob_id
    # Same user, same id: across a nick change ...
    bob.send(f"<presence to='{ROOM}/Robert'/>")
    old = await alice.next(presence(f"{ROOM}/Bob", "unavailable"), "Bob's old nick going")
    new = await alice.next(presence(f"{ROOM}/Robert"), "Bob's new nick")
    assert occupant_id(old) == bob_id and occupant_id(new) == bob_id
    # ... and across a rejoin.
    await left(bob, "Robert")
    gone = await alice.next(presence(f"{ROOM}/Robert", "unavailable"), "Bob leaving")
    assert occupant_id(gone) == bob_id
    await joined(bob, "Bobby")
    back = await alice.next(presence(f"{ROOM}/Bobby"), "Bob back")
    assert occupant_id(back) == bob_id
    groupchat(alice, "welcome back")
    assert occupant_id(await bob.next(message("welcome back"), "Alice's line")) == alice_id


# --- 14. self-ping -----------------------------------------------------------------------------


async def test_self_ping(server: Server, connect: Connect) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    await joined(alice, "Alice")
    res = await alice.query("get", f"<ping xmlns='{NS_PING}'/>", f"{ROOM}/Alice")
    assert res.get("type") == "result"
    assert (await bob.refused("get", f"<ping xmlns='{NS_PING}'/>", f"{ROOM}/Bob"))[1] == "not-acceptable"


# --- the per-node system alias -----------------------------------------------------------------


async def room_items_of(peer: Peer, service: str) -> set[str]:
    res = await peer.query("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>", service)
    return {i.get("jid", "") for i in res.iter("{http://jabber.org/protocol/disco#items}item")}


async def test_system_alias_serves_its_own_rooms(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(server={"node": "1", "cluster": "parley"}, muc={**MUC, "system_alias": True})
    await users(srv, ALICE, BOB)
    alias = f"conference-1-parley.{DOMAIN}"
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    items = await alice.query("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>", DOMAIN)
    listed = {i.get("jid") for i in items.iter("{http://jabber.org/protocol/disco#items}item")}
    assert {SERVICE, alias} <= listed
    info = await alice.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", alias)
    assert ("conference", "text") in [(i.get("category"), i.get("type"))
                                      for i in info.iter(q(NS_DISCO_INFO, "identity"))]
    # lounge@ each alias: two rooms.
    there = f"lounge@{alias}"
    assert 201 in codes(await joined(alice, "Alice"))
    assert 201 in codes(await joined(bob, "Bob", there))
    groupchat(alice, "on the main alias")
    groupchat(bob, "on the node alias", there)
    await alice.next(message("on the main alias"), "alice's own line")
    await bob.next(message("on the node alias", frm=f"{there}/Bob"), "bob's own line")
    assert "on the node alias" not in [el.findtext("{jabber:client}body") for el in await alice.mark()]
    assert "on the main alias" not in [el.findtext("{jabber:client}body") for el in await bob.mark()]
    assert there in await room_items_of(alice, alias) and ROOM not in await room_items_of(alice, alias)


# --- 16. the chat node's own database ----------------------------------------------------------


async def test_chat_database_unreachable(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server(muc={**MUC, "database": "postgresql+asyncpg://nobody@127.0.0.1:1/none"})
    await users(srv, ALICE, BOB)
    alice = await connect(srv, ALICE)
    bob = await connect(srv, BOB)
    # The server itself is up.
    alice.send(f"<message to='{BOB}' type='chat'><body>still here</body></message>")
    await bob.next(message("still here"), "a chat message")
    err = await refused_join_with(alice, "Alice", "")
    assert error_condition(err) == "service-unavailable"
    assert "database" in error_text(err).lower()
    for to in (SERVICE, ROOM):
        condition, text = await refusal(alice, "get", f"<query xmlns='{NS_DISCO_INFO}'/>", to)
        assert condition == "service-unavailable" and "database" in text.lower()
    alice.send(f"<message to='{ROOM}' type='groupchat' id='db1'><body>hello?</body></message>")
    err = await alice.next(lambda el: el.get("id") == "db1" and el.get("type") == "error", "the refusal")
    assert error_condition(err) == "service-unavailable" and "database" in error_text(err).lower()


def _pg_halt(pg: PgServer) -> None:
    """Stops the PostgreSQL server by its postmaster PID (fast shutdown), keeping its data."""
    pid = pg.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("PostgreSQL did not stop")


def _pg_resume(pg: PgServer) -> None:
    """Starts the stopped server again on the same data directory and port."""
    pg._check(pg._server_cmd("pg_ctl", "start", "-w", "-t", "60", "-D", str(pg.data), "-l", str(pg.log)),
              "pg_ctl start")
    pg.pid = pg._postmaster_pid()


@pytest.mark.postgres
async def test_chat_database_goes_away_and_comes_back(make_server: ServerFactory, connect: Connect) -> None:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL tests skipped ({SKIP_ENV}=1)")
    # A PostgreSQL of this test's own: the session's shared one is not stopped under others.
    try:
        pg = await asyncio.to_thread(start_server)
    except (PgUnavailable, PgStartFailed) as e:
        pytest.fail(f"could not start a throwaway PostgreSQL server: {e}", pytrace=False)
    try:
        url = "postgresql+asyncpg://" + pg.url.removeprefix("postgresql://")
        sections: dict[str, Any] = {"muc": {**MUC, "database": url, "database_retry": 0.2}}
        srv = await make_server(**sections)
        await users(srv, ALICE, BOB)
        alice = await connect(srv, ALICE)
        bob = await connect(srv, BOB)
        kept, other = ROOM, f"other@{SERVICE}"
        await joined(alice, "Alice", kept)
        await configure(alice, {PERSISTENT: "1"}, kept)
        await joined(bob, "Bob", kept)
        await joined(alice, "Alice", other)

        await asyncio.to_thread(_pg_halt, pg)
        # Rooms that exist keep working without the database ...
        groupchat(alice, "no database", kept)
        await bob.next(message("no database", frm=f"{kept}/Alice"), "a line while the database is down")
        # ... but nothing new is made persistent.
        assert await configure_refused(alice, {PERSISTENT: "1"}, other) == "service-unavailable"
        assert "muc_temporary" in features(await room_info(alice, other))

        await asyncio.to_thread(_pg_resume, pg)

        async def persisted() -> bool:
            return await try_configure(alice, {PERSISTENT: "1"}, other)

        await eventually(persisted, "the room made persistent once the database is back")
        assert "muc_persistent" in features(await room_info(alice, other))
        srv = await restarted(make_server, srv, **sections)
        alice = await connect(srv, ALICE)
        for room in (kept, other):
            assert "muc_persistent" in features(await room_info(alice, room))
            assert room in await room_items(alice)
        # The line said while the database was away was written once it came back.
        await alice.mark()
        await joined(alice, "Alice", kept)
        assert "no database" in [el.findtext("{jabber:client}body") for el in await alice.mark()]
    finally:
        await asyncio.to_thread(pg.stop)
