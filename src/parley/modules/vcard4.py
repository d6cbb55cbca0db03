"""vCard4 over XMPP (XEP-0292): the user's vCard4 is the item ``current`` of the PEP node
``urn:xmpp:vcard4`` (an ordinary PEP node, presence access unless the owner configures it
otherwise). Clients that use the IQ form of the XEP get and set the same item with
``<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'/>`` on the account's bare JID.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from parley.module import Module
from parley.modules.pep import Pep, PepError
from parley.router import Routed
from parley.xmpp.stanza import iq_result, local_name

NS_VCARD4 = "urn:ietf:params:xml:ns:vcard-4.0"
NODE = "urn:xmpp:vcard4"
ITEM = "current"


class VCard4(Module):
    name = "vcard4"
    account_features = (NODE, NS_VCARD4)

    @property
    def pep(self) -> Pep:
        pep = self.server.modules["pep"]
        assert isinstance(pep, Pep)
        return pep

    async def start(self) -> None:
        self.hooks.add(f"iq-get/bare/{NS_VCARD4}", self._on_iq)
        self.hooks.add(f"iq-set/bare/{NS_VCARD4}", self._on_iq)

    async def _on_iq(self, ctx: Routed) -> bool:
        try:
            payload = await (self._get(ctx) if ctx.type == "get" else self._set(ctx))
        except PepError as e:
            await self.pep.refuse(ctx, e)
            return True
        reply = iq_result(ctx.stanza, *([payload] if payload is not None else []))
        if ctx.origin is not None:
            ctx.origin.send(reply)
        else:
            await self.router.route(reply)
        return True

    async def _exists(self, bare: str) -> bool:
        if self.router.sessions.resources(bare):
            return True
        return await self.repos.users.get(bare) is not None

    def _check(self, ctx: Routed) -> Element:
        vcard = ctx.stanza[0]
        if local_name(vcard.tag) != "vcard":
            raise PepError("bad-request", f"the payload must be <vcard xmlns='{NS_VCARD4}'/>")
        return vcard

    async def _get(self, ctx: Routed) -> Element:
        self._check(ctx)
        owner = str(ctx.to)
        if not await self._exists(owner):
            raise PepError("service-unavailable")
        record = await self.pep.node(owner, NODE)
        if record is None:
            raise PepError("item-not-found", "no vCard4 is published")
        await self.pep.check_access(owner, ctx.frm, record.config)
        items = await self.pep.items(owner, NODE, item_ids=[ITEM]) or await self.pep.items(owner, NODE, 1)
        if not items:
            raise PepError("item-not-found", "no vCard4 is published")
        return items[-1][1]

    async def _set(self, ctx: Routed) -> None:
        vcard = self._check(ctx)
        owner = str(ctx.to)
        if str(ctx.frm.bare) != owner:
            raise PepError("forbidden", "you may only change your own vCard")
        await self.pep.publish(owner, NODE, ITEM, vcard, publisher=str(ctx.frm))
        return None


module_class = VCard4
