"""Time-ordered message ids that stay exact in JSON numbers and Redis sorted-set scores.

Layout, 53 bits: 41 bits of milliseconds since 2024-01-01 (good until 2093), 6 bits of node
(the ingest partition), 6 bits of sequence within the millisecond. 53 bits because a Redis
sorted-set score is a double and a browser's JSON number is one too: both hold integers
exactly only up to 2**53.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NODE_BITS = 6
SEQUENCE_BITS = 6
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_ID = (1 << 53) - 1


def now_ms() -> int:
    """The one wall clock of imflow, in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


class IdGenerator:
    """Monotonic ids for one node. Not thread-safe; one per event loop and node."""

    def __init__(self, node: int, clock: Callable[[], int] = now_ms) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be within 0..{MAX_NODE}, got {node}")
        self.node = node
        self._clock = clock
        self._last_ms = -1
        self._sequence = 0

    def next_id(self) -> int:
        ms = max(self._clock() - EPOCH_MS, self._last_ms)
        if ms == self._last_ms:
            self._sequence += 1
            if self._sequence > MAX_SEQUENCE:  # this millisecond is used up: borrow the next one
                ms += 1
                self._sequence = 0
        else:
            self._sequence = 0
        self._last_ms = ms
        return (ms << (NODE_BITS + SEQUENCE_BITS)) | (self.node << SEQUENCE_BITS) | self._sequence


def id_time_ms(mid: int) -> int:
    """The Unix time in milliseconds at which a message id was made."""
    return (mid >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS
