"""Tests for XMPP address parsing (RFC 7622) and XEP-0106 escaping."""

from __future__ import annotations

import dataclasses
import random

import pytest

from parley.xmpp.jid import JID, InvalidJID, escape_node, unescape_node

# RFC 7622 section 3.5 examples, with the canonical form we expect.
RFC_VALID = [
    ("juliet@example.com", ("juliet", "example.com", None)),
    ("juliet@example.com/foo", ("juliet", "example.com", "foo")),
    ("juliet@example.com/foo bar", ("juliet", "example.com", "foo bar")),
    ("juliet@example.com/foo@bar", ("juliet", "example.com", "foo@bar")),
    ("foo\\20bar@example.com", ("foo\\20bar", "example.com", None)),
    ("fussball@example.com", ("fussball", "example.com", None)),
    ("fu\u00dfball@example.com", ("fu\u00dfball", "example.com", None)),
    ("\u03c0@example.com", ("\u03c0", "example.com", None)),
    ("\u03a3@example.com/foo", ("\u03c3", "example.com", "foo")),
    ("\u03c3@example.com/foo", ("\u03c3", "example.com", "foo")),
    ("\u03c2@example.com/foo", ("\u03c2", "example.com", "foo")),
    ("king@example.com/\u265a", ("king", "example.com", "\u265a")),
    ("example.com", (None, "example.com", None)),
    ("example.com/foobar", (None, "example.com", "foobar")),
    ("a.example.com/b@example.net", (None, "a.example.com", "b@example.net")),
]

RFC_INVALID = [
    "juliet@@example.com",  # doubled "@"
    "foo bar@example.com",  # space in the localpart
    "henry\u2163@example.com",  # ROMAN NUMERAL FOUR is a compatibility character
    "\u265a@example.com",  # symbols are not allowed in the localpart
    "juliet@",  # no domainpart
    "/foobar",  # no domainpart
]


def parts(jid: JID) -> tuple[str | None, str, str | None]:
    return (jid.local, jid.domain, jid.resource)


class TestRFCExamples:
    @pytest.mark.parametrize(("text", "expected"), RFC_VALID)
    def test_valid(self, text: str, expected: tuple[str | None, str, str | None]) -> None:
        assert parts(JID.parse(text)) == expected

    @pytest.mark.parametrize("text", RFC_INVALID)
    def test_invalid(self, text: str) -> None:
        with pytest.raises(InvalidJID):
            JID.parse(text)

    @pytest.mark.parametrize(("text", "expected"), RFC_VALID)
    def test_canonical_form_is_a_fixed_point(
        self, text: str, expected: tuple[str | None, str, str | None]
    ) -> None:
        jid = JID.parse(text)
        assert JID.parse(str(jid)) == jid
        assert JID.make(*expected) == jid


class TestStructure:
    def test_resource_may_contain_slash_and_at(self) -> None:
        assert parts(JID.parse("a@b/c/d@e")) == ("a", "b", "c/d@e")

    def test_first_at_ends_localpart(self) -> None:
        with pytest.raises(InvalidJID, match="domainpart"):
            JID.parse("a@b@c")

    def test_at_after_slash_belongs_to_resource(self) -> None:
        assert parts(JID.parse("b/a@c")) == (None, "b", "a@c")

    @pytest.mark.parametrize(
        ("text", "part"),
        [
            ("@example.com", "localpart"),
            ("u@", "domainpart"),
            ("example.com/", "resourcepart"),
            ("u@/r", "domainpart"),
            ("", "domainpart"),
            ("@", "localpart"),
            ("/", "domainpart"),
        ],
    )
    def test_empty_parts(self, text: str, part: str) -> None:
        with pytest.raises(InvalidJID, match=f"{part} is empty"):
            JID.parse(text)

    def test_str(self) -> None:
        assert str(JID("u", "d", "r")) == "u@d/r"
        assert str(JID("u", "d", None)) == "u@d"
        assert str(JID(None, "d", "r")) == "d/r"
        assert str(JID(None, "d", None)) == "d"

    def test_bare_and_with_resource(self) -> None:
        full = JID.parse("Juliet@Example.com/Balcony")
        assert not full.is_bare
        assert full.bare == JID.parse("juliet@example.com")
        assert full.bare.is_bare
        bare = full.bare
        assert bare.bare is bare
        other = full.with_resource("Chamber")
        assert other == JID("juliet", "example.com", "Chamber")
        assert other.bare == full.bare
        with pytest.raises(InvalidJID):
            full.with_resource("")
        with pytest.raises(InvalidJID):
            full.with_resource("\u0007bell")

    def test_frozen_and_hashable(self) -> None:
        jid = JID.parse("a@b/c")
        with pytest.raises(dataclasses.FrozenInstanceError):
            jid.local = "x"  # type: ignore[misc]
        assert {jid: 1}[JID.parse("A@B/c")] == 1
        assert not hasattr(jid, "__dict__")

    def test_parse_is_cached(self) -> None:
        assert JID.parse("cache@example.com/r") is JID.parse("cache@example.com/r")

    def test_invalid_jid_is_value_error_with_reason(self) -> None:
        with pytest.raises(ValueError, match="U\\+0020"):
            JID.parse("foo bar@example.com")


