"""The repositories against each storage backend: SQLite and PostgreSQL must behave alike."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from parley.storage import schema as t
from parley.storage.db import Database
from parley.storage.repos import NoSuchUser, Repos, RosterItem, UserExists
from parley.xmpp.sasl import ScramCredentials

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
DAVE = "dave@other.test"

# Every byte value, so a backend that mangles NULs or high bytes in binary columns shows up.
ALL_BYTES = bytes(range(256))


def creds(seed: int = 1) -> dict[str, ScramCredentials]:
    return {
        "SHA-1": ScramCredentials(bytes([seed]) + ALL_BYTES, 4096 + seed, b"\x00" * 20, b"\xff" * 20),
        "SHA-256": ScramCredentials(ALL_BYTES[::-1], 8192, bytes([seed]) * 32, b"\x00\x01" * 16),
    }


async def add(repos: Repos, *jids: str) -> None:
    for jid in jids:
        await repos.users.add(jid, jid.rpartition("@")[2], creds())


async def credential_rows(db: Database, jid: str) -> int:
    async with db.connect() as c:
        q = sa.select(sa.func.count()).select_from(t.credentials).where(t.credentials.c.jid == jid)
        return int(await c.scalar(q) or 0)


# --- migrations ------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_reaches_head(db_url: str) -> None:
    head = Database.head_revision()
    assert head is not None
    first = Database(db_url)
    try:
        await first.migrate()
        await first.migrate()
        assert await first.current_revision() == head
    finally:
        await first.close()
    again = Database(db_url)
    try:
        await again.migrate()
        assert await again.current_revision() == head
    finally:
        await again.close()


# --- users -----------------------------------------------------------------------------------


async def test_user_add_get_and_duplicate(repos: Repos) -> None:
    assert await repos.users.get(ALICE) is None
    await add(repos, ALICE)
    rec = await repos.users.get(ALICE)
    assert rec is not None
    assert rec.jid == ALICE
    assert rec.enabled is True
    assert rec.created_at > 0
    with pytest.raises(UserExists):
        await repos.users.add(ALICE, "example.test", creds(2))
    # The refused duplicate left the original keys alone.
    found = await repos.users.credentials(ALICE, "SHA-1")
    assert found is not None
    assert found[1] == creds()["SHA-1"]


async def test_racing_adds_of_one_jid(repos: Repos) -> None:
    # All of them may pass the existence check before one inserts; the losers still get UserExists.
    results = await asyncio.gather(
        *(repos.users.add(ALICE, "example.test", creds(i)) for i in range(4)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, UserExists) for r in results if r is not None)
    assert [u.jid for u in await repos.users.list()] == [ALICE]


async def test_credentials_round_trip_bytes(repos: Repos) -> None:
    keys = creds(7)
    await repos.users.add(ALICE, "example.test", keys)
    for mech, expected in keys.items():
        found = await repos.users.credentials(ALICE, mech)
        assert found is not None
        enabled, got = found
        assert enabled is True
        assert got == expected
        assert isinstance(got.salt, bytes)
        assert isinstance(got.stored_key, bytes)
        assert isinstance(got.server_key, bytes)
    assert await repos.users.credentials(ALICE, "SHA-512") is None
    assert await repos.users.credentials(BOB, "SHA-1") is None


async def test_set_credentials_replaces_keys(repos: Repos, db: Database) -> None:
    await add(repos, ALICE)
    await repos.users.set_credentials(ALICE, {"SHA-256": creds(9)["SHA-256"]})
    assert await repos.users.credentials(ALICE, "SHA-1") is None
    found = await repos.users.credentials(ALICE, "SHA-256")
    assert found is not None and found[1] == creds(9)["SHA-256"]
    assert await credential_rows(db, ALICE) == 1
    with pytest.raises(NoSuchUser):
        await repos.users.set_credentials(BOB, creds())


async def test_set_enabled(repos: Repos) -> None:
    await add(repos, ALICE)
    await repos.users.set_enabled(ALICE, False)
    rec = await repos.users.get(ALICE)
    assert rec is not None and rec.enabled is False
    found = await repos.users.credentials(ALICE, "SHA-256")
    assert found is not None and found[0] is False
    # Writing the value it already has still finds the user.
    await repos.users.set_enabled(ALICE, False)
    await repos.users.set_enabled(ALICE, True)
    rec = await repos.users.get(ALICE)
    assert rec is not None and rec.enabled is True
    with pytest.raises(NoSuchUser):
        await repos.users.set_enabled(BOB, False)


async def test_list_and_count_in_domain(repos: Repos) -> None:
    await add(repos, CAROL, DAVE, ALICE, BOB)
    assert [u.jid for u in await repos.users.list()] == [ALICE, BOB, CAROL, DAVE]
    assert [u.jid for u in await repos.users.list("example.test")] == [ALICE, BOB, CAROL]
    assert [u.jid for u in await repos.users.list("other.test")] == [DAVE]
    assert await repos.users.list("nowhere.test") == []
    assert await repos.users.count_in_domain("example.test") == 3
    assert await repos.users.count_in_domain("other.test") == 1
    assert await repos.users.count_in_domain("nowhere.test") == 0


async def test_add_many_and_existing(repos: Repos) -> None:
    rows = [(f"u{i}@example.test", "example.test", creds(i)) for i in range(3)]
    await repos.users.add_many(rows)
    assert await repos.users.count_in_domain("example.test") == 3
    found = await repos.users.credentials("u2@example.test", "SHA-1")
    assert found is not None and found[1] == creds(2)["SHA-1"]
    assert await repos.users.existing(["u0@example.test", "u9@example.test", "u2@example.test"]) == {
        "u0@example.test", "u2@example.test",
    }
    assert await repos.users.existing([]) == set()
    await repos.users.add_many([])
    assert await repos.users.count_in_domain("example.test") == 3


async def test_add_many_is_all_or_nothing(repos: Repos, db: Database) -> None:
    await add(repos, BOB)
    batch = [
        (ALICE, "example.test", creds(1)),
        (BOB, "example.test", creds(2)),
        (CAROL, "example.test", creds(3)),
    ]
    with pytest.raises(sa.exc.IntegrityError):
        await repos.users.add_many(batch)
    assert [u.jid for u in await repos.users.list()] == [BOB]
    assert await credential_rows(db, ALICE) == 0
    assert await credential_rows(db, CAROL) == 0
    # BOB's own keys were not touched by the failed batch.
    found = await repos.users.credentials(BOB, "SHA-1")
    assert found is not None and found[1] == creds()["SHA-1"]


async def test_add_many_with_a_jid_twice_inserts_nothing(repos: Repos) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        await repos.users.add_many([(ALICE, "example.test", creds()), (ALICE, "example.test", creds())])
    assert await repos.users.list() == []


async def test_delete_user_cascades(repos: Repos, db: Database) -> None:
    await add(repos, ALICE, BOB, CAROL)
    await repos.roster.save(ALICE, [RosterItem(BOB, subscription="both"), RosterItem(CAROL)])
    await repos.roster.save(BOB, [RosterItem(ALICE, subscription="both"), RosterItem(CAROL)])
    await repos.roster.save(CAROL, [RosterItem(ALICE, subscription="to")])
    await repos.offline.store(ALICE, BOB, "<message>for alice</message>")
    await repos.offline.store(BOB, ALICE, "<message>for bob</message>")
    await repos.docs.set_vcard(ALICE, "<vCard/>")
    await repos.docs.set_private(ALICE, {"urn:x": "<x/>"})
    await repos.docs.set_last(ALICE, 1.5, "gone")
    await repos.policy.add(ALICE, "block", [DAVE])
    await repos.policy.set_settings(ALICE, "block", True)

    await repos.users.delete(ALICE)

    assert await repos.users.get(ALICE) is None
    assert await repos.users.credentials(ALICE, "SHA-1") is None
    assert await credential_rows(db, ALICE) == 0
    # Items in other rosters that pointed at the deleted account are gone, the rest stay.
    _, bob_items = await repos.roster.load(BOB)
    assert set(bob_items) == {CAROL}
    _, carol_items = await repos.roster.load(CAROL)
    assert carol_items == {}
    assert await repos.roster.count_watchers(ALICE) == 0
    version, alice_items = await repos.roster.load(ALICE)
    assert (version, alice_items) == (0, {})
    assert await repos.offline.fetch(ALICE) == []
    assert [m.stanza for m in await repos.offline.fetch(BOB)] == ["<message>for bob</message>"]
    assert await repos.docs.get_vcard(ALICE) is None
    assert await repos.docs.get_private(ALICE, "urn:x") is None
    assert await repos.docs.get_last(ALICE) is None
    assert await repos.policy.load(ALICE) == ({"allow": set(), "block": set()}, None, None)

    with pytest.raises(NoSuchUser):
        await repos.users.delete(ALICE)
    # Nothing left behind blocks making the account again.
    await repos.users.add(ALICE, "example.test", creds(5))
    found = await repos.users.credentials(ALICE, "SHA-256")
    assert found is not None and found[1] == creds(5)["SHA-256"]


# --- domains ---------------------------------------------------------------------------------


async def test_domains(repos: Repos) -> None:
    assert await repos.domains.list() == []
    assert await repos.domains.add("b.test") is True
    assert await repos.domains.add("a.test", managed_by="system") is True
    assert await repos.domains.add("b.test") is False
    assert await repos.domains.add("b.test", managed_by="system") is False
    assert await repos.domains.list() == [("a.test", "system"), ("b.test", "admin")]
    assert await repos.domains.delete("b.test") is True
    assert await repos.domains.delete("b.test") is False
    assert await repos.domains.list() == [("a.test", "system")]


# --- roster ----------------------------------------------------------------------------------


async def test_roster_round_trip_with_unicode_groups(repos: Repos) -> None:
    assert await repos.roster.load(ALICE) == (0, {})
    bob = RosterItem(BOB, name="Bøb ☃", subscription="both", groups=["Frïends", "同事", "😀 emoji"])
    carol = RosterItem(CAROL, subscription="none", ask=True, approved=True, groups=[])
    dave = RosterItem(DAVE, visible=False, pending_in=True,
                      pending_in_stanza="<presence type='subscribe' from='dave@other.test'><status>hé</status></presence>")
    version = await repos.roster.save(ALICE, [bob, carol, dave])
    assert version == 1
    loaded_version, items = await repos.roster.load(ALICE)
    assert loaded_version == 1
    assert items == {BOB: bob, CAROL: carol, DAVE: dave}
    assert items[BOB].groups == ["Frïends", "同事", "😀 emoji"]
    # Another user's roster is separate.
    assert await repos.roster.load(BOB) == (0, {})


async def test_roster_update_and_removal(repos: Repos) -> None:
    await repos.roster.save(ALICE, [RosterItem(BOB), RosterItem(CAROL)])
    changed = RosterItem(BOB, name="Robert", subscription="to", groups=["Work"])
    await repos.roster.save(ALICE, [changed], removed=[CAROL])
    _, items = await repos.roster.load(ALICE)
    assert items == {BOB: changed}
    # Removing what is not there is harmless.
    await repos.roster.save(ALICE, [], removed=[CAROL, DAVE])
    _, items = await repos.roster.load(ALICE)
    assert items == {BOB: changed}
    await repos.roster.save(ALICE, [], removed=[BOB])
    _, items = await repos.roster.load(ALICE)
    assert items == {}


async def test_roster_version_increments_monotonically(repos: Repos) -> None:
    seen = []
    for i in range(5):
        seen.append(await repos.roster.save(ALICE, [RosterItem(BOB, name=str(i))]))
    seen.append(await repos.roster.save(ALICE, [], removed=[BOB]))
    assert seen == [1, 2, 3, 4, 5, 6]
    assert (await repos.roster.load(ALICE))[0] == 6
    # Versions are per owner.
    assert await repos.roster.save(BOB, [RosterItem(ALICE)]) == 1


async def test_roster_version_under_concurrent_saves(repos: Repos) -> None:
    await repos.roster.save(ALICE, [RosterItem(BOB)])
    results = await asyncio.gather(
        *(repos.roster.save(ALICE, [RosterItem(f"c{i}@example.test")]) for i in range(8))
    )
    # Each save got its own version: none was lost or handed out twice.
    assert sorted(results) == list(range(2, 10))
    version, items = await repos.roster.load(ALICE)
    assert version == 9
    assert len(items) == 9


async def test_roster_first_saves_racing(repos: Repos) -> None:
    # No version row exists yet, so every save tries to create it.
    results = await asyncio.gather(
        *(repos.roster.save(BOB, [RosterItem(f"c{i}@example.test")]) for i in range(8))
    )
    assert sorted(results) == list(range(1, 9))
    assert (await repos.roster.load(BOB))[0] == 8


async def test_count_watchers(repos: Repos) -> None:
    await repos.roster.save(ALICE, [RosterItem(DAVE, subscription="to")])
    await repos.roster.save(BOB, [RosterItem(DAVE, subscription="both")])
    await repos.roster.save(CAROL, [RosterItem(DAVE, subscription="from")])
    await repos.roster.save(DAVE, [RosterItem(ALICE, subscription="none")])
    assert await repos.roster.count_watchers(DAVE) == 2
    assert await repos.roster.count_watchers(ALICE) == 0
    assert await repos.roster.count_watchers("nobody@example.test") == 0


# --- offline messages ------------------------------------------------------------------------


async def test_offline_store_fetch_order(repos: Repos) -> None:
    stanzas = [f"<message id='m{i}'><body>nº {i} ✓</body></message>" for i in range(5)]
    for i, s in enumerate(stanzas):
        assert await repos.offline.store(ALICE, f"{BOB}/r{i}", s) is True
    await repos.offline.store(BOB, ALICE, "<message>other</message>")
    msgs = await repos.offline.fetch(ALICE)
    assert [m.stanza for m in msgs] == stanzas
    assert [m.sender for m in msgs] == [f"{BOB}/r{i}" for i in range(5)]
    assert [m.id for m in msgs] == sorted(m.id for m in msgs)
    assert all(m.created_at > 0 for m in msgs)
    assert await repos.offline.count(ALICE) == 5
    assert await repos.offline.count(CAROL) == 0


async def test_offline_limit(repos: Repos) -> None:
    assert await repos.offline.store(ALICE, BOB, "<message>1</message>", limit=2) is True
    assert await repos.offline.store(ALICE, BOB, "<message>2</message>", limit=2) is True
    assert await repos.offline.store(ALICE, BOB, "<message>3</message>", limit=2) is False
    assert await repos.offline.count(ALICE) == 2
    # The limit is per user.
    assert await repos.offline.store(BOB, ALICE, "<message>x</message>", limit=2) is True
    # No limit means no limit.
    assert await repos.offline.store(ALICE, BOB, "<message>4</message>") is True
    assert await repos.offline.count(ALICE) == 3


async def test_offline_delete_by_ids(repos: Repos) -> None:
    for i in range(4):
        await repos.offline.store(ALICE, BOB, f"<message>{i}</message>")
    await repos.offline.store(BOB, ALICE, "<message>b</message>")
    msgs = await repos.offline.fetch(ALICE)
    bob_ids = [m.id for m in await repos.offline.fetch(BOB)]
    await repos.offline.delete(ALICE, [msgs[0].id, msgs[2].id])
    assert [m.stanza for m in await repos.offline.fetch(ALICE)] == ["<message>1</message>", "<message>3</message>"]
    await repos.offline.delete(ALICE, [])
    assert await repos.offline.count(ALICE) == 2
    # Another owner's ids are not this owner's to delete.
    await repos.offline.delete(ALICE, bob_ids)
    assert await repos.offline.count(BOB) == 1
    await repos.offline.delete(ALICE)
    assert await repos.offline.fetch(ALICE) == []
    assert await repos.offline.count(BOB) == 1


# --- documents -------------------------------------------------------------------------------


async def test_vcard_upsert(repos: Repos) -> None:
    assert await repos.docs.get_vcard(ALICE) is None
    await repos.docs.set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>")
    await repos.docs.set_vcard(ALICE, "<vCard xmlns='vcard-temp'><FN>Alïce Ünicode</FN></vCard>")
    assert await repos.docs.get_vcard(ALICE) == "<vCard xmlns='vcard-temp'><FN>Alïce Ünicode</FN></vCard>"
    assert await repos.docs.get_vcard(BOB) is None


async def test_private_upsert(repos: Repos) -> None:
    assert await repos.docs.get_private(ALICE, "storage:bookmarks") is None
    await repos.docs.set_private(ALICE, {"storage:bookmarks": "<storage/>", "urn:x": "<x>1</x>"})
    await repos.docs.set_private(ALICE, {"urn:x": "<x>2</x>"})
    await repos.docs.set_private(BOB, {"urn:x": "<x>bob</x>"})
    assert await repos.docs.get_private(ALICE, "storage:bookmarks") == "<storage/>"
    assert await repos.docs.get_private(ALICE, "urn:x") == "<x>2</x>"
    assert await repos.docs.get_private(BOB, "urn:x") == "<x>bob</x>"
    assert await repos.docs.get_private(BOB, "storage:bookmarks") is None


async def test_last_activity_upsert(repos: Repos) -> None:
    assert await repos.docs.get_last(ALICE) is None
    await repos.docs.set_last(ALICE, 1_700_000_000.123456, "gone fishing")
    assert await repos.docs.get_last(ALICE) == (1_700_000_000.123456, "gone fishing")
    await repos.docs.set_last(ALICE, 1_700_000_100.5, None)
    assert await repos.docs.get_last(ALICE) == (1_700_000_100.5, None)


# --- policy ----------------------------------------------------------------------------------


async def test_policy_add_is_idempotent_and_remove(repos: Repos) -> None:
    await repos.policy.add(ALICE, "block", [BOB, "spam.test"])
    await repos.policy.add(ALICE, "block", [BOB])
    await repos.policy.add(ALICE, "allow", [CAROL, CAROL])
    await repos.policy.add(BOB, "block", [ALICE])
    lists, _, _ = await repos.policy.load(ALICE)
    assert lists == {"allow": {CAROL}, "block": {BOB, "spam.test"}}
    await repos.policy.remove(ALICE, "block", [BOB, "never-there.test"])
    assert (await repos.policy.load(ALICE))[0] == {"allow": {CAROL}, "block": {"spam.test"}}
    await repos.policy.remove(ALICE, "allow", None)
    assert (await repos.policy.load(ALICE))[0] == {"allow": set(), "block": {"spam.test"}}
    # Nobody else's lists were touched.
    assert (await repos.policy.load(BOB))[0] == {"allow": set(), "block": {ALICE}}


async def test_policy_settings(repos: Repos) -> None:
    assert await repos.policy.load(ALICE) == ({"allow": set(), "block": set()}, None, None)
    await repos.policy.set_settings(ALICE, "block", True)
    _, default, auto = await repos.policy.load(ALICE)
    assert (default, auto) == ("block", True)
    await repos.policy.set_settings(ALICE, None, False)
    _, default, auto = await repos.policy.load(ALICE)
    assert (default, auto) == (None, False)
    assert (await repos.policy.load(BOB))[1:] == (None, None)


# --- durability ------------------------------------------------------------------------------


async def test_writes_are_visible_to_a_new_database_object(db_url: str) -> None:
    writer = Database(db_url)
    await writer.migrate()
    w = Repos(writer)
    await w.users.add(ALICE, "example.test", creds(3))
    await w.domains.add("extra.test")
    await w.roster.save(ALICE, [RosterItem(BOB, name="Bøb", groups=["G"])])
    await w.offline.store(ALICE, BOB, "<message>kept</message>")
    await w.docs.set_vcard(ALICE, "<vCard/>")
    await w.policy.add(ALICE, "block", [DAVE])

    async def check(db: Database) -> None:
        r = Repos(db)
        assert (await r.users.credentials(ALICE, "SHA-1")) == (True, creds(3)["SHA-1"])
        assert await r.domains.list() == [("extra.test", "admin")]
        assert await r.roster.load(ALICE) == (1, {BOB: RosterItem(BOB, name="Bøb", groups=["G"])})
        assert [m.stanza for m in await r.offline.fetch(ALICE)] == ["<message>kept</message>"]
        assert await r.docs.get_vcard(ALICE) == "<vCard/>"
        assert (await r.policy.load(ALICE))[0]["block"] == {DAVE}

    # While the writer is still open, and again once it has gone away.
    reader = Database(db_url)
    try:
        await check(reader)
    finally:
        await reader.close()
    await writer.close()
    reader = Database(db_url)
    try:
        await reader.migrate()
        await check(reader)
        # A write from the second object is seen by a third.
        await Repos(reader).users.set_enabled(ALICE, False)
    finally:
        await reader.close()
    third = Database(db_url)
    try:
        rec = await Repos(third).users.get(ALICE)
        assert rec is not None and rec.enabled is False
    finally:
        await third.close()
