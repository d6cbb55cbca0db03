"""XMPP Compliance Suites 2023 (XEP-0479), Advanced Server level, checked the way a client
meets the server: one test per requirement of the Core, IM and Mobile categories (and the
server's one row of A/V Calling), plus what the server offers beyond the suite.

A row passes only when the feature is advertised where its XEP says (stream features, or
the disco#info of the server or of the account) AND a real exchange shows it working; an
advertisement alone proves nothing. Each row's outcome goes into RESULTS and into the
test's ``compliance`` user property, from which ``python -m tests.compliance_table`` writes
docs/compliance.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import re
import ssl
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, fromstring, tostring
from xml.sax.saxutils import quoteattr

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from slixmpp.exceptions import IqError

from parley.server import Server
from parley.xmpp.jid import JID
from tests.clients import TIMEOUT, Raw, close_all, eventually, slix
from tests.conftest import ServerFactory, subscribed, users
from tests.e2e.test_avatar import png
from tests.e2e.test_component import start_component, stop_component
from tests.e2e.test_pep import (
    error_of,
    event,
    items_of,
    items_xml,
    online,
    publish,
    publish_xml,
    published,
)
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DOMAIN,
    NS_PING,
    NS_ROSTER,
    Connect,
    Peer,
    bounce_of,
    bounced,
    change_status,
    error_condition,
    is_push,
    item_xml,
    local,
    message,
    presence,
    presences_from,
    q,
    roster_get,
    roster_set,
    say,
)
from tests.peer import (
    items_of as roster_items_of,
)
from tests.unit.test_sasl import ScramClient

# --- namespaces ---------------------------------------------------------------------------------

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_CAPS = "http://jabber.org/protocol/caps"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_DELAY = "urn:xmpp:delay"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBLISH_OPTIONS = f"{NS_PUBSUB}#publish-options"
NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"
NS_VCARD4 = "urn:ietf:params:xml:ns:vcard-4.0"
NODE_VCARD4 = "urn:xmpp:vcard4"
NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_LEGACY_BOOKMARKS = "storage:bookmarks"
NS_PRIVATE = "jabber:iq:private"
NS_PRIVACY = "jabber:iq:privacy"
NS_INVISIBLE = "urn:xmpp:invisible:0"
NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_PUSH = "urn:xmpp:push:0"
NS_EXTDISCO = "urn:xmpp:extdisco:2"
NS_VERSION = "jabber:iq:version"
NS_TIME = "urn:xmpp:time"
NS_LAST = "jabber:iq:last"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_ADMIN = "http://jabber.org/protocol/admin"
NS_DATA = "jabber:x:data"
NS_OFFLINE = "http://jabber.org/protocol/offline"
NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
NS_COMPONENT = "jabber:component:accept"
NS_TUNE = "http://jabber.org/protocol/tune"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = f"{NS_MUC}#user"
NS_MUC_OWNER = f"{NS_MUC}#owner"
NS_CONFERENCE = "jabber:x:conference"

# --- categories and levels of the suite ----------------------------------------------------------

CORE, IM, MOBILE, AV = "Core", "IM", "Mobile", "A/V Calling"
CATEGORIES = (CORE, IM, MOBILE, AV)
# Required at the Server level (and so at Advanced Server too).
SERVER_LEVEL = "Server"
# Required at the Advanced Server level only.
ADVANCED = "Advanced Server"
# Named by the suite as worth having, not required.
OF_NOTE = "of note"
# Not in the suite: what the server offers besides.
BEYOND = "not in the suite"

COMPONENT = "bot.example.test"
COMPONENT_SECRET = "bot-secret"
PUSH_APP = "push.nowhere.test"  # an app server nobody runs: enabling push must not need it
ROOM = f"lobby@conference.{DOMAIN}"
ROOM2 = f"dev@conference.{DOMAIN}"
TURN_SECRET = "turn-shared-secret"
EXTERNAL_SERVICES = [
    {"type": "stun", "host": "stun.example.test", "port": 3478},
    {"type": "turn", "host": "turn.example.test", "port": 3478, "transport": "udp", "secret": TURN_SECRET,
     "ttl": 600},
]
BOOKMARK_OPTIONS = {
    "pubsub#persist_items": "true",
    "pubsub#max_items": "max",
    "pubsub#send_last_published_item": "never",
    "pubsub#access_model": "whitelist",
}


# --- rows and their outcomes ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What one row showed; ``None`` means not reached (or not applicable yet)."""

    requirement: str
    xep: str
    category: str
    level: str
    advertised: bool | None = None
    works: bool | None = None
    note: str = ""


Check = Callable[["Env"], Awaitable[None]]


@dataclass(frozen=True, eq=False)
class Requirement:
    requirement: str
    xep: str
    category: str
    level: str
    check: Check | None = None
    # Server configuration sections the row needs on top of the test defaults.
    config: Mapping[str, Any] = field(default_factory=dict)
    not_yet: str | None = None

    @property
    def base_id(self) -> str:
        return f"{self.xep} {self.requirement}"

    @property
    def exchange(self) -> str:
        """What the row's exchange does: the check's docstring, on one line."""
        doc = inspect.getdoc(self.check) if self.check is not None else None
        return " ".join((doc or "").split())


# Filled in as the rows run (and with the rows that wait for group chat at import).
RESULTS: dict[str, Outcome] = {}


