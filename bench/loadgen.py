"""A lean XMPP load generator: raw asyncio (uvloop) client connections, pre-serialised
stanzas and a byte-level scanner instead of an XML parser.

The hot path never builds an element tree: a benchmark stanza carries its sequence number
and send time in a body (or status) text ``NONCE.SEQ.MICROS`` that a compiled regular
expression finds in the received bytes, so one core of client keeps up with a server core.
Sign-in uses the same byte patterns on a small per-connection buffer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import socket
import ssl
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

__all__ = [
    "Client",
    "LoginError",
    "LoginResult",
    "MessageTracker",
    "PresenceTracker",
    "RoomMessageTracker",
    "RoomPresenceSink",
    "Target",
    "iq_pattern",
    "login_many",
    "logout_all",
    "muc_instant_room",
    "muc_join",
    "muc_leave",
    "now_us",
    "percentile",
]

_T0 = time.perf_counter_ns()


def now_us() -> int:
    """Microseconds on the process's monotonic clock; small numbers keep stanzas short."""
    return (time.perf_counter_ns() - _T0) // 1000


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    domain: str


class LoginError(Exception):
    pass


@dataclass
class LoginResult:
    ok: bool
    seconds: float
    roster_items: int = -1
    error: str = ""
    cipher: str = ""


# --- byte patterns ---------------------------------------------------------------------

_FEATURES = re.compile(rb"<(?:\w+:)?features\b[^>]*?(?:/>|>.*?</(?:\w+:)?features>)", re.S)
_PROCEED = re.compile(rb"<(proceed|failure)\b[^>]*?(?:/>|>.*?</\1>)", re.S)
_SASL = re.compile(rb"<(challenge|success|failure)\b[^>]*?(?:/>|>(.*?)</\1>)", re.S)
_MECH = re.compile(rb"<mechanism>([^<]+)</mechanism>")
_ITEM = re.compile(rb"<item\b")
_JID = re.compile(rb"<jid>([^<]+)</jid>")
_TYPE = re.compile(rb"\btype=['\"](\w+)['\"]")
# A peer's end of stream or stream error; either ends every wait on the connection.
_STREAM_END = (b"</stream:stream>", b"stream:error")


def _iq_pattern(iq_id: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"<iq\b[^>]*?\bid=['\"]" + iq_id + rb"['\"][^>]*?(?:/>|>.*?</iq>)", re.S)


_IQ_BIND = _iq_pattern(b"lg-b")
_IQ_ROSTER = _iq_pattern(b"lg-r")
_IQ_PING = _iq_pattern(b"lg-p")

_NS_SASL = b"urn:ietf:params:xml:ns:xmpp-sasl"
_STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
_BIND = (b"<iq type='set' id='lg-b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
         b"<resource>lg</resource></bind></iq>")
# ver='' says "I support versioning but have no copy": every server sends the full roster.
_ROSTER = b"<iq type='get' id='lg-r'><query xmlns='jabber:iq:roster' ver=''/></iq>"
_PRESENCE = b"<presence/>"
_CLOSE = b"</stream:stream>"


