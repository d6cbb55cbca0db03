"""Private XML storage (XEP-0049): a user keeps XML documents, one per namespace, that
only they can read and write (older clients keep their bookmarks here).

After a set, the server signal ``private-updated`` (owner, element) is emitted for each
stored element.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError, fromstring

from parley.module import Module
from parley.router import Routed
from parley.xmpp.stanza import NS_CLIENT, NS_SERVER, local_name, make, namespace
from parley.xmpp.xmlstream import serialize

NS_PRIVATE = "jabber:iq:private"
RESERVED = frozenset({NS_PRIVATE, NS_CLIENT, NS_SERVER, ""})


class PrivateStorage(Module):
    name = "private"
    server_features = (NS_PRIVATE,)

    async def start(self) -> None:
        self.hooks.add(f"iq-get/bare/{NS_PRIVATE}", self._get)
        self.hooks.add(f"iq-set/bare/{NS_PRIVATE}", self._set)

    def _check(self, ctx: Routed) -> list[Element] | None:
        """The query's children when the request may go ahead; refuses it otherwise."""
        query = ctx.stanza[0]
        if local_name(query.tag) != "query":
            self.refuse(ctx, "bad-request", "the payload must be <query xmlns='jabber:iq:private'/>")
            return None
        if str(ctx.frm.bare) != str(ctx.to):
            self.refuse(ctx, "forbidden", "private storage belongs to its owner only")
            return None
        children = list(query)
        if not children:
            self.refuse(ctx, "not-acceptable", "name the element to store or retrieve")
            return None
        seen: set[str] = set()
        for el in children:
            ns = namespace(el.tag)
            if ns in RESERVED:
                self.refuse(ctx, "not-acceptable", f"the namespace {ns or '(none)'!r} cannot be stored")
                return None
            if ns in seen:
                self.refuse(ctx, "bad-request", f"the namespace {ns!r} appears twice")
                return None
            seen.add(ns)
        return children

    async def _get(self, ctx: Routed) -> bool:
        wanted = self._check(ctx)
        if wanted is None:
            return True
        owner = str(ctx.to)
        query = make(NS_PRIVATE, "query")
        for el in wanted:
            found = make(namespace(el.tag), local_name(el.tag))
            stored = await self.repos.docs.get_private(owner, namespace(el.tag))
            if stored:
                try:
                    doc = fromstring(stored)
                except ParseError:
                    self.log.error("stored private XML of %s in %s cannot be parsed", owner, namespace(el.tag))
                else:
                    # The store is keyed by namespace; another element name is not a match.
                    if doc.tag == el.tag:
                        found = doc
            query.append(found)
        await self.reply(ctx, query)
        return True

    async def _set(self, ctx: Routed) -> bool:
        docs = self._check(ctx)
        if docs is None:
            return True
        payload: dict[str, str] = {}
        for el in docs:
            payload[namespace(el.tag)] = serialize(el, "").decode("utf-8")
        # One transaction for all of them: a set either stores every element or none.
        await self.repos.docs.set_private(str(ctx.to), payload)
        # Listeners keep other stores in step (legacy bookmarks with XEP-0402, say) before
        # the acknowledgement, so that a client that has it reads the same data everywhere;
        # the document is stored and acknowledged whatever they do.
        for el in docs:
            try:
                await self.server.signals.emit("private-updated", str(ctx.to), el)
            except Exception:
                self.log.exception("a private-updated listener failed for %s", namespace(el.tag))
        await self.reply(ctx)
        return True


module_class = PrivateStorage
