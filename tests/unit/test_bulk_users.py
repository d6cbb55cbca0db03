from __future__ import annotations

import io

from parley.bulk.users import BadUserLine, UserRow, parse_users


def _check(jid: str) -> str | None:
    if "@" not in jid:
        return "JID needs a domain"
    if "/" in jid:
        return "JID must be bare"
    return None


def _parse(text: str) -> list[UserRow | BadUserLine]:
    return list(parse_users(io.StringIO(text), _check))


def test_simple_lines() -> None:
    rows = _parse("alice@example.com,secret\nbob@example.com,hunter2\n")
    assert rows == [
        UserRow(1, "alice@example.com", "secret"),
        UserRow(2, "bob@example.com", "hunter2"),
    ]


def test_header_blank_and_comment_lines_skipped_with_physical_line_numbers() -> None:
    text = "# users for the pilot\n\njid,password\n  \nalice@example.com,pw\n  # indented\n"
    assert _parse(text) == [UserRow(5, "alice@example.com", "pw")]


def test_header_any_case_and_spacing() -> None:
    assert _parse("JID, Password\nalice@example.com,pw\n") == [
        UserRow(2, "alice@example.com", "pw")
    ]


def test_header_only_on_first_meaningful_line() -> None:
    rows = _parse("alice@example.com,pw\njid,password\n")
    assert rows[0] == UserRow(1, "alice@example.com", "pw")
    assert isinstance(rows[1], BadUserLine)
    assert rows[1].line == 2 and rows[1].reason == "JID needs a domain"


def test_quoted_password_with_commas_and_quotes() -> None:
    rows = _parse('alice@example.com,"a,b,""c"""\n')
    assert rows == [UserRow(1, "alice@example.com", 'a,b,"c"')]


def test_space_after_comma_is_layout_but_quoted_space_is_kept() -> None:
    rows = _parse('alice@example.com, secret\nbob@example.com," lead"\n')
    assert rows == [
        UserRow(1, "alice@example.com", "secret"),
        UserRow(2, "bob@example.com", " lead"),
    ]


def test_password_trailing_space_kept_and_jid_trimmed() -> None:
    assert _parse("  alice@example.com  ,pw \n") == [UserRow(1, "alice@example.com", "pw ")]


def test_quoted_jid_starting_with_hash_is_not_a_comment() -> None:
    assert _parse('"#ops@example.com",pw\n') == [UserRow(1, "#ops@example.com", "pw")]


def test_wrong_field_count() -> None:
    rows = _parse("alice@example.com\nbob@example.com,pw,extra\ncarol@example.com,a,b,c\n")
    assert rows == [
        BadUserLine(1, "alice@example.com", "expected 2 fields, found 1"),
        BadUserLine(2, "bob@example.com,***", "expected 2 fields, found 3"),
        BadUserLine(3, "carol@example.com,***", "expected 2 fields, found 4"),
    ]


def test_empty_password() -> None:
    assert _parse('alice@example.com,\nbob@example.com,""\n') == [
        BadUserLine(1, "alice@example.com,***", "password is empty"),
        BadUserLine(2, "bob@example.com,***", "password is empty"),
    ]


def test_missing_jid() -> None:
    assert _parse(",pw\n") == [BadUserLine(1, ",***", "JID is missing")]


def test_jid_check_error_is_the_reason() -> None:
    assert _parse("alice,pw\nbob@example.com/phone,pw\n") == [
        BadUserLine(1, "alice,***", "JID needs a domain"),
        BadUserLine(2, "bob@example.com/phone,***", "JID must be bare"),
    ]


def test_jid_check_receives_trimmed_jid() -> None:
    seen: list[str] = []

    def record(jid: str) -> None:
        seen.append(jid)

    list(parse_users([" alice@example.com ,pw"], record))
    assert seen == ["alice@example.com"]


def test_all_problems_of_a_line_are_given() -> None:
    assert _parse("alice,\n") == [
        BadUserLine(1, "alice,***", "JID needs a domain; password is empty")
    ]


def test_duplicate_second_occurrence_is_bad() -> None:
    rows = _parse("alice@example.com,one\nbob@example.com,x\nalice@example.com,two\n")
    assert rows == [
        UserRow(1, "alice@example.com", "one"),
        UserRow(2, "bob@example.com", "x"),
        BadUserLine(3, "alice@example.com,***", "duplicate of line 1"),
    ]


def test_duplicate_ignores_case_and_unicode_composition() -> None:
    rows = _parse(
        "Alice@Example.com,one\nalice@example.COM,two\nj\u00e9r\u00f4me@example.com,a\n"
        "je\u0301ro\u0302me@example.com,b\n"
    )
    assert isinstance(rows[1], BadUserLine) and rows[1].reason == "duplicate of line 1"
    assert isinstance(rows[2], UserRow)
    assert isinstance(rows[3], BadUserLine) and rows[3].reason == "duplicate of line 3"


def test_refused_first_occurrence_does_not_make_a_duplicate() -> None:
    rows = _parse("alice@example.com,\nalice@example.com,pw\nalice@example.com,again\n")
    assert rows == [
        BadUserLine(1, "alice@example.com,***", "password is empty"),
        UserRow(2, "alice@example.com", "pw"),
        BadUserLine(3, "alice@example.com,***", "duplicate of line 2"),
    ]


def test_duplicate_combined_with_other_problem() -> None:
    rows = _parse("alice@example.com,pw\nalice@example.com,\n")
    assert rows[1] == BadUserLine(
        2, "alice@example.com,***", "password is empty; duplicate of line 1"
    )


def test_bad_quoting_is_reported_and_following_lines_read() -> None:
    rows = _parse('alice@example.com,"unterminated\nbob@example.com,"a"b\ncarol@example.com,pw\n')
    assert isinstance(rows[0], BadUserLine) and rows[0].line == 1
    assert rows[0].reason.startswith("bad CSV quoting")
    assert rows[0].raw == "alice@example.com,***"
    assert isinstance(rows[1], BadUserLine) and rows[1].line == 2
    assert rows[2] == UserRow(3, "carol@example.com", "pw")


def test_password_never_in_bad_line_or_row_repr() -> None:
    rows = _parse(
        'alice@example.com,"s3cr,et",x\nbob@example.com,"hunter2\ncarol@x.org,topsecret\n'
    )
    for row in rows:
        assert "s3cr" not in repr(row)
        assert "hunter2" not in repr(row)
        assert "topsecret" not in repr(row)
    assert isinstance(rows[2], UserRow) and rows[2].password == "topsecret"


def test_byte_order_mark_and_crlf() -> None:
    rows = list(parse_users(["\ufeffjid,password\r\n", "alice@example.com,pw\r\n"], _check))
    assert rows == [UserRow(2, "alice@example.com", "pw")]


def test_whole_text_as_one_string() -> None:
    rows = list(parse_users("alice@example.com,pw\nbob@example.com,pw2", _check))
    assert rows == [UserRow(1, "alice@example.com", "pw"), UserRow(2, "bob@example.com", "pw2")]


def test_unicode_password_and_jid() -> None:
    assert _parse("ユーザー@example.jp,пароль🔑\n") == [
        UserRow(1, "ユーザー@example.jp", "пароль🔑")
    ]


def test_empty_input() -> None:
    assert _parse("") == []
