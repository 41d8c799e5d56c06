"""The archive queue's faults that must never lose a message (core/storage/archive_queue.py).

Each test plays one fault on fakeredis and an embedded lake and states what the lake must hold
after it: a writer that outlives its partition lock while another writer flushes, a
conversation whose records sit in two partitions' queues (the partition count changed), a Redis
that rolls back after a commit (a failover to a lagging replica), and a flush cancelled while its
write runs in a worker thread. Duplicates are allowed where the fault makes them unavoidable
(and counted); a lost message never is. Also: maintenance prunes old exactly-once marks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from imflow.core.models import Message
from imflow.core.storage import archive, archive_maintenance, archive_queue, keys, lake, redis_client
from imflow.core.storage.archive import LakeWriter
from imflow.core.storage.lake import CONTENT, MAILBOX, MARKS, LakeConfig
from imflow.testing import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import duckdb

MEMBERS = {"p:alice:bob": ["alice", "bob"], "p:carol:dave": ["carol", "dave"], "g:team": ["alice", "bob", "carol"]}
STALL_S = 10.0  # the most a gated write waits to be let go (a failing test must not hang)


class Crash(Exception):
    """A writer dying right after its commit went through."""


class FaultyWriter(LakeWriter):
    """The lake's writer (everything but ``write`` is the real one's), recording each write's
    records. ``gated``: each write sets ``entered``, then waits in its worker thread until
    ``release`` is set. ``crash``: each write raises Crash after its commit."""

    def __init__(self, db: duckdb.DuckDBPyConnection, gated: bool = False, crash: bool = False) -> None:
        super().__init__(lambda: db)
        self.gated, self.crash = gated, crash
        self.entered, self.release = threading.Event(), threading.Event()
        self.writes: list[list[dict[str, Any]]] = []

    async def writing(self) -> bool:
        """Whether a write has begun (for ``eventually``)."""
        return self.entered.is_set()

    def write(self, records: list[dict[str, Any]]) -> int:
        self.writes.append(records)
        if self.gated:
            self.entered.set()
            if not self.release.wait(STALL_S):
                raise TimeoutError("the test never let the stalled write go")
        written = super().write(records)
        if self.crash:
            raise Crash("after the commit")
        return written


class Fault:
    """One test's app, fakeredis and lake, and the messages it queued."""

    def __init__(self, tmp_path: Path) -> None:
        self.redis = redis_client.connect(None)
        self.db = lake.connect(LakeConfig.from_url(tmp_path / "lake"))
        self.app = "faults"
        self.mids = 0
        self.queued: list[Message] = []

    async def queue(self, partition: int, conversation: str, seqs: range) -> list[int]:
        """Queue messages of ``conversation`` with these seqs in ``partition``'s queue; their mids."""
        mids = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for seq in seqs:
                self.mids += 1
                mid = self.mids << 12
                message = Message(mid=mid, seq=seq, conversation=conversation, sender=MEMBERS[conversation][0],
                                  client_msg_id=f"c{mid}", body={"n": seq}, sent_at_ms=seq)
                archive_queue.queue_message(pipe, self.app, partition, message, MEMBERS[conversation])
                self.queued.append(message)
                mids.append(mid)
            await pipe.execute()
        return mids

    async def flush(self, writer: Any, partitions: list[int]) -> bool:
        return await archive_queue.flush(self.redis, self.app, writer, partitions, log_limit=3)

    async def drain(self, partitions: list[int]) -> None:
        """Flush these partitions with a plain writer until their queues are empty."""
        writer = FaultyWriter(self.db)
        for _ in range(10):  # a flush takes everything here (max_records is far above): a few suffice
            if not await self.flush(writer, partitions) and not await self.pending(partitions):
                return
        raise AssertionError(f"queues not drained: {await self.pending(partitions)} records left")

    async def pending(self, partitions: list[int] | range = range(2)) -> int:
        return sum([await self.redis.llen(keys.archive_pending(self.app, partition)) for partition in partitions])

    def copies(self) -> dict[int, int]:
        """How many content rows each queued message has in the lake (0: lost)."""
        found = dict(self.db.execute(f"SELECT mid, count(*) FROM {CONTENT} GROUP BY 1").fetchall())
        return {message.mid: found.get(message.mid, 0) for message in self.queued}

    def mailbox_copies(self) -> dict[tuple[str, int], int]:
        """How many mailbox rows each (member, queued message) has in the lake."""
        found = {(owner, mid): n for owner, mid, n in self.db.execute(
            f"SELECT owner_uid, mid, count(*) FROM {MAILBOX} GROUP BY 1, 2").fetchall()}
        return {(owner, m.mid): found.get((owner, m.mid), 0) for m in self.queued for owner in MEMBERS[m.conversation]}

    async def close(self) -> None:
        self.db.close()
        await self.redis.aclose()


@pytest.fixture
async def fault(tmp_path: Path) -> AsyncIterator[Fault]:
    story = Fault(tmp_path)
    yield story
    await story.close()


