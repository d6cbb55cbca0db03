"""Stream management (XEP-0198): acks, resumption after a broken connection, and what
happens to unacknowledged messages when a session finally ends (never lost, never twice)."""

from __future__ import annotations

import asyncio
import re

from parley.server import Server
from parley.xmpp.jid import JID
from tests.clients import Raw, close_all, slix
from tests.conftest import ServerFactory, add_user

SM = "urn:xmpp:sm:3"


async def _enabled(server: Server, user: str = "bob", resource: str = "phone") -> tuple[Raw, str]:
    raw = await Raw.open(server)
    features = await raw.authenticate(user, "pw")
    assert b"urn:xmpp:sm:3" in features
    raw.send(f"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}"
             "</resource></bind></iq>")
    await raw.read_until(b"</iq>")
    raw.send("<presence/>")
    raw.send(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = await raw.read_until_any(b"<enabled", b"<failed")
    enabled += await raw.read_until(b"/>")
    m = re.search(rb"id='([^']+)'", enabled)
    assert m, enabled
    return raw, m.group(1).decode()


async def _users(server: Server) -> None:
    await add_user(server, "alice@example.test", "pw")
    await add_user(server, "bob@example.test", "pw")


async def test_acks_are_answered_and_counted(server: Server) -> None:
    await _users(server)
    raw, _ = await _enabled(server)
    raw.send("<iq type='get' id='p1' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    raw.send(f"<r xmlns='{SM}'/>")
    out = await raw.read_until(b"h='")
    out += await raw.read_until(b"/>")
    assert b"<a xmlns" in out and b"h='1'" in out  # the ping: the presence came before enable
    await raw.close()


async def test_resume_replays_what_was_not_acknowledged(server: Server) -> None:
    await _users(server)
    raw, sm_id = await _enabled(server)
    alice = await slix(server, "alice@example.test", "pw")
    alice.send_message(mto="bob@example.test/phone", mbody="while you travel", mtype="chat")
    await raw.read_until(b"while you travel")
    raw.abort()  # the network breaks before bob acknowledges
    again = await Raw.open(server)
    await again.authenticate("bob", "pw")
    again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    out = await again.read_until(b"while you travel")
    assert b"<resumed" in out
    # The resumed session is the same one: bob's full JID still reaches it.
    alice.send_message(mto="bob@example.test/phone", mbody="second", mtype="chat")
    await again.read_until(b"second")
    await again.close()
    await close_all(alice)


async def test_acknowledged_messages_are_not_replayed(server: Server) -> None:
    await _users(server)
    raw, sm_id = await _enabled(server)
    alice = await slix(server, "alice@example.test", "pw")
    alice.send_message(mto="bob@example.test/phone", mbody="first", mtype="chat")
    await raw.read_until(b"first")
    raw.send(f"<enable xmlns='{SM}'/>")  # refused: already enabled
    assert b"unexpected-request" in await raw.read_until(b"</failed>")
    raw.abort()
    again = await Raw.open(server)
    await again.authenticate("bob", "pw")
    # Bob's client handled everything it was sent: it acknowledges the server's count.
    state = server.modules["sm"].states[sm_id]  # type: ignore[attr-defined]
    again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='{state.h_out}'/>")
    out = await again.read_until(b"/>")
    assert b"<resumed" in out
    again.send("<iq type='get' id='p2' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    out = await again.read_until(b"p2")
    assert b"first" not in out
    await again.close()
    await close_all(alice)


async def test_resume_with_unknown_or_foreign_id_fails(server: Server) -> None:
    await _users(server)
    _, sm_id = await _enabled(server, "bob")
    other = await Raw.open(server)
    await other.authenticate("alice", "pw")
    other.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    assert b"item-not-found" in await other.read_until(b"</failed>")
    other.send(f"<resume xmlns='{SM}' previd='no-such-id' h='0'/>")
    assert b"item-not-found" in await other.read_until(b"</failed>")
    await other.close()


async def test_ack_of_more_than_was_sent_is_a_stream_error(server: Server) -> None:
    await _users(server)
    raw, _ = await _enabled(server)
    raw.send(f"<a xmlns='{SM}' h='999'/>")
    assert b"undefined-condition" in await raw.read_all()


async def test_expired_session_sends_unacked_messages_to_offline_storage(make_server: ServerFactory) -> None:
    server = await make_server(stream_management={"resume_timeout": 1})
    await _users(server)
    raw, _ = await _enabled(server)
    alice = await slix(server, "alice@example.test", "pw")
    alice.send_message(mto="bob@example.test", mbody="do not lose me", mtype="chat")
    await raw.read_until(b"do not lose me")
    raw.abort()
    for _ in range(100):  # bounded wait for the resumption window to close
        if await server.repos.offline.count("bob@example.test"):
            break
        await asyncio.sleep(0.05)
    assert not server.router.sessions.of("bob@example.test")
    assert await server.repos.offline.count("bob@example.test") == 1
    bob = await slix(server, "bob@example.test", "pw")
    got = asyncio.get_running_loop().create_future()
    bob.add_event_handler("message", lambda m: got.done() or got.set_result(m))
    bob.send_presence()
    msg = await asyncio.wait_for(got, 10)
    assert msg["body"] == "do not lose me"
    await close_all(alice, bob)


async def test_unacked_message_goes_to_another_resource_when_session_ends(server: Server) -> None:
    await _users(server)
    raw, _ = await _enabled(server)  # not resumed: the server closes it below
    desk = await slix(server, "bob@example.test/desk", "pw")
    alice = await slix(server, "alice@example.test", "pw")
    alice.send_message(mto="bob@example.test/phone", mbody="to the phone", mtype="chat")
    await raw.read_until(b"to the phone")
    got = asyncio.get_running_loop().create_future()
    desk.add_event_handler("message", lambda m: got.done() or got.set_result(m))
    # The server ends the phone's stream (not resumable): its unacked message moves.
    session = server.router.sessions.get(JID.parse("bob@example.test/phone"))
    assert session is not None
    session.close("policy-violation", "test")
    msg = await asyncio.wait_for(got, 10)
    assert msg["body"] == "to the phone"
    await close_all(alice, desk)


async def test_slixmpp_stream_management_acks_everything(server: Server) -> None:
    await _users(server)
    bob = await slix(server, "bob@example.test/sm", "pw", plugins=("xep_0198",))
    alice = await slix(server, "alice@example.test", "pw")
    got: list[str] = []
    done = asyncio.get_running_loop().create_future()

    def on_message(m: object) -> None:
        got.append(str(m["body"]))  # type: ignore[index]
        if len(got) == 20 and not done.done():
            done.set_result(True)

    bob.add_event_handler("message", on_message)
    for i in range(20):
        alice.send_message(mto="bob@example.test/sm", mbody=f"m{i}", mtype="chat")
    await asyncio.wait_for(done, 10)
    assert got == [f"m{i}" for i in range(20)]
    session = server.router.sessions.get(JID.parse("bob@example.test/sm"))
    assert session is not None and session.sm is not None  # type: ignore[attr-defined]
    for _ in range(100):  # slixmpp answers the server's ack request
        if not session.sm.unacked:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    assert not session.sm.unacked  # type: ignore[attr-defined]
    await close_all(alice, bob)