class Env:
    """What a check works with: the server, clients on it, and the row's record."""

    def __init__(self, server: Server, make_server: ServerFactory, connect: Connect, outcome: Outcome,
                 stack: AsyncExitStack, cert: Path, tmp: Path) -> None:
        self.server = server
        self.make_server = make_server
        self.connect = connect
        self.outcome = outcome
        self.stack = stack
        self.cert = cert
        self.tmp = tmp
        self.found: list[str] = []
        self.missing: list[str] = []

    def advertised(self, present: bool, where: str) -> None:
        """Records one advertisement; the row's exchange goes on either way, so that the
        table shows whether the feature works even when it is not announced."""
        (self.found if present else self.missing).append(where)
        self.outcome.advertised = present and self.outcome.advertised is not False

    async def online(self, jid: str, **kwargs: Any) -> Peer:
        return await self.connect(self.server, jid, **kwargs)

    async def pep_online(self, jid: str, *interests: str, plugins: tuple[str, ...] = ()) -> Peer:
        """A client whose caps ask for the events of those nodes (the server has learnt them)."""
        return await online(self.server, self.connect, jid, *interests, plugins=plugins)

    async def raw(self, server: Server | None = None, *, direct_tls: bool = True) -> Raw:
        raw = await Raw.open(server or self.server, direct_tls=direct_tls)
        self.stack.push_async_callback(raw.close)
        return raw

    async def features(self, stage: str = "bound") -> Element:
        """The stream features a client is offered: before authentication on the direct TLS
        port ('tls') or once authenticated ('bound')."""
        raw = await self.raw()
        data = await (raw.start() if stage == "tls" else raw.authenticate("alice", "secret"))
        return parse_features(data)

    async def in_server_disco(self, peer: Peer, *namespaces: str) -> None:
        features = await server_features(peer)
        for ns in namespaces:
            self.advertised(ns in features, f"`{ns}` in the server's disco#info")

    async def in_account_disco(self, peer: Peer, owner: str, *namespaces: str) -> None:
        features = await account_features(peer, owner)
        for ns in namespaces:
            self.advertised(ns in features, f"`{ns}` in the account's disco#info")

    def later(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.stack.push_async_callback(fn, *args)


def parse_features(data: bytes) -> Element:
    """The <stream:features/> at the end of what a server sent since a stream header."""
    start = data.rfind(b"<stream:stream")
    assert start >= 0, data
    root = fromstring(data[start:] + b"</stream:stream>")
    features = root.find(q(NS_STREAMS, "features"))
    assert features is not None, data
    return features


def has(features: Element, ns: str, name: str) -> bool:
    return features.find(q(ns, name)) is not None


async def disco_info(peer: Peer, jid: str, node: str | None = None) -> tuple[set[tuple[str, str]], set[str]]:
    """(identities as (category, type), features) of an entity."""
    attr = f" node={quoteattr(node)}" if node else ""
    res = await peer.query("get", f"<query xmlns='{NS_INFO}'{attr}/>", to=jid)
    idents = {(i.get("category", ""), i.get("type", "")) for i in res.iter(q(NS_INFO, "identity"))}
    return idents, {f.get("var", "") for f in res.iter(q(NS_INFO, "feature"))}


async def server_features(peer: Peer) -> set[str]:
    return (await disco_info(peer, DOMAIN))[1]


async def account_features(peer: Peer, owner: str) -> set[str]:
    return (await disco_info(peer, owner))[1]


def verified_context(cert: Path) -> ssl.SSLContext:
    """A client context that checks the server's certificate and name, as real clients do."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def tls_server_end_point(der: bytes) -> bytes:
    """RFC 5929 section 4.1: the certificate hashed with its signature's hash, SHA-256 for
    MD5 and SHA-1. Computed here, not taken from the server, so that the two must agree."""
    algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    name = "sha256" if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1) else algorithm.name
    return hashlib.new(name, der).digest()


async def nonza(raw: Raw, *names: str) -> Element:
    """The next top-level element with one of those names (anything before it is skipped)."""
    head = await raw.read_until_any(*(f"<{n} ".encode() for n in names))
    name = next(n for n in names if head.endswith(f"<{n} ".encode()))
    text = f"<{name} ".encode() + await raw.read_until(b">")
    if not text.endswith(b"/>"):
        text += await raw.read_until(f"</{name}>".encode())
    return fromstring(text)


async def bind(raw: Raw, resource: str) -> None:
    raw.send(f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>")
    assert f"/{resource}".encode() in await raw.read_until(b"</iq>")


async def preauth_iq(raw: Raw, iq_id: str, type_: str, payload: str) -> bytes:
    raw.send(f"<iq type='{type_}' id='{iq_id}'>{payload}</iq>")
    return await raw.read_until_any(b"</iq>", f"id='{iq_id}'/>".encode())


def stanza_ids(el: Element, by: str) -> list[str]:
    return [s.get("id", "") for s in el.findall(q(NS_SID, "stanza-id")) if s.get("by") == by]


async def archive(peer: Peer, queryid: str, *fields: tuple[str, str]) -> list[tuple[str, Element]]:
    """A MAM query of the peer's own archive: (result id, archived message) per result."""
    form = ""
    if fields:
        inner = "".join(f"<field var={quoteattr(k)}><value>{v}</value></field>" for k, v in fields)
        form = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>{NS_MAM}</value></field>{inner}</x>")
    await peer.mark()
    res = await peer.query("set", f"<query xmlns='{NS_MAM}' queryid='{queryid}'>{form}</query>")
    assert res.find(q(NS_MAM, "fin")) is not None, "a MAM query ends with <fin/>"
    out = []
    for el in await peer.mark():
        result = el.find(q(NS_MAM, "result"))
        if local(el) == "message" and result is not None and result.get("queryid") == queryid:
            inner = result.find(f"{q(NS_FORWARD, 'forwarded')}/{{jabber:client}}message")
            assert inner is not None, "a MAM result forwards the archived message"
            out.append((result.get("id", ""), inner))
    return out


def carbon(el: Element, direction: str) -> Element | None:
    if local(el) != "message":
        return None
    return el.find(f"{q(NS_CARBONS, direction)}/{q(NS_FORWARD, 'forwarded')}/{{jabber:client}}message")


def http(method: str, url: str, cert: Path, data: bytes | None = None,
         headers: Mapping[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    with urllib.request.urlopen(req, context=verified_context(cert), timeout=10) as resp:
        return bytes(resp.read())


# === Core ========================================================================================


async def core_rfc6120(env: Env) -> None:
    """slixmpp signs in (SASL, resource binding), an iq to the server is answered, an iq the
    server does not know gets a stanza error, and a message reaches another user's resource.
    Client-to-server only: server-to-server streams (federation, SPEC C12) are not checked
    here."""
    tls = await env.features("tls")
    mechanisms = [m.text for m in tls.iter(q(NS_SASL, "mechanism"))]
    env.advertised(bool(mechanisms), "SASL `<mechanisms/>` in the stream features")
    bound = await env.features("bound")
    env.advertised(has(bound, NS_BIND, "bind"), "`<bind/>` in the stream features after authentication")

    alice = await env.online(f"{ALICE}/desk")
    assert alice.jid == f"{ALICE}/desk", "the server did not bind the requested resource"
    bob = await env.online(f"{BOB}/desk")
    await alice.query("get", f"<ping xmlns='{NS_PING}'/>", to=DOMAIN)
    _, condition = await alice.refused("get", "<query xmlns='urn:example:unknown'/>", to=DOMAIN)
    assert condition in ("service-unavailable", "feature-not-implemented"), condition
    say(alice, f"{BOB}/desk", "core hello")
    await bob.next(message("core hello", frm=alice.jid), "alice's message")


async def core_tls(env: Env) -> None:
    """On the STARTTLS port nothing but TLS is offered; STARTTLS gives TLS 1.2 or newer with
    a certificate that verifies for the domain, and only then may the client sign in.
    Client connections only (no server-to-server streams yet)."""
    raw = await env.raw(direct_tls=False)
    features = parse_features(await raw.start())
    starttls = features.find(q(NS_TLS, "starttls"))
    env.advertised(starttls is not None and starttls.find(q(NS_TLS, "required")) is not None,
                   "`<starttls><required/></starttls>` in the stream features")
    assert not has(features, NS_SASL, "mechanisms"), "authentication was offered before TLS"
    raw.send(f"<starttls xmlns='{NS_TLS}'/>")
    assert b"<proceed" in await raw.read_until_any(b"<proceed", b"<failure")
    await raw.read_until(b">")
    await raw.writer.start_tls(verified_context(env.cert), server_hostname=DOMAIN)
    version = raw.writer.get_extra_info("ssl_object").version()
    assert version in ("TLSv1.2", "TLSv1.3"), version
    assert f"{ALICE}/raw".encode() in await raw.login("alice", "secret")


async def core_direct_tls(env: Env) -> None:
    """slixmpp signs in on the direct TLS port; a TLS client there negotiates ALPN
    `xmpp-client`, verifies the certificate for the domain and gets XMPP stream features."""
    ctx = verified_context(env.cert)
    ctx.set_alpn_protocols(["xmpp-client"])
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.ports["c2s_tls"], ssl=ctx,
                                                   server_hostname=DOMAIN)
    raw = Raw(reader, writer)
    env.later(raw.close)
    alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    env.advertised(alpn == "xmpp-client", "ALPN `xmpp-client` on the direct TLS port (the "
                   "`_xmpps-client._tcp` SRV record itself is published in DNS)")
    features = parse_features(await raw.start())
    assert has(features, NS_SASL, "mechanisms") and not has(features, NS_TLS, "starttls")

    c = await slix(env.server, f"{ALICE}/tls", direct_tls=True)
    env.later(close_all, c)
    assert str(c.boundjid) == f"{ALICE}/tls"
    await c.plugin["xep_0199"].send_ping(DOMAIN, timeout=10)


async def core_disco(env: Env) -> None:
    """disco#info of the server (identity server/im) and of an account (account/registered),
    and the server's disco#items, are answered."""
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, NS_INFO, NS_ITEMS)
    await env.in_account_disco(alice, BOB, NS_INFO)
    server_idents, _ = await disco_info(alice, DOMAIN)
    account_idents, _ = await disco_info(alice, BOB)
    assert ("server", "im") in server_idents, server_idents
    assert ("account", "registered") in account_idents, account_idents
    items = await alice.query("get", f"<query xmlns='{NS_ITEMS}'/>", to=DOMAIN)
    assert items.find(q(NS_ITEMS, "query")) is not None


async def core_caps(env: Env) -> None:
    """slixmpp's own XEP-0115 hash of the server's disco#info at node#ver equals the
    advertised ver; a client's caps in its presence reach its contacts."""
    features = await env.features("bound")
    caps = features.find(q(NS_CAPS, "c"))
    env.advertised(caps is not None and all(caps.get(a) for a in ("hash", "node", "ver")),
                   "`<c xmlns='http://jabber.org/protocol/caps'/>` in the stream features")
    assert caps is not None
    await subscribed(env.server, BOB, ALICE)
    bob = await env.online(f"{BOB}/desk")
    alice = await env.pep_online(f"{ALICE}/desk", plugins=("xep_0128",))
    xep_0030, xep_0115 = alice.c.plugin["xep_0030"], alice.c.plugin["xep_0115"]
    info = await xep_0030.get_info(jid=DOMAIN, node=f"{caps.get('node')}#{caps.get('ver')}", local=False,
                                   cached=False, timeout=10)
    assert xep_0115.generate_verstring(info["disco_info"], caps.get("hash")) == caps.get("ver")

    seen = await bob.next(presence(f"{ALICE}/desk"), "alice's presence")
    theirs = seen.find(q(NS_CAPS, "c"))
    assert theirs is not None and theirs.get("ver"), "the client's caps were stripped from its presence"


async def core_component(env: Env) -> None:
    """A slixmpp component completes the handshake on the component port; a client's message
    reaches it and its answer reaches the client."""
    comp = await start_component(env.server, COMPONENT, COMPONENT_SECRET)
    env.later(stop_component, comp)
    alice = await env.online(f"{ALICE}/desk")
    items = await alice.query("get", f"<query xmlns='{NS_ITEMS}'/>", to=DOMAIN)
    env.advertised(COMPONENT in {it.get("jid") for it in items.iter(q(NS_ITEMS, "item"))},
                   "the connected component in the server's disco#items (XEP-0114 defines no "
                   "advertisement of its own)")
    say(alice, COMPONENT, "hello component")
    got = await comp.next(lambda el: local(el) == "message"
                          and el.findtext(q(NS_COMPONENT, "body")) == "hello component", "alice's message")
    assert got.get("from") == alice.jid
    comp.xmpp.send_message(mto=alice.jid, mbody="hello client", mtype="chat", mfrom=COMPONENT)
    await alice.next(message("hello client", frm=COMPONENT), "the component's answer")


async def core_pep(env: Env) -> None:
    """Alice publishes a tune; a contact's client that asked for tune events (+notify in its
    caps) gets the notification with the item."""
    await subscribed(env.server, BOB, ALICE)
    alice = await env.pep_online(f"{ALICE}/desk")
    bob = await env.pep_online(f"{BOB}/desk", NS_TUNE)
    idents, _ = await disco_info(bob, ALICE)
    env.advertised(("pubsub", "pep") in idents, "identity pubsub/pep in the account's disco#info")
    tune = f"<tune xmlns='{NS_TUNE}'><artist>Yes</artist><title>Roundabout</title></tune>"
    item_id = await publish(alice, NS_TUNE, tune)
    msg = await bob.next(event(NS_TUNE, ALICE), "the tune notification")
    [(got_id, payload)] = published(msg)
    assert got_id == item_id and payload.findtext(q(NS_TUNE, "artist")) == "Yes"


async def core_scram(env: Env) -> None:
    """SCRAM-SHA-256-PLUS with tls-server-end-point succeeds and the server proves it knows
    the password; the same exchange with a wrong channel binding fails."""
    raw = await env.raw()
    features = parse_features(await raw.start())
    mechanisms = {m.text for m in features.iter(q(NS_SASL, "mechanism"))}
    bindings = {b.get("type") for b in features.iter(q(NS_SASL_CB, "channel-binding"))}
    wanted = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1"}
    env.advertised(wanted <= mechanisms, "SCRAM mechanisms (with -PLUS) in the stream features")
    env.advertised("tls-server-end-point" in bindings, "`<sasl-channel-binding/>` (XEP-0440) in the stream features")

    der = raw.writer.get_extra_info("ssl_object").getpeercert(True)
    client = ScramClient("SHA-256", "alice", "secret", flag="p=tls-server-end-point",
                         cb_data=tls_server_end_point(der))
    reply = await scram(raw, "SCRAM-SHA-256-PLUS", client)
    assert b"<success" in reply, reply
    client.verify(sasl_payload(reply, "success"))

    other = await env.raw()
    await other.start()
    wrong = ScramClient("SHA-256", "alice", "secret", flag="p=tls-server-end-point", cb_data=b"\0" * 32)
    assert b"<failure" in await scram(other, "SCRAM-SHA-256-PLUS", wrong)


def sasl_payload(xml: bytes, tag: str) -> bytes:
    m = re.search(rb"<" + tag.encode() + rb"[^>]*>([^<]*)</" + tag.encode() + rb">", xml)
    assert m, xml
    return base64.b64decode(m.group(1))


async def scram(raw: Raw, mechanism: str, client: ScramClient) -> bytes:
    first = base64.b64encode(client.first()).decode()
    raw.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{first}</auth>")
    challenge = await raw.read_until_any(b"</challenge>", b"</failure>")
    if b"<failure" in challenge:
        return challenge
    final = base64.b64encode(client.final(sasl_payload(challenge, "challenge"))).decode()
    raw.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
    return await raw.read_until_any(b"</success>", b"</failure>")


async def core_ping(env: Env) -> None:
    """A ping to the server and one to the user's own account are answered."""
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, NS_PING)
    await alice.query("get", f"<ping xmlns='{NS_PING}'/>", to=DOMAIN)
    await alice.query("get", f"<ping xmlns='{NS_PING}'/>", to=ALICE)


