from __future__ import annotations

import io

import pytest

from parley.bulk.contacts import (
    ContactRow,
    ImportReport,
    Reason,
    Rejected,
    format_contact_row,
    parse_contacts,
    split_im_address,
)

SEED_LINE = "userA,example.com,userB,example.com,buddyB,General"


def _one(line: str) -> ContactRow | Rejected:
    results = list(parse_contacts([line]))
    assert len(results) == 1
    return results[0]


def _rejected(line: str) -> Rejected:
    result = _one(line)
    assert isinstance(result, Rejected), result
    return result


def _line(
    user_id: str = "userA",
    user_domain: str = "example.com",
    contact_id: str = "userB",
    contact_domain: str = "example.com",
    nickname: str = "buddyB",
    group: str = "General",
) -> str:
    return ",".join([user_id, user_domain, contact_id, contact_domain, nickname, group])


# Reasons


def test_reason_texts_are_the_seed_texts() -> None:
    assert [str(reason) for reason in Reason] == [
        "Invalid format",
        "Invalid contact domain",
        "Cannot add self as contact",
        "User's contact list exceeds limit",
        "User not assigned to local node",
    ]


# Parsing


def test_seed_example() -> None:
    assert _one(SEED_LINE) == ContactRow(
        line=1,
        user_id="userA",
        user_domain="example.com",
        contact_id="userB",
        contact_domain="example.com",
        nickname="buddyB",
        group="General",
    )


def test_user_id_may_contain_at_sign() -> None:
    row = _one("bjones@usa,example.com,cdoe@uk,example.com,,General")
    assert isinstance(row, ContactRow)
    assert row.user_id == "bjones@usa" and row.contact_id == "cdoe@uk"


def test_nickname_is_optional() -> None:
    row = _one(_line(nickname=""))
    assert isinstance(row, ContactRow) and row.nickname == ""


def test_fields_are_trimmed_and_domains_lower_cased() -> None:
    row = _one(" UserA , Example.COM , UserB , IM.Example.Com , Buddy B , Friends ")
    assert row == ContactRow(
        1, "UserA", "example.com", "UserB", "im.example.com", "Buddy B", "Friends"
    )


@pytest.mark.parametrize(
    "header",
    [
        "User ID,User Domain,Contact ID,Contact Domain,Nickname,Group Name",
        "userid,user domain,contact id,contact domain,nickname,group",
        "USERID,x",
        " user id ,whatever",
        "<User ID>,<User Domain>,<Contact ID>,<Contact Domain>,<Nickname>,<Group Name>",
    ],
)
def test_header_is_skipped(header: str) -> None:
    results = list(parse_contacts([header, SEED_LINE]))
    assert len(results) == 1
    assert isinstance(results[0], ContactRow) and results[0].line == 2


def test_header_after_blank_lines_is_skipped() -> None:
    results = list(parse_contacts(["", "  ", "User ID,a,b,c,d,e", SEED_LINE]))
    assert [r.line for r in results] == [4]


def test_header_only_on_first_line() -> None:
    results = list(
        parse_contacts([SEED_LINE, "userid,user domain,contact id,contact domain,nickname,group"])
    )
    assert isinstance(results[1], Rejected) and results[1].line == 2


def test_a_non_header_first_line_is_data() -> None:
    results = list(parse_contacts([SEED_LINE, SEED_LINE]))
    assert [r.line for r in results] == [1, 2]
    assert all(isinstance(r, ContactRow) for r in results)


def test_blank_lines_skipped_line_numbers_physical() -> None:
    text = f"{SEED_LINE}\n\n   \n{SEED_LINE}\n"
    results = list(parse_contacts(io.StringIO(text)))
    assert [r.line for r in results] == [1, 4]


def test_file_object_crlf_and_byte_order_mark() -> None:
    text = f"\ufeffUser ID,User Domain,Contact ID,Contact Domain,Nickname,Group Name\r\n{SEED_LINE}\r\n"
    results = list(parse_contacts(io.StringIO(text, newline="")))
    assert len(results) == 1
    assert isinstance(results[0], ContactRow) and results[0].group == "General"


def test_whole_text_as_one_string() -> None:
    results = list(parse_contacts(f"{SEED_LINE}\n{SEED_LINE}"))
    assert [r.line for r in results] == [1, 2]


def test_byte_order_mark_without_header() -> None:
    row = _one("\ufeff" + SEED_LINE)
    assert isinstance(row, ContactRow) and row.user_id == "userA"


