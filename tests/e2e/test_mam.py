"""Message archive management (XEP-0313, urn:xmpp:mam:2) with stanza ids (XEP-0359) and result
set paging (XEP-0059), end to end with slixmpp (xep_0313, xep_0059, xep_0359) and raw queries:
what is archived and where, that the id a recipient sees live, offline and in the archive is
one id, filters, paging, preferences, retention, and the refusals."""

from __future__ import annotations

import copy
import datetime as dt
import time
import uuid
from typing import Any
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import pytest
import sqlalchemy as sa
from slixmpp import JID

from parley.modules.mam import Mam
from parley.server import Server
from parley.storage.archive import ArchiveEntry, ArchiveFilter
from tests.clients import Raw, close_all, eventually
from tests.conftest import ServerFactory, subscribed, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    Connect,
    Peer,
    bodies,
    bounced,
    local,
    message,
    q,
    say,
)
from tests.pg import PgServer

NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
MAM = ("xep_0313", "xep_0059", "xep_0359", "xep_0280")


# --- helpers -----------------------------------------------------------------------------------------


def stanza_ids(el: Element) -> dict[str, str]:
    return {s.get("by", ""): s.get("id", "") for s in el.findall(q(NS_SID, "stanza-id"))}


def form(**fields: str | list[str]) -> str:
    out = [f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
           f"<value>{NS_MAM}</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        inner = "".join(f"<value>{escape(v)}</value>" for v in values)
        out.append(f"<field var='{var.rstrip('_').replace('_', '-')}'>{inner}</field>")
    return "".join(out) + "</x>"


def rsm(max_: int | None = None, after: str | None = None, before: str | None = None) -> str:
    parts = []
    if max_ is not None:
        parts.append(f"<max>{max_}</max>")
    if after is not None:
        parts.append(f"<after>{after}</after>")
    if before is not None:
        parts.append(f"<before>{before}</before>" if before else "<before/>")
    return f"<set xmlns='{NS_RSM}'>{''.join(parts)}</set>"


class Page:
    def __init__(self, results: list[Element], fin: Element) -> None:
        self.results = results
        self.fin = fin

    @property
    def messages(self) -> list[Element]:
        out = []
        for r in self.results:
            inner = r.find(f"{q(NS_MAM, 'result')}/{q(NS_FORWARD, 'forwarded')}/{{jabber:client}}message")
            assert inner is not None, "a result forwards the archived message"
            out.append(inner)
        return out

    @property
    def bodies(self) -> list[str]:
        return [m.findtext("{jabber:client}body") or "" for m in self.messages]

    @property
    def ids(self) -> list[str]:
        return [r.find(q(NS_MAM, "result")).get("id", "") for r in self.results]  # type: ignore[union-attr]

    @property
    def complete(self) -> bool:
        return self.fin.get("complete") == "true"

    def rsm(self, name: str) -> str | None:
        return self.fin.findtext(f"{q(NS_RSM, 'set')}/{q(NS_RSM, name)}")


async def archive(peer: Peer, *parts: str, queryid: str = "q1", to: str | None = None) -> Page:
    """A raw MAM query; the results are what the client got before the iq result."""
    await peer.mark()
    res = await peer.query("set", f"<query xmlns='{NS_MAM}' queryid='{queryid}'>{''.join(parts)}</query>", to)
    window = await peer.mark()
    results = [el for el in window if local(el) == "message"
               and el.find(q(NS_MAM, "result")) is not None
               and el.find(q(NS_MAM, "result")).get("queryid") == queryid]  # type: ignore[union-attr]
    fin = res.find(q(NS_MAM, "fin"))
    assert fin is not None, "a query ends with <fin/>"
    return Page(results, fin)


async def refused(peer: Peer, *parts: str, to: str | None = None) -> str:
    return (await peer.refused("set", f"<query xmlns='{NS_MAM}'>{''.join(parts)}</query>", to))[1]


async def conversation(alice: Peer, bob: Peer, n: int, prefix: str = "m") -> list[str]:
    """n messages from alice to bob, all received; returns their bodies."""
    sent = [f"{prefix}{i}" for i in range(1, n + 1)]
    for body in sent:
        say(alice, BOB, body)
    for body in sent:
        await bob.next(message(body), body)
    return sent


# --- archiving and stanza ids ------------------------------------------------------------------------


async def test_account_advertises_mam_and_stanza_ids(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    info = await alice.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=ALICE)
    features = {f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")}
    assert {NS_MAM, f"{NS_MAM}#extended", NS_SID} <= features


async def test_both_sides_archive_and_the_recipient_sees_its_archive_id(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk", plugins=MAM)
    bob = await connect(server, f"{BOB}/desk", plugins=MAM)
    alice.send(f"<message to='{BOB}' type='chat' id='c1'><body>hello bob</body>"
               f"<origin-id xmlns='{NS_SID}' id='origin-1'/></message>")
    got = await bob.next(message("hello bob"), "the message")
    ids = stanza_ids(got)
    assert set(ids) == {BOB}, "the recipient sees the id of its own archive only"
    origin = got.find(q(NS_SID, "origin-id"))
    assert origin is not None and origin.get("id") == "origin-1", "the sender's origin-id is kept"

    # Durable before delivery: the row is there the moment the message arrived.
    mam: Mam = server.module("mam")  # type: ignore[assignment]
    stored = await mam.archive.query(BOB, ArchiveFilter(), limit=10)
    assert [m.stanza_id for m in stored.items] == [ids[BOB]]

    theirs = await archive(bob)
    assert theirs.bodies == ["hello bob"] and theirs.ids == [ids[BOB]]
    archived = theirs.messages[0]
    assert archived.get("from") == alice.jid and archived.get("to") == BOB
    delay = theirs.results[0].find(f"{q(NS_MAM, 'result')}/{q(NS_FORWARD, 'forwarded')}/{q(NS_DELAY, 'delay')}")
    assert delay is not None and dt.datetime.fromisoformat(delay.get("stamp", "")).tzinfo is not None
    assert theirs.complete and theirs.rsm("count") == "1"
    assert theirs.rsm("first") == theirs.rsm("last") == ids[BOB]

    mine = await archive(alice)
    assert mine.bodies == ["hello bob"]
    assert mine.ids != theirs.ids, "each archive has its own ids"

    # slixmpp's own MAM client reads the same archive.
    res = await bob.c.plugin["xep_0313"].retrieve(with_jid=JID(ALICE), timeout=10)
    results = res["mam"]["results"]
    assert [r["mam_result"]["id"] for r in results] == [ids[BOB]]
    assert results[0]["mam_result"]["forwarded"]["stanza"]["body"] == "hello bob"


async def test_offline_message_is_archived_once_with_the_id_it_is_delivered_with(
        server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, BOB, "while you were away")
    await alice.mark()

    bob = await connect(server, f"{BOB}/desk", plugins=MAM)
    delivered = [el for el in bob.got if message("while you were away")(el)]
    assert len(delivered) == 1
    ids = stanza_ids(delivered[0])
    assert set(ids) == {BOB}
    page = await archive(bob)
    assert page.bodies == ["while you were away"]
    assert page.ids == [ids[BOB]], "the offline copy and the archive disagree on the id"
    # A later sign-in neither redelivers nor archives it again.
    again = await connect(server, f"{BOB}/phone")
    assert bodies(again.got) == []
    assert (await archive(bob)).ids == [ids[BOB]]
    assert (await archive(alice)).bodies == ["while you were away"]


async def test_a_message_the_server_sends_again_keeps_its_id_and_row(server: Server,
                                                                    connect: Connect) -> None:
    # What stream management does with a message a lost session never acknowledged: the
    # server routes the copy it delivered to the account again (here: to offline storage).
    await users(server, ALICE, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    say(alice, BOB, "did you get this?")
    first = await bob.next(message("did you get this?"), "the message")
    sid = stanza_ids(first)[BOB]
    await close_all(bob.c)

    async def gone() -> bool:
        return not server.router.sessions.of(BOB)

    await eventually(gone, "bob's session ended")
    again = copy.deepcopy(first)
    again.set("to", BOB)
    await server.router.route(again)
    # The same id claimed for a message from someone else is not taken on trust.
    forged = copy.deepcopy(first)
    forged.set("from", f"{CAROL}/desk")
    forged.set("to", BOB)
    forged.find("{jabber:client}body").text = "spoofed"  # type: ignore[union-attr]
    await server.router.route(forged)

    bob = await connect(server, f"{BOB}/desk")
    redelivered = next(el for el in bob.got if message("did you get this?")(el))
    assert stanza_ids(redelivered) == {BOB: sid}
    spoofed = next(el for el in bob.got if message("spoofed")(el))
    assert stanza_ids(spoofed)[BOB] != sid
    page = await archive(bob)
    assert page.bodies == ["did you get this?", "spoofed"]
    assert page.ids[0] == sid


async def test_a_bounced_message_leaves_no_trace_in_either_archive(make_server: ServerFactory,
                                                                   connect: Connect) -> None:
    server = await make_server(im={"max_offline_per_user": 1})
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, BOB, "kept")
    say(alice, BOB, "refused")
    assert await bounced(alice, "refused") == "service-unavailable"
    assert (await archive(alice)).bodies == ["kept"]
    bob = await connect(server, f"{BOB}/desk")
    assert bodies(bob.got) == ["kept"]
    assert (await archive(bob)).bodies == ["kept"]


async def test_forged_stanza_ids_are_removed(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    alice.send(f"<message to='{BOB}' type='chat'><body>trust me</body>"
               f"<stanza-id xmlns='{NS_SID}' by='{BOB}' id='forged'/>"
               f"<stanza-id xmlns='{NS_SID}' by='{ALICE}' id='forged-too'/>"
               f"<stanza-id xmlns='{NS_SID}' by='elsewhere.example' id='theirs'/></message>")
    got = await bob.next(message("trust me"), "the message")
    ids = [(s.get("by"), s.get("id")) for s in got.findall(q(NS_SID, "stanza-id"))]
    assert ("elsewhere.example", "theirs") in ids, "an id by a foreign entity is not ours to remove"
    ours = [i for by, i in ids if by == BOB]
    assert len(ours) == 1 and ours[0] != "forged"
    assert not [i for by, i in ids if by == ALICE]
    assert (await archive(bob)).ids == ours


async def test_what_is_not_archived(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    alice.send(f"<message to='{BOB}' type='chat'><composing xmlns='{NS_CHATSTATES}'/></message>")
    alice.send(f"<message to='{BOB}' type='headline'><body>news</body></message>")
    alice.send(f"<message to='{BOB}' type='chat'><body>off the record</body>"
               f"<no-permanent-store xmlns='urn:xmpp:hints'/></message>")
    alice.send(f"<message to='{BOB}' type='normal'><body>a normal one</body></message>")
    await bob.next(message("a normal one"), "the last message")
    assert (await archive(bob)).bodies == ["a normal one"]
    assert (await archive(alice)).bodies == ["a normal one"]


async def test_a_message_to_oneself_is_archived_once(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    desk = await connect(server, f"{ALICE}/desk")
    phone = await connect(server, f"{ALICE}/phone")
    say(desk, phone.jid, "note to self")
    await phone.next(message("note to self"), "the note")
    assert (await archive(desk)).bodies == ["note to self"]


async def test_archive_disabled(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(archive={"enabled": False})
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    say(alice, BOB, "unrecorded")
    got = await bob.next(message("unrecorded"), "the message")
    assert stanza_ids(got) == {}
    assert (await bob.refused("set", f"<query xmlns='{NS_MAM}'/>"))[1] == "service-unavailable"
    info = await bob.query("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=BOB)
    assert NS_MAM not in {f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")}


async def test_an_archive_failure_refuses_the_message(make_server: ServerFactory, connect: Connect,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # With synchronous archiving a message is delivered only once it is in the archive.
    server = await make_server(archive={"synchronous": True})
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    mam: Mam = server.module("mam")  # type: ignore[assignment]

    async def broken(entries: object, wait: bool = True) -> None:
        raise sa.exc.OperationalError("INSERT INTO archive", {}, Exception("disk I/O error"))

    monkeypatch.setattr(mam.archive, "append", broken)
    say(alice, BOB, "not recorded")
    assert await bounced(alice, "not recorded") == "internal-server-error"
    monkeypatch.undo()
    say(alice, BOB, "recorded")
    await bob.next(message("recorded"), "the message after the repair")
    assert bodies(await bob.mark()) == ["recorded"], "a message that could not be archived was delivered"
    assert (await archive(bob)).bodies == ["recorded"]


async def test_a_deleted_user_loses_the_archive(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    await conversation(alice, bob, 1)
    await bob.query("set", f"<prefs xmlns='{NS_MAM}' default='never'/>")
    await server.signals.emit("user-deleted", BOB)
    mam: Mam = server.module("mam")  # type: ignore[assignment]
    assert (await mam.archive.query(BOB, ArchiveFilter(), limit=10)).count == 0
    assert await mam.archive.get_prefs(BOB) is None
    assert (await archive(alice)).bodies == ["m1"], "the other side keeps its archive"


# --- queries ---------------------------------------------------------------------------------------------


async def test_rsm_paging_forwards_and_backwards(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk", plugins=MAM)
    await conversation(alice, bob, 5)

    first = await archive(bob, rsm(max_=2))
    assert first.bodies == ["m1", "m2"] and not first.complete
    assert first.rsm("count") == "5" and first.rsm("first") == first.ids[0] and first.rsm("last") == first.ids[1]
    second = await archive(bob, rsm(max_=2, after=first.ids[-1]))
    assert second.bodies == ["m3", "m4"] and not second.complete
    third = await archive(bob, rsm(max_=2, after=second.ids[-1]))
    assert third.bodies == ["m5"] and third.complete

    last = await archive(bob, rsm(max_=2, before=""))
    assert last.bodies == ["m4", "m5"] and not last.complete
    earlier = await archive(bob, rsm(max_=2, before=last.ids[0]))
    assert earlier.bodies == ["m2", "m3"] and not earlier.complete
    earliest = await archive(bob, rsm(max_=2, before=earlier.ids[0]))
    assert earliest.bodies == ["m1"] and earliest.complete

    flipped = await archive(bob, rsm(max_=2, before=""), f"<flip-page xmlns='{NS_MAM}'/>")
    assert flipped.bodies == ["m5", "m4"]

    counted = await archive(bob, rsm(max_=0))
    assert counted.results == [] and counted.rsm("count") == "5"

    # slixmpp pages through the whole archive by itself, both ways.
    got = [m["mam_result"]["forwarded"]["stanza"]["body"]
           async for m in bob.c.plugin["xep_0313"].iterate(rsm={"max": 2})]
    assert got == ["m1", "m2", "m3", "m4", "m5"]
    back = [m["mam_result"]["forwarded"]["stanza"]["body"]
            async for m in bob.c.plugin["xep_0313"].iterate(rsm={"max": 2}, reverse=True)]
    assert back == ["m5", "m4", "m3", "m2", "m1"]


async def test_max_above_the_limit_is_capped(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(archive={"max_page": 3})
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    await conversation(alice, bob, 5)
    capped = await archive(bob, rsm(max_=50))
    assert capped.bodies == ["m1", "m2", "m3"] and not capped.complete
    unasked = await archive(bob)
    assert len(unasked.results) == 3 and unasked.rsm("count") == "5"


async def test_form_filters(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    bob = await connect(server, f"{BOB}/desk", plugins=MAM)
    await conversation(alice, bob, 2, "a")
    say(carol, BOB, "c1")
    await bob.next(message("c1"), "carol's message")
    say(bob, ALICE, "b1")
    await alice.next(message("b1"), "bob's reply")

    assert (await archive(bob, form(with_=ALICE))).bodies == ["a1", "a2", "b1"]
    assert (await archive(bob, form(**{"with": CAROL}))).bodies == ["c1"]
    assert (await archive(bob, form(**{"with": f"{CAROL}/desk"}))).bodies == ["c1"]

    everything = await archive(bob)
    ids = everything.ids
    assert everything.bodies == ["a1", "a2", "c1", "b1"]
    assert (await archive(bob, form(after_id=ids[0]))).bodies == ["a2", "c1", "b1"]
    assert (await archive(bob, form(before_id=ids[3]))).bodies == ["a1", "a2", "c1"]
    between = await archive(bob, form(after_id=ids[0], before_id=ids[3]))
    assert between.bodies == ["a2", "c1"] and between.rsm("count") == "2"
    assert (await archive(bob, form(ids=[ids[1], ids[3], "unknown"]))).bodies == ["a2", "b1"]

    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert (await archive(bob, form(start=future))).bodies == []
    assert (await archive(bob, form(end=past))).bodies == []
    assert len((await archive(bob, form(start=past, end=future))).results) == 4
    res = await bob.c.plugin["xep_0313"].retrieve(start=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
                                                  with_jid=JID(CAROL), timeout=10)
    assert [r["mam_result"]["forwarded"]["stanza"]["body"] for r in res["mam"]["results"]] == ["c1"]


async def test_query_form_and_metadata(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    res = await bob.query("get", f"<query xmlns='{NS_MAM}'/>")
    fields = {f.get("var") for f in res.iter("{jabber:x:data}field")}
    assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= fields

    empty = await bob.query("get", f"<metadata xmlns='{NS_MAM}'/>")
    assert list(empty.find(q(NS_MAM, "metadata"))) == []  # type: ignore[arg-type]
    await conversation(alice, bob, 3)
    ids = (await archive(bob)).ids
    meta = (await bob.query("get", f"<metadata xmlns='{NS_MAM}'/>")).find(q(NS_MAM, "metadata"))
    assert meta is not None
    assert meta.find(q(NS_MAM, "start")).get("id") == ids[0]  # type: ignore[union-attr]
    assert meta.find(q(NS_MAM, "end")).get("id") == ids[-1]  # type: ignore[union-attr]


async def test_bad_queries_are_refused(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    await conversation(alice, bob, 1)

    assert await refused(bob, form(start="yesterday")) == "bad-request"
    assert await refused(bob, form(end="2024-01-01T00:00:00")) == "bad-request", "a time without a zone"
    assert await refused(bob, form(colour="blue")) == "bad-request"
    assert await refused(bob, form(**{"with": "not a jid@"})) == "bad-request"
    assert await refused(bob, "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                              "<value>urn:xmpp:mam:1</value></field></x>") == "bad-request"
    assert await refused(bob, rsm(max_=-1)) == "bad-request"
    assert await refused(bob, f"<set xmlns='{NS_RSM}'><max>lots</max></set>") == "bad-request"
    assert await refused(bob, rsm(after="no-such-id")) == "item-not-found"
    assert await refused(bob, rsm(before="no-such-id")) == "item-not-found"
    assert await refused(bob, form(after_id="no-such-id")) == "item-not-found"
    # Someone else's archive.
    assert await refused(alice, to=BOB) == "forbidden"
    assert (await alice.refused("get", f"<prefs xmlns='{NS_MAM}'/>", to=BOB))[1] == "forbidden"
    # The archive still answers afterwards.
    assert (await archive(bob)).bodies == ["m1"]


# --- preferences -------------------------------------------------------------------------------------------


async def test_preferences_decide_what_is_archived(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    bob = await connect(server, f"{BOB}/desk")

    res = await bob.query("get", f"<prefs xmlns='{NS_MAM}'/>")
    assert res.find(q(NS_MAM, "prefs")).get("default") == "always"  # type: ignore[union-attr]
    res = await bob.query("set", f"<prefs xmlns='{NS_MAM}' default='never'>"
                                 f"<always><jid>{ALICE}</jid></always><never/></prefs>")
    prefs = res.find(q(NS_MAM, "prefs"))
    assert prefs is not None and prefs.get("default") == "never"
    assert [j.text for j in prefs.iter(q(NS_MAM, "jid"))] == [ALICE]

    say(alice, BOB, "from alice")
    say(carol, BOB, "from carol")
    for body in ("from alice", "from carol"):
        await bob.next(message(body), body)
    assert (await archive(bob)).bodies == ["from alice"]
    # The other side keeps its own preferences.
    assert (await archive(carol)).bodies == ["from carol"]

    await bob.query("set", f"<prefs xmlns='{NS_MAM}' default='always'><always/>"
                           f"<never><jid>{ALICE}</jid></never></prefs>")
    say(alice, BOB, "alice again")
    say(carol, BOB, "carol again")
    for body in ("alice again", "carol again"):
        await bob.next(message(body), body)
    assert (await archive(bob)).bodies == ["from alice", "carol again"]

    assert (await bob.refused("set", f"<prefs xmlns='{NS_MAM}' default='sometimes'/>"))[1] == "bad-request"
    assert (await bob.refused("set", f"<prefs xmlns='{NS_MAM}' default='always'>"
                                     f"<always><jid>@@</jid></always></prefs>"))[1] == "jid-malformed"


async def test_roster_preference_archives_contacts_only(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(archive={"default_mode": "roster"})
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, BOB, ALICE, both=True)
    alice = await connect(server, f"{ALICE}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    bob = await connect(server, f"{BOB}/desk")
    res = await bob.query("get", f"<prefs xmlns='{NS_MAM}'/>")
    assert res.find(q(NS_MAM, "prefs")).get("default") == "roster"  # type: ignore[union-attr]
    say(alice, BOB, "a contact")
    say(carol, BOB, "a stranger")
    for body in ("a contact", "a stranger"):
        await bob.next(message(body), body)
    assert (await archive(bob)).bodies == ["a contact"]


# --- retention -------------------------------------------------------------------------------------------


async def test_retention_purges_old_messages(make_server: ServerFactory, connect: Connect) -> None:
    server = await make_server(archive={"retention_days": 2})
    mam: Mam = server.module("mam")  # type: ignore[assignment]
    assert mam._purger is not None and not mam._purger.done(), "no retention task runs"
    await users(server, ALICE, BOB)
    old = time.time() - 3 * 86400
    await mam.archive.append([ArchiveEntry(BOB, "old-one", ALICE, old,
                                           f"<message from='{ALICE}/desk' to='{BOB}' type='chat'>"
                                           f"<body>ancient</body></message>")])
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    await conversation(alice, bob, 1, "fresh")
    assert (await archive(bob)).bodies == ["ancient", "fresh1"]

    assert await mam.purge() == 1
    assert (await archive(bob)).bodies == ["fresh1"]

    task = mam._purger
    await mam.stop()
    assert task.done() and mam._purger is None, "stop() leaves the retention task running"


async def test_no_retention_task_without_retention(server: Server) -> None:
    mam: Mam = server.module("mam")  # type: ignore[assignment]
    assert mam._purger is None
    assert await mam.purge() == 0


async def test_slixmpp_sees_the_stanza_id(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk", plugins=MAM)
    seen: list[Any] = []
    bob.c.add_event_handler("message", seen.append)
    say(alice, BOB, "with an id")
    got = await bob.next(message("with an id"), "the message")
    await bob.mark()
    msg = next(m for m in seen if m["body"] == "with an id")
    assert msg["stanza_id"]["by"] == BOB and msg["stanza_id"]["id"] == stanza_ids(got)[BOB]


# --- PostgreSQL ----------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_the_archive_on_postgres(make_server: ServerFactory, pg_server: PgServer,
                                       connect: Connect) -> None:
    server = await make_server(storage_url=pg_server.fresh_database(f"mam_{uuid.uuid4().hex[:12]}"),
                               archive={"retention_days": 2})
    mam: Mam = server.module("mam")  # type: ignore[assignment]
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    say(alice, BOB, "stored offline")
    await alice.mark()
    bob = await connect(server, f"{BOB}/desk")
    offline = next(el for el in bob.got if message("stored offline")(el))
    await conversation(alice, bob, 3)

    page = await archive(bob, rsm(max_=2, before=""))
    assert page.bodies == ["m2", "m3"] and not page.complete and page.rsm("count") == "4"
    first = await archive(bob, rsm(max_=2, before=page.ids[0]))
    assert first.bodies == ["stored offline", "m1"] and first.complete
    assert first.ids[0] == stanza_ids(offline)[BOB]
    assert await refused(bob, rsm(after="missing")) == "item-not-found"

    for default in ("never", "always"):
        await bob.query("set", f"<prefs xmlns='{NS_MAM}' default='{default}'/>")
    assert (await mam.archive.get_prefs(BOB)).default == "always"  # type: ignore[union-attr]

    await mam.archive.append([ArchiveEntry(BOB, "old", ALICE, time.time() - 5 * 86400,
                                           f"<message to='{BOB}'><body>old</body></message>")])
    assert await mam.purge() == 1
    assert len((await archive(bob)).results) == 4


async def test_write_behind_archive_is_committed_before_an_ack(server: Server) -> None:
    """Archiving in group commits after delivery: a stream management ack of the sender's
    message, or an archive query, comes only once the message is committed."""
    await users(server, ALICE, BOB)
    raw = await Raw.open(server)
    await raw.login("alice", "secret", resource="sm")
    raw.send("<enable xmlns='urn:xmpp:sm:3'/>")
    await raw.read_until(b"/>")
    raw.send(f"<message to='{BOB}' type='chat'><body>kept</body></message><r xmlns='urn:xmpp:sm:3'/>")
    await raw.read_until(b"<a xmlns")
    mam: Mam = server.module("mam")  # type: ignore[assignment]
    assert not mam.archive._waiting and mam.archive._writer is None
    page = await mam.archive.query(BOB, ArchiveFilter(), limit=10)
    assert [m.stanza.count("kept") for m in page.items] == [1]
    await raw.close()
