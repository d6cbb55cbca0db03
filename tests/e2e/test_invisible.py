"""Invisibility end to end with slixmpp: the invisible command (XEP-0186) and invisibility
by privacy list (XEP-0126). An invisible session's contacts see it go unavailable and
then nothing, the user's other resources still see its changes, directed presence still
goes out, probes follow the 'probe' attribute, and becoming visible shows the current
presence again."""

from __future__ import annotations

from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

from parley.server import Server
from tests.conftest import subscribed, users
from tests.peer import (
    ALICE,
    BOB,
    CAROL,
    DOMAIN,
    Connect,
    Peer,
    change_status,
    message,
    presence,
    presences_from,
    say,
)

NS_INVISIBLE = "urn:xmpp:invisible:0"
NS_PRIVACY = "jabber:iq:privacy"
NS_INFO = "http://jabber.org/protocol/disco#info"


async def invisible(peer: Peer, probe: str | None = None) -> None:
    attr = "" if probe is None else f" probe={quoteattr(probe)}"
    await peer.query("set", f"<invisible xmlns='{NS_INVISIBLE}'{attr}/>")


async def visible(peer: Peer) -> None:
    await peer.query("set", f"<visible xmlns='{NS_INVISIBLE}'/>")


def shown(window: list[Element], bare: str) -> list[Element]:
    """Available presence from any resource of `bare`."""
    return [el for el in presences_from(window, bare) if presence()(el)]


async def test_server_advertises_invisibility_and_privacy_lists(server: Server, connect: Connect) -> None:
    await users(server, ALICE)
    alice = await connect(server, f"{ALICE}/desk")
    res = await alice.query("get", f"<query xmlns='{NS_INFO}'/>", to=DOMAIN)
    features = {f.get("var") for f in res.iter(f"{{{NS_INFO}}}feature")}
    assert {NS_INVISIBLE, NS_PRIVACY} <= features


async def test_invisible_then_visible(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    await subscribed(server, ALICE, BOB, both=True)
    desk = await connect(server, f"{ALICE}/desk", pstatus="at my desk")
    phone = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk", pstatus="bob here")
    await bob.next(presence(f"{ALICE}/desk", status="at my desk"), "alice/desk before")
    for p in (desk, phone, bob):
        await p.mark()

    await invisible(desk, "false")
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "alice/desk going invisible")
    await bob.mark()

    change_status(desk, "secretly here")
    await phone.next(presence(f"{ALICE}/desk", status="secretly here"), "the change, on alice's other resource")
    await desk.next(presence(f"{ALICE}/desk", status="secretly here"), "the change, reflected to the sender")
    await desk.mark()
    assert not presences_from(await bob.mark(), ALICE), "a contact saw the invisible session"
    # alice/phone stays visible.
    change_status(phone, "phone here")
    await bob.next(presence(f"{ALICE}/phone", status="phone here"), "alice/phone")
    # Invisible is not away: messages and contacts' presence still arrive.
    change_status(bob, "bob again")
    await desk.next(presence(f"{BOB}/desk", status="bob again"), "bob's presence, while invisible")
    say(bob, f"{ALICE}/desk", "are you there?")
    await desk.next(message("are you there?"), "bob's message, while invisible")

    # A contact probing the account gets the visible resource only.
    bob.send(f"<presence to='{ALICE}' type='probe'/>")
    await bob.next(presence(f"{ALICE}/phone"), "the probe answer for alice/phone")
    assert not [el for el in presences_from(await bob.mark(), ALICE) if el.get("from") == f"{ALICE}/desk"]

    await visible(desk)
    await bob.next(presence(f"{ALICE}/desk", status="secretly here"), "alice/desk visible again")
    change_status(desk, "openly here")
    await bob.next(presence(f"{ALICE}/desk", status="openly here"), "alice/desk's next change")


async def test_probes_follow_the_probe_attribute(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, ALICE, BOB, both=True)
    await subscribed(server, CAROL, BOB, both=True)
    bob = await connect(server, f"{BOB}/desk", pstatus="bob here")

    # probe='false': the session learns nobody's presence and shows its own to nobody.
    alice = await connect(server, f"{ALICE}/desk", available=False)
    await invisible(alice, "false")
    alice.send("<presence><status>lurking</status></presence>")
    await alice.next(presence(f"{ALICE}/desk", status="lurking"), "the presence reflected")
    await alice.mark()
    assert not shown(alice.got, BOB), "a probe went out for an invisible session"
    assert not presences_from(await bob.mark(), ALICE)
    # The probes held back go out when it becomes visible.
    await visible(alice)
    await bob.next(presence(f"{ALICE}/desk", status="lurking"), "alice once visible")
    await alice.next(presence(f"{BOB}/desk", status="bob here"), "bob's presence, probed at last")

    # probe='true': the session learns its contacts' presence and still shows nothing.
    carol = await connect(server, f"{CAROL}/desk", available=False)
    await invisible(carol, "true")
    carol.send("<presence/>")
    await carol.next(presence(f"{BOB}/desk", status="bob here"), "bob's presence, probed")
    await carol.mark()
    assert not presences_from(await bob.mark(), CAROL)