class TestMake:
    def test_normalises_each_part(self) -> None:
        assert JID.make("ROMEO", "Example.COM.", "Orchard") == JID(
            "romeo", "example.com", "Orchard"
        )

    def test_optional_parts(self) -> None:
        assert JID.make(None, "example.com") == JID(None, "example.com", None)

    @pytest.mark.parametrize(
        ("local", "domain", "resource"),
        [
            ("", "example.com", None),
            ("u", "", None),
            ("u", "example.com", ""),
            ("a@b", "example.com", None),
            ("u", "exa mple.com", None),
        ],
    )
    def test_rejects(self, local: str | None, domain: str, resource: str | None) -> None:
        with pytest.raises(InvalidJID):
            JID.make(local, domain, resource)


class TestLocalpart:
    def test_case_mapping(self) -> None:
        assert JID.parse("JuLiEt@example.com").local == "juliet"
        assert JID.parse("\u00c6\u00c5@example.com").local == "\u00e6\u00e5"

    def test_final_sigma_is_kept(self) -> None:
        # Unicode lower-casing, not case folding: final sigma stays distinct.
        assert JID.parse("\u03c2@x").local != JID.parse("\u03c3@x").local

    def test_width_mapping(self) -> None:
        assert JID.parse("\uff2a\uff55\uff4c\uff49\uff45\uff54@example.com").local == "juliet"

    def test_nfc(self) -> None:
        assert JID.parse("e\u0301@example.com").local == "\u00e9"

    @pytest.mark.parametrize("char", list("\"&'/:<>@"))
    def test_rfc7622_exclusions(self, char: str) -> None:
        with pytest.raises(InvalidJID, match="forbidden"):
            JID.make(f"a{char}b", "example.com")

    def test_fullwidth_at_sign_is_still_forbidden(self) -> None:
        with pytest.raises(InvalidJID, match="forbidden"):
            JID.make("a\uff20b", "example.com")

    @pytest.mark.parametrize("local", ["a\tb", "a\u00a0b", "\u2163", "a\u0000", "a\u200bb"])
    def test_disallowed(self, local: str) -> None:
        with pytest.raises(InvalidJID, match="localpart"):
            JID.make(local, "example.com")

    def test_backslash_allowed(self) -> None:
        assert JID.parse("c\\3a\\net@example.com").local == "c\\3a\\net"

    def test_length_limit(self) -> None:
        assert JID.make("a" * 1023, "example.com").local == "a" * 1023
        with pytest.raises(InvalidJID, match="1023 bytes"):
            JID.make("a" * 1024, "example.com")
        # The limit is in UTF-8 octets, not characters.
        assert JID.make("\u00e9" * 511, "example.com").local == "\u00e9" * 511
        with pytest.raises(InvalidJID, match="1023 bytes"):
            JID.make("\u00e9" * 512, "example.com")

    def test_huge_input_rejected(self) -> None:
        with pytest.raises(InvalidJID, match="1023 bytes"):
            JID.parse("a" * 1_000_000 + "@example.com")


class TestResourcepart:
    def test_case_preserved(self) -> None:
        assert JID.parse("a@b/Balcony").resource == "Balcony"

    def test_spaces_and_symbols(self) -> None:
        assert JID.parse("a@b/ a b ").resource == " a b "
        assert JID.parse("a@b/\u265a\u265b").resource == "\u265a\u265b"

    def test_non_ascii_spaces_mapped(self) -> None:
        assert JID.parse("a@b/x\u00a0y").resource == "x y"

    def test_nfc(self) -> None:
        assert JID.parse("a@b/e\u0301").resource == "\u00e9"

    @pytest.mark.parametrize("resource", ["\u0000", "a\u0007", "\u200b"])
    def test_disallowed(self, resource: str) -> None:
        with pytest.raises(InvalidJID, match="resourcepart"):
            JID.make("a", "b", resource)

    def test_length_limit(self) -> None:
        assert JID.make(None, "b", "r" * 1023).resource == "r" * 1023
        with pytest.raises(InvalidJID, match="1023 bytes"):
            JID.make(None, "b", "r" * 1024)
        with pytest.raises(InvalidJID, match="1023 bytes"):
            JID.make(None, "b", "\u265a" * 342)


