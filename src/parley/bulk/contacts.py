"""Contact list CSV: parsing and validation for import, formatting for export.

One contact per line, six fields, no header required::

    userid,user domain,contact id,contact domain,nickname,group
    userA,example.com,userB,example.com,buddyB,General

Each line is parsed on its own, so a line with broken quoting is reported and the following
lines are still read; the price is that a field cannot span lines (see :func:`format_contact_row`).
"""

from __future__ import annotations

import csv
import io
import string
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "DEFAULT_GROUP",
    "ContactRow",
    "ImportReport",
    "Reason",
    "Rejected",
    "format_contact_row",
    "parse_contacts",
    "split_im_address",
]

DEFAULT_GROUP = "General"

MAX_ID = 132
MAX_DOMAIN = 128
MAX_LABEL = 63
MAX_TEXT = 255

_FIELD_COUNT = 6
_HEADER_FIRST_FIELDS = frozenset({"user id", "userid"})
_DOMAIN_CHARS = frozenset(string.ascii_letters + string.digits + "-.")
_ASCII_LETTERS = frozenset(string.ascii_letters)


@dataclass(frozen=True)
class ContactRow:
    """A valid contact line. Domains are lower-cased; IDs, nickname and group are as given."""

    line: int
    user_id: str
    user_domain: str
    contact_id: str
    contact_domain: str
    nickname: str
    group: str


class Reason(StrEnum):
    """Why a contact was ignored, in the exact words of the import result log."""

    INVALID_FORMAT = "Invalid format"
    INVALID_CONTACT_DOMAIN = "Invalid contact domain"
    SELF_CONTACT = "Cannot add self as contact"
    LIST_FULL = "User's contact list exceeds limit"
    NOT_LOCAL = "User not assigned to local node"


@dataclass(frozen=True)
class Rejected:
    """An ignored line: ``raw`` is the line as read, without its line terminator."""

    line: int
    raw: str
    reason: Reason
    detail: str


@dataclass(frozen=True)
class _Field:
    label: str
    limit: int
    required: bool


_FIELDS = (
    _Field("User ID", MAX_ID, True),
    _Field("User Domain", MAX_DOMAIN, True),
    _Field("Contact ID", MAX_ID, True),
    _Field("Contact Domain", MAX_DOMAIN, True),
    _Field("Nickname", MAX_TEXT, False),
    _Field("Group Name", MAX_TEXT, True),
)
_CONTACT_DOMAIN_INDEX = 3


def _lines_of(lines: Iterable[str]) -> Iterable[str]:
    # A whole file passed as one string would otherwise be iterated character by character.
    if isinstance(lines, str):
        return lines.splitlines()
    return lines


def _clean_line(number: int, line: str) -> str:
    text = line.rstrip("\r\n")
    # Spreadsheet programs often save UTF-8 CSV with a byte order mark.
    if number == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _split_csv(text: str) -> list[str]:
    """Split one line; raises csv.Error on bad quoting rather than guessing."""
    reader = csv.reader([text], strict=True, skipinitialspace=True)
    return next(reader, [])


def _is_header(fields: list[str]) -> bool:
    # The export format is documented as '<User ID>,<User Domain>,...', so brackets are tolerated.
    first = fields[0].strip().strip("<>").strip().lower() if fields else ""
    return first in _HEADER_FIRST_FIELDS


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def _contact_domain_problems(domain: str) -> list[str]:
    problems: list[str] = []
    if len(domain) > MAX_DOMAIN:
        problems.append(f"Contact Domain is {len(domain)} characters long (maximum {MAX_DOMAIN})")
    bad_chars = dict.fromkeys(ch for ch in domain if ch not in _DOMAIN_CHARS)
    if bad_chars:
        shown = ", ".join(repr(ch) for ch in bad_chars)
        problems.append(
            f"Contact Domain may only contain letters, digits, '-' and '.' (found {shown})"
        )
    labels = domain.split(".")
    if any(label == "" for label in labels):
        problems.append("Contact Domain has an empty label (a leading, trailing or doubled '.')")
    for label in labels:
        if label.startswith("-") or label.endswith("-"):
            problems.append(f"Contact Domain label {label!r} starts or ends with '-'")
        if len(label) > MAX_LABEL:
            problems.append(
                f"Contact Domain label {label[:20]!r}... is {len(label)} characters long "
                f"(maximum {MAX_LABEL})"
            )
    tld = labels[-1]
    if tld and (len(tld) < 2 or not all(ch in _ASCII_LETTERS for ch in tld)):
        problems.append(
            f"Contact Domain top-level label {tld!r} must be at least 2 letters and letters only"
        )
    return problems


