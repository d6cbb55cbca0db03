"""The key group chat flows with aioxmpp's MUC client (aioxmpp.muc.MUCClient), a second
client library written independently of slixmpp: joining with a nickname and its conflicts,
a password-protected room with the right and the wrong password, groupchat messages and the
subject reaching every occupant, kick and ban with the reason seen by the removed client,
the owner configuring the room with get_room_config/set_room_config, member list changes,
mediated and direct invitations, and leaving."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aioxmpp
import aioxmpp.callbacks
import aioxmpp.connector
import aioxmpp.errors
import aioxmpp.im
import aioxmpp.muc
import pytest

from parley.server import Server
from tests.clients import TIMEOUT
from tests.conftest import ServerFactory, users
from tests.e2e.test_im_aioxmpp import arrived, jid
from tests.e2e.test_muc import ROOM
from tests.peer import ALICE, BOB, CAROL

ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
# Owners may make rooms persistent (the contract's default, spelled out).
MUC: dict[str, Any] = {"only_admins_create_persistent": False}


class MucPeer:
    """An aioxmpp client with the MUC and disco services a group chat client uses."""

    def __init__(self, server: Server, address: str) -> None:
        self.client = aioxmpp.PresenceManagedClient(
            jid(address),
            aioxmpp.make_security_layer("secret", no_verify=True),
            override_peer=[("127.0.0.1", server.ports["c2s"], aioxmpp.connector.STARTTLSConnector())],
        )
        self.muc: aioxmpp.MUCClient = self.client.summon(aioxmpp.MUCClient)
        self.disco: aioxmpp.DiscoClient = self.client.summon(aioxmpp.DiscoClient)

    @property
    def jid(self) -> aioxmpp.JID:
        return self.client.local_jid

    async def join(self, nick: str, room: str = ROOM, password: str | None = None) -> aioxmpp.muc.Room:
        """Joined (the future resolved) or the join's error raised."""
        muc_room, fut = self.muc.join(jid(room), nick, password=password, autorejoin=False)
        await asyncio.wait_for(fut, TIMEOUT)
        return muc_room

    async def refused(self, nick: str, room: str = ROOM, password: str | None = None) -> aioxmpp.ErrorCondition:
        with pytest.raises(aioxmpp.errors.XMPPError) as err:
            await self.join(nick, room, password)
        return err.value.condition


@asynccontextmanager
async def signed_in(server: Server, address: str) -> AsyncIterator[MucPeer]:
    peer = MucPeer(server, address)
    peer.client.set_presence(aioxmpp.PresenceState(True), {})
    async with peer.client.connected(presence=aioxmpp.PresenceState(False),
                                     timeout=dt.timedelta(seconds=TIMEOUT)):
        yield peer


