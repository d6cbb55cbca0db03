"""Bookmarks: PEP native bookmarks (XEP-0402) kept in step with the legacy ones (XEP-0048)
that older clients keep in private XML storage (XEP-0049) or in the PEP node
``storage:bookmarks`` (XEP-0223), as ``urn:xmpp:bookmarks:1#compat`` and ``#compat-pep``
promise.

Whatever a client writes, in any of the three places, the other two are rewritten to
match: a legacy ``<storage/>`` document becomes one ``urn:xmpp:bookmarks:1`` item per room
(items for rooms no longer listed are retracted), and a change to those items rebuilds the
legacy document (keeping its ``<url/>`` bookmarks, which XEP-0402 has no place for). A
room's XEP-0402 ``<extensions/>`` survive a rewrite from the legacy side.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, ParseError, fromstring

from parley.module import Module
from parley.modules.pep import (
    F_ACCESS,
    F_MAX_ITEMS,
    F_PERSIST,
    F_SEND_LAST,
    MAX_ITEMS_CAP,
    Pep,
    PepError,
    max_items,
)
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import child, make
from parley.xmpp.xmlstream import serialize

if TYPE_CHECKING:
    from parley.server import Server

NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_COMPAT = f"{NS_BOOKMARKS}#compat"
NS_COMPAT_PEP = f"{NS_BOOKMARKS}#compat-pep"
NS_LEGACY = "storage:bookmarks"

# The configuration XEP-0402 asks for, given to the node when a legacy write creates it.
BOOKMARKS_CONFIG: dict[str, Any] = {
    F_ACCESS: "whitelist",
    F_MAX_ITEMS: "max",
    F_PERSIST: "true",
    F_SEND_LAST: "never",
}
# XEP-0223's profile for the legacy document in PEP.
LEGACY_CONFIG: dict[str, Any] = {F_ACCESS: "whitelist", F_PERSIST: "true"}


@dataclass(frozen=True, slots=True)
class Conference:
    jid: str
    name: str = ""
    autojoin: bool = False
    nick: str = ""
    password: str = ""

    def bookmark(self, extensions: Element | None = None) -> Element:
        """The XEP-0402 item payload."""
        attrs = {"autojoin": "true" if self.autojoin else "false"}
        if self.name:
            attrs["name"] = self.name
        conf = make(NS_BOOKMARKS, "conference", attrs)
        if self.nick:
            child(conf, NS_BOOKMARKS, "nick").text = self.nick
        if self.password:
            child(conf, NS_BOOKMARKS, "password").text = self.password
        if extensions is not None:
            conf.append(extensions)
        return conf

    def legacy(self) -> Element:
        """The XEP-0048 ``<conference/>``."""
        attrs = {"jid": self.jid, "autojoin": "true" if self.autojoin else "false"}
        if self.name:
            attrs["name"] = self.name
        conf = make(NS_LEGACY, "conference", attrs)
        if self.nick:
            child(conf, NS_LEGACY, "nick").text = self.nick
        if self.password:
            child(conf, NS_LEGACY, "password").text = self.password
        return conf


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true")


def _room(jid: str | None) -> str | None:
    """The canonical bare JID of a room, or None for something that is not one."""
    try:
        parsed = JID.parse(jid or "")
    except InvalidJID:
        return None
    if parsed.resource is not None:
        return None
    return str(parsed)


def from_legacy(storage: Element) -> tuple[list[Conference], list[Element]]:
    """The rooms (in order, each once) and the URL bookmarks of a legacy document."""
    rooms: dict[str, Conference] = {}
    urls: list[Element] = []
    for el in storage:
        if el.tag == f"{{{NS_LEGACY}}}url":
            urls.append(el)
            continue
        if el.tag != f"{{{NS_LEGACY}}}conference":
            continue
        jid = _room(el.get("jid"))
        if jid is None:
            continue
        rooms[jid] = Conference(jid, el.get("name") or "", _true(el.get("autojoin")),
                                (el.findtext(f"{{{NS_LEGACY}}}nick") or "").strip(),
                                el.findtext(f"{{{NS_LEGACY}}}password") or "")
    return list(rooms.values()), urls


def from_bookmark(item_id: str, payload: Element) -> Conference | None:
    if payload.tag != f"{{{NS_BOOKMARKS}}}conference":
        return None
    jid = _room(item_id)
    if jid is None:
        return None
    return Conference(jid, payload.get("name") or "", _true(payload.get("autojoin")),
                      (payload.findtext(f"{{{NS_BOOKMARKS}}}nick") or "").strip(),
                      payload.findtext(f"{{{NS_BOOKMARKS}}}password") or "")


def legacy_document(rooms: list[Conference], urls: list[Element]) -> Element:
    storage = make(NS_LEGACY, "storage")
    storage.extend(c.legacy() for c in rooms)
    storage.extend(urls)
    return storage


class Bookmarks(Module):
    name = "bookmarks"
    account_features = (NS_COMPAT, NS_COMPAT_PEP)

    def __init__(self, server: Server):
        super().__init__(server)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @property
    def pep(self) -> Pep:
        pep = self.server.modules["pep"]
        assert isinstance(pep, Pep)
        return pep

    async def start(self) -> None:
        # Bookmarks hold room passwords: a client that publishes without options must not
        # create a node its contacts can read.
        self.pep.set_node_defaults(NS_BOOKMARKS, BOOKMARKS_CONFIG)
        self.pep.set_node_defaults(NS_LEGACY, LEGACY_CONFIG)
        signals = self.server.signals
        signals.connect("private-updated", self._private_updated)
        signals.connect("pep-published", self._published)
        for name in ("pep-retracted", "pep-purged", "pep-deleted"):
            signals.connect(name, self._removed)

    def _lock(self, owner: str) -> asyncio.Lock:
        lock = self._locks.get(owner)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[owner] = lock
        return lock

    # --- what clients change --------------------------------------------------------------------

    async def _private_updated(self, owner: str, el: Element) -> None:
        if el.tag == f"{{{NS_LEGACY}}}storage":
            await self._guarded(owner, lambda: self._legacy_written(owner, el, in_private=True))

    async def _published(self, owner: str, node: str, item_id: str, payload: Element, source: str | None) -> None:
        if source == self.name:
            return
        if node == NS_BOOKMARKS:
            await self._guarded(owner, lambda: self._bookmarks_changed(owner))
        elif node == NS_LEGACY and payload.tag == f"{{{NS_LEGACY}}}storage":
            await self._guarded(owner, lambda: self._legacy_written(owner, payload, in_private=False))

    async def _removed(self, owner: str, node: str, *rest: Any) -> None:
        source = rest[-1] if rest else None
        # Removing the legacy PEP copy says nothing about which rooms to keep.
        if node == NS_BOOKMARKS and source != self.name:
            await self._guarded(owner, lambda: self._bookmarks_changed(owner))

    async def _guarded(self, owner: str, work: Callable[[], Awaitable[None]]) -> None:
        # The client's own write is stored already; a failed copy must not fail it.
        try:
            async with self._lock(owner):
                await work()
        except PepError as e:
            self.log.warning("bookmarks of %s not kept in step: %s", owner, e.text or e.condition)
        except Exception:
            self.log.exception("bookmarks of %s not kept in step", owner)

    # --- keeping the three in step ----------------------------------------------------------------

    async def _current(self, owner: str) -> dict[str, tuple[Conference, Element | None]]:
        """The XEP-0402 bookmarks: room -> (conference, its extensions)."""
        out: dict[str, tuple[Conference, Element | None]] = {}
        for item_id, payload in await self.pep.items(owner, NS_BOOKMARKS, MAX_ITEMS_CAP):
            conf = from_bookmark(item_id, payload)
            if conf is not None:
                out[conf.jid] = (conf, payload.find(f"{{{NS_BOOKMARKS}}}extensions"))
        return out

    async def _legacy_written(self, owner: str, storage: Element, in_private: bool) -> None:
        rooms, _ = from_legacy(storage)
        record = await self.pep.node(owner, NS_BOOKMARKS)
        if record is not None and max_items(record.config) < len(rooms):
            # A node made by a client that forgot max_items would drop rooms as they are
            # copied in; XEP-0402 asks for 'max' anyway.
            await self.pep.store.set_config(owner, NS_BOOKMARKS, {**record.config, F_MAX_ITEMS: "max"})
        current = await self._current(owner)
        wanted = {c.jid for c in rooms}
        for conf in rooms:
            have = current.get(conf.jid)
            if have is not None and have[0] == conf:
                continue
            await self.pep.publish(owner, NS_BOOKMARKS, conf.jid, conf.bookmark(have[1] if have else None),
                                   new_config=BOOKMARKS_CONFIG, source=self.name)
        gone = [jid for jid in current if jid not in wanted]
        if gone:
            await self.pep.retract(owner, NS_BOOKMARKS, gone, notify=True, source=self.name)
        if in_private:
            await self.pep.publish(owner, NS_LEGACY, "current", storage, new_config=LEGACY_CONFIG,
                                   source=self.name)
        else:
            await self.repos.docs.set_private(owner, {NS_LEGACY: serialize(storage, "").decode("utf-8")})

    async def _bookmarks_changed(self, owner: str) -> None:
        rooms = [conf for conf, _ in (await self._current(owner)).values()]
        urls: list[Element] = []
        stored = await self.repos.docs.get_private(owner, NS_LEGACY)
        if stored:
            try:
                _, urls = from_legacy(fromstring(stored))
            except ParseError:
                self.log.error("the stored legacy bookmarks of %s cannot be parsed; rebuilding them", owner)
        storage = legacy_document(rooms, urls)
        await self.repos.docs.set_private(owner, {NS_LEGACY: serialize(storage, "").decode("utf-8")})
        await self.pep.publish(owner, NS_LEGACY, "current", storage, new_config=LEGACY_CONFIG, source=self.name)


module_class = Bookmarks
