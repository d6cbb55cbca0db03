"""Sans-IO XML stream parsing and stanza serialisation (RFC 6120 sections 4 and 11).

The parser turns raw bytes from a peer into stream events.  It sits on the hot
path of every connection and faces hostile input, so it leans on the C expat
parser and the C ElementTree builder for the per-byte work and only keeps
integer bookkeeping in Python.  RFC 6120 section 11.1 restricts XMPP to a
subset of XML: no DTDs, entity declarations, comments or processing
instructions.  All of those are refused rather than skipped, which also
shuts the door on entity-expansion attacks before expat could expand anything.

Byte positions are offsets into the input of the current expat parser, the
same as expat's ``CurrentByteIndex``, so stanza sizes can be measured exactly
without scanning the bytes in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NoReturn
from xml.etree.ElementTree import (
    Comment,
    Element,
    ProcessingInstruction,
    QName,
    SubElement,
    TreeBuilder,
)
from xml.parsers import expat

__all__ = [
    "DEFAULT_LIMITS",
    "STREAM_CLOSE",
    "STREAM_NS",
    "STREAMS_ERROR_NS",
    "XML_LANG",
    "XML_NS",
    "Event",
    "Limits",
    "StanzaEvent",
    "StreamClose",
    "StreamError",
    "StreamOpen",
    "XMLStreamParser",
    "serialize",
    "stream_error",
    "stream_header",
]

STREAM_NS: Final = "http://etherx.jabber.org/streams"
STREAMS_ERROR_NS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
XML_NS: Final = "http://www.w3.org/XML/1998/namespace"
XML_LANG: Final = "{" + XML_NS + "}lang"
_XMLNS_NS: Final = "http://www.w3.org/2000/xmlns/"
_STREAM_TAG: Final = "{" + STREAM_NS + "}stream"

STREAM_CLOSE: Final[bytes] = b"</stream:stream>"


class StreamError(Exception):
    """A condition that ends the stream; ``condition`` is an RFC 6120 4.9.3 name."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text

    def __repr__(self) -> str:
        return f"StreamError({self.condition!r}, {self.text!r})"


