"""Stream management (XEP-0198): acknowledgements and resumption.

A stanza the client has not acknowledged is kept. When the connection breaks, a resumable
session waits `stream_management.resume_timeout` seconds for the client to come back on a
new connection (any network: the session is found by its id and the user's JID) and then
gets everything it missed. When a session finally ends, its unacknowledged messages are
routed again to the account's bare JID, so another resource or offline storage gets them:
never lost; and since a resumed session replays only what was not acknowledged, never
delivered twice.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, SubElement

from parley.module import Module
from parley.modules.offline import NS_DELAY, utc_stamp
from parley.xmpp.stanza import NS_CLIENT, local_name, q

if TYPE_CHECKING:
    from parley.c2s import C2SConnection

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MOD = 2**32
# Seconds after the first unacknowledged stanza before the server asks for an ack.
ACK_DELAY = 1.0
# What belongs to a connection rather than to the session it carries.
CONNECTION_ATTRS = frozenset({
    "server", "cfg", "direct_tls", "tls", "transport", "parser", "queue", "worker", "paused",
    "closed", "stream_open", "stream_domain", "lang", "authenticated", "username", "auth_attempts",
    "sasl", "sasl_mech", "sasl_user", "bound", "peer", "last_rx", "auth_timer", "pending_pings",
    "csi", "sm",
})


class SMState:
    def __init__(self, module: StreamManagement, conn: C2SConnection, resumable: bool):
        self.module = module
        self.conn = conn
        self.resumable = resumable
        self.id = secrets.token_urlsafe(18)
        self.h_in = 0
        self.h_out = 0
        self.unacked: deque[tuple[int, bytes, Element | None]] = deque()
        self.hibernating = False
        self.timer: asyncio.TimerHandle | None = None
        self.ack_timer: asyncio.TimerHandle | None = None

    # --- called by the connection --------------------------------------------------------

    def received(self) -> None:
        self.h_in = (self.h_in + 1) % MOD

    def sent(self, data: bytes, stanza: Element | None) -> None:
        self.h_out = (self.h_out + 1) % MOD
        self.unacked.append((self.h_out, data, stanza))
        if len(self.unacked) > self.module.config.stream_management.max_unacked:
            if not self.hibernating and not self.conn.closed:
                self.conn.close("policy-violation", "too many unacknowledged stanzas")
            return
        if self.ack_timer is None and not self.hibernating:
            self.ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._request)

    def hibernate(self) -> bool:
        """The connection broke: keep the session for resumption when allowed."""
        timeout = self.module.config.stream_management.resume_timeout
        if not self.resumable or timeout <= 0:
            return False
        self.hibernating = True
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        self.timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        self.module.log.info("%s waits %ss for resumption", self.conn.jid, timeout)
        return True

    # --- acks -------------------------------------------------------------------------------

    def _request(self) -> None:
        self.ack_timer = None
        if self.unacked and not self.hibernating and not self.conn.closed and self.conn.transport:
            self.conn.transport.write(f"<r xmlns='{NS_SM}'/>".encode())

    def acked(self, h: int) -> bool:
        """Drop what the client has handled; False when it claims more than was sent."""
        if (self.h_out - h) % MOD > len(self.unacked) and h != self.h_out:
            return False
        while self.unacked and (h - self.unacked[0][0]) % MOD < MOD // 2:
            self.unacked.popleft()
        return True

    def end_now(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self._expire()

    def _expire(self) -> None:
        self.timer = None
        conn = self.conn
        self.module.log.info("%s was not resumed in time", conn.jid)
        self.resumable = False
        if conn.bound:
            conn.bound = False
            asyncio.get_running_loop().create_task(self.module.server.session_closed(conn))


class StreamManagement(Module):
    name = "sm"

    def __init__(self, server: Any):
        super().__init__(server)
        self.states: dict[str, SMState] = {}

    async def start(self) -> None:
        self.server.stream_features.append(Element(q(NS_SM, "sm")))
        for tag in ("enable", "resume", "r", "a"):
            self.server.signals_stream.add(q(NS_SM, tag), self._nonza)
        self.server.signals.connect("session-closed", self._session_closed)

    async def stop(self) -> None:
        for st in self.states.values():
            if st.timer is not None:
                st.timer.cancel()
            if st.ack_timer is not None:
                st.ack_timer.cancel()

    def _write(self, conn: C2SConnection, xml: str) -> None:
        if conn.transport is not None and not conn.closed:
            conn.transport.write(xml.encode())

    def _failed(self, conn: C2SConnection, condition: str, h: int | None = None) -> None:
        h_attr = f" h='{h}'" if h is not None else ""
        self._write(conn, f"<failed xmlns='{NS_SM}'{h_attr}><{condition} xmlns='{NS_STANZAS}'/></failed>")

    async def _nonza(self, el: Element, conn: C2SConnection) -> bool:
        kind = local_name(el.tag)
        st: SMState | None = conn.sm
        if kind == "r":
            if st is None:
                self._failed(conn, "unexpected-request")
            else:
                h = st.h_in
                # Acknowledged means kept: write-behind stores commit first.
                for barrier in self.server.durability:
                    await barrier()
                self._write(conn, f"<a xmlns='{NS_SM}' h='{h}'/>")
            return True
        if kind == "a":
            if st is not None:
                try:
                    h = int(el.get("h", "")) % MOD
                except ValueError:
                    conn.close("invalid-xml", "h must be a number")
                    return True
                if not st.acked(h):
                    conn.close("undefined-condition", f"acknowledged {h} stanzas, but only {st.h_out} were sent")
            return True
        if kind == "enable":
            if st is not None or not conn.bound:
                self._failed(conn, "unexpected-request")
                return True
            resumable = el.get("resume") in ("true", "1")
            st = SMState(self, conn, resumable)
            conn.sm = st
            attrs = f" id='{st.id}'"
            if resumable:
                self.states[st.id] = st
                attrs += f" resume='true' max='{self.config.stream_management.resume_timeout}'"
            self._write(conn, f"<enabled xmlns='{NS_SM}'{attrs}/>")
            return True
        if kind == "resume":
            await self._resume(el, conn)
            return True
        return False

    async def _resume(self, el: Element, conn: C2SConnection) -> None:
        if conn.bound or not conn.authenticated:
            self._failed(conn, "unexpected-request")
            return
        old_state = self.states.get(el.get("previd", ""))
        if old_state is None or old_state.conn.bare != conn.bare or not old_state.resumable:
            self._failed(conn, "item-not-found")
            return
        try:
            h = int(el.get("h", "")) % MOD
        except ValueError:
            self._failed(conn, "bad-request")
            return
        old = old_state.conn
        if not old_state.acked(h):
            self._failed(conn, "undefined-condition", old_state.h_in)
            return
        if old_state.timer is not None:
            old_state.timer.cancel()
            old_state.timer = None
        for key, value in vars(old).items():
            if key not in CONNECTION_ATTRS:
                setattr(conn, key, value)
        old.sm = None
        old.bound = False
        self.router.sessions.replace(old, conn)
        if not old.closed:
            # The client has moved on: the old connection ends without a word.
            old.closed = True
            if old.transport is not None:
                old.transport.close()
        old_state.conn = conn
        old_state.hibernating = False
        conn.sm = old_state
        conn.bound = True
        if conn.auth_timer is not None:
            conn.auth_timer.cancel()
            conn.auth_timer = None
        self._write(conn, f"<resumed xmlns='{NS_SM}' h='{old_state.h_in}' previd='{old_state.id}'/>")
        replay = list(old_state.unacked)
        old_state.unacked.clear()
        old_state.h_out = h
        for _, data, stanza in replay:
            conn.write_stanza(data, stanza)
        self.log.info("%s resumed from %s with %d stanzas replayed", conn.jid, conn.peer, len(replay))

    async def _session_closed(self, session: Any) -> None:
        st: SMState | None = getattr(session, "sm", None)
        if st is None:
            return
        self.states.pop(st.id, None)
        for timer in (st.timer, st.ack_timer):
            if timer is not None:
                timer.cancel()
        pending = [s for _, _, s in st.unacked if s is not None]
        st.unacked.clear()
        session.sm = None
        for stanza in pending:
            await self._reroute(session, stanza)

    async def _reroute(self, session: Any, stanza: Element) -> None:
        """An unacknowledged message goes to the account again: another resource or offline."""
        if local_name(stanza.tag) != "message" or stanza.get("type") in ("error", "groupchat", "headline"):
            return
        if stanza.find(q(NS_CLIENT, "body")) is None:
            return
        again = copy.deepcopy(stanza)
        again.set("to", session.bare)
        if again.find(q(NS_DELAY, "delay")) is None:
            SubElement(again, q(NS_DELAY, "delay"), {"from": self.server.domain, "stamp": utc_stamp()})
        await self.router.route(again, rerouted=True)


module_class = StreamManagement
