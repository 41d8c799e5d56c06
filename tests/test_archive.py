"""The archive as a DuckLake: one transaction a batch, read-time de-duplication, deletions,
writers in two processes, plugin tables, maintenance, retention, time travel and readiness.

Each test runs on the embedded lake (SQLite catalog, a folder) and, when IMFLOW_TEST_ARCHIVE_CATALOG
is set (scripts/test), on the PostgreSQL catalog with data on S3 (a schema and prefix of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
from stacks import archive_lake_config, drop_archive

from imflow.core.ids import EPOCH_MS
from imflow.core.storage import archive_maintenance, keys, lake
from imflow.core.storage.archive import ArchiveReader, write_records
from imflow.core.storage.lake import CONTENT, MAILBOX, LakeConfig

CONVERSATION = "p:alice:bob"


def mid_of(seq: int, base: int = 5_000) -> int:
    return (base + seq) << 12  # one millisecond apart, as ids of a quiet conversation are


def record(seq: int, conversation: str = CONVERSATION, sender: str = "alice", members: list[str] | None = None,
           base: int = 5_000) -> dict:
    message = {
        "mid": mid_of(seq, base), "seq": seq, "conversation": conversation, "sender": sender,
        "client_msg_id": f"c{seq}", "type": "text", "body": {"text": f"m{seq}"}, "sent_at_ms": seq,
    }
    return {"kind": "message", "message": message, "members": members or ["alice", "bob"]}


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh lake: the embedded one in a folder, or a schema and S3 prefix of the test services."""
    if request.param == "sqlite":
        yield LakeConfig.from_url(tmp_path / "lake")
        return
    config = archive_lake_config(tmp_path / "lake", f"t{uuid.uuid4().hex[:12]}")
    if config.catalog_kind != "postgres":
        pytest.skip("IMFLOW_TEST_ARCHIVE_CATALOG is not set (scripts/test sets it)")
    yield config
    drop_archive(config)


@pytest.fixture
def db(config: LakeConfig):
    connection = lake.connect(config)
    yield connection
    connection.close()


@pytest.fixture
def reader(config: LakeConfig, db: duckdb.DuckDBPyConnection):
    archive = ArchiveReader(config)
    yield archive
    archive.close()


def seqs(page: list[dict]) -> list[int]:
    return [message["seq"] for message in page]


def test_history_reads_whole_pages_and_ignores_replayed_batches(db, reader) -> None:
    batch = [record(seq) for seq in range(1, 31)]
    assert write_records(db, batch) == 30 * 3  # one content row, two mailbox rows each
    write_records(db, batch[10:20])  # a crash before the queue was trimmed: written again
    page = reader.history_page("bob", CONVERSATION, before_seq=25, limit=10)
    assert seqs(page) == list(range(24, 14, -1))
    assert page[0]["body"] == {"text": "m24"}
    assert seqs(reader.history_page("bob", CONVERSATION, before_seq=99, limit=100, after_seq=25)) == list(range(30, 25, -1))
    assert seqs(reader.history_page("alice", CONVERSATION, before_seq=5, limit=10)) == [4, 3, 2, 1]
    assert reader.contents(CONVERSATION, [(mid_of(3), 3), (mid_of(12), 12)])[0]["body"] == {"text": "m12"}
    # rows: the content and the mailbox rows are both there twice, and read once
    assert db.execute(f"SELECT count(*), count(DISTINCT mid) FROM {CONTENT}").fetchone() == (40, 30)


def test_a_group_page_reads_the_members_rows_and_the_read_fan_out_rows(db, reader) -> None:
    group = "g:team"
    write_fan_out = [record(seq, group, members=["alice", "bob", "carol"]) for seq in range(1, 6)]
    read_fan_out = [record(seq, group, members=["alice", group]) for seq in range(6, 11)]  # the group's one row
    write_records(db, write_fan_out + read_fan_out)
    assert seqs(reader.history_page("carol", group, before_seq=99, limit=20)) == list(range(10, 0, -1))
    assert seqs(reader.history_page("dave", group, before_seq=99, limit=20)) == list(range(10, 5, -1))  # joined later