def _check_fields(number: int, raw: str, fields: list[str]) -> ContactRow | Rejected:
    if len(fields) != _FIELD_COUNT:
        return Rejected(
            number,
            raw,
            Reason.INVALID_FORMAT,
            f"expected {_FIELD_COUNT} fields, found {len(fields)}",
        )

    values = [value.strip() for value in fields]
    format_problems: list[str] = []
    for index, (spec, value) in enumerate(zip(_FIELDS, values, strict=True)):
        if value == "":
            if spec.required:
                format_problems.append(f"{spec.label} is missing")
            continue
        if _has_control(value):
            format_problems.append(f"{spec.label} contains a control character")
        # The contact domain's length is part of its own rule, reported with its format below.
        if index != _CONTACT_DOMAIN_INDEX and len(value) > spec.limit:
            format_problems.append(
                f"{spec.label} is {len(value)} characters long (maximum {spec.limit})"
            )

    user_id, user_domain, contact_id, contact_domain, nickname, group = values
    domain_problems = _contact_domain_problems(contact_domain) if contact_domain else []

    if format_problems:
        # One reason per line, but the detail lists everything so the file is fixed in one pass.
        return Rejected(
            number, raw, Reason.INVALID_FORMAT, "; ".join(format_problems + domain_problems)
        )
    if domain_problems:
        return Rejected(number, raw, Reason.INVALID_CONTACT_DOMAIN, "; ".join(domain_problems))

    user_domain = user_domain.lower()
    contact_domain = contact_domain.lower()
    # User IDs are compared without case, as XMPP localparts are case-mapped.
    if user_id.casefold() == contact_id.casefold() and user_domain == contact_domain:
        return Rejected(
            number,
            raw,
            Reason.SELF_CONTACT,
            f"{contact_id}@{contact_domain} is the user {user_id}@{user_domain}",
        )
    return ContactRow(
        line=number,
        user_id=user_id,
        user_domain=user_domain,
        contact_id=contact_id,
        contact_domain=contact_domain,
        nickname=nickname,
        group=group,
    )


def parse_contacts(lines: Iterable[str]) -> Iterator[ContactRow | Rejected]:
    """Yield a :class:`ContactRow` or a :class:`Rejected` for every contact line, in order.

    ``lines`` may be an open text file, a list of lines (with or without terminators) or a whole
    text. Line numbers count every physical line from 1. Blank lines carry no contact and are
    skipped; a first non-blank line whose first field is 'User ID' or 'userid' (any case) is a
    header and is skipped. Fields are trimmed. Limits and only :attr:`Reason.INVALID_FORMAT`,
    :attr:`Reason.INVALID_CONTACT_DOMAIN` and :attr:`Reason.SELF_CONTACT` are decided here;
    list size and node assignment need the database and are the caller's.
    """
    header_possible = True
    for number, line in enumerate(_lines_of(lines), start=1):
        raw = _clean_line(number, line)
        if raw.strip() == "":
            continue
        try:
            fields = _split_csv(raw)
        except csv.Error as exc:
            header_possible = False
            yield Rejected(number, raw, Reason.INVALID_FORMAT, f"bad CSV quoting: {exc}")
            continue
        if header_possible:
            header_possible = False
            if _is_header(fields):
                continue
        yield _check_fields(number, raw, fields)


def _one_line(value: str) -> str:
    # The importer reads one contact per physical line, so a line break inside a field would
    # make the exported file unreadable by our own import.
    return " ".join(value.splitlines()) if value else value


def format_contact_row(
    user_id: str,
    user_domain: str,
    contact_id: str,
    contact_domain: str,
    nickname: str | None,
    group: str | None,
    default_group: str = DEFAULT_GROUP,
) -> str:
    """Return one export line (no line terminator), quoted by the csv module where needed.

    A contact without a nickname gets a blank field; one outside any group (``None`` or an empty
    name) gets ``default_group``, because the import requires a group. Line breaks inside a
    value become spaces.
    """
    values = [
        user_id,
        user_domain,
        contact_id,
        contact_domain,
        nickname if nickname is not None else "",
        group if group else default_group,
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="")
    writer.writerow([_one_line(value) for value in values])
    return buffer.getvalue()


def split_im_address(address: str) -> tuple[str, str]:
    """Split an IM address into (user ID, domain) at the last '@'.

    User IDs may themselves contain '@' ('bjones@usa@example.com' is user 'bjones@usa' of
    'example.com'), domains never do. Raises ValueError without an '@' or with an empty side.
    """
    user_id, at, domain = address.rpartition("@")
    if not at:
        raise ValueError(f"IM address {address!r} has no '@'")
    if not user_id or not domain:
        raise ValueError(f"IM address {address!r} needs a user ID before and a domain after '@'")
    return user_id, domain


@dataclass
class ImportReport:
    """Counts and ignored lines of one contact import, rendered as its result log."""

    succeeded: int = 0
    internal_errors: int = 0
    ignored: list[Rejected] = field(default_factory=list)
    unprocessed: int = 0

    def render(self) -> str:
        """Return the result log: the four counts, then one line per ignored contact."""
        out = [
            f"Contacts imported successfully: {self.succeeded}",
            f"Internal server errors: {self.internal_errors}",
            f"Contacts ignored: {len(self.ignored)}",
            f"Contacts not processed: {self.unprocessed}",
        ]
        if self.ignored:
            out.append("")
            out.append("Ignored contacts:")
            for item in sorted(self.ignored, key=lambda rejected: rejected.line):
                parts = [f"line {item.line}", str(item.reason)]
                # Reasons decided by the caller (list full, not local) often need no detail.
                if item.detail:
                    parts.append(item.detail)
                parts.append(item.raw)
                out.append(": ".join(parts))
        return "\n".join(out) + "\n"