def test_quoted_fields() -> None:
    row = _one('"smith, john",example.com,"o""brien",example.com,"Smith, J ""JJ""","Team, A"')
    assert row == ContactRow(
        1, "smith, john", "example.com", 'o"brien', "example.com", 'Smith, J "JJ"', "Team, A"
    )


def test_space_before_quoted_field() -> None:
    row = _one('userA, example.com, userB, example.com, "Bud, B", General')
    assert isinstance(row, ContactRow) and row.nickname == "Bud, B"


@pytest.mark.parametrize("nickname", ["山田太郎", "김철수", "Zoë 🎉", "Ölçü", "王小明"])
def test_unicode_nicknames(nickname: str) -> None:
    row = _one(_line(nickname=nickname))
    assert isinstance(row, ContactRow) and row.nickname == nickname


def test_unicode_length_counts_characters() -> None:
    row = _one(_line(nickname="名" * 255, group="組" * 255))
    assert isinstance(row, ContactRow)
    rejected = _rejected(_line(nickname="名" * 256))
    assert rejected.reason is Reason.INVALID_FORMAT


def test_rejected_keeps_raw_line_without_terminator() -> None:
    results = list(parse_contacts(["userA,example.com\n"]))
    assert results == [
        Rejected(1, "userA,example.com", Reason.INVALID_FORMAT, "expected 6 fields, found 2")
    ]


# Invalid format


@pytest.mark.parametrize("count", [1, 5, 7])
def test_wrong_field_count(count: int) -> None:
    line = ",".join(["x"] * count)
    rejected = _rejected(line)
    assert rejected.reason is Reason.INVALID_FORMAT
    assert rejected.detail == f"expected 6 fields, found {count}"


def test_trailing_comma_is_a_wrong_field_count() -> None:
    assert _rejected(SEED_LINE + ",").detail == "expected 6 fields, found 7"


@pytest.mark.parametrize(
    ("field", "label"),
    [
        ("user_id", "User ID"),
        ("user_domain", "User Domain"),
        ("contact_id", "Contact ID"),
        ("contact_domain", "Contact Domain"),
        ("group", "Group Name"),
    ],
)
def test_missing_required_field(field: str, label: str) -> None:
    for empty in ("", "   ", '""'):
        rejected = _rejected(_line(**{field: empty}))
        assert rejected.reason is Reason.INVALID_FORMAT
        assert rejected.detail == f"{label} is missing"


def test_several_missing_fields_all_named() -> None:
    rejected = _rejected(",example.com,userB,,,")
    assert rejected.reason is Reason.INVALID_FORMAT
    assert rejected.detail == "User ID is missing; Contact Domain is missing; Group Name is missing"


@pytest.mark.parametrize(
    ("field", "label", "limit"),
    [
        ("user_id", "User ID", 132),
        ("contact_id", "Contact ID", 132),
        ("nickname", "Nickname", 255),
        ("group", "Group Name", 255),
    ],
)
def test_length_limits(field: str, label: str, limit: int) -> None:
    assert isinstance(_one(_line(**{field: "x" * limit})), ContactRow)
    rejected = _rejected(_line(**{field: "x" * (limit + 1)}))
    assert rejected.reason is Reason.INVALID_FORMAT
    assert rejected.detail == f"{label} is {limit + 1} characters long (maximum {limit})"


def test_user_domain_length_limit() -> None:
    ok = "a" * 60 + "." + "b" * 63 + ".com"
    assert len(ok) == 128
    assert isinstance(_one(_line(user_domain=ok)), ContactRow)
    too_long = "a" * 61 + "." + "b" * 63 + ".com"
    rejected = _rejected(_line(user_domain=too_long))
    assert rejected.reason is Reason.INVALID_FORMAT
    assert rejected.detail == "User Domain is 129 characters long (maximum 128)"


def test_user_domain_format_is_not_checked_here() -> None:
    # Only the contact domain has a format rule; the user's domain is checked against hosted
    # domains by the caller.
    assert isinstance(_one(_line(user_domain="im.1local")), ContactRow)


def test_control_characters_refused() -> None:
    rejected = _rejected(_line(nickname="bud\x00dy"))
    assert rejected.reason is Reason.INVALID_FORMAT
    assert rejected.detail == "Nickname contains a control character"
    assert _rejected(_line(group="a\tb")).detail == "Group Name contains a control character"