def test_a_deletion_hides_a_message_from_its_owner_only(db, reader) -> None:
    write_records(db, [record(1), record(2)])
    write_records(db, [{"kind": "delete", "owner": "bob", "mid": mid_of(2), "at_ms": 9}] * 2)  # replayed too
    assert seqs(reader.history_page("bob", CONVERSATION, 99, 10)) == [1]
    assert seqs(reader.history_page("bob", CONVERSATION, 99, 10, include_deleted=True)) == [2, 1]
    assert seqs(reader.history_page("alice", CONVERSATION, 99, 10)) == [2, 1]


def test_a_reader_sees_whole_batches_only_while_a_writer_writes(config, db, reader) -> None:
    done = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with lake.connect(config) as own:  # another connection, as another process would have
                for start in range(0, 1000, 100):
                    write_records(own, [record(seq) for seq in range(start + 1, start + 101)])
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not done.is_set() or seen < 1000:
        assert not failures, failures
        page = reader.history_page("alice", CONVERSATION, before_seq=10**9, limit=5000)
        assert seqs(page) == list(range(len(page), 0, -1)), "every page is a whole prefix of batches"
        assert len(page) % 100 == 0, "a batch is one transaction: never part of one"
        mailbox = db.execute(f"SELECT count(*) FROM {MAILBOX}").fetchone()
        seen = len(page)
        assert mailbox is not None and mailbox[0] >= 2 * seen
    thread.join()
    assert seen == 1000


WRITER = """
import sys
from imflow.core.storage import lake
from imflow.core.storage.archive import write_records
from test_archive import record
config = lake.LakeConfig(**eval(sys.argv[1]))
db = lake.connect(config)  # both processes make the lake and its tables at once
base, conversation = int(sys.argv[2]), sys.argv[3]
for start in range(0, 200, 20):
    write_records(db, [record(seq, conversation, base=base) for seq in range(start + 1, start + 21)])
"""


def test_two_processes_make_and_write_one_lake_at_once(config) -> None:
    args = repr(dataclasses.asdict(config))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, args, str(base), conversation], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for base, conversation in ((10_000, "p:a:b"), (20_000, "p:c:d"))
    ]
    for process in writers:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output.decode()
    reader = ArchiveReader(config)
    try:
        for owner, conversation in (("a", "p:a:b"), ("d", "p:c:d")):
            assert seqs(reader.history_page(owner, conversation, 10**9, 500)) == list(range(200, 0, -1))
        tables = reader.cursor().execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'lake'").fetchone()
        assert tables == (len(lake.SCHEMAS),), "each core table made once"
    finally:
        reader.close()


def test_plugin_tables_are_made_on_first_write_and_gain_new_columns(db) -> None:
    def rows(table: str, *batch: dict) -> dict:
        return {"kind": "rows", "table": table, "rows": list(batch)}

    write_records(db, [rows("red_packets", {"packet": "p1", "amount": 5, "note": None}),
                       rows("red_packets", {"packet": "p2", "amount": 7})])
    write_records(db, [rows("red_packets", {"packet": "p3", "amount": 1, "grabbed_by": "bob"}), record(1)])
    got = db.execute("SELECT packet, amount, note, grabbed_by FROM red_packets ORDER BY packet").fetchall()
    assert got == [("p1", 5, None, None), ("p2", 7, None, None), ("p3", 1, None, "bob")]
    assert db.execute(f"SELECT count(*) FROM {CONTENT}").fetchone() == (1,), "the same transaction as the plugin's rows"


def page_set(reader: ArchiveReader) -> list[list[int]]:
    return [seqs(reader.history_page(owner, conversation, before, 25))
            for owner, conversation in (("alice", CONVERSATION), ("bob", "p:bob:carol"))
            for before in (10, 77, 151, 10**9)]


