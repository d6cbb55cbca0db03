"""In-band registration (XEP-0077) end to end: creating an account before signing in (raw
stream and slixmpp), its refusals, registration switched off, and password change and
account cancellation by a signed-in user."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from parley.server import Server
from tests.clients import TIMEOUT, AuthFailed, Raw, close_all, eventually, slix
from tests.conftest import ServerFactory, users
from tests.peer import ALICE, BOB, DOMAIN

NS_REGISTER = "jabber:iq:register"
FEATURE = b"<register xmlns='http://jabber.org/features/iq-register'/>"
ENABLED = {"registration": {"enabled": True}}


async def can_sign_in(server: Server, jid: str, password: str = "secret") -> bool:
    try:
        c = await slix(server, jid, password, presence=False, get_roster=False)
    except AuthFailed:
        return False
    await close_all(c)
    return True


async def ask(raw: Raw, iq_id: str, payload: str, type_: str = "set") -> bytes:
    """A pre-auth iq and its answer (a result without payload closes right after the id)."""
    raw.send(f"<iq type='{type_}' id='{iq_id}'>{payload}</iq>")
    return await raw.read_until_any(b"</iq>", f"id='{iq_id}'/>".encode())


def register_xml(username: str, password: str) -> str:
    return f"<query xmlns='{NS_REGISTER}'><username>{username}</username><password>{password}</password></query>"


# --- before authentication ---------------------------------------------------------------------


async def test_register_on_a_raw_stream(make_server: ServerFactory) -> None:
    server = await make_server(**ENABLED)
    raw = await Raw.open(server)
    features = await raw.start()
    assert FEATURE in features

    form = await ask(raw, "r1", f"<query xmlns='{NS_REGISTER}'/>", "get")
    assert b"type='result'" in form
    assert b"<username/>" in form and b"<password/>" in form
    assert b"jabber:x:data" in form and b"text-private" in form

    done = await ask(raw, "r2", register_xml("dave", "pw-dave"))
    assert b"type='result'" in done
    assert await server.repos.users.get(f"dave@{DOMAIN}") is not None

    # One account per connection.
    again = await ask(raw, "r3", register_xml("erin", "pw"))
    assert b"not-allowed" in again
    await raw.close()
    assert await can_sign_in(server, f"dave@{DOMAIN}", "pw-dave")


async def test_register_with_a_data_form(make_server: ServerFactory) -> None:
    server = await make_server(**ENABLED)
    raw = await Raw.open(server)
    await raw.start()
    form = ("<x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE'><value>{NS_REGISTER}</value></field>"
            "<field var='username'><value>frank</value></field>"
            "<field var='password'><value>pw-frank</value></field></x>")
    assert b"type='result'" in await ask(raw, "f1", f"<query xmlns='{NS_REGISTER}'>{form}</query>")
    await raw.close()
    assert await can_sign_in(server, f"frank@{DOMAIN}", "pw-frank")


async def test_conflict_and_bad_usernames(make_server: ServerFactory) -> None:
    server = await make_server(**ENABLED)
    await users(server, ALICE)
    raw = await Raw.open(server)
    await raw.start()
    taken = await ask(raw, "c1", register_xml("alice", "other"))
    assert b"<conflict" in taken
    bad = await ask(raw, "c2", register_xml("no spaces please", "pw"))
    assert b"<not-acceptable" in bad
    empty = await ask(raw, "c3", register_xml("gina", ""))
    assert b"<not-acceptable" in empty
    cancel = await ask(raw, "c4", f"<query xmlns='{NS_REGISTER}'><remove/></query>")
    assert b"<not-authorized" in cancel
    await raw.close()
    assert await can_sign_in(server, ALICE)  # the password did not change
    assert [u.jid for u in await server.repos.users.list()] == [ALICE]


async def test_slixmpp_registers_then_signs_in(make_server: ServerFactory) -> None:
    server = await make_server(**ENABLED)
    jid, password = f"henry@{DOMAIN}", "pw-henry"
    c = slixmpp.ClientXMPP(jid, password)
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0004")
    c.register_plugin("xep_0077")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.ssl_context = ctx
    started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    registered: list[str] = []

    async def on_register(_: Any) -> None:
        iq = c.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = c.boundjid.user
        iq["register"]["password"] = password
        await iq.send(timeout=TIMEOUT)
        registered.append(c.boundjid.user)

    c.add_event_handler("register", on_register)
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.add_event_handler("failed_all_auth", lambda _: started.done() or started.set_exception(AuthFailed()))
    c.connect(host="127.0.0.1", port=server.ports["c2s"])
    try:
        await asyncio.wait_for(started, TIMEOUT)
    finally:
        await close_all(c)
    assert registered == ["henry"]


async def test_disabled_registration_is_refused(server: Server) -> None:
    raw = await Raw.open(server)
    features = await raw.start()
    assert FEATURE not in features
    for iq_id, type_, payload in (("d1", "get", f"<query xmlns='{NS_REGISTER}'/>"),
                                  ("d2", "set", register_xml("ivan", "pw"))):
        answer = await ask(raw, iq_id, payload, type_)
        assert b"type='error'" in answer and b"<service-unavailable" in answer
    # The stream is still usable: the client may sign in.
    await raw.close()
    assert await server.repos.users.get(f"ivan@{DOMAIN}") is None


# --- signed in ---------------------------------------------------------------------------------------


async def test_password_change_works_with_registration_off(server: Server) -> None:
    await users(server, ALICE, BOB)
    c = await slix(server, ALICE, plugins=("xep_0077",), presence=False, get_roster=False)
    try:
        res = await c.plugin["xep_0077"].change_password("new-secret", jid=DOMAIN, timeout=TIMEOUT)
        assert res["type"] == "result"
        # Someone else's password is not yours to change.
        iq = c.Iq()
        iq["type"] = "set"
        iq["to"] = DOMAIN
        iq["register"]["username"] = "bob"
        iq["register"]["password"] = "hijacked"
        with pytest.raises(IqError) as e:
            await iq.send(timeout=TIMEOUT)
        assert e.value.iq["error"]["condition"] == "not-allowed"
        info = await c.plugin["xep_0077"].get_registration(jid=DOMAIN, timeout=TIMEOUT)
        assert info["register"]["registered"] and info["register"]["username"] == "alice"
    finally:
        await close_all(c)
    assert await can_sign_in(server, ALICE, "new-secret")
    assert not await can_sign_in(server, ALICE, "secret")
    assert await can_sign_in(server, BOB, "secret")


async def test_cancel_only_when_registration_is_enabled(make_server: ServerFactory) -> None:
    off = await make_server()
    await users(off, ALICE)
    c = await slix(off, ALICE, plugins=("xep_0077",), presence=False, get_roster=False)
    try:
        with pytest.raises(IqError) as e:
            await c.plugin["xep_0077"].cancel_registration(jid=DOMAIN, timeout=TIMEOUT)
        assert e.value.iq["error"]["condition"] == "not-allowed"
    finally:
        await close_all(c)
    assert await off.repos.users.get(ALICE) is not None


async def test_cancel_removes_the_account_and_ends_its_streams(make_server: ServerFactory) -> None:
    server = await make_server(**ENABLED)
    await users(server, BOB)
    c = await slix(server, f"{BOB}/desk", plugins=("xep_0077",), presence=False, get_roster=False)
    other = await slix(server, f"{BOB}/phone", presence=False, get_roster=False)
    try:
        res = await c.plugin["xep_0077"].cancel_registration(jid=DOMAIN, timeout=TIMEOUT)
        assert res["type"] == "result"

        async def both_gone() -> bool:
            return c.transport is None and other.transport is None

        await eventually(both_gone, "bob's streams ended")
    finally:
        await close_all(c, other)
    assert await server.repos.users.get(BOB) is None
    assert not await can_sign_in(server, BOB)