@pytest.mark.parametrize(
    "line",
    ['userA,"example.com,userB,example.com,b,General', 'userA,"exa"mple.com,userB,example.com,b,G'],
)
def test_bad_quoting(line: str) -> None:
    rejected = _rejected(line)
    assert rejected.reason is Reason.INVALID_FORMAT
    assert rejected.detail.startswith("bad CSV quoting")
    assert rejected.raw == line


def test_bad_quoting_does_not_swallow_following_lines() -> None:
    results = list(parse_contacts(['userA,"example.com,userB,example.com,b,General', SEED_LINE]))
    assert isinstance(results[0], Rejected)
    assert isinstance(results[1], ContactRow) and results[1].line == 2


def test_format_problem_takes_precedence_but_detail_lists_domain_problems() -> None:
    rejected = _rejected(_line(user_id="", contact_domain="-bad.c"))
    assert rejected.reason is Reason.INVALID_FORMAT
    assert rejected.detail.startswith("User ID is missing; ")
    assert "Contact Domain label '-bad'" in rejected.detail


# Contact domain


@pytest.mark.parametrize(
    "domain",
    [
        "example.com",
        "EXAMPLE.COM",
        "a-b.example.co.jp",
        "123.example.com",
        "x.io",
        "localhost",
        "a" * 63 + ".com",
    ],
)
def test_valid_contact_domains(domain: str) -> None:
    assert isinstance(_one(_line(contact_domain=domain)), ContactRow)


def test_contact_domain_length_boundary() -> None:
    ok = "a" * 60 + "." + "b" * 63 + ".com"
    assert len(ok) == 128
    assert isinstance(_one(_line(contact_domain=ok)), ContactRow)
    too_long = "a" * 61 + "." + "b" * 63 + ".com"
    rejected = _rejected(_line(contact_domain=too_long))
    assert rejected.reason is Reason.INVALID_CONTACT_DOMAIN
    assert rejected.detail == "Contact Domain is 129 characters long (maximum 128)"


def test_contact_domain_label_length_boundary() -> None:
    assert isinstance(_one(_line(contact_domain="a" * 63 + ".com")), ContactRow)
    rejected = _rejected(_line(contact_domain="a" * 64 + ".com"))
    assert rejected.reason is Reason.INVALID_CONTACT_DOMAIN
    assert "64 characters long (maximum 63)" in rejected.detail


@pytest.mark.parametrize(
    ("domain", "fragment"),
    [
        ("exa_mple.com", "(found '_')"),
        ("exämple.com", "found 'ä'"),
        ("exa mple.com", "found ' '"),
        ("user@example.com", "found '@'"),
        ("-example.com", "label '-example' starts or ends with '-'"),
        ("example-.com", "label 'example-' starts or ends with '-'"),
        ("example.com-", "label 'com-' starts or ends with '-'"),
        ("example..com", "empty label"),
        (".example.com", "empty label"),
        ("example.com.", "empty label"),
        ("example.c", "top-level label 'c'"),
        ("example.c0m", "top-level label 'c0m'"),
        ("Abc.1om", "top-level label '1om'"),
        ("192.168.0.1", "top-level label '1'"),
        ("example.xn--p1ai", "top-level label 'xn--p1ai'"),
    ],
)
def test_invalid_contact_domains(domain: str, fragment: str) -> None:
    rejected = _rejected(_line(contact_domain=domain))
    assert rejected.reason is Reason.INVALID_CONTACT_DOMAIN
    assert fragment in rejected.detail


def test_contact_domain_reports_every_problem() -> None:
    rejected = _rejected(_line(contact_domain="-a_b..c"))
    assert rejected.reason is Reason.INVALID_CONTACT_DOMAIN
    assert rejected.detail.count("; ") == 3


# Self contact


@pytest.mark.parametrize(
    "line",
    [
        "userA,example.com,userA,example.com,me,General",
        "userA,example.com,USERA,Example.COM,me,General",
        "bjones@usa,example.com,bjones@usa,example.com,,General",
    ],
)
def test_self_contact(line: str) -> None:
    rejected = _rejected(line)
    assert rejected.reason is Reason.SELF_CONTACT
    assert "is the user" in rejected.detail


def test_same_id_other_domain_is_not_self() -> None:
    assert isinstance(_one("userA,example.com,userA,example.org,twin,General"), ContactRow)


def test_self_contact_only_checked_on_well_formed_lines() -> None:
    assert _rejected("userA,example.com,userA,example.com,me,").reason is Reason.INVALID_FORMAT


