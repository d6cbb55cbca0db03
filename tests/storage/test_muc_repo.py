"""Persistent chat rooms in the database, and the write queue that survives an outage."""

from __future__ import annotations

import asyncio

import pytest

from parley.modules.muc.store import RoomStore, is_outage
from parley.storage.archive import ArchiveEntry, ArchiveFilter, ArchiveRepo
from parley.storage.db import Database, StorageUnavailable
from parley.storage.muc import RoomRepo, StoredRoom

ROOM = "team@conference.example.test"


async def test_room_round_trip_and_whole_rewrite(db: Database) -> None:
    repo = RoomRepo(db)
    await repo.save(StoredRoom(ROOM, {"name": "Team", "persistent": True}, "Plans", "ali",
                               {"alice@example.test": ("owner", "ali"), "bob@example.test": ("member", None)}))
    [room] = await repo.load()
    assert (room.jid, room.config["name"], room.subject, room.subject_by) == (ROOM, "Team", "Plans", "ali")
    assert room.affiliations == {"alice@example.test": ("owner", "ali"), "bob@example.test": ("member", None)}
    # A save replaces the room's affiliations as a whole: bob is gone, carol is in.
    await repo.save(StoredRoom(ROOM, {"name": "Team 2"}, "", None,
                               {"alice@example.test": ("owner", "ali"), "carol@example.test": ("outcast", None)}))
    [room] = await repo.load()
    assert room.config == {"name": "Team 2"}
    assert set(room.affiliations) == {"alice@example.test", "carol@example.test"}
    assert await repo.count() == 1


async def test_delete_takes_affiliations_and_archive(db: Database) -> None:
    repo, archive = RoomRepo(db), ArchiveRepo(db)
    await repo.save(StoredRoom(ROOM, {}, affiliations={"alice@example.test": ("owner", None)}))
    await archive.append([ArchiveEntry(ROOM, "s1", "alice@example.test", 1.0, "<message/>"),
                          ArchiveEntry("alice@example.test", "s2", "bob@example.test", 1.0, "<message/>")])
    await repo.delete(ROOM)
    assert await repo.load() == []
    assert (await archive.query(ROOM, ArchiveFilter(), limit=10)).items == []
    # Someone else's archive is untouched.
    assert len((await archive.query("alice@example.test", ArchiveFilter(), limit=10)).items) == 1


async def test_store_writes_in_order_and_reads_state_at_write_time(db: Database) -> None:
    state = {"name": "first"}
    store = RoomStore(db, lambda jid: StoredRoom(jid, dict(state)), retry=0.05)
    store.save(ROOM)
    state["name"] = "second"
    store.save(ROOM)
    store.archive_entry(ArchiveEntry(ROOM, "m1", "alice@example.test", 2.0, "<message/>"))
    await asyncio.wait_for(store.flushed(), 10)
    [room] = await RoomRepo(db).load()
    assert room.config == {"name": "second"}
    assert [m.stanza_id for m in (await store.archive.query(ROOM, ArchiveFilter(), limit=5)).items] == ["m1"]
    store.delete(ROOM)
    await asyncio.wait_for(store.flushed(), 10)
    assert await RoomRepo(db).load() == []


async def test_store_waits_through_an_outage(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes that fail because the database is away stay queued and are made when it is back;
    meanwhile the store says it is unavailable and an immediate write is refused."""
    store = RoomStore(db, lambda jid: StoredRoom(jid, {"n": 1}), retry=0.05)
    real_save = store.rooms.save
    down = True

    async def flaky_save(room: StoredRoom) -> None:
        if down:
            raise ConnectionRefusedError("database away")
        await real_save(room)

    monkeypatch.setattr(store.rooms, "save", flaky_save)
    with pytest.raises(StorageUnavailable):
        await store.write_now(ROOM)
    assert not store.available
    with pytest.raises(StorageUnavailable):
        await store.write_now(ROOM)
    down = False
    for _ in range(200):
        if store.available and await RoomRepo(db).load():
            break
        await asyncio.sleep(0.05)
    assert store.available
    assert [r.jid for r in await RoomRepo(db).load()] == [ROOM]


def test_outage_is_told_from_a_bad_write() -> None:
    assert is_outage(ConnectionRefusedError())
    assert is_outage(TimeoutError())
    assert not is_outage(ValueError("bad data"))