def test_maintenance_keeps_every_row_and_readers_see_the_same_pages(db, reader) -> None:
    for start in range(0, 150, 10):  # small batches: inlined in the catalog, or small files
        batch = [record(seq) for seq in range(start + 1, start + 11)]
        batch += [record(seq, "p:bob:carol", sender="bob", members=["bob", "carol"], base=90_000)
                  for seq in range(start + 1, start + 11)]
        write_records(db, batch)
    write_records(db, [record(seq) for seq in range(1, 2000)][:150])  # and one big one, replayed
    before_pages = page_set(reader)
    before_rows = db.execute(f"SELECT count(*), count(DISTINCT mid) FROM {CONTENT}").fetchone()
    report = archive_maintenance.maintain(db, SimpleNamespace(archive_retention_days=0, archive_snapshot_days=0))
    assert report.rows_flushed + report.files_merged > 0, report
    assert page_set(reader) == before_pages
    assert db.execute(f"SELECT count(*), count(DISTINCT mid) FROM {CONTENT}").fetchone() == before_rows
    stats = {row["table"]: row for row in archive_maintenance.stats(db)}
    assert stats[CONTENT]["rows"] == before_rows[0] and stats[MAILBOX]["rows"] == 2 * before_rows[0]
    assert stats[CONTENT]["files"] <= 2, stats  # few files: one a partition the conversations hash to


def test_retention_deletes_old_rows_but_keeps_the_social_and_membership_records(db) -> None:
    now_ms = EPOCH_MS + 100 * 86_400_000
    old, new = 90 * 86_400_000, 99 * 86_400_000  # ms after the id epoch: 10 days and 1 day before now
    write_records(db, [
        record(1, base=old), record(2, base=new),
        {"kind": "rows", "table": "im_group_events", "rows": [{"gid": "g:1", "user": "a", "kind": "joined", "role": "member",
                                                                "actor": "a", "at_ms": 1}]},
        {"kind": "rows", "table": "im_read_events",
         "rows": [{"owner_uid": "a", "conversation": CONVERSATION, "read_seq": 1, "at_ms": 1}]},
    ])
    report = archive_maintenance.maintain(db, SimpleNamespace(archive_retention_days=5, archive_snapshot_days=7), now_ms=now_ms)
    assert report.tables == {CONTENT: 1, MAILBOX: 2, "im_read_events": 1}, report
    assert db.execute(f"SELECT seq FROM {CONTENT}").fetchall() == [(2,)]
    assert db.execute("SELECT count(*) FROM im_group_events").fetchone() == (1,)


def test_time_travel_reads_the_lake_as_it_was(config, db) -> None:
    write_records(db, [record(1), record(2)])
    snapshot = db.execute("FROM ducklake_current_snapshot('lake')").fetchone()
    assert snapshot is not None
    at = datetime.now(UTC)
    write_records(db, [record(3)])
    for then in (snapshot[0], at):
        with lake.connect(config, snapshot=then) as old:
            assert old.execute(f"SELECT seq FROM {CONTENT} ORDER BY seq").fetchall() == [(1,), (2,)]
            with pytest.raises(duckdb.Error):  # read-only
                write_records(old, [record(4)])
    assert db.execute(f"SELECT count(*) FROM {CONTENT}").fetchone() == (3,)


def test_history_pages_can_be_read_from_many_threads_at_once(db, reader) -> None:
    """Gateways read history pages in worker threads at once; one DuckDB connection refused a
    second call while one ran ("connection is busy"), which became an `internal` error."""
    write_records(db, [record(seq) for seq in range(1, 201)])
    befores = [200 - n % 150 for n in range(200)]

    def page(before: int) -> list[int]:
        return seqs(reader.history_page("bob", CONVERSATION, before_seq=before, limit=20))

    with ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(page, befores))
    assert pages == [list(range(before - 1, max(0, before - 21), -1)) for before in befores]


