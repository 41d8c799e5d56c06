"""The archiving service: seal what waits in the archive queue into the archive (R8).

Run by every worker on a timer; per-partition locks (core/storage/locks.py) keep one writer per
partition at a time, so workers may tick together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .storage import archive_queue

if TYPE_CHECKING:
    from .agents import AgentContext


async def seal(ctx: AgentContext) -> None:
    """Seal every partition's queue; goes on while a partition gives a full batch. Raises
    Redis and archive errors (the next tick tries again: sealing is idempotent)."""
    s = ctx.settings
    partitions = range(s.topic_partitions)
    layout, limit = ctx.archive_layout, s.conversation_log_limit
    while await archive_queue.flush(ctx.redis, s.app_id, layout, partitions, s.archive_batch, limit):
        pass  # a partition gave a full batch: more may wait
