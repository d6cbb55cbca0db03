"""Bookmarks end to end with slixmpp: PEP native bookmarks (XEP-0402) and the legacy ones
(XEP-0048) in private XML storage (XEP-0049) and in PEP (XEP-0223), kept in step by the
server (``urn:xmpp:bookmarks:1#compat`` and ``#compat-pep``)."""

from __future__ import annotations

from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

from slixmpp.plugins.xep_0048.stanza import Bookmarks

from parley.server import Server
from tests.conftest import subscribed, users
from tests.e2e.test_pep import (
    conditions,
    config_xml,
    error_of,
    event,
    events,
    items_of,
    online,
    publish,
    publish_xml,
)
from tests.peer import ALICE, BOB, DOMAIN, Connect, Peer, q

NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_LEGACY = "storage:bookmarks"
NS_PRIVATE = "jabber:iq:private"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
ROOM = f"lobby@conference.{DOMAIN}"
ROOM2 = f"dev@conference.{DOMAIN}"
# What XEP-0402 clients ask for when they publish.
BOOKMARK_OPTIONS = {
    "pubsub#persist_items": "true",
    "pubsub#max_items": "max",
    "pubsub#send_last_published_item": "never",
    "pubsub#access_model": "whitelist",
}
PLUGINS = ("xep_0048", "xep_0049", "xep_0223", "xep_0402")


def conference(name: str, autojoin: bool = False, nick: str | None = None, password: str | None = None,
               extensions: str = "") -> str:
    inner = ""
    if nick:
        inner += f"<nick>{nick}</nick>"
    if password:
        inner += f"<password>{password}</password>"
    return (f"<conference xmlns='{NS_BOOKMARKS}' name={quoteattr(name)} "
            f"autojoin='{'true' if autojoin else 'false'}'>{inner}{extensions}</conference>")


async def legacy_private(peer: Peer) -> list[dict[str, str | None]]:
    """The rooms of the legacy document in private storage, as slixmpp reads them."""
    res = await peer.c.plugin["xep_0048"].get_bookmarks(method="xep_0049")
    return [{"jid": str(c["jid"]), "name": c["name"], "autojoin": str(c["autojoin"]), "nick": c["nick"],
             "password": c["password"]} for c in res["private"]["bookmarks"]["conferences"]]


async def bookmarks2(peer: Peer, owner: str = ALICE) -> dict[str, Element]:
    return {it.get("id", ""): it[0] for it in await items_of(peer, owner, NS_BOOKMARKS)}


