"""The ``parley`` command line, run through its real entry point.

Most commands go through click's CliRunner in this process; ``serve`` runs as a real subprocess so
that signals and the exit status are the ones an init system sees.
"""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import sqlalchemy as sa
import tomli_w
from click.testing import CliRunner, Result

from parley.accounts import derive_all
from parley.bulk import contact_import
from parley.bulk.contact_import import export_contacts, import_contacts
from parley.bulk.user_import import import_users
from parley.cli import main
from parley.config import load
from parley.storage.db import Database
from parley.storage.repos import Repos, RosterItem
from parley.xmpp.sasl import verify_plain
from tests.clients import Raw

DOMAIN = "example.com"
T = TypeVar("T")

PARLEY = Path(sys.executable).parent / "parley"


# --- helpers -------------------------------------------------------------------------------------


def run(cfg: Path | None, *args: str, input: str | None = None) -> Result:
    argv = (["-c", str(cfg)] if cfg is not None else []) + list(args)
    return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)


def ok(cfg: Path | None, *args: str, input: str | None = None) -> Result:
    res = run(cfg, *args, input=input)
    assert res.exit_code == 0, res.output
    return res


def with_repos(cfg: Path, fn: Callable[[Repos], Awaitable[T]]) -> T:
    async def go() -> T:
        db = Database(load(cfg).storage_url())
        try:
            return await fn(Repos(db))
        finally:
            await db.close()

    return asyncio.run(go())


