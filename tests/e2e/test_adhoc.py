"""Ad-hoc commands (XEP-0050) and the service administration commands (XEP-0133) end to
end: listing, the execute / complete / cancel flow, every admin command with its effects
on accounts and live sessions, and refusals for non-admins and bad input."""

from __future__ import annotations

from xml.etree.ElementTree import Element, fromstring
from xml.sax.saxutils import escape, quoteattr

import pytest
from slixmpp.exceptions import IqError

from parley.server import Server
from tests.clients import TIMEOUT, AuthFailed, close_all, eventually, slix
from tests.conftest import ServerFactory, add_user, users
from tests.peer import ALICE, BOB, CAROL, DOMAIN, Connect, Peer, local, q

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_ADMIN = "http://jabber.org/protocol/admin"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ADMIN = ALICE
DAVE = f"dave@{DOMAIN}"

ALL_COMMANDS = {f"{NS_ADMIN}#{n}" for n in (
    "add-user", "delete-user", "disable-user", "reenable-user", "change-user-password",
    "get-online-users-list", "get-online-users-num", "announce")}


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    srv = await make_server(server={"admins": [ADMIN]})
    await users(srv, ALICE, BOB, CAROL)
    return srv


# --- helpers -------------------------------------------------------------------------------------


def form_xml(values: dict[str, str | list[str]]) -> str:
    fields = [f"<field var='FORM_TYPE' type='hidden'><value>{NS_ADMIN}</value></field>"]
    for var, vs in values.items():
        vals = "".join(f"<value>{escape(v)}</value>" for v in ([vs] if isinstance(vs, str) else vs))
        fields.append(f"<field var={quoteattr(var)}>{vals}</field>")
    return f"<x xmlns='{NS_DATA}' type='submit'>{''.join(fields)}</x>"


def command_xml(node: str, action: str | None = None, sid: str | None = None,
                form: dict[str, str | list[str]] | None = None) -> str:
    attrs = f"node={quoteattr(node)}"
    if action:
        attrs += f" action={quoteattr(action)}"
    if sid:
        attrs += f" sessionid={quoteattr(sid)}"
    return f"<command xmlns='{NS_COMMANDS}' {attrs}>{form_xml(form) if form is not None else ''}</command>"


def command_of(iq: Element) -> Element:
    cmd = iq.find(q(NS_COMMANDS, "command"))
    assert cmd is not None
    return cmd


async def execute(peer: Peer, name: str, action: str | None = None, sid: str | None = None,
                  form: dict[str, str | list[str]] | None = None) -> Element:
    return command_of(await peer.query("set", command_xml(f"{NS_ADMIN}#{name}", action, sid, form), to=DOMAIN))


async def run(peer: Peer, name: str, form: dict[str, str | list[str]]) -> Element:
    """Execute, then complete with the form: the two steps a client goes through."""
    first = await execute(peer, name)
    assert first.get("status") == "executing"
    done = await execute(peer, name, "complete", first.get("sessionid"), form)
    assert done.get("status") == "completed", done
    return done


async def refusal(peer: Peer, name: str, form: dict[str, str | list[str]]) -> tuple[str, str]:
    """(condition, text) of the error that ends a command whose form is refused."""
    first = await execute(peer, name)
    iq = peer.c.make_iq(itype="set", ito=DOMAIN)
    iq.append(fromstring(command_xml(f"{NS_ADMIN}#{name}", "complete", first.get("sessionid"), form)))
    with pytest.raises(IqError) as e:
        await iq.send(timeout=TIMEOUT)
    return str(e.value.iq["error"]["condition"]), str(e.value.iq["error"]["text"])


def fields_of(cmd: Element) -> dict[str, Element]:
    x = cmd.find(q(NS_DATA, "x"))
    assert x is not None
    return {f.get("var", ""): f for f in x.findall(q(NS_DATA, "field"))}


def values_of(cmd: Element, var: str) -> list[str]:
    return [v.text or "" for v in fields_of(cmd)[var].findall(q(NS_DATA, "value"))]


def note_of(cmd: Element) -> str:
    return cmd.findtext(q(NS_COMMANDS, "note")) or ""


async def can_sign_in(server: Server, jid: str, password: str = "secret") -> bool:
    try:
        c = await slix(server, jid, password, presence=False, get_roster=False)
    except AuthFailed:
        return False
    await close_all(c)
    return True


async def stream_closed(peer: Peer) -> None:
    async def gone() -> bool:
        return peer.c.transport is None

    await eventually(gone, f"{peer.jid}'s stream was closed")


# --- discovery -----------------------------------------------------------------------------------


