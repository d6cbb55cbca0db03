"""Service discovery (XEP-0030) of the server and of accounts, with extended information
(XEP-0128) and the server's entity capabilities (XEP-0115).

Features are not registered here: every loaded module declares ``server_features`` and
``account_features``, and may declare ``server_identities`` / ``account_identities``
(tuples of :class:`~parley.xmpp.caps.Identity`) and ``extra_forms`` (XEP-0128
:class:`ExtendedInfo` forms for the server's disco#info). They are read at query time
because this module loads first. A module that serves disco nodes of its own (ad-hoc
commands, say) hooks the same ``iq-get/.../disco#...`` events with a higher priority and
answers the nodes it owns; every other node is ``item-not-found`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.router import Routed
from parley.xmpp.caps import NS_CAPS, NS_DATA, Identity, caps_ver
from parley.xmpp.stanza import XML_LANG, child, make

if TYPE_CHECKING:
    from parley.server import Server

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_SERVERINFO = "http://jabber.org/network/serverinfo"
NS_CLIENT_POLICY = "urn:parley:client-policy"
CAPS_NODE = "https://parley.example/caps"
CAPS_HASH = "sha-1"


@dataclass(frozen=True, slots=True)
class FormField:
    var: str
    values: tuple[str, ...] = ()
    type: str | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class ExtendedInfo:
    """One XEP-0128 form: a result form whose hidden FORM_TYPE names what it describes."""

    form_type: str
    fields: tuple[FormField, ...]

    def element(self) -> Element:
        x = make(NS_DATA, "x", {"type": "result"})
        ft = child(x, NS_DATA, "field", {"var": "FORM_TYPE", "type": "hidden"})
        child(ft, NS_DATA, "value").text = self.form_type
        for f in self.fields:
            attrs = {"var": f.var}
            if f.type:
                attrs["type"] = f.type
            if f.label:
                attrs["label"] = f.label
            el = child(x, NS_DATA, "field", attrs)
            for v in f.values:
                child(el, NS_DATA, "value").text = v
        return x

    def hashed(self) -> dict[str, list[str]]:
        out = {"FORM_TYPE": [self.form_type]}
        out.update({f.var: list(f.values) for f in self.fields})
        return out


# identities, features and XEP-0128 forms of one entity
ServerInfo = tuple[list[Identity], list[str], list[ExtendedInfo]]


def _flag(value: bool) -> tuple[str, ...]:
    return ("true",) if value else ("false",)


class Disco(Module):
    name = "disco"
    server_features = (NS_INFO, NS_ITEMS)
    account_features = (NS_INFO, NS_ITEMS)

    def __init__(self, server: Server):
        super().__init__(server)
        self.items: list[tuple[str, str | None, str | None]] = []
        self.caps = make(NS_CAPS, "c", {"hash": CAPS_HASH, "node": CAPS_NODE, "ver": ""})
        self._after_start: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.hooks.add(f"iq-get/host/{NS_INFO}", self._host_info)
        self.hooks.add(f"iq-get/host/{NS_ITEMS}", self._host_items)
        self.hooks.add(f"iq-get/bare/{NS_INFO}", self._account_info)
        self.hooks.add(f"iq-get/bare/{NS_ITEMS}", self._account_items)
        # The same element object sits in the stream features, so updating its ver in
        # place is enough; the first value only covers what has loaded so far.
        self.server.stream_features.append(self.caps)
        self.refresh_caps()
        self._after_start = asyncio.get_running_loop().create_task(self._refresh_when_started())

    async def stop(self) -> None:
        if self._after_start is not None and not self._after_start.done():
            self._after_start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._after_start
        with contextlib.suppress(ValueError):
            self.server.stream_features.remove(self.caps)

    async def _refresh_when_started(self) -> None:
        await self.server.started.wait()
        self.refresh_caps()

    # --- what the server and accounts are --------------------------------------------------

    def add_item(self, jid: str, name: str | None = None, node: str | None = None) -> None:
        """List a service (a chat or upload component, say) in the server's disco#items."""
        entry = (jid, name, node)
        if entry not in self.items:
            self.items.append(entry)

    def _collect(self, features_attr: str, identities_attr: str,
                 base: Identity) -> tuple[list[Identity], list[str]]:
        identities = [base]
        features: set[str] = set()
        for mod in self.server.modules.values():
            features.update(getattr(mod, features_attr, ()))
            for ident in getattr(mod, identities_attr, ()):
                if ident not in identities:
                    identities.append(ident)
        return identities, sorted(features)

    def server_info(self) -> ServerInfo:
        # The language is stated, not left to inherit from the stream: clients that apply
        # XML inheritance would otherwise hash "en" (or the stream's language) where the
        # others hash nothing, and half of them would reject the caps string.
        identities, features = self._collect(
            "server_features", "server_identities", Identity("server", "im", "en", self.config.server.name)
        )
        im = self.config.im
        forms = [
            # Contact-address fields are only sent with values: clients disagree on how a
            # valueless field enters the caps hash, and a mismatch makes them distrust it.
            ExtendedInfo(NS_SERVERINFO, ()),
            ExtendedInfo(NS_CLIENT_POLICY, (
                FormField("allow-history-logging", _flag(im.allow_history_logging), "boolean",
                          "Allow clients to log instant message history"),
                FormField("allow-cut-and-paste", _flag(im.allow_cut_and_paste), "boolean",
                          "Allow cut & paste"),
            )),
        ]
        for mod in self.server.modules.values():
            forms.extend(getattr(mod, "extra_forms", ()))
        return identities, features, forms

    def account_info(self) -> tuple[list[Identity], list[str]]:
        return self._collect("account_features", "account_identities", Identity("account", "registered"))

    def refresh_caps(self, info: ServerInfo | None = None) -> str:
        """Recompute the server's caps string and put it in the stream feature."""
        identities, features, forms = info or self.server_info()
        ver = caps_ver(identities, features, [f.hashed() for f in forms], CAPS_HASH)
        self.caps.set("ver", ver)
        return ver

    # --- handlers ------------------------------------------------------------------------------

    async def _host_info(self, ctx: Routed) -> bool:
        node = ctx.stanza[0].get("node") or None
        info = self.server_info()
        # Recomputed per query so that a module started late is never missing from it.
        ver = self.refresh_caps(info)
        if node is not None and node != f"{CAPS_NODE}#{ver}":
            return self.refuse(ctx, "item-not-found", f"there is no node {node!r} here")
        identities, features, forms = info
        query = _info_query(node, identities, features)
        query.extend(f.element() for f in forms)
        await self.reply(ctx, query)
        return True

    async def _host_items(self, ctx: Routed) -> bool:
        node = ctx.stanza[0].get("node") or None
        if node is not None:
            return self.refuse(ctx, "item-not-found", f"there is no node {node!r} here")
        query = make(NS_ITEMS, "query")
        for jid, name, item_node in self.items:
            attrs = {"jid": jid}
            if name:
                attrs["name"] = name
            if item_node:
                attrs["node"] = item_node
            child(query, NS_ITEMS, "item", attrs)
        await self.reply(ctx, query)
        return True

    async def _account_exists(self, bare: str) -> bool:
        if self.router.sessions.resources(bare):
            return True
        return await self.repos.users.get(bare) is not None

    async def _account_info(self, ctx: Routed) -> bool:
        owner = str(ctx.to)
        if not await self._account_exists(owner):
            return self.refuse(ctx, "service-unavailable")
        node = ctx.stanza[0].get("node") or None
        if node is not None:
            return self.refuse(ctx, "item-not-found", f"there is no node {node!r} here")
        # Anyone may learn what an account supports: clients decide from it whether a
        # contact can take PEP, vCards and the like.
        identities, features = self.account_info()
        await self.reply(ctx, _info_query(None, identities, features))
        return True

    async def _account_items(self, ctx: Routed) -> bool:
        owner = str(ctx.to)
        if not await self._account_exists(owner):
            return self.refuse(ctx, "service-unavailable")
        if str(ctx.frm.bare) != owner:
            return self.refuse(ctx, "forbidden", "only the account owner may list its items")
        node = ctx.stanza[0].get("node") or None
        if node is not None:
            return self.refuse(ctx, "item-not-found", f"there is no node {node!r} here")
        await self.reply(ctx, make(NS_ITEMS, "query"))
        return True


def _info_query(node: str | None, identities: list[Identity], features: list[str]) -> Element:
    query = make(NS_INFO, "query", {"node": node} if node else {})
    for ident in identities:
        attrs = {"category": ident.category, "type": ident.type}
        if ident.name:
            attrs["name"] = ident.name
        if ident.lang:
            attrs[XML_LANG] = ident.lang
        child(query, NS_INFO, "identity", attrs)
    for var in features:
        child(query, NS_INFO, "feature", {"var": var})
    return query


module_class = Disco
