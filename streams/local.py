"""The in-process transport of the embedded default: topics as partitioned asyncio queues.

It keeps what the agents rely on from Kafka: records with one key go to one partition and
are handled in order, one at a time. It keeps nothing across a restart, which is why it is
for development and single-process use, never for production.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Consumer = Callable[[list[bytes], int], Awaitable[None]]  # (values in order, partition)


class LocalBus:
    def __init__(self, partitions: int = 8, queue_size: int = 10_000, batch_max: int = 200) -> None:
        self.partitions = partitions
        self.batch_max = batch_max
        self._queue_size = queue_size
        self._queues: dict[str, list[asyncio.Queue[bytes]]] = {}
        self._consumers: dict[str, list[Consumer]] = defaultdict(list)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    def partition_for(self, key: bytes) -> int:
        return zlib.crc32(key) % self.partitions

    def _topic(self, topic: str) -> list[asyncio.Queue[bytes]]:
        if topic not in self._queues:
            self._queues[topic] = [asyncio.Queue(self._queue_size) for _ in range(self.partitions)]
            if self._running:
                self._start_topic(topic)
        return self._queues[topic]

    def subscribe(self, topic: str, consumer: Consumer) -> None:
        """Every consumer of a topic sees every record (like one consumer group each)."""
        self._consumers[topic].append(consumer)
        self._topic(topic)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        queues = self._topic(topic)
        await queues[self.partition_for(key)].put(value)

    async def enqueue(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Like the Kafka producer's: queued in order, and durable as far as this transport goes."""
        await self.send(topic, key, value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def start(self) -> None:
        self._running = True
        for topic in self._queues:
            self._start_topic(topic)

    def _start_topic(self, topic: str) -> None:
        for partition, queue in enumerate(self._queues[topic]):
            self._tasks.append(asyncio.create_task(self._drain(topic, partition, queue)))

    async def _drain(self, topic: str, partition: int, queue: asyncio.Queue[bytes]) -> None:
        """Hand consumers what waits, in batches of up to ``batch_max``, as Faust's take() does."""
        while True:
            batch = [await queue.get()]
            while len(batch) < self.batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            for consumer in self._consumers.get(topic, ()):
                try:
                    await consumer(batch, partition)
                except Exception:  # a consumer's failure must not stop the partition
                    log.exception("local transport: consumer of %s failed", topic)
            for _ in batch:
                queue.task_done()

    async def join(self) -> None:
        """Wait until every record sent so far has been handled (for tests and shutdown)."""
        for queues in list(self._queues.values()):
            for queue in queues:
                await queue.join()

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def ready(self) -> bool:
        return self._running
