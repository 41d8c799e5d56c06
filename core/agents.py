"""Stream agents as plain types: what a body gets, and how built-in and plugin agents are declared.

The same body runs under Faust (imflow.streams.app) and on the in-process transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from .ids import MAX_NODE, IdGenerator
from .services import Services
from .storage.archive import ArchiveReader
from .storage.lake import LakeConfig

if TYPE_CHECKING:

    import asyncio

    from .settings import Settings


def topic_name(app_id: str, topic: str) -> str:
    """Every topic is prefixed with the app id, so several deployments can share a cluster."""
    return f"{app_id}.{topic}"


class Producer(Protocol):
    """Puts a record on a topic; returns once the record is durable (Kafka: acks=all)."""

    async def send(self, topic: str, key: bytes, value: bytes) -> None: ...

    async def enqueue(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        """Queue in send order without waiting; the future resolves once the record is durable."""
        ...


@dataclass(kw_only=True)
class AgentContext(Services):
    """A worker's Services (core/services.py) with what agents need besides: the ``producer``
    for records they put on topics, one id generator per ingest partition and the process's
    lake (``lake``) to write the archive into."""

    producer: Producer
    # node number -> its id generator, made on first use; give one to share it between contexts
    generators: dict[int, IdGenerator] = field(default_factory=dict)

    def ids(self, partition: int) -> IdGenerator:
        """The id generator of one ingest partition: only its owner makes ids with that node number."""
        node = partition % (MAX_NODE + 1)
        if node not in self.generators:
            self.generators[node] = IdGenerator(node)
        return self.generators[node]

    @cached_property
    def lake(self) -> ArchiveReader:
        """The process's one lake connection: the history reader's where the process serves
        history (``archive``), else one of its own, opened on first use. Each thread uses its
        own ``cursor()`` of it; writes run in a worker thread (asyncio.to_thread)."""
        return self.archive if self.archive is not None else ArchiveReader(LakeConfig.from_settings(self.settings))

    def topic(self, name: str) -> str:
        return topic_name(self.settings.app_id, name)


Records = list[tuple[bytes, int]]  # (value, partition), in topic order
AgentBody = Callable[[AgentContext, Records], Awaitable[None]]


@dataclass(frozen=True)
class AgentSpec:
    """An agent: a body for the records of one topic (handled in batches, at least once)."""

    name: str
    topic: str  # short name; the app id is prefixed at run time
    body: AgentBody


@dataclass(frozen=True)
class TimerSpec:
    """A periodic task of every worker (use Redis locks where only one may act at a time).
    ``interval`` gives its period in seconds from the settings; 0 means the timer does not run."""

    name: str
    interval: Callable[[Settings], float]
    body: Callable[[AgentContext], Awaitable[object]]  # what it returns is not used

    def runs(self, settings: Settings) -> bool:
        """Whether the timer runs with these settings (an interval of 0 turns it off)."""
        return self.interval(settings) > 0
