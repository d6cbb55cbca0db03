"""vCard-temp (XEP-0054): each user reads anyone's vCard and writes only their own."""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError, fromstring

from parley.module import Module
from parley.router import Routed
from parley.xmpp.stanza import local_name, make
from parley.xmpp.xmlstream import serialize

NS_VCARD = "vcard-temp"
# Photos make vCards large; past this they belong in XEP-0084 avatars, not in every fetch.
MAX_VCARD_BYTES = 64 * 1024


class VCard(Module):
    name = "vcard"
    server_features = (NS_VCARD,)

    async def start(self) -> None:
        self.hooks.add(f"iq-get/bare/{NS_VCARD}", self._get)
        self.hooks.add(f"iq-set/bare/{NS_VCARD}", self._set)

    def _refuse(self, ctx: Routed, condition: str, text: str | None = None,
                echo: bool = True) -> bool:
        stanza = ctx.stanza
        if not echo:
            # Without its payload: sending a refused oversized vCard back helps nobody.
            stanza = Element(stanza.tag, stanza.attrib)
        self.router.bounce(stanza, condition, text, ctx.origin)
        return True

    async def _exists(self, bare: str) -> bool:
        if self.router.sessions.resources(bare):
            return True
        return await self.repos.users.get(bare) is not None

    async def _get(self, ctx: Routed) -> bool:
        owner = str(ctx.to)
        if local_name(ctx.stanza[0].tag) != "vCard":
            return self._refuse(ctx, "bad-request", "the payload must be <vCard xmlns='vcard-temp'/>")
        if not await self._exists(owner):
            return self._refuse(ctx, "service-unavailable")
        stored = await self.repos.docs.get_vcard(owner)
        vcard = make(NS_VCARD, "vCard")
        if stored:
            try:
                vcard = fromstring(stored)
            except ParseError:
                self.log.error("the stored vCard of %s cannot be parsed; answering an empty one", owner)
        await self.reply(ctx, vcard)
        return True

    async def _set(self, ctx: Routed) -> bool:
        owner = str(ctx.to)
        vcard = ctx.stanza[0]
        if str(ctx.frm.bare) != owner:
            return self._refuse(ctx, "forbidden", "you may only change your own vCard")
        if local_name(vcard.tag) != "vCard":
            return self._refuse(ctx, "bad-request", "the payload must be <vCard xmlns='vcard-temp'/>")
        # Measured as it is stored and sent: with its namespace declared on the root only.
        data = serialize(vcard, "")
        size = len(data)
        if size > MAX_VCARD_BYTES:
            return self._refuse(
                ctx, "not-acceptable",
                f"the vCard is {size} bytes; at most {MAX_VCARD_BYTES} are allowed "
                "(publish large photos as an avatar instead)",
                echo=False,
            )
        await self.repos.docs.set_vcard(owner, data.decode("utf-8"))
        await self.reply(ctx)
        await self.server.signals.emit("vcard-updated", owner, vcard)
        return True


module_class = VCard
