"""Fan-out copies serialised once: the bytes equal a fresh serialisation, and a copy changed
on the way is serialised afresh."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

from parley.xmpp.xmlstream import FanOut, Presized, serialize

NS = "jabber:client"


def _message() -> Element:
    m = Element(f"{{{NS}}}message", {"type": "groupchat", "from": "room@conference.example.test/n&k"})
    SubElement(m, f"{{{NS}}}body").text = "hi & <there> \r"
    SubElement(m, "{urn:xmpp:occupant-id:0}occupant-id", {"id": "abc"})
    return m


def _plain(copy: Element) -> Element:
    out = Element(copy.tag, dict(copy.attrib))
    out.text = copy.text
    out.extend(list(copy))
    return out


def test_copies_are_the_bytes_a_fresh_serialisation_makes() -> None:
    fan = FanOut(_message())
    for to in ("alice@example.test/desk", "o'brien@example.test/a&b", "bob@example.test/\u00e9"):
        copy = fan.copy_to(to)
        assert isinstance(copy, Presized)
        assert copy.get("to") == to
        assert serialize(copy) == serialize(_plain(copy))


def test_a_changed_copy_is_serialised_again() -> None:
    fan = FanOut(_message())
    moved = fan.copy_to("alice@example.test/desk")
    moved.set("to", "alice@example.test/phone")
    assert b"to='alice@example.test/phone'" in serialize(moved)
    grown = fan.copy_to("bob@example.test/desk")
    SubElement(grown, "{urn:xmpp:sid:0}stanza-id", {"id": "1", "by": "bob@example.test"})
    assert b"stanza-id" in serialize(grown)
    # Another stream namespace never takes the jabber:client bytes.
    assert serialize(fan.copy_to("carol@example.test"), "jabber:server") == serialize(
        _plain(fan.copy_to("carol@example.test")), "jabber:server")