@dataclass(frozen=True)
class Limits:
    """Resource ceilings for one stream; exceeding any is a policy-violation."""

    max_stanza_bytes: int = 262144
    max_depth: int = 64
    max_attributes: int = 64
    max_open_tag_bytes: int = 16384

    def __post_init__(self) -> None:
        for name in ("max_stanza_bytes", "max_depth", "max_attributes", "max_open_tag_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


DEFAULT_LIMITS: Final = Limits()


@dataclass
class StreamOpen:
    """The peer's stream header.

    ``attrs`` uses plain keys for unqualified attributes and Clark notation for
    qualified ones, so xml:lang is ``XML_LANG``.  ``default_ns`` is the default
    namespace declared on the header, or "" when the header declares none.
    """

    attrs: dict[str, str]
    default_ns: str = ""


@dataclass
class StreamClose:
    """The peer sent ``</stream:stream>``."""


@dataclass
class StanzaEvent:
    """A complete first-level child of the stream, tags in Clark notation."""

    element: Element


Event = StreamOpen | StanzaEvent | StreamClose

# Expat joins namespace and local name with this; "}" lets a single "{" prefix
# produce Clark notation, and expat itself rejects namespace names containing it.
_SEP: Final = "}"
_XML_WS: Final = " \t\r\n"
_WS_BYTES: Final = b" \t\r\n"

# A complete start tag: quoted attribute values may contain '>' and '/'.
_START_TAG_RE: Final = re.compile(rb"""<[^'">]*(?:(?:'[^']*'|"[^"]*")[^'">]*)*>""")

# Feeding huge buffers in slices bounds how far past a limit expat can run, and
# therefore how much tree it can build, before the checks between slices fire.
_MAX_SLICE: Final = 65536
_MIN_SLICE: Final = 4096
# Thresholds for moving a stream to a fresh expat parser (see _rotate): the
# distinct names seen, or the input parsed, since the last move.
_INTERN_MAX: Final = 4096
_ROTATE_BYTES: Final = 262144

_ERR = expat.errors


def _codes(*names: str) -> frozenset[int]:
    # Some codes only exist with newer expat builds.
    return frozenset(_ERR.codes[getattr(_ERR, n)] for n in names if hasattr(_ERR, n))


_RESTRICTED_CODES: Final = _codes(
    "XML_ERROR_UNDEFINED_ENTITY",
    "XML_ERROR_RECURSIVE_ENTITY_REF",
    "XML_ERROR_BINARY_ENTITY_REF",
    "XML_ERROR_ATTRIBUTE_EXTERNAL_ENTITY_REF",
    "XML_ERROR_EXTERNAL_ENTITY_HANDLING",
    "XML_ERROR_PARAM_ENTITY_REF",
    "XML_ERROR_ENTITY_DECLARED_IN_PE",
    "XML_ERROR_NOT_STANDALONE",
    "XML_ERROR_ASYNC_ENTITY",
    "XML_ERROR_AMPLIFICATION_LIMIT_BREACH",
)
_ENCODING_CODES: Final = _codes("XML_ERROR_UNKNOWN_ENCODING", "XML_ERROR_INCORRECT_ENCODING")
_PREFIX_CODES: Final = _codes("XML_ERROR_UNBOUND_PREFIX")


def _from_expat(exc: expat.ExpatError) -> StreamError:
    code = exc.code
    if code in _RESTRICTED_CODES:
        return StreamError("restricted-xml", str(exc))
    if code in _ENCODING_CODES:
        return StreamError("unsupported-encoding", str(exc))
    if code in _PREFIX_CODES:
        return StreamError("bad-namespace-prefix", str(exc))
    return StreamError("not-well-formed", str(exc))


class _Closed(Exception):
    """Unwinds expat once the stream's closing tag has been parsed."""


class _Rotate(Exception):
    """Unwinds expat after a stanza so the stream moves to a fresh parser."""


def _refuse(what: str) -> StreamError:
    return StreamError("restricted-xml", f"{what} not allowed in XMPP")


class XMLStreamParser:
    """Incremental parser for one direction of an XMPP stream.

    ``feed`` returns the events completed by the given bytes.  Any StreamError
    is final: the same condition is raised again on every later ``feed`` until
    ``reset``.  After StreamClose further input is ignored.
    """

    __slots__ = (
        "limits",
        "_max_stanza",
        "_max_depth",
        "_max_attrs",
        "_max_tag",
        "_slice",
        "_p",
        "_error",
        "_events",
        "_fed",
        "_chunk",
        "_chunk_base",
        "_carry",
        "_carry_base",
        "_depth",
        "_stanza_start",
        "_stanza_empty",
        "_tag_at",
        "_tb",
        "_default_ns",
        "_closed",
        "_intern",
        "_header",
        "_replaying",
        "_rotated_at",
        "_resume_at",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        # Copied into slots because the handlers read them for every element.
        self._max_stanza = limits.max_stanza_bytes
        self._max_depth = limits.max_depth
        self._max_attrs = limits.max_attributes
        self._max_tag = limits.max_open_tag_bytes
        self._slice = max(_MIN_SLICE, min(_MAX_SLICE, limits.max_stanza_bytes))
        self._error: StreamError | None = None
        self._start_stream()

    def reset(self) -> None:
        """Expect a brand-new stream header (after STARTTLS or SASL success)."""
        self._error = None
        self._start_stream()

    @property
    def stanza_bytes(self) -> int:
        """Bytes received so far of the stanza being parsed, 0 between stanzas."""
        start = self._stanza_start
        return self._fed - start if start >= 0 else 0

    def feed(self, data: bytes) -> list[Event]:
        if self._error is not None:
            # A fresh instance each time keeps tracebacks from piling up.
            raise StreamError(self._error.condition, self._error.text)
        if self._closed or not data:
            return []
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._fed < 4:
            if self._fed == 0:
                # Tolerate whitespace keepalives straddling a stream restart;
                # the XML declaration would otherwise be rejected as misplaced.
                data = data.lstrip(_WS_BYTES)
                if not data:
                    return []
            # Expat sniffs UTF-16 from a byte order mark or from NUL bytes in
            # the first few bytes even when told the input is UTF-8.
            if (self._fed == 0 and data[0] in (0xFE, 0xFF)) or 0 in data[: 4 - self._fed]:
                self._fail(StreamError("unsupported-encoding", "only UTF-8 is supported"))
        events: list[Event] = []
        self._events = events
        try:
            if self._p is None:
                self._rotate()
            step = self._slice
            if len(data) <= step:
                self._parse(data)
            else:
                for off in range(0, len(data), step):
                    self._parse(data[off : off + step])
        except _Closed:
            self._tb = TreeBuilder()
        except StreamError as exc:
            self._fail(exc)
        except expat.ExpatError as exc:
            self._fail(_from_expat(exc))
        return events

    def compact(self) -> bool:
        """Let go of the expat parser of a stream that sits between stanzas.

        An idle connection then holds no parser memory; the next feed continues the
        stream in a fresh parser, as _rotate does. Only done when the last bytes fed
        ended a stanza, so expat holds no unfinished token that would be lost."""
        if (
            self._p is None
            or self._header is None
            or self._depth != 1
            or self._closed
            or self._error is not None
            or self._carry
            or not self._chunk.rstrip(_WS_BYTES).endswith(b">")
        ):
            return False
        self._p = None
        self._intern = {}
        self._tb = TreeBuilder()
        return True

    # -- internals ---------------------------------------------------------

    def _start_stream(self) -> None:
        # Expat parsers cannot be rewound, so every stream gets a new one.
        self._new_expat()
        self._events: list[Event] = []
        self._fed = 0
        self._chunk = b""
        self._chunk_base = 0
        # Bytes of an unfinished token (or unverified start tag) from earlier
        # feeds, so a tag split across feeds can still be measured.
        self._carry = bytearray()
        self._carry_base = 0
        self._depth = 0
        self._stanza_start = -1
        self._stanza_empty = False
        # Start of the latest nested start tag whose size is not yet bounded.
        self._tag_at = -1
        self._tb = TreeBuilder()
        self._default_ns = ""
        self._closed = False
        # The raw stream header, replayed into a fresh expat parser to
        # continue the same stream (see _rotate).
        self._header: bytes | None = None
        self._replaying = False
        self._rotated_at = 0
        self._resume_at = 0

    def _new_expat(self) -> None:
        self._intern: dict[str, str] = {}
        p = expat.ParserCreate(encoding="UTF-8", namespace_separator=_SEP, intern=self._intern)
        p.buffer_text = True
        p.ordered_attributes = False
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        disable_deferral = getattr(p, "SetReparseDeferralEnabled", None)
        if disable_deferral is not None:
            # Deferral could hold back a complete stanza until more bytes
            # arrive; the open-tag limit bounds the re-parse cost instead.
            disable_deferral(False)
        p.StartElementHandler = self._on_start
        p.EndElementHandler = self._on_end
        p.CharacterDataHandler = self._on_text
        p.StartNamespaceDeclHandler = self._on_namespace
        p.XmlDeclHandler = self._on_xml_decl
        p.StartDoctypeDeclHandler = self._on_doctype
        p.EntityDeclHandler = self._on_entity_decl
        p.UnparsedEntityDeclHandler = self._on_unparsed_entity_decl
        p.NotationDeclHandler = self._on_notation_decl
        p.ElementDeclHandler = self._on_element_decl
        p.AttlistDeclHandler = self._on_attlist_decl
        p.ExternalEntityRefHandler = self._on_external_entity
        p.SkippedEntityHandler = self._on_skipped_entity
        p.CommentHandler = self._on_comment
        p.ProcessingInstructionHandler = self._on_pi
        self._p = p

    def _fail(self, exc: StreamError) -> NoReturn:
        self._error = exc
        self._tb = TreeBuilder()
        self._carry = bytearray()
        raise exc

    def _rotate(self) -> None:
        """Continue the stream in a new expat parser.

        Expat remembers every distinct element name, attribute name and
        namespace prefix for the parser's lifetime, so a long stream of
        ever-new names would grow without bound.  Between stanzas the only
        context a stanza depends on is the stream header's namespace
        declarations, which replaying the raw header restores.  Byte
        positions restart in the new parser's coordinates.
        """
        header = self._header
        assert header is not None
        self._new_expat()
        self._depth = 0
        self._replaying = True
        try:
            self._p.Parse(header, False)
        finally:
            self._replaying = False
        n = len(header)
        self._fed = n
        self._chunk = b""
        self._chunk_base = n
        self._carry.clear()
        self._carry_base = n
        self._rotated_at = n

    def _parse(self, chunk: bytes) -> None:
        while True:
            base = self._fed
            fed = base + len(chunk)
            self._chunk = chunk
            self._chunk_base = base
            self._fed = fed
            p = self._p
            try:
                p.Parse(chunk, False)
            except _Rotate:
                # Expat stopped right after a stanza; the rest of the chunk is
                # parsed again by the replacement parser.
                chunk = chunk[self._resume_at - base :]
                self._rotate()
                if not chunk:
                    return
                continue
            break
        # After Parse, expat's index sits at the start of the token it could
        # not finish yet, so everything after it is buffered inside expat.
        pending = p.CurrentByteIndex
        if pending < 0:
            pending = fed
        if fed - pending > self._max_tag:
            raise StreamError(
                "policy-violation", f"unterminated markup exceeds {self._max_tag} bytes"
            )
        start = self._stanza_start
        if start >= 0 and fed - start > self._max_stanza:
            raise StreamError("policy-violation", f"stanza exceeds {self._max_stanza} bytes")
        tag_at = self._tag_at
        if tag_at >= 0 and fed - tag_at > self._max_tag:
            self._verify_tag(tag_at)
            tag_at = -1
        keep = pending if tag_at < 0 or tag_at > pending else tag_at
        carry = self._carry
        if keep >= fed:
            if carry:
                carry.clear()
        elif keep >= base:
            carry[:] = memoryview(chunk)[keep - base :]
        else:
            del carry[: keep - self._carry_base]
            carry += chunk
        self._carry_base = keep

    def _input_from(self, pos: int) -> tuple[bytes, int]:
        """A buffer and offset holding the input from ``pos`` onwards."""
        base = self._chunk_base
        if pos >= base:
            return self._chunk, pos - base
        skip = pos - self._carry_base
        if skip < 0:
            return b"", 0
        # Only ever needed for one tag, so the chunk's tail is not copied.
        return bytes(self._carry[skip:]) + self._chunk[: self._max_tag + 1], 0

    def _measure(self, pos: int) -> tuple[int, bool]:
        """Length of the complete start tag at ``pos`` and whether it is empty."""
        buf, off = self._input_from(pos)
        m = _START_TAG_RE.match(buf, off)
        if m is None:
            return -1, False
        end = m.end()
        length = end - off
        if length > self._max_tag:
            raise StreamError("policy-violation", f"start tag exceeds {self._max_tag} bytes")
        return length, buf[end - 2] == 0x2F  # '/'

    def _verify_tag(self, pos: int) -> None:
        self._measure(pos)
        self._tag_at = -1

    def _on_start(self, name: str, attrs: dict[str, str]) -> None:
        idx = self._p.CurrentByteIndex
        tag_at = self._tag_at
        if tag_at >= 0 and idx - tag_at > self._max_tag:
            self._verify_tag(tag_at)
        if _SEP in name:
            name = "{" + name
        if attrs:
            if len(attrs) > self._max_attrs:
                raise StreamError(
                    "policy-violation", f"more than {self._max_attrs} attributes on an element"
                )
            for key in attrs:
                if _SEP in key:
                    attrs = {("{" + k if _SEP in k else k): v for k, v in attrs.items()}
                    break
        depth = self._depth + 1
        self._depth = depth
        if depth > 2:
            if depth - 1 > self._max_depth:
                raise StreamError(
                    "policy-violation", f"stanza nested deeper than {self._max_depth} levels"
                )
            self._tag_at = idx
            self._tb.start(name, attrs)
        elif depth == 2:
            _, empty = self._measure(idx)
            self._stanza_start = idx
            self._stanza_empty = empty
            self._tag_at = -1
            tb = TreeBuilder()
            self._tb = tb
            tb.start(name, attrs)
        else:
            self._open_stream(idx, name, attrs)

    def _open_stream(self, idx: int, name: str, attrs: dict[str, str]) -> None:
        # Only the header's own declarations matter; skip the callback for
        # every namespace declared inside stanzas.
        self._p.StartNamespaceDeclHandler = None
        if self._replaying:
            return
        length, _ = self._measure(idx)
        if name != _STREAM_TAG:
            raise StreamError("invalid-namespace", f"expected {_STREAM_TAG}, got {name}")
        if length > 0:
            buf, off = self._input_from(idx)
            self._header = bytes(buf[off : off + length])
        self._events.append(StreamOpen(attrs=attrs, default_ns=self._default_ns))

    def _on_end(self, name: str) -> None:
        depth = self._depth
        self._depth = depth - 1
        tb = self._tb
        if depth > 2:
            tag_at = self._tag_at
            if tag_at >= 0:
                if self._p.CurrentByteIndex - tag_at > self._max_tag:
                    self._verify_tag(tag_at)
                self._tag_at = -1
            tb.end("{" + name if _SEP in name else name)
        elif depth == 2:
            idx = self._p.CurrentByteIndex
            base = self._chunk_base
            if self._stanza_empty:
                # For <x/> expat reports the end event after the whole tag.
                end = idx
            else:
                gt = self._chunk.find(b">", idx - base if idx > base else 0)
                # -1 (end unknown) also rules out moving to a new parser below.
                end = base + gt + 1 if gt >= 0 else -1
            if (end if end >= 0 else idx) - self._stanza_start > self._max_stanza:
                raise StreamError("policy-violation", f"stanza exceeds {self._max_stanza} bytes")
            tb.end("{" + name if _SEP in name else name)
            self._events.append(StanzaEvent(tb.close()))
            self._stanza_start = -1
            if (
                self._header is not None
                and end > base
                and (end - self._rotated_at > _ROTATE_BYTES or len(self._intern) > _INTERN_MAX)
            ):
                self._resume_at = end
                raise _Rotate
        else:
            self._events.append(StreamClose())
            self._closed = True
            raise _Closed

    def _on_text(self, data: str) -> None:
        if self._depth > 1:
            self._tb.data(data)
        elif data.strip(_XML_WS):
            raise StreamError("not-well-formed", "character data between stanzas")

    def _on_namespace(self, prefix: str | None, uri: str | None) -> None:
        if prefix is None and self._depth == 0:
            self._default_ns = uri or ""

    def _on_xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() != "utf-8":
            raise StreamError("unsupported-encoding", f"encoding {encoding!r} is not UTF-8")

    def _on_doctype(self, *_: object) -> None:
        raise _refuse("DOCTYPE")

    def _on_entity_decl(self, *_: object) -> None:
        raise _refuse("entity declaration")

    def _on_unparsed_entity_decl(self, *_: object) -> None:
        raise _refuse("entity declaration")

    def _on_notation_decl(self, *_: object) -> None:
        raise _refuse("notation declaration")

    def _on_element_decl(self, *_: object) -> None:
        raise _refuse("element declaration")

    def _on_attlist_decl(self, *_: object) -> None:
        raise _refuse("attribute list declaration")

    def _on_external_entity(self, *_: object) -> int:
        raise _refuse("external entity")

    def _on_skipped_entity(self, *_: object) -> None:
        raise _refuse("entity reference")

    def _on_comment(self, _: str) -> None:
        raise _refuse("comment")

    def _on_pi(self, _target: str, _data: str) -> None:
        raise _refuse("processing instruction")


# -- serialisation -----------------------------------------------------------

# Characters outside the XML 1.0 Char production.  Python strings cannot hold
# code points above U+10FFFF, so this is the complete complement.
_ILLEGAL_CLASS: Final = r"\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_ILLEGAL_RE: Final = re.compile(f"[{_ILLEGAL_CLASS}]")
_TEXT_SPECIAL_RE: Final = re.compile(f"[&<>\\r{_ILLEGAL_CLASS}]")
_ATTR_SPECIAL_RE: Final = re.compile(f"[&<>\"'\\t\\n\\r{_ILLEGAL_CLASS}]")

_NAME_START: Final = (
    r"A-Z_a-z\xc0-\xd6\xd8-\xf6\xf8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c\u200d"
    r"\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff"
)
_NCNAME_RE: Final = re.compile(
    f"[{_NAME_START}][{_NAME_START}\\-.0-9\\xb7\\u0300-\\u036f\\u203f-\\u2040]*"
)
# Element and attribute names repeat endlessly; remembering the valid ones
# skips the regex on the hot path.  Bounded because names may come from peers.
_known_names: set[str] = set()
_KNOWN_NAMES_MAX: Final = 4096


def _check_name(name: str) -> None:
    if name in _known_names:
        return
    if _NCNAME_RE.fullmatch(name) is None or name == "xmlns":
        raise ValueError(f"invalid XML name {name!r}")
    if len(_known_names) >= _KNOWN_NAMES_MAX:
        _known_names.clear()
    _known_names.add(name)


def _esc_text(s: str) -> str:
    if _TEXT_SPECIAL_RE.search(s) is None:
        return s
    s = _ILLEGAL_RE.sub("", s)
    # \r must be a reference or the receiver's line-end normalisation eats it.
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _esc_attr(s: str) -> str:
    if _ATTR_SPECIAL_RE.search(s) is None:
        return s
    s = _ILLEGAL_RE.sub("", s)
    # Whitespace characters become references so attribute-value
    # normalisation on the receiving side cannot turn them into spaces.
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def _split(name: str | QName) -> tuple[str | None, str]:
    if not isinstance(name, str):
        if not isinstance(name, QName):
            raise TypeError(f"cannot serialize name {name!r}")
        name = name.text
    if name[:1] == "{":
        # Local names cannot contain '}', so the last one ends the namespace.
        i = name.rfind("}")
        if i > 0:
            return name[1:i], name[i + 1 :]
    return None, name


def _write(el: Element, default_ns: str, prefixes: dict[str, str], out: list[str]) -> None:
    uri, local = _split(el.tag)
    _check_name(local)
    decls = ""
    if uri is None or uri == default_ns:
        # An unqualified tag inherits the namespace in scope; "{}name" is the
        # way to ask for no namespace at all.
        qname = local
    elif uri == STREAM_NS:
        qname = "stream:" + local
    elif uri == XML_NS:
        # The xml prefix is always bound and that namespace cannot be the default.
        qname = "xml:" + local
    else:
        if uri == _XMLNS_NS:
            raise ValueError(f"namespace {uri!r} cannot be the default namespace")
        qname = local
        default_ns = uri
        decls = " xmlns='" + _esc_attr(uri) + "'"
    out.append("<" + qname + decls)
    attrib = el.attrib
    if attrib:
        own = False
        for key, value in attrib.items():
            auri, alocal = _split(key)
            if auri is None:
                if alocal[:4] == "xml:":
                    # Accepted as a convenience; clashing with the Clark form
                    # would emit a duplicate attribute.
                    _check_name(alocal[4:])
                    if "{" + XML_NS + "}" + alocal[4:] in attrib:
                        raise ValueError(f"attribute {alocal!r} given twice")
                else:
                    _check_name(alocal)
                aname = alocal
            else:
                _check_name(alocal)
                if not auri:
                    if alocal in attrib:
                        raise ValueError(f"attribute {alocal!r} given twice")
                    aname = alocal
                elif auri == XML_NS:
                    aname = "xml:" + alocal
                elif auri == STREAM_NS:
                    aname = "stream:" + alocal
                elif auri == _XMLNS_NS:
                    raise ValueError("namespace declarations cannot be set as attributes")
                else:
                    prefix = prefixes.get(auri)
                    if prefix is None:
                        if not own:
                            prefixes = dict(prefixes)
                            own = True
                        prefix = f"ns{len(prefixes)}"
                        prefixes[auri] = prefix
                        out.append(f" xmlns:{prefix}='{_esc_attr(auri)}'")
                    aname = prefix + ":" + alocal
            out.append(f" {aname}='{_esc_attr(value)}'")
    text = el.text
    if not text and len(el) == 0:
        out.append("/>")
        return
    out.append(">")
    if text:
        out.append(_esc_text(text))
    for child in el:
        # XMPP forbids comments and processing instructions, so only their
        # tails survive.
        if child.tag is not Comment and child.tag is not ProcessingInstruction:
            _write(child, default_ns, prefixes, out)
        tail = child.tail
        if tail:
            out.append(_esc_text(tail))
    out.append("</" + qname + ">")


class Presized(Element):
    """A stanza that carries its own serialisation (the copies of one message that a
    group chat room sends to each occupant: serialised once, `to` spliced in). The bytes
    are used only while the stanza still has the attributes and number of children it had
    when they were made, so a copy changed on the way is serialised afresh."""

    __slots__ = ("wire", "wire_attrib", "wire_len")

    wire: bytes
    wire_attrib: dict[str, str]
    wire_len: int


class FanOut:
    """Copies of one stanza for many recipients, differing only in `to`."""

    MARK = "parley-fan-out-recipient"

    def __init__(self, stanza: Element, ns: str = "jabber:client"):
        self.stanza = stanza
        probe = Element(stanza.tag, {**stanza.attrib, "to": self.MARK})
        probe.text = stanza.text
        probe.extend(stanza)
        self.head, _, self.tail = serialize(probe, ns).partition(self.MARK.encode())

    def copy_to(self, to: str) -> Presized:
        attrib = {**self.stanza.attrib, "to": to}
        out = Presized(self.stanza.tag, attrib)
        out.text = self.stanza.text
        out.extend(self.stanza)  # children are shared: nothing on the way changes one in place
        out.wire = self.head + _esc_attr(to).encode("utf-8") + self.tail
        out.wire_attrib = attrib  # the element keeps a copy of its own
        out.wire_len = len(self.stanza)
        return out


def serialize(el: Element, ns: str = "jabber:client") -> bytes:
    """Serialize a stanza for a stream whose default namespace is ``ns``.

    Elements in ``ns`` are written unprefixed without xmlns; an element whose
    namespace differs from the one in scope gets ``xmlns="..."``; an
    unqualified tag inherits the namespace in scope ("{}name" forces no
    namespace).  The stream namespace is written with the ``stream:`` prefix
    and no declaration, since the stream header declares it.  xml:lang is
    written as xml:lang; other qualified attributes get a declared prefix.
    Characters that XML 1.0 cannot carry are dropped; comments and processing
    instructions inside the tree are left out.  Invalid names raise
    ValueError.  Output is UTF-8.
    """
    if type(el) is Presized and ns == "jabber:client" and el.attrib == el.wire_attrib and len(el) == el.wire_len:
        return el.wire
    if el.tag is Comment or el.tag is ProcessingInstruction:
        raise TypeError("only elements can be serialized")
    out: list[str] = []
    _write(el, ns, {}, out)
    return "".join(out).encode("utf-8")


def stream_header(
    *,
    from_: str | None,
    to: str | None,
    id_: str | None,
    ns: str = "jabber:client",
    version: str = "1.0",
    lang: str | None = "en",
) -> bytes:
    """The XML declaration and ``<stream:stream ...>`` opening tag."""
    parts = ["<?xml version='1.0'?><stream:stream"]
    attrs: tuple[tuple[str, str | None], ...] = (
        ("from", from_),
        ("to", to),
        ("id", id_),
        ("version", version),
        ("xml:lang", lang),
    )
    for name, value in attrs:
        if value is not None:
            parts.append(f" {name}='{_esc_attr(value)}'")
    parts.append(f" xmlns='{_esc_attr(ns)}' xmlns:stream='{STREAM_NS}'>")
    return "".join(parts).encode("utf-8")


def stream_error(condition: str, text: str | None = None) -> bytes:
    """A ``<stream:error/>`` element with the given RFC 6120 condition."""
    err = Element("{" + STREAM_NS + "}error")
    SubElement(err, "{" + STREAMS_ERROR_NS + "}" + condition)
    if text:
        SubElement(err, "{" + STREAMS_ERROR_NS + "}text", {XML_LANG: "en"}).text = text
    return serialize(err)
