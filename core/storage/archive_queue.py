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
import os
import re
import time
import zlib
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from . import keys, locks
from .archive import CONTENT, DELETIONS, MAILBOX, MARKS, READ_EVENTS
from .scripts import queue_script, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..models import Message

LOCK_MS = 60_000
PLUGIN_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
UNTRIMMED = 2**31  # a log limit no conversation log reaches: the sealed seq rises, the log keeps all


class Writer(Protocol):
    """The lake as ``flush`` uses it (``archive.LakeWriter``); both are called in worker threads."""

    def marked(self, anchors: dict[int, str]) -> dict[int, int]:
        """Queue partition -> the most records a committed batch took from the record with this
        qid on (``archive.marked``)."""
        ...

    def write(self, records: list[dict[str, Any]]) -> int:
        """Commit these records (one transaction); returns the rows written."""
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
    held: list[tuple[int, list[dict]]] = []  # (partition, the records taken from its head, in order)
    async with contextlib.AsyncExitStack() as stack:
        for partition in partitions:
            if not await stack.enter_async_context(locks.try_hold(redis, keys.archive_lock(app_id, partition), LOCK_MS)):
                continue
            entries = await redis.lrange(keys.archive_pending(app_id, partition), 0, max_records - 1)
            held.append((partition, [orjson.loads(entry) for entry in entries]))
        if any(records for _, records in held):
            fresh = await _not_written(redis, app_id, writer, held)
            if fresh:
                at_ms = int(time.time() * 1000)
                marks = []
                for partition, records in held:
                    anchor = _anchor(records)
                    if anchor is not None:  # None: only an older version's records, which have no qid
                        marks.append({"kind": "mark", "partition": partition, "qid": records[anchor]["qid"],
                                      "taken": len(records) - anchor, "at_ms": at_ms})
                await asyncio.to_thread(writer.write, fresh + marks)
            # the sealed seqs first, the queues then: a crash between them leaves records that
            # both the lake's marks and the sealed seqs skip
            taken = [record for _, records in held for record in records]
            await _seal(redis, taken, UNTRIMMED if log_limit is None else log_limit)
            await _trim_queues(redis, app_id, held)
        return any(len(records) >= max_records for _, records in held)


def _anchor(records: list[dict]) -> int | None:
    """Where a batch's first record with a qid is (records queued by an older version have none)."""
    return next((index for index, record in enumerate(records) if record.get("qid")), None)


async def _not_written(redis: Redis, app_id: str, writer: Writer, held: list[tuple[int, list[dict]]]) -> list[dict]:
    """The taken records the lake does not hold yet, in queue order. A partition's records are
    taken further when a mark says a committed batch took more of that queue than this one did
    (a smaller ``max_records``): those are in the lake, and are sealed and trimmed with the rest.

    A batch is always the head of its queue, and the queue changes only at its ends (RPUSH,
    and LTRIM after a commit), so a mark (the batch's first record with a qid, and how many
    it took from that one on) names records still at the head, and the ones before its first
    (an older version's) are in the lake too. A message record is in the lake too if its seq
    is at most its conversation's sealed seq: every record of a conversation goes to one
    partition (the ingest partition, keyed by conversation), a message's first record is
    queued in seq order (step 2 of core/sending.py queues a batch in the order step 1
    numbered it, and a partition's batches run one after another), and a replayed send
    re-queues the same mid and seq. A flush seals a conversation up to the highest seq it took
    only after its commit, and takes a prefix: every seq up to that was in this batch or an
    earlier one. (So the queue's partitions must stay the topic's: a conversation's records in
    one queue.) A message whose mid came earlier in the batch (the first record and its
    replay) is dropped too.
    """
    anchors = {partition: index for partition, records in held if (index := _anchor(records)) is not None}
    qids = {partition: records[anchors[partition]]["qid"] for partition, records in held if partition in anchors}
    taken = await asyncio.to_thread(writer.marked, qids) if qids else {}
    rest: list[tuple[int, list[dict]]] = []  # (records in the lake already, all records taken)
    for partition, records in held:
        done = anchors[partition] + taken[partition] if partition in taken else 0
        if done > len(records):
            more = await redis.lrange(keys.archive_pending(app_id, partition), len(records), done - 1)
            records.extend(orjson.loads(entry) for entry in more)
        rest.append((done, records))
    conversations = sorted(
        {record["message"]["conversation"] for done, records in rest for record in records[done:] if record["kind"] == "message"}
    )
    sealed = await _sealed(redis, conversations)
    seen: set[int] = set()
    fresh = []
    for done, records in rest:
        for index, record in enumerate(records):
            if record["kind"] == "message":
                message = record["message"]
                if message["mid"] in seen or message["seq"] <= sealed.get(message["conversation"], 0):
                    continue
                seen.add(message["mid"])
            if index >= done:
                fresh.append(record)
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


async def _seal(redis: Redis, records: list[dict], log_limit: int) -> None:
    """Tell each conversation of these sealed records how far it is sealed, and trim its log."""
    sealed: dict[str, int] = {}
    for record in records:
        if record.get("kind") == "message":
            message = record["message"]
            conversation = message["conversation"]
            sealed[conversation] = max(sealed.get(conversation, 0), message["seq"])
    if not sealed:
        return

    def trim_all(pipe: Pipeline) -> None:
        for conversation, seq in sealed.items():
            log_keys = [keys.conversation_log(conversation), keys.conversation_sealed(conversation)]
            queue_script(pipe, "trim_log", log_keys, [seq, log_limit])

    await run_pipeline(redis, trim_all)


async def _trim_queues(redis: Redis, app_id: str, held: list[tuple[int, list[dict]]]) -> None:
    """Drop the records taken from each partition's queue (they are in the lake now)."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition, records in held:
            if records:
                pipe.ltrim(keys.archive_pending(app_id, partition), len(records), -1)
        await pipe.execute()