async def test_directed_presence_while_invisible(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, ALICE, BOB, both=True)
    await subscribed(server, ALICE, CAROL, both=True)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/desk")
    await invisible(alice)
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "alice unavailable for bob")
    await carol.next(presence(f"{ALICE}/desk", "unavailable"), "alice unavailable for carol")
    await bob.mark()
    await carol.mark()

    alice.send(f"<presence to='{BOB}'><status>just for bob</status></presence>")
    await bob.next(presence(f"{ALICE}/desk", status="just for bob"), "the directed presence")
    await alice.mark()
    assert not presences_from(await carol.mark(), ALICE)
    # Going offline, the session tells those it showed itself to, and nobody else.
    alice.send("<presence type='unavailable'/>")
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "the unavailable after the directed presence")
    await alice.mark()
    assert not presences_from(await carol.mark(), ALICE)


async def test_bad_commands(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB)
    alice = await connect(server, f"{ALICE}/desk")
    bob = await connect(server, f"{BOB}/desk")
    assert await alice.refused("set", f"<invisible xmlns='{NS_INVISIBLE}' probe='maybe'/>") \
        == ("modify", "bad-request")
    assert (await alice.refused("set", f"<hidden xmlns='{NS_INVISIBLE}'/>"))[1] == "bad-request"
    assert (await bob.refused("set", f"<invisible xmlns='{NS_INVISIBLE}'/>", to=ALICE))[1] == "forbidden"
    # Visible while visible is no change.
    await visible(alice)


# --- XEP-0126: invisibility by privacy list ------------------------------------------------------------


def plist(name: str, items: str) -> str:
    return f"<query xmlns='{NS_PRIVACY}'><list name={quoteattr(name)}>{items}</list></query>"


def active(name: str | None) -> str:
    return f"<query xmlns='{NS_PRIVACY}'><active{'' if name is None else f' name={quoteattr(name)}'}/></query>"


async def test_invisibility_by_privacy_list(server: Server, connect: Connect) -> None:
    await users(server, ALICE, BOB, CAROL)
    await subscribed(server, ALICE, BOB, both=True)
    await subscribed(server, ALICE, CAROL, both=True)
    desk = await connect(server, f"{ALICE}/desk", pstatus="here")
    phone = await connect(server, f"{ALICE}/phone")
    bob = await connect(server, f"{BOB}/desk")
    carol = await connect(server, f"{CAROL}/desk", pstatus="carol here")
    await bob.next(presence(f"{ALICE}/desk", status="here"), "alice before")
    await desk.query("set", plist("invisible", "<item action='deny' order='1'><presence-out/></item>"))
    await desk.query("set", plist("visible-to-carol",
                                  f"<item type='jid' value='{CAROL}' action='allow' order='1'><presence-out/></item>"
                                  "<item action='deny' order='2'><presence-out/></item>"))
    for p in (desk, phone, bob, carol):
        await p.mark()

    await desk.query("set", active("invisible"))
    await bob.next(presence(f"{ALICE}/desk", "unavailable"), "alice/desk invisible for bob")
    await carol.next(presence(f"{ALICE}/desk", "unavailable"), "alice/desk invisible for carol")
    await bob.mark()
    await carol.mark()
    change_status(desk, "hidden")
    await phone.next(presence(f"{ALICE}/desk", status="hidden"), "the change, on alice's other resource")
    await desk.mark()
    assert not presences_from(await bob.mark(), ALICE)
    assert not presences_from(await carol.mark(), ALICE)
    # Contacts' presence still comes in.
    change_status(carol, "carol again")
    await desk.next(presence(f"{CAROL}/desk", status="carol again"), "carol's presence")
    # A contact logging in later does not see the session either.
    late = await connect(server, f"{BOB}/laptop")
    assert not [el for el in shown(late.got, ALICE) if el.get("from") == f"{ALICE}/desk"]

    # Visible to one contact only.
    await desk.query("set", active("visible-to-carol"))
    await carol.next(presence(f"{ALICE}/desk", status="hidden"), "alice/desk for carol")
    await carol.mark()
    change_status(desk, "for carol")
    await carol.next(presence(f"{ALICE}/desk", status="for carol"), "the change, for carol")
    await desk.mark()
    assert not presences_from(await bob.mark(), ALICE)

    # Declining the list shows the session to everyone again.
    await desk.query("set", active(None))
    await bob.next(presence(f"{ALICE}/desk", status="for carol"), "alice/desk visible again")
    await late.next(presence(f"{ALICE}/desk", status="for carol"), "alice/desk on bob's other resource")
