"""Invisibility (XEP-0186 invisible command; XEP-0126 through privacy lists).

``<invisible xmlns='urn:xmpp:invisible:0' probe='true|false'/>`` hides one session: its
contacts receive unavailable presence from it, and while it stays invisible its presence
broadcasts reach nobody but the user's own resources and probes are not answered with it.
The session still receives its contacts' presence and messages, and presence it directs
to someone is delivered (the target then gets unavailable when the session goes offline).
With probe='false' the server sends no probes for it, so it learns no presence it did not
already have; without the attribute it probes as usual (the protocol before 'probe'
existed behaved so). ``<visible/>`` ends it: the current presence goes to the contacts at
once, and the probes held back are sent. The mode lasts for the session only.

XEP-0126 needs nothing here: a privacy list denying presence-out to all, made active, hides
the session through the privacy module in the same way (see parley.modules.privacy).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from parley.module import Module
from parley.modules.privacy import PrivacyModule
from parley.router import Routed
from parley.sessions import Session
from parley.xmpp.jid import JID
from parley.xmpp.stanza import NS_CLIENT, error_reply, iq_result, local_name, q

NS_INVISIBLE = "urn:xmpp:invisible:0"
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


@dataclass
class Invisibility:
    probe: bool
    probes_held: bool = False  # a probe was refused while invisible


class InvisibleModule(Module):
    name = "invisible"
    server_features = (NS_INVISIBLE,)

    async def start(self) -> None:
        self.hooks.add(f"iq-set/bare/{NS_INVISIBLE}", self._command)
        # After the policy and privacy filters, so only presence that goes out is noted.
        self.hooks.add("stanza/in", self._note_directed, priority=10)
        self.hooks.add("route/remote", self._note_directed, priority=10)

    @property
    def privacy(self) -> PrivacyModule:
        mod = self.server.modules["privacy"]
        assert isinstance(mod, PrivacyModule)
        return mod

    @staticmethod
    def state(session: Session | None) -> Invisibility | None:
        found = getattr(session, "invisible", None)
        return found if isinstance(found, Invisibility) else None

    async def may_send_presence(self, frm: JID, to: JID, probe: bool = False) -> bool:
        """An invisible session's broadcasts reach only the user's own resources; its
        probes go out only when it asked for them."""
        state = self.state(self.router.sessions.get(frm)) if frm.resource is not None else None
        if state is None:
            return True
        if probe:
            if not state.probe:
                state.probes_held = True
            return state.probe
        return to.bare == frm.bare

    async def _command(self, ctx: Routed) -> bool:
        session = ctx.origin
        if session is None or str(ctx.to) != session.bare:
            self.router.bounce(ctx.stanza, "forbidden", "invisibility is set by the session itself", ctx.origin)
            return True
        el = ctx.stanza[0]
        what = local_name(el.tag)
        if what == "invisible":
            probe = BOOLEANS.get(el.get("probe", "true"))
            if probe is None:
                session.send(_answer(error_reply(ctx.stanza, "bad-request", "probe is true or false")))
                return True
            await self._hide(session, probe)
        elif what == "visible":
            await self._show(session)
        else:
            session.send(_answer(error_reply(ctx.stanza, "bad-request", "expected <invisible/> or <visible/>")))
            return True
        session.send(_answer(iq_result(ctx.stanza)))
        return True

    async def _hide(self, session: Session, probe: bool) -> None:
        state = self.state(session)
        if state is not None:
            state.probe = probe
            return

        def swap() -> None:
            session.invisible = Invisibility(probe)  # type: ignore[attr-defined]

        # Everyone who could see the session gets unavailable from it ...
        await self.privacy.transition(session.bare, swap)
        # ... including those it had sent directed presence to, as if it had gone offline.
        directed: set[str] = getattr(session, "directed", set())
        if session.available:
            for target in sorted(directed):
                await self.router.route(_unavailable(str(session.jid), target))
        directed.clear()

    async def _show(self, session: Session) -> None:
        state = self.state(session)
        if state is None:
            return

        def swap() -> None:
            session.invisible = None  # type: ignore[attr-defined]

        await self.privacy.transition(session.bare, swap)
        if state.probes_held and session.available:
            presence = self.server.modules["presence"]
            roster = await presence.roster.get(session.bare)  # type: ignore[attr-defined]
            for contact in roster.subscriptions():
                await presence.send_presence_of(contact, session.jid, probe=True)  # type: ignore[attr-defined]

    async def _note_directed(self, ctx: Routed) -> bool:
        # The presence module remembers directed presence to non-subscribers only; an
        # invisible session's subscribers get no broadcast either, so note them all.
        session = ctx.origin
        if session is None or ctx.kind != "presence" or self.state(session) is None:
            return False
        if str(ctx.to.bare) == session.bare:
            return False
        directed: set[str] | None = getattr(session, "directed", None)
        if directed is not None:
            if ctx.type == "available":
                directed.add(str(ctx.to))
            elif ctx.type == "unavailable":
                directed.discard(str(ctx.to))
        return False


def _unavailable(frm: str, to: str) -> Element:
    return Element(q(NS_CLIENT, "presence"), {"from": frm, "to": to, "type": "unavailable"})


def _answer(stanza: Element) -> Element:
    # Answers to the user's own account carry no 'from', as for the roster and blocking.
    stanza.attrib.pop("from", None)
    return stanza


module_class = InvisibleModule
