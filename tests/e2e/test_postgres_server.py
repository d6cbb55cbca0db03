"""The whole server on PostgreSQL: sign-in, offline delivery and a roster that outlives a restart."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from parley.server import Server
from tests.clients import TIMEOUT, close_each, eventually, slix
from tests.conftest import ServerFactory, users
from tests.peer import ALICE, BOB, DOMAIN
from tests.pg import PgServer

pytestmark = pytest.mark.postgres


async def test_offline_message_and_roster_survive_on_postgres(
    make_server: ServerFactory, pg_server: PgServer
) -> None:
    url = pg_server.fresh_database(f"e2e_{uuid.uuid4().hex[:12]}")
    srv: Server = await make_server(storage_url=url)
    assert srv.db.url == url
    await users(srv, ALICE, BOB)

    alice = await slix(srv, ALICE)
    bob = await slix(srv, BOB)
    assert alice.boundjid.bare == ALICE
    assert bob.boundjid.bare == BOB
    await close_each(bob)

    async def bob_offline() -> bool:
        return srv.router.sessions.resources(BOB) == 0

    await eventually(bob_offline, "bob's session is gone")

    alice.send_message(mto=BOB, mbody="while you were out ✓", mtype="chat")

    async def stored() -> bool:
        return await srv.repos.offline.count(BOB) == 1

    await eventually(stored, "the message is in bob's offline store")

    # Without initial presence nothing is flushed yet, so the handler is in place first.
    bob = await slix(srv, BOB, plugins=["xep_0203"], presence=False)
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_message(msg: Any) -> None:
        if not got.done():
            got.set_result(msg)

    bob.add_event_handler("message", on_message)
    bob.send_presence()
    msg = await asyncio.wait_for(got, TIMEOUT)
    assert msg["body"] == "while you were out ✓"
    assert msg["from"].bare == ALICE
    assert msg["delay"]["stamp"] is not None
    assert str(msg["delay"]["from"]) == DOMAIN

    async def flushed() -> bool:
        return await srv.repos.offline.count(BOB) == 0

    await eventually(flushed, "delivered messages leave the offline store")

    await alice.update_roster(BOB, name="Bob Ø", groups=["Collègues"])
    await close_each(alice, bob)
    await srv.stop()

    again = await make_server(storage_url=url)
    alice = await slix(again, ALICE)
    try:
        assert BOB in alice.client_roster
        item = alice.client_roster[BOB]
        assert item["name"] == "Bob Ø"
        assert list(item["groups"]) == ["Collègues"]
    finally:
        await close_each(alice)
