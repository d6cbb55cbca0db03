"""A signed-in slixmpp client that keeps every stanza it receives (Peer), the matchers that
pick stanzas out of what it received, and the XML helpers and names the end-to-end tests
share. Built on tests.clients; the `connect` fixture in tests/conftest.py hands out Peers."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any
from xml.etree.ElementTree import Element, fromstring
from xml.sax.saxutils import escape, quoteattr

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from tests.clients import TIMEOUT

# The domains the test server serves (its certificate covers both).
DOMAIN = "example.test"
OTHER_DOMAIN = "other.test"

NS_ROSTER = "jabber:iq:roster"
NS_PING = "urn:xmpp:ping"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
DAVE = f"dave@{DOMAIN}"

Match = Callable[[Element], bool]


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def local(el: Element) -> str:
    return el.tag.rpartition("}")[2]


class Peer:
    """A signed-in slixmpp client and every stanza it received, in arrival order."""

    def __init__(self, client: slixmpp.ClientXMPP) -> None:
        self.c = client
        self.jid = str(client.boundjid)
        self.got: list[Element] = []
        self._taken: set[int] = set()
        self._seen = 0
        self._arrived = asyncio.Event()
        client.add_filter("in", self._tap)

    def _tap(self, stanza: Any) -> Any:
        self.got.append(copy.deepcopy(stanza.xml))
        self._arrived.set()
        return stanza

    def send(self, xml: str) -> None:
        """Raw XML, queued behind whatever the client sent before (the wire keeps the order)."""
        self.c.send(xml)

    async def next(self, match: Match, what: str) -> Element:
        """The first stanza not handed out before that matches (the timeout is a safety net)."""

        async def look() -> Element:
            while True:
                for el in self.got:
                    if id(el) not in self._taken and match(el):
                        self._taken.add(id(el))
                        return el
                self._arrived.clear()
                await self._arrived.wait()

        try:
            return await asyncio.wait_for(look(), TIMEOUT)
        except TimeoutError:
            pytest.fail(f"{self.jid} never received {what}")

    async def mark(self) -> list[Element]:
        """Every stanza received since the previous mark. The server answers this client's
        ping only after everything it wrote to the client before, so the list is complete."""
        iq = self.c.make_iq(itype="get", ito=DOMAIN)
        iq.append(Element(q(NS_PING, "ping")))
        await iq.send(timeout=TIMEOUT)
        pos = max(i for i, el in enumerate(self.got) if local(el) == "iq" and el.get("id") == iq["id"])
        window, self._seen = self.got[self._seen:pos], pos + 1
        return window

    def _iq(self, type_: str, payload: str, to: str | None) -> Any:
        iq = self.c.make_iq(itype=type_, ito=to)
        iq.append(fromstring(payload))
        return iq

    async def query(self, type_: str, payload: str, to: str | None = None) -> Element:
        try:
            res = await self._iq(type_, payload, to).send(timeout=TIMEOUT)
        except IqError as e:
            pytest.fail(f"{payload} was refused: {e.iq['error']['condition']} {e.iq['error']['text']}")
        return copy.deepcopy(res.xml)

    async def refused(self, type_: str, payload: str, to: str | None = None) -> tuple[str, str]:
        """(error type, condition) of a request the server must refuse."""
        with pytest.raises(IqError) as err:
            await self._iq(type_, payload, to).send(timeout=TIMEOUT)
        return str(err.value.iq["error"]["type"]), str(err.value.iq["error"]["condition"])


Connect = Callable[..., Awaitable[Peer]]


# --- presence -----------------------------------------------------------------------------------


def presence(frm: str | None = None, type_: str = "available", *, of: str | None = None,
             status: str | None = None) -> Match:
    """A presence of that type, from that exact JID (`frm`) or any resource of a bare JID (`of`)."""

    def match(el: Element) -> bool:
        if local(el) != "presence" or (el.get("type") or "available") != type_:
            return False
        sender = el.get("from", "")
        if frm is not None and sender != frm:
            return False
        if of is not None and sender.split("/")[0] != of:
            return False
        return status is None or el.findtext("{jabber:client}status") == status

    return match


def presences_from(window: list[Element], bare: str) -> list[Element]:
    return [el for el in window if local(el) == "presence" and el.get("from", "").split("/")[0] == bare]


def change_status(peer: Peer, status: str) -> None:
    peer.send(f"<presence><status>{status}</status></presence>")


# --- messages and errors ------------------------------------------------------------------------


def message(body: str | None = None, *, frm: str | None = None, type_: str | None = None) -> Match:
    def match(el: Element) -> bool:
        if local(el) != "message":
            return False
        if type_ is not None and el.get("type", "normal") != type_:
            return False
        if frm is not None and el.get("from") != frm:
            return False
        return body is None or el.findtext("{jabber:client}body") == body

    return match


def bodies(window: list[Element]) -> list[str]:
    return [el.findtext("{jabber:client}body") or "" for el in window
            if local(el) == "message" and el.get("type") != "error"]


def error_condition(el: Element) -> str | None:
    err = el.find("{jabber:client}error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith(f"{{{NS_STANZAS}}}") and local(c) != "text":
            return local(c)
    return None


def say(peer: Peer, to: str, body: str, type_: str = "chat") -> None:
    peer.send(f"<message to='{to}' type='{type_}'><body>{body}</body></message>")


async def bounce_of(peer: Peer, body: str) -> Element:
    """The error that answers the message with that body."""
    return await peer.next(lambda el: message(type_="error")(el) and el.findtext("{jabber:client}body") == body,
                           f"the error for {body!r}")


async def bounced(peer: Peer, body: str) -> str | None:
    """The condition of the error that answers the message with that body."""
    return error_condition(await bounce_of(peer, body))


# --- rosters ------------------------------------------------------------------------------------


def item_xml(jid: str, name: str | None = None, groups: tuple[str, ...] = (), subscription: str | None = None) -> str:
    attrs = f"jid={quoteattr(jid)}"
    if name is not None:
        attrs += f" name={quoteattr(name)}"
    if subscription is not None:
        attrs += f" subscription={quoteattr(subscription)}"
    inner = "".join(f"<group>{escape(g)}</group>" for g in groups)
    return f"<item {attrs}>{inner}</item>"


def roster_set(*items: str) -> str:
    return f"<query xmlns='{NS_ROSTER}'>{''.join(items)}</query>"


def roster_get(ver: str | None = None) -> str:
    return f"<query xmlns='{NS_ROSTER}'/>" if ver is None else f"<query xmlns='{NS_ROSTER}' ver={quoteattr(ver)}/>"


def items_of(query: Element | None) -> dict[str, Element]:
    assert query is not None
    return {it.get("jid", ""): it for it in query.findall(q(NS_ROSTER, "item"))}


async def roster_items(peer: Peer) -> dict[str, Element]:
    res = await peer.query("get", roster_get())
    return items_of(res.find(q(NS_ROSTER, "query")))


def is_push(jid: str | None = None) -> Match:
    """A roster push (of an item for that JID, if given)."""

    def match(el: Element) -> bool:
        if local(el) != "iq" or el.get("type") != "set":
            return False
        query = el.find(q(NS_ROSTER, "query"))
        if query is None:
            return False
        return jid is None or jid in items_of(query)

    return match
