"""Hosted IM domain names: validation and normal form.

The rules are the product's own (not full DNS syntax): at most 255 characters, only ASCII letters,
digits, '-' and '.', '.' separates labels, no empty label, no label starting with '-', and the last
label must not start with a digit, so that a name can never be mistaken for an IP address
('Abc.1om' is refused). Letters are case-insensitive; callers store the normal form.
"""

from __future__ import annotations

import string

__all__ = ["MAX_DOMAIN_LENGTH", "normalise_domain", "validate_domain"]

MAX_DOMAIN_LENGTH = 255

_ALLOWED = frozenset(string.ascii_letters + string.digits + "-.")
# str.isdigit() accepts non-ASCII digits, which are already refused as characters; checking
# against ASCII keeps the "last label" message about what the rule actually says.
_ASCII_DIGITS = frozenset(string.digits)


def normalise_domain(name: str) -> str:
    """Return the stored form of a domain name: trimmed, lower-case, one trailing dot removed.

    Only one dot is removed so that 'example.com..' stays invalid instead of being silently
    repaired into something the administrator did not type.
    """
    result = name.strip().lower()
    if result.endswith("."):
        result = result[:-1]
    return result


def validate_domain(name: str) -> list[str]:
    """Return every problem with ``name`` as a human-readable sentence; empty when it is valid.

    ``name`` is checked as given: normalise it first with :func:`normalise_domain` to accept
    surrounding spaces or a trailing dot.
    """
    if name == "":
        return ["domain name is empty"]

    problems: list[str] = []
    if len(name) > MAX_DOMAIN_LENGTH:
        problems.append(f"domain name is {len(name)} characters long (maximum {MAX_DOMAIN_LENGTH})")

    # dict keeps first-seen order, so the message lists characters as they appear.
    bad_chars = dict.fromkeys(ch for ch in name if ch not in _ALLOWED)
    if bad_chars:
        shown = ", ".join(repr(ch) for ch in bad_chars)
        problems.append(
            f"domain name may only contain letters, digits, '-' and '.' (found {shown})"
        )

    labels = name.split(".")
    if any(label == "" for label in labels):
        problems.append("domain name has an empty label (a leading, trailing or doubled '.')")

    for label in labels:
        if label.startswith("-"):
            problems.append(f"label {label!r} starts with '-'")

    last = labels[-1]
    if last and last[0] in _ASCII_DIGITS:
        problems.append(f"the last label {last!r} starts with a digit")

    return problems
