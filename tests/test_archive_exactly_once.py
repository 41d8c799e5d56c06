"""Exactly-once archive writes (core/storage/archive_queue.py): whatever a crash interrupts and
whatever a replayed send queues again, the lake holds each message's content row and mailbox rows
once, and so each queued rows record.

The property test plays random interleavings of sends, replays (of messages still queued or
already sealed, some with other members, as after a membership change) and flushes that crash at
each point (before the commit, after it, after the sealed seqs, after the queue's trim) on
fakeredis and an embedded lake; the fixed story runs on the real Redis and on each catalog.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_archive import config as any_lake  # noqa: F401  (the fixture: a fresh embedded lake, and one on PostgreSQL + S3)
from typer.testing import CliRunner

from imflow.cli import cli
from imflow.core.models import Message
from imflow.core.storage import archive, archive_queue, keys, lake, redis_client
from imflow.core.storage.archive import LakeWriter
from imflow.core.storage.lake import CONTENT, MAILBOX, MARKS, LakeConfig

PARTITIONS = 2
TABLE = "exactly_once_events"  # a plugin's rows table
# write fan-out (the members' rows) and read fan-out (the group's one row)
CONVERSATIONS = {"p:alice:bob": ["alice", "bob"], "p:alice:carol": ["alice", "carol"], "p:bob:dave": ["bob", "dave"],
                 "g:team": ["alice", "bob", "carol"], "g:crowd": ["g:crowd"]}
# where a flush dies: before its commit, after it, after the sealed seqs (before the queues'
# trim), after the trim (nothing after it may matter)
CRASHES = ("before_commit", "after_commit", "after_seal", "after_trim")
numbers = itertools.count(1)  # mids and row ids: unique across the examples sharing a lake


class Crash(Exception):
    """A writer dying at a chosen point."""


class CrashingWriter:
    """The lake's writer, dying before or after its commit when told to."""

    def __init__(self, db: duckdb.DuckDBPyConnection) -> None:
        self.lake = LakeWriter(lambda: db)
        self.crash: str | None = None

    def marked(self, anchors: dict[int, str]) -> dict[int, tuple[int, str | None]]:
        return self.lake.marked(anchors)

    def present(self, mids: dict[str, list[int]]) -> set[int]:
        return self.lake.present(mids)

    def write(self, records: list[dict[str, Any]]) -> int:
        if self.crash == "before_commit":
            raise Crash(self.crash)
        written = self.lake.write(records)
        if self.crash == "after_commit":
            raise Crash(self.crash)
        return written


class Story:
    """What the agents queued (sends, replays, rows) and what the lake must hold once each."""

    def __init__(self, redis: Any, db: duckdb.DuckDBPyConnection) -> None:
        self.redis, self.db = redis, db
        self.app = f"a{uuid.uuid4().hex[:8]}"
        self.writer = CrashingWriter(db)
        self.sent: list[tuple[Message, list[str]]] = []
        self.seqs: dict[str, int] = {}
        self.row_ids: list[int] = []

    async def queue(self, message: Message, members: list[str]) -> None:
        # the ingest partition: keyed by conversation, as the gateways produce sends
        partition = archive_queue.partition_for(message.conversation, PARTITIONS)
        async with self.redis.pipeline(transaction=False) as pipe:
            archive_queue.queue_message(pipe, self.app, partition, message, members)
            await pipe.execute()

    async def send(self, conversation: str) -> None:
        seq = self.seqs[conversation] = self.seqs.get(conversation, 0) + 1
        mid = next(numbers) << 12
        members = CONVERSATIONS[conversation]
        sender = "alice" if conversation.startswith("g:") else members[0]
        message = Message(mid=mid, seq=seq, conversation=conversation, sender=sender, client_msg_id=f"c{mid}",
                          body={"n": seq}, sent_at_ms=seq)
        self.sent.append((message, members))
        await self.queue(message, members)

    async def replay(self, which: int) -> None:
        """Step 2 of a send again (a Kafka replay): the same mid and seq, and for a write fan-out
        group with whoever is a member now."""
        if self.sent:
            message, members = self.sent[which % len(self.sent)]
            await self.queue(message, [*members, "zed"] if message.conversation == "g:team" else members)

    async def rows(self, partition: int | None = None) -> None:
        row = next(numbers)
        self.row_ids.append(row)
        where = row % PARTITIONS if partition is None else partition
        await archive_queue.enqueue_rows(self.redis, self.app, where, TABLE, [{"id": row, "at_ms": row}])

    async def flush(self, crash: str | None = None, max_records: int = 10_000) -> bool:
        """One flush; True if it gave a full batch. A crash leaves the queues as the dead writer left them."""
        self.writer.crash = crash if crash in ("before_commit", "after_commit") else None
        trim = archive_queue._trim_queues

        async def die_at_trim(*args: Any) -> None:
            if crash == "after_trim":
                await trim(*args)
            raise Crash(crash)

        dying = crash in ("after_seal", "after_trim")
        try:
            with mock.patch.object(archive_queue, "_trim_queues", die_at_trim if dying else trim):
                return await archive_queue.flush(self.redis, self.app, self.writer, range(PARTITIONS), max_records, log_limit=3)
        except Crash:
            return True
        finally:
            self.writer.crash = None

    async def drain(self) -> None:
        """Flush without crashing until every queue is empty."""
        while await self.flush():
            pass
        for partition in range(PARTITIONS):
            assert await self.redis.llen(keys.archive_pending(self.app, partition)) == 0

    def check(self) -> None:
        """The lake holds each message, mailbox row and queued row once, replays' members never."""
        mids = sorted({message.mid for message, _ in self.sent})
        listed = ", ".join(map(str, mids)) or "NULL"
        content = dict(self.db.execute(f"SELECT mid, count(*) FROM {CONTENT} WHERE mid IN ({listed}) GROUP BY 1").fetchall())
        assert content == dict.fromkeys(mids, 1)
        mailbox = sorted(self.db.execute(f"SELECT owner_uid, mid FROM {MAILBOX} WHERE mid IN ({listed})").fetchall())
        firsts = {message.mid: members for message, members in reversed(self.sent)}  # a mid's first members
        assert mailbox == sorted((owner, mid) for mid, members in firsts.items() for owner in members)
        if self.row_ids:
            ids = ", ".join(map(str, self.row_ids))
            rows = dict(self.db.execute(f"SELECT id, count(*) FROM {TABLE} WHERE id IN ({ids}) GROUP BY 1").fetchall())
            assert rows == dict.fromkeys(self.row_ids, 1)


