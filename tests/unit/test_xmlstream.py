from __future__ import annotations

import random
import tracemalloc
from typing import Any
from xml.etree.ElementTree import Comment, Element, QName, SubElement

import pytest

from parley.xmpp.xmlstream import (
    STREAM_CLOSE,
    STREAM_NS,
    STREAMS_ERROR_NS,
    XML_LANG,
    Event,
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

C = "{jabber:client}"
S = "{" + STREAM_NS + "}"

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.com' from='juliet@example.com' version='1.0' xml:lang='en'>"
)

STANZAS = [
    b"<message to='romeo@example.net' type='chat' id='m1'><body>Wherefore art thou?</body></message>",
    b"<presence/>",
    b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster' ver=''/></iq>",
    b"<message xml:lang='fr'><body>caf\xc3\xa9 &amp; cr\xc3\xa8me &lt;3 &#x1F600; &#233;</body>"
    b"<x:y xmlns:x='urn:x' x:a='1' b='&quot;&apos;&gt;'>t<z/>tail</x:y> </message>",
    b"<r xmlns='urn:xmpp:sm:3'/>",
    b"<a xmlns='urn:xmpp:sm:3' h='12'/>",
    b"<message><body><![CDATA[<not a tag> & ]]></body></message>",
    b"<iq type='set' id='x'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<resource>balcony</resource></bind></iq>",
    b"<message\n  to = \"a@b\"\tid='q'  ><body>line1\r\nline2\rline3</body></message  >",
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"</stream:features>",
]

STREAM = HEADER + b" ".join(STANZAS) + b"\n" + STREAM_CLOSE


def struct(el: Element) -> tuple[Any, ...]:
    """A comparable view of an element tree, ignoring the outermost tail."""
    return (
        el.tag,
        dict(el.attrib),
        el.text or "",
        [struct(c) + (c.tail or "",) for c in el],
    )


def summarize(events: list[Event]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, StanzaEvent):
            out.append(("stanza", struct(ev.element)))
        elif isinstance(ev, StreamOpen):
            out.append(("open", ev.attrs, ev.default_ns))
        else:
            assert isinstance(ev, StreamClose)
            out.append(("close",))
    return out


def feed_all(data: bytes, limits: Limits | None = None) -> list[Event]:
    parser = XMLStreamParser(limits) if limits else XMLStreamParser()
    return parser.feed(data)


def feed_bytewise(data: bytes, limits: Limits | None = None) -> list[Event]:
    parser = XMLStreamParser(limits) if limits else XMLStreamParser()
    events: list[Event] = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    return events


def stanzas(events: list[Event]) -> list[Element]:
    return [ev.element for ev in events if isinstance(ev, StanzaEvent)]


def refuse(data: bytes, limits: Limits | None = None, *, bytewise: bool = False) -> StreamError:
    with pytest.raises(StreamError) as info:
        if bytewise:
            feed_bytewise(data, limits)
        else:
            feed_all(data, limits)
    return info.value


def parse_one(data: bytes) -> Element:
    (el,) = stanzas(feed_all(HEADER + data))
    return el


def round_trip(el: Element, ns: str = "jabber:client") -> Element:
    header = stream_header(from_="example.com", to=None, id_="abc", ns=ns)
    events = feed_all(header + serialize(el, ns) + STREAM_CLOSE)
    assert isinstance(events[-1], StreamClose)
    (out,) = stanzas(events)
    return out


# -- stream header -----------------------------------------------------------


def test_header_attributes_and_lang() -> None:
    (ev,) = feed_all(HEADER)
    assert isinstance(ev, StreamOpen)
    assert ev.attrs == {
        "to": "example.com",
        "from": "juliet@example.com",
        "version": "1.0",
        XML_LANG: "en",
    }
    assert ev.default_ns == "jabber:client"


@pytest.mark.parametrize("ns", ["jabber:client", "jabber:server", "jabber:component:accept"])
def test_header_default_namespace(ns: str) -> None:
    header = (
        f"<stream:stream xmlns:stream='{STREAM_NS}' xmlns='{ns}' to='x'>"
        "<message><body>b</body></message>"
    ).encode()
    events = feed_all(header)
    assert isinstance(events[0], StreamOpen)
    assert events[0].default_ns == ns
    (msg,) = stanzas(events)
    assert msg.tag == "{" + ns + "}message"
    assert msg[0].tag == "{" + ns + "}body"


def test_header_without_default_namespace_or_declaration() -> None:
    (ev,) = feed_all(b"<s:stream xmlns:s='http://etherx.jabber.org/streams' id='1'>")
    assert isinstance(ev, StreamOpen)
    assert ev.default_ns == ""
    assert ev.attrs == {"id": "1"}


def test_header_bytewise() -> None:
    events = feed_bytewise(HEADER)
    assert summarize(events) == summarize(feed_all(HEADER))