async def core_version(env: Env) -> None:
    """The server names its software and version."""
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, NS_VERSION)
    res = await alice.query("get", f"<query xmlns='{NS_VERSION}'/>", to=DOMAIN)
    assert res.findtext(f"{q(NS_VERSION, 'query')}/{q(NS_VERSION, 'name')}") == "Parley"
    assert res.findtext(f"{q(NS_VERSION, 'query')}/{q(NS_VERSION, 'version')}")


async def core_time(env: Env) -> None:
    """The server tells its time in UTC with a zone offset."""
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, NS_TIME)
    res = await alice.query("get", f"<time xmlns='{NS_TIME}'/>", to=DOMAIN)
    assert (res.findtext(f"{q(NS_TIME, 'time')}/{q(NS_TIME, 'utc')}") or "").endswith("Z")
    assert res.findtext(f"{q(NS_TIME, 'time')}/{q(NS_TIME, 'tzo')}")


async def core_last(env: Env) -> None:
    """The server answers with its uptime; once a contact signs out, the user sees when and
    with which status."""
    await subscribed(env.server, ALICE, BOB)
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, NS_LAST)
    await env.in_account_disco(alice, BOB, NS_LAST)
    up = await alice.query("get", f"<query xmlns='{NS_LAST}'/>", to=DOMAIN)
    assert int(up.find(q(NS_LAST, "query")).get("seconds", "-1")) >= 0  # type: ignore[union-attr]

    bob = await slix(env.server, f"{BOB}/desk")
    bob.send_presence(ptype="unavailable", pstatus="Gone fishing")
    await close_all(bob)

    async def recorded() -> bool:
        iq = alice.c.make_iq_get(ito=BOB)
        iq.append(Element(q(NS_LAST, "query")))
        try:
            res = await iq.send(timeout=TIMEOUT)
        except IqError:
            return False  # the sign-out is not stored yet: nothing to show for him so far
        return res.xml.findtext(q(NS_LAST, "query")) == "Gone fishing"

    await eventually(recorded, "bob's sign-out shows in his last activity")