def test_check_says_whether_the_catalog_and_the_data_answer(config, db, tmp_path: Path) -> None:
    assert lake.check(config) == {"archive_catalog": True, "archive_storage": True}
    if config.catalog_kind == "sqlite":
        away = config.with_(catalog=f"sqlite:{tmp_path / 'no' / 'such' / 'catalog.sqlite'}")
        assert lake.check(away)["archive_catalog"] is False
    else:
        away = config.with_(catalog=config.catalog.replace("port=", "port=1"))  # nothing listens there
        assert lake.check(away)["archive_catalog"] is False
        assert lake.check(config.with_(s3_endpoint="127.0.0.1:1"))["archive_storage"] is False  # the store is away
        missing_bucket = config.with_(schema=f"{config.schema}_b", data_path="s3://no-such-bucket/x/")
        try:
            lake.connect(missing_bucket).close()  # made (nothing is written yet)
            assert lake.check(missing_bucket) == {"archive_catalog": True, "archive_storage": False}
        finally:
            drop_archive(missing_bucket)


def test_check_finds_a_folder_data_path_gone(tmp_path: Path) -> None:
    config = LakeConfig.from_url(tmp_path / "lake")
    lake.connect(config).close()
    (tmp_path / "lake" / "data").rename(tmp_path / "moved")
    assert lake.check(config) == {"archive_catalog": True, "archive_storage": False}


def test_a_folder_is_the_embedded_layout_and_a_missing_extension_names_its_package(tmp_path: Path, monkeypatch) -> None:
    config = LakeConfig.from_url(tmp_path)
    assert (config.catalog, config.data_path) == (f"sqlite:{tmp_path / 'catalog.sqlite'}", f"{tmp_path / 'data'}/")
    monkeypatch.setitem(lake.EXTENSION_PACKAGES, "httpfs", "duckdb-extension-nothing")
    with pytest.raises(lake.LakeError, match=f"pip install duckdb-extension-nothing=={duckdb.__version__}"):
        lake.connect(config.with_(data_path="s3://imflow/x/"))


async def test_one_worker_maintains_the_lake_each_interval(config, db) -> None:
    from imflow.core.storage import redis_client

    redis = redis_client.connect(None)  # fakeredis: the lock is all this needs
    settings = SimpleNamespace(archive_maintenance_seconds=60, archive_retention_days=0, archive_snapshot_days=7)
    reader = ArchiveReader(config)
    try:
        write_records(db, [record(1)])
        first = await archive_maintenance.maintain_once(redis, "app", reader, settings)
        assert first is not None and first.rows_flushed == 3, first  # the inlined rows went to files
        assert await archive_maintenance.maintain_once(redis, "app", reader, settings) is None, "another worker's turn is not due"
        assert await archive_maintenance.maintain_once(redis, "other-app", reader, settings) is not None
    finally:
        reader.close()
        await redis.aclose()


def data_files(db: duckdb.DuckDBPyConnection, table: str) -> dict[str, int]:
    """Path -> bytes of the table's data files in the current snapshot."""
    listed = db.execute(f"SELECT data_file, data_file_size_bytes FROM ducklake_list_files('lake', '{table}')").fetchall()
    return dict(listed)


