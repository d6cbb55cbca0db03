"""Server services against slixmpp: disco (XEP-0030/0115/0128), vCard-temp, private XML,
version, time, ping (and dead-connection detection) and last activity."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from xml.etree.ElementTree import Element, SubElement, fromstring

import pytest
from slixmpp import Iq
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

import parley
from parley.modules.disco import CAPS_NODE, NS_CLIENT_POLICY, NS_SERVERINFO
from parley.server import Server
from parley.storage.repos import RosterItem
from parley.xmpp.caps import Identity, caps_ver, parse_info, verify_ver
from parley.xmpp.jid import JID
from tests.clients import TIMEOUT, Raw, close_each, eventually, slix
from tests.conftest import ServerFactory, add_user, users
from tests.peer import ALICE, BOB, DOMAIN

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_PRIVATE = "jabber:iq:private"

SERVICES = ("xep_0030", "xep_0054", "xep_0092", "xep_0128", "xep_0199", "xep_0202", "xep_0012")


Client = Callable[..., Awaitable[Any]]


@pytest.fixture
async def client(make_server: ServerFactory) -> AsyncIterator[Client]:
    """Signs in slixmpp clients with the service plugins (or the ones named), without a
    roster; the ones still connected are closed after the test."""
    opened: list[Any] = []

    async def go(server: Server, jid: str, *plugins: str, presence: bool = False) -> Any:
        c = await slix(server, jid, plugins=plugins or SERVICES, presence=presence, get_roster=False)
        opened.append(c)
        return c

    yield go
    await close_each(*opened)


def condition(err: IqError) -> str:
    return str(err.iq["error"]["condition"])


async def refusal(request: Awaitable[Any]) -> str:
    """The condition of the error that answers a request the server must refuse."""
    with pytest.raises(IqError) as e:
        await request
    return condition(e.value)


# --- XEP-0115 verification strings (the XEP's own examples) ------------------------------

SIMPLE_FEATURES = ["http://jabber.org/protocol/caps", NS_INFO,
                   "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/muc"]

COMPLEX_INFO = """
<query xmlns='http://jabber.org/protocol/disco#info'
       node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='&#936; 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
    <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>
    <field var='os'><value>Mac</value></field>
    <field var='os_version'><value>10.5.1</value></field>
    <field var='software'><value>Psi</value></field>
    <field var='software_version'><value>0.11</value></field>
  </x>