def test_stream_header_builder_parses_back() -> None:
    data = stream_header(from_="example.com", to="a&b'<c>", id_='i"d', lang="de")
    assert data.startswith(b"<?xml version='1.0'?><stream:stream ")
    (ev,) = feed_all(data)
    assert isinstance(ev, StreamOpen)
    assert ev.attrs == {
        "from": "example.com",
        "to": "a&b'<c>",
        "id": 'i"d',
        "version": "1.0",
        XML_LANG: "de",
    }
    assert ev.default_ns == "jabber:client"


def test_stream_header_builder_omits_missing() -> None:
    data = stream_header(from_=None, to=None, id_=None, ns="jabber:server", lang=None)
    (ev,) = feed_all(data)
    assert isinstance(ev, StreamOpen)
    assert ev.attrs == {"version": "1.0"}
    assert ev.default_ns == "jabber:server"


# -- stanzas -----------------------------------------------------------------


def test_stanzas_carry_namespace() -> None:
    events = feed_all(STREAM)
    assert isinstance(events[0], StreamOpen)
    assert isinstance(events[-1], StreamClose)
    els = stanzas(events)
    assert len(els) == len(STANZAS)
    msg = els[0]
    assert msg.tag == C + "message"
    assert msg.attrib == {"to": "romeo@example.net", "type": "chat", "id": "m1"}
    assert msg[0].tag == C + "body"
    assert msg[0].text == "Wherefore art thou?"
    assert els[2][0].tag == "{jabber:iq:roster}query"
    assert els[4].tag == "{urn:xmpp:sm:3}r"
    assert els[9].tag == S + "features"
    assert els[9][0][0].tag == "{urn:ietf:params:xml:ns:xmpp-tls}required"


def test_text_attributes_and_references() -> None:
    el = stanzas(feed_all(STREAM))[3]
    assert el.attrib == {XML_LANG: "fr"}
    assert el[0].text == "caf\u00e9 & cr\u00e8me <3 \U0001f600 \u00e9"
    x = el[1]
    assert x.tag == "{urn:x}y"
    assert x.attrib == {"{urn:x}a": "1", "b": "\"'>"}
    assert x.text == "t"
    assert x[0].tag == C + "z"
    assert x[0].tail == "tail"
    assert x.tail == " "


def test_cdata_and_line_ends() -> None:
    els = stanzas(feed_all(STREAM))
    assert els[6][0].text == "<not a tag> & "
    assert els[8].attrib == {"to": "a@b", "id": "q"}
    assert els[8][0].text == "line1\nline2\nline3"


def test_every_byte_boundary_gives_same_events() -> None:
    expected = summarize(feed_all(STREAM))
    assert summarize(feed_bytewise(STREAM)) == expected


def test_random_splits_give_same_events() -> None:
    rng = random.Random(6120)
    expected = summarize(feed_all(STREAM))
    for _ in range(50):
        parser = XMLStreamParser()
        events: list[Event] = []
        pos = 0
        while pos < len(STREAM):
            step = rng.randint(1, 40)
            events += parser.feed(STREAM[pos : pos + step])
            pos += step
        assert summarize(events) == expected


def test_several_stanzas_in_one_feed_after_header() -> None:
    parser = XMLStreamParser()
    assert len(parser.feed(HEADER)) == 1
    events = parser.feed(b"".join(STANZAS))
    assert len(events) == len(STANZAS)
    assert all(isinstance(ev, StanzaEvent) for ev in events)


def test_stanza_completed_across_feeds_is_emitted_immediately() -> None:
    parser = XMLStreamParser()
    parser.feed(HEADER)
    assert parser.feed(b"<message><body>x</body></mess") == []
    assert parser.stanza_bytes == len(b"<message><body>x</body></mess")
    (ev,) = parser.feed(b"age>")
    assert isinstance(ev, StanzaEvent)
    assert parser.stanza_bytes == 0


def test_whitespace_keepalives() -> None:
    parser = XMLStreamParser()
    assert parser.feed(b" \n") == []
    assert len(parser.feed(HEADER)) == 1
    for ws in (b" ", b"\n", b"\r\n", b"\t", b"   \n  "):
        assert parser.feed(ws) == []
    (ev,) = parser.feed(b" <presence/> ")
    assert isinstance(ev, StanzaEvent)
    assert parser.feed(b"\n") == []


@pytest.mark.parametrize("junk", [b"hello", b" x ", b"&amp;", b"<![CDATA[x]]>", b"\xc2\xa0"])
def test_text_between_stanzas_refused(junk: bytes) -> None:
    assert refuse(HEADER + b"<presence/>" + junk).condition == "not-well-formed"


