"""The archive's record of the social graph: accounts, contact edges and blocks, one row per
change, so analysts can study how the graph grows (notebooks/06-contact-graph.ipynb).

Redis holds the live state (core/storage/accounts.py, core/storage/contacts.py); these rows
are its history. Each goes on the archive queue of the partition its user hashes to, as a
rows table (core/storage/archive_queue.py), and is sealed with the rest of the archive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from . import archive_queue

if TYPE_CHECKING:
    from ..services import Services

ACCOUNT_EVENTS = "im_account_events"  # user, kind (created|updated|deactivated|reactivated), profile, at_ms
CONTACT_EVENTS = "im_contact_events"  # user (who acted), peer, kind (requested|accepted|declined|cancelled|removed), note, at_ms
BLOCK_EVENTS = "im_block_events"  # user (the blocker), peer, kind (blocked|unblocked), at_ms


async def _rows(services: Services, user: str, table: str, rows: list[dict[str, Any]]) -> None:
    s = services.settings
    await archive_queue.enqueue_rows(services.redis, s.app_id, archive_queue.partition_for(user, s.topic_partitions), table, rows)


async def record_account(services: Services, user: str, kind: str, profile: dict[str, Any], at_ms: int) -> None:
    """An account was created, updated, deactivated or reactivated (``kind``); ``profile`` holds
    display_name, avatar_url and custom (a dict) as they are after the change."""
    custom = profile.get("custom")
    row = {
        "user": user, "kind": kind, "display_name": profile.get("display_name") or "",
        "avatar_url": profile.get("avatar_url") or "", "custom": orjson.dumps(custom or {}).decode(), "at_ms": at_ms,
    }
    await _rows(services, user, ACCOUNT_EVENTS, [row])


async def record_contact(services: Services, user: str, peer: str, kind: str, note: str, at_ms: int) -> None:
    """``user`` changed a contact edge with ``peer``: requested, accepted, declined, cancelled or removed."""
    row = {"user": user, "peer": peer, "kind": kind, "note": note, "at_ms": at_ms}
    await _rows(services, user, CONTACT_EVENTS, [row])


async def record_block(services: Services, user: str, peer: str, kind: str, at_ms: int) -> None:
    """``user`` blocked or unblocked ``peer`` (``kind``)."""
    await _rows(services, user, BLOCK_EVENTS, [{"user": user, "peer": peer, "kind": kind, "at_ms": at_ms}])