def _header(domain: str) -> bytes:
    return (f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>").encode()


def _ping(domain: str) -> bytes:
    return f"<iq type='get' id='lg-p' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>".encode()


def client_tls_context() -> ssl.SSLContext:
    # Every server presents the same self-signed certificate; identity is not under test.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --- SCRAM ------------------------------------------------------------------------------

# SaltedPassword is the one expensive step of a SCRAM login (PBKDF2); real clients keep it,
# and so does the load generator, so that the client core spends its time on the wire.
_SCRAM_CACHE: dict[tuple[str, bytes, int], tuple[bytes, bytes, bytes]] = {}


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    key = (password, salt, iterations)
    hit = _SCRAM_CACHE.get(key)
    if hit is None:
        salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        hit = (client_key, hashlib.sha1(client_key).digest(), hmac.digest(salted, b"Server Key", "sha1"))
        _SCRAM_CACHE[key] = hit
    return hit


def _scram_attrs(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for part in data.split(b","):
        if len(part) >= 2 and part[1:2] == b"=":
            out[part[:1]] = part[2:]
    return out


# --- one connection ---------------------------------------------------------------------

class Sink:
    """Receives every byte of a signed-in connection while a scenario runs."""

    def feed(self, conn: Client, data: bytes) -> None:
        raise NotImplementedError


class Client(asyncio.Protocol):
    """One XMPP client session for user ``u<idx>``."""

    def __init__(self, idx: int, user: str, password: str, target: Target):
        self.idx = idx
        self.user = user
        self.password = password
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: tuple[re.Pattern[bytes], asyncio.Future[re.Match[bytes]]] | None = None
        self.sink: Sink | None = None
        self.tail = b""
        self.out: list[bytes] = []
        self.dead = ""
        self.online = False
        self.jid = b""
        self.cipher = ""

    # transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.feed(self, data)
            return
        if self.online and self.waiter is None:
            # Signed in and between scenarios: contacts' presence and the like are not
            # kept, so that 10,000 idle sessions do not grow buffers.
            return
        self.buf += data
        if self.waiter is not None:
            pat, fut = self.waiter
            m = pat.search(self.buf)
            if m is not None:
                self.waiter = None
                if not fut.done():
                    fut.set_result(m)
                return
            if any(marker in self.buf for marker in _STREAM_END):
                self._fail("stream closed by server: " + self.buf[-300:].decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost ({exc})" if exc else "connection closed by server")

    def eof_received(self) -> bool | None:
        return None

    def _fail(self, why: str) -> None:
        if not self.dead:
            self.dead = why
        self.online = False
        if self.waiter is not None:
            _, fut = self.waiter
            self.waiter = None
            if not fut.done():
                fut.set_exception(LoginError(why))


    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.dead:
            self.transport.write(data)

    async def expect(self, pat: re.Pattern[bytes]) -> re.Match[bytes]:
        if self.dead:
            raise LoginError(self.dead)
        m = pat.search(self.buf)
        if m is None:
            fut: asyncio.Future[re.Match[bytes]] = asyncio.get_running_loop().create_future()
            self.waiter = (pat, fut)
            m = await fut
        self.buf = self.buf[m.end():]
        return m

    # sign-in

    async def login(self, mechanism: str, tls: ssl.SSLContext | None) -> LoginResult:
        """Connect, (STARTTLS,) authenticate, bind, fetch the roster and send initial
        presence; done when the server has answered a ping sent after the presence."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        items = -1
        try:
            await loop.create_connection(lambda: self, self.target.host, self.target.port)
            assert self.transport is not None
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            header = _header(self.target.domain)
            self.write(header)
            feats = await self.expect(_FEATURES)
            if tls is not None:
                if b"starttls" not in feats.group(0):
                    raise LoginError("no STARTTLS offered")
                self.write(_STARTTLS)
                m = await self.expect(_PROCEED)
                if m.group(1) != b"proceed":
                    raise LoginError("STARTTLS refused")
                new = await loop.start_tls(self.transport, self, tls, server_hostname=self.target.domain)
                if new is None:
                    raise LoginError("TLS handshake failed")
                self.transport = new
                ssl_obj = new.get_extra_info("ssl_object")
                if ssl_obj is not None:
                    self.cipher = f"{ssl_obj.version()} {ssl_obj.cipher()[0]}"
                self.buf = b""
                self.write(header)
                feats = await self.expect(_FEATURES)
            mechs = set(_MECH.findall(feats.group(0)))
            if mechanism.encode() not in mechs:
                raise LoginError(f"{mechanism} not offered (offered: {b' '.join(sorted(mechs)).decode()})")
            if mechanism == "PLAIN":
                await self._plain()
            else:
                await self._scram()
            self.buf = b""
            self.write(header)
            await self.expect(_FEATURES)
            self.write(_BIND)
            m = await self.expect(_IQ_BIND)
            if _type_of(m.group(0)) != b"result":
                raise LoginError("bind refused: " + m.group(0).decode(errors="replace"))
            jm = _JID.search(m.group(0))
            self.jid = jm.group(1) if jm else b""
            self.write(_ROSTER)
            m = await self.expect(_IQ_ROSTER)
            if _type_of(m.group(0)) != b"result":
                raise LoginError("roster get refused: " + m.group(0).decode(errors="replace"))
            items = len(_ITEM.findall(m.group(0)))
            self.write(_PRESENCE + _ping(self.target.domain))
            m = await self.expect(_IQ_PING)
            if _type_of(m.group(0)) != b"result":
                raise LoginError("ping refused: " + m.group(0).decode(errors="replace"))
        except (LoginError, OSError, ssl.SSLError) as e:
            self.close()
            return LoginResult(False, time.perf_counter() - t0, items, f"{type(e).__name__}: {e}")
        self.online = True
        self.buf = b""
        return LoginResult(True, time.perf_counter() - t0, items, cipher=self.cipher)

    async def _plain(self) -> None:
        token = base64.b64encode(b"\0" + self.user.encode() + b"\0" + self.password.encode())
        self.write(b"<auth xmlns='" + _NS_SASL + b"' mechanism='PLAIN'>" + token + b"</auth>")
        m = await self.expect(_SASL)
        if m.group(1) != b"success":
            raise LoginError("PLAIN refused: " + m.group(0).decode(errors="replace"))

    async def _scram(self) -> None:
        cnonce = base64.b64encode(secrets.token_bytes(18))
        gs2 = b"n,,"
        first_bare = b"n=" + self.user.encode() + b",r=" + cnonce
        self.write(b"<auth xmlns='" + _NS_SASL + b"' mechanism='SCRAM-SHA-1'>"
                   + base64.b64encode(gs2 + first_bare) + b"</auth>")
        m = await self.expect(_SASL)
        if m.group(1) != b"challenge":
            raise LoginError("SCRAM refused: " + m.group(0).decode(errors="replace"))
        server_first = base64.b64decode(m.group(2) or b"")
        attrs = _scram_attrs(server_first)
        nonce = attrs.get(b"r", b"")
        if not nonce.startswith(cnonce):
            raise LoginError("server nonce does not extend the client's")
        salt = base64.b64decode(attrs.get(b"s", b""))
        client_key, stored_key, server_key = _scram_keys(self.password, salt, int(attrs.get(b"i", b"0")))
        without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + nonce
        auth_message = first_bare + b"," + server_first + b"," + without_proof
        signature = hmac.digest(stored_key, auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.write(b"<response xmlns='" + _NS_SASL + b"'>"
                   + base64.b64encode(without_proof + b",p=" + base64.b64encode(proof)) + b"</response>")
        m = await self.expect(_SASL)
        if m.group(1) == b"challenge":
            # RFC 6120 allows the server-final message as a challenge followed by success.
            final = base64.b64decode(m.group(2) or b"")
            self.write(b"<response xmlns='" + _NS_SASL + b"'/>")
            m = await self.expect(_SASL)
        else:
            final = base64.b64decode(m.group(2) or b"") if m.group(2) else b""
        if m.group(1) != b"success":
            raise LoginError("SCRAM proof refused: " + m.group(0).decode(errors="replace"))
        expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha1"))
        if _scram_attrs(final).get(b"v") != expected:
            raise LoginError("server signature does not verify")

    def close(self) -> None:
        self.online = False
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(_CLOSE)
            except (RuntimeError, OSError):
                pass
            self.transport.close()


def _type_of(tag_and_body: bytes) -> bytes:
    head = tag_and_body.split(b">", 1)[0]
    m = _TYPE.search(head)
    return m.group(1) if m else b""


# --- many connections -------------------------------------------------------------------

@dataclass
class StormResult:
    clients: list[Client]
    results: list[LoginResult]
    wall: float


async def login_many(users: Sequence[tuple[int, str, str]], target: Target, mechanism: str,
                     tls: ssl.SSLContext | None, concurrency: int, deadline: float,
                     stall: float = 20.0) -> StormResult:
    """Sign ``users`` in with at most ``concurrency`` sign-ins in flight. Gives up on those
    unfinished after ``deadline`` seconds, or as soon as no sign-in has finished for
    ``stall`` seconds (a server that stopped answering). Failed sessions are closed."""
    sem = asyncio.Semaphore(concurrency)
    clients = [Client(i, u, p, target) for i, u, p in users]

    async def one(c: Client) -> LoginResult:
        async with sem:
            return await c.login(mechanism, tls)

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(one(c)) for c in clients]
    pending: set[asyncio.Future[LoginResult]] = set(tasks)
    last_progress = t0
    while pending:
        now = time.perf_counter()
        if now - t0 > deadline or now - last_progress > stall:
            break
        done_now, pending = await asyncio.wait(pending, timeout=1.0)
        if done_now:
            last_progress = time.perf_counter()
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    wall = time.perf_counter() - t0
    results: list[LoginResult] = []
    for c, t in zip(clients, tasks, strict=True):
        if t.done() and not t.cancelled() and t.exception() is None:
            results.append(t.result())
        else:
            c.close()
            exc = t.exception() if t.done() and not t.cancelled() else None
            results.append(LoginResult(False, wall, error=f"{type(exc).__name__}: {exc}" if exc else "timed out"))
    return StormResult(clients, results, wall)


async def logout_all(clients: Sequence[Client]) -> None:
    for c in clients:
        c.sink = None
        c.close()
    # Let the closes reach the sockets before the caller measures anything.
    await asyncio.sleep(0.2)


# --- write coalescing -------------------------------------------------------------------

class Flusher:
    """Collects the stanzas a tick produces and writes each connection's share once."""

    def __init__(self) -> None:
        self.dirty: list[Client] = []
        self.loop = asyncio.get_running_loop()

    def queue(self, c: Client, data: bytes) -> None:
        if not c.out:
            if not self.dirty:
                self.loop.call_soon(self.flush)
            self.dirty.append(c)
        c.out.append(data)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for c in dirty:
            if c.transport is not None and not c.dead:
                c.transport.write(b"".join(c.out) if len(c.out) > 1 else c.out[0])
            c.out.clear()


# --- exactly-once tracking --------------------------------------------------------------

_TAIL = 256


def _check_end(conn: Client, data: bytes) -> None:
    if b"</stream:stream>" in data or b"stream:error" in data:
        conn.dead = "stream closed by server: " + data[-300:].decode(errors="replace")
        conn.online = False


@dataclass
class MessageTracker(Sink):
    """Messages ``<body>NONCE.SEQ.MICROS</body>``: every sequence number must reach its one
    addressee exactly once. ``on_delivered`` (if set) is called with each first delivery."""

    capacity: int
    nonce: int = field(default_factory=lambda: secrets.randbelow(10**8))
    on_delivered: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.dest = array("i", bytes(4 * self.capacity))
        self.got = bytearray(self.capacity)
        self.sent_at = array("q", bytes(8 * self.capacity))
        self.recv_at = array("q", bytes(8 * self.capacity))
        self.sent = 0
        self.received = 0
        self.duplicates = 0
        self.misrouted = 0
        # Messages the server refused: an error bounce carries the body back to the sender,
        # which is a failure of its own and not a delivery to the wrong user.
        self.bounced = 0
        self.foreign = 0
        self.samples: list[dict[str, object]] = []
        self.prefix = b"%d." % self.nonce
        self.pat = re.compile(rb"<body>" + self.prefix.replace(b".", rb"\.") + rb"(\d+)\.(\d+)</body>")
        self._stanza: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def make(self, src: int, dst: int, domain: str) -> bytes:
        """The next message from ``u<src>`` to ``u<dst>``: two cached halves around the
        body text, so no per-message XML is built."""
        seq = self.sent
        if seq >= self.capacity:
            raise OverflowError("message tracker is full")
        halves = self._stanza.get((src, dst))
        if halves is None:
            halves = (f"<message to='u{dst}@{domain}' type='chat'><body>".encode() + self.prefix,
                      b"</body></message>")
            self._stanza[(src, dst)] = halves
        self.sent = seq + 1
        self.dest[seq] = dst
        t = now_us()
        self.sent_at[seq] = t
        return halves[0] + b"%d.%d" % (seq, t) + halves[1]

    def feed(self, conn: Client, data: bytes) -> None:
        buf = conn.tail + data if conn.tail else data
        now = now_us()
        last = 0
        got = self.got
        cap = self.sent
        me = conn.idx
        cb = self.on_delivered
        for m in self.pat.finditer(buf):
            last = m.end()
            seq = int(m.group(1))
            if seq >= cap:
                self.foreign += 1
                continue
            start = buf.rfind(b"<message", 0, m.start())
            head = buf[start : m.start()] if start >= 0 else b""
            if b"type='error'" in head or b'type="error"' in head:
                self.bounced += 1
                self._sample("bounced", conn, buf, m.start(), seq)
                continue
            c = got[seq]
            if c:
                self.duplicates += 1
                self._sample("duplicate", conn, buf, m.start(), seq)
                if c < 255:
                    got[seq] = c + 1
                continue
            got[seq] = 1
            self.received += 1
            self.recv_at[seq] = now
            if self.dest[seq] != me:
                self.misrouted += 1
                self._sample("misrouted", conn, buf, m.start(), seq)
            if cb is not None:
                cb(seq)
        rest = len(buf) - last
        conn.tail = buf[-_TAIL:] if rest > _TAIL else buf[last:]
        _check_end(conn, data)

    def _sample(self, what: str, conn: Client, buf: bytes, at: int, seq: int) -> None:
        """Keep the stanza around a wrong delivery (rare), so a report can say what came."""
        if len(self.samples) >= 5:
            return
        start = buf.rfind(b"<message", 0, at)
        text = buf[max(0, start) if start >= 0 else max(0, at - 300):at + 200]
        self.samples.append({"what": what, "seq": seq, "addressee": f"u{self.dest[seq]}",
                             "received_by": f"u{conn.idx}", "stanza": text.decode(errors="replace")})

    def lost(self) -> int:
        return self.sent - self.received

    def latencies_us(self, sent_from: int, sent_to: int) -> list[int]:
        """Latency of every delivered message sent in [sent_from, sent_to) (µs clock)."""
        out = []
        sa, ra, got = self.sent_at, self.recv_at, self.got
        for seq in range(self.sent):
            t = sa[seq]
            if sent_from <= t < sent_to and got[seq]:
                out.append(ra[seq] - t)
        return out

    def delivered_between(self, t_from: int, t_to: int) -> int:
        ra, got = self.recv_at, self.got
        return sum(1 for seq in range(self.sent) if got[seq] and t_from <= ra[seq] < t_to)


@dataclass
class PresenceTracker(Sink):
    """Presence ``<status>NONCE.SEQ.MICROS</status>`` from a changer to its contacts. Each
    change ``seq`` must reach each of the sender's online contacts exactly once; the
    sender's own copy (RFC 6121 lets a server echo it) is counted apart."""

    capacity: int
    contacts: Callable[[int], Sequence[int]]
    nonce: int = field(default_factory=lambda: secrets.randbelow(10**8))
    on_complete: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.src = array("i", bytes(4 * self.capacity))
        self.expected = bytearray(self.capacity)
        self.seen = bytearray(self.capacity)
        self.sent_at = array("q", bytes(8 * self.capacity))
        self.sent = 0
        self.delivered = 0
        self.duplicates = 0
        self.misrouted = 0
        self.echoes = 0
        self.foreign = 0
        self.lat: array[int] = array("q")
        self.deliver_at: array[int] = array("q")
        # (seq, receiver) pairs already seen; only the first copy counts.
        self.pairs: set[int] = set()
        self.slots: dict[int, dict[int, int]] = {}
        self.prefix = b"%d." % self.nonce
        self.pat = re.compile(rb"<status>" + self.prefix.replace(b".", rb"\.") + rb"(\d+)\.(\d+)</status>")
        self.shows = (b"away", b"xa", b"dnd", b"chat")

    def make(self, src: int, online_contacts: int) -> bytes:
        seq = self.sent
        if seq >= self.capacity:
            raise OverflowError("presence tracker is full")
        self.sent = seq + 1
        self.src[seq] = src
        self.expected[seq] = online_contacts
        t = now_us()
        self.sent_at[seq] = t
        return (b"<presence><show>" + self.shows[seq & 3] + b"</show><status>" + self.prefix
                + b"%d.%d</status></presence>" % (seq, t))

    def _slot(self, src: int, dst: int) -> int:
        table = self.slots.get(src)
        if table is None:
            table = {c: i for i, c in enumerate(self.contacts(src))}
            self.slots[src] = table
        return table.get(dst, -1)

    def feed(self, conn: Client, data: bytes) -> None:
        buf = conn.tail + data if conn.tail else data
        now = now_us()
        last = 0
        me = conn.idx
        for m in self.pat.finditer(buf):
            last = m.end()
            seq = int(m.group(1))
            if seq >= self.sent:
                self.foreign += 1
                continue
            src = self.src[seq]
            if src == me:
                self.echoes += 1
                continue
            slot = self._slot(src, me)
            if slot < 0:
                self.misrouted += 1
                continue
            key = seq * 64 + slot
            if key in self.pairs:
                self.duplicates += 1
                continue
            self.pairs.add(key)
            self.delivered += 1
            self.lat.append(now - int(m.group(2)))
            self.deliver_at.append(now)
            n = self.seen[seq] + 1
            self.seen[seq] = n
            if n == self.expected[seq] and self.on_complete is not None:
                self.on_complete(seq)
        rest = len(buf) - last
        conn.tail = buf[-_TAIL:] if rest > _TAIL else buf[last:]
        _check_end(conn, data)

    def missing(self) -> int:
        return sum(self.expected[s] - self.seen[s] for s in range(self.sent))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return float(s[k])


# --- group chat (XEP-0045) -------------------------------------------------------------

NS_MUC = "http://jabber.org/protocol/muc"
# The one status code that marks an occupant's own presence from the room (XEP-0045 §7.2.2,
# and §7.14 on leaving): the join and leave phases look for it and for nothing else.
_SELF_PRESENCE = re.compile(rb"code=['\"]110['\"]")
_ERROR_MARKS = (b"type='error'", b'type="error"')
_ERROR_LEN = len(_ERROR_MARKS[0])
_PRESENCE_TAG = b"<presence"
# Long enough that the start tag of a self-presence (with its from='room/nick') is still
# in the buffer when its status code arrives in the next read.
_MUC_TAIL = 4096


def muc_join(room: str, nick: str) -> bytes:
    """Join presence asking for no history (XEP-0045 §7.2.14); the subject still comes."""
    return (f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x>"
            "</presence>").encode()


def muc_leave(room: str, nick: str) -> bytes:
    return f"<presence to='{room}/{nick}' type='unavailable'/>".encode()


def muc_instant_room(room: str, iq_id: str) -> bytes:
    """The owner accepts the default configuration (an instant room, XEP-0045 §10.1.2)."""
    return (f"<iq type='set' id='{iq_id}' to='{room}'><query xmlns='{NS_MUC}#owner'>"
            "<x xmlns='jabber:x:data' type='submit'/></query></iq>").encode()


def iq_pattern(iq_id: str) -> re.Pattern[bytes]:
    return _iq_pattern(re.escape(iq_id.encode()))


def _stanza_at(buf: bytes, at: int) -> bytes:
    """The text of the stanza around ``at`` (for problem reports; rare)."""
    start = max(buf.rfind(b"<presence", 0, at + 1), buf.rfind(b"<message", 0, at + 1), buf.rfind(b"<iq", 0, at + 1))
    return buf[start if start >= 0 else max(0, at - 300):at + 400]


@dataclass
class RoomPresenceSink(Sink):
    """The join or the leave phase of a room: of the presence the room sends (R² stanzas
    for R joins), only each occupant's own presence is looked at, found by its status code
    110 with one regular expression; everything else is counted (``<presence`` tags) and
    dropped. ``on_self`` is called with the occupant's slot on its first self-presence;
    an error from the room (a refused join) calls ``on_refused``."""

    slots: dict[int, int]  # client idx -> occupant slot
    nicks: Sequence[bytes]  # by slot
    leaving: bool = False
    on_self: Callable[[int], None] | None = None
    on_refused: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.seen = bytearray(len(self.nicks))
        self.selves = 0
        self.extra = 0  # self-presence beyond the first, or of the wrong kind for the phase
        self.wrong_nick = 0
        self.unverified = 0  # start tag no longer in the buffer
        self.presence = 0
        self.errors = 0
        self.samples: list[str] = []

    def feed(self, conn: Client, data: bytes) -> None:
        tail = conn.tail
        buf = tail + data if tail else data
        # A tag split across two reads is counted once: search from where it could start.
        self.presence += buf.count(_PRESENCE_TAG, max(0, len(tail) - len(_PRESENCE_TAG) + 1))
        slot = self.slots.get(conn.idx, -1)
        err_from = max(0, len(tail) - _ERROR_LEN + 1)
        if _ERROR_MARKS[0] in buf or _ERROR_MARKS[1] in buf:
            self._errors(conn, buf, err_from, slot)
        last = 0
        for m in _SELF_PRESENCE.finditer(buf):
            last = m.end()
            start = buf.rfind(_PRESENCE_TAG, 0, m.start())
            if slot < 0:
                self.wrong_nick += 1
                self._sample(f"self-presence at u{conn.idx}, not an occupant", buf, m.start())
                continue
            if start < 0:
                self.unverified += 1
            else:
                head = buf[start:buf.find(b">", start) + 1]
                nick = self.nicks[slot]
                if b"/" + nick + b"'" not in head and b"/" + nick + b'"' not in head:
                    self.wrong_nick += 1
                    self._sample(f"self-presence for {nick.decode()} names another nick", buf, m.start())
                    continue
                gone = b"type='unavailable'" in head or b'type="unavailable"' in head
                if gone != self.leaving:
                    self.extra += 1
                    continue
            if self.seen[slot]:
                self.extra += 1
                continue
            self.seen[slot] = 1
            self.selves += 1
            if self.on_self is not None:
                self.on_self(slot)
        # Keep the last stanza's start (its status code may come in the next read), or
        # else only enough for a pattern split across reads: most reads are one presence.
        keep = len(buf) - 16
        p = buf.rfind(_PRESENCE_TAG, max(last, len(buf) - _MUC_TAIL))
        if 0 <= p < keep:
            keep = p
        conn.tail = buf[max(last, keep, 0):]
        _check_end(conn, data)

    def _errors(self, conn: Client, buf: bytes, start: int, slot: int) -> None:
        for mark in _ERROR_MARKS:
            at = buf.find(mark, start)
            while at >= 0:
                self.errors += 1
                self._sample(f"error to u{conn.idx}", buf, at)
                if slot >= 0 and self.on_refused is not None:
                    self.on_refused(slot)
                at = buf.find(mark, at + 1)

    def _sample(self, what: str, buf: bytes, at: int) -> None:
        if len(self.samples) < 5:
            self.samples.append(f"{what}: {_stanza_at(buf, at).decode(errors='replace')}")


@dataclass
class RoomMessageTracker(Sink):
    """Groupchat messages ``<body>NONCE.SEQ.MICROS</body>`` to a room of R occupants: each
    sequence number must reach every occupant exactly once, the sender included (the room
    echoes its message back). ``on_complete`` is called when a message has reached all R."""

    capacity: int  # messages
    slots: dict[int, int]  # client idx -> occupant slot
    room: str
    nonce: int = field(default_factory=lambda: secrets.randbelow(10**8))
    on_complete: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.n = len(self.slots)
        self.seen = bytearray(self.capacity * self.n)
        self.count = array("i", bytes(4 * self.capacity))
        self.src = array("i", bytes(4 * self.capacity))
        self.sent_at = array("q", bytes(8 * self.capacity))
        self.sent = 0
        self.delivered = 0
        self.duplicates = 0
        self.misrouted = 0
        self.bounced = 0
        self.foreign = 0
        self.lat: array[int] = array("q")
        self.deliver_at: array[int] = array("q")
        self.samples: list[str] = []
        self.prefix = b"%d." % self.nonce
        self.pat = re.compile(rb"<body>" + self.prefix.replace(b".", rb"\.") + rb"(\d+)\.\d+</body>")
        self.halves = (f"<message to='{self.room}' type='groupchat'><body>".encode() + self.prefix,
                       b"</body></message>")

    def make(self, src_slot: int) -> bytes:
        seq = self.sent
        if seq >= self.capacity:
            raise OverflowError("room message tracker is full")
        self.sent = seq + 1
        self.src[seq] = src_slot
        t = now_us()
        self.sent_at[seq] = t
        return self.halves[0] + b"%d.%d" % (seq, t) + self.halves[1]

    def feed(self, conn: Client, data: bytes) -> None:
        buf = conn.tail + data if conn.tail else data
        now = now_us()
        last = 0
        n = self.n
        seen, count, sent_at = self.seen, self.count, self.sent_at
        slot = self.slots.get(conn.idx, -1)
        check_errors = _ERROR_MARKS[0] in buf or _ERROR_MARKS[1] in buf
        cb = self.on_complete
        for m in self.pat.finditer(buf):
            last = m.end()
            seq = int(m.group(1))
            if seq >= self.sent:
                self.foreign += 1
                continue
            if check_errors:
                start = buf.rfind(b"<message", 0, m.start())
                head = buf[start:m.start()] if start >= 0 else b""
                if _ERROR_MARKS[0] in head or _ERROR_MARKS[1] in head:
                    self.bounced += 1
                    self._sample(f"seq {seq} bounced to u{conn.idx}", buf, m.start())
                    continue
            if slot < 0:
                self.misrouted += 1
                self._sample(f"seq {seq} reached u{conn.idx}, not an occupant", buf, m.start())
                continue
            key = seq * n + slot
            if seen[key]:
                self.duplicates += 1
                self._sample(f"seq {seq} again at u{conn.idx}", buf, m.start())
                continue
            seen[key] = 1
            self.delivered += 1
            self.lat.append(now - sent_at[seq])
            self.deliver_at.append(now)
            c = count[seq] + 1
            count[seq] = c
            if c == n and cb is not None:
                cb(seq)
        rest = len(buf) - last
        conn.tail = buf[-_TAIL:] if rest > _TAIL else buf[last:]
        _check_end(conn, data)

    def _sample(self, what: str, buf: bytes, at: int) -> None:
        if len(self.samples) < 5:
            self.samples.append(f"{what}: {_stanza_at(buf, at).decode(errors='replace')}")

    def missing(self) -> int:
        return self.sent * self.n - sum(self.count[s] for s in range(self.sent))