def test_stream_close_and_trailing_data() -> None:
    parser = XMLStreamParser()
    events = parser.feed(HEADER + b"<presence/></stream:stream><junk>")
    assert isinstance(events[-1], StreamClose)
    assert parser.feed(b"<more/>not xml at all") == []


def test_reset_after_features() -> None:
    parser = XMLStreamParser()
    parser.feed(HEADER)
    (features,) = parser.feed(
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
    )
    assert isinstance(features, StanzaEvent)
    (starttls,) = parser.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert isinstance(starttls, StanzaEvent)
    parser.reset()
    events = parser.feed(HEADER + b"<presence/>")
    assert isinstance(events[0], StreamOpen)
    assert events[0].attrs["to"] == "example.com"
    assert isinstance(events[1], StanzaEvent)


def test_reset_clears_error_and_close() -> None:
    parser = XMLStreamParser()
    parser.feed(HEADER)
    with pytest.raises(StreamError):
        parser.feed(b"<a></b>")
    parser.reset()
    assert isinstance(parser.feed(HEADER)[0], StreamOpen)
    assert isinstance(parser.feed(STREAM_CLOSE)[0], StreamClose)
    parser.reset()
    assert isinstance(parser.feed(HEADER)[0], StreamOpen)


def test_error_is_sticky() -> None:
    parser = XMLStreamParser()
    parser.feed(HEADER)
    with pytest.raises(StreamError) as first:
        parser.feed(b"<!-- hi -->")
    with pytest.raises(StreamError) as second:
        parser.feed(b"<presence/>")
    assert first.value.condition == second.value.condition == "restricted-xml"


def test_stream_error_attributes() -> None:
    err = StreamError("policy-violation", "too big")
    assert err.condition == "policy-violation"
    assert err.text == "too big"
    assert StreamError("bad-format").text is None


# -- restricted XML ----------------------------------------------------------

BILLION_LAUGHS = (
    b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    + b"".join(
        b"<!ENTITY lol%d '%s'>" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    b"<message><body>&lol9;</body></message>"
)


@pytest.mark.parametrize("bytewise", [False, True])
def test_billion_laughs_refused(bytewise: bool) -> None:
    tracemalloc.start()
    try:
        err = refuse(BILLION_LAUGHS, bytewise=bytewise)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.condition == "restricted-xml"
    assert peak < 1_000_000


def test_doctype_refused_before_internal_subset_is_parsed() -> None:
    parser = XMLStreamParser()
    with pytest.raises(StreamError) as info:
        parser.feed(b"<?xml version='1.0'?><!DOCTYPE stream:stream [")
    assert info.value.condition == "restricted-xml"


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE stream SYSTEM 'http://evil.example/x.dtd'>" + HEADER[21:],
        b"<!DOCTYPE s [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>" + HEADER[21:],
        b"<!DOCTYPE s [<!ENTITY % pe SYSTEM 'http://evil.example/'> %pe;]>" + HEADER[21:],
        b"<!DOCTYPE s>" + HEADER[21:],
    ],
)
def test_dtd_and_external_entities_refused(data: bytes) -> None:
    assert refuse(data).condition == "restricted-xml"


@pytest.mark.parametrize(
    "stanza",
    [
        b"<message><body>&xxe;</body></message>",
        b"<message a='&xxe;'/>",
        b"<message><body>&lt;&nbsp;</body></message>",
    ],
)
def test_undefined_entity_refused(stanza: bytes) -> None:
    assert refuse(HEADER + stanza).condition in {"restricted-xml", "not-well-formed"}


@pytest.mark.parametrize(
    "data",
    [
        HEADER + b"<!-- keepalive -->",
        HEADER + b"<message><!-- c --></message>",
        b"<!-- before -->" + HEADER[21:],
    ],
)
def test_comments_refused(data: bytes) -> None:
    assert refuse(data).condition == "restricted-xml"


@pytest.mark.parametrize(
    "data",
    [
        HEADER + b"<?php echo 1; ?>",
        HEADER + b"<message><?target data?></message>",
        b"<?xml version='1.0'?><?xml-stylesheet href='x'?>" + HEADER[21:],
    ],
)
def test_processing_instructions_refused(data: bytes) -> None:
    assert refuse(data).condition == "restricted-xml"


def test_misplaced_xml_declaration_refused() -> None:
    err = refuse(HEADER + b"<?xml version='1.0'?>")
    assert err.condition in {"restricted-xml", "not-well-formed"}


def test_comment_refused_bytewise() -> None:
    assert refuse(HEADER + b"<presence><!-- x --></presence>", bytewise=True).condition == (
        "restricted-xml"
    )


