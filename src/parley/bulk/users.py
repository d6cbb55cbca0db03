"""User bulk CSV: ``jid,password`` lines for creating accounts in bulk.

Blank lines and lines starting with '#' are skipped (a JID that really starts with '#' can be
quoted), an optional first line ``jid,password`` is a header. A password containing commas must
be quoted; a password starting with a space must be quoted too, because spaces after the comma
are taken as layout.
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["BadUserLine", "UserRow", "parse_users"]

_HEADER = ["jid", "password"]
# Bad lines are shown to administrators and may end up in logs; the password must not.
_HIDDEN = "***"


@dataclass(frozen=True)
class UserRow:
    """A usable line. ``password`` is kept out of repr so that logging a row leaks nothing."""

    line: int
    jid: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BadUserLine:
    """A refused line. ``raw`` is the line with everything after the JID replaced by '***'."""

    line: int
    raw: str
    reason: str


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


def _redact(text: str, fields: list[str] | None) -> str:
    if fields is None:
        head, comma, _ = text.partition(",")
        return f"{head},{_HIDDEN}" if comma else head
    if not fields:
        return ""
    head = fields[0].strip()
    return f"{head},{_HIDDEN}" if len(fields) > 1 else head


def _duplicate_key(jid: str) -> str:
    # Bare JIDs compare without case (localpart and domain are case-mapped); NFC keeps composed
    # and decomposed spellings of the same name together. The caller's canonical form may merge
    # more, but this already catches the duplicates a person typing the file would make.
    return unicodedata.normalize("NFC", jid).lower()


def parse_users(
    lines: Iterable[str], jid_check: Callable[[str], str | None]
) -> Iterator[UserRow | BadUserLine]:
    """Yield a :class:`UserRow` or a :class:`BadUserLine` for every user line, in order.

    ``lines`` may be an open text file, a list of lines or a whole text; line numbers count every
    physical line from 1. ``jid_check`` gets the trimmed JID and returns an error text or None.
    A line is refused for broken quoting, a field count other than 2, an empty JID, the error from
    ``jid_check``, an empty password, or a JID already accepted on an earlier line ("duplicate of
    line N"); all problems of a line are given, separated by '; '. A line refused for another
    reason does not make a later line with the same JID a duplicate, since it was not accepted.
    """
    seen: dict[str, int] = {}
    header_possible = True
    for number, line in enumerate(_lines_of(lines), start=1):
        text = _clean_line(number, line)
        stripped = text.strip()
        if stripped == "" or stripped.startswith("#"):
            continue
        try:
            fields = next(csv.reader([text], strict=True, skipinitialspace=True), [])
        except csv.Error as exc:
            header_possible = False
            yield BadUserLine(number, _redact(text, None), f"bad CSV quoting: {exc}")
            continue
        if header_possible:
            header_possible = False
            if [value.strip().lower() for value in fields] == _HEADER:
                continue
        if len(fields) != 2:
            yield BadUserLine(
                number, _redact(text, fields), f"expected 2 fields, found {len(fields)}"
            )
            continue

        jid = fields[0].strip()
        password = fields[1]
        problems: list[str] = []
        if jid == "":
            problems.append("JID is missing")
        else:
            error = jid_check(jid)
            if error is not None:
                problems.append(error)
        if password == "":
            problems.append("password is empty")
        key = _duplicate_key(jid)
        if jid and key in seen:
            problems.append(f"duplicate of line {seen[key]}")

        if problems:
            yield BadUserLine(number, _redact(text, fields), "; ".join(problems))
            continue
        seen[key] = number
        yield UserRow(line=number, jid=jid, password=password)
