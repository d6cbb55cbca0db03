"""The key IM and presence flows with aioxmpp, a second client library written independently
of slixmpp: sign in over STARTTLS, roster get/set/remove, a subscription asked and approved
with auto-approve off, presence seen, and messages both ways (also with a slixmpp peer)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aioxmpp
import aioxmpp.callbacks
import aioxmpp.connector
import aioxmpp.dispatcher
import slixmpp

from parley.server import Server
from parley.storage.repos import RosterItem
from tests.clients import TIMEOUT, close_all, slix
from tests.conftest import ServerFactory, add_user, users
from tests.peer import ALICE, BOB, CAROL


def jid(s: str) -> aioxmpp.JID:
    return aioxmpp.JID.fromstr(s)


class AioPeer:
    """An aioxmpp client with the roster, presence and message services a chat client uses."""

    def __init__(self, server: Server, address: str) -> None:
        self.client = aioxmpp.PresenceManagedClient(
            jid(address),
            aioxmpp.make_security_layer("secret", no_verify=True),
            override_peer=[("127.0.0.1", server.ports["c2s"], aioxmpp.connector.STARTTLSConnector())],
        )
        self.roster: aioxmpp.RosterClient = self.client.summon(aioxmpp.RosterClient)
        self.presence: aioxmpp.PresenceClient = self.client.summon(aioxmpp.PresenceClient)
        self.messages: asyncio.Queue[aioxmpp.Message] = asyncio.Queue()
        dispatcher = self.client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher)
        dispatcher.register_callback(aioxmpp.MessageType.CHAT, None, self.messages.put_nowait)

    async def send_chat(self, to: str, body: str) -> None:
        msg = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=jid(to))
        msg.body[None] = body
        await self.client.send(msg)

    async def next_chat(self) -> aioxmpp.Message:
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)


@asynccontextmanager
async def signed_in(server: Server, address: str, status: str | None = None) -> AsyncIterator[AioPeer]:
    """Connected with an available presence (and its status), until the block ends."""
    peer = AioPeer(server, address)
    # Setting an available presence starts the client; connected() then waits for the stream.
    peer.client.set_presence(aioxmpp.PresenceState(True), status or {})
    async with peer.client.connected(presence=aioxmpp.PresenceState(False),
                                     timeout=dt.timedelta(seconds=TIMEOUT)):
        yield peer


def expect(signal: aioxmpp.callbacks.Signal, check: Callable[..., bool] = lambda *a: True) -> asyncio.Future[Any]:
    """A future for the next emission of an aioxmpp signal whose arguments pass `check`."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def handler(*args: Any) -> bool:
        if not fut.done() and check(*args):
            fut.set_result(args)
        return fut.done()  # a true return value disconnects the handler

    signal.connect(handler)
    return fut