# -- encodings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",
        b"\xc3\x28",
        b"\xc0\xaf",  # overlong '/'
        b"\xed\xa0\x80",  # encoded surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xe2\x82",  # truncated sequence
        b"\x00",
        b"\x01",
    ],
)
def test_invalid_utf8_refused(bad: bytes) -> None:
    for data in (
        HEADER + b"<message><body>" + bad + b"</body></message>",
        HEADER + b"<message to='" + bad + b"'/>",
    ):
        assert refuse(data).condition in {"not-well-formed", "unsupported-encoding"}
        assert refuse(data, bytewise=True).condition in {"not-well-formed", "unsupported-encoding"}


@pytest.mark.parametrize("encoding", [b"ISO-8859-1", b"UTF-16", b"us-ascii", b"EBCDIC-US"])
def test_non_utf8_declaration_refused(encoding: bytes) -> None:
    data = b"<?xml version='1.0' encoding='" + encoding + b"'?>" + HEADER[21:]
    assert refuse(data).condition == "unsupported-encoding"


def test_utf8_declaration_accepted_in_any_case() -> None:
    for enc in (b"UTF-8", b"utf-8"):
        events = feed_all(b"<?xml version='1.0' encoding='" + enc + b"'?>" + HEADER[21:])
        assert isinstance(events[0], StreamOpen)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-16-le", "utf-32"])
@pytest.mark.parametrize("bytewise", [False, True])
def test_utf16_and_utf32_refused(codec: str, bytewise: bool) -> None:
    for text in (HEADER.decode(), HEADER[21:].decode()):
        err = refuse(text.encode(codec), bytewise=bytewise)
        assert err.condition in {"unsupported-encoding", "not-well-formed"}


# -- well-formedness and namespaces ------------------------------------------


@pytest.mark.parametrize(
    "stanza",
    [
        b"<message></presence>",
        b"<message a='1' a='2'/>",
        b"<message a=1/>",
        b"<message><body>x</message>",
        b"<1message/>",
        b"<message>&#0;</message>",
        b"<message>&#xD800;</message>",
        b"</message>",
        b"<message a='<'/>",
    ],
)
def test_malformed_refused(stanza: bytes) -> None:
    assert refuse(HEADER + stanza).condition == "not-well-formed"


def test_unbound_prefix_refused() -> None:
    assert refuse(HEADER + b"<foo:message/>").condition in {
        "bad-namespace-prefix",
        "not-well-formed",
    }


@pytest.mark.parametrize(
    "header",
    [
        b"<stream xmlns='jabber:client'>",
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/stream' xmlns='jabber:client'>",
        b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>",
        b"<message xmlns='jabber:client'>",
    ],
)
def test_wrong_stream_namespace_refused(header: bytes) -> None:
    assert refuse(header).condition == "invalid-namespace"


def test_stream_prefix_is_not_required() -> None:
    (ev,) = feed_all(b"<stream xmlns='http://etherx.jabber.org/streams'>")
    assert isinstance(ev, StreamOpen)


# -- limits ------------------------------------------------------------------


def _stanza_of_size(size: int, *, empty: bool = False) -> bytes:
    if empty:
        head = b"<message a='"
        tail = b"'/>"
    else:
        head = b"<message><body>"
        tail = b"</body></message>"
    body = b"x" * (size - len(head) - len(tail))
    data = head + body + tail
    assert len(data) == size
    return data


@pytest.mark.parametrize("empty", [False, True])
@pytest.mark.parametrize("bytewise", [False, True])
def test_stanza_size_limit_is_exact(empty: bool, bytewise: bool) -> None:
    limits = Limits(max_stanza_bytes=3000, max_open_tag_bytes=4000)
    feed = feed_bytewise if bytewise else feed_all
    ok = HEADER + _stanza_of_size(3000, empty=empty) + b"<presence/>"
    assert len(stanzas(feed(ok, limits))) == 2
    err = refuse(HEADER + _stanza_of_size(3001, empty=empty) + b"<presence/>", limits)
    assert err.condition == "policy-violation"
    assert "3000" in (err.text or "")


def test_oversized_stanza_detected_before_completion() -> None:
    limits = Limits(max_stanza_bytes=10_000)
    parser = XMLStreamParser(limits)
    parser.feed(HEADER)
    parser.feed(b"<message><body>")
    sent = len(b"<message><body>")
    with pytest.raises(StreamError) as info:
        while True:
            parser.feed(b"y" * 100)
            sent += 100
            assert sent <= 10_000 + 100
    assert info.value.condition == "policy-violation"
    assert "10000" in (info.value.text or "")
    assert sent > 10_000 - 100


def test_oversized_stanza_in_one_huge_feed() -> None:
    data = HEADER + b"<message><body>" + b"z" * 5_000_000
    err = refuse(data)
    assert err.condition == "policy-violation"