class TestDomainpart:
    def test_lower_case_and_trailing_dot(self) -> None:
        assert JID.parse("ExAmPlE.CoM.").domain == "example.com"

    def test_only_one_trailing_dot_stripped(self) -> None:
        with pytest.raises(InvalidJID, match="empty label"):
            JID.parse("example.com..")

    @pytest.mark.parametrize("text", [".", "u@.", "a@./r"])
    def test_only_dot(self, text: str) -> None:
        with pytest.raises(InvalidJID, match="domainpart is empty"):
            JID.parse(text)

    def test_unqualified_host_name(self) -> None:
        assert JID.parse("user@localhost").domain == "localhost"

    def test_unicode_domain(self) -> None:
        assert JID.parse("user@B\u00fccher.Example").domain == "b\u00fccher.example"
        assert (
            JID.parse("user@\u4f8b\u3048.\u30c6\u30b9\u30c8").domain
            == "\u4f8b\u3048.\u30c6\u30b9\u30c8"
        )

    def test_a_labels_become_u_labels(self) -> None:
        assert JID.parse("xn--bcher-kva.example") == JID.parse("b\u00fccher.example")
        assert JID.parse("XN--BCHER-KVA.example").domain == "b\u00fccher.example"
        # IDNA2008 keeps sharp s rather than mapping it to "ss".
        assert JID.parse("xn--fuball-cta.example").domain == "fu\u00dfball.example"

    def test_ideographic_full_stop_separates_labels(self) -> None:
        assert JID.parse("b\u00fccher\u3002example").domain == "b\u00fccher.example"

    def test_fullwidth_domain(self) -> None:
        assert JID.parse(
            "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d"
        ).domain == ("example.com")

    @pytest.mark.parametrize(
        "domain",
        [
            "exa mple.com",
            "exa_mple.com",
            "-example.com",
            "example-.com",
            "a..b",
            ".example.com",
            "ab--cd.example",  # reserved R-LDH label that is not an A-label
            "xn--zz.example",  # not valid punycode
            "xn--abc-.example",
            "xn--example-.com",  # decodes to an ASCII-only label
            "\u265a.example",  # symbol
            "\u0301a.example",  # leading combining mark
            "-\u00fc.example",
            "a\u00fc!.example",
            "exa\u0000mple.com",
            "example.123",  # a numeric TLD is not a host name
        ],
    )
    def test_invalid(self, domain: str) -> None:
        with pytest.raises(InvalidJID, match="domainpart"):
            JID.make(None, domain)

    @pytest.mark.parametrize(
        "ulabel",
        ["bu\u0308cher", "b\u00dccher"],  # not NFC; upper case
    )
    def test_non_canonical_a_label_rejected(self, ulabel: str) -> None:
        # Only the encoding of an already-mapped U-label is accepted, so that
        # no second spelling of a domain can get past normalisation.
        alabel = "xn--" + ulabel.encode("punycode").decode("ascii")
        with pytest.raises(InvalidJID, match="A-label"):
            JID.make(None, alabel + ".example")

    def test_label_length(self) -> None:
        label = "a" * 63
        assert JID.make(None, f"{label}.example").domain == f"{label}.example"
        with pytest.raises(InvalidJID, match="63 bytes"):
            JID.make(None, "a" * 64 + ".example")

    def test_u_label_length_counts_a_label(self) -> None:
        # 20 non-ASCII characters encode to an A-label longer than 63 octets.
        with pytest.raises(InvalidJID, match="63 bytes"):
            JID.make(None, "\u00fc\u00e4\u00f6" * 20 + ".example")
        assert JID.make(None, "b\u00fccher.example").domain == "b\u00fccher.example"

    def test_total_length(self) -> None:
        name = ".".join(["a" * 63] * 16)  # 16 * 64 - 1 = 1023 octets
        assert len(name) == 1023
        assert JID.make(None, name).domain == name
        with pytest.raises(InvalidJID, match="1023 bytes"):
            JID.make(None, name + ".a")


class TestIPLiterals:
    def test_ipv4(self) -> None:
        assert parts(JID.parse("user@192.0.2.1/r")) == ("user", "192.0.2.1", "r")

    def test_ipv4_trailing_dot(self) -> None:
        assert JID.parse("192.0.2.1.").domain == "192.0.2.1"

    @pytest.mark.parametrize("domain", ["192.0.2.256", "192.0.2", "1.2.3.4.5", "01.2.3.4"])
    def test_bad_ipv4(self, domain: str) -> None:
        with pytest.raises(InvalidJID, match="IPv4"):
            JID.make(None, domain)

    def test_ipv6(self) -> None:
        assert parts(JID.parse("user@[2001:db8::1]/r")) == ("user", "[2001:db8::1]", "r")

    def test_ipv6_canonicalised(self) -> None:
        assert JID.parse("[2001:DB8:0:0:0:0:0:1]").domain == "[2001:db8::1]"
        assert JID.parse("[::FFFF:192.0.2.1]") == JID.parse("[::ffff:c000:201]")

    @pytest.mark.parametrize(
        "domain",
        ["[2001:db8::1", "[2001:db8::g]", "[]", "[192.0.2.1]", "[fe80::1%eth0]", "2001:db8::1"],
    )
    def test_bad_ipv6(self, domain: str) -> None:
        with pytest.raises(InvalidJID, match="domainpart"):
            JID.make(None, domain)


