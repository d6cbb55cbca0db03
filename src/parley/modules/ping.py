"""XMPP ping (XEP-0199): answers pings, and finds dead connections.

A TCP connection whose peer vanished (a phone leaving coverage, a laptop lid closed)
can stay open for hours; its user would look online and messages to it would vanish.
So a client that has been silent for ``c2s.ping_interval`` seconds is pinged, and one
that stays silent for ``ping_timeout`` more is closed with ``connection-timeout``. Any
data from the client counts as a sign of life, not only the ping's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING

from parley.module import Module
from parley.router import Routed
from parley.sessions import Session
from parley.xmpp.stanza import NS_CLIENT, iq_result, make

if TYPE_CHECKING:
    from parley.server import Server

NS_PING = "urn:xmpp:ping"
# A long sweep period would make the timeout that much less precise for no gain.
MAX_SWEEP_PERIOD = 30.0
# Seconds of silence after which a connection gives back its XML parser's memory.
COMPACT_AFTER = 10.0


class Ping(Module):
    name = "ping"
    server_features = (NS_PING,)

    def __init__(self, server: Server):
        super().__init__(server)
        self._ids = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.hooks.add(f"iq-get/host/{NS_PING}", self._pong)
        self.hooks.add(f"iq-get/bare/{NS_PING}", self._pong_own)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _answer(self, ctx: Routed) -> None:
        reply = iq_result(ctx.stanza)
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self.router.route(reply)

    async def _pong(self, ctx: Routed) -> bool:
        await self._answer(ctx)
        return True

    async def _pong_own(self, ctx: Routed) -> bool:
        # The server answers for the account only to its owner; anyone else reaching a
        # bare JID gets the router's service-unavailable.
        if ctx.frm.bare != ctx.to:
            return False
        await self._answer(ctx)
        return True

    # --- dead-connection detection ---------------------------------------------------------------

    @property
    def period(self) -> float:
        c2s = self.config.c2s
        return min(min(c2s.ping_interval, c2s.ping_timeout) / 2, MAX_SWEEP_PERIOD)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                self.sweep()
            except Exception:
                # One bad session must not end detection for all the others.
                self.log.exception("ping sweep failed")

    def sweep(self) -> None:
        c2s = self.config.c2s
        now = asyncio.get_running_loop().time()
        for session in self.router.sessions.all():
            last_rx: float | None = getattr(session, "last_rx", None)
            pending: dict[str, float] | None = getattr(session, "pending_pings", None)
            if last_rx is None or pending is None:
                # A session kind that watches its own liveness (or cannot be pinged).
                continue
            silent = now - last_rx
            if silent >= COMPACT_AFTER:
                parser = getattr(session, "parser", None)
                if parser is not None:
                    parser.compact()
            if silent >= c2s.ping_interval + c2s.ping_timeout:
                self.log.info("closing %s: silent for %.1f s", session.jid, silent)
                session.close("connection-timeout", f"no answer from the client for {silent:.0f} s")
                continue
            # Answers that will never matter are forgotten, so the map cannot grow.
            for ping_id, sent in list(pending.items()):
                if now - sent > c2s.ping_interval + c2s.ping_timeout:
                    del pending[ping_id]
            if silent >= c2s.ping_interval and not any(sent >= last_rx for sent in pending.values()):
                self._send_ping(session, pending, now)

    def _send_ping(self, session: Session, pending: dict[str, float], now: float) -> None:
        ping_id = f"parley-ping-{next(self._ids)}"
        iq = make(NS_CLIENT, "iq", {"type": "get", "id": ping_id, "to": str(session.jid),
                                    "from": session.jid.domain},
                  make(NS_PING, "ping"))
        pending[ping_id] = now
        session.send(iq)


module_class = Ping
