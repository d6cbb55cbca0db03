"""Last activity (XEP-0012): the server's uptime, and when a user was last online.

A user's last logout, with the status text of their last unavailable presence, is
stored when their last session closes; it is shown only to the user and to contacts
the user shares presence with (subscription 'from' or 'both'), since it says as much
as presence does.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING

from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.xmpp.stanza import NS_CLIENT, iq_result, make, q

if TYPE_CHECKING:
    from parley.server import Server

NS_LAST = "jabber:iq:last"
# Above every presence handler: this one only watches and lets the others act.
OBSERVER_PRIORITY = 100


class LastActivity(Module):
    name = "last"
    server_features = (NS_LAST,)
    account_features = (NS_LAST,)

    def __init__(self, server: Server):
        super().__init__(server)
        self.started_at = time.monotonic()
        # Status text of each session's latest unavailable presence; weak so that
        # sessions that end without a 'session-closed' signal (replaced ones) leave nothing.
        self._status: weakref.WeakKeyDictionary[Session, str | None] = weakref.WeakKeyDictionary()
        self._writes: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.hooks.add(f"iq-get/host/{NS_LAST}", self._uptime)
        self.hooks.add(f"iq-get/bare/{NS_LAST}", self._last)
        self.hooks.add("presence/broadcast", self._watch_presence, OBSERVER_PRIORITY)
        self.server.signals.connect("session-closed", self._session_closed)

    async def stop(self) -> None:
        # Logouts of the sessions the shutdown closed are written before the database goes.
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    # --- recording -------------------------------------------------------------------------

    async def _watch_presence(self, ctx: Routed) -> bool:
        if ctx.type == "unavailable" and ctx.origin is not None:
            self._status[ctx.origin] = ctx.stanza.findtext(q(NS_CLIENT, "status"))
        return False

    async def _session_closed(self, session: Session) -> None:
        status = self._status.pop(session, None)
        if self.router.sessions.resources(session.bare) != 0:
            return
        write = asyncio.ensure_future(self.repos.docs.set_last(session.bare, time.time(), status))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        # Shielded: a cancelled close must not lose the record half-way.
        await asyncio.shield(write)

    # --- queries ---------------------------------------------------------------------------------

    async def _reply(self, ctx: Routed, seconds: int, status: str | None = None) -> None:
        query = make(NS_LAST, "query", {"seconds": str(max(0, seconds))}, text=status or None)
        reply = iq_result(ctx.stanza, query)
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self.router.route(reply)

    async def _uptime(self, ctx: Routed) -> bool:
        await self._reply(ctx, int(time.monotonic() - self.started_at))
        return True

    async def _last(self, ctx: Routed) -> bool:
        owner = str(ctx.to)
        requester = str(ctx.frm.bare)
        online = self.router.sessions.resources(owner) > 0
        if not online and await self.repos.users.get(owner) is None:
            return self.refuse(ctx, "service-unavailable")
        if requester != owner:
            _, items = await self.repos.roster.load(owner)
            item = items.get(requester)
            if item is None or not item.has_from:
                return self.refuse(ctx, "forbidden", "you are not subscribed to this user's presence")
        if online:
            await self._reply(ctx, 0)
            return True
        last = await self.repos.docs.get_last(owner)
        if last is None:
            return self.refuse(ctx, "item-not-found", "this user has not been online yet")
        at, status = last
        await self._reply(ctx, int(time.time() - at), status)
        return True


module_class = LastActivity