# XEP-0106 section 5.1, localparts only.  Examples 9 to 11 in the XEP escape
# every backslash, which contradicts its own section 4.3 ("foo\bar is not
# modified"); we follow the rules, and check below that the XEP's spelling
# still unescapes to the same string.
XEP_EXAMPLES = [
    ("space cadet", "space\\20cadet"),
    ('call me "ishmael"', "call\\20me\\20\\22ishmael\\22"),
    ("at&t guy", "at\\26t\\20guy"),
    ("d'artagnan", "d\\27artagnan"),
    ("/.fanboy", "\\2f.fanboy"),
    ("::foo::", "\\3a\\3afoo\\3a\\3a"),
    ("<foo>", "\\3cfoo\\3e"),
    ("user@host", "user\\40host"),
    ("c:\\net", "c\\3a\\net"),
    ("c:\\\\net", "c\\3a\\\\net"),
    ("c:\\cool stuff", "c\\3a\\cool\\20stuff"),
    ("c:\\5commas", "c\\3a\\5c5commas"),
]


class TestEscaping:
    @pytest.mark.parametrize(("raw", "escaped"), XEP_EXAMPLES)
    def test_xep_examples(self, raw: str, escaped: str) -> None:
        assert escape_node(raw) == escaped
        assert unescape_node(escaped) == raw

    @pytest.mark.parametrize(("raw", "escaped"), XEP_EXAMPLES)
    def test_escaped_forms_are_valid_localparts(self, raw: str, escaped: str) -> None:
        jid = JID.make(escape_node(raw), "example.com")
        assert unescape_node(jid.local or "") == raw

    @pytest.mark.parametrize(
        ("xep_form", "raw"),
        [
            ("c\\3a\\5cnet", "c:\\net"),
            ("c\\3a\\5c\\5cnet", "c:\\\\net"),
            ("c\\3a\\5ccool\\20stuff", "c:\\cool stuff"),
        ],
    )
    def test_fully_escaped_backslashes_unescape(self, xep_form: str, raw: str) -> None:
        assert unescape_node(xep_form) == raw

    @pytest.mark.parametrize("text", ["\\2plus\\2is\\4", "foo\\bar", "foob\\41r"])
    def test_partial_and_foreign_sequences_untouched(self, text: str) -> None:
        assert escape_node(text) == text
        assert unescape_node(text) == text

    def test_wireless_village_example(self) -> None:
        assert escape_node("\\3and\\2is\\5cool") == "\\5c3and\\2is\\5c5cool"
        assert unescape_node("\\5c3and\\2is\\5c5cool") == "\\3and\\2is\\5cool"

    def test_existing_escape_sequences_are_protected(self) -> None:
        assert escape_node("\\27") == "\\5c27"
        assert escape_node("\\5c") == "\\5c5c"
        assert unescape_node("\\5c27") == "\\27"

    def test_case_is_significant(self) -> None:
        assert unescape_node("a\\2Fb") == "a\\2Fb"
        assert escape_node("a\\2Fb") == "a\\2Fb"

    def test_sequential_unescaping(self) -> None:
        # After "\5c" produces a backslash, scanning resumes past it.
        assert unescape_node("\\5c5c") == "\\5c"
        assert unescape_node("\\\\20") == "\\ "

    @pytest.mark.parametrize("text", [" cadet", "cadet ", " "])
    def test_leading_or_trailing_space_rejected(self, text: str) -> None:
        with pytest.raises(InvalidJID):
            escape_node(text)

    def test_output_has_no_forbidden_characters(self) -> None:
        escaped = escape_node("a \"&'/:<>@b")
        assert not set(escaped) & set(" \"&'/:<>@")

    def test_empty(self) -> None:
        assert escape_node("") == ""
        assert unescape_node("") == ""

    def test_non_ascii_untouched(self) -> None:
        assert escape_node("tr\u00e9ville@musketeers.lit") == "tr\u00e9ville\\40musketeers.lit"

    def test_random_round_trips(self) -> None:
        rng = random.Random(106)
        alphabet = "\\25c7af034 \"&'/:<>@x"
        for _ in range(5000):
            raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            if raw.startswith(" ") or raw.endswith(" "):
                continue
            escaped = escape_node(raw)
            assert unescape_node(escaped) == raw, raw
            assert not set(escaped) & set(" \"&'/:<>@"), raw