def test_merging_the_fresh_files_keeps_rows_pages_order_and_time_travel(config, db, reader) -> None:
    conversations = [f"p:u{n}:v{n}" for n in range(12)]

    def batch(seqs_: range) -> list[dict]:  # every conversation in every commit: they interleave
        return [record(seq, c, sender=f"u{n}", members=[f"u{n}", f"v{n}"], base=1_000_000 * (n + 1))
                for seq in seqs_ for n, c in enumerate(conversations)]

    write_records(db, batch(range(1, 401)))  # a big file a bucket: older, merged already
    big = {table: data_files(db, table) for table in (CONTENT, MAILBOX)}
    for start in range(401, 521, 10):  # fresh commits: a small file a bucket each
        write_records(db, batch(range(start, start + 10)))
    snapshot = db.execute("FROM ducklake_current_snapshot('lake')").fetchone()
    assert snapshot is not None
    rows_then = db.execute(f"SELECT * FROM {CONTENT} ORDER BY mid").fetchall()
    write_records(db, [record(521, conversations[0], sender="u0", members=["u0", "v0"], base=1_000_000)])  # inlined
    smallest_big = min(size for files in big.values() for size in files.values())
    before = {table: data_files(db, table) for table in (CONTENT, MAILBOX)}
    assert all(size < smallest_big for table in before for path, size in before[table].items() if path not in big[table])

    def pages() -> list[list[int]]:
        return [seqs(reader.history_page(f"v{n}", c, before_seq, 30))
                for n, c in enumerate(conversations) for before_seq in (15, 450, 10**9)]

    pages_before = pages()
    rows = db.execute(f"SELECT * FROM {CONTENT} ORDER BY mid").fetchall()

    merged, created = archive_maintenance.merge_recent(db, max_file_size=smallest_big)

    after = {table: data_files(db, table) for table in (CONTENT, MAILBOX)}
    for table in (CONTENT, MAILBOX):
        assert set(big[table]) <= set(after[table]), "files at or above the size stay as they are"
        fresh = [path for path in after[table] if path not in big[table]]
        assert len(fresh) <= len(big[table]), "about one fresh file a bucket"
        for path in fresh:  # sorted as the table: a page reads one narrow row group of it
            order = db.execute(f"SELECT conversation, seq FROM read_parquet('{path}')").fetchall()
            assert order == sorted(order), path
    assert merged > created > 0, (merged, created)
    assert pages() == pages_before
    assert db.execute(f"SELECT * FROM {CONTENT} ORDER BY mid").fetchall() == rows
    with lake.connect(config, snapshot=snapshot[0]) as old:  # time travel: the lake before the inlined commit
        assert old.execute(f"SELECT * FROM {CONTENT} ORDER BY mid").fetchall() == rows_then
    assert archive_maintenance.merge_recent(db, max_file_size=smallest_big) == (0, 0), "nothing fresh left"


async def test_one_worker_merges_the_fresh_files_each_interval_and_none_while_maintaining(config, db, monkeypatch) -> None:
    from imflow.core.storage import redis_client

    redis = redis_client.connect(None)  # fakeredis: the locks are all this needs
    settings = SimpleNamespace(archive_merge_seconds=60, archive_maintenance_seconds=60, archive_retention_days=0,
                               archive_snapshot_days=7)
    reader = ArchiveReader(config)
    try:
        for start in range(0, 300, 150):  # two commits: two small files a table
            write_records(db, [record(seq) for seq in range(start + 1, start + 151)])
        assert await archive_maintenance.merge_recent_once(redis, "app", reader, settings) == (4, 2)
        write_records(db, [record(seq) for seq in range(301, 451)])
        assert await archive_maintenance.merge_recent_once(redis, "app", reader, settings) is None, "not due yet"
        # while a maintenance runs (held in its thread until released), no worker starts a quick merge
        started, release, real = threading.Event(), threading.Event(), archive_maintenance.maintain

        def held_maintain(*args, **kwargs):
            started.set()
            release.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(archive_maintenance, "maintain", held_maintain)
        maintaining = asyncio.create_task(archive_maintenance.maintain_once(redis, "other", reader, settings))
        await asyncio.to_thread(started.wait, 30)
        assert await archive_maintenance.merge_recent_once(redis, "other", reader, settings) is None, "maintenance runs"
        release.set()
        assert await maintaining is not None
        assert await archive_maintenance.merge_recent_once(redis, "other", reader, settings) is None, \
            "maintenance just merged: the next quick merge is an interval away"
        off = SimpleNamespace(**{**vars(settings), "archive_merge_seconds": 0})
        assert await archive_maintenance.merge_recent_once(redis, "third", reader, off) is None, "0: only maintenance"
        assert await redis.exists(keys.archive_merge_lock("third")) == 0
    finally:
        reader.close()
        await redis.aclose()