</query>
"""


def test_caps_ver_simple_example() -> None:
    ver = caps_ver([Identity("client", "pc", "", "Exodus 0.9.1")], SIMPLE_FEATURES)
    assert ver == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_caps_ver_complex_example_with_form() -> None:
    identities = [Identity("client", "pc", "en", "Psi 0.11"), Identity("client", "pc", "el", "Ψ 0.11")]
    form = {"FORM_TYPE": ["urn:xmpp:dataforms:softwareinfo"], "ip_version": ["ipv6", "ipv4"],
            "os": ["Mac"], "os_version": ["10.5.1"], "software": ["Psi"], "software_version": ["0.11"]}
    assert caps_ver(identities, reversed(SIMPLE_FEATURES), [form]) == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_verify_ver_against_disco_results() -> None:
    query = fromstring(COMPLEX_INFO)
    assert verify_ver("q07IKJEyjvHSyhy//CH0CxmKi8w=", query)
    assert not verify_ver("QgayPKawpkPSDYmwT/WM94uAlu0=", query)
    assert not verify_ver("q07IKJEyjvHSyhy//CH0CxmKi8w=", query, hash_name="md5")

    # A duplicate feature makes the whole result ill-formed (XEP-0115 section 5.4).
    dup = fromstring(COMPLEX_INFO)
    SubElement(dup, f"{{{NS_INFO}}}feature", {"var": "http://jabber.org/protocol/muc"})
    assert not verify_ver("q07IKJEyjvHSyhy//CH0CxmKi8w=", dup)

    # Two forms of one FORM_TYPE: ill-formed too.
    twice = fromstring(COMPLEX_INFO)
    twice.append(twice.find("{jabber:x:data}x"))  # type: ignore[arg-type]
    assert not verify_ver("q07IKJEyjvHSyhy//CH0CxmKi8w=", twice)

    # A form whose FORM_TYPE is not hidden is left out of the hash, not fatal.
    extra = fromstring(COMPLEX_INFO)
    x = SubElement(extra, "{jabber:x:data}x", {"type": "result"})
    ft = SubElement(x, "{jabber:x:data}field", {"var": "FORM_TYPE"})
    SubElement(ft, "{jabber:x:data}value").text = "urn:example:visible"
    assert verify_ver("q07IKJEyjvHSyhy//CH0CxmKi8w=", extra)
    assert len(parse_info(extra).forms) == 1


# --- disco ------------------------------------------------------------------------------

async def test_server_disco_info_lists_every_module(make_server: ServerFactory, client: Client) -> None:
    server = await make_server(im={"allow_cut_and_paste": False}, server={"name": "Acme Chat"})
    await add_user(server, ALICE)
    c = await client(server, ALICE)
    iq = await c.plugin["xep_0030"].get_info(jid=DOMAIN)
    info = iq["disco_info"]
    assert ("server", "im", "en", "Acme Chat") in info["identities"]
    features = set(info["features"])
    for var in (NS_INFO, "http://jabber.org/protocol/disco#items", "vcard-temp", NS_PRIVATE,
                "jabber:iq:version", "urn:xmpp:time", "urn:xmpp:ping", "jabber:iq:last"):
        assert var in features, var

    forms: dict[str, dict[str, Element]] = {}
    for x in iq.xml.iter("{jabber:x:data}x"):
        fields = {f.get("var"): f for f in x.iter("{jabber:x:data}field")}
        form_type = fields["FORM_TYPE"].findtext("{jabber:x:data}value")
        assert fields["FORM_TYPE"].get("type") == "hidden"
        forms[form_type] = fields
    assert {NS_SERVERINFO, NS_CLIENT_POLICY} <= set(forms)
    policy = forms[NS_CLIENT_POLICY]
    assert policy["allow-history-logging"].findtext("{jabber:x:data}value") == "true"
    assert policy["allow-history-logging"].get("label") == "Allow clients to log instant message history"
    assert policy["allow-cut-and-paste"].findtext("{jabber:x:data}value") == "false"
    assert policy["allow-cut-and-paste"].get("label") == "Allow cut & paste"

    items = await c.plugin["xep_0030"].get_items(jid=DOMAIN)
    assert sorted(items["disco_items"]["items"]) == [(f"conference-1-parley.{DOMAIN}", None, "Chat service"),
                                                     (f"conference.{DOMAIN}", None, "Chat service")]


async def test_disco_unknown_node_is_item_not_found(server: Server, client: Client) -> None:
    await add_user(server, ALICE)
    c = await client(server, ALICE)
    for call in (c.plugin["xep_0030"].get_info, c.plugin["xep_0030"].get_items):
        assert await refusal(call(jid=DOMAIN, node="urn:example:no-such-node")) == "item-not-found"
    ver_node = f"{CAPS_NODE}#not-the-ver"
    assert await refusal(c.plugin["xep_0030"].get_info(jid=DOMAIN, node=ver_node)) == "item-not-found"


async def test_account_disco(server: Server, client: Client) -> None:
    await users(server, ALICE, BOB)
    a = await client(server, ALICE)
    # Anyone may see what an account supports, online or not.
    iq = await a.plugin["xep_0030"].get_info(jid=BOB)
    info = iq["disco_info"]
    assert ("account", "registered", None, None) in info["identities"]
    assert "jabber:iq:last" in info["features"]
    assert NS_INFO in info["features"]

    own = await a.plugin["xep_0030"].get_items(jid=ALICE)
    assert not list(own["disco_items"]["items"])
    assert await refusal(a.plugin["xep_0030"].get_items(jid=BOB)) == "forbidden"
    assert await refusal(a.plugin["xep_0030"].get_info(jid=f"nobody@{DOMAIN}")) == "service-unavailable"
    no_node = a.plugin["xep_0030"].get_info(jid=BOB, node="urn:example:no-such-node")
    assert await refusal(no_node) == "item-not-found"


async def test_caps_stream_feature_verified_by_the_client(server: Server, client: Client) -> None:
    await add_user(server, ALICE)
    c = await client(server, ALICE, "xep_0030", "xep_0128", "xep_0115")
    disco = server.modules["disco"]
    ver = disco.caps.get("ver")  # type: ignore[attr-defined]
    assert ver and disco.caps in server.stream_features  # type: ignore[attr-defined]

    # slixmpp reads <c/> from the stream features, fetches node#ver and only keeps the
    # string once its own hash of the answer matches.
    async def client_verified() -> bool:
        return await c.plugin["xep_0115"].get_verstring(DOMAIN) == ver

    await eventually(client_verified, "slixmpp accepted the server's caps")

    iq = await c.plugin["xep_0030"].get_info(jid=DOMAIN, node=f"{CAPS_NODE}#{ver}")
    query = iq.xml.find(f"{{{NS_INFO}}}query")
    assert query is not None and query.get("node") == f"{CAPS_NODE}#{ver}"
    assert verify_ver(ver, query)
    # The string covers modules that started after disco.
    assert "jabber:iq:last" in parse_info(query).features


# --- vCard-temp --------------------------------------------------------------------------

async def test_vcard_set_and_get(server: Server, client: Client) -> None:
    await users(server, ALICE, BOB)
    a = await client(server, ALICE)
    b = await client(server, BOB)
    # Nothing stored yet: an empty vCard, not an error.
    empty = await b.plugin["xep_0054"].get_vcard(jid=ALICE, local=False)
    assert len(empty.xml.find("{vcard-temp}vCard")) == 0

    card = a.plugin["xep_0054"].make_vcard()
    card["FN"] = "Alice Liddell"
    card["NICKNAME"] = "alice"
    await a.plugin["xep_0054"].publish_vcard(card)

    # Own vCard, asked with no 'to' at all.
    iq = a.make_iq_get()
    iq.enable("vcard_temp")
    own = await iq.send()
    assert own["vcard_temp"]["FN"] == "Alice Liddell"

    other = await b.plugin["xep_0054"].get_vcard(jid=ALICE, local=False)
    assert other["vcard_temp"]["FN"] == "Alice Liddell"
    assert other["vcard_temp"]["NICKNAME"] == ["alice"]
    assert other["from"] == ALICE


async def test_vcard_of_someone_else_cannot_be_set(server: Server, client: Client) -> None:
    await users(server, ALICE, BOB)
    a = await client(server, ALICE)
    card = a.plugin["xep_0054"].make_vcard()
    card["FN"] = "Not Bob"
    assert await refusal(a.plugin["xep_0054"].publish_vcard(card, jid=BOB)) == "forbidden"
    assert await server.repos.docs.get_vcard(BOB) is None


async def test_oversized_vcard_is_refused(server: Server, client: Client) -> None:
    await add_user(server, ALICE)
    a = await client(server, ALICE)
    card = a.plugin["xep_0054"].make_vcard()
    card["FN"] = "Alice"
    await a.plugin["xep_0054"].publish_vcard(card)
    big = a.plugin["xep_0054"].make_vcard()
    big["FN"] = "Alice"
    big["PHOTO"]["TYPE"] = "image/png"
    big["PHOTO"]["BINVAL"] = b"\x89PNG" + b"\0" * 60000  # about 80 KB once in base64
    with pytest.raises(IqError) as e:
        await a.plugin["xep_0054"].publish_vcard(big)
    assert condition(e.value) == "not-acceptable"
    assert "65536" in e.value.iq["error"]["text"]
    # The earlier vCard is untouched.
    stored = await server.repos.docs.get_vcard(ALICE)
    assert stored is not None and "BINVAL" not in stored


# --- private XML storage ----------------------------------------------------------------------

def private_iq(c: Any, type_: str, *payload: Element, to: str | None = None) -> Iq:
    iq = c.make_iq_set() if type_ == "set" else c.make_iq_get()
    if to:
        iq["to"] = to
    query = SubElement(iq.xml, f"{{{NS_PRIVATE}}}query")
    query.extend(payload)
    return iq


def el(tag: str, text: str | None = None, **attrs: str) -> Element:
    e = Element(tag, attrs)
    e.text = text
    return e


async def test_private_storage_round_trip(server: Server, client: Client) -> None:
    await add_user(server, ALICE)
    a = await client(server, ALICE)
    marks = el("{storage:bookmarks}storage")
    marks.append(el("{storage:bookmarks}conference", jid="room@conference.example.test", name="Room"))
    prefs = el("{urn:example:prefs}prefs", "dark")
    await private_iq(a, "set", marks, prefs).send()

    got = await private_iq(a, "get", el("{storage:bookmarks}storage")).send()
    stored = got.xml.find(f"{{{NS_PRIVATE}}}query/{{storage:bookmarks}}storage")
    assert stored is not None
    assert stored.find("{storage:bookmarks}conference").get("name") == "Room"  # type: ignore[union-attr]

    both = await private_iq(a, "get", el("{urn:example:prefs}prefs"),
                            el("{urn:example:none}nothing"), to=ALICE).send()
    query = both.xml.find(f"{{{NS_PRIVATE}}}query")
    assert query is not None
    assert query.findtext("{urn:example:prefs}prefs") == "dark"
    # Nothing stored under a namespace: the empty element comes back.
    nothing = query.find("{urn:example:none}nothing")
    assert nothing is not None and len(nothing) == 0 and not nothing.text


async def test_private_storage_refusals(server: Server, client: Client) -> None:
    await users(server, ALICE, BOB)
    a = await client(server, ALICE)
    for reserved in (NS_PRIVATE, "jabber:client", "jabber:server"):
        assert await refusal(private_iq(a, "set", el(f"{{{reserved}}}x")).send()) == "not-acceptable"

    # A set with one forbidden element stores none of them.
    mixed = private_iq(a, "set", el("{urn:example:ok}ok", "1"), el("{jabber:client}message"))
    assert await refusal(mixed.send()) == "not-acceptable"
    assert await server.repos.docs.get_private(ALICE, "urn:example:ok") is None

    for type_ in ("get", "set"):
        others = private_iq(a, type_, el("{urn:example:ok}ok", "1"), to=BOB)
        assert await refusal(others.send()) == "forbidden"
    assert await server.repos.docs.get_private(BOB, "urn:example:ok") is None


# --- version and time ------------------------------------------------------------------------

async def test_version_and_time(server: Server, client: Client) -> None:
    await add_user(server, ALICE)
    c = await client(server, ALICE)
    v = await c.plugin["xep_0092"].get_version(DOMAIN)
    assert v["software_version"]["name"] == "Parley"
    assert v["software_version"]["version"] == parley.__version__
    assert v.xml.find("{jabber:iq:version}query/{jabber:iq:version}os") is None

    t = await c.plugin["xep_0202"].get_entity_time(DOMAIN)
    assert t.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}tzo") == "+00:00"
    # Read as text: slixmpp's own accessor appends a second 'Z' to a compliant value.
    text = t.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}utc")
    assert text is not None and text.endswith("Z")
    utc = dt.datetime.fromisoformat(text)
    assert utc.utcoffset() == dt.timedelta(0)
    # A sanity bound on the clock it reports, far wider than any scheduling delay.
    assert abs(utc - dt.datetime.now(dt.UTC)) < dt.timedelta(hours=1)


# --- ping --------------------------------------------------------------------------------

async def test_ping_server_and_own_account(server: Server, client: Client) -> None:
    await users(server, ALICE, BOB)
    c = await client(server, ALICE)
    await c.plugin["xep_0199"].send_ping(DOMAIN)
    await c.plugin["xep_0199"].send_ping(ALICE)
    assert await refusal(c.plugin["xep_0199"].send_ping(BOB)) == "service-unavailable"


async def test_silent_connection_is_pinged_then_closed(make_server: ServerFactory, client: Client) -> None:
    server = await make_server(c2s={"ping_interval": 0.5, "ping_timeout": 0.5})
    await users(server, ALICE, BOB)

    b = await client(server, f"{BOB}/live")
    pings_answered = 0
    enough = asyncio.Event()

    def on_ping(_: Any) -> None:
        nonlocal pings_answered
        pings_answered += 1
        if pings_answered >= 4:
            enough.set()

    b.register_handler(Callback("count pings", StanzaPath("iq@type=get/ping"), on_ping))

    raw = await Raw.open(server)
    try:
        bound = await raw.login("alice", "secret", resource="silent")
        assert b"alice@example.test/silent" in bound
        # From here on the raw client sends nothing at all.
        ping = await raw.read_until(b"</iq>")
        assert b"urn:xmpp:ping" in ping and b"id='parley-ping-" in ping.replace(b'"', b"'")
        assert b"to='alice@example.test/silent'" in ping.replace(b'"', b"'")
        rest = await raw.read_all()
        assert b"connection-timeout" in rest

        async def unregistered() -> bool:
            return server.router.sessions.get(JID.parse(f"{ALICE}/silent")) is None

        await eventually(unregistered, "the closed session left the registry")

        # The client that answers keeps its session through several rounds of pings.
        await asyncio.wait_for(enough.wait(), TIMEOUT)
        assert server.router.sessions.get(JID.parse(f"{BOB}/live")) is not None
        await b.plugin["xep_0199"].send_ping(DOMAIN)
    finally:
        await raw.close()


# --- last activity ------------------------------------------------------------------------

async def test_last_activity(server: Server, client: Client) -> None:
    await users(server, ALICE, BOB)
    # Alice lets Bob see her presence: her roster has him with subscription 'from'.
    await server.repos.roster.save(ALICE, [RosterItem(BOB, subscription="from")])
    a = await client(server, ALICE)
    b = await client(server, BOB)
    up = await b.plugin["xep_0012"].get_last_activity(DOMAIN)
    assert int(up["last_activity"]["seconds"]) >= 0

    online = await b.plugin["xep_0012"].get_last_activity(ALICE)
    assert int(online["last_activity"]["seconds"]) == 0
    mine = await b.plugin["xep_0012"].get_last_activity(BOB)
    assert int(mine["last_activity"]["seconds"]) == 0

    # Bob has not given Alice his presence: she may not see his activity.
    assert await refusal(a.plugin["xep_0012"].get_last_activity(BOB)) == "forbidden"
    assert await refusal(b.plugin["xep_0012"].get_last_activity(f"nobody@{DOMAIN}")) == "service-unavailable"

    a.send_presence(ptype="unavailable", pstatus="Gone fishing")
    await close_each(a)

    async def recorded() -> bool:
        return await server.repos.docs.get_last(ALICE) is not None

    await eventually(recorded, "alice's logout was recorded")
    last = await b.plugin["xep_0012"].get_last_activity(ALICE)
    assert int(last["last_activity"]["seconds"]) >= 0
    assert last["last_activity"]["status"] == "Gone fishing"