async def core_adhoc(env: Env) -> None:
    """An administrator lists the server's commands and runs one (the online users count)."""
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, NS_COMMANDS)
    listing = await alice.query("get", f"<query xmlns='{NS_ITEMS}' node='{NS_COMMANDS}'/>", to=DOMAIN)
    node = f"{NS_ADMIN}#get-online-users-num"
    assert node in {it.get("node") for it in listing.iter(q(NS_ITEMS, "item"))}
    res = await alice.query("set", f"<command xmlns='{NS_COMMANDS}' node='{node}' action='execute'/>", to=DOMAIN)
    cmd = res.find(q(NS_COMMANDS, "command"))
    assert cmd is not None and cmd.get("status") == "completed", cmd
    values = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in cmd.iter(q(NS_DATA, "field"))}
    assert values.get("onlineusersnum") == "1", values


# === IM ==========================================================================================


async def im_rfc6121(env: Env) -> None:
    """Roster add with a push; a subscription request is approved by the contact and the
    roster and presence follow; status changes and messages flow; a pre-approved contact's
    request is answered without asking."""
    features = await env.features("bound")
    env.advertised(has(features, NS_PREAPPROVAL, "sub"), "pre-approval `<sub/>` in the stream features")
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    await alice.query("set", roster_set(item_xml(BOB, "Bob", ("Friends",))))
    await alice.next(is_push(BOB), "the roster push")

    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    await bob.next(presence(ALICE, "subscribe"), "alice's subscription request")
    bob.send(f"<presence to='{ALICE}' type='subscribed'/>")

    def now_to(el: Element) -> bool:
        return is_push(BOB)(el) and roster_items_of(el.find(q(NS_ROSTER, "query")))[BOB].get("subscription") == "to"

    await alice.next(now_to, "the roster push with subscription 'to'")
    await alice.next(presence(f"{BOB}/desk"), "bob's presence once approved")
    change_status(bob, "busy")
    await alice.next(presence(f"{BOB}/desk", status="busy"), "bob's status change")
    say(alice, BOB, "hi bob")
    await bob.next(message("hi bob", frm=alice.jid), "alice's message")

    carol = await env.online(f"{CAROL}/desk")
    alice.send(f"<presence to='{CAROL}' type='subscribed'/>")
    await alice.mark()
    carol.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await carol.next(presence(ALICE, "subscribed"), "the pre-approved answer")
    assert not presences_from([el for el in await alice.mark() if presence(type_="subscribe")(el)], CAROL)


async def im_avatar(env: Env) -> None:
    """Alice's client publishes an XEP-0084 avatar; Bob reads the same image from her
    vCard-temp PHOTO and gets her presence again with its SHA-1 (XEP-0153)."""
    await subscribed(env.server, BOB, ALICE)
    bob = await env.pep_online(f"{BOB}/desk")
    alice = await env.pep_online(f"{ALICE}/desk", plugins=("xep_0084",))
    await bob.next(presence(f"{ALICE}/desk"), "alice's presence")
    await env.in_account_disco(alice, ALICE, NS_CONVERSION)

    image = png(3, 2)
    sha1 = hashlib.sha1(image).hexdigest()
    await alice.c.plugin["xep_0084"].publish_avatar(image, timeout=10)
    await alice.c.plugin["xep_0084"].publish_avatar_metadata(
        [{"id": sha1, "type": "image/png", "bytes": len(image)}], timeout=10)
    card = await bob.query("get", f"<vCard xmlns='{NS_VCARD}'/>", to=ALICE)
    photo = card.find(f"{q(NS_VCARD, 'vCard')}/{q(NS_VCARD, 'PHOTO')}")
    assert photo is not None, "the avatar did not reach the vCard"
    assert base64.b64decode("".join((photo.findtext(q(NS_VCARD, "BINVAL")) or "").split())) == image
    assert photo.findtext(q(NS_VCARD, "TYPE")) == "image/png"
    again = await bob.next(presence(f"{ALICE}/desk"), "alice's presence with the avatar hash")
    assert again.findtext(f"{q(NS_VCARD_UPDATE, 'x')}/{q(NS_VCARD_UPDATE, 'photo')}") == sha1


async def im_vcard(env: Env) -> None:
    """Alice stores her vCard; Bob reads it."""
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    await env.in_server_disco(alice, NS_VCARD)
    await alice.query("set", f"<vCard xmlns='{NS_VCARD}'><FN>Alice Example</FN><NICKNAME>ali</NICKNAME></vCard>")
    res = await bob.query("get", f"<vCard xmlns='{NS_VCARD}'/>", to=ALICE)
    assert res.findtext(f"{q(NS_VCARD, 'vCard')}/{q(NS_VCARD, 'FN')}") == "Alice Example"


async def im_carbons(env: Env) -> None:
    """With carbons on at her desk and phone, Alice's phone gets a 'received' copy of Bob's
    message to the desk and a 'sent' copy of the desk's answer."""
    bob = await env.online(f"{BOB}/desk")
    desk = await env.online(f"{ALICE}/desk")
    phone = await env.online(f"{ALICE}/phone")
    await env.in_server_disco(desk, NS_CARBONS)
    for peer in (desk, phone):
        await peer.query("set", f"<enable xmlns='{NS_CARBONS}'/>")
    say(bob, desk.jid, "to the desk")
    await desk.next(message("to the desk", frm=bob.jid), "bob's message")
    copy = await phone.next(lambda el: carbon(el, "received") is not None, "the 'received' carbon")
    inner = carbon(copy, "received")
    assert copy.get("from") == ALICE and inner is not None
    assert inner.findtext("{jabber:client}body") == "to the desk" and inner.get("to") == desk.jid
    say(desk, BOB, "from the desk")
    await bob.next(message("from the desk"), "alice's answer")
    copy = await phone.next(lambda el: carbon(el, "sent") is not None, "the 'sent' carbon")
    inner = carbon(copy, "sent")
    assert inner is not None and inner.findtext("{jabber:client}body") == "from the desk"


async def im_blocking(env: Env) -> None:
    """Alice blocks Bob: the block list shows him, his message is refused, hers to him is
    refused as blocked; after unblocking his message arrives."""
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    await env.in_server_disco(alice, NS_BLOCKING)
    await alice.query("set", f"<block xmlns='{NS_BLOCKING}'><item jid='{BOB}'/></block>")
    res = await alice.query("get", f"<blocklist xmlns='{NS_BLOCKING}'/>")
    assert {it.get("jid") for it in res.iter(q(NS_BLOCKING, "item"))} == {BOB}
    say(bob, ALICE, "let me in")
    assert await bounced(bob, "let me in") == "service-unavailable"
    say(alice, BOB, "hello bob")
    err = await bounce_of(alice, "hello bob")
    assert error_condition(err) == "not-acceptable"
    assert err.find(f"{{jabber:client}}error/{q(NS_BLOCKING_ERRORS, 'blocked')}") is not None
    await alice.query("set", f"<unblock xmlns='{NS_BLOCKING}'><item jid='{BOB}'/></unblock>")
    say(bob, ALICE, "hi again")
    await alice.next(message("hi again"), "bob's message after unblocking")


def conference(name: str, nick: str) -> str:
    return (f"<conference xmlns='{NS_BOOKMARKS}' name={quoteattr(name)} autojoin='true'>"
            f"<nick>{nick}</nick></conference>")


async def legacy_rooms(peer: Peer) -> dict[str, Element]:
    res = await peer.query("get", f"<query xmlns='{NS_PRIVATE}'><storage xmlns='{NS_LEGACY_BOOKMARKS}'/></query>")
    return {c.get("jid", ""): c for c in res.iter(q(NS_LEGACY_BOOKMARKS, "conference"))}