async def test_commands_are_listed_for_admins_only(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    bob = await connect(server, f"{BOB}/desk")
    info = await admin.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=DOMAIN)
    assert NS_COMMANDS in {f.get("var") for f in info.iter(q(NS_DISCO_INFO, "feature"))}

    listing = f"<query xmlns='{NS_DISCO_ITEMS}' node='{NS_COMMANDS}'/>"
    items = (await admin.query("get", listing, to=DOMAIN)).iter(q(NS_DISCO_ITEMS, "item"))
    nodes = {it.get("node"): it for it in items}
    assert set(nodes) == ALL_COMMANDS
    assert all(it.get("jid") == DOMAIN and it.get("name") for it in nodes.values())
    assert not list((await bob.query("get", listing, to=DOMAIN)).iter(q(NS_DISCO_ITEMS, "item")))

    node_info = await admin.query("get", f"<query xmlns='{NS_DISCO_INFO}' node='{NS_ADMIN}#add-user'/>", to=DOMAIN)
    ident = node_info.find(f"{q(NS_DISCO_INFO, 'query')}/{q(NS_DISCO_INFO, 'identity')}")
    assert ident is not None and (ident.get("category"), ident.get("type")) == ("automation", "command-node")
    assert await bob.refused("get", f"<query xmlns='{NS_DISCO_INFO}' node='{NS_ADMIN}#add-user'/>",
                             to=DOMAIN) == ("auth", "forbidden")


async def test_slixmpp_lists_and_runs_commands(server: Server) -> None:
    c = await slix(server, f"{ADMIN}/bot", plugins=("xep_0004", "xep_0050", "xep_0133"), presence=False,
                   get_roster=False)
    try:
        items = await c.plugin["xep_0133"].get_commands(jid=DOMAIN)
        assert {node for _, node, _ in items["disco_items"]["items"]} == ALL_COMMANDS
        res = await c.plugin["xep_0050"].send_command(DOMAIN, f"{NS_ADMIN}#get-online-users-num")
        assert res["command"]["status"] == "completed"
        assert res["command"]["form"]["values"]["onlineusersnum"] == "1"
    finally:
        await close_all(c)


# --- the framework ---------------------------------------------------------------------------------


async def test_non_admin_is_forbidden(server: Server, connect: Connect) -> None:
    bob = await connect(server, f"{BOB}/desk")
    for name in ("add-user", "get-online-users-num", "announce"):
        assert await bob.refused("set", command_xml(f"{NS_ADMIN}#{name}"), to=DOMAIN) == ("auth", "forbidden")


