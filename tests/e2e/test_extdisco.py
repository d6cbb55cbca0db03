"""External service discovery (XEP-0215) end to end: the configured STUN/TURN services,
static credentials and temporary TURN REST credentials, and the lookups that fail."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
from xml.etree.ElementTree import Element

import pytest

from parley.modules.extdisco import turn_rest_credentials
from parley.server import Server
from tests.conftest import ServerFactory, users
from tests.peer import ALICE, DOMAIN, Connect, q

NS = "urn:xmpp:extdisco:2"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
TURN_SECRET = "turn-shared-secret"
SERVICES = [
    {"type": "stun", "host": "stun.example.test", "port": 3478},
    {"type": "turn", "host": "turn.example.test", "port": 3478, "transport": "udp", "secret": TURN_SECRET,
     "ttl": 600},
    {"type": "turns", "host": "turn.example.test", "port": 5349, "transport": "tcp", "username": "static",
     "password": "static-pw"},
]


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    srv = await make_server(external_services=SERVICES)
    await users(srv, ALICE)
    return srv


def services_of(iq: Element, wrapper: str = "services") -> list[Element]:
    top = iq.find(q(NS, wrapper))
    assert top is not None
    return top.findall(q(NS, "service"))


def check_turn_rest(svc: Element, user: str, ttl: int, before: float) -> None:
    username, password = svc.get("username", ""), svc.get("password", "")
    expiry, _, who = username.partition(":")
    assert who == user
    assert int(before) + ttl <= int(expiry) <= int(time.time()) + ttl
    expected = base64.b64encode(hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert password == expected
    assert svc.get("restricted") == "true"
    stamp = dt.datetime.strptime(svc.get("expires", ""), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert int(stamp.timestamp()) == int(expiry)


async def test_feature_and_all_services(server: Server, connect: Connect) -> None:
    alice = await connect(server, f"{ALICE}/phone")
    info = await alice.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=DOMAIN)
    assert NS in {f.get("var") for f in info.iter(q(NS_DISCO_INFO, "feature"))}

    before = time.time()
    found = services_of(await alice.query("get", f"<services xmlns='{NS}'/>", to=DOMAIN))
    assert [(s.get("type"), s.get("host"), s.get("port"), s.get("transport")) for s in found] == [
        ("stun", "stun.example.test", "3478", "udp"),
        ("turn", "turn.example.test", "3478", "udp"),
        ("turns", "turn.example.test", "5349", "tcp"),
    ]
    stun, turn, turns = found
    assert stun.get("username") is None and stun.get("password") is None
    check_turn_rest(turn, ALICE, 600, before)
    assert (turns.get("username"), turns.get("password"), turns.get("restricted")) == ("static", "static-pw", None)


async def test_services_of_one_type(server: Server, connect: Connect) -> None:
    alice = await connect(server, f"{ALICE}/phone")
    found = services_of(await alice.query("get", f"<services xmlns='{NS}' type='turn'/>", to=DOMAIN))
    assert [(s.get("type"), s.get("port")) for s in found] == [("turn", "3478")]
    assert not services_of(await alice.query("get", f"<services xmlns='{NS}' type='stuns'/>", to=DOMAIN))


async def test_credentials_request(server: Server, connect: Connect) -> None:
    alice = await connect(server, f"{ALICE}/phone")
    before = time.time()
    asked = f"<credentials xmlns='{NS}'><service type='turn' host='turn.example.test'/></credentials>"
    [turn] = services_of(await alice.query("get", asked, to=DOMAIN), "credentials")
    check_turn_rest(turn, ALICE, 600, before)

    by_port = f"<credentials xmlns='{NS}'><service host='turn.example.test' port='5349'/></credentials>"
    [turns] = services_of(await alice.query("get", by_port, to=DOMAIN), "credentials")
    assert turns.get("username") == "static"

    stun = f"<credentials xmlns='{NS}'><service type='stun' host='stun.example.test'/></credentials>"
    assert await alice.refused("get", stun, to=DOMAIN) == ("cancel", "item-not-found")
    nameless = f"<credentials xmlns='{NS}'><service type='turn'/></credentials>"
    assert await alice.refused("get", nameless, to=DOMAIN) == ("modify", "bad-request")


async def test_no_services_configured(make_server: ServerFactory, connect: Connect) -> None:
    srv = await make_server()
    await users(srv, ALICE)
    alice = await connect(srv, f"{ALICE}/phone")
    assert not services_of(await alice.query("get", f"<services xmlns='{NS}'/>", to=DOMAIN))


def test_turn_rest_credentials_scheme() -> None:
    username, password, expiry = turn_rest_credentials("s", "u@example.test", 60, now=1000.0)
    assert (username, expiry) == ("1060:u@example.test", 1060)
    assert password == base64.b64encode(hmac.new(b"s", b"1060:u@example.test", hashlib.sha1).digest()).decode()