async def im_bookmarks2(env: Env) -> None:
    """Alice's desk publishes a native bookmark; her phone, which follows bookmarks, is
    notified; her legacy client reads the same room from private XML storage."""
    desk = await env.pep_online(f"{ALICE}/desk")
    phone = await env.pep_online(f"{ALICE}/phone", NS_BOOKMARKS)
    await env.in_account_disco(desk, ALICE, f"{NS_BOOKMARKS}#compat")
    await publish(desk, NS_BOOKMARKS, conference("The Lobby", "ali"), ROOM, BOOKMARK_OPTIONS)
    msg = await phone.next(event(NS_BOOKMARKS, ALICE), "the bookmark notification")
    assert [i for i, _ in published(msg)] == [ROOM]
    rooms = await legacy_rooms(desk)
    assert ROOM in rooms and rooms[ROOM].findtext(q(NS_LEGACY_BOOKMARKS, "nick")) == "ali", rooms


async def im_bookmarks_legacy(env: Env) -> None:
    """A legacy client stores bookmarks in private XML; the same room is then an XEP-0402
    item and is in the legacy PEP node `storage:bookmarks`."""
    alice = await env.pep_online(f"{ALICE}/desk")
    await env.in_account_disco(alice, ALICE, f"{NS_BOOKMARKS}#compat-pep")
    await env.in_server_disco(alice, NS_PRIVATE)
    await alice.query("set", f"<query xmlns='{NS_PRIVATE}'><storage xmlns='{NS_LEGACY_BOOKMARKS}'>"
                             f"<conference jid='{ROOM2}' name='Dev' autojoin='true'><nick>ali</nick></conference>"
                             "</storage></query>")
    assert ROOM2 in await legacy_rooms(alice)
    assert ROOM2 in {it.get("id") for it in await items_of(alice, ALICE, NS_BOOKMARKS)}
    [item] = await items_of(alice, ALICE, NS_LEGACY_BOOKMARKS)
    assert ROOM2 in {c.get("jid") for c in item.iter(q(NS_LEGACY_BOOKMARKS, "conference"))}


async def im_private_pubsub(env: Env) -> None:
    """Alice stores data in a PEP node with publish-options (persistent, whitelist); she
    reads it back, a contact who sees her presence may not, and a publish whose options the
    node does not have fails with precondition-not-met."""
    await subscribed(env.server, BOB, ALICE)
    alice = await env.pep_online(f"{ALICE}/desk")
    bob = await env.pep_online(f"{BOB}/desk")
    await env.in_account_disco(alice, ALICE, NS_PUBLISH_OPTIONS)
    node = "urn:example:private-data"
    options = {"pubsub#persist_items": "true", "pubsub#access_model": "whitelist"}
    await publish(alice, node, f"<secret xmlns='{node}'>42</secret>", "current", options)
    [item] = await items_of(alice, ALICE, node)
    assert item[0].text == "42"
    await error_of(bob, "get", items_xml(node), ALICE)
    err = await error_of(alice, "set", publish_xml(node, f"<secret xmlns='{node}'>43</secret>", "current",
                                                   {"pubsub#access_model": "presence"}))
    assert err.find(q(f"{NS_PUBSUB}#errors", "precondition-not-met")) is not None


async def im_private_xml(env: Env) -> None:
    """Alice stores a private document and reads it back from another session; Bob may not
    read it."""
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    # XEP-0049 defines no discovery; servers list the namespace, and clients look for it.
    await env.in_server_disco(alice, NS_PRIVATE)
    await alice.query("set", f"<query xmlns='{NS_PRIVATE}'><notes xmlns='urn:example:notes'>"
                             "<note>buy milk</note></notes></query>")
    laptop = await env.online(f"{ALICE}/laptop")
    get = f"<query xmlns='{NS_PRIVATE}'><notes xmlns='urn:example:notes'/></query>"
    res = await laptop.query("get", get)
    assert res.findtext(".//{urn:example:notes}note") == "buy milk"
    assert (await bob.refused("get", get, to=ALICE))[1] == "forbidden"


async def stream_management(env: Env) -> None:
    """A raw client enables resumable stream management; `<r/>` is answered with the count
    of stanzas handled; the connection drops before a message is acknowledged, and
    resuming on a new connection replays it and what came while it was gone."""
    raw = await env.raw()
    features = parse_features(await raw.authenticate("bob", "secret"))
    env.advertised(has(features, NS_SM, "sm"), "`<sm xmlns='urn:xmpp:sm:3'/>` in the stream features")
    await bind(raw, "phone")
    raw.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    enabled = await nonza(raw, "enabled", "failed")
    assert local(enabled) == "enabled" and enabled.get("resume") in ("true", "1"), tostring(enabled)
    sm_id = enabled.get("id")
    assert sm_id
    raw.send(f"<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='{NS_PING}'/></iq><r xmlns='{NS_SM}'/>")
    ack = await nonza(raw, "a")
    assert ack.get("h") == "1", tostring(ack)

    alice = await env.online(f"{ALICE}/desk")
    say(alice, f"{BOB}/phone", "resume me")
    await raw.read_until(b"resume me")
    raw.abort()

    async def dropped() -> bool:
        # Resuming before the server noticed the drop would only take over a live stream.
        session = env.server.router.sessions.get(JID.parse(f"{BOB}/phone"))
        return session is None or bool(getattr(session, "closed", False))

    await eventually(dropped, "the server noticed the dropped connection")
    say(alice, f"{BOB}/phone", "while you were gone")
    await alice.mark()
    again = await env.raw()
    await again.authenticate("bob", "secret")
    again.send(f"<resume xmlns='{NS_SM}' previd='{sm_id}' h='0'/>")
    resumed = await nonza(again, "resumed", "failed")
    assert local(resumed) == "resumed", tostring(resumed)
    replayed = await again.read_until(b"while you were gone")
    assert b"resume me" in replayed, "the unacknowledged message was not replayed"


async def im_mam(env: Env) -> None:
    """Bob queries his archive for Alice's message and finds it under the stanza-id it
    carried live; Alice's archive has it too."""
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    await env.in_account_disco(bob, BOB, NS_MAM)
    say(alice, BOB, "archive me")
    live = await bob.next(message("archive me"), "alice's message")
    [live_id] = stanza_ids(live, BOB)
    found = [(i, m) for i, m in await archive(bob, "b1") if m.findtext("{jabber:client}body") == "archive me"]
    assert [i for i, _ in found] == [live_id], found
    mine = await archive(alice, "a1", ("with", BOB))
    assert "archive me" in [m.findtext("{jabber:client}body") for _, m in mine]


async def chat_service(env: Env, peer: Peer) -> str | None:
    """The chat service among the server's disco#items (identity conference/text)."""
    listing = await peer.query("get", f"<query xmlns='{NS_ITEMS}'/>", to=DOMAIN)
    for it in listing.iter(q(NS_ITEMS, "item")):
        idents, feats = await disco_info(peer, it.get("jid", ""))
        if ("conference", "text") in idents and NS_MUC in feats:
            return it.get("jid")
    return None


async def enter(peer: Peer, room: str, nick: str) -> Element:
    """Joins a room and returns the occupant's own presence (status 110)."""
    peer.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>")

    def own(el: Element) -> bool:
        x = el.find(q(NS_MUC_USER, "x"))
        return (local(el) == "presence" and el.get("from") == f"{room}/{nick}" and x is not None
                and "110" in {st.get("code") for st in x.findall(q(NS_MUC_USER, "status"))})
    return await peer.next(own, f"the room's self-presence for {nick}")


