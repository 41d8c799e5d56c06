"""What an agent body gets: storage clients, settings and the way out to other topics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from imflow.core.archive import ArchiveLayout
from imflow.core.ids import MAX_NODE, IdGenerator

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from imflow.core.settings import Settings


class Producer(Protocol):
    """Puts a record on a topic; returns once the record is durable (Kafka: acks=all)."""

    async def send(self, topic: str, key: bytes, value: bytes) -> None: ...

    async def enqueue(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        """Queue in send order without waiting; the future resolves once the record is durable."""
        ...


@dataclass
class AgentContext:
    settings: Settings
    redis: Redis
    producer: Producer
    _ids: dict[int, IdGenerator] = field(default_factory=dict)

    def ids(self, partition: int) -> IdGenerator:
        """The id generator of one ingest partition: only its owner makes ids with that node number."""
        node = partition % (MAX_NODE + 1)
        if node not in self._ids:
            self._ids[node] = IdGenerator(node)
        return self._ids[node]

    @cached_property
    def archive(self) -> ArchiveLayout:
        s = self.settings
        return ArchiveLayout(s.archive_dir, s.archive_content_shards, s.archive_mailbox_shards)

    def topic(self, name: str) -> str:
        from .topics import topic_name

        return topic_name(self.settings.app_id, name)
