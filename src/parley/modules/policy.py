"""The user's authorization policy (SPEC C2) and the blocking command (XEP-0191).

A user has an allow list and a block list of JIDs or whole domains, and a default policy
(allow all or block all). The XEP-0191 block list is the block list. The same policy
governs presence and IM: a blocked entity always sees the user unavailable, cannot send
the user messages, and the user cannot write to it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, SubElement

from parley.module import Module
from parley.router import Routed
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import NS_CLIENT, error_reply, iq_result, q

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
CACHE_SIZE = 20000
MAX_ENTRIES = 1000


@dataclass
class UserPolicy:
    allow: set[str] = field(default_factory=set)
    block: set[str] = field(default_factory=set)
    default: str | None = None  # allow | block | None (server default)
    auto_approve: bool | None = None


def matches(entries: set[str], jid: JID) -> bool:
    """Whether a list entry covers the JID: the full JID, its bare JID, or its domain."""
    if not entries:
        return False
    return str(jid) in entries or str(jid.bare) in entries or jid.domain in entries


class PolicyModule(Module):
    name = "policy"
    server_features = (NS_BLOCKING,)

    def __init__(self, server):  # type: ignore[no-untyped-def]
        super().__init__(server)
        self._cache: OrderedDict[str, UserPolicy] = OrderedDict()

    async def start(self) -> None:
        self.hooks.add("stanza/in", self._filter, priority=100)
        # Ahead of the chat service and components: a user cannot write to a blocked room
        # or gateway either.
        self.hooks.add("route/remote", self._filter_remote, priority=100)
        self.hooks.add(f"iq-get/bare/{NS_BLOCKING}", self._get_blocklist)
        self.hooks.add(f"iq-set/bare/{NS_BLOCKING}", self._set_block)
        self.server.signals.connect("session-binding", self._first_session)

    async def _first_session(self, session, full) -> None:  # type: ignore[no-untyped-def]
        # Administrators change policies in the database; a new sign-in picks that up.
        if not self.router.sessions.resources(session.bare):
            self.invalidate(session.bare)

    async def get(self, owner: str) -> UserPolicy:
        pol = self._cache.get(owner)
        if pol is None:
            lists, default, auto = await self.repos.policy.load(owner)
            pol = UserPolicy(lists.get("allow", set()), lists.get("block", set()), default, auto)
            self._cache[owner] = pol
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return pol

    def invalidate(self, owner: str) -> None:
        self._cache.pop(owner, None)

    async def is_blocked(self, owner: str, other: JID) -> bool:
        """Whether `owner` blocks `other` outright (block list)."""
        return matches((await self.get(owner)).block, other)

    async def may_see(self, owner: str, other: JID, subscribed: bool = False) -> bool:
        """Whether `other` may see `owner`'s presence and write to them.

        Under block-all, only the allow list and contacts the owner approved see them."""
        pol = await self.get(owner)
        if matches(pol.block, other):
            return False
        default = pol.default or self.config.authorization.default_policy
        if default == "block":
            return subscribed or matches(pol.allow, other)
        return True

    async def may_send_presence(self, frm: JID, to: JID, probe: bool = False) -> bool:
        """Whether presence from `frm` may reach `to` (with `probe`: whether `frm` may probe
        `to`) under the privacy lists (XEP-0016) and invisibility (XEP-0186) of both ends.
        The block list and the default policy stay with may_see and is_blocked."""
        for name in ("invisible", "privacy"):
            check = getattr(self.server.modules.get(name), "may_send_presence", None)
            if check is not None and not await check(frm, to, probe):
                return False
        return True

    async def auto_approve(self, owner: str, requester: JID) -> bool | None:
        """True: approve; False: ask the user; None: refuse (blocked)."""
        pol = await self.get(owner)
        if matches(pol.block, requester):
            return None
        if matches(pol.allow, requester):
            return True
        if requester.domain not in self.server.hosts:
            # Federated requests never auto-approve unless the user listed them.
            return False
        default = pol.default or self.config.authorization.default_policy
        if default == "block":
            return False
        return pol.auto_approve if pol.auto_approve is not None else self.config.authorization.auto_approve

    # --- filtering every locally routed stanza ------------------------------------------------

    async def _filter(self, ctx: Routed) -> bool:
        # Outbound: a user cannot write to someone they block.
        if ctx.origin is not None and ctx.to.local is not None and str(ctx.to.bare) != ctx.origin.bare:
            if await self.is_blocked(ctx.origin.bare, ctx.to):
                if ctx.kind in ("message", "iq") and ctx.type != "error":
                    ctx.origin.send(error_reply(ctx.stanza, "not-acceptable", "you have blocked this contact",
                                                app=Element(q(NS_BLOCKING_ERRORS, "blocked"))))
                return True
        # Inbound: nothing from a blocked entity reaches the user; they see the user unavailable.
        if ctx.to.local is not None and str(ctx.frm.bare) != str(ctx.to.bare):
            owner = str(ctx.to.bare)
            if ctx.kind == "presence" and ctx.type in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
                # Under block-all a stranger may still ask; only the block list silences them.
                return ctx.type == "subscribe" and await self.is_blocked(owner, ctx.frm)
            if not await self._allowed(owner, ctx.frm):
                if ctx.kind in ("message", "iq") and ctx.type in ("normal", "chat", "headline", "get", "set"):
                    self.router.bounce(ctx.stanza, "service-unavailable", None, ctx.origin)
                return True
        return False

    async def _filter_remote(self, ctx: Routed) -> bool:
        origin = ctx.origin
        if origin is None or not await self.is_blocked(origin.bare, ctx.to):
            return False
        if ctx.kind in ("message", "iq") and ctx.type not in ("error", "result"):
            origin.send(error_reply(ctx.stanza, "not-acceptable", "you have blocked this address",
                                    app=Element(q(NS_BLOCKING_ERRORS, "blocked"))))
        return True

    async def _allowed(self, owner: str, other: JID) -> bool:
        pol = await self.get(owner)
        if matches(pol.block, other):
            return False
        if (pol.default or self.config.authorization.default_policy) != "block":
            return True
        return await self.may_see(owner, other, await self._subscribed(owner, other))

    async def _subscribed(self, owner: str, other: JID) -> bool:
        roster = self.server.modules.get("roster")
        if roster is None:
            return False
        item = (await roster.get(owner)).get(str(other.bare))  # type: ignore[attr-defined]
        return bool(item and item.has_from)

    # --- XEP-0191 -----------------------------------------------------------------------------

    async def _get_blocklist(self, ctx: Routed) -> bool:
        if ctx.origin is None or str(ctx.to) != ctx.origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", None, ctx.origin)
            return True
        if ctx.stanza[0].tag != q(NS_BLOCKING, "blocklist"):
            ctx.origin.send(error_reply(ctx.stanza, "bad-request", "expected <blocklist/>"))
            return True
        pol = await self.get(ctx.origin.bare)
        lst = Element(q(NS_BLOCKING, "blocklist"))
        for target in sorted(pol.block):
            SubElement(lst, q(NS_BLOCKING, "item"), {"jid": target})
        res = iq_result(ctx.stanza, lst)
        res.attrib.pop("from", None)
        ctx.origin.send(res)
        return True

    async def _set_block(self, ctx: Routed) -> bool:
        origin = ctx.origin
        if origin is None or str(ctx.to) != origin.bare:
            self.router.bounce(ctx.stanza, "forbidden", None, ctx.origin)
            return True
        payload = ctx.stanza[0]
        action = payload.tag.rpartition("}")[2]
        if action not in ("block", "unblock"):
            origin.send(error_reply(ctx.stanza, "bad-request", "expected <block/> or <unblock/>"))
            return True
        targets: list[str] = []
        for it in payload.findall(q(NS_BLOCKING, "item")):
            try:
                targets.append(str(JID.parse(it.get("jid", ""))))
            except InvalidJID as e:
                origin.send(error_reply(ctx.stanza, "jid-malformed", str(e)))
                return True
        if action == "block" and not targets:
            origin.send(error_reply(ctx.stanza, "bad-request", "name at least one JID to block"))
            return True
        pol = await self.get(origin.bare)
        if action == "block":
            new = [t for t in targets if t not in pol.block]
            if len(pol.block) + len(new) > MAX_ENTRIES:
                origin.send(error_reply(ctx.stanza, "resource-constraint", f"at most {MAX_ENTRIES} blocked entries"))
                return True
            await self.repos.policy.add(origin.bare, "block", new)
            pol.block.update(new)
            changed = new
        else:
            changed = targets if targets else sorted(pol.block)
            await self.repos.policy.remove(origin.bare, "block", targets or None)
            pol.block.difference_update(changed)
        res = iq_result(ctx.stanza)
        res.attrib.pop("from", None)
        origin.send(res)
        self._push(origin.bare, action, targets)
        presence = self.server.modules.get("presence")
        if presence is not None and changed:
            await presence.block_changed(origin.bare, changed, action == "block")  # type: ignore[attr-defined]
        return True

    def _push(self, owner: str, action: str, targets: list[str]) -> None:
        for s in self.router.sessions.of(owner):
            iq = Element(q(NS_CLIENT, "iq"), {"type": "set", "id": "block-push", "to": str(s.jid)})
            el = SubElement(iq, q(NS_BLOCKING, action))
            for t in targets:
                SubElement(el, q(NS_BLOCKING, "item"), {"jid": t})
            s.send(iq)

    # --- administration (CLI, admin API) ------------------------------------------------------

    async def set_policy(self, owner: str, default: str | None, auto_approve: bool | None) -> None:
        await self.repos.policy.set_settings(owner, default, auto_approve)
        self.invalidate(owner)


module_class = PolicyModule