def set_options(cfg: Path, **sections: dict[str, Any]) -> None:
    data = tomllib.loads(cfg.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    cfg.write_text(tomli_w.dumps(data))


def add_users(cfg: Path, *names: str) -> None:
    for name in names:
        ok(cfg, "user", "add", f"{name}@{DOMAIN}", "--password", f"pw-{name}")


def export_rows(cfg: Path, *args: str) -> set[str]:
    res = ok(cfg, "contacts", "export", *args)
    return set(res.stdout.splitlines())


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    ok(None, "init", str(tmp_path / "srv"), "--domain", DOMAIN)
    return tmp_path / "srv" / "parley.toml"


# --- init / check ---------------------------------------------------------------------------------


def test_init_writes_config_certificate_and_database(tmp_path: Path) -> None:
    d = tmp_path / "srv"
    res = ok(None, "init", str(d), "--domain", "Example.COM")
    assert "parley.toml" in res.stdout
    config = load(d / "parley.toml")
    assert config.server.domain == "example.com"
    assert (d / "certs" / "server.pem").is_file()
    assert (d / "certs" / "server.key").is_file()
    assert (d / "parley.db").is_file()
    ok(d / "parley.toml", "check")


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    d = tmp_path / "srv"
    ok(None, "init", str(d), "--domain", DOMAIN)
    before = (d / "parley.toml").read_text()
    res = run(None, "init", str(d), "--domain", "other.com")
    assert res.exit_code != 0
    assert "exists already" in res.output and "--force" in res.output
    assert (d / "parley.toml").read_text() == before
    ok(None, "init", str(d), "--domain", "other.com", "--force")
    assert load(d / "parley.toml").server.domain == "other.com"


def test_init_refuses_a_bad_domain(tmp_path: Path) -> None:
    res = run(None, "init", str(tmp_path / "srv"), "--domain", "Abc.1om")
    assert res.exit_code != 0
    assert "--domain" in res.output
    assert "the last label '1om' starts with a digit" in res.output
    assert not (tmp_path / "srv" / "parley.toml").exists()


def test_check_is_ok_on_a_fresh_init(cfg: Path) -> None:
    res = ok(cfg, "check")
    assert f"{cfg}: OK" in res.stdout


def test_check_lists_every_problem_of_an_invalid_file(cfg: Path) -> None:
    data = tomllib.loads(cfg.read_text())
    data["server"]["domain"] = "Abc.1om"
    data["server"]["colour"] = "blue"
    data["c2s"]["port"] = 70000
    cfg.write_text(tomli_w.dumps(data))
    res = run(cfg, "check")
    assert res.exit_code != 0
    err = res.stderr
    assert "server.domain = 'Abc.1om'" in err and "starts with a digit" in err
    assert "server.colour = 'blue': unknown setting" in err
    assert "c2s.port = 70000" in err and "65535" in err


def test_check_reports_a_missing_certificate(cfg: Path) -> None:
    set_options(cfg, tls={"cert": "certs/missing.pem"})
    res = run(cfg, "check")
    assert res.exit_code != 0
    assert "tls.cert = 'certs/missing.pem'" in res.stderr
    assert "does not exist" in res.stderr


def test_check_reports_an_unreadable_config_file(tmp_path: Path) -> None:
    res = run(tmp_path / "nowhere.toml", "check")
    assert res.exit_code != 0
    assert "nowhere.toml" in res.stderr and "cannot read" in res.stderr


# --- users ----------------------------------------------------------------------------------------


def _user_states(cfg: Path) -> dict[str, str]:
    res = ok(cfg, "user", "list")
    return dict(line.split("\t") for line in res.stdout.splitlines())


def _password_works(cfg: Path, jid: str, password: str) -> bool:
    async def go(repos: Repos) -> bool:
        found = await repos.users.credentials(jid, "SHA-256")
        assert found is not None
        return verify_plain(password, found[1], "SHA-256")

    return with_repos(cfg, go)


def test_user_lifecycle(cfg: Path) -> None:
    res = ok(cfg, "user", "add", f"alice@{DOMAIN}", "--password", "first")
    assert f"created alice@{DOMAIN}" in res.stdout
    # The password prompt asks twice so that a typo does not lock the user out.
    ok(cfg, "user", "add", f"bob@{DOMAIN}", input="pw-bob\npw-bob\n")
    assert _user_states(cfg) == {f"alice@{DOMAIN}": "enabled", f"bob@{DOMAIN}": "enabled"}
    assert _password_works(cfg, f"alice@{DOMAIN}", "first")

    ok(cfg, "user", "passwd", f"alice@{DOMAIN}", "--password", "second")
    assert _password_works(cfg, f"alice@{DOMAIN}", "second")
    assert not _password_works(cfg, f"alice@{DOMAIN}", "first")

    ok(cfg, "user", "disable", f"alice@{DOMAIN}")
    assert _user_states(cfg)[f"alice@{DOMAIN}"] == "disabled"
    ok(cfg, "user", "enable", f"alice@{DOMAIN}")
    assert _user_states(cfg)[f"alice@{DOMAIN}"] == "enabled"

    ok(cfg, "user", "delete", f"alice@{DOMAIN}")
    assert _user_states(cfg) == {f"bob@{DOMAIN}": "enabled"}


def test_user_add_bad_paths(cfg: Path) -> None:
    add_users(cfg, "alice")
    res = run(cfg, "user", "add", f"a b@{DOMAIN}", "--password", "x")
    assert res.exit_code != 0 and "is not a valid JID" in res.stderr
    res = run(cfg, "user", "add", DOMAIN, "--password", "x")
    assert res.exit_code != 0 and "must be of the form user@domain" in res.stderr
    res = run(cfg, "user", "add", "carol@elsewhere.org", "--password", "x")
    assert res.exit_code != 0 and "elsewhere.org is not a hosted domain" in res.stderr
    res = run(cfg, "user", "add", f"Alice@{DOMAIN}", "--password", "x")
    assert res.exit_code != 0 and "exists already" in res.stderr
    assert list(_user_states(cfg)) == [f"alice@{DOMAIN}"]


@pytest.mark.parametrize("command", [["passwd", "--password", "x"], ["disable"], ["enable"], ["delete"]])
def test_user_commands_on_an_unknown_user(cfg: Path, command: list[str]) -> None:
    res = run(cfg, "user", command[0], f"nobody@{DOMAIN}", *command[1:])
    assert res.exit_code != 0
    assert f"no such user nobody@{DOMAIN}" in res.stderr


def test_user_in_an_added_domain(cfg: Path) -> None:
    ok(cfg, "domain", "add", "second.org")
    ok(cfg, "user", "add", "carol@second.org", "--password", "x")
    res = ok(cfg, "user", "list", "--domain", "second.org")
    assert res.stdout.splitlines() == ["carol@second.org\tenabled"]


# --- user import ----------------------------------------------------------------------------------


def test_user_import_creates_every_good_line(cfg: Path, tmp_path: Path) -> None:
    f = tmp_path / "users.csv"
    f.write_text("jid,password\n" + "".join(f"u{i}@{DOMAIN},secret-{i}\n" for i in range(12)))
    res = ok(cfg, "user", "import", str(f), "--batch", "5")
    assert "created 12 users, 0 lines refused" in res.stdout
    assert len(_user_states(cfg)) == 12
    assert _password_works(cfg, f"u7@{DOMAIN}", "secret-7")


def test_user_import_reports_each_bad_line_and_creates_the_rest(cfg: Path, tmp_path: Path) -> None:
    add_users(cfg, "old")
    f = tmp_path / "users.csv"
    f.write_text(
        f"a1@{DOMAIN},pw-a1-secret\n"        # 1 good
        "\n"                                  # 2 blank
        "bad jid,pw-bad-secret\n"             # 3 not a JID
        f"A1@{DOMAIN},pw-dup-secret\n"       # 4 duplicate of line 1
        "b1@nothosted.org,pw-b1-secret\n"     # 5 domain not hosted
        f"c1@{DOMAIN},\n"                     # 6 empty password
        f"d1@{DOMAIN},pw,extra-secret\n"     # 7 three fields
        f"old@{DOMAIN},pw-old-secret\n"      # 8 exists already
        f"e1@{DOMAIN},pw-e1-secret\n"        # 9 good
    )
    res = run(cfg, "user", "import", str(f), "--batch", "2")
    assert res.exit_code == 1
    out = res.stdout
    assert "line 3: 'bad jid' is not a valid JID" in out
    assert "line 4: duplicate of line 1" in out
    assert "line 5: nothosted.org is not a hosted domain" in out
    assert "line 6: password is empty" in out
    assert "line 7: expected 2 fields, found 3" in out
    assert f"line 8: old@{DOMAIN} exists already" in out
    assert "created 2 users, 6 lines refused" in out
    assert "secret" not in out
    assert set(_user_states(cfg)) == {f"old@{DOMAIN}", f"a1@{DOMAIN}", f"e1@{DOMAIN}"}
    assert _password_works(cfg, f"old@{DOMAIN}", "pw-old")


def test_user_import_stops_cleanly_when_the_database_fails(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load(cfg)
    lines = [f"u{i}@{DOMAIN},pw{i}" for i in range(6)]

    async def go(repos: Repos) -> None:
        real = repos.users.add_many
        calls = 0

        async def add_many(rows: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
            await real(rows)

        monkeypatch.setattr(repos.users, "add_many", add_many)
        result = await import_users(repos, config, lines, 2)
        assert result.created == 2 and result.bad
        assert result.stopped is not None and "after line 2 were not created" in result.stopped
        assert "import stopped" in result.render()
        assert {u.jid for u in await repos.users.list()} == {f"u0@{DOMAIN}", f"u1@{DOMAIN}"}

    with_repos(cfg, go)


# --- contacts -------------------------------------------------------------------------------------


def _counts(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines()[:4]:
        label, _, n = line.rpartition(": ")
        out[label] = int(n)
    return out


def test_contacts_import_reasons_counts_and_export_round_trip(cfg: Path, tmp_path: Path) -> None:
    add_users(cfg, "alice", "bob", "carol", "dan")
    set_options(cfg, presence={"max_contacts": 3})
    f = tmp_path / "contacts.csv"
    f.write_text(
        "userid,user domain,contact id,contact domain,nickname,group\n"   # 1 header
        f"alice,{DOMAIN},bob,{DOMAIN},Bobby,Friends\n"                     # 2 ok, mutual
        f"alice,{DOMAIN},carol,{DOMAIN},,Work\n"                          # 3 ok, mutual
        f"alice,{DOMAIN},ext,partner.org,Ext,Partners\n"                   # 4 ok, one-sided
        f"alice,{DOMAIN},dan,{DOMAIN},Dan,Work\n"                         # 5 list full
        f"alice,{DOMAIN},bob,{DOMAIN}\n"                                   # 6 invalid format
        f"bob,{DOMAIN},zoe,bad_domain.c0m,,G\n"                           # 7 invalid contact domain
        f"bob,{DOMAIN},BOB,{DOMAIN.upper()},,G\n"                          # 8 self
        f"zed,{DOMAIN},alice,{DOMAIN},,G\n"                                # 9 not local (no user)
        f"alice,elsewhere.org,bob,{DOMAIN},,G\n"                           # 10 not local (domain)
        f"dan,{DOMAIN},bob,{DOMAIN},,Team\n"                               # 11 ok, mutual
    )
    log = tmp_path / "result.log"
    res = ok(cfg, "contacts", "import", str(f), "--log", str(log))
    assert log.read_text() == res.stdout.rstrip("\n") + "\n"
    assert _counts(res.stdout) == {
        "Contacts imported successfully": 4,
        "Internal server errors": 0,
        "Contacts ignored": 6,
        "Contacts not processed": 0,
    }
    out = res.stdout
    assert "line 5: User's contact list exceeds limit" in out
    assert "line 6: Invalid format" in out
    assert "line 7: Invalid contact domain" in out
    assert "line 8: Cannot add self as contact" in out
    assert "line 9: User not assigned to local node" in out
    assert "line 10: User not assigned to local node" in out

    imported = {
        f"alice,{DOMAIN},bob,{DOMAIN},Bobby,Friends",
        f"alice,{DOMAIN},carol,{DOMAIN},,Work",
        f"alice,{DOMAIN},ext,partner.org,Ext,Partners",
        f"dan,{DOMAIN},bob,{DOMAIN},,Team",
    }
    mutual = {
        f"bob,{DOMAIN},alice,{DOMAIN},,Friends",
        f"carol,{DOMAIN},alice,{DOMAIN},,Work",
        f"bob,{DOMAIN},dan,{DOMAIN},,Team",
    }
    exported = export_rows(cfg)
    assert exported == imported | mutual
    assert export_rows(cfg, "--user", f"bob@{DOMAIN}") == {r for r in mutual if r.startswith("bob,")}
    assert export_rows(cfg, "--domain", "elsewhere.org") == set()

    async def subscriptions(repos: Repos) -> dict[str, str]:
        _, items = await repos.roster.load(f"bob@{DOMAIN}")
        return {c: i.subscription for c, i in items.items()}

    assert with_repos(cfg, subscriptions) == {f"alice@{DOMAIN}": "both", f"dan@{DOMAIN}": "both"}

    # The export is itself an import file: into a fresh server it gives the same lists back.
    second = tmp_path / "second"
    ok(None, "init", str(second), "--domain", DOMAIN)
    cfg2 = second / "parley.toml"
    add_users(cfg2, "alice", "bob", "carol", "dan")
    dump = tmp_path / "export.csv"
    ok(cfg, "contacts", "export", "-o", str(dump))
    res = ok(cfg2, "contacts", "import", str(dump))
    assert _counts(res.stdout)["Contacts imported successfully"] == len(exported)
    assert _counts(res.stdout)["Contacts ignored"] == 0
    assert export_rows(cfg2) == exported


def test_contacts_partial_add_up_to_the_limit(cfg: Path, tmp_path: Path) -> None:
    # The seed's example: limit 200, the user has 195 and adds 6: 5 added, the 6th refused.
    add_users(cfg, "alice")
    first = tmp_path / "first.csv"
    first.write_text("".join(f"alice,{DOMAIN},c{i},partner.org,,G\n" for i in range(195)))
    res = ok(cfg, "contacts", "import", str(first))
    assert _counts(res.stdout)["Contacts imported successfully"] == 195
    more = tmp_path / "more.csv"
    more.write_text(
        "".join(f"alice,{DOMAIN},n{i},partner.org,,G\n" for i in range(6))
        # An item already on the list is updated, not counted again.
        + f"alice,{DOMAIN},c0,partner.org,Renamed,G\n"
    )
    res = ok(cfg, "contacts", "import", str(more))
    counts = _counts(res.stdout)
    assert counts["Contacts imported successfully"] == 6
    assert counts["Contacts ignored"] == 1
    assert "line 6: User's contact list exceeds limit" in res.stdout
    rows = export_rows(cfg)
    assert len(rows) == 200
    assert f"alice,{DOMAIN},c0,partner.org,Renamed,G" in rows
    assert f"alice,{DOMAIN},n5,partner.org,,G" not in rows


def test_contacts_limit_of_the_contact_side(cfg: Path, tmp_path: Path) -> None:
    add_users(cfg, "alice", "bob", "carol")
    set_options(cfg, presence={"max_contacts": 1})
    f = tmp_path / "c.csv"
    f.write_text(f"bob,{DOMAIN},carol,{DOMAIN},,G\nalice,{DOMAIN},bob,{DOMAIN},,G\n")
    res = ok(cfg, "contacts", "import", str(f))
    assert _counts(res.stdout)["Contacts imported successfully"] == 1
    assert f"line 2: User's contact list exceeds limit: the contact bob@{DOMAIN}" in res.stdout
    assert export_rows(cfg) == {f"bob,{DOMAIN},carol,{DOMAIN},,G", f"carol,{DOMAIN},bob,{DOMAIN},,G"}


def test_contacts_existing_items_keep_the_contacts_own_name_and_groups(cfg: Path, tmp_path: Path) -> None:
    add_users(cfg, "alice", "bob")

    async def seed(repos: Repos) -> None:
        await repos.roster.save(f"bob@{DOMAIN}", [RosterItem(f"alice@{DOMAIN}", "Al", "to", groups=["Mine"])])
        await repos.roster.save(f"alice@{DOMAIN}", [RosterItem(f"bob@{DOMAIN}", "B", "from", groups=["Old"])])

    with_repos(cfg, seed)
    f = tmp_path / "c.csv"
    f.write_text(f"alice,{DOMAIN},bob,{DOMAIN},Bobby,New\n")
    ok(cfg, "contacts", "import", str(f))
    assert export_rows(cfg) == {f"alice,{DOMAIN},bob,{DOMAIN},Bobby,New", f"bob,{DOMAIN},alice,{DOMAIN},Al,Mine"}

    async def subs(repos: Repos) -> list[str]:
        return [i.subscription for _, i in await repos.roster.all_items()]

    assert with_repos(cfg, subs) == ["both", "both"]


def test_contacts_several_groups_round_trip(cfg: Path, tmp_path: Path) -> None:
    add_users(cfg, "alice")
    f = tmp_path / "c.csv"
    f.write_text(f"alice,{DOMAIN},x,partner.org,X,One\nalice,{DOMAIN},x,partner.org,X,Two\n")
    ok(cfg, "contacts", "import", str(f))

    async def groups(repos: Repos) -> list[str]:
        _, items = await repos.roster.load(f"alice@{DOMAIN}")
        return items["x@partner.org"].groups

    assert with_repos(cfg, groups) == ["One", "Two"]
    assert export_rows(cfg) == {f"alice,{DOMAIN},x,partner.org,X,One", f"alice,{DOMAIN},x,partner.org,X,Two"}


def _failing(exc_text: str) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("statement", {}, Exception(exc_text))


async def test_contacts_internal_error_on_one_line_does_not_stop_the_rest(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(cfg)
    db = Database(config.storage_url())
    repos = Repos(db)
    try:
        for name in ("alice", "bob", "carol"):
            await repos.users.add(f"{name}@{DOMAIN}", DOMAIN, derive_all("pw"))
        real = repos.roster.save

        async def save(owner: str, items: Any, removed: Any = ()) -> int:
            if owner == f"carol@{DOMAIN}":
                raise _failing("constraint trouble")
            return await real(owner, items, removed)

        monkeypatch.setattr(repos.roster, "save", save)
        lines = [f"alice,{DOMAIN},bob,{DOMAIN},,G", f"alice,{DOMAIN},carol,{DOMAIN},,G",
                 f"alice,{DOMAIN},ext,partner.org,,G"]
        report = await import_contacts(repos, config, lines)
        assert (report.succeeded, report.internal_errors, report.unprocessed) == (2, 1, 0)
        _, items = await repos.roster.load(f"alice@{DOMAIN}")
        # The half that was written for the failed line is taken back.
        assert set(items) == {f"bob@{DOMAIN}", "ext@partner.org"}
    finally:
        await db.close()


async def test_contacts_lost_database_counts_the_rest_as_unprocessed(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contact_import, "CHUNK", 2)
    config = load(cfg)
    db = Database(config.storage_url())
    repos = Repos(db)
    try:
        await repos.users.add(f"alice@{DOMAIN}", DOMAIN, derive_all("pw"))
        gone = False
        saves = 0

        def breaks(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                if gone:
                    raise _failing("connection refused")
                return await fn(*args, **kwargs)

            return wrapped

        real_save = repos.roster.save

        async def save(owner: str, items: Any, removed: Any = ()) -> int:
            nonlocal gone, saves
            saves += 1
            result = await real_save(owner, items, removed)
            # The database vanishes right after the first chunk is written.
            gone = True
            return result

        monkeypatch.setattr(repos.roster, "save", breaks(save))
        monkeypatch.setattr(repos.users, "existing", breaks(repos.users.existing))
        monkeypatch.setattr(repos.roster, "all_items", breaks(repos.roster.all_items))
        monkeypatch.setattr(repos.domains, "list", breaks(repos.domains.list))
        lines = [f"alice,{DOMAIN},c{i},partner.org,,G" for i in range(5)] + ["broken line"]
        report = await import_contacts(repos, config, lines)
        assert report.succeeded == 2
        assert report.internal_errors == 0
        assert report.unprocessed == 4
        assert saves == 1
    finally:
        await db.close()


def test_contacts_export_skips_hidden_items_and_fills_the_default_group(cfg: Path) -> None:
    add_users(cfg, "alice")

    async def seed(repos: Repos) -> None:
        await repos.roster.save(f"alice@{DOMAIN}", [
            RosterItem("plain@partner.org", None, "both"),
            RosterItem("pending@partner.org", None, "none", pending_in=True, visible=False),
            RosterItem("gateway.partner.org", None, "both"),
        ])

    with_repos(cfg, seed)
    out = io.StringIO()

    async def go(repos: Repos) -> int:
        return await export_contacts(repos, out, None, None)

    assert with_repos(cfg, go) == 1
    assert out.getvalue() == f"alice,{DOMAIN},plain,partner.org,,General\n"


# --- domains --------------------------------------------------------------------------------------


def _domains(cfg: Path) -> dict[str, str]:
    res = ok(cfg, "domain", "list")
    return {parts[0]: parts[1] for parts in (line.split("\t") for line in res.stdout.splitlines())}


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Abc.1om", "the last label '1om' starts with a digit"),
        ("-bad.com", "label '-bad' starts with '-'"),
        (".".join(["a" * 60] * 5) + ".com", "characters long (maximum 255)"),
        ("bad_name.com", "may only contain letters, digits"),
    ],
)
def test_domain_add_refuses_invalid_names(cfg: Path, name: str, why: str) -> None:
    # "--" so that a name starting with "-" is the argument, as an administrator would type it.
    res = run(cfg, "domain", "add", "--", name)
    assert res.exit_code != 0
    assert why in res.stderr
    assert list(_domains(cfg)) == [DOMAIN]


def test_domain_add_list_delete(cfg: Path) -> None:
    res = ok(cfg, "domain", "add", "Second.ORG")
    assert "added second.org" in res.stdout
    res = run(cfg, "domain", "add", "second.org")
    assert res.exit_code != 0 and "hosted already" in res.stderr
    res = run(cfg, "domain", "add", DOMAIN)
    assert res.exit_code != 0 and "default domain" in res.stderr
    assert _domains(cfg) == {DOMAIN: "admin-managed (default)", "second.org": "admin-managed"}

    ok(cfg, "user", "add", "carol@second.org", "--password", "x")
    assert _domains(cfg)["second.org"] == "system-managed"
    res = run(cfg, "domain", "delete", "second.org")
    assert res.exit_code != 0 and "system-managed: 1 users" in res.stderr
    assert "second.org" in _domains(cfg)

    res = run(cfg, "domain", "delete", DOMAIN)
    assert res.exit_code != 0 and "default domain and cannot be deleted" in res.stderr

    ok(cfg, "user", "delete", "carol@second.org")
    ok(cfg, "domain", "delete", "second.org")
    assert list(_domains(cfg)) == [DOMAIN]
    res = run(cfg, "domain", "delete", "second.org")
    assert res.exit_code != 0 and "not a hosted domain" in res.stderr


def test_domain_list_shows_the_default_domain_system_managed_with_users(cfg: Path) -> None:
    add_users(cfg, "alice")
    assert _domains(cfg) == {DOMAIN: "system-managed (default)"}


# --- serve ----------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"parley serve exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"parley serve did not listen on port {port}")


class _Ports:
    """What tests.clients needs of a server: its listening ports."""

    def __init__(self, c2s: int, c2s_tls: int):
        self.ports = {"c2s": c2s, "c2s_tls": c2s_tls}


async def _sign_in(ports: _Ports) -> bytes:
    raw = await Raw.open(cast(Any, ports), direct_tls=True)
    try:
        return await raw.login("alice", "pw-alice", domain=DOMAIN, resource="cli")
    finally:
        await raw.close()


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], _Ports, Path]]:
    c2s, tls = _free_ports(2)
    d = tmp_path / "srv"
    ok(None, "init", str(d), "--domain", DOMAIN, "--c2s-port", str(c2s), "--c2s-tls-port", str(tls))
    cfg = d / "parley.toml"
    add_users(cfg, "alice")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(PARLEY), "-c", str(cfg), "serve"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, _Ports(c2s, tls), tmp_path / "serve.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def test_serve_signs_in_and_stops_cleanly_on_sigterm(
    serving: tuple[subprocess.Popen[bytes], _Ports, Path],
) -> None:
    proc, ports, log = serving
    _wait_until_listening(proc, ports.ports["c2s_tls"])
    _wait_until_listening(proc, ports.ports["c2s"])
    bound = asyncio.run(_sign_in(ports))
    assert f"<jid>alice@{DOMAIN}/cli</jid>".encode() in bound
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()


def test_serve_with_an_invalid_config_exits_with_the_problem(cfg: Path) -> None:
    set_options(cfg, c2s={"port": 70000})
    proc = subprocess.run([str(PARLEY), "-c", str(cfg), "serve"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "c2s.port = 70000" in proc.stderr