@pytest.fixture(scope="module")
def shared_lake(tmp_path_factory: pytest.TempPathFactory):
    """One embedded lake for every example (making one takes ~0.3 s): each example's mids and rows are its own."""
    db = lake.connect(LakeConfig.from_url(tmp_path_factory.mktemp("exactly-once")))
    yield db
    assert archive.duplicates(db) == {CONTENT: 0, MAILBOX: 0}, "no example left a duplicate"
    db.close()


steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(sorted(CONVERSATIONS))),
        st.tuples(st.just("replay"), st.integers(0, 40)),
        st.tuples(st.just("rows"), st.just(0)),
        st.tuples(st.just("flush"), st.sampled_from([None, *CRASHES]), st.integers(1, 6)),
    ),
    max_size=24,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps)
# a commit that went through, then a flush with nothing new (it must still seal), then a replay
@example(steps=[("send", "p:alice:bob"), ("flush", "after_commit", 5), ("flush", None, 5), ("replay", 0), ("flush", None, 5)])
# sealed before the queue's trim: a replay after a flush that dies right after the trim is skipped
@example(steps=[("send", "g:team"), ("flush", "after_trim", 5), ("replay", 0), ("flush", None, 5)])
# a batch that went through, then smaller batches (another writer's max_records): the mark reaches past them
@example(steps=[("rows", 0), ("rows", 0), ("rows", 0), ("flush", "after_commit", 2), ("flush", None, 1)])
def test_every_message_is_written_once_whatever_crashes_and_replays_come(shared_lake: duckdb.DuckDBPyConnection,
                                                                          steps: list[tuple]) -> None:
    async def play() -> None:
        redis = redis_client.connect(None)
        story = Story(redis, shared_lake)
        for step in steps:
            if step[0] == "send":
                await story.send(step[1])
            elif step[0] == "replay":
                await story.replay(step[1])
            elif step[0] == "rows":
                await story.rows()
            else:
                await story.flush(step[1], step[2])
        await story.drain()
        story.check()
        await redis.aclose()

    asyncio.run(play())


@pytest.mark.redis
async def test_each_crash_point_then_a_replay_on_the_real_redis(real_redis, any_lake: LakeConfig) -> None:  # noqa: F811
    db = lake.connect(any_lake)
    try:
        story = Story(real_redis, db)
        for crash in CRASHES:
            for conversation in ("p:alice:bob", "g:team", "g:crowd"):  # all in partition 1
                await story.send(conversation)
            await story.rows(partition=0)
            await story.flush(crash)
            await story.replay(-1)  # the newest: queued twice, and maybe in the lake already
            await story.replay(0)  # the oldest: sealed already, after the first crash
        await story.drain()
        for message, _ in story.sent[:3]:
            await story.queue(message, ["alice", "bob", "carol", "zed"])  # replays of sealed messages only
        await story.drain()
        story.check()
        assert archive.duplicates(db) == {CONTENT: 0, MAILBOX: 0}
        sealed = {c: int(await real_redis.get(keys.conversation_sealed(c))) for c in story.seqs}
        assert sealed == story.seqs, "each conversation sealed up to its last message"
        marks = db.execute(f"SELECT partition, qid, taken FROM {MARKS}").fetchall()
        # the commits after the second and third flushes, each of both partitions
        assert len(marks) >= 4 and {partition for partition, _, _ in marks} == {0, 1}, marks
        assert all(len(qid) == 16 and int(qid, 16) >= 0 and taken >= 1 for _, qid, taken in marks), marks
    finally:
        db.close()


