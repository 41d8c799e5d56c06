"""Offline push: the messages that reached users with no connected device go to the plugins'
``imflow_offline_push`` (a webhook, a push provider), once per batch of the ingest agent.

Conversations a user muted are left out here, so no push plugin has to know about mutes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .storage import conversation_settings as settings_store

if TYPE_CHECKING:
    from .agents import AgentContext
    from .plugin_types import OfflinePush

log = logging.getLogger(__name__)


async def notify(ctx: AgentContext, pending: list[OfflinePush]) -> None:
    """Hand ``pending`` (one per user and message, in delivery order) to ``imflow_offline_push``,
    without those in conversations their user muted. Never raises: a failure is logged and the
    pushes are dropped (pushes are best effort; the inbox holds every message)."""
    if not pending or not ctx.hooks.has_implementations("imflow_offline_push"):
        return
    try:
        muted = await settings_store.muted_pairs(ctx.redis, sorted({(p.user, p.message.conversation) for p in pending}))
        pushes = [p for p in pending if (p.user, p.message.conversation) not in muted]
        if pushes:
            await ctx.hooks.call.offline_push(pushes=pushes, context=ctx)
    except Exception:
        log.exception("offline push of %d messages dropped", len(pending))
