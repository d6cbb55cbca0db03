"""PEP (XEP-0163) end to end with slixmpp: publishing and notifications filtered by the
contacts' XEP-0115 +notify features, retrieval under each access model, the last item on
presence, publish-options preconditions (XEP-0060 7.1.5, as XEP-0223 uses them), node
configuration, retract/purge/delete, the limits, discovery, and vCard4 (XEP-0292)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element, fromstring
from xml.sax.saxutils import quoteattr

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004.stanza import Form
from slixmpp.xmlstream import ElementBase

from parley.modules.pep import MAX_ITEMS_CAP, MAX_NODE_NAME, MAX_PAYLOAD_BYTES, Pep
from parley.server import Server
from tests.clients import TIMEOUT, eventually
from tests.conftest import ServerFactory, subscribed, users
from tests.peer import ALICE, BOB, CAROL, DAVE, DOMAIN, NS_STANZAS, Connect, Peer, local, q
from tests.pg import PgServer

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = f"{NS_PUBSUB}#owner"
NS_EVENT = f"{NS_PUBSUB}#event"
NS_ERRORS = f"{NS_PUBSUB}#errors"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_TUNE = "http://jabber.org/protocol/tune"
NS_MOOD = "http://jabber.org/protocol/mood"
NS_VCARD4 = "urn:ietf:params:xml:ns:vcard-4.0"
PEP_PLUGINS = ("xep_0004", "xep_0060", "xep_0115", "xep_0163")


# --- helpers ---------------------------------------------------------------------------------------


def pep(server: Server) -> Pep:
    mod = server.modules["pep"]
    assert isinstance(mod, Pep)
    return mod


async def online(server: Server, connect: Connect, jid: str, *interests: str,
                 plugins: tuple[str, ...] = ()) -> Peer:
    """Signs in a client whose caps ask for the events of these nodes, and returns once the
    server has learnt (and verified) what the client wants."""
    peer = await connect(server, jid, available=False, plugins=PEP_PLUGINS + plugins)
    for ns in interests:
        peer.c.plugin["xep_0163"].add_interest(ns)
    # The caps string in the initial presence must already cover the interests.
    await peer.c.plugin["xep_0115"].update_caps(broadcast=False)
    peer.c.send_presence()
    await peer.mark()
    if interests:
        async def learnt() -> bool:
            return set(interests) <= pep(server).interests(peer.jid)

        await eventually(learnt, f"the server learnt what {peer.jid} wants")
    return peer


def tune(artist: str, title: str = "Song") -> str:
    return f"<tune xmlns='{NS_TUNE}'><artist>{artist}</artist><title>{title}</title></tune>"


def publish_xml(node: str, payload: str, item_id: str | None = None,
                options: dict[str, str] | None = None) -> str:
    item_attr = f" id={quoteattr(item_id)}" if item_id else ""
    opts = ""
    if options:
        fields = "".join(f"<field var={quoteattr(k)}><value>{v}</value></field>" for k, v in options.items())
        opts = (f"<publish-options><x xmlns='jabber:x:data' type='submit'>"
                f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#publish-options</value></field>"
                f"{fields}</x></publish-options>")
    return (f"<pubsub xmlns='{NS_PUBSUB}'><publish node={quoteattr(node)}><item{item_attr}>{payload}</item>"
            f"</publish>{opts}</pubsub>")


def items_xml(node: str, *ids: str, max_items: int | None = None) -> str:
    attrs = f" node={quoteattr(node)}"
    if max_items is not None:
        attrs += f" max_items='{max_items}'"
    inner = "".join(f"<item id={quoteattr(i)}/>" for i in ids)
    return f"<pubsub xmlns='{NS_PUBSUB}'><items{attrs}>{inner}</items></pubsub>"


def config_xml(node: str, **fields: str) -> str:
    body = "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (f"<pubsub xmlns='{NS_OWNER}'><configure node={quoteattr(node)}>"
            f"<x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>"
            f"{body}</x></configure></pubsub>")


async def publish(peer: Peer, node: str, payload: str, item_id: str | None = None,
                  options: dict[str, str] | None = None, to: str | None = None) -> str:
    res = await peer.query("set", publish_xml(node, payload, item_id, options), to)
    item = res.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}/{q(NS_PUBSUB, 'item')}")
    assert item is not None and item.get("id")
    return item.get("id", "")


async def items_of(peer: Peer, owner: str, node: str, *ids: str, max_items: int | None = None) -> list[Element]:
    res = await peer.query("get", items_xml(node, *ids, max_items=max_items), owner)
    return res.findall(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'items')}/{q(NS_PUBSUB, 'item')}")


async def error_of(peer: Peer, type_: str, payload: str, to: str | None = None) -> Element:
    iq = peer.c.make_iq(itype=type_, ito=to)
    iq.append(fromstring(payload))
    with pytest.raises(IqError) as e:
        await iq.send(timeout=TIMEOUT)
    err = e.value.iq.xml.find("{jabber:client}error")
    assert err is not None
    return err


def conditions(err: Element) -> tuple[str, str | None, str]:
    """(stanza condition, pubsub condition, text) of an error."""
    cond = next(local(c) for c in err if c.tag.startswith(f"{{{NS_STANZAS}}}") and local(c) != "text")
    app = next((local(c) for c in err if c.tag.startswith(f"{{{NS_ERRORS}}}")), None)
    return cond, app, err.findtext(q(NS_STANZAS, "text")) or ""


def event(node: str, frm: str | None = None) -> Callable[[Element], bool]:
    """A PEP notification about that node (from that account)."""

    def match(el: Element) -> bool:
        if local(el) != "message" or (frm is not None and el.get("from") != frm):
            return False
        ev = el.find(q(NS_EVENT, "event"))
        return ev is not None and any(c.get("node") == node for c in ev)

    return match


def events(window: list[Element], node: str | None = None) -> list[Element]:
    out = [el for el in window if local(el) == "message" and el.find(q(NS_EVENT, "event")) is not None]
    return [el for el in out if node is None or event(node)(el)]


def published(msg: Element) -> list[tuple[str, Element]]:
    items = msg.find(f"{q(NS_EVENT, 'event')}/{q(NS_EVENT, 'items')}")
    assert items is not None
    return [(it.get("id", ""), it[0]) for it in items.findall(q(NS_EVENT, "item"))]


def artist(payload: Element) -> str | None:
    return payload.findtext(q(NS_TUNE, "artist"))


# --- publishing and notifications --------------------------------------------------------------------


async def test_publish_notifies_subscribed_contacts_that_want_the_node(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL, DAVE)
    await subscribed(server, BOB, ALICE)  # bob sees alice's presence
    await subscribed(server, DAVE, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", NS_TUNE)
    a2 = await online(server, connect, f"{ALICE}/phone")  # no interest
    b = await online(server, connect, f"{BOB}/desk", NS_TUNE)
    c = await online(server, connect, f"{CAROL}/desk", NS_TUNE)  # not a contact
    d = await online(server, connect, f"{DAVE}/desk", NS_MOOD)  # a contact, no interest in tunes

    item_id = await publish(a, NS_TUNE, tune("Yes"))
    for peer in (a, b):
        msg = await peer.next(event(NS_TUNE, ALICE), "the tune notification")
        assert msg.get("type") == "headline" and msg.get("to") == peer.jid
        [(got_id, payload)] = published(msg)
        assert got_id == item_id and artist(payload) == "Yes"
    # The server wrote every notification before answering the publish: later round trips
    # prove that nothing went to the others.
    for peer in (a2, c, d):
        assert events(await peer.mark()) == []

    # Bob's own node: alice does not see bob's presence, so she hears nothing of it.
    await a.mark()
    await b.c.plugin["xep_0060"].publish(None, NS_TUNE, payload=fromstring(tune("Genesis")))
    await b.next(event(NS_TUNE, BOB), "bob's own notification")
    assert events(await a.mark()) == []

    # slixmpp parses the notification into its own event.
    got: list[Any] = []
    b.c.add_event_handler("pubsub_publish", lambda msg: got.append(msg))
    await a.c.plugin["xep_0060"].publish(None, NS_TUNE, id="r", payload=fromstring(tune("Rush")))
    await b.next(event(NS_TUNE, ALICE), "the second tune")
    await b.mark()
    assert [m["pubsub_event"]["items"]["item"]["id"] for m in got] == ["r"]


async def test_an_unverified_caps_string_is_never_trusted_for_another_client(server: Server,
                                                                             connect: Connect) -> None:
    await users(server, ALICE, BOB)
    # A client with no caps plugin sends a made-up string; its answer cannot match it.
    liar = await connect(server, f"{BOB}/liar", available=False)
    liar.send("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
              "node='urn:example:client' ver='bm90LWEtcmVhbC1oYXNoLXZhbHVlPQ=='/></presence>")
    await liar.next(lambda el: local(el) == "iq" and el.find(q(NS_INFO, "query")) is not None,
                    "the server's disco#info query")
    # A second client with the same string is asked again: nothing was cached.
    other = await connect(server, f"{BOB}/other", available=False)
    other.send("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
               "node='urn:example:client' ver='bm90LWEtcmVhbC1oYXNoLXZhbHVlPQ=='/></presence>")
    query = await other.next(lambda el: local(el) == "iq" and el.find(q(NS_INFO, "query")) is not None,
                             "the server's disco#info query to the second client")
    assert query.get("from") == DOMAIN
    assert query.find(q(NS_INFO, "query")).get("node") == (  # type: ignore[union-attr]
        "urn:example:client#bm90LWEtcmVhbC1oYXNoLXZhbHVlPQ==")

    # A verified string is asked once: the next client with it gets no query at all.
    first = await online(server, connect, f"{ALICE}/one", NS_TUNE)
    assert any(local(el) == "iq" and el.find(q(NS_INFO, "query")) is not None for el in first.got)
    second = await online(server, connect, f"{ALICE}/two", NS_TUNE)
    assert not any(local(el) == "iq" and el.get("type") == "get" and el.find(q(NS_INFO, "query")) is not None
                   for el in second.got)
    assert NS_TUNE in pep(server).interests(second.jid)


async def test_last_item_is_sent_when_a_contact_comes_online(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    a = await online(server, connect, f"{ALICE}/desk")
    await publish(a, NS_TUNE, tune("Old"), "t1")
    await publish(a, NS_TUNE, tune("New"), "t2")
    # A node that says never: its item is not pushed.
    await publish(a, NS_MOOD, f"<mood xmlns='{NS_MOOD}'><happy/></mood>",
                  options={"pubsub#send_last_published_item": "never"})

    b = await online(server, connect, f"{BOB}/desk", NS_TUNE, NS_MOOD)
    msg = await b.next(event(NS_TUNE, ALICE), "alice's last tune")
    [(item_id, payload)] = published(msg)
    assert item_id == "t2" and artist(payload) == "New"
    assert msg.find("{urn:xmpp:delay}delay") is not None  # it is old news
    window = await b.mark()
    assert len(events(window, NS_TUNE)) == 1  # not the older tune
    assert events(window, NS_MOOD) == []

    # The owner's other resource gets its own last items too.
    a2 = await online(server, connect, f"{ALICE}/phone", NS_TUNE)
    await a2.next(event(NS_TUNE, ALICE), "the owner's own last tune")


async def test_retract_purge_and_delete_are_notified(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    a = await online(server, connect, f"{ALICE}/desk")
    b = await online(server, connect, f"{BOB}/desk", NS_TUNE)
    await publish(a, NS_TUNE, tune("A"), "one", options={"pubsub#max_items": "10"})
    await publish(a, NS_TUNE, tune("B"), "two")
    await b.next(event(NS_TUNE), "one")
    await b.next(event(NS_TUNE), "two")

    await a.c.plugin["xep_0060"].retract(None, NS_TUNE, "one", notify=True)
    msg = await b.next(event(NS_TUNE), "the retraction")
    retracted = msg.find(f"{q(NS_EVENT, 'event')}/{q(NS_EVENT, 'items')}/{q(NS_EVENT, 'retract')}")
    assert retracted is not None and retracted.get("id") == "one"
    assert [it.get("id") for it in await items_of(b, ALICE, NS_TUNE)] == ["two"]
    err = await error_of(a, "set", f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{NS_TUNE}'>"
                                   "<item id='no-such-item'/></retract></pubsub>")
    assert conditions(err)[0] == "item-not-found"

    await a.c.plugin["xep_0060"].purge(None, NS_TUNE)
    msg = await b.next(event(NS_TUNE), "the purge")
    assert msg.find(f"{q(NS_EVENT, 'event')}/{q(NS_EVENT, 'purge')}") is not None
    assert await items_of(b, ALICE, NS_TUNE) == []

    await a.c.plugin["xep_0060"].delete_node(None, NS_TUNE)
    msg = await b.next(event(NS_TUNE), "the deletion")
    assert msg.find(f"{q(NS_EVENT, 'event')}/{q(NS_EVENT, 'delete')}") is not None
    err = await error_of(b, "get", items_xml(NS_TUNE), ALICE)
    assert conditions(err)[0] == "item-not-found"


# --- retrieval and access models -------------------------------------------------------------------


async def test_items_by_count_and_id_under_each_access_model(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, BOB, ALICE)
    a = await online(server, connect, f"{ALICE}/desk")
    b = await online(server, connect, f"{BOB}/desk")
    c = await online(server, connect, f"{CAROL}/desk")
    for n in range(1, 5):
        await publish(a, NS_TUNE, tune(f"Artist {n}"), f"i{n}", options={"pubsub#max_items": "3"})

    # Oldest first; the fourth publish pushed the first one out.
    assert [it.get("id") for it in await items_of(a, ALICE, NS_TUNE)] == ["i2", "i3", "i4"]
    assert [it.get("id") for it in await items_of(b, ALICE, NS_TUNE, max_items=2)] == ["i3", "i4"]
    [one] = await items_of(b, ALICE, NS_TUNE, "i3")
    assert artist(one[0]) == "Artist 3"
    assert conditions(await error_of(b, "get", items_xml(NS_TUNE, "i1"), ALICE))[0] == "item-not-found"
    # slixmpp agrees.
    res = await b.c.plugin["xep_0060"].get_items(ALICE, NS_TUNE, max_items=1)
    assert [it["id"] for it in res["pubsub"]["items"]] == ["i4"]

    # presence (the default): only contacts who see alice's presence.
    cond, app, _ = conditions(await error_of(c, "get", items_xml(NS_TUNE), ALICE))
    assert (cond, app) == ("not-authorized", "presence-subscription-required")

    await a.query("set", config_xml(NS_TUNE, access_model="open"))
    assert len(await items_of(c, ALICE, NS_TUNE)) == 3

    await a.query("set", config_xml(NS_TUNE, access_model="whitelist"))
    cond, app, _ = conditions(await error_of(b, "get", items_xml(NS_TUNE), ALICE))
    assert (cond, app) == ("not-allowed", "closed-node")
    assert len(await items_of(a, ALICE, NS_TUNE)) == 3

    # roster: contacts in the allowed groups only.
    await a.query("set", config_xml(NS_TUNE, access_model="roster", roster_groups_allowed="Friends"))
    cond, app, _ = conditions(await error_of(b, "get", items_xml(NS_TUNE), ALICE))
    assert (cond, app) == ("not-authorized", "not-in-roster-group")
    await a.query("set", f"<query xmlns='jabber:iq:roster'><item jid='{BOB}'><group>Friends</group></item></query>")
    assert len(await items_of(b, ALICE, NS_TUNE)) == 3

    cond, _, _ = conditions(await error_of(b, "get", items_xml("urn:example:none"), ALICE))
    assert cond == "item-not-found"


async def test_someone_elses_pep_cannot_be_changed(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE, both=True)
    a = await online(server, connect, f"{ALICE}/desk")
    b = await online(server, connect, f"{BOB}/desk")
    await publish(a, NS_TUNE, tune("Mine"), "t")
    for type_, payload in (
        ("set", publish_xml(NS_TUNE, tune("Not yours"), "t")),
        ("set", f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{NS_TUNE}'><item id='t'/></retract></pubsub>"),
        ("set", f"<pubsub xmlns='{NS_PUBSUB}'><create node='urn:example:new'/></pubsub>"),
        ("set", config_xml(NS_TUNE, access_model="open")),
        ("get", f"<pubsub xmlns='{NS_OWNER}'><configure node='{NS_TUNE}'/></pubsub>"),
        ("set", f"<pubsub xmlns='{NS_OWNER}'><delete node='{NS_TUNE}'/></pubsub>"),
        ("set", f"<pubsub xmlns='{NS_OWNER}'><purge node='{NS_TUNE}'/></pubsub>"),
    ):
        assert conditions(await error_of(b, type_, payload, ALICE))[0] == "forbidden", payload
    [item] = await items_of(b, ALICE, NS_TUNE)
    assert artist(item[0]) == "Mine"
    # Nobody's PEP on an account that does not exist.
    err = await error_of(b, "get", items_xml(NS_TUNE), f"nobody@{DOMAIN}")
    assert conditions(err)[0] == "service-unavailable"


# --- publish-options, configuration and limits ---------------------------------------------------


async def test_publish_options_preconditions(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", plugins=("xep_0223",))
    node = "urn:example:private"
    # XEP-0223 storage: the first publish creates the node with these options as its
    # configuration; the following ones find them met.
    for n in (1, 2):
        secret = ElementBase(fromstring(f"<secret xmlns='urn:example:private'>{n}</secret>"))
        await a.c.plugin["xep_0223"].store(secret, node=node, id="current")
    form = await a.c.plugin["xep_0060"].get_node_config(None, node)
    values = form["pubsub_owner"]["configure"]["form"].get_values()
    assert values["pubsub#access_model"] == "whitelist"
    assert values["pubsub#persist_items"] in (True, "1", "true")

    # An option the node does not have: conflict + precondition-not-met, nothing stored.
    err = await error_of(a, "set", publish_xml(node, "<secret xmlns='urn:example:private'>3</secret>",
                                               "current", {"pubsub#access_model": "presence"}))
    cond, app, text = conditions(err)
    assert (cond, app) == ("conflict", "precondition-not-met")
    assert err.get("type") == "cancel" and "access_model" in text
    [item] = await items_of(a, ALICE, node)
    assert item[0].text == "2"
    # Booleans compare by meaning, not spelling.
    await publish(a, node, "<secret xmlns='urn:example:private'>4</secret>", "current",
                  {"pubsub#persist_items": "1", "pubsub#access_model": "whitelist"})
    # An option this service cannot honour is not silently ignored.
    cond, app, _ = conditions(await error_of(a, "set", publish_xml(
        "urn:example:other", "<x xmlns='urn:example:other'/>", None, {"pubsub#access_model": "authorize"})))
    assert (cond, app) == ("conflict", "precondition-not-met")


async def test_node_configuration(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    a = await online(server, connect, f"{ALICE}/desk")
    res = await a.query("get", f"<pubsub xmlns='{NS_OWNER}'><default/></pubsub>")
    fields = {f.get("var"): f for f in res.iter("{jabber:x:data}field")}
    assert fields["pubsub#access_model"].findtext("{jabber:x:data}value") == "presence"
    assert fields["pubsub#send_last_published_item"].findtext("{jabber:x:data}value") == "on_sub_and_presence"

    await a.query("set", f"<pubsub xmlns='{NS_PUBSUB}'><create node='urn:example:n'/>"
                         "<configure><x xmlns='jabber:x:data' type='submit'>"
                         f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>"
                         "<field var='pubsub#max_items'><value>max</value></field>"
                         "<field var='pubsub#title'><value>Notes</value></field></x></configure></pubsub>")
    err = await error_of(a, "set", f"<pubsub xmlns='{NS_PUBSUB}'><create node='urn:example:n'/></pubsub>")
    assert conditions(err)[0] == "conflict"

    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=f"{NS_PUBSUB}#node_config")
    form.add_field(var="pubsub#notify_retract", ftype="boolean", value=False)
    await a.c.plugin["xep_0060"].set_node_config(None, "urn:example:n", form)
    got = await a.c.plugin["xep_0060"].get_node_config(None, "urn:example:n")
    values = got["pubsub_owner"]["configure"]["form"].get_values()
    assert values["pubsub#title"] == "Notes"
    assert values["pubsub#max_items"] == "max"
    assert values["pubsub#notify_retract"] in (False, "0", "false")

    for bad, word in (({"access_model": "authorize"}, "authorize"),
                      ({"send_last_published_item": "sometimes"}, "send_last_published_item"),
                      ({"no_such_option": "1"}, "no_such_option")):
        cond, _, text = conditions(await error_of(a, "set", config_xml("urn:example:n", **bad)))
        assert cond == "not-acceptable" and word in text


async def test_limits(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    a = await online(server, connect, f"{ALICE}/desk")
    big = "a" * (MAX_PAYLOAD_BYTES + 1)
    err = await error_of(a, "set", publish_xml("urn:example:big", f"<blob xmlns='urn:example:big'>{big}</blob>"))
    cond, app, text = conditions(err)
    assert (cond, app) == ("not-acceptable", "payload-too-big")
    assert str(MAX_PAYLOAD_BYTES) in text
    # The refusal does not carry the oversized item back.
    assert len(err.findtext(q(NS_STANZAS, "text")) or "") < 200
    assert conditions(await error_of(a, "get", items_xml("urn:example:big"), ALICE))[0] == "item-not-found"

    too_many = str(MAX_ITEMS_CAP + 1)
    cond, app, text = conditions(await error_of(a, "set", publish_xml(
        "urn:example:many", "<x xmlns='urn:example:many'/>", None, {"pubsub#max_items": too_many})))
    assert (cond, app) == ("conflict", "precondition-not-met") and str(MAX_ITEMS_CAP) in text
    await publish(a, "urn:example:many", "<x xmlns='urn:example:many'>1</x>", "1", {"pubsub#max_items": "max"})
    cond, _, text = conditions(await error_of(a, "set", config_xml("urn:example:many", max_items=too_many)))
    assert cond == "not-acceptable" and str(MAX_ITEMS_CAP) in text

    long_name = "urn:example:" + "n" * MAX_NODE_NAME
    cond, _, text = conditions(await error_of(a, "set", publish_xml(long_name, "<x xmlns='urn:example:n'/>")))
    assert cond == "not-acceptable" and str(MAX_NODE_NAME) in text

    cond, app, _ = conditions(await error_of(a, "set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='urn:example:e'>"
                                                         "<item id='x'/></publish></pubsub>"))
    assert (cond, app) == ("bad-request", "payload-required")


# --- discovery ----------------------------------------------------------------------------------------


async def test_account_disco_shows_pep_and_lists_nodes_to_the_owner(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    a = await online(server, connect, f"{ALICE}/desk")
    b = await online(server, connect, f"{BOB}/desk")
    info = await b.c.plugin["xep_0030"].get_info(jid=ALICE)
    assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
    features = set(info["disco_info"]["features"])
    for f in ("publish", "auto-create", "publish-options", "persistent-items", "retrieve-items", "config-node",
              "access-presence", "access-whitelist", "last-published", "delete-items", "purge-nodes"):
        assert f"{NS_PUBSUB}#{f}" in features, f
    assert "urn:xmpp:vcard4" in features

    await publish(a, NS_TUNE, tune("X"), "only")
    own = await a.c.plugin["xep_0030"].get_items(jid=ALICE)
    assert (ALICE, NS_TUNE, None) in own["disco_items"]["items"]
    node_items = await a.c.plugin["xep_0030"].get_items(jid=ALICE, node=NS_TUNE)
    assert [name for _, _, name in node_items["disco_items"]["items"]] == ["only"]
    node_info = await a.c.plugin["xep_0030"].get_info(jid=ALICE, node=NS_TUNE)
    assert ("pubsub", "leaf", None, None) in node_info["disco_info"]["identities"]


# --- vCard4 (XEP-0292) --------------------------------------------------------------------------------


async def test_vcard4_over_pep_and_iq(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, BOB, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", plugins=("xep_0292",))
    b = await online(server, connect, f"{BOB}/desk", "urn:xmpp:vcard4", plugins=("xep_0292",))
    c = await online(server, connect, f"{CAROL}/desk")
    # slixmpp would publish to a node named after the vCard namespace; XEP-0292 names it.
    await a.c.plugin["xep_0292"].publish_vcard(full_name="Alice Liddell", nickname="alice",
                                               node="urn:xmpp:vcard4")
    msg = await b.next(event("urn:xmpp:vcard4", ALICE), "the vCard4 notification")
    [(item_id, card)] = published(msg)
    assert item_id == "current" and card.findtext(f"{{{NS_VCARD4}}}fn/{{{NS_VCARD4}}}text") == "Alice Liddell"

    # The IQ form reads and writes the same item.
    res = await b.query("get", f"<vcard xmlns='{NS_VCARD4}'/>", ALICE)
    assert res.findtext(f"{{{NS_VCARD4}}}vcard/{{{NS_VCARD4}}}fn/{{{NS_VCARD4}}}text") == "Alice Liddell"
    await a.query("set", f"<vcard xmlns='{NS_VCARD4}'><fn><text>Alice L.</text></fn></vcard>")
    msg = await b.next(event("urn:xmpp:vcard4", ALICE), "the vCard4 set by IQ")
    assert published(msg)[0][1].findtext(f"{{{NS_VCARD4}}}fn/{{{NS_VCARD4}}}text") == "Alice L."
    assert conditions(await error_of(c, "get", f"<vcard xmlns='{NS_VCARD4}'/>", ALICE))[0] == "not-authorized"
    assert conditions(await error_of(b, "set", f"<vcard xmlns='{NS_VCARD4}'/>", ALICE))[0] == "forbidden"
    assert conditions(await error_of(a, "get", f"<vcard xmlns='{NS_VCARD4}'/>", BOB))[0] == "item-not-found"



# --- the same storage on PostgreSQL -------------------------------------------------------------------


@pytest.mark.postgres
async def test_pep_on_postgres(make_server: ServerFactory, pg_server: PgServer, connect: Connect) -> None:
    server = await make_server(storage_url=pg_server.fresh_database(f"pep_{uuid.uuid4().hex[:12]}"))
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE)
    a = await online(server, connect, f"{ALICE}/desk")
    for n in range(1, 4):
        await publish(a, NS_TUNE, tune(f"Artist {n}"), f"i{n}", options={"pubsub#max_items": "2"})
    await publish(a, NS_TUNE, tune("Artist 2 again"), "i2")  # same id: replaced, now the newest
    assert [it.get("id") for it in await items_of(a, ALICE, NS_TUNE)] == ["i3", "i2"]

    b = await online(server, connect, f"{BOB}/desk", NS_TUNE)
    msg = await b.next(event(NS_TUNE, ALICE), "the last tune")
    assert [(i, artist(p)) for i, p in published(msg)] == [("i2", "Artist 2 again")]

    await a.c.plugin["xep_0060"].retract(None, NS_TUNE, "i2")
    assert [it.get("id") for it in await items_of(b, ALICE, NS_TUNE)] == ["i3"]
    await a.c.plugin["xep_0060"].delete_node(None, NS_TUNE)
    assert conditions(await error_of(b, "get", items_xml(NS_TUNE), ALICE))[0] == "item-not-found"