def expect_slix(client: slixmpp.ClientXMPP, event: str, check: Callable[[Any], bool]) -> asyncio.Future[Any]:
    """A future for the next slixmpp event that passes `check`, listening from now on."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def handler(arg: Any) -> None:
        if not fut.done() and check(arg):
            fut.set_result(arg)

    client.add_event_handler(event, handler)
    fut.add_done_callback(lambda _: client.del_event_handler(event, handler))
    return fut


async def arrived(fut: asyncio.Future[Any]) -> Any:
    return await asyncio.wait_for(fut, TIMEOUT)


def status_of(stanza: aioxmpp.Presence) -> str | None:
    return stanza.status.any() if stanza.status else None


async def test_sign_in_and_roster(server: Server) -> None:
    await add_user(server, ALICE)
    await server.repos.roster.save(ALICE, [RosterItem(BOB, name="Bob", groups=["Team"])])
    async with signed_in(server, ALICE) as alice:
        assert alice.client.local_jid.bare() == jid(ALICE)
        assert alice.client.local_jid.resource
        item = alice.roster.items[jid(BOB)]
        assert item.name == "Bob" and item.groups == {"Team"} and item.subscription == "none"
        assert alice.roster.version, "the server sent a roster version"

        added = expect(alice.roster.on_entry_added, lambda it: it.jid == jid(CAROL))
        await alice.roster.set_entry(jid(CAROL), name="Carol", add_to_groups={"Work"}, timeout=TIMEOUT)
        (carol,) = await arrived(added)
        assert carol.name == "Carol" and carol.groups == {"Work"}

        renamed = expect(alice.roster.on_entry_name_changed, lambda it: it.jid == jid(BOB))
        await alice.roster.set_entry(jid(BOB), name="Robert", timeout=TIMEOUT)
        await arrived(renamed)
        assert alice.roster.items[jid(BOB)].name == "Robert"

        removed = expect(alice.roster.on_entry_removed, lambda it: it.jid == jid(CAROL))
        await alice.roster.remove_entry(jid(CAROL), timeout=TIMEOUT)
        await arrived(removed)
        assert set(alice.roster.items) == {jid(BOB)}

    # The changes are the server's, not the client's: a new session sees them.
    async with signed_in(server, ALICE) as again:
        assert set(again.roster.items) == {jid(BOB)}
        assert again.roster.items[jid(BOB)].name == "Robert"


async def test_subscription_approval_presence_and_messages(make_server: ServerFactory) -> None:
    server = await make_server(authorization={"auto_approve": False})
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE, "alice here") as alice, signed_in(server, BOB, "bob here") as bob:
        request = expect(bob.roster.on_subscribe)
        approval = expect(alice.roster.on_subscribed)
        bob_online = expect(alice.presence.on_available, lambda full, st: full.bare() == jid(BOB))
        to_item = expect(alice.roster.on_entry_subscription_state_changed,
                         lambda it: it.jid == jid(BOB) and it.subscription == "to")
        alice.roster.subscribe(jid(BOB))

        (stanza,) = await arrived(request)
        assert stanza.from_ == jid(ALICE)
        from_item = expect(bob.roster.on_entry_added, lambda it: it.jid == jid(ALICE))
        bob.roster.approve(jid(ALICE))

        (answer,) = await arrived(approval)
        assert answer.from_ == jid(BOB)
        await arrived(to_item)
        (item,) = await arrived(from_item)
        assert item.subscription == "from"
        full, seen = await arrived(bob_online)
        assert full == bob.client.local_jid and status_of(seen) == "bob here"

        # Bob changes his status: alice sees it.
        changed = expect(alice.presence.on_changed, lambda full, st: status_of(st) == "in a meeting")
        bob.client.set_presence(aioxmpp.PresenceState(True, aioxmpp.PresenceShow.DND), "in a meeting")
        _, st = await arrived(changed)
        assert st.show == aioxmpp.PresenceShow.DND

        # Messages both ways.
        await alice.send_chat(BOB, "hello bob")
        got = await bob.next_chat()
        assert got.body.any() == "hello bob" and got.from_ == alice.client.local_jid
        await bob.send_chat(ALICE, "hello alice")
        got = await alice.next_chat()
        assert got.body.any() == "hello alice" and got.from_ == bob.client.local_jid

        # One way only: bob has no subscription to alice, so her changes do not reach him.
        # Her message after the change arrives after anything the change would have sent.
        alice.client.set_presence(aioxmpp.PresenceState(True, aioxmpp.PresenceShow.AWAY), "away")
        await alice.send_chat(BOB, "after my change")
        assert (await bob.next_chat()).body.any() == "after my change"
        assert not bob.presence.get_peer_resources(jid(ALICE))

        gone = expect(alice.presence.on_bare_unavailable, lambda st: st.from_.bare() == jid(BOB))
        bob.client.stop()
        await arrived(gone)


async def test_aioxmpp_and_slixmpp_talk_to_each_other(server: Server) -> None:
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE, "on aioxmpp") as alice:
        bob: slixmpp.ClientXMPP = await slix(server, f"{BOB}/slix")
        try:
            watcher = expect(alice.roster.on_entry_added, lambda it: it.jid == jid(BOB))
            bob_online = expect(alice.presence.on_available, lambda full, st: full == jid(f"{BOB}/slix"))
            alice_seen = expect_slix(bob, "presence_available",
                                     lambda p: str(p["from"]) == str(alice.client.local_jid))
            # With auto-approve on (the default) both requests are approved by the server.
            bob.send_presence(pto=ALICE, ptype="subscribe")
            (item,) = await arrived(watcher)
            assert item.subscription == "from"
            pres = await arrived(alice_seen)
            assert pres["status"] == "on aioxmpp"

            alice.roster.subscribe(jid(BOB))
            await arrived(bob_online)

            got_it = expect_slix(bob, "message", lambda m: m["body"] == "from aioxmpp")
            await alice.send_chat(f"{BOB}/slix", "from aioxmpp")
            msg = await arrived(got_it)
            assert str(msg["from"]) == str(alice.client.local_jid)
            bob.send_message(mto=ALICE, mbody="from slixmpp", mtype="chat")
            got = await alice.next_chat()
            assert got.body.any() == "from slixmpp" and got.from_ == jid(f"{BOB}/slix")
        finally:
            await close_all(bob)