async def test_records_queued_without_a_qid_count_as_unmarked(tmp_path: Path) -> None:
    """Records an older version queued (no qid) are written; a batch of only such records gets
    no mark, and one with newer records after them is marked from its first newer one on (the
    older ones before it are covered too)."""
    redis = redis_client.connect(None)
    db = lake.connect(LakeConfig.from_url(tmp_path))
    story = Story(redis, db)
    old = {"kind": "rows", "table": TABLE, "rows": [{"id": 1, "at_ms": 1}]}
    await redis.rpush(keys.archive_pending(story.app, 1), orjson.dumps(old))
    await story.flush()
    assert db.execute(f"SELECT count(*) FROM {MARKS}").fetchone() == (0,), "nothing to mark by"
    await redis.rpush(keys.archive_pending(story.app, 1), orjson.dumps(old))
    await story.send("p:alice:bob")
    await story.rows(partition=1)  # after the old record: its mark covers that one too
    await story.flush("after_commit")
    await story.drain()
    story.check()
    assert db.execute(f"SELECT count(*) FROM {TABLE} WHERE id = 1").fetchone() == (2,), "queued twice, written twice"
    db.close()
    await redis.aclose()


def test_marks_say_how_far_batches_took_and_older_ones_are_pruned(tmp_path: Path) -> None:
    db = lake.connect(LakeConfig.from_url(tmp_path))
    try:
        marks = [{"kind": "mark", "partition": p, "qid": f"{p:016x}", "taken": 10 + p, "at_ms": 1000 * p, "last_qid": f"l{p}"}
                 for p in range(5)]
        marks.append({"kind": "mark", "partition": 1, "qid": f"{1:016x}", "taken": 30, "at_ms": 1500,
                      "last_qid": "further"})  # the same head, a batch that took further
        archive.write_records(db, marks)
        assert archive.marked(db, {1: f"{1:016x}", 2: "0" * 15 + "9", 7: f"{1:016x}"}) == {1: (30, "further")}, \
            "the partition's own, the most, and that batch's last record"
        assert archive.prune_marks(db, 2500) == 4
        assert archive.marked(db, {p: f"{p:016x}" for p in range(5)}) == {3: (13, "l3"), 4: (14, "l4")}
        assert archive.prune_marks(db, 2500) == 0
    finally:
        db.close()


def test_stats_shows_duplicates_written_around_the_queue(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = LakeConfig.from_url(data / "archive")
    message = {"mid": 1 << 12, "seq": 1, "conversation": "p:alice:bob", "sender": "alice", "client_msg_id": "c1",
               "body": {}, "sent_at_ms": 1}
    db = lake.connect(config)
    try:
        archive.write_records(db, [{"kind": "message", "message": message, "members": ["alice", "bob"]}])
        assert archive.duplicates(db) == {CONTENT: 0, MAILBOX: 0}
        archive.write_records(db, [{"kind": "message", "message": message, "members": ["alice", "bob"]}])  # not through the queue
        assert archive.duplicates(db) == {CONTENT: 1, MAILBOX: 2}
    finally:
        db.close()
    shown = CliRunner().invoke(cli, ["archive", "stats", "--data-dir", str(data)], env={"IMFLOW_ARCHIVE_CATALOG": "",
                                                                                        "IMFLOW_ARCHIVE_DATA_PATH": ""})
    assert shown.exit_code == 0, shown.output
    assert "duplicates" in shown.output and "im_msg_content 1, im_user_msg_box 2" in shown.output, shown.output


def test_a_lake_made_by_an_older_imflow_gets_the_columns_it_lacks(tmp_path: Path) -> None:
    """The class: a core table made by an earlier schema (here the marks without ``taken``) gets
    the missing column when a newer imflow connects, so ``marked`` and writes work on it."""
    config = LakeConfig.from_url(tmp_path / "old")
    db = lake.connect(config)
    db.execute(f"ALTER TABLE {lake.LAKE}.{MARKS} DROP COLUMN taken")
    db.execute(f"ALTER TABLE {lake.LAKE}.{CONTENT} DROP COLUMN created_at_ms")
    db.close()
    db = lake.connect(config)
    try:
        for table in (MARKS, CONTENT):
            columns = {row[0] for row in db.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = $lake AND table_name = $table",
                {"lake": lake.LAKE, "table": table}).fetchall()}
            assert columns == set(lake.SCHEMAS[table].names), table
        db.execute(f"USE {lake.LAKE}")
        assert archive.marked(db, {0: "nothing-marked-yet"}) == {}
    finally:
        db.close()
