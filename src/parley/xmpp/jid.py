"""XMPP addresses (RFC 7622) and XEP-0106 localpart escaping.

A :class:`JID` obtained from :meth:`JID.parse` or :meth:`JID.make` is always
in canonical form, so two JIDs that denote the same entity compare (and hash)
equal.  Constructing ``JID(...)`` directly skips all checks and is only meant
for values that are already canonical, such as parts taken from another JID.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

import precis_i18n

__all__ = ["JID", "InvalidJID", "escape_node", "unescape_node"]

MAX_PART_BYTES = 1023
MAX_LABEL_BYTES = 63

# Inputs are checked against this before any Unicode processing so that a
# hostile peer cannot make us normalise megabytes of text.  No mapping step
# shrinks a string by a factor of four, so nothing valid is rejected here.
_MAX_RAW_PART_CHARS = 4 * MAX_PART_BYTES

_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_OPAQUE = precis_i18n.get_profile("OpaqueString")
_IDENTIFIER = precis_i18n.get_profile("IdentifierClass")

# RFC 7622 section 3.3.1: PRECIS allows these in usernames but they would make
# the textual JID ambiguous or unsafe to embed in XML and URIs.
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")

# RFC 5895 treats these as label separators, like "." itself.
_DOT_MAP = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


class InvalidJID(ValueError):
    """A string or part that is not a valid XMPP address; the message says why."""


def _check_raw(part: str, what: str) -> None:
    if not part:
        raise InvalidJID(f"{what} is empty")
    if len(part) > _MAX_RAW_PART_CHARS:
        raise InvalidJID(f"{what} is longer than {MAX_PART_BYTES} bytes")


def _check_prepared(part: str, what: str) -> None:
    if not part:
        raise InvalidJID(f"{what} is empty")
    if len(part.encode("utf-8")) > MAX_PART_BYTES:
        raise InvalidJID(f"{what} is longer than {MAX_PART_BYTES} bytes")


def _precis_reason(exc: UnicodeError) -> str:
    if isinstance(exc, UnicodeEncodeError):
        if exc.reason == "DISALLOWED/empty":
            return "is empty after normalisation"
        if exc.start < len(exc.object):
            char = exc.object[exc.start]
            return f"contains disallowed character U+{ord(char):04X} ({exc.reason})"
        return f"is not allowed ({exc.reason})"
    return f"is not allowed ({exc})"


@lru_cache(maxsize=8192)
def _prep_local(local: str) -> str:
    _check_raw(local, "localpart")
    try:
        prepared = _USERNAME.enforce(local)
    except UnicodeError as exc:
        raise InvalidJID(f"localpart {_precis_reason(exc)}") from None
    # Checked after enforcement because width mapping turns e.g. U+FF20 into "@".
    for char in prepared:
        if char in _LOCAL_FORBIDDEN:
            raise InvalidJID(f"localpart contains forbidden character {char!r}")
    _check_prepared(prepared, "localpart")
    return prepared


@lru_cache(maxsize=8192)
def _prep_resource(resource: str) -> str:
    _check_raw(resource, "resourcepart")
    try:
        prepared = _OPAQUE.enforce(resource)
    except UnicodeError as exc:
        raise InvalidJID(f"resourcepart {_precis_reason(exc)}") from None
    _check_prepared(prepared, "resourcepart")
    return prepared


def _map_domain(domain: str) -> str:
    """RFC 5895 mappings: lower case, width folding, NFC, label separators."""
    domain = domain.translate(_DOT_MAP)
    if domain.isascii():
        return domain.lower()
    domain = domain.lower()
    domain = "".join(
        unicodedata.normalize("NFKC", char)
        if unicodedata.decomposition(char).startswith(("<wide>", "<narrow>"))
        else char
        for char in domain
    )
    return unicodedata.normalize("NFC", domain)


def _to_alabel(ulabel: str) -> str:
    return "xn--" + ulabel.encode("punycode").decode("ascii")


def _check_ulabel(label: str) -> str:
    # An approximation of the IDNA2008 rules (RFC 5891 section 5.4): the
    # PRECIS IdentifierClass was derived from the IDNA2008 tables and rejects
    # the same symbols, spaces, compatibility and unassigned code points.
    # The joiner and Bidi context rules are not checked.
    if label[0] == "-" or label[-1] == "-":
        raise InvalidJID(f"domainpart label {label!r} starts or ends with a hyphen")
    if label[2:4] == "--":
        raise InvalidJID(f"domainpart label {label!r} has hyphens in positions 3 and 4")
    if unicodedata.category(label[0]).startswith("M"):
        raise InvalidJID(f"domainpart label {label!r} starts with a combining mark")
    for char in label:
        if char.isascii() and not (char.isalnum() or char == "-"):
            raise InvalidJID(f"domainpart contains disallowed character {char!r}")
    try:
        _IDENTIFIER.enforce(label)
    except UnicodeError as exc:
        raise InvalidJID(f"domainpart label {label!r} {_precis_reason(exc)}") from None
    if len(_to_alabel(label)) > MAX_LABEL_BYTES:
        raise InvalidJID(f"domainpart label {label!r} is longer than {MAX_LABEL_BYTES} bytes")
    return label


def _alabel_to_ulabel(label: str) -> str:
    try:
        ulabel = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        raise InvalidJID(f"domainpart label {label!r} is not valid punycode") from None
    # An A-label must be the unique encoding of a canonical U-label, otherwise
    # two spellings would reach the same domain.
    if not ulabel or ulabel.isascii() or _map_domain(ulabel) != ulabel:
        raise InvalidJID(f"domainpart label {label!r} is not a valid A-label")
    _check_ulabel(ulabel)
    if _to_alabel(ulabel) != label:
        raise InvalidJID(f"domainpart label {label!r} is not a valid A-label")
    return ulabel


def _prep_label(label: str) -> str:
    if not label:
        raise InvalidJID("domainpart contains an empty label")
    if not label.isascii():
        return _check_ulabel(label)
    if len(label) > MAX_LABEL_BYTES:
        raise InvalidJID(f"domainpart label {label!r} is longer than {MAX_LABEL_BYTES} bytes")
    if not _LDH_LABEL.fullmatch(label):
        raise InvalidJID(f"domainpart label {label!r} is not a valid host name label")
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise InvalidJID(f"domainpart label {label!r} has hyphens in positions 3 and 4")
        # RFC 7622 section 3.2.2: A-labels are compared in their Unicode form.
        return _alabel_to_ulabel(label)
    return label


def _prep_ip6_literal(domain: str) -> str:
    if not domain.endswith("]"):
        raise InvalidJID("domainpart IP literal is missing the closing bracket")
    inner = domain[1:-1]
    # Zone identifiers are local to one host and have no place in an address.
    if "%" in inner:
        raise InvalidJID("domainpart IPv6 literal must not have a zone identifier")
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        raise InvalidJID(f"domainpart {domain!r} is not a valid IPv6 literal") from None
    # Canonical text form (RFC 5952) so that equal addresses compare equal.
    return f"[{address.compressed}]"


@lru_cache(maxsize=2048)
def _prep_domain(domain: str) -> str:
    _check_raw(domain, "domainpart")
    if domain.startswith("["):
        return _prep_ip6_literal(domain)
    domain = _map_domain(domain)
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise InvalidJID("domainpart is empty")
    labels = domain.split(".")
    if labels[-1].isdigit() and labels[-1].isascii():
        # A numeric final label cannot be a host name, so this must be IPv4.
        try:
            return str(ipaddress.IPv4Address(domain))
        except ValueError:
            raise InvalidJID(f"domainpart {domain!r} is not a valid IPv4 address") from None
    prepared = ".".join(_prep_label(label) for label in labels)
    _check_prepared(prepared, "domainpart")
    return prepared


@lru_cache(maxsize=8192)
def _parse(text: str) -> JID:
    # RFC 7622 section 3.1: the first "/" starts the resource (which may
    # itself contain "/" and "@"), then the first "@" ends the localpart.
    address, slash, resource = text.partition("/")
    before_at, at, after_at = address.partition("@")
    if at:
        local: str | None = _prep_local(before_at)
        domain = after_at
    else:
        local = None
        domain = before_at
    return JID(
        local,
        _prep_domain(domain),
        _prep_resource(resource) if slash else None,
    )


@dataclass(frozen=True, slots=True)
class JID:
    """An XMPP address: immutable and hashable, so usable as a dict key."""

    local: str | None
    domain: str
    resource: str | None
    # The router asks for the text and the bare JID of the same JIDs many times per stanza.
    _text: str = field(init=False, repr=False, compare=False, hash=False, default="")
    _bare: JID | None = field(init=False, repr=False, compare=False, hash=False, default=None)

    def __post_init__(self) -> None:
        text = self.domain if self.local is None else f"{self.local}@{self.domain}"
        if self.resource is not None:
            text = f"{text}/{self.resource}"
        object.__setattr__(self, "_text", text)

    @classmethod
    def parse(cls, s: str) -> JID:
        """Parse ``s`` into canonical form, raising :class:`InvalidJID`."""
        return _parse(s)

    @classmethod
    def make(cls, local: str | None, domain: str, resource: str | None = None) -> JID:
        """Build a JID from separate parts, normalising each of them."""
        return cls(
            None if local is None else _prep_local(local),
            _prep_domain(domain),
            None if resource is None else _prep_resource(resource),
        )

    @property
    def bare(self) -> JID:
        if self.resource is None:
            return self
        b = self._bare
        if b is None:
            b = JID(self.local, self.domain, None)
            object.__setattr__(self, "_bare", b)
        return b

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    def with_resource(self, resource: str) -> JID:
        return JID(self.local, self.domain, _prep_resource(resource))

    def __str__(self) -> str:
        return self._text


_ESCAPES = {
    " ": "\\20",
    '"': "\\22",
    "&": "\\26",
    "'": "\\27",
    "/": "\\2f",
    ":": "\\3a",
    "<": "\\3c",
    ">": "\\3e",
    "@": "\\40",
}
_UNESCAPES = {seq[1:]: char for char, seq in _ESCAPES.items()} | {"5c": "\\"}
# XEP-0106 says case is significant: "\2F" is not an escape sequence.
_ESCAPE_SEQUENCE = re.compile(r"\\(20|22|26|27|2f|3a|3c|3e|40|5c)")


def escape_node(s: str) -> str:
    """Escape a would-be localpart as XEP-0106 specifies.

    A backslash is escaped only where it would otherwise be read as the start
    of an escape sequence, which keeps existing localparts containing
    backslashes unchanged.  Raises :class:`InvalidJID` for a leading or
    trailing space, since XEP-0106 forbids an escaped node that starts or ends
    with ``\\20``.
    """
    if s.startswith(" ") or s.endswith(" "):
        raise InvalidJID("a localpart cannot start or end with a space")
    out: list[str] = []
    for index, char in enumerate(s):
        if char == "\\":
            out.append("\\5c" if _ESCAPE_SEQUENCE.match(s, index) else char)
        else:
            out.append(_ESCAPES.get(char, char))
    return "".join(out)


def unescape_node(s: str) -> str:
    """Undo :func:`escape_node`; anything that is not one of the ten sequences stays."""
    return _ESCAPE_SEQUENCE.sub(lambda match: _UNESCAPES[match.group(1)], s)