def expect(signal: aioxmpp.callbacks.Signal,
           check: Callable[..., bool] = lambda *a, **kw: True) -> asyncio.Future[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The next emission of the signal that passes `check`: (args, kwargs). Room signals carry
    keyword arguments (muc_leave_mode, muc_reason, ...), hence not test_im_aioxmpp's expect."""
    fut: asyncio.Future[tuple[tuple[Any, ...], dict[str, Any]]] = asyncio.get_running_loop().create_future()

    def handler(*args: Any, **kwargs: Any) -> bool:
        if not fut.done() and check(*args, **kwargs):
            fut.set_result((args, kwargs))
        return fut.done()  # a true return value disconnects the handler

    signal.connect(handler)
    return fut


def member(room: aioxmpp.muc.Room, nick: str) -> aioxmpp.muc.Occupant:
    found = [m for m in room.members if m.nick == nick]
    assert found, f"{nick} is not in {[m.nick for m in room.members]}"
    return found[0]


def groupchat(text: str) -> aioxmpp.Message:
    msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
    msg.body[None] = text
    return msg


async def config(peer: MucPeer, room: str = ROOM) -> aioxmpp.muc.ConfigurationForm:
    return aioxmpp.muc.ConfigurationForm.from_xso(await peer.muc.get_room_config(jid(room)))


async def test_join_with_a_nickname_and_conflicts(server: Server) -> None:
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        room = await alice.join("Alice")
        assert room.muc_joined and room.me.nick == "Alice"
        assert room.me.affiliation == "owner" and room.me.role == "moderator"
        assert await bob.refused("Alice") == aioxmpp.ErrorCondition.CONFLICT
        arrival = expect(room.on_join, lambda m, **kw: m.nick == "Bob")
        bobs = await bob.join("Bob")
        (seen,), _ = await arrived(arrival)
        assert seen.direct_jid == bob.jid.bare() and seen.role == "participant"
        assert sorted(m.nick for m in bobs.members) == ["Alice", "Bob"]
        assert bobs.me.nick == "Bob"


async def test_groupchat_and_subject_reach_every_occupant(server: Server) -> None:
    await users(server, ALICE, BOB, CAROL)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob, \
            signed_in(server, CAROL) as carol:
        rooms = {"Alice": await alice.join("Alice"), "Bob": await bob.join("Bob"), "Carol": await carol.join("Carol")}
        lines = {nick: expect(r.on_message, lambda msg, m, src, **kw: msg.body.any() == "hello room")
                 for nick, r in rooms.items()}
        rooms["Alice"].send_message(groupchat("hello room"))
        for nick in ("Bob", "Carol"):
            (msg, sender, _src), _ = await arrived(lines[nick])
            assert sender.nick == "Alice" and msg.from_ == jid(f"{ROOM}/Alice")
        topics = {nick: expect(r.on_topic_changed) for nick, r in rooms.items()}
        await rooms["Bob"].set_topic({None: "Plans"})
        for nick, r in rooms.items():
            (_m, topic), kw = await arrived(topics[nick])
            assert topic.any() == "Plans" and kw.get("muc_nick") == "Bob"
            assert r.muc_subject.any() == "Plans"


async def test_kick_and_ban_with_the_reason_seen_by_the_removed_client(server: Server) -> None:
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        room = await alice.join("Alice")
        bobs = await bob.join("Bob")
        out = expect(bobs.on_exit)
        await room.kick(member(room, "Bob"), "be nice")
        _, kw = await arrived(out)
        assert kw["muc_leave_mode"] == aioxmpp.muc.LeaveMode.KICKED and kw["muc_reason"] == "be nice"
        assert not bobs.muc_joined
        # A kick is no ban: Bob is back, then banned.
        bobs = await bob.join("Bob")
        out = expect(bobs.on_exit)
        await room.ban(member(room, "Bob"), "again")
        _, kw = await arrived(out)
        assert kw["muc_leave_mode"] == aioxmpp.muc.LeaveMode.BANNED and kw["muc_reason"] == "again"
        assert await bob.refused("Bobby") == aioxmpp.ErrorCondition.FORBIDDEN
        assert await alice.muc.get_affiliated(jid(ROOM), "outcast") == [jid(BOB)]


async def test_owner_configures_the_room(make_server: ServerFactory) -> None:
    server = await make_server(muc=MUC)
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        await alice.join("Alice")
        await bob.join("Bob")
        form = await config(alice)
        assert form.persistentroom.value is False
        assert jid(ALICE) in form.roomowners.value
        form.roomname.value = "The Lounge"
        form.roomdesc.value = "Tea and talk"
        form.persistentroom.value = True
        await alice.muc.set_room_config(jid(ROOM), form.render_reply())
        again = await config(alice)
        assert again.roomname.value == "The Lounge" and again.roomdesc.value == "Tea and talk"
        assert again.persistentroom.value is True
        info = await alice.disco.query_info(jid(ROOM), require_fresh=True)
        assert "muc_persistent" in info.features and "muc_temporary" not in info.features
        roominfo = [f for f in info.exts if f.get_form_type() == ROOMINFO]
        assert roominfo, "disco#info carries the muc#roominfo form"
        values = {f.var: list(f.values) for f in roominfo[0].fields}
        assert values["muc#roomconfig_roomname"] == ["The Lounge"]
        assert values["muc#roominfo_description"] == ["Tea and talk"]
        # Bob is an occupant, not an owner.
        with pytest.raises(aioxmpp.errors.XMPPError) as err:
            await bob.muc.get_room_config(jid(ROOM))
        assert err.value.condition == aioxmpp.ErrorCondition.FORBIDDEN


async def test_password_protected_room(make_server: ServerFactory) -> None:
    server = await make_server(muc=MUC)
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        room = await alice.join("Alice")
        form = await config(alice)
        form.passwordprotectedroom.value = True
        form.roomsecret.value = "s3cret"
        await alice.muc.set_room_config(jid(ROOM), form.render_reply())
        info = await alice.disco.query_info(jid(ROOM), require_fresh=True)
        assert "muc_passwordprotected" in info.features
        assert await bob.refused("Bob") == aioxmpp.ErrorCondition.NOT_AUTHORIZED
        assert await bob.refused("Bob", password="wrong") == aioxmpp.ErrorCondition.NOT_AUTHORIZED
        arrival = expect(room.on_join, lambda m, **kw: m.nick == "Bob")
        bobs = await bob.join("Bob", password="s3cret")
        await arrived(arrival)
        assert bobs.muc_joined


async def test_member_list_changes(make_server: ServerFactory) -> None:
    server = await make_server(muc={**MUC, "members_only": True})
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        room = await alice.join("Alice")
        assert await bob.refused("Bob") == aioxmpp.ErrorCondition.REGISTRATION_REQUIRED
        await alice.muc.set_affiliation(jid(ROOM), jid(BOB), "member", reason="welcome")
        assert await alice.muc.get_affiliated(jid(ROOM), "member") == [jid(BOB)]
        bobs = await bob.join("Bob")
        assert bobs.me.affiliation == "member"
        # Membership revoked: Bob is removed from the members-only room.
        out = expect(bobs.on_exit)
        gone = expect(room.on_leave, lambda m, **kw: m.nick == "Bob")
        await alice.muc.set_affiliation(jid(ROOM), jid(BOB), "none")
        _, kw = await arrived(out)
        assert kw["muc_leave_mode"] == aioxmpp.muc.LeaveMode.AFFILIATION_CHANGE
        await arrived(gone)
        assert await alice.muc.get_affiliated(jid(ROOM), "member") == []
        assert await bob.refused("Bob") == aioxmpp.ErrorCondition.REGISTRATION_REQUIRED


async def test_mediated_invitation(server: Server) -> None:
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        room = await alice.join("Alice")
        invited = expect(bob.muc.on_muc_invitation)
        await room.invite(jid(BOB), "join us", mode=aioxmpp.im.InviteMode.MEDIATED)
        (stanza, address, inviter, mode), kw = await arrived(invited)
        assert mode == aioxmpp.im.InviteMode.MEDIATED
        assert stanza.from_ == jid(ROOM) and address == jid(ROOM)
        assert inviter == alice.jid
        assert kw["reason"] == "join us"
        arrival = expect(room.on_join, lambda m, **kw: m.nick == "Bob")
        await bob.join("Bob", str(address))
        await arrived(arrival)


async def test_direct_invitation(server: Server) -> None:
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        room = await alice.join("Alice")
        invited = expect(bob.muc.on_muc_invitation)
        await room.invite(jid(BOB), "come along", mode=aioxmpp.im.InviteMode.DIRECT)
        (_stanza, address, inviter, mode), kw = await arrived(invited)
        assert mode == aioxmpp.im.InviteMode.DIRECT
        assert address == jid(ROOM) and inviter == alice.jid
        assert kw["reason"] == "come along"


async def test_leaving_the_room(server: Server) -> None:
    await users(server, ALICE, BOB)
    async with signed_in(server, ALICE) as alice, signed_in(server, BOB) as bob:
        room = await alice.join("Alice")
        bobs = await bob.join("Bob")
        gone = expect(room.on_leave, lambda m, **kw: m.nick == "Bob")
        await asyncio.wait_for(bobs.leave(), TIMEOUT)
        (who,), kw = await arrived(gone)
        assert who.direct_jid == bob.jid.bare()
        assert kw["muc_leave_mode"] == aioxmpp.muc.LeaveMode.NORMAL
        assert not bobs.muc_joined
        assert [m.nick for m in room.members] == ["Alice"]