# Export


def test_format_seed_example() -> None:
    line = format_contact_row("userA", "example.com", "userB", "example.com", "buddyB", "General")
    assert line == SEED_LINE


def test_format_blank_nickname_and_default_group() -> None:
    assert (
        format_contact_row("a", "example.com", "b", "example.com", None, None)
        == "a,example.com,b,example.com,,General"
    )
    assert format_contact_row(
        "a", "example.com", "b", "example.com", None, "", default_group="Contacts"
    ) == ("a,example.com,b,example.com,,Contacts")


def test_format_quotes_commas_and_quotes() -> None:
    line = format_contact_row(
        "smith, john", "example.com", 'o"brien', "example.com", 'J, "JJ"', "Team A"
    )
    assert line == '"smith, john",example.com,"o""brien",example.com,"J, ""JJ""",Team A'


def test_format_has_no_line_terminator_and_no_line_breaks() -> None:
    line = format_contact_row("a", "example.com", "b", "example.com", "two\nlines", "g\r\nh")
    assert "\n" not in line and "\r" not in line
    assert line == "a,example.com,b,example.com,two lines,g h"


@pytest.mark.parametrize(
    ("nickname", "group"),
    [
        ("buddyB", "General"),
        (None, None),
        ("山田, 太郎", 'Team "Ω"'),
        ("", "Friends"),
        ("Zoë 🎉", "Ölçü"),
    ],
)
def test_export_then_import_round_trip(nickname: str | None, group: str | None) -> None:
    line = format_contact_row("bjones@usa", "example.com", "userB", "example.com", nickname, group)
    row = _one(line)
    assert row == ContactRow(
        1, "bjones@usa", "example.com", "userB", "example.com", nickname or "", group or "General"
    )


# IM address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("bjones@usa@example.com", ("bjones@usa", "example.com")),
        ("userA@example.com", ("userA", "example.com")),
        ("a@b@c@d.org", ("a@b@c", "d.org")),
    ],
)
def test_split_im_address(address: str, expected: tuple[str, str]) -> None:
    assert split_im_address(address) == expected


@pytest.mark.parametrize("address", ["userA", "", "@example.com", "userA@"])
def test_split_im_address_errors(address: str) -> None:
    with pytest.raises(ValueError):
        split_im_address(address)


# Result log


def test_report_empty() -> None:
    assert ImportReport().render() == (
        "Contacts imported successfully: 0\n"
        "Internal server errors: 0\n"
        "Contacts ignored: 0\n"
        "Contacts not processed: 0\n"
    )


def test_report_with_ignored_contacts() -> None:
    report = ImportReport(succeeded=3, internal_errors=1, unprocessed=2)
    report.ignored.append(
        Rejected(
            7,
            "userA,example.com,userA,example.com,me,General",
            Reason.SELF_CONTACT,
            "userA@example.com is the user userA@example.com",
        )
    )
    report.ignored.append(
        Rejected(4, "userC,example.com,userD,example.com,,General", Reason.LIST_FULL, "")
    )
    report.ignored.append(
        Rejected(
            5, "userE,example.com,userF,example.com,,General", Reason.NOT_LOCAL, "userE@example.com"
        )
    )
    assert report.render() == (
        "Contacts imported successfully: 3\n"
        "Internal server errors: 1\n"
        "Contacts ignored: 3\n"
        "Contacts not processed: 2\n"
        "\n"
        "Ignored contacts:\n"
        "line 4: User's contact list exceeds limit: userC,example.com,userD,example.com,,General\n"
        "line 5: User not assigned to local node: userE@example.com: userE,example.com,userF,example.com,,General\n"
        "line 7: Cannot add self as contact: userA@example.com is the user userA@example.com: "
        "userA,example.com,userA,example.com,me,General\n"
    )


def test_report_from_parse() -> None:
    report = ImportReport()
    for result in parse_contacts(
        [SEED_LINE, "userA,example.com,userB,bad_domain.com,,General", "x"]
    ):
        if isinstance(result, Rejected):
            report.ignored.append(result)
        else:
            report.succeeded += 1
    text = report.render()
    assert "Contacts imported successfully: 1\n" in text
    assert "Contacts ignored: 2\n" in text
    assert "line 2: Invalid contact domain: Contact Domain may only contain" in text
    assert "line 3: Invalid format: expected 6 fields, found 1: x\n" in text
