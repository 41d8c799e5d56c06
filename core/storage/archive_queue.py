"""The way into the archive: records wait in Redis lists until a writer commits them to the lake, once each.

Agents append (an RPUSH, part of the durable write before the sender's ACK); each record gets
a ``qid`` there. A periodic writer takes a batch (the head of each partition's list) under a
lock, commits it to the lake in one transaction together with a mark per partition (the qid of
the first record it took there and how many it took from that one on), then raises the
conversations' sealed seqs and trims the lists. Whatever a crash interrupts, the next batch
skips what the lake holds: the records a mark covers, and message records a replayed send
queued again (``seq <= sealed``, or a mid already in the batch). So content and mailbox rows
are written exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from . import keys, locks
from .archive import CONTENT, DELETIONS, MAILBOX, MARKS, READ_EVENTS, VERSIONS
from .scripts import queue_script, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..models import Message

LOCK_MS = 60_000
log = logging.getLogger(__name__)
PLUGIN_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
UNTRIMMED = 2**31  # a log limit no conversation log reaches: the sealed seq rises, the log keeps all


class Writer(Protocol):
    """The lake as ``flush`` uses it (``archive.LakeWriter``); its methods are called in worker threads."""

    def marked(self, anchors: dict[int, str]) -> dict[int, tuple[int, str | None]]:
        """Queue partition -> (the most records a committed batch took from the record with this
        qid on, the qid of that batch's last record) (``archive.marked``)."""
        ...

    def write(self, records: list[dict[str, Any]]) -> int:
        """Commit these records (one transaction); returns the rows written."""
        ...

    def present(self, mids: dict[str, list[int]]) -> set[int]:
        """Which of these messages (conversation -> mids) the lake holds."""
        ...


def _record(fields: dict[str, Any]) -> bytes:
    """A queued record: its fields and a ``qid`` of its own (16 hex digits), what the lake's marks name."""
    return orjson.dumps({**fields, "qid": os.urandom(8).hex()})


def partition_for(key: str | int, partitions: int) -> int:
    """Which partition's queue a record goes to: a stable hash of what it is about."""
    return zlib.crc32(str(key).encode()) % partitions


def queue_message(pipe: Pipeline, app_id: str, partition: int, message: Message, members: list[str]) -> None:
    """Add the message's archive record to a pipeline (one RPUSH)."""
    record = {"kind": "message", "message": message.model_dump(), "members": members}
    pipe.rpush(keys.archive_pending(app_id, partition), _record(record))


async def enqueue_rows(redis: Redis, app_id: str, partition: int, table: str, rows: list[dict]) -> None:
    """Rows for a plugin's own archive table (``[a-z_]+``); readers de-duplicate on its key."""
    if not PLUGIN_TABLE.match(table) or table in (CONTENT, MAILBOX, DELETIONS, MARKS):
        raise ValueError(f"invalid archive table name {table!r}")
    await redis.rpush(keys.archive_pending(app_id, partition), _record({"kind": "rows", "table": table, "rows": rows}))


async def enqueue_deletion(redis: Redis, app_id: str, partitions: int, owner: str, mid: int, at_ms: int) -> None:
    """Record that ``owner`` deleted message ``mid`` for themself at ``at_ms`` (queued by owner,
    one of ``partitions`` queues)."""
    record = {"kind": "delete", "owner": owner, "mid": mid, "at_ms": at_ms}
    await redis.rpush(keys.archive_pending(app_id, partition_for(owner, partitions)), _record(record))


async def enqueue_read(
    redis: Redis, app_id: str, partitions: int, owner: str, conversation: str, read_seq: int | None, at_ms: int
) -> None:
    """Record that ``owner`` has read ``conversation`` up to ``read_seq`` at ``at_ms``: the
    ``READ_EVENTS`` table analysts study read delays and unread backlogs with."""
    row = {"owner_uid": owner, "conversation": conversation, "read_seq": read_seq, "at_ms": at_ms}
    record = {"kind": "rows", "table": READ_EVENTS, "rows": [row]}
    await redis.rpush(keys.archive_pending(app_id, partition_for(owner, partitions)), _record(record))


async def flush(
    redis: Redis, app_id: str, writer: Writer, partitions: range | list[int], max_records: int = 10_000,
    log_limit: int | None = None,
) -> bool:
    """Commit what waits in these partitions' queues to the archive in one write (at most
    ``max_records`` a partition), each record once; True if some partition gave that many, so
    more may wait.

    ``writer`` is the lake (``archive.LakeWriter``), called in worker threads. One write per
    call, whatever the number of partitions, so files stay few and large; none when everything
    taken is in the lake already (a partition gives more than ``max_records`` when a committed
    batch of a crashed writer took more: those are only sealed and trimmed). A partition whose
    lock another writer holds is skipped this time. After the commit, each conversation taken
    gets its sealed seq raised and, with
    ``log_limit`` (the conversation log's size), its log trimmed to its newest ``log_limit``
    among what is sealed (a message leaves Redis only once the archive has it); then the
    queues are trimmed. Raises Redis errors, and whatever ``writer`` raises (the records stay
    queued: the next call skips what a commit that went through holds).
    """
    held: list[_Taken] = []
    async with contextlib.AsyncExitStack() as stack:
        for partition in partitions:
            if not await stack.enter_async_context(locks.try_hold(redis, keys.archive_lock(app_id, partition), LOCK_MS)):
                continue
            entries = await redis.lrange(keys.archive_pending(app_id, partition), 0, max_records - 1)
            held.append(_Taken(partition, [orjson.loads(entry) for entry in entries], entries))
        if any(taken.records for taken in held):
            fresh = await _not_written(redis, app_id, writer, held)
            if fresh:
                at_ms = int(time.time() * 1000)
                marks = []
                for taken in held:
                    anchor = _anchor(taken.records)
                    if anchor is not None:  # None: only an older version's records, which have no qid
                        marks.append({"kind": "mark", "partition": taken.partition, "qid": taken.records[anchor]["qid"],
                                      "taken": len(taken.records) - anchor, "at_ms": at_ms,
                                      "last_qid": taken.records[-1].get("qid")})
                # the locks stay held until the commit is over, even when this task is cancelled
                # (a shutdown): another writer must not take the same records meanwhile
                commit = asyncio.ensure_future(asyncio.to_thread(writer.write, fresh + marks))
                try:
                    await asyncio.shield(commit)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await commit
                    raise
            # the sealed seqs first, the queues then: a crash between them leaves records that
            # both the lake's marks and the sealed seqs skip
            records = [record for taken in held for record in taken.records]
            await _seal(redis, records, UNTRIMMED if log_limit is None else log_limit)
            await _trim_queues(redis, app_id, held)
        return any(len(taken.records) >= max_records for taken in held)


@dataclass
class _Taken:
    """What a flush took from the head of one partition's queue: the records, and as queued."""

    partition: int
    records: list[dict]
    entries: list[bytes | str]  # as LRANGE gave them (str when the client decodes responses)


def _anchor(records: list[dict]) -> int | None:
    """Where a batch's first record with a qid is (records queued by an older version have none)."""
    return next((index for index, record in enumerate(records) if record.get("qid")), None)


async def _not_written(redis: Redis, app_id: str, writer: Writer, held: list[_Taken]) -> list[dict]:
    """The taken records the lake does not hold yet. A partition's records are taken further
    when a mark says a committed batch took more of that queue than this one did (a smaller
    ``max_records``): those are in the lake, and are sealed and trimmed with the rest.

    A batch is always the head of its queue, and the queue changes only at its ends (RPUSH,
    and LTRIM after a commit), so a mark (the batch's first record with a qid, how many it
    took from that one on, and the qid of its last) names records still at the head, and the
    ones before its first (an older version's) are in the lake too. The last qid must match
    where the mark ends: a Redis that lost writes (a failover to a lagging replica) may hold a
    shorter queue with new records where the batch's were, and those must be written.

    A message record whose seq is at most its conversation's sealed seq is a replayed send
    (step 2 of core/sending.py queues a message again when Kafka redelivers it): such a record
    is dropped when the lake holds its mid (``writer.present``; a record of a conversation
    whose records went to another queue, after a change of partition count, is not in the
    lake and is written). A message whose mid came earlier in the batch is dropped too.
    """
    anchors = {taken.partition: index for taken in held if (index := _anchor(taken.records)) is not None}
    qids = {taken.partition: taken.records[anchors[taken.partition]]["qid"] for taken in held if taken.partition in anchors}
    marks = await asyncio.to_thread(writer.marked, qids) if qids else {}
    rest: list[tuple[int, list[dict]]] = []  # (records in the lake already, all records taken)
    for taken in held:
        done = 0
        if taken.partition in marks:
            count, last = marks[taken.partition]
            end = anchors[taken.partition] + count
            if end > len(taken.records):
                more = await redis.lrange(keys.archive_pending(app_id, taken.partition), len(taken.records), end - 1)
                taken.entries.extend(more)
                taken.records.extend(orjson.loads(entry) for entry in more)
            if end <= len(taken.records) and taken.records[end - 1].get("qid") == last:
                done = end
            else:  # the queue is not what the batch left: write again (a duplicate beats a loss)
                log.warning("archive queue %s: a committed batch's records are not where its mark says; writing them again",
                            taken.partition)
        rest.append((done, taken.records))
    conversations = sorted(
        {record["message"]["conversation"] for done, records in rest for record in records[done:] if record["kind"] == "message"}
    )
    sealed = await _sealed(redis, conversations)
    seen: set[int] = set()
    fresh: list[dict] = []
    replays: list[dict] = []  # at or below the sealed seq: written only if the lake lacks them
    for done, records in rest:
        for index, record in enumerate(records):
            if record["kind"] == "message":
                message = record["message"]
                if message["mid"] in seen:
                    continue
                seen.add(message["mid"])
                if index >= done and message["seq"] <= sealed.get(message["conversation"], 0):
                    replays.append(record)
                    continue
            if index >= done:
                fresh.append(record)
    if replays:
        asked: dict[str, list[int]] = defaultdict(list)
        for record in replays:
            asked[record["message"]["conversation"]].append(record["message"]["mid"])
        stored = await asyncio.to_thread(writer.present, dict(asked))
        fresh.extend(record for record in replays if record["message"]["mid"] not in stored)
    return fresh


async def _sealed(redis: Redis, conversations: list[str]) -> dict[str, int]:
    """Each conversation's sealed seq (0: none yet): one pipeline of GETs, each key alone (a cluster spreads them)."""
    if not conversations:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for conversation in conversations:
            pipe.get(keys.conversation_sealed(conversation))
        values = await pipe.execute()
    return {conversation: int(value) for conversation, value in zip(conversations, values, strict=True) if value is not None}


def change_mark(seq: int, kind: str, version: int) -> str:
    """The member of one change (``kind`` "recall" or "edit", ``version`` the message's version
    after it) in the conversation's amended and untold sets (keys.py): ``"{seq}:r"`` for a
    recall, ``"{seq}:{version}"`` for an edit, so each change leaves them on its own."""
    return f"{seq}:r" if kind == "recall" else f"{seq}:{version}"


async def _seal(redis: Redis, records: list[dict], log_limit: int) -> None:
    """Tell each conversation of these sealed records how far it is sealed, and trim its log.
    The changes of their ``VERSIONS`` rows (recalls, edits) leave the conversation's amended
    set first, exactly those (``change_mark``): the log may let an entry go once no change of
    it is still queued (``trim_log.lua``)."""
    sealed: dict[str, int] = {}
    amended: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.get("kind") == "message":
            message = record["message"]
            conversation = message["conversation"]
            sealed[conversation] = max(sealed.get(conversation, 0), message["seq"])
        elif record.get("kind") == "rows" and record.get("table") == VERSIONS:
            for row in record["rows"]:
                mark = change_mark(int(row["seq"]), row["kind"], int(row["version"]))
                amended[row["conversation"]].add(mark)
    if not sealed and not amended:
        return

    def trim_all(pipe: Pipeline) -> None:
        for conversation, marks in amended.items():
            pipe.zrem(keys.conversation_amended(conversation), *marks)
        for conversation, seq in sealed.items():
            log_keys = [keys.conversation_log(conversation), keys.conversation_sealed(conversation),
                        keys.conversation_amended(conversation)]
            queue_script(pipe, "trim_log", log_keys, [seq, log_limit])

    await run_pipeline(redis, trim_all)


async def _trim_queues(redis: Redis, app_id: str, held: list[_Taken]) -> None:
    """Drop the records taken from each partition's queue (they are in the lake now), each
    only if the queue's head is still what was taken (``trim_queue.lua``): a writer whose lock
    ran out meanwhile must not drop records another writer left."""

    def trim_all(pipe: Pipeline) -> list[tuple[int, Any]]:
        return [
            (taken.partition, queue_script(pipe, "trim_queue", [keys.archive_pending(app_id, taken.partition)],
                                           [len(taken.entries), taken.entries[0], taken.entries[-1]]))
            for taken in held if taken.entries
        ]

    replies, _ = await run_pipeline(redis, trim_all)
    for partition, reply in replies:
        if not reply.value:
            log.warning("archive queue %s: its head changed while this writer committed (its lock ran out?); not trimmed",
                        partition)