def test_many_small_children_count_toward_stanza_size() -> None:
    limits = Limits(max_stanza_bytes=5000)
    parser = XMLStreamParser(limits)
    parser.feed(HEADER + b"<iq type='set' id='1'><query xmlns='urn:x'>")
    with pytest.raises(StreamError) as info:
        for _ in range(10_000):
            parser.feed(b"<item/>")
    assert info.value.condition == "policy-violation"
    assert parser.stanza_bytes <= 5000 + 7


def test_stanza_bytes_progress() -> None:
    parser = XMLStreamParser()
    parser.feed(HEADER)
    assert parser.stanza_bytes == 0
    parser.feed(b"  <message><bo")
    assert parser.stanza_bytes == len(b"<message><bo")


@pytest.mark.parametrize("bytewise", [False, True])
def test_depth_limit(bytewise: bool) -> None:
    limits = Limits(max_depth=5)
    feed = feed_bytewise if bytewise else feed_all

    def nested(n: int) -> bytes:
        return b"<a>" * n + b"</a>" * n

    assert len(stanzas(feed(HEADER + nested(5), limits))) == 1
    assert refuse(HEADER + nested(6), limits, bytewise=bytewise).condition == "policy-violation"


def test_default_depth_limit() -> None:
    assert refuse(HEADER + b"<a>" * 100).condition == "policy-violation"