async def test_native_bookmarks_appear_in_legacy_storage(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", plugins=PLUGINS)
    info = await a.c.plugin["xep_0030"].get_info(jid=ALICE)
    assert f"{NS_BOOKMARKS}#compat" in info["disco_info"]["features"]

    await publish(a, NS_BOOKMARKS, conference("The Lobby", True, "ali", "s3cret"), ROOM, BOOKMARK_OPTIONS)
    await publish(a, NS_BOOKMARKS, conference("Dev"), ROOM2, BOOKMARK_OPTIONS)
    assert await legacy_private(a) == [
        {"jid": ROOM, "name": "The Lobby", "autojoin": "True", "nick": "ali", "password": "s3cret"},
        {"jid": ROOM2, "name": "Dev", "autojoin": "False", "nick": "", "password": ""},
    ]
    # ... and in the legacy PEP node (XEP-0048 over XEP-0223).
    res = await a.c.plugin["xep_0048"].get_bookmarks(method="xep_0223")
    confs = res["pubsub"]["items"]["item"]["bookmarks"]["conferences"]
    assert [(str(c["jid"]), c["nick"]) for c in confs] == [(ROOM, "ali"), (ROOM2, "")]

    # A retraction removes the room from the legacy copies.
    await a.c.plugin["xep_0060"].retract(None, NS_BOOKMARKS, ROOM2, notify=True)
    assert [c["jid"] for c in await legacy_private(a)] == [ROOM]


async def test_legacy_private_storage_appears_as_native_bookmarks(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", plugins=PLUGINS)
    # A second client of alice's that follows native bookmarks.
    watcher = await online(server, connect, f"{ALICE}/phone", NS_BOOKMARKS, plugins=PLUGINS)
    # An existing native bookmark with extensions a legacy client knows nothing about.
    ext = "<extensions><state xmlns='urn:example:state'>pinned</state></extensions>"
    await publish(a, NS_BOOKMARKS, conference("Old name", extensions=ext), ROOM, BOOKMARK_OPTIONS)
    await watcher.next(event(NS_BOOKMARKS, ALICE), "the first bookmark")

    marks = Bookmarks()
    marks.add_conference(ROOM, "alice", name="Lobby", autojoin=True)
    marks.add_conference(ROOM2, "al", name="Dev", password="pw")
    marks.add_url("https://example.test/", name="Home")
    await a.c.plugin["xep_0048"].set_bookmarks(marks, method="xep_0049")

    got = await bookmarks2(a)
    assert set(got) == {ROOM, ROOM2}
    lobby = got[ROOM]
    assert (lobby.get("name"), lobby.get("autojoin")) == ("Lobby", "true")
    assert lobby.findtext(q(NS_BOOKMARKS, "nick")) == "alice"
    assert lobby.findtext(f"{q(NS_BOOKMARKS, 'extensions')}/{{urn:example:state}}state") == "pinned"
    assert got[ROOM2].findtext(q(NS_BOOKMARKS, "password")) == "pw"
    # The other client heard of both changes.
    changed = {published_id(await watcher.next(event(NS_BOOKMARKS, ALICE), "a bookmark change"))
               for _ in range(2)}
    assert changed == {ROOM, ROOM2}

    # The legacy client drops a room: the native bookmark is retracted, with a notification.
    marks = Bookmarks()
    marks.add_conference(ROOM2, "al", name="Dev", password="pw")
    marks.add_url("https://example.test/", name="Home")
    await a.c.plugin["xep_0048"].set_bookmarks(marks, method="xep_0049")
    msg = await watcher.next(event(NS_BOOKMARKS, ALICE), "the retraction")
    retract = msg.find(f"{q(NS_EVENT, 'event')}/{q(NS_EVENT, 'items')}/{q(NS_EVENT, 'retract')}")
    assert retract is not None and retract.get("id") == ROOM
    assert set(await bookmarks2(a)) == {ROOM2}

    # A native change keeps the legacy document's URL bookmarks.
    await publish(a, NS_BOOKMARKS, conference("Dev!"), ROOM2, BOOKMARK_OPTIONS)
    res = await a.c.plugin["xep_0048"].get_bookmarks(method="xep_0049")
    storage = res["private"]["bookmarks"]
    assert [c["name"] for c in storage["conferences"]] == ["Dev!"]
    assert [u["url"] for u in storage["urls"]] == ["https://example.test/"]


def published_id(msg: Element) -> str:
    item = msg.find(f"{q(NS_EVENT, 'event')}/{q(NS_EVENT, 'items')}/{q(NS_EVENT, 'item')}")
    assert item is not None
    return item.get("id", "")


async def test_legacy_pep_bookmarks_are_kept_in_step(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    a = await online(server, connect, f"{ALICE}/desk", plugins=PLUGINS)
    marks = Bookmarks()
    marks.add_conference(ROOM, "alice", name="Lobby", autojoin=True)
    await a.c.plugin["xep_0048"].set_bookmarks(marks, method="xep_0223")
    assert set(await bookmarks2(a)) == {ROOM}
    assert await legacy_private(a) == [
        {"jid": ROOM, "name": "Lobby", "autojoin": "True", "nick": "alice", "password": ""}]
    # The publish-options XEP-0223 sends still hold for the node the server keeps.
    await a.c.plugin["xep_0048"].set_bookmarks(marks, method="xep_0223")


async def test_bookmarks_are_private(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE, both=True)
    a = await online(server, connect, f"{ALICE}/desk", plugins=PLUGINS)
    b = await online(server, connect, f"{BOB}/desk", NS_BOOKMARKS, "storage:bookmarks", plugins=PLUGINS)
    await publish(a, NS_BOOKMARKS, conference("Secret room", nick="ali", password="pw"), ROOM, BOOKMARK_OPTIONS)
    cond, app, _ = conditions(await error_of(b, "get", f"<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                                                       f"<items node='{NS_BOOKMARKS}'/></pubsub>", ALICE))
    assert (cond, app) == ("not-allowed", "closed-node")
    assert events(await b.mark()) == []
    # A client that asks for another access model is told the node is not like that.
    cond, app, _ = conditions(await error_of(a, "set", publish_xml(
        NS_BOOKMARKS, conference("Open room"), ROOM2, {"pubsub#access_model": "open"})))
    assert (cond, app) == ("conflict", "precondition-not-met")


async def test_bookmark_nodes_are_private_even_without_publish_options(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, BOB, ALICE, both=True)
    a = await online(server, connect, f"{ALICE}/desk", plugins=PLUGINS)
    b = await online(server, connect, f"{BOB}/desk", plugins=PLUGINS)
    # A careless client: no publish options at all.
    await publish(a, NS_BOOKMARKS, conference("Lobby", password="pw"), ROOM)
    cond, _, _ = conditions(await error_of(b, "get", f"<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                                                     f"<items node='{NS_BOOKMARKS}'/></pubsub>", ALICE))
    assert cond == "not-allowed"
    # Every room of a legacy write arrives, however many the node was told to keep.
    await a.query("set", config_xml(NS_BOOKMARKS, max_items="1"))
    marks = Bookmarks()
    for n in range(5):
        marks.add_conference(f"room{n}@conference.{DOMAIN}", "alice")
    await a.c.plugin["xep_0048"].set_bookmarks(marks, method="xep_0049")
    assert len(await bookmarks2(a)) == 5
