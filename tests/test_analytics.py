"""imflow.analytics over a lake written by the real writer (core.storage.archive.write_records)."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import orjson
import pandas as pd
import pytest

from imflow.analytics import SOCIAL_SCHEMAS, Archive
from imflow.core.ids import EPOCH_MS, NODE_BITS, SEQUENCE_BITS
from imflow.core.storage import archive_queue, keys, lake, social_records
from imflow.core.storage.archive import LakeWriter, write_records
from imflow.core.storage.redis_client import connect

HOUR = 3_600_000


def mid_at(ms: int, n: int) -> int:
    return ((ms - EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS)) | n


def record(conversation: str, seq: int, sender: str, members: list[str], at_ms: int, n: int = 0) -> dict:
    message = {"mid": mid_at(at_ms, (n + seq) % 64), "seq": seq, "conversation": conversation, "sender": sender,
               "client_msg_id": f"{conversation}-{seq}", "type": "text", "body": {"text": "hi"}, "sent_at_ms": at_ms - 3}
    return {"kind": "message", "message": message, "members": members}


@contextlib.contextmanager
def writer(root: Path):
    """A connection to the embedded lake in ``root``, as the archive agent has one."""
    db = lake.connect(lake.LakeConfig.from_url(root))
    try:
        yield db
    finally:
        db.close()


def write(root: Path, *batches: list[dict]) -> None:
    """Write each batch of records into the lake in ``root``, one commit each."""
    with writer(root) as db:
        for batch in batches:
            write_records(db, batch)


def test_views_answer_the_usual_questions_and_deduplicate_the_at_least_once_tables(tmp_path: Path) -> None:
    start = EPOCH_MS + 1000 * HOUR
    batch = [record("p:alice:bob", i + 1, "alice" if i % 2 else "bob", ["alice", "bob"], start + (i // 5) * HOUR + i) for i in range(15)]
    batch += [record("p:alice:carol", i + 1, "carol", ["alice", "carol"], start + i, n=32) for i in range(3)]
    # messages are written once (the queue sees to it: tests/test_archive_exactly_once.py); a
    # deletion and a plugin's rows may come twice (queued twice by their producers)
    write(tmp_path, batch, [{"kind": "delete", "owner": "bob", "mid": batch[0]["message"]["mid"], "at_ms": start}] * 2,
          [{"kind": "rows", "table": "red_packets", "rows": [{"mid": 1, "total_cents": 100}]}] * 2)

    with Archive(tmp_path) as archive:
        assert {"im_msg_content", "im_user_msg_box", "red_packets"} <= set(archive.tables())
        assert lake.MARKS not in archive.tables(), "the writer's marks are no analyst's table"
        assert archive.scalar("SELECT count(*) FROM im_msg_content") == 18
        assert archive.scalar("SELECT count(*) FROM im_user_msg_box") == 36
        assert archive.scalar("SELECT count(*) FROM im_user_msg_box WHERE deleted") == 1
        assert archive.scalar("SELECT count(*) FROM red_packets") == 1
        per_hour = archive.messages_per("hour")
        assert list(per_hour["messages"]) == [8, 5, 5]
        assert list(archive.active_users_per("day")["active_users"]) == [3]
        top = archive.top_conversations(1)
        assert top.loc[0, "conversation"] == "p:alice:bob" and top.loc[0, "messages"] == 15
        assert set(archive.fan_out_cost()["rows_per_message"]) == {2}
        assert archive.ingest_latency_ms().loc[0, "messages"] == 18


def test_an_empty_archive_has_empty_views(tmp_path: Path) -> None:
    with Archive(tmp_path / "nothing-yet") as archive:
        assert archive.messages_per("day").empty
        assert archive.scalar("SELECT count(*) FROM im_user_msg_box") == 0


def test_open_while_a_writer_commits(tmp_path: Path) -> None:
    done = threading.Event()
    halfway = threading.Event()  # the writer has committed half of its batches
    read_halfway = threading.Event()  # the reader has read twice since: the writer may go on
    archive = Archive(tmp_path)  # the lake made first: the writer's first commit is not a table's creation

    def write_batches() -> None:
        try:
            with writer(tmp_path) as db:
                for n in range(40):
                    if n == 20:
                        # not left to luck: a slow start of the reader must not find the writer done
                        halfway.set()
                        assert read_halfway.wait(60), "the reader never read"
                    batch = [record("p:a:b", n * 10 + i + 1, "a", ["a", "b"], EPOCH_MS + HOUR + n * 10 + i) for i in range(10)]
                    write_records(db, batch)
                    time.sleep(0.005)  # a writer commits now and then, not all at once
        finally:
            done.set()

    thread = threading.Thread(target=write_batches)
    thread.start()
    counts = []
    since_halfway = 0
    while not done.is_set():
        archive.refresh()
        counts.append(archive.scalar("SELECT count(*) FROM im_msg_content"))
        if halfway.is_set():
            since_halfway += 1
            if since_halfway >= 2:
                read_halfway.set()
    thread.join()
    archive.refresh()
    assert archive.scalar("SELECT count(*) FROM im_msg_content") == 400
    assert len(counts) >= 2 and counts[0] < 400, "the reader read while the writer was still writing"
    assert counts == sorted(counts), "a reader never loses rows it saw"
    assert all(count % 10 == 0 for count in counts), "a reader sees whole commits only"
    archive.close()


# -- the social graph, recorded as a live server records it: social_records onto the archive
# queue (fakeredis), written by archive_queue.flush as the archive agent does

MINUTE = 60_000
T0 = EPOCH_MS + 2000 * HOUR  # on the hour: minute buckets start at T0 + k minutes


def at(minute: int) -> int:
    return T0 + minute * MINUTE


async def record_history(root: Path, history: list[tuple]) -> list[dict]:
    """Record each (table, user, peer_or_kind, ...) change through social_records, then write the
    queue into the lake as the archive agent does and the first records once more (as if
    queued twice); returns the records written."""
    redis = connect(None)
    services = SimpleNamespace(redis=redis, settings=SimpleNamespace(app_id="social", topic_partitions=3))
    for change in history:
        if change[0] == "account":
            _, user, kind, minute = change
            profile = {"display_name": user.title(), "custom": {"n": 1}}
            await social_records.record_account(services, user, kind, profile, at(minute))
        elif change[0] == "contact":
            _, user, peer, kind, minute = change
            await social_records.record_contact(services, user, peer, kind, "hi" if kind == "requested" else "", at(minute))
        else:
            _, user, peer, kind, minute = change
            await social_records.record_block(services, user, peer, kind, at(minute))
    queues = [keys.archive_pending("social", partition) for partition in range(3)]
    records = [orjson.loads(entry) for queue in queues for entry in await redis.lrange(queue, 0, -1)]
    with writer(root) as db:
        await archive_queue.flush(redis, "social", LakeWriter(lambda: db), range(3))
        write_records(db, records[: len(records) // 2])  # queued twice: the rows tables are at least once
    await redis.aclose()
    return records


HISTORY = [
    ("account", "alice", "created", 1), ("account", "bob", "created", 2), ("account", "carol", "created", 3),
    ("account", "dave", "created", 4), ("account", "erin", "created", 5), ("account", "alice", "updated", 6),
    ("contact", "alice", "bob", "requested", 10), ("contact", "bob", "alice", "accepted", 11),      # a-b from 11
    ("contact", "carol", "alice", "requested", 12), ("contact", "alice", "carol", "declined", 13),  # no edge
    ("contact", "dave", "alice", "requested", 14), ("contact", "dave", "alice", "cancelled", 15),   # no edge
    ("contact", "alice", "carol", "requested", 20), ("contact", "carol", "alice", "accepted", 21),  # a-c from 21
    ("contact", "bob", "carol", "requested", 30), ("contact", "carol", "bob", "accepted", 31),      # b-c from 31
    ("contact", "carol", "bob", "removed", 40),                                                     # b-c ends
    ("contact", "dave", "bob", "requested", 45), ("contact", "bob", "dave", "accepted", 46),        # b-d from 46
    ("account", "erin", "deactivated", 50),
    # a block of a contact, as the live server records it: the block and the edge's removal
    ("block", "dave", "bob", "blocked", 60), ("contact", "dave", "bob", "removed", 60),             # b-d ends
    ("block", "dave", "bob", "unblocked", 65),
    # frank has no account record (a server in open accounts mode)
    ("contact", "frank", "alice", "requested", 70), ("contact", "alice", "frank", "accepted", 71),  # a-f from 71
    # a block alone ends the edge too, whoever blocks; unblocking restores nothing
    ("block", "carol", "alice", "blocked", 80), ("block", "carol", "alice", "unblocked", 90),      # a-c ends
    ("contact", "alice", "carol", "requested", 100), ("contact", "carol", "alice", "accepted", 101),  # a-c again from 101
    # accepted and removed in one millisecond (recorded in the other order): the removal is last
    ("contact", "bob", "dave", "removed", 120), ("contact", "bob", "dave", "requested", 119),
    ("contact", "dave", "bob", "accepted", 120),
]


def edges(archive: Archive, at_ms: int | None = None) -> list[tuple[str, str, int]]:
    graph = archive.contact_graph(at_ms)
    assert list(graph.columns) == ["user_a", "user_b", "since_ms", "since"]
    return [(a, b, (since - T0) // MINUTE) for a, b, since in graph[["user_a", "user_b", "since_ms"]].itertuples(index=False)]


async def test_the_contact_graph_at_any_moment_of_its_history(tmp_path: Path) -> None:
    await record_history(tmp_path, HISTORY)
    with Archive(tmp_path) as archive:
        assert len(archive.contact_events()) == sum(change[0] == "contact" for change in HISTORY), "queued twice, counted once"
        assert edges(archive, at(10)) == []
        assert edges(archive, at(11)) == [("alice", "bob", 11)], "at_ms includes that moment"
        assert edges(archive, at(35)) == [("alice", "bob", 11), ("alice", "carol", 21), ("bob", "carol", 31)]
        assert edges(archive, at(50)) == [("alice", "bob", 11), ("alice", "carol", 21), ("bob", "dave", 46)]
        assert edges(archive, at(75)) == [("alice", "bob", 11), ("alice", "carol", 21), ("alice", "frank", 71)]
        assert edges(archive, at(95)) == [("alice", "bob", 11), ("alice", "frank", 71)], "blocked; the unblock did not undo it"
        final = [("alice", "bob", 11), ("alice", "carol", 101), ("alice", "frank", 71)]
        assert edges(archive, at(120)) == final == edges(archive), "accepted again: since the new acceptance"

        degrees = archive.contact_degrees()
        assert list(degrees.itertuples(index=False, name=None)) == [
            ("alice", 3), ("bob", 1), ("carol", 1), ("frank", 1), ("dave", 0), ("erin", 0)]
        distribution = archive.degree_distribution()
        assert distribution[["degree", "users"]].values.tolist() == [[0, 2], [1, 3], [3, 1]]
        assert distribution["share"].tolist() == [2 / 6, 3 / 6, 1 / 6]
        early = archive.contact_degrees(at(3))
        assert sorted(early.itertuples(index=False, name=None)) == [("alice", 0), ("bob", 0), ("carol", 0)], "accounts by then"
        # a-b, a-c, b-d: erin none, carol and dave one, alice and bob two
        assert archive.degree_distribution(at(47))[["degree", "users"]].values.tolist() == [[0, 1], [1, 2], [2, 2]]


async def test_growth_counts_accounts_and_edges_at_each_bucket_end(tmp_path: Path) -> None:
    await record_history(tmp_path, HISTORY)
    with Archive(tmp_path) as archive:
        growth = archive.contact_graph_growth("minute")
        assert list(growth.columns) == ["minute", "accounts", "active_accounts", "new_edges", "ended_edges", "edges"]
        for row in growth.itertuples(index=False):
            end = int(row.minute.timestamp() * 1000) + MINUTE - 1
            assert row.edges == len(archive.contact_graph(end)), row.minute
        last = growth.iloc[-1]
        assert (last["accounts"], last["active_accounts"], last["edges"]) == (5, 4, 3)
        # made: a-b, a-c, b-c, b-d, a-f, a-c, b-d; ended: b-c, b-d, a-c, b-d
        assert growth["new_edges"].sum() == 7 and growth["ended_edges"].sum() == 4
        ended = growth.set_index("minute").loc[pd.Timestamp(at(60), unit="ms"), "ended_edges"]
        assert ended == 1, "a block and the removal it records: one edge ended"
        assert archive.contact_graph_growth("day")[["accounts", "edges"]].values.tolist() == [[5, 3]]


async def test_the_event_tables_are_what_social_records_writes(tmp_path: Path) -> None:
    records = await record_history(tmp_path, HISTORY)
    written = {record["table"]: list(record["rows"][0]) for record in records}
    with Archive(tmp_path) as archive:
        for table, schema in SOCIAL_SCHEMAS.items():
            assert schema.names == written[table], table
            stored = archive.db.execute(f"SELECT * FROM {lake.LAKE}.main.{table} LIMIT 0").to_arrow_table().schema
            assert stored.remove_metadata() == schema, table
        accounts = archive.account_events()
        assert accounts["kind"].tolist()[:6] == ["created"] * 5 + ["updated"]
        assert accounts.loc[0, "custom"] == '{"n":1}' and accounts.loc[0, "display_name"] == "Alice"
        blocks = archive.block_events()
        assert blocks[["user", "peer", "kind"]].values.tolist() == [
            ["dave", "bob", "blocked"], ["dave", "bob", "unblocked"],
            ["carol", "alice", "blocked"], ["carol", "alice", "unblocked"]]
        assert str(blocks["at"].dtype).startswith("datetime64")


def test_an_archive_without_social_records_has_an_empty_graph(tmp_path: Path) -> None:
    write(tmp_path, [record("p:a:b", 1, "a", ["a", "b"], EPOCH_MS + HOUR)])
    with Archive(tmp_path) as archive:
        assert {"im_account_events", "im_contact_events", "im_block_events"} <= set(archive.tables())
        assert archive.contact_graph().empty and archive.degree_distribution().empty and archive.contact_graph_growth().empty
        assert list(archive.contact_events().columns) == ["user", "peer", "kind", "note", "at_ms", "at"]


# -- opening a lake, and time travel


def test_time_travel_reads_the_archive_as_it_was(tmp_path: Path) -> None:
    first = [record("p:a:b", seq, "a", ["a", "b"], EPOCH_MS + HOUR + seq) for seq in range(1, 6)]
    second = [record("p:a:b", seq, "b", ["a", "b"], EPOCH_MS + HOUR + seq) for seq in range(6, 9)]
    with writer(tmp_path) as db:
        write_records(db, first)
        version = db.execute(f"FROM ducklake_current_snapshot('{lake.LAKE}')").fetchall()[0][0]
        between = datetime.now(UTC)
        write_records(db, second)
    with Archive.open(tmp_path) as now:
        assert now.scalar("SELECT count(*) FROM im_msg_content") == 8
        snapshots = now.snapshots()
        assert list(snapshots["snapshot_id"]) == sorted(snapshots["snapshot_id"]) and version in set(snapshots["snapshot_id"])
        assert snapshots["snapshot_id"].iloc[-1] > version
    for at in (version, between):
        with Archive.open(tmp_path, at=at) as then:
            assert then.scalar("SELECT count(*) FROM im_msg_content") == 5, at
            assert then.messages_per("day")["messages"].tolist() == [5]
            with pytest.raises(duckdb.Error):  # the past is read-only
                then.db.execute(f"INSERT INTO {lake.LAKE}.main.im_user_msg_deleted VALUES ('a', 1, 1)")


def test_open_names_a_lake_by_folder_catalog_string_or_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "archive"
    write(folder, [record("p:a:b", 1, "a", ["a", "b"], EPOCH_MS + HOUR)])
    catalog = f"sqlite:{folder / 'catalog.sqlite'}"
    monkeypatch.setenv("IMFLOW_DATA_DIR", str(tmp_path))  # the default lake: {data_dir}/archive
    monkeypatch.delenv("IMFLOW_ARCHIVE_CATALOG", raising=False)
    monkeypatch.delenv("IMFLOW_ARCHIVE_DATA_PATH", raising=False)
    named = (Archive(folder), Archive.open(folder), Archive.open(catalog, data_path=f"{folder / 'data'}/"), Archive.open())
    for archive in named:
        with archive:
            assert archive.scalar("SELECT count(*) FROM im_msg_content") == 1, archive.config