@pytest.mark.parametrize("bytewise", [False, True])
def test_attribute_limit(bytewise: bool) -> None:
    limits = Limits(max_attributes=3)
    feed = feed_bytewise if bytewise else feed_all
    header = (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    assert len(stanzas(feed(header + b"<m a='1' b='2' c='3'/>", limits))) == 1
    # Namespace declarations are not attributes.
    nested_ok = header + b"<m><x xmlns:p='u' xmlns:q='v' p:a='1' b='2' c='3'/></m>"
    assert len(stanzas(feed(nested_ok, limits))) == 1
    too_many = header + b"<m><x a='1' b='2' c='3' d='4'/></m>"
    assert refuse(too_many, limits, bytewise=bytewise).condition == "policy-violation"


def test_attribute_limit_on_header() -> None:
    limits = Limits(max_attributes=2)
    assert refuse(HEADER, limits).condition == "policy-violation"


def test_default_attribute_limit() -> None:
    attrs = b" ".join(b"a%d='1'" % i for i in range(65))
    assert refuse(HEADER + b"<message " + attrs + b"/>").condition == "policy-violation"


@pytest.mark.parametrize("bytewise", [False, True])
def test_open_tag_limit(bytewise: bool) -> None:
    limits = Limits(max_open_tag_bytes=1000)
    big = b"<message a='" + b"v" * 2000 + b"'>"
    assert refuse(HEADER + big, limits, bytewise=bytewise).condition == "policy-violation"
    nested = b"<message><x a='" + b"v" * 2000 + b"'/></message>"
    assert refuse(HEADER + nested, limits, bytewise=bytewise).condition == "policy-violation"
    # Long text after a small start tag is not a long start tag.
    text = HEADER + b"<message><x>" + b"t" * 5000 + b"</x><y/>" + b"u" * 5000 + b"</message>"
    assert len(stanzas(feed_bytewise(text, limits) if bytewise else feed_all(text, limits))) == 1


@pytest.mark.parametrize("bytewise", [False, True])
def test_open_tag_limit_checked_at_next_child(bytewise: bool) -> None:
    limits = Limits(max_open_tag_bytes=1000)
    feed = feed_bytewise if bytewise else feed_all
    big = HEADER + b"<message><x a='" + b"v" * 2000 + b"'><y/></x></message>"
    assert refuse(big, limits, bytewise=bytewise).condition == "policy-violation"
    text = HEADER + b"<message><x>" + b"t" * 5000 + b"<y/></x></message>"
    assert len(stanzas(feed(text, limits))) == 1


def test_open_tag_limit_on_header() -> None:
    limits = Limits(max_open_tag_bytes=1000)
    header = (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" to='" + b"x" * 2000 + b"'>"
    )
    assert refuse(header, limits).condition == "policy-violation"
    assert refuse(header, limits, bytewise=True).condition == "policy-violation"


def test_unterminated_tag_cut_off_while_arriving() -> None:
    parser = XMLStreamParser(Limits(max_open_tag_bytes=2000))
    parser.feed(HEADER + b"<message a='")
    sent = 0
    with pytest.raises(StreamError) as info:
        while True:
            parser.feed(b"q" * 50)
            sent += 50
            assert sent <= 2100
    assert info.value.condition == "policy-violation"


def test_unterminated_comment_outside_stanza_cut_off() -> None:
    parser = XMLStreamParser()
    parser.feed(HEADER + b"<!--")
    with pytest.raises(StreamError) as info:
        for _ in range(1000):
            parser.feed(b"-x" * 100)
    assert info.value.condition == "policy-violation"


def test_distinct_names_do_not_accumulate() -> None:
    parser = XMLStreamParser()
    parser.feed(HEADER)
    parser.feed(b"".join(b"<n%d xmlns='urn:n%d' a%d='1'/>" % (i, i, i) for i in range(2000)))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for start in range(2000, 60000, 2000):
            batch = range(start, start + 2000)
            parser.feed(b"".join(b"<n%d xmlns='urn:n%d' a%d='1'/>" % (i, i, i) for i in batch))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 3_000_000


def _long_stream() -> bytes:
    header = (
        b"<?xml version='1.0'?><s:stream xmlns:s='http://etherx.jabber.org/streams'"
        b" xmlns='jabber:client' xmlns:foo='urn:foo' to='x'>"
    )
    parts = [header]
    for i in range(6000):
        parts.append(
            b"<message id='%d'><foo:u%d foo:a='1'/><body>n%d</body></message> " % (i, i, i)
        )
        if i % 1000 == 0:
            parts.append(b"<message><body>" + b"p" * 100_000 + b"</body></message>")
        if i % 7 == 0:
            parts.append(b"<r xmlns='urn:xmpp:sm:3'/>\n")
    parts.append(b"</s:stream>")
    return b"".join(parts)


def test_long_stream_with_many_names_splits_consistently() -> None:
    data = _long_stream()
    expected = summarize(feed_all(data))
    assert expected[-1] == ("close",)
    assert len(expected) == 2 + 6000 + 6 + 858
    bar = expected[-3][1][3][0]
    assert bar[0] == "{urn:foo}u5999" and bar[1] == {"{urn:foo}a": "1"}
    rng = random.Random(4)
    for steps in ((1, 5), (1, 300), (1000, 70_000)):
        parser = XMLStreamParser()
        events: list[Event] = []
        pos = 0
        while pos < len(data):
            step = rng.randint(*steps)
            events += parser.feed(data[pos : pos + step])
            pos += step
        assert summarize(events) == expected


def test_limits_hold_on_long_streams() -> None:
    parser = XMLStreamParser(Limits(max_stanza_bytes=2000))
    parser.feed(HEADER)
    for i in range(3000):
        parser.feed(b"<message><u%d/><body>%s</body></message>" % (i, b"x" * 150))
    parser.feed(b"<message><body>")
    assert parser.stanza_bytes == len(b"<message><body>")
    assert refuse_on(parser, b"y" * 3000).condition == "policy-violation"


def refuse_on(parser: XMLStreamParser, data: bytes) -> StreamError:
    with pytest.raises(StreamError) as info:
        parser.feed(data)
    return info.value


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        Limits(max_depth=0)


# -- serialisation -----------------------------------------------------------


def test_serialize_simple_stanza() -> None:
    msg = Element(C + "message", {"to": "romeo@example.net", "type": "chat"})
    SubElement(msg, C + "body").text = "hi"
    assert (
        serialize(msg) == b"<message to='romeo@example.net' type='chat'><body>hi</body></message>"
    )
    assert serialize(Element(C + "presence")) == b"<presence/>"


def test_serialize_in_other_stream_namespace() -> None:
    msg = Element(C + "message")
    assert serialize(msg, "jabber:server") == b"<message xmlns='jabber:client'/>"
    assert serialize(Element("{jabber:server}message"), "jabber:server") == b"<message/>"


def test_serialize_foreign_namespaces() -> None:
    iq = Element(C + "iq", {"type": "result", "id": "1"})
    query = SubElement(iq, "{jabber:iq:roster}query")
    SubElement(query, "{jabber:iq:roster}item", {"jid": "a@b"})
    SubElement(query, C + "back")
    assert serialize(iq) == (
        b"<iq type='result' id='1'><query xmlns='jabber:iq:roster'><item jid='a@b'/>"
        b"<back xmlns='jabber:client'/></query></iq>"
    )


def test_serialize_unqualified_children_inherit() -> None:
    msg = Element(C + "message")
    SubElement(msg, "body").text = "x"
    q = SubElement(msg, "{urn:x}q")
    SubElement(q, "item")
    SubElement(q, "{}bare")
    assert serialize(msg) == (
        b"<message><body>x</body><q xmlns='urn:x'><item/><bare xmlns=''/></q></message>"
    )
    back = round_trip(msg)
    assert back[0].tag == C + "body"
    assert back[1][0].tag == "{urn:x}item"
    assert back[1][1].tag == "bare"


def test_serialize_round_trip_nested() -> None:
    msg = Element(C + "message", {"to": "a@b/c", XML_LANG: "en", "id": "x1"})
    SubElement(msg, C + "body", {XML_LANG: "de"}).text = "Hallo & <Welt> \"'"
    fwd = SubElement(msg, "{urn:xmpp:forward:0}forwarded")
    SubElement(fwd, "{urn:xmpp:delay}delay", {"stamp": "2010-07-10T23:08:25Z"})
    inner = SubElement(fwd, C + "message", {"from": "x@y"})
    body = SubElement(inner, C + "body")
    body.text = "nested"
    html = SubElement(msg, "{http://jabber.org/protocol/xhtml-im}html")
    b = SubElement(html, "{http://www.w3.org/1999/xhtml}body")
    b.text = "a "
    strong = SubElement(b, "{http://www.w3.org/1999/xhtml}strong")
    strong.text = "b"
    strong.tail = " c]]>d"
    ext = SubElement(msg, "{urn:ext}e", {"{urn:attr}k": "v", "{urn:attr2}k": "w", "plain": "p"})
    SubElement(ext, "{urn:ext}f", {"{urn:attr}k": "again"})
    assert struct(round_trip(msg)) == struct(msg)
    assert struct(round_trip(msg, "jabber:server")) == struct(msg)


def test_serialize_escaping() -> None:
    el = Element(C + "message", {"a": "&<>\"'", "ws": "t\tn\nr\r s"})
    el.text = "&<>\"' ]]> \r\n\t"
    out = serialize(el)
    assert b"&lt;" in out and b"&amp;" in out and b"&gt;" in out
    assert b"]]>" not in out
    assert struct(round_trip(el)) == struct(el)


def test_serialize_drops_illegal_characters() -> None:
    bad = "".join(chr(c) for c in range(0x20) if c not in (9, 10, 13))
    bad += "\ud800\udfff\ufffe\uffff"
    el = Element(C + "message", {"a": "x" + bad + "y"})
    el.text = "p" + bad + "q"
    SubElement(el, C + "body").tail = bad
    out = serialize(el)
    text = out.decode("utf-8")
    for ch in bad:
        assert ch not in text
    back = round_trip(el)
    assert back.attrib == {"a": "xy"}
    assert back.text == "pq"
    assert not back[0].tail


def test_serialize_keeps_astral_and_bmp_characters() -> None:
    el = Element(C + "message")
    el.text = "\U0001f600 \u00e9 \ud7ff \ue000 \ufffd \U0010ffff"
    assert round_trip(el).text == el.text


def test_serialize_stream_features() -> None:
    features = Element(S + "features")
    tls = SubElement(features, "{urn:ietf:params:xml:ns:xmpp-tls}starttls")
    SubElement(tls, "{urn:ietf:params:xml:ns:xmpp-tls}required")
    mechs = SubElement(features, "{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms")
    SubElement(mechs, "{urn:ietf:params:xml:ns:xmpp-sasl}mechanism").text = "PLAIN"
    out = serialize(features)
    assert out == (
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
        b"</starttls><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    )
    assert b"xmlns:stream" not in out
    assert struct(round_trip(features)) == struct(features)


def test_stream_error_bytes() -> None:
    assert stream_error("host-unknown") == (
        b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    )
    out = stream_error("policy-violation", "stanza <too> big & bad")
    events = feed_all(stream_header(from_="a", to="b", id_="c") + out + STREAM_CLOSE)
    (err,) = stanzas(events)
    assert err.tag == S + "error"
    assert err[0].tag == "{" + STREAMS_ERROR_NS + "}policy-violation"
    assert err[1].tag == "{" + STREAMS_ERROR_NS + "}text"
    assert err[1].text == "stanza <too> big & bad"
    assert err[1].attrib == {XML_LANG: "en"}


def test_serialize_skips_comments() -> None:
    el = Element(C + "message")
    c = Comment("secret")
    c.tail = "after"
    el.append(c)
    assert serialize(el) == b"<message>after</message>"


@pytest.mark.parametrize(
    "el",
    [
        Element(C + "bad name"),
        Element(C + "a>b"),
        Element("1abc"),
        Element(C + "m", {"x y": "1"}),
        Element(C + "m", {"xmlns": "urn:evil"}),
        Element(C + "m", {"xmlns:p": "urn:evil"}),
        Element(C + "m", {"{http://www.w3.org/2000/xmlns/}p": "urn:evil"}),
        Element(C + "m", {"a'b": "1"}),
        Element("{http://www.w3.org/2000/xmlns/}m"),
    ],
)
def test_serialize_refuses_invalid_names(el: Element) -> None:
    with pytest.raises(ValueError):
        serialize(el)


def test_serialize_xml_namespace_element() -> None:
    el = parse_one(b"<message><xml:odd xml:lang='en'/></message>")
    assert el[0].tag == "{http://www.w3.org/XML/1998/namespace}odd"
    assert serialize(el) == b"<message><xml:odd xml:lang='en'/></message>"
    assert struct(round_trip(el)) == struct(el)


def test_serialize_qname_tags_and_keys() -> None:
    el = Element(QName("urn:q", "item"), {QName("urn:a", "k"): "v"})
    assert struct(round_trip(el)) == ("{urn:q}item", {"{urn:a}k": "v"}, "", [])


def test_serialize_refuses_duplicate_output_attributes() -> None:
    with pytest.raises(ValueError):
        serialize(Element(C + "m", {"a": "1", "{}a": "2"}))


def test_serialize_plain_xml_lang_attribute() -> None:
    el = Element(C + "m", {"xml:lang": "en"})
    assert serialize(el) == b"<m xml:lang='en'/>"
    assert round_trip(el).attrib == {XML_LANG: "en"}
    with pytest.raises(ValueError):
        serialize(Element(C + "m", {"xml:lang": "en", XML_LANG: "de"}))


def test_serialize_parsed_stanzas_round_trip() -> None:
    for el in stanzas(feed_all(STREAM)):
        assert struct(round_trip(el)) == struct(el)


# -- fuzzing -----------------------------------------------------------------

_FRAGMENTS = [
    b"<",
    b">",
    b"/>",
    b"</",
    b"&",
    b";",
    b"'",
    b'"',
    b"=",
    b"&amp;",
    b"&#0;",
    b"&#x10FFFF;",
    b"&lol;",
    b"<!--",
    b"-->",
    b"<?",
    b"?>",
    b"<?xml version='1.0'?>",
    b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
    b"<![CDATA[",
    b"]]>",
    b"xmlns='urn:x'",
    b"xmlns:p='urn:p'",
    b"p:",
    b"xml:lang='en'",
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\r",
    b"\xef\xbb\xbf",
    b"</stream:stream>",
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
    b"<a>" * 70,
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(_FRAGMENTS)
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 20)]
        elif op == 3:
            end = min(len(buf), pos + rng.randint(1, 60))
            buf[pos:pos] = buf[pos:end]
        elif op == 4:
            del buf[pos:]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


def test_fuzz_only_events_or_stream_errors() -> None:
    rng = random.Random(20240611)
    corpus = [STREAM, BILLION_LAUGHS, HEADER + STANZAS[3] + STANZAS[9], HEADER + b" " * 10]
    limits_choices = [
        Limits(),
        Limits(max_stanza_bytes=200, max_depth=4, max_attributes=3, max_open_tag_bytes=300),
    ]
    kinds = (StreamOpen, StanzaEvent, StreamClose)
    for _ in range(1500):
        data = _mutate(rng, rng.choice(corpus))
        parser = XMLStreamParser(rng.choice(limits_choices))
        pos = 0
        try:
            while pos < len(data):
                step = rng.choice((1, 2, 3, 7, 64, 4096))
                for ev in parser.feed(data[pos : pos + step]):
                    assert isinstance(ev, kinds)
                    if isinstance(ev, StanzaEvent) and rng.random() < 0.3:
                        serialize(ev.element)
                pos += step
                if rng.random() < 0.01:
                    parser.reset()
        except StreamError as exc:
            assert isinstance(exc.condition, str) and exc.condition


class TestCompact:
    """An idle stream lets go of its expat parser and continues in a new one."""

    HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>")

    def test_continues_after_compaction(self) -> None:
        p = XMLStreamParser()
        p.feed(self.HEADER)
        first = p.feed(b"<message to='a@b'><body>one</body></message>")
        assert len(first) == 1
        assert p.compact()
        assert not p.compact()  # nothing left to release
        events = p.feed(b" <message to='a@b'><body>two</body></message><presence/>")
        assert [type(e).__name__ for e in events] == ["StanzaEvent", "StanzaEvent"]
        assert events[0].element.findtext("{jabber:client}body") == "two"
        assert events[0].element.tag == "{jabber:client}message"

    def test_not_in_the_middle_of_a_stanza(self) -> None:
        p = XMLStreamParser()
        p.feed(self.HEADER)
        p.feed(b"<message to='a@b'><bo")
        assert not p.compact()
        events = p.feed(b"dy>x</body></message>")
        assert events[0].element.findtext("{jabber:client}body") == "x"

    def test_limits_still_apply_after_compaction(self) -> None:
        p = XMLStreamParser(Limits(max_stanza_bytes=1024))
        p.feed(self.HEADER + b"<presence/>")
        assert p.compact()
        with pytest.raises(StreamError) as err:
            p.feed(b"<message><body>" + b"x" * 4096 + b"</body></message>")
        assert err.value.condition == "policy-violation"
        with pytest.raises(StreamError):
            p.feed(b"<presence/>")

    def test_end_of_stream_after_compaction(self) -> None:
        p = XMLStreamParser()
        p.feed(self.HEADER + b"<presence/>")
        assert p.compact()
        assert [type(e).__name__ for e in p.feed(b"</stream:stream>")] == ["StreamClose"]