async def im_groupchat(env: Env) -> None:
    """Alice finds the chat service in the server's disco#items, makes a room and invites
    Bob directly (XEP-0249); Bob joins; a groupchat message reaches both occupants."""
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    service = await chat_service(env, alice)
    env.advertised(service is not None, "a chat service (identity conference/text, feature "
                   f"`{NS_MUC}`) in the server's disco#items")
    room = f"lobby@{service or 'conference.' + DOMAIN}"
    await enter(alice, room, "ali")
    alice.send(f"<message to='{BOB}'><x xmlns='{NS_CONFERENCE}' jid='{room}' reason='standup'/></message>")
    invite = await bob.next(lambda el: el.find(q(NS_CONFERENCE, "x")) is not None, "alice's direct invitation")
    assert invite.find(q(NS_CONFERENCE, "x")).get("jid") == room  # type: ignore[union-attr]
    await enter(bob, room, "bob")
    await alice.next(presence(f"{room}/bob"), "bob joining")
    alice.send(f"<message to='{room}' type='groupchat'><body>hello room</body></message>")
    for peer in (alice, bob):
        got = await peer.next(message("hello room", frm=f"{room}/ali", type_="groupchat"), "the room message")
        assert got.get("to", "").startswith(ALICE if peer is alice else BOB)


async def im_room_mam(env: Env) -> None:
    """An owner makes a room persistent; a message said in it is in the room's archive
    (MAM on the room), under the stanza-id it carried live."""
    alice = await env.online(f"{ALICE}/desk")
    room = f"archived@conference.{DOMAIN}"
    await enter(alice, room, "ali")
    await alice.query("set", f"<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='submit'>"
                             "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                             "<field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query>", to=room)
    _, feats = await disco_info(alice, room)
    env.advertised(NS_MAM in feats, f"`{NS_MAM}` in the room's disco#info")
    alice.send(f"<message to='{room}' type='groupchat'><body>keep this</body></message>")
    live = await alice.next(message("keep this", type_="groupchat"), "the room message")
    [live_id] = stanza_ids(live, room)
    await alice.mark()
    res = await alice.query("set", f"<query xmlns='{NS_MAM}' queryid='r1'/>", to=room)
    assert res.find(q(NS_MAM, "fin")) is not None, "a MAM query ends with <fin/>"
    found = []
    for el in await alice.mark():
        result = el.find(q(NS_MAM, "result"))
        if result is not None and el.get("from") == room:
            fwd = result.find(f"{q(NS_FORWARD, 'forwarded')}/{{jabber:client}}message")
            if fwd is not None and fwd.findtext("{jabber:client}body") == "keep this":
                found.append(result.get("id"))
    assert found == [live_id], found


async def im_room_self_ping(env: Env) -> None:
    """An occupant pings its own occupant JID and gets a result; once it has left, the
    same ping says it is no longer in the room (not-acceptable)."""
    alice = await env.online(f"{ALICE}/desk")
    room = f"pinged@conference.{DOMAIN}"
    await enter(alice, room, "ali")
    _, feats = await disco_info(alice, room)
    env.advertised(NS_MUC in feats, f"`{NS_MUC}` in the room's disco#info")
    await alice.query("get", f"<ping xmlns='{NS_PING}'/>", to=f"{room}/ali")
    alice.send(f"<presence to='{room}/ali' type='unavailable'/>")
    await alice.next(presence(f"{room}/ali", "unavailable"), "leaving the room")
    bob = await env.online(f"{BOB}/desk")
    await enter(bob, room, "bob")
    _, condition = await alice.refused("get", f"<ping xmlns='{NS_PING}'/>", to=f"{room}/ali")
    assert condition == "not-acceptable", condition


async def im_upload(env: Env) -> None:
    """Finds the upload service among the server's disco#items, asks it for a slot for a
    small file, uploads the file with PUT and downloads it back with GET."""
    alice = await env.online(f"{ALICE}/desk")
    listing = await alice.query("get", f"<query xmlns='{NS_ITEMS}'/>", to=DOMAIN)
    candidates = [DOMAIN, *(it.get("jid", "") for it in listing.iter(q(NS_ITEMS, "item")))]
    service = None
    for jid in candidates:
        idents, feats = await disco_info(alice, jid)
        if ("store", "file") in idents and NS_UPLOAD in feats:
            service = jid
            break
    env.advertised(service is not None, "an upload service (identity store/file, feature "
                   "`urn:xmpp:http:upload:0`) in the server's disco#items")
    data = b"compliance check\n"
    res = await alice.query("get", f"<request xmlns='{NS_UPLOAD}' filename='check.txt' size='{len(data)}' "
                                   "content-type='text/plain'/>", to=service or DOMAIN)
    slot = res.find(q(NS_UPLOAD, "slot"))
    assert slot is not None, "no upload slot"
    put, get = slot.find(q(NS_UPLOAD, "put")), slot.find(q(NS_UPLOAD, "get"))
    assert put is not None and get is not None
    headers = {h.get("name", ""): h.text or "" for h in put.findall(q(NS_UPLOAD, "header"))}
    headers["Content-Type"] = "text/plain"
    await asyncio.to_thread(http, "PUT", put.get("url", ""), env.cert, data, headers)
    assert await asyncio.to_thread(http, "GET", get.get("url", ""), env.cert) == data


async def im_roster_versioning(env: Env) -> None:
    """A roster get with a version gets that version; asking with the current version gets
    an empty result; after a change, asking with the old version brings the change."""
    features = await env.features("bound")
    env.advertised(has(features, NS_ROSTERVER, "ver"), "`<ver/>` in the stream features")
    alice = await env.online(f"{ALICE}/desk")
    first = (await alice.query("get", roster_get(""))).find(q(NS_ROSTER, "query"))
    assert first is not None and first.get("ver") is not None
    v0 = first.get("ver", "")
    assert list(await alice.query("get", roster_get(v0))) == [], "an unchanged roster was sent again"
    await alice.query("set", roster_set(item_xml(BOB, "Bob")))
    push = await alice.next(is_push(BOB), "the push")
    v1 = push.find(q(NS_ROSTER, "query")).get("ver")  # type: ignore[union-attr]
    assert v1 and v1 != v0
    changed = (await alice.query("get", roster_get(v0))).find(q(NS_ROSTER, "query"))
    if changed is not None:
        assert changed.get("ver") == v1 and BOB in roster_items_of(changed)
    else:
        # RFC 6121 2.6.3 lets the server send the changes as pushes instead.
        def pushed_v1(el: Element) -> bool:
            query = el.find(q(NS_ROSTER, "query"))
            return is_push(BOB)(el) and query is not None and query.get("ver") == v1

        await alice.next(pushed_v1, "the change as a push")


async def im_offline(env: Env) -> None:
    """A message to a user who is offline is delivered when they sign in, with a delay stamp."""
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, "msgoffline")
    say(alice, BOB, "while you were away")
    assert not [el for el in await alice.mark() if message(type_="error")(el)]
    bob = await env.online(f"{BOB}/desk")
    got = await bob.next(message("while you were away"), "the stored message")
    delay = got.find(q(NS_DELAY, "delay"))
    assert delay is not None and delay.get("from") == DOMAIN and delay.get("stamp")


async def im_flexible_offline(env: Env) -> None:
    """Bob counts his stored messages on the offline node, fetches them, and purges them."""
    alice = await env.online(f"{ALICE}/desk")
    await env.in_server_disco(alice, NS_OFFLINE)
    for body in ("first", "second"):
        say(alice, BOB, body)
    await alice.mark()
    bob = await env.online(f"{BOB}/desk", available=False)
    info = await bob.query("get", f"<query xmlns='{NS_INFO}' node='{NS_OFFLINE}'/>", to=BOB)
    values = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in info.iter(q(NS_DATA, "field"))}
    assert values.get("number_of_messages") == "2", values
    await bob.mark()
    await bob.query("get", f"<offline xmlns='{NS_OFFLINE}'><fetch/></offline>")
    fetched = [el.findtext("{jabber:client}body") for el in await bob.mark() if message()(el)]
    assert fetched == ["first", "second"], fetched
    await bob.query("set", f"<offline xmlns='{NS_OFFLINE}'><purge/></offline>")
    info = await bob.query("get", f"<query xmlns='{NS_INFO}' node='{NS_OFFLINE}'/>", to=BOB)
    values = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in info.iter(q(NS_DATA, "field"))}
    assert values.get("number_of_messages") == "0", values


