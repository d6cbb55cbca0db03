"""Client state indication (XEP-0352, urn:xmpp:csi:0): a client that says it is
``<inactive/>`` (a phone in a pocket) is spared traffic nobody is looking at.

While a session is inactive the server holds presence updates (only the newest from each
sender's full JID) and messages that carry nothing but a chat state (only the newest per
conversation). Anything else (a message with a body, an iq, a subscription request) goes
out at once, after everything held, so the client still sees it all in order.
``<active/>`` sends out what is held.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.xmpp.stanza import NS_CLIENT, from_stored, local_name, make, namespace, q

if TYPE_CHECKING:
    from parley.c2s import C2SConnection
    from parley.server import Server

NS_CSI = "urn:xmpp:csi:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
# What may sit beside a chat state in a message that is still only a chat state.
_INCIDENTAL = frozenset({NS_CHATSTATES, "urn:xmpp:hints", "urn:xmpp:sid:0", "urn:xmpp:delay"})
# More held stanzas than this and the client gets them all: memory per session stays bounded.
MAX_HELD = 500

_PRESENCE_OPEN = re.compile(rb"<presence\b([^>]*)>")
_ATTR = re.compile(rb"""\s([\w:.-]+)=(['"])(.*?)\2""", re.S)

HeldKey = tuple[str, str, str]


def _attrs(open_tag: bytes) -> dict[bytes, bytes]:
    return {m.group(1): m.group(3) for m in _ATTR.finditer(open_tag)}


def _presence_key(type_: str | None, frm: str) -> HeldKey | None:
    # Subscription requests and errors want an answer: they are never held.
    if type_ not in (None, "unavailable"):
        return None
    return ("presence", frm, "")


def _unwrap_carbon(stanza: Element) -> Element:
    for direction in ("received", "sent"):
        inner = stanza.find(f"{q(NS_CARBONS, direction)}/{q(NS_FORWARD, 'forwarded')}/{q(NS_CLIENT, 'message')}")
        if inner is not None:
            return inner
    return stanza


def _chat_state_key(stanza: Element) -> HeldKey | None:
    msg = _unwrap_carbon(stanza)
    has_state = False
    for c in msg:
        ns = namespace(c.tag)
        if ns == NS_CHATSTATES:
            has_state = True
        elif ns not in _INCIDENTAL and not (ns == NS_CLIENT and local_name(c.tag) == "thread"):
            return None
    if not has_state:
        return None
    return ("chat-state", msg.get("from", ""), msg.get("to", ""))


def hold_key(data: bytes, stanza: Element | None) -> HeldKey | None:
    """What a stanza would replace among the held ones, or None when it must go out now."""
    if stanza is not None:
        kind = local_name(stanza.tag)
        if kind == "presence":
            return _presence_key(stanza.get("type"), stanza.get("from", ""))
        if kind == "message":
            return _chat_state_key(stanza)
        return None
    if data.startswith(b"<presence"):
        m = _PRESENCE_OPEN.match(data)
        if m is None:
            return None
        attrs = _attrs(m.group(1))
        type_ = attrs.get(b"type")
        return _presence_key(type_.decode() if type_ is not None else None,
                             attrs.get(b"from", b"").decode(errors="replace"))
    if data.startswith(b"<message") and b"<body" not in data and NS_CHATSTATES.encode() in data:
        try:
            return _chat_state_key(from_stored(data.decode()))
        except (ValueError, SyntaxError):
            return None
    return None


class ClientState:
    """The CSI state of one session; the connection offers it every outgoing stanza."""

    def __init__(self, conn: C2SConnection):
        self.conn = conn
        self.inactive = False
        self._held: OrderedDict[HeldKey, tuple[bytes, Element | None]] = OrderedDict()

    @property
    def held(self) -> int:
        return len(self._held)

    def offer(self, data: bytes, stanza: Element | None) -> bool:
        """True when the stanza is held back; False when the caller writes it now."""
        if not self.inactive:
            return False
        key = hold_key(data, stanza)
        if key is None:
            self.flush()
            return False
        # The newer one replaces the older and takes its place at the end, after
        # whatever the sender's older stanza came before.
        self._held.pop(key, None)
        self._held[key] = (data, stanza)
        if len(self._held) > MAX_HELD:
            self.flush()
        return True

    def flush(self) -> None:
        held, self._held = self._held, OrderedDict()
        for data, stanza in held.values():
            self.conn.write_stanza(data, stanza)


class Csi(Module):
    name = "csi"

    def __init__(self, server: Server):
        super().__init__(server)
        self.feature = make(NS_CSI, "csi")

    async def start(self) -> None:
        self.server.stream_features.append(self.feature)
        self.server.signals_stream.add(q(NS_CSI, "inactive"), self._inactive)
        self.server.signals_stream.add(q(NS_CSI, "active"), self._active)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.server.stream_features.remove(self.feature)

    async def _inactive(self, el: Element, conn: C2SConnection) -> bool:
        if not conn.bound:
            return False
        if conn.csi is None:
            conn.csi = ClientState(conn)
        conn.csi.inactive = True
        return True

    async def _active(self, el: Element, conn: C2SConnection) -> bool:
        if not conn.bound:
            return False
        state: ClientState | None = conn.csi
        if state is not None:
            state.inactive = False
            state.flush()
        return True


module_class = Csi
