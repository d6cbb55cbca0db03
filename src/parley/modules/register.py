"""In-band registration (XEP-0077).

With ``[registration] enabled`` a client may create an account before it authenticates
(the ``iq-register`` stream feature), and a signed-in user may cancel their account. With
it off (the default) nothing is advertised and a registration attempt gets
``service-unavailable``. Changing one's own password works either way: it is the standard
way for clients to offer "change password".
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from parley.accounts import AccountError, create_user, set_password
from parley.module import Module
from parley.router import Routed
from parley.storage.repos import NoSuchUser, UserExists
from parley.xmpp.dataforms import Field, build_form, submitted
from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.stanza import child, error_reply, iq_result, make, q

if TYPE_CHECKING:
    from parley.c2s import C2SConnection
    from parley.server import Server

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"


class RegisterModule(Module):
    name = "register"
    server_features = (NS_REGISTER,)

    def __init__(self, server: Server):
        super().__init__(server)
        self.enabled = self.config.registration.enabled
        self.feature = make(NS_FEATURE, "register")
        # One account per connection: a client that registered signs in next, and a
        # script looping on one stream cannot mass-create accounts.
        self._registered: weakref.WeakSet[C2SConnection] = weakref.WeakSet()

    async def start(self) -> None:
        if self.enabled:
            self.server.preauth_features.append(self.feature)
        # Registered even when disabled, so the client hears why instead of losing its stream.
        self.server.preauth_iq[NS_REGISTER] = self._preauth
        for target in ("host", "bare"):
            self.hooks.add(f"iq-get/{target}/{NS_REGISTER}", self._get)
            self.hooks.add(f"iq-set/{target}/{NS_REGISTER}", self._set)

    async def stop(self) -> None:
        if self.feature in self.server.preauth_features:
            self.server.preauth_features.remove(self.feature)
        self.server.preauth_iq.pop(NS_REGISTER, None)

    # --- before authentication ------------------------------------------------------------

    def _form(self, instructions: str) -> Element:
        query = make(NS_REGISTER, "query")
        child(query, NS_REGISTER, "instructions").text = instructions
        child(query, NS_REGISTER, "username")
        child(query, NS_REGISTER, "password")
        query.append(build_form("form", (
            Field("username", "text-single", "User name", required=True),
            Field("password", "text-private", "Password", required=True),
        ), form_type=NS_REGISTER, title="Create an account", instructions=instructions))
        return query

    async def _preauth(self, iq: Element, conn: C2SConnection) -> None:
        type_ = iq.get("type")
        if type_ in ("result", "error"):
            return  # nothing was asked; errors are never answered with errors
        if not self.enabled:
            conn.send(error_reply(iq, "service-unavailable", "in-band registration is disabled"))
            return
        if type_ == "get":
            conn.send(iq_result(iq, self._form("Choose a user name and password.")))
            return
        if type_ != "set":
            conn.send(error_reply(iq, "bad-request", "a registration is an iq get or set"))
            return
        query = iq[0]
        if query.find(q(NS_REGISTER, "remove")) is not None:
            conn.send(error_reply(iq, "not-authorized", "sign in to cancel an account"))
            return
        if conn in self._registered:
            conn.send(error_reply(iq, "not-allowed", "one account per connection; sign in now"))
            return
        username, password = _credentials(query)
        if not username or not password:
            conn.send(error_reply(iq, "not-acceptable", "both a user name and a password are needed"))
            return
        try:
            jid = JID.make(username, conn.stream_domain)
        except InvalidJID as e:
            conn.send(error_reply(iq, "not-acceptable", f"that user name is not allowed: {e}"))
            return
        try:
            await create_user(self.repos, jid, password)
        except UserExists:
            conn.send(error_reply(iq, "conflict", f"{jid} is taken"))
            return
        except AccountError as e:
            conn.send(error_reply(iq, "not-acceptable", str(e)))
            return
        self._registered.add(conn)
        self.log.info("%s registered %s", conn.peer, jid)
        conn.send(iq_result(iq))

    # --- signed in -------------------------------------------------------------------------

    def _own(self, ctx: Routed) -> bool:
        """The request is about the sender's own account: sent to its server or bare JID."""
        if ctx.origin is None or ctx.frm.local is None:
            return False
        if ctx.to.local is None:
            return ctx.to.domain == ctx.frm.domain
        return ctx.to == ctx.frm.bare

    async def _send(self, ctx: Routed, stanza: Element) -> None:
        assert ctx.origin is not None
        ctx.origin.send(stanza)

    async def _get(self, ctx: Routed) -> bool:
        if not self._own(ctx):
            self.router.bounce(ctx.stanza, "forbidden", "only your own account", ctx.origin)
            return True
        query = make(NS_REGISTER, "query")
        child(query, NS_REGISTER, "registered")
        child(query, NS_REGISTER, "username").text = ctx.frm.local
        child(query, NS_REGISTER, "password")
        await self._send(ctx, iq_result(ctx.stanza, query))
        return True

    async def _set(self, ctx: Routed) -> bool:
        if not self._own(ctx):
            self.router.bounce(ctx.stanza, "forbidden", "only your own account", ctx.origin)
            return True
        query = ctx.stanza[0]
        if query.find(q(NS_REGISTER, "remove")) is not None:
            await self._remove(ctx)
            return True
        username, password = _credentials(query)
        if username and username != ctx.frm.local:
            try:
                same = JID.make(username, ctx.frm.domain).local == ctx.frm.local
            except InvalidJID:
                same = False
            if not same:
                await self._send(ctx, error_reply(ctx.stanza, "not-allowed", "you can only change your own password"))
                return True
        if not password:
            await self._send(ctx, error_reply(ctx.stanza, "not-acceptable", "give the new password"))
            return True
        try:
            await set_password(self.repos, ctx.frm.bare, password)
        except (AccountError, NoSuchUser) as e:
            await self._send(ctx, error_reply(ctx.stanza, "not-acceptable", str(e)))
            return True
        self.log.info("%s changed their password", ctx.frm.bare)
        await self._send(ctx, iq_result(ctx.stanza))
        return True

    async def _remove(self, ctx: Routed) -> None:
        if not self.enabled:
            await self._send(ctx, error_reply(ctx.stanza, "not-allowed",
                                              "accounts are managed by the administrators here"))
            return
        bare = ctx.frm.bare
        try:
            await self.repos.users.delete(str(bare))
        except NoSuchUser:
            await self._send(ctx, error_reply(ctx.stanza, "item-not-found", "the account is already gone"))
            return
        self.log.info("%s cancelled their account", bare)
        await self._send(ctx, iq_result(ctx.stanza))
        await self.server.signals.emit("user-deleted", str(bare))
        # XEP-0077 3.2: every stream of the cancelled account ends.
        for session in self.router.sessions.of(str(bare)):
            session.close("not-authorized", "the account was cancelled")


def _credentials(query: Element) -> tuple[str, str]:
    """User name and password from the plain fields or from the XEP-0004 form."""
    values = submitted(query)
    if values is not None:
        return (values.get("username") or [""])[0].strip(), (values.get("password") or [""])[0]
    return (query.findtext(q(NS_REGISTER, "username")) or "").strip(), query.findtext(q(NS_REGISTER, "password")) or ""


module_class = RegisterModule
