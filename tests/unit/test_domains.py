from __future__ import annotations

import pytest

from parley.domains import MAX_DOMAIN_LENGTH, normalise_domain, validate_domain


def _domain_of_length(length: int) -> str:
    # Labels of 'a' joined by dots, ending in a letter label so only the length can be wrong.
    name = ""
    while len(name) < length:
        name += "a" if not name or name.endswith(".") else "."
    if name.endswith("."):
        name = name[:-1] + "b"
    return name


@pytest.mark.parametrize(
    "name",
    [
        "example.com",
        "EXAMPLE.COM",
        "Example.Com",
        "im.example.co.jp",
        "localhost",
        "a-b.example.com",
        "a--b.example.com",
        "label-ends-with-hyphen-.example.com",
        "123.example.com",
        "example.c0m",
        "x.y",
    ],
)
def test_valid_domains(name: str) -> None:
    assert validate_domain(name) == []


def test_seed_example_last_label_starting_with_digit() -> None:
    problems = validate_domain("Abc.1om")
    assert len(problems) == 1
    assert "last label" in problems[0] and "'1om'" in problems[0]


def test_ip_address_is_refused_by_last_label_rule() -> None:
    assert any("last label" in p for p in validate_domain("192.168.0.1"))


def test_empty_name() -> None:
    assert validate_domain("") == ["domain name is empty"]


def test_length_boundary() -> None:
    ok = _domain_of_length(MAX_DOMAIN_LENGTH)
    too_long = _domain_of_length(MAX_DOMAIN_LENGTH + 1)
    assert len(ok) == 255 and len(too_long) == 256
    assert validate_domain(ok) == []
    problems = validate_domain(too_long)
    assert len(problems) == 1
    assert problems[0] == "domain name is 256 characters long (maximum 255)"


def test_single_long_label_is_accepted_up_to_255() -> None:
    # The product rule has no per-label limit for hosted domains.
    assert validate_domain("a" * 251 + ".com") == []


@pytest.mark.parametrize("char", ["_", " ", "@", "é", "/", "*", "\t", "١"])
def test_invalid_characters(char: str) -> None:
    problems = validate_domain(f"ex{char}ample.com")
    assert len(problems) == 1
    assert repr(char) in problems[0]


def test_invalid_characters_listed_once_in_order() -> None:
    problems = validate_domain("a_b_c d.com")
    assert problems == [
        "domain name may only contain letters, digits, '-' and '.' (found '_', ' ')"
    ]


@pytest.mark.parametrize("name", [".example.com", "example.com.", "example..com", "."])
def test_empty_label(name: str) -> None:
    problems = validate_domain(name)
    assert any("empty label" in p for p in problems)


@pytest.mark.parametrize("name", ["-example.com", "im.-example.com", "example.-com"])
def test_label_starting_with_hyphen(name: str) -> None:
    assert any("starts with '-'" in p for p in validate_domain(name))


def test_every_problem_is_reported() -> None:
    name = "-a_b..-c.9" + "x" * 260
    problems = validate_domain(name)
    text = "\n".join(problems)
    assert "(maximum 255)" in text
    assert "'_'" in text
    assert "empty label" in text
    assert "label '-a_b' starts with '-'" in text
    assert "label '-c' starts with '-'" in text
    assert "last label" in text
    assert len(problems) == 6


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Example.COM", "example.com"),
        ("  example.com  ", "example.com"),
        ("example.com.", "example.com"),
        (" Example.Com. ", "example.com"),
        ("example.com..", "example.com."),
        ("", ""),
    ],
)
def test_normalise_domain(given: str, expected: str) -> None:
    assert normalise_domain(given) == expected


def test_normalise_then_validate() -> None:
    assert validate_domain(normalise_domain(" IM.Example.COM. ")) == []
    assert validate_domain(normalise_domain("example.com..")) != []
