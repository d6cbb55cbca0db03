"""The whole server on PostgreSQL: sign-in, offline delivery and a roster that outlives a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import slixmpp

from parley.server import Server
from tests.clients import TIMEOUT, close_all, slix
from tests.conftest import DOMAIN, ServerFactory, add_user
from tests.pg import PgServer

pytestmark = pytest.mark.postgres

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Waits for state the server reaches asynchronously; the timeout only stops a hang."""
    async def go() -> None:
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(go(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def close(*clients: slixmpp.ClientXMPP) -> None:
    # One at a time: close_all given several clients can sit out its safety timeout.
    for c in clients:
        if c.transport is not None:
            await close_all(c)


async def test_offline_message_and_roster_survive_on_postgres(
    make_server: ServerFactory, pg_server: PgServer
) -> None:
    url = pg_server.fresh_database(f"e2e_{uuid.uuid4().hex[:12]}")
    srv: Server = await make_server(storage_url=url)
    assert srv.db.url == url
    await add_user(srv, ALICE)
    await add_user(srv, BOB)

    alice = await slix(srv, ALICE)
    bob = await slix(srv, BOB)
    assert alice.boundjid.bare == ALICE
    assert bob.boundjid.bare == BOB
    await close(bob)

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
    await close(alice, bob)
    await srv.stop()

    again = await make_server(storage_url=url)
    alice = await slix(again, ALICE)
    try:
        assert BOB in alice.client_roster
        item = alice.client_roster[BOB]
        assert item["name"] == "Bob Ø"
        assert list(item["groups"]) == ["Collègues"]
    finally:
        await close(alice)
