"""The archiving service: commit what waits in the archive queue to the archive (R8), and maintain the archive.

``seal`` runs on every worker's timer; per-partition locks (core/storage/locks.py) keep one
writer per partition at a time, so workers may tick together. ``maintain`` runs on every
worker's slower timer, ``merge_recent`` (the newest small files) on a faster one; for each, a
lock held for one interval makes one worker do it each interval.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .storage import archive_maintenance, archive_queue
from .storage.archive import LakeWriter

if TYPE_CHECKING:
    from .agents import AgentContext

log = logging.getLogger(__name__)


async def seal(ctx: AgentContext) -> None:
    """Commit every partition's queue to the lake; goes on while a partition gives a full batch.
    Raises Redis and lake errors (the next tick tries again, skipping what a commit that went
    through holds: each message is written once)."""
    s = ctx.settings
    writer = LakeWriter(ctx.lake.cursor)  # called in worker threads: each its own cursor of the one connection
    partitions = range(s.topic_partitions)
    while await archive_queue.flush(ctx.redis, s.app_id, writer, partitions, s.archive_batch, s.conversation_log_limit):
        pass  # a partition gave a full batch: more may wait


async def maintain(ctx: AgentContext) -> archive_maintenance.Report | None:
    """Maintain the lake (core/storage/archive_maintenance.py) unless another worker did within
    the interval; returns the report, None when skipped. Raises Redis and lake errors."""
    s = ctx.settings
    report = await archive_maintenance.maintain_once(ctx.redis, s.app_id, ctx.lake, s)
    if report is not None:
        log.info("archive maintained: %s", report)
    return report


async def merge_recent(ctx: AgentContext) -> tuple[int, int] | None:
    """Merge the lake's fresh small files (archive_maintenance.merge_recent) unless another
    worker did within ``archive_merge_seconds`` or it is 0; (files merged, files created), None
    when skipped. Raises Redis and lake errors (the next tick tries again)."""
    s = ctx.settings
    merged = await archive_maintenance.merge_recent_once(ctx.redis, s.app_id, ctx.lake, s)
    if merged is not None and merged[0]:
        log.debug("archive: %d fresh files merged into %d", *merged)
    return merged
