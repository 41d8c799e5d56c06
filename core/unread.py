"""The unread service for read fan-out groups (R11, R12): members' counts follow the group's
newest seq by a periodic flush, or at once when they sync or read (core/storage/fan_out.py).

Write fan-out moves counts as it delivers (core/sending.py); both modes set counts from seqs,
so replays and late flushes cannot double count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .storage import fan_out

if TYPE_CHECKING:
    from .services import Services


async def flush_read_fan_out(services: Services) -> int:
    """Bring every member of each read fan-out group with new messages up to date (one worker
    at a time: the others skip). Returns the number of member updates."""
    return await fan_out.flush_pending(services.redis)


async def catch_up(services: Services, user: str, gids: list[str] | None = None) -> dict[str, int]:
    """Bring one user's counts up to date in their read fan-out groups now (``gids``; default:
    all their groups). Returns those groups' newest read fan-out seqs."""
    return await fan_out.catch_up(services.redis, user, gids)