async def im_privacy(env: Env) -> None:
    """Alice makes a list denying Bob's messages her default: his message is refused,
    Carol's arrives, and the list reads back as stored."""
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    carol = await env.online(f"{CAROL}/desk")
    await env.in_server_disco(alice, NS_PRIVACY)
    await alice.query("set", f"<query xmlns='{NS_PRIVACY}'><list name='no-bob'>"
                             f"<item type='jid' value='{BOB}' action='deny' order='1'><message/></item>"
                             "</list></query>")
    await alice.query("set", f"<query xmlns='{NS_PRIVACY}'><default name='no-bob'/></query>")
    say(bob, ALICE, "can you hear me")
    assert await bounced(bob, "can you hear me") == "service-unavailable"
    say(carol, ALICE, "hello from carol")
    await alice.next(message("hello from carol"), "carol's message")
    res = await alice.query("get", f"<query xmlns='{NS_PRIVACY}'><list name='no-bob'/></query>")
    items = [(it.get("type"), it.get("value"), it.get("action")) for it in res.iter(q(NS_PRIVACY, "item"))]
    assert ("jid", BOB, "deny") in items, items


async def im_invisible(env: Env) -> None:
    """Alice goes invisible: her contact sees her unavailable and not her status changes,
    yet his message reaches her; visible again, he sees her."""
    await subscribed(env.server, ALICE, BOB, both=True)
    alice = await env.online(f"{ALICE}/desk", pstatus="here")
    bob = await env.online(f"{BOB}/desk")
    await bob.next(presence(f"{ALICE}/desk"), "alice's presence")
    await env.in_server_disco(alice, NS_INVISIBLE)
    await alice.query("set", f"<invisible xmlns='{NS_INVISIBLE}'/>")
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "alice going invisible")
    await bob.mark()
    change_status(alice, "secretly here")
    await alice.mark()
    assert not presences_from(await bob.mark(), ALICE), "a contact saw the invisible session"
    say(bob, f"{ALICE}/desk", "are you there?")
    await alice.next(message("are you there?"), "bob's message, while invisible")
    await alice.query("set", f"<visible xmlns='{NS_INVISIBLE}'/>")
    await bob.next(presence(f"{ALICE}/desk", status="secretly here"), "alice visible again")


async def im_stanza_id(env: Env) -> None:
    """A message reaches Bob with one stanza-id in his name (a forged one the sender put in
    is removed), and his archive knows the message under that id."""
    alice = await env.online(f"{ALICE}/desk")
    bob = await env.online(f"{BOB}/desk")
    await env.in_account_disco(bob, BOB, NS_SID)
    alice.send(f"<message to='{BOB}' type='chat'><body>id me</body>"
               f"<stanza-id xmlns='{NS_SID}' by='{BOB}' id='forged'/></message>")
    got = await bob.next(message("id me"), "alice's message")
    ids = stanza_ids(got, BOB)
    assert len(ids) == 1 and ids[0] != "forged", ids
    archived = {i for i, m in await archive(bob, "s1") if m.findtext("{jabber:client}body") == "id me"}
    assert archived == set(ids), archived


async def im_vcard4(env: Env) -> None:
    """Alice publishes her vCard4; a contact following it is notified and reads it with the
    IQ form."""
    await subscribed(env.server, BOB, ALICE)
    alice = await env.pep_online(f"{ALICE}/desk")
    bob = await env.pep_online(f"{BOB}/desk", NODE_VCARD4)
    await env.in_account_disco(bob, ALICE, NS_VCARD4, NODE_VCARD4)
    card = f"<vcard xmlns='{NS_VCARD4}'><fn><text>Alice Liddell</text></fn></vcard>"
    await publish(alice, NODE_VCARD4, card, "current")
    msg = await bob.next(event(NODE_VCARD4, ALICE), "the vCard4 notification")
    [(item_id, _)] = published(msg)
    assert item_id == "current"
    res = await bob.query("get", f"<vcard xmlns='{NS_VCARD4}'/>", to=ALICE)
    assert res.findtext(f"{q(NS_VCARD4, 'vcard')}/{q(NS_VCARD4, 'fn')}/{q(NS_VCARD4, 'text')}") == "Alice Liddell"


async def im_register(env: Env) -> None:
    """With the default configuration registration is neither offered nor possible; with
    `[registration] enabled` a new account is created on a fresh stream and signs in."""
    off = await env.raw()
    env.advertised(not has(parse_features(await off.start()), NS_REGISTER_FEATURE, "register"),
                   "not offered by default (the suite: off by default)")
    refused = await preauth_iq(off, "r0", "set", f"<query xmlns='{NS_REGISTER}'><username>ivan</username>"
                                                 "<password>pw</password></query>")
    assert b"service-unavailable" in refused, refused

    enabled = await env.make_server(storage_url=f"sqlite:///{env.tmp}/registration.db",
                                    registration={"enabled": True})
    raw = await env.raw(enabled)
    env.advertised(has(parse_features(await raw.start()), NS_REGISTER_FEATURE, "register"),
                   "`<register/>` in the stream features once enabled")
    form = await preauth_iq(raw, "r1", "get", f"<query xmlns='{NS_REGISTER}'/>")
    assert b"<username" in form and b"<password" in form, form
    done = await preauth_iq(raw, "r2", "set", f"<query xmlns='{NS_REGISTER}'><username>dave</username>"
                                              "<password>pw-dave</password></query>")
    assert b"type='result'" in done.replace(b'"', b"'"), done
    c = await slix(enabled, f"dave@{DOMAIN}/desk", "pw-dave")
    env.later(close_all, c)


# === Mobile ======================================================================================


async def mobile_csi(env: Env) -> None:
    """Bob's phone says it is inactive; of Alice's two status changes it then gets only the
    newer (the older was held and replaced), and a message still comes at once."""
    await subscribed(env.server, BOB, ALICE)
    alice = await env.online(f"{ALICE}/desk")
    features = await env.features("bound")
    env.advertised(has(features, NS_CSI, "csi"), "`<csi xmlns='urn:xmpp:csi:0'/>` in the stream features")
    bob = await env.online(f"{BOB}/phone")
    bob.send(f"<inactive xmlns='{NS_CSI}'/>")
    await bob.mark()
    change_status(alice, "one")
    change_status(alice, "two")
    await alice.mark()
    statuses = [el.findtext("{jabber:client}status") for el in await bob.mark()
                if local(el) == "presence" and el.get("from") == alice.jid]
    assert statuses == ["two"], f"while inactive the phone got {statuses}"
    say(alice, BOB, "wake up")
    await bob.next(message("wake up"), "the message")
    bob.send(f"<active xmlns='{NS_CSI}'/>")
    change_status(alice, "three")
    await bob.next(presence(alice.jid, status="three"), "presence once active")


async def mobile_push(env: Env) -> None:
    """Alice's phone enables push at an app server with a node and a secret; the server
    accepts and keeps the registration (options included) and removes it on disable."""
    alice = await env.online(f"{ALICE}/phone")
    await env.in_account_disco(alice, ALICE, NS_PUSH)
    options = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>{NS_PUBLISH_OPTIONS}</value>"
               "</field><field var='secret'><value>s3cr3t</value></field></x>")
    await alice.query("set", f"<enable xmlns='{NS_PUSH}' jid='{PUSH_APP}' node='n1'>{options}</enable>")
    registrations = env.server.modules["push"].registrations  # type: ignore[attr-defined]
    kept = await registrations.list(ALICE)
    assert [(r.service, r.node, r.options.get("secret")) for r in kept] == [(PUSH_APP, "n1", ["s3cr3t"])], kept
    await alice.query("set", f"<disable xmlns='{NS_PUSH}' jid='{PUSH_APP}' node='n1'/>")
    assert await registrations.list(ALICE) == []