async def test_execute_shows_a_form_and_cancel_ends_the_session(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    first = await execute(admin, "add-user")
    sid = first.get("sessionid")
    assert sid and first.get("status") == "executing"
    actions = first.find(q(NS_COMMANDS, "actions"))
    assert actions is not None and actions.get("execute") == "complete"
    assert [local(a) for a in actions] == ["complete"]
    fields = fields_of(first)
    assert values_of(first, "FORM_TYPE") == [NS_ADMIN]
    assert fields["accountjid"].get("type") == "jid-single"
    assert fields["password"].get("type") == "text-private"
    assert fields["accountjid"].find(q(NS_DATA, "required")) is not None

    cancelled = await execute(admin, "add-user", "cancel", sid)
    assert cancelled.get("status") == "canceled"
    # The session is gone: completing it now is refused.
    payload = command_xml(f"{NS_ADMIN}#add-user", "complete", sid,
                          {"accountjid": DAVE, "password": "x", "password-verify": "x"})
    assert await admin.refused("set", payload, to=DOMAIN) == ("modify", "bad-request")
    assert await server.repos.users.get(DAVE) is None


async def test_unknown_command_session_and_action(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    assert await admin.refused("set", command_xml(f"{NS_ADMIN}#no-such"), to=DOMAIN) == ("cancel", "item-not-found")
    assert await admin.refused("set", command_xml(f"{NS_ADMIN}#add-user", "complete", "made-up"),
                               to=DOMAIN) == ("modify", "bad-request")
    first = await execute(admin, "add-user")
    assert await admin.refused("set", command_xml(f"{NS_ADMIN}#add-user", "prev", first.get("sessionid")),
                               to=DOMAIN) == ("modify", "bad-request")
    # A session belongs to the resource that started it.
    other = await connect(server, f"{ADMIN}/phone")
    assert await other.refused("set", command_xml(f"{NS_ADMIN}#add-user", "complete", first.get("sessionid")),
                               to=DOMAIN) == ("modify", "bad-request")


# --- the admin commands ------------------------------------------------------------------------------


async def test_add_user(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    done = await run(admin, "add-user", {"accountjid": DAVE, "password": "pw1", "password-verify": "pw1"})
    assert DAVE in note_of(done)
    assert await can_sign_in(server, DAVE, "pw1")

    assert (await refusal(admin, "add-user", {"accountjid": DAVE, "password": "pw", "password-verify": "pw"}))[0] \
        == "conflict"
    cond, text = await refusal(admin, "add-user", {"accountjid": f"erin@{DOMAIN}", "password": "a",
                                                   "password-verify": "b"})
    assert (cond, text) == ("bad-request", "the passwords do not match")
    cond, text = await refusal(admin, "add-user", {"accountjid": "erin@not-hosted.test", "password": "a",
                                                   "password-verify": "a"})
    assert cond == "bad-request" and "not a hosted domain" in text
    cond, text = await refusal(admin, "add-user", {"password": "a", "password-verify": "a"})
    assert cond == "bad-request" and "accountjid" in text
    assert await server.repos.users.get(f"erin@{DOMAIN}") is None


async def test_delete_user_ends_their_sessions(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    done = await run(admin, "delete-user", {"accountjids": [CAROL]})
    assert CAROL in note_of(done)
    assert await server.repos.users.get(CAROL) is None
    await stream_closed(carol)
    assert not await can_sign_in(server, CAROL)

    cond, _ = await refusal(admin, "delete-user", {"accountjids": [CAROL]})
    assert cond == "item-not-found"
    cond, text = await refusal(admin, "delete-user", {"accountjids": ["not a jid@@"]})
    assert cond == "bad-request" and text


async def test_disable_and_reenable_user(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    bob = await connect(server, f"{BOB}/desk")
    await run(admin, "disable-user", {"accountjids": [BOB, CAROL]})
    record = await server.repos.users.get(BOB)
    assert record is not None and not record.enabled
    await stream_closed(bob)
    assert not await can_sign_in(server, BOB)
    assert not await can_sign_in(server, CAROL)

    await run(admin, "reenable-user", {"accountjids": [BOB]})
    assert await can_sign_in(server, BOB)
    assert not await can_sign_in(server, CAROL)
    cond, _ = await refusal(admin, "reenable-user", {"accountjids": [f"nobody@{DOMAIN}"]})
    assert cond == "item-not-found"


async def test_change_user_password(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    await run(admin, "change-user-password", {"accountjid": BOB, "password": "new-one"})
    assert await can_sign_in(server, BOB, "new-one")
    assert not await can_sign_in(server, BOB, "secret")
    cond, _ = await refusal(admin, "change-user-password", {"accountjid": f"nobody@{DOMAIN}", "password": "x"})
    assert cond == "item-not-found"
    cond, text = await refusal(admin, "change-user-password", {"accountjid": BOB, "password": ""})
    assert cond == "bad-request" and "password" in text


async def test_online_users_number_and_list(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    await connect(server, f"{BOB}/desk")
    await connect(server, f"{BOB}/phone")

    num = await execute(admin, "get-online-users-num")
    # No input needed: the answer comes at once.
    assert num.get("status") == "completed"
    assert values_of(num, "onlineusersnum") == ["2"]

    every = await run(admin, "get-online-users-list", {"max_items": "none"})
    assert values_of(every, "onlineuserjids") == [ALICE, BOB]
    assert fields_of(every)["onlineuserjids"].get("type") == "jid-multi"
    one = await run(admin, "get-online-users-list", {"max_items": "1"})
    assert values_of(one, "onlineuserjids") == [ALICE]
    cond, text = await refusal(admin, "get-online-users-list", {"max_items": "lots"})
    assert cond == "bad-request" and "max_items" in text


async def test_announce_reaches_every_online_user(server: Server, connect: Connect) -> None:
    admin = await connect(server, f"{ADMIN}/desk")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/phone")
    done = await run(admin, "announce", {"subject": "Maintenance", "announcement": ["Down at 6pm.", "Sorry."]})
    assert "3 session" in note_of(done)
    for peer in (admin, bob, carol):
        msg = await peer.next(lambda el: local(el) == "message" and el.get("type") == "headline", "the announcement")
        assert msg.get("from") == DOMAIN
        assert msg.findtext("{jabber:client}subject") == "Maintenance"
        assert msg.findtext("{jabber:client}body") == "Down at 6pm.\nSorry."

    cond, text = await refusal(admin, "announce", {"subject": "nothing"})
    assert cond == "bad-request" and "announcement" in text


async def test_without_configured_admins_nobody_is_admin(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server()
    await add_user(srv, ALICE)
    alice = await connect(srv, f"{ALICE}/desk")
    assert await alice.refused("set", command_xml(f"{NS_ADMIN}#get-online-users-num"), to=DOMAIN) == \
        ("auth", "forbidden")
