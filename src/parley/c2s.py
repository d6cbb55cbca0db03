"""Client-to-server connections (RFC 6120): the asyncio transport around the sans-IO parser
and SASL mechanisms. It negotiates TLS, authentication and resource binding, then hands
every stanza to the router.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, SubElement

from parley.xmpp.jid import JID, InvalidJID
from parley.xmpp.sasl import PlainServer, SASLFailure, ScramServer, verify_plain
from parley.xmpp.stanza import (
    NS_CLIENT,
    NS_STREAMS,
    XML_LANG,
    error_reply,
    iq_result,
    local_name,
    namespace,
    q,
)
from parley.xmpp.xmlstream import (
    STREAM_CLOSE,
    Limits,
    StanzaEvent,
    StreamClose,
    StreamError,
    StreamOpen,
    XMLStreamParser,
    serialize,
    stream_error,
    stream_header,
)

if TYPE_CHECKING:
    from parley.server import Server

log = logging.getLogger("parley.c2s")

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"

SCRAM_MECHS = {
    "SCRAM-SHA-256-PLUS": ("SHA-256", True),
    "SCRAM-SHA-1-PLUS": ("SHA-1", True),
    "SCRAM-SHA-256": ("SHA-256", False),
    "SCRAM-SHA-1": ("SHA-1", False),
}
MAX_AUTH_ATTEMPTS = 3
# Queue depth at which reading from a client pauses until the server catches up.
QUEUE_HIGH = 256
QUEUE_LOW = 32


class C2SConnection(asyncio.Protocol):
    def __init__(self, server: Server, direct_tls: bool):
        self.server = server
        self.cfg = server.config.c2s
        self.direct_tls = direct_tls
        self.tls = direct_tls
        self.transport: asyncio.Transport | None = None
        self.parser = XMLStreamParser(
            Limits(max_stanza_bytes=self.cfg.max_stanza_bytes, max_depth=self.cfg.max_depth,
                   max_attributes=self.cfg.max_attributes)
        )
        # Parsed events wait here for the worker, a task that exists only while there is
        # work: an idle connection holds no task.
        self.pending: deque[StreamOpen | StanzaEvent | StreamClose | None] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.paused = False
        self.closed = False
        self.stream_open = False
        self.stream_domain = server.domain
        self.lang = "en"
        self.authenticated = False
        self.username: str | None = None
        self.auth_attempts = 0
        self.sasl: ScramServer | None = None
        self.sasl_mech: str | None = None
        self.sasl_user: JID | None = None
        self.bound = False
        self.peer = ""
        self.last_rx = 0.0
        self.auth_timer: asyncio.TimerHandle | None = None
        # Session attributes (parley.sessions.Session)
        self.jid: JID = JID(None, server.domain, None)
        self.bare = ""
        self.available = False
        self.priority = 0
        self.presence: Element | None = None
        self.interested = False
        self.login_at = 0.0
        self.pending_pings: dict[str, float] = {}
        self.directed: set[str] = set()
        # Set by the csi and sm modules for a session that uses them.
        self.csi: Any = None
        self.sm: Any = None

    # --- transport events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have its methods.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self.last_rx = loop.time()
        self.auth_timer = loop.call_later(self.cfg.auth_timeout, self._auth_timeout)
        self.server.c2s_connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = asyncio.get_running_loop().time()
        try:
            events = self.parser.feed(data)
        except StreamError as e:
            self.close(e.condition, e.text)
            return
        for ev in events:
            if isinstance(ev, StanzaEvent) and ev.element.tag == f"{{{NS_TLS}}}starttls":
                # Nothing more may be read as XML: the next bytes are the TLS handshake.
                assert self.transport is not None
                self.transport.pause_reading()
            self.pending.append(ev)
        if events and self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        if not self.paused and len(self.pending) > QUEUE_HIGH and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.pending.append(None)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.c2s_connections.discard(self)
        if self.auth_timer:
            self.auth_timer.cancel()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        self._session_ends(clean=False)

    def _session_ends(self, clean: bool) -> None:
        """The connection is gone: end the session, or keep it for resumption (XEP-0198)."""
        if not self.bound:
            return
        if self.csi is not None and self.sm is not None:
            # What client state indication held back must be counted before the session
            # waits for resumption, so that a resumed session gets it.
            self.csi.flush()
        if not clean and self.sm is not None and self.sm.hibernate():
            return
        self.bound = False
        asyncio.get_running_loop().create_task(self.server.session_closed(self))

    # --- output -------------------------------------------------------------------------
    # Every stanza to the client passes _out: client state indication may hold it back
    # (self.csi), stream management counts and keeps it until acknowledged (self.sm).

    def send(self, stanza: Element) -> None:
        if not self.closed or self.sm is not None:
            self._out(serialize(stanza, NS_CLIENT), stanza)

    def send_bytes(self, data: bytes, stanza: Element | None = None) -> None:
        """Pre-serialised bytes (fan-out); `stanza` is given when it must survive a lost
        connection (messages), so that stream management can route it elsewhere."""
        if not self.closed or self.sm is not None:
            self._out(data, stanza)

    def _out(self, data: bytes, stanza: Element | None) -> None:
        if self.csi is not None and self.csi.offer(data, stanza):
            return
        self.write_stanza(data, stanza)

    def write_stanza(self, data: bytes, stanza: Element | None = None) -> None:
        if self.sm is not None:
            self.sm.sent(data, stanza)
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        if self.closed or self.transport is None:
            if self.sm is not None and self.sm.hibernating and condition != "connection-timeout":
                # A session waiting for resumption that the server ends (account disabled,
                # deleted, shutdown) ends now.
                self.sm.end_now()
            return
        out = b""
        if not self.stream_open:
            out += stream_header(from_=self.stream_domain, to=None, id_=secrets.token_hex(8))
            self.stream_open = True
        if condition:
            log.info("stream error %s to %s (%s): %s", condition, self.peer, self.bare or "-", text or "")
            out += stream_error(condition, text)
        out += STREAM_CLOSE
        self.transport.write(out)
        self.closed = True
        self.transport.close()
        # A stream the server ends on purpose is not resumable; a dead network is.
        lost = condition == "connection-timeout"
        if self.sm is not None and not lost:
            self.sm.resumable = False
        self._session_ends(clean=not lost)

    def _auth_timeout(self) -> None:
        if not self.bound:
            self.close("connection-timeout", "authentication took too long")

    # --- the negotiation, in order --------------------------------------------------------

    async def _work(self) -> None:
        try:
            while self.pending and not self.closed:
                ev = self.pending.popleft()
                if self.paused and len(self.pending) < QUEUE_LOW and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                if ev is None or isinstance(ev, StreamClose):
                    self.close()
                    return
                if isinstance(ev, StreamOpen):
                    self._on_stream_open(ev)
                else:
                    await self._on_element(ev.element)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error on connection %s", self.peer)
            self.close("internal-server-error")
        finally:
            self.worker = None

    def _on_stream_open(self, ev: StreamOpen) -> None:
        to = ev.attrs.get("to", "")
        self.lang = ev.attrs.get(XML_LANG) or "en"
        header = stream_header(from_=to if to in self.server.hosts else self.server.domain, to=None,
                               id_=secrets.token_hex(8), lang=self.lang)
        assert self.transport is not None
        self.transport.write(header)
        self.stream_open = True
        if ev.default_ns != NS_CLIENT:
            self.close("invalid-namespace", f"this port serves {NS_CLIENT}")
            return
        if not ev.attrs.get("version", "").startswith("1."):
            self.close("unsupported-version", "XMPP 1.0 streams only")
            return
        if to not in self.server.hosts:
            self.close("host-unknown", f"{to or '(no to)'} is not served here")
            return
        if self.authenticated and to != self.stream_domain:
            self.close("invalid-from", "the domain changed after authentication")
            return
        self.stream_domain = to
        self.transport.write(serialize(self._features(), NS_CLIENT))

    def _features(self) -> Element:
        feats = Element(q(NS_STREAMS, "features"))
        if not self.tls and self.server.tls_context is not None:
            st = SubElement(feats, q(NS_TLS, "starttls"))
            if self.cfg.require_tls:
                SubElement(st, q(NS_TLS, "required"))
        if not self.authenticated:
            if self.tls or not self.cfg.require_tls:
                mechs = SubElement(feats, q(NS_SASL, "mechanisms"))
                for name, (_, plus) in SCRAM_MECHS.items():
                    if plus and (not self.tls or self.server.cb_data is None):
                        continue
                    SubElement(mechs, q(NS_SASL, "mechanism")).text = name
                if self.tls:
                    SubElement(mechs, q(NS_SASL, "mechanism")).text = "PLAIN"
                    cb = SubElement(feats, q(NS_SASL_CB, "sasl-channel-binding"))
                    SubElement(cb, q(NS_SASL_CB, "channel-binding"), {"type": "tls-server-end-point"})
            if self.tls or not self.cfg.require_tls:
                feats.extend(self.server.preauth_features)
        else:
            SubElement(feats, q(NS_BIND, "bind"))
            SubElement(SubElement(feats, q(NS_SESSION, "session")), q(NS_SESSION, "optional"))
            for extra in self.server.stream_features:
                feats.append(extra)
        return feats

    async def _on_element(self, el: Element) -> None:
        ns = namespace(el.tag)
        if self.bound:
            await self._on_stanza(el)
            return
        if ns == NS_TLS and local_name(el.tag) == "starttls":
            await self._starttls()
        elif ns == NS_SASL:
            await self._sasl(el)
        elif not self.authenticated:
            handler = self._preauth_handler(el)
            if handler is None:
                self.close("not-authorized", "authenticate first")
            else:
                await handler(el, self)
        elif ns == NS_CLIENT and local_name(el.tag) == "iq":
            await self._pre_bind_iq(el)
        elif await self.server.signals_stream.fire(el, self):
            return  # e.g. stream resumption, which comes instead of binding
        else:
            self.close("not-authorized", "bind a resource first")

    def _preauth_handler(self, el: Element) -> Any:
        if el.tag != q(NS_CLIENT, "iq") or len(el) != 1:
            return None
        if not self.tls and self.cfg.require_tls:
            return None
        return self.server.preauth_iq.get(namespace(el[0].tag))

    async def _starttls(self) -> None:
        ctx = self.server.tls_context
        if self.tls or ctx is None:
            self.close("policy-violation", "TLS is already in place" if self.tls else "TLS is not available")
            return
        assert self.transport is not None
        self.transport.write(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, ctx, server_side=True,
                                       ssl_handshake_timeout=self.cfg.auth_timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as e:
            log.info("TLS handshake with %s failed: %s", self.peer, e)
            self.closed = True
            self.transport.close()
            return
        if new is None:
            self.closed = True
            return
        self.transport = new
        self.tls = True
        self.stream_open = False
        self.parser.reset()

    # --- SASL ---------------------------------------------------------------------------

    def _sasl_failure(self, condition: str, text: str | None = None) -> None:
        self.sasl = None
        self.sasl_mech = None
        out = f"<failure xmlns='{NS_SASL}'><{condition}/>"
        if text:
            out += f"<text xml:lang='en'>{_escape(text)}</text>"
        out += "</failure>"
        assert self.transport is not None
        self.transport.write(out.encode())
        self.auth_attempts += 1
        if self.auth_attempts >= MAX_AUTH_ATTEMPTS:
            self.close("policy-violation", "too many failed authentication attempts")

    def _sasl_send(self, name: str, data: bytes | None) -> None:
        payload = base64.b64encode(data).decode() if data else ("=" if data is not None and name == "success" else "")
        assert self.transport is not None
        self.transport.write(f"<{name} xmlns='{NS_SASL}'>{payload}</{name}>".encode())

    async def _sasl(self, el: Element) -> None:
        name = local_name(el.tag)
        if self.authenticated:
            self.close("policy-violation", "already authenticated")
            return
        if not self.tls and self.cfg.require_tls:
            self._sasl_failure("encryption-required", "use STARTTLS first")
            return
        if name == "abort":
            self._sasl_failure("aborted")
            return
        try:
            data = _b64(el.text)
        except ValueError:
            self._sasl_failure("incorrect-encoding", "not base64")
            return
        try:
            if name == "auth":
                await self._sasl_start(el.get("mechanism", ""), data)
            elif name == "response" and self.sasl is not None:
                await self._sasl_continue(data)
            else:
                self._sasl_failure("malformed-request", f"unexpected <{name}/>")
        except SASLFailure as f:
            self._sasl_failure(f.condition, f.text)

    async def _sasl_start(self, mech: str, data: bytes | None) -> None:
        if mech == "PLAIN":
            if not self.tls:
                raise SASLFailure("encryption-required", "PLAIN is only allowed inside TLS")
            if data is None:
                self._sasl_send("challenge", b"")
                self.sasl_mech = "PLAIN"
                return
            await self._plain(data)
            return
        if mech not in SCRAM_MECHS or (SCRAM_MECHS[mech][1] and (not self.tls or self.server.cb_data is None)):
            raise SASLFailure("invalid-mechanism", f"{mech} is not offered")
        hash_name, plus = SCRAM_MECHS[mech]
        cb = self.server.cb_data if self.tls else None
        self.sasl = ScramServer(hash_name, plus=plus, cb_data=cb, cb_available=cb is not None,
                                secret=self.server.sasl_secret)
        self.sasl_mech = mech
        if data is None:
            self._sasl_send("challenge", b"")
            return
        await self._scram_first(data)

    async def _sasl_continue(self, data: bytes | None) -> None:
        if self.sasl_mech == "PLAIN":
            await self._plain(data or b"")
            return
        assert self.sasl is not None
        if self.sasl_user is None:
            await self._scram_first(data or b"")
            return
        final = self.sasl.client_final(data or b"")
        await self._authenticated(self.sasl_user, final)

    async def _scram_first(self, data: bytes) -> None:
        assert self.sasl is not None and self.sasl_mech is not None
        username = self.sasl.client_first(data)
        user = self._user_jid(username)
        hash_name = SCRAM_MECHS[self.sasl_mech][0]
        found = await self.server.repos.users.credentials(str(user), hash_name) if user else None
        if found is not None and not found[0]:
            raise SASLFailure("account-disabled", "this account is not enabled for IM and Presence")
        self._check_authzid(self.sasl.authzid, user)
        self.sasl_user = user if found else None
        challenge = self.sasl.server_first(found[1] if found else None)
        if self.sasl_user is None:
            # The final step fails for unknown users; keep the user JID out of reach.
            self.sasl_user = JID(None, self.stream_domain, None)
        self._sasl_send("challenge", challenge)

    async def _plain(self, data: bytes) -> None:
        authzid, authcid, password = PlainServer.parse(data)
        user = self._user_jid(authcid)
        found = await self.server.repos.users.credentials(str(user), "SHA-256") if user else None
        if found is None:
            raise SASLFailure("not-authorized", "wrong user name or password")
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_plain, password, found[1], "SHA-256")
        if not ok:
            raise SASLFailure("not-authorized", "wrong user name or password")
        if not found[0]:
            raise SASLFailure("account-disabled", "this account is not enabled for IM and Presence")
        self._check_authzid(authzid, user)
        assert user is not None
        await self._authenticated(user, None)

    def _check_authzid(self, authzid: str | None, user: JID | None) -> None:
        if not authzid or user is None:
            return
        try:
            if JID.parse(authzid) != user:
                raise SASLFailure("invalid-authzid", "you may only act as yourself")
        except InvalidJID:
            raise SASLFailure("invalid-authzid", "not a valid JID") from None

    def _user_jid(self, username: str) -> JID | None:
        try:
            return JID.make(username, self.stream_domain)
        except InvalidJID:
            return None

    async def _authenticated(self, user: JID, additional: bytes | None) -> None:
        if user.local is None:
            raise SASLFailure("not-authorized", "wrong user name or password")
        self.sasl = None
        self.authenticated = True
        self.username = user.local
        self.jid = user
        self.bare = str(user)
        self.stream_open = False
        # The client's next bytes open a new stream.
        self.parser.reset()
        self._sasl_send("success", additional)
        log.info("%s authenticated as %s", self.peer, user)

    # --- resource binding -----------------------------------------------------------------

    async def _pre_bind_iq(self, iq: Element) -> None:
        payload = iq.find(q(NS_BIND, "bind"))
        if iq.get("type") != "set" or payload is None:
            sess = iq.find(q(NS_SESSION, "session"))
            if sess is not None:
                self.send(iq_result(iq))
                return
            self.send(error_reply(iq, "not-authorized", "bind a resource first"))
            return
        res_el = payload.find(q(NS_BIND, "resource"))
        wanted = (res_el.text or "").strip() if res_el is not None else ""
        try:
            full = JID.make(self.username, self.stream_domain, wanted or _new_resource())
        except InvalidJID as e:
            self.send(error_reply(iq, "bad-request", f"resource not allowed: {e}"))
            return
        registry = self.server.router.sessions
        existing = registry.get(full)
        cap = self.server.config.sessions.max_per_user
        if cap and existing is None and registry.resources(self.bare) >= cap:
            self.send(error_reply(iq, "policy-violation",
                                  f"at most {cap} concurrent sessions per user", type_="cancel"))
            return
        refused = await self.server.signals.emit("session-binding", self, full)
        for reason in refused:
            if reason:
                self.send(error_reply(iq, "not-allowed", reason, type_="cancel"))
                return
        self.jid = full
        old = registry.add(self)
        if old is not None:
            # The newest session wins the resource; the old one is told why it goes.
            old.bound = False  # type: ignore[attr-defined]
            old.close("conflict", "replaced by a new session with the same resource")
            await self.server.signals.emit("session-closed", old)
        self.bound = True
        if self.auth_timer:
            self.auth_timer.cancel()
            self.auth_timer = None
        result = iq_result(iq)
        result.attrib.pop("from", None)
        result.attrib.pop("to", None)
        bind = SubElement(result, q(NS_BIND, "bind"))
        SubElement(bind, q(NS_BIND, "jid")).text = str(full)
        self.send(result)
        log.info("%s bound %s", self.peer, full)
        await self.server.signals.emit("session-bound", self)

    # --- stanzas of a bound session ---------------------------------------------------------

    async def _on_stanza(self, el: Element) -> None:
        kind = local_name(el.tag)
        if namespace(el.tag) != NS_CLIENT or kind not in ("message", "presence", "iq"):
            if namespace(el.tag) == NS_SESSION or (kind == "iq" and el.find(q(NS_BIND, "bind")) is not None):
                self.send(error_reply(el, "not-allowed", "already bound"))
                return
            if await self.server.signals_stream.fire(el, self):
                return
            self.close("unsupported-stanza-type", f"{el.tag} is not a stanza")
            return
        if self.sm is not None:
            self.sm.received()
        el.set("from", str(self.jid))
        if kind == "iq" and el.get("type") in ("result", "error") and el.get("id") in self.pending_pings:
            del self.pending_pings[el.get("id", "")]
            return
        if kind == "presence" and el.get("to") is None:
            await self.server.presence_broadcast(el, self)
            return
        await self.server.router.route(el, self)


def _b64(text: str | None) -> bytes | None:
    """Decode SASL data; None for no data at all, b'' for the explicit empty '='."""
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _new_resource() -> str:
    return "parley-" + secrets.token_hex(6)