# === A/V Calling =================================================================================


async def av_extdisco(env: Env) -> None:
    """The configured STUN and TURN services are listed; the TURN one comes with temporary
    credentials."""
    alice = await env.online(f"{ALICE}/phone")
    await env.in_server_disco(alice, NS_EXTDISCO)
    res = await alice.query("get", f"<services xmlns='{NS_EXTDISCO}'/>", to=DOMAIN)
    services = {(s.get("type"), s.get("host"), s.get("port")): s for s in res.iter(q(NS_EXTDISCO, "service"))}
    assert set(services) == {("stun", "stun.example.test", "3478"), ("turn", "turn.example.test", "3478")}
    turn = services[("turn", "turn.example.test", "3478")]
    assert turn.get("username", "").endswith(f":{ALICE}") and turn.get("password")


# --- the rows: per category, the suite's in XEP-0479's order, then what the server adds ---

COMPONENTS = {"components": {"enabled": True, "port": 0,
                             "components": [{"domain": COMPONENT, "secret": COMPONENT_SECRET}]}}

REQUIREMENTS: tuple[Requirement, ...] = (
    # Core
    Requirement("Core features", "RFC 6120", CORE, SERVER_LEVEL, core_rfc6120),
    Requirement("TLS", "RFC 7590", CORE, SERVER_LEVEL, core_tls),
    Requirement("Direct TLS", "XEP-0368", CORE, ADVANCED, core_direct_tls),
    Requirement("Feature discovery", "XEP-0030", CORE, SERVER_LEVEL, core_disco),
    Requirement("Feature broadcasts", "XEP-0115", CORE, ADVANCED, core_caps),
    Requirement("Server extensibility", "XEP-0114", CORE, SERVER_LEVEL, core_component, COMPONENTS),
    Requirement("Event publishing", "XEP-0163", CORE, ADVANCED, core_pep),
    Requirement("SCRAM with channel binding", "RFC 5802, RFC 7677, XEP-0440", CORE, BEYOND, core_scram),
    Requirement("Ping", "XEP-0199", CORE, BEYOND, core_ping),
    Requirement("Software version", "XEP-0092", CORE, BEYOND, core_version),
    Requirement("Entity time", "XEP-0202", CORE, BEYOND, core_time),
    Requirement("Last activity", "XEP-0012", CORE, BEYOND, core_last),
    Requirement("Ad-hoc commands", "XEP-0050", CORE, BEYOND, core_adhoc, {"server": {"admins": [ALICE]}}),
    # IM
    Requirement("Core features", "RFC 6121", IM, SERVER_LEVEL, im_rfc6121,
                {"authorization": {"auto_approve": False}}),
    Requirement("User avatar compatibility", "XEP-0398, XEP-0153", IM, ADVANCED, im_avatar),
    Requirement("vcard-temp", "XEP-0054", IM, SERVER_LEVEL, im_vcard),
    Requirement("Outbound message synchronization", "XEP-0280", IM, SERVER_LEVEL, im_carbons),
    Requirement("User blocking", "XEP-0191", IM, ADVANCED, im_blocking),
    Requirement("Group chat", "XEP-0045, XEP-0249", IM, SERVER_LEVEL, im_groupchat),
    Requirement("Advanced group chat: bookmarks", "XEP-0402", IM, ADVANCED, im_bookmarks2),
    Requirement("Advanced group chat: legacy bookmarks", "XEP-0048", IM, ADVANCED, im_bookmarks_legacy),
    Requirement("Advanced group chat: history from the room archive", "XEP-0313", IM, ADVANCED, im_room_mam),
    Requirement("Advanced group chat: room self-ping", "XEP-0410", IM, ADVANCED, im_room_self_ping),
    Requirement("Persistent storage of private data via PubSub", "XEP-0223", IM, ADVANCED, im_private_pubsub),
    Requirement("Private XML storage", "XEP-0049", IM, ADVANCED, im_private_xml),
    Requirement("Stream management", "XEP-0198", IM, ADVANCED, stream_management),
    Requirement("History storage / retrieval", "XEP-0313", IM, ADVANCED, im_mam),
    Requirement("File upload", "XEP-0363", IM, SERVER_LEVEL, im_upload),
    Requirement("Roster versioning", "XEP-0237", IM, BEYOND, im_roster_versioning),
    Requirement("Offline messages", "XEP-0160", IM, BEYOND, im_offline),
    Requirement("Flexible offline message retrieval", "XEP-0013", IM, BEYOND, im_flexible_offline),
    Requirement("Privacy lists", "XEP-0016", IM, BEYOND, im_privacy),
    Requirement("Invisible command", "XEP-0186", IM, BEYOND, im_invisible),
    Requirement("Unique and stable stanza IDs", "XEP-0359", IM, BEYOND, im_stanza_id),
    Requirement("vCard4 over XMPP", "XEP-0292", IM, BEYOND, im_vcard4),
    Requirement("In-band registration", "XEP-0077", IM, OF_NOTE, im_register),
    # Mobile
    Requirement("Stream management", "XEP-0198", MOBILE, SERVER_LEVEL, stream_management),
    Requirement("Client state indication", "XEP-0352", MOBILE, SERVER_LEVEL, mobile_csi),
    Requirement("Third-party push notifications", "XEP-0357", MOBILE, ADVANCED, mobile_push),
    # A/V Calling: the one row a server takes part in
    Requirement("STUN/TURN server discovery", "XEP-0215", AV, SERVER_LEVEL, av_extdisco,
                {"external_services": EXTERNAL_SERVICES}),
)


def row_ids(requirements: tuple[Requirement, ...]) -> dict[Requirement, str]:
    """The test id of each row: XEP and name, plus the category where a row recurs."""
    counts: dict[str, int] = {}
    for r in requirements:
        counts[r.base_id] = counts.get(r.base_id, 0) + 1
    return {r: r.base_id if counts[r.base_id] == 1 else f"{r.base_id} ({r.category})" for r in requirements}


IDS = row_ids(REQUIREMENTS)


def outcome_of(req: Requirement) -> Outcome:
    return Outcome(req.requirement, req.xep, req.category, req.level)


for _req in REQUIREMENTS:
    if _req.not_yet is not None:
        RESULTS[IDS[_req]] = replace(outcome_of(_req), note=_req.not_yet)

PARAMS = [pytest.param(r, id=IDS[r], marks=[pytest.mark.skip(reason=r.not_yet)] if r.not_yet else [])
          for r in REQUIREMENTS]


def failure_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def compose_note(req: Requirement, env: Env, failure: str | None) -> str:
    parts = []
    if env.found:
        parts.append("Advertised: " + "; ".join(env.found) + ".")
    if env.missing:
        parts.append("NOT advertised: " + "; ".join(env.missing) + ".")
    parts.append("Exchange: " + req.exchange)
    if failure:
        parts.append(f"FAILED: {failure}")
    return " ".join(parts)


@pytest.mark.parametrize("req", PARAMS)
async def test_requirement(req: Requirement, make_server: ServerFactory, connect: Connect, cert_path: Path,
                           tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    assert req.check is not None
    outcome = outcome_of(req)
    RESULTS[IDS[req]] = outcome
    failure: str | None = None
    try:
        server = await make_server(**req.config)
        await users(server, ALICE, BOB, CAROL)
        async with AsyncExitStack() as stack:
            env = Env(server, make_server, connect, outcome, stack, cert_path, tmp_path)
            try:
                await req.check(env)
            except BaseException as e:
                failure = failure_text(e)
                outcome.works = False
                raise
            else:
                outcome.works = True
            finally:
                outcome.note = compose_note(req, env, failure)
    finally:
        record_property("compliance", asdict(outcome))
    assert outcome.advertised, f"{IDS[req]} works but is not advertised: {'; '.join(env.missing)}"
