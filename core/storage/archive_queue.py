"""The way into the archive: records wait in Redis lists until a writer commits them to the lake.

Agents append (an RPUSH, part of the durable write before the sender's ACK); a periodic
writer takes a batch under a lock, commits it to the lake (one transaction), then trims what it
wrote. A crash between the commit and the trim writes the batch again, which readers de-duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import zlib
from typing import TYPE_CHECKING

import orjson

from . import keys, locks
from .archive import CONTENT, DELETIONS, MAILBOX, READ_EVENTS
from .scripts import queue_script, run_pipeline

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..models import Message

LOCK_MS = 60_000
PLUGIN_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def partition_for(key: str | int, partitions: int) -> int:
    """Which partition's queue a record goes to: a stable hash of what it is about."""
    return zlib.crc32(str(key).encode()) % partitions


def queue_message(pipe: Pipeline, app_id: str, partition: int, message: Message, members: list[str]) -> None:
    """Add the message's archive record to a pipeline (one RPUSH)."""
    record = {"kind": "message", "message": message.model_dump(), "members": members}
    pipe.rpush(keys.archive_pending(app_id, partition), orjson.dumps(record))


async def enqueue_rows(redis: Redis, app_id: str, partition: int, table: str, rows: list[dict]) -> None:
    """Rows for a plugin's own archive table (``[a-z_]+``); readers de-duplicate on its key."""
    if not PLUGIN_TABLE.match(table) or table in (CONTENT, MAILBOX, DELETIONS):
        raise ValueError(f"invalid archive table name {table!r}")
    await redis.rpush(keys.archive_pending(app_id, partition), orjson.dumps({"kind": "rows", "table": table, "rows": rows}))


async def enqueue_deletion(redis: Redis, app_id: str, partitions: int, owner: str, mid: int, at_ms: int) -> None:
    """Record that ``owner`` deleted message ``mid`` for themself at ``at_ms`` (queued by owner,
    one of ``partitions`` queues)."""
    record = {"kind": "delete", "owner": owner, "mid": mid, "at_ms": at_ms}
    await redis.rpush(keys.archive_pending(app_id, partition_for(owner, partitions)), orjson.dumps(record))


async def enqueue_read(
    redis: Redis, app_id: str, partitions: int, owner: str, conversation: str, read_seq: int | None, at_ms: int
) -> None:
    """Record that ``owner`` has read ``conversation`` up to ``read_seq`` at ``at_ms``: the
    ``READ_EVENTS`` table analysts study read delays and unread backlogs with."""
    row = {"owner_uid": owner, "conversation": conversation, "read_seq": read_seq, "at_ms": at_ms}
    record = {"kind": "rows", "table": READ_EVENTS, "rows": [row]}
    await redis.rpush(keys.archive_pending(app_id, partition_for(owner, partitions)), orjson.dumps(record))


async def flush(
    redis: Redis, app_id: str, write: Callable[[list[dict]], int], partitions: range | list[int], max_records: int = 10_000,
    log_limit: int | None = None,
) -> bool:
    """Commit what waits in these partitions' queues to the archive in one write (at most
    ``max_records`` a partition); True if some partition gave that many, so more may wait.

    ``write(records)`` commits a batch (one lake transaction, ``archive.write_records`` on the
    process's lake connection) and is run in a worker thread. One write per call, whatever the
    number of partitions, so files stay few and large. A partition whose lock another writer
    holds is skipped this time. The queues are trimmed only after the commit; then, with
    ``log_limit`` (the conversation log's size), each written conversation's log is trimmed to
    its newest ``log_limit`` among what is written: a message leaves Redis only once the
    archive has it.
    """
    held: list[tuple[int, int]] = []  # (partition, records taken)
    records: list[dict] = []
    async with contextlib.AsyncExitStack() as stack:
        for partition in partitions:
            if not await stack.enter_async_context(locks.try_hold(redis, keys.archive_lock(app_id, partition), LOCK_MS)):
                continue
            entries = await redis.lrange(keys.archive_pending(app_id, partition), 0, max_records - 1)
            held.append((partition, len(entries)))
            records.extend(orjson.loads(entry) for entry in entries)
        if records:
            await asyncio.to_thread(write, records)
            async with redis.pipeline(transaction=False) as pipe:
                for partition, taken in held:
                    if taken:
                        pipe.ltrim(keys.archive_pending(app_id, partition), taken, -1)
                await pipe.execute()
            if log_limit is not None:
                await _trim_logs(redis, records, log_limit)
        return any(taken >= max_records for _, taken in held)


async def _trim_logs(redis: Redis, records: list[dict], log_limit: int) -> None:
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