async def test_a_writer_outliving_its_lock_loses_nothing(fault: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer A's lake write stalls past the partition lock's TTL; writer B flushes the same
    partition meanwhile and more messages are queued; then A finishes. Required: every message
    in the lake (none lost), duplicates only of A's batch, the queue empty at the end."""
    monkeypatch.setattr(archive_queue, "LOCK_MS", 300)
    first = await fault.queue(0, "p:alice:bob", range(1, 4)) + await fault.queue(0, "g:team", range(1, 3))
    stalled = FaultyWriter(fault.db, gated=True)
    a = asyncio.create_task(fault.flush(stalled, [0]))
    try:
        await eventually(stalled.writing, timeout=STALL_S)
        await asyncio.sleep(archive_queue.LOCK_MS / 1000 + 0.2)  # past the TTL set above: A's lock has expired
        await fault.flush(FaultyWriter(fault.db), [0])  # writer B
        later = await fault.queue(0, "p:alice:bob", range(4, 7)) + await fault.queue(0, "g:team", range(3, 4))
    finally:
        stalled.release.set()
    # A may end normally or report that it lost its lock: either way what follows must hold
    outcome = (await asyncio.gather(a, return_exceptions=True))[0]
    await fault.drain([0])
    copies = fault.copies()
    assert [mid for mid, n in copies.items() if n == 0] == [], f"messages lost (A's flush ended with {outcome!r})"
    assert all(copies[mid] == 1 for mid in later), copies
    assert {mid for mid, n in copies.items() if n > 1} <= set(first), copies
    assert archive.duplicates(fault.db)[CONTENT] <= len(first)
    assert await fault.pending([0]) == 0


async def test_a_conversation_queued_in_two_partitions_is_written_once(fault: Fault) -> None:
    """After a change of the partition count a conversation's records sit in two queues: seqs
    1-5 in partition 0, seqs 6-10 in partition 1. Flushing partition 1 first (its sealed seq
    rises to 10), then partition 0, must write all ten messages, each once."""
    await fault.queue(0, "g:team", range(1, 6))
    await fault.queue(1, "g:team", range(6, 11))
    await fault.drain([1])
    await fault.drain([0])
    assert fault.copies() == {message.mid: 1 for message in fault.queued}
    assert set(fault.mailbox_copies().values()) == {1}
    assert archive.duplicates(fault.db) == {CONTENT: 0, MAILBOX: 0}


async def test_a_redis_rolled_back_after_a_commit_loses_no_new_message(fault: Fault) -> None:
    """A flush commits a batch of N records and dies before sealing and trimming; Redis then
    fails over to a replica that lagged (the queue holds only the first k < N records, the
    sealed seqs are gone) and new messages are queued. Required: every new message in the
    lake (duplicates of the old batch allowed), the queue empty at the end."""
    old = await fault.queue(0, "p:alice:bob", range(1, 6))
    with pytest.raises(Crash):
        await fault.flush(FaultyWriter(fault.db, crash=True), [0])
    assert set(fault.copies().values()) == {1}, "the batch was committed"
    queue = keys.archive_pending(fault.app, 0)
    await fault.redis.ltrim(queue, 0, 1)  # the replica had the first 2 of the 5 records only
    await fault.redis.delete(keys.conversation_sealed("p:alice:bob"), keys.conversation_sealed("p:carol:dave"))
    new = await fault.queue(0, "p:alice:bob", range(6, 8)) + await fault.queue(0, "p:carol:dave", range(1, 3))
    await fault.drain([0])
    copies = fault.copies()
    assert {mid: copies[mid] for mid in new} == dict.fromkeys(new, 1), "every new message written, once"
    assert all(copies[mid] >= 1 for mid in old), copies
    assert await fault.pending([0]) == 0


async def test_a_cancelled_flush_keeps_its_lock_until_its_write_ends(fault: Fault) -> None:
    """A flush cancelled while its write runs in a worker thread: the write goes on, so the
    partition lock must stay held until it has finished (a flush started meanwhile takes
    nothing), and later flushes write nothing twice."""
    await fault.queue(0, "p:alice:bob", range(1, 4))
    stalled = FaultyWriter(fault.db, gated=True)
    task = asyncio.create_task(fault.flush(stalled, [0]))
    try:
        await eventually(stalled.writing, timeout=STALL_S)
        task.cancel()
        # the unshielded flush ends at once (and frees its lock); one that waits for its write does not
        await asyncio.wait({task}, timeout=0.5)
        assert await fault.redis.exists(keys.archive_lock(fault.app, 0)), "the lock freed while the write runs"
        meanwhile = FaultyWriter(fault.db)
        await fault.flush(meanwhile, [0])
        assert meanwhile.writes == [], "a flush took the records a running write is committing"
        assert await fault.pending([0]) == 3
    finally:
        stalled.release.set()
    await asyncio.gather(task, return_exceptions=True)
    await fault.drain([0])
    assert fault.copies() == {message.mid: 1 for message in fault.queued}
    assert archive.duplicates(fault.db) == {CONTENT: 0, MAILBOX: 0}


async def test_maintenance_prunes_marks_older_than_it_keeps(fault: Fault) -> None:
    """``maintain`` at the real current time deletes the marks older than MARKS_KEPT_MS and
    keeps the newer ones (the one a flush just wrote among them)."""
    await fault.queue(0, "p:alice:bob", range(1, 3))
    await fault.drain([0])
    now = int(time.time() * 1000)
    kept = archive_maintenance.MARKS_KEPT_MS
    mark = {"kind": "mark", "qid": "0" * 16, "taken": 3, "last_qid": "1" * 16}
    archive.write_records(fault.db, [
        {**mark, "partition": 7, "at_ms": now - kept - 60_000},  # a minute too old
        {**mark, "partition": 8, "at_ms": now - kept + 60_000},  # a minute inside
    ])
    settings = SimpleNamespace(archive_retention_days=0, archive_snapshot_days=7)
    report = archive_maintenance.maintain(fault.db, settings)
    assert report.marks_pruned == 1
    assert sorted(row[0] for row in fault.db.execute(f"SELECT partition FROM {MARKS}").fetchall()) == [0, 8]
