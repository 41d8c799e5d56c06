"""Kafka for gateways: the producer (idempotent, acks=all: aiokafka defaults to neither) and the
broadcast consumer.

The producer answers within bounded time whatever the brokers do: a record that is not durable
within ``delivery_timeout_s`` fails (the caller tells its client ``unavailable``; a resend with the
same cmid is de-duplicated downstream, should the first copy land after all), and a producer
whose sequence numbers fell out of step with the broker is replaced (see ``_STALE``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


# An idempotent producer numbers its records per partition. aiokafka fails a batch that waited
# longer than the request timeout for a partition without a leader (a broker outage) after the
# batch had taken its sequence numbers, and never resets them (the Java client bumps its epoch):
# from then on the broker refuses every record of that partition with one of these, for good.
# A new producer (a new producer id) starts its numbering afresh.
_STALE = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


class KafkaProducer:
    """acks=all, idempotent; ``enqueue`` answers within bounded time and the producer heals itself.

    ``queue_timeout_s``: the longest ``enqueue`` waits for room in a partition's batch (the
    broker is slow or away) before it raises KafkaTimeoutError; for a second after that
    happened it waits at most ``CONGESTED_WAIT_S``, so a connection's queued sends are refused
    one after the other at once instead of every one waiting in turn. ``delivery_timeout_s``:
    the longest its future waits for the broker's acknowledgement before it fails with
    KafkaTimeoutError.
    """

    CONGESTED_WAIT_S = 0.05
    CONGESTED_FOR_S = 1.0

    def __init__(self, bootstrap: str, client_id: str, queue_timeout_s: float = 2.0, delivery_timeout_s: float = 10.0) -> None:
        self._bootstrap, self._client_id = bootstrap, client_id
        self._queue_timeout_s, self._delivery_timeout_s = queue_timeout_s, delivery_timeout_s
        self._producer = self._new_producer()
        self._renewing: asyncio.Task[None] | None = None
        self._congested_until = 0.0  # loop time until which enqueue hardly waits for room

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            # no wait to fill a batch: one request is in flight per broker, and records that
            # arrive meanwhile go out together in the next, so batches form under load anyway
            linger_ms=0,
            request_timeout_ms=10_000,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewing
        await self._producer.stop()

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Put a record on ``topic`` and wait until it is durable (as long as that takes: the
        agents wait out an outage); raises the broker's error if it refuses the record."""
        producer = self._producer
        try:
            await producer.send_and_wait(topic, value=value, key=key)
        except _STALE as exc:
            self._renew(producer, exc)
            raise

    async def enqueue(self, topic: str, key: bytes, value: bytes) -> asyncio.Future:
        """Queue a record in send order; the future resolves once the broker has it (acks=all).

        Raises KafkaTimeoutError if the record cannot even be queued within ``queue_timeout_s``;
        the future fails with KafkaTimeoutError if the broker has not acknowledged the record
        within ``delivery_timeout_s`` (it may still land later), or with the broker's error.
        """
        producer = self._producer
        loop = asyncio.get_running_loop()
        wait = self._queue_timeout_s if loop.time() >= self._congested_until else self.CONGESTED_WAIT_S
        try:
            async with asyncio.timeout(wait):  # no task per record, as wait_for would make
                acked = await producer.send(topic, value=value, key=key)
        except TimeoutError as exc:  # waiting for room (cancel-safe: nothing was queued yet)
            self._congested_until = loop.time() + self.CONGESTED_FOR_S
            raise KafkaTimeoutError(f"no room to queue a record for {topic} within {wait} s") from exc
        answer: asyncio.Future = loop.create_future()

        def settle(done: asyncio.Future) -> None:
            error = None if done.cancelled() else done.exception()
            if isinstance(error, _STALE):
                self._renew(producer, error)
            if answer.done():
                return
            if done.cancelled():
                answer.cancel()
            elif error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(done.result())

        def expire() -> None:
            if not answer.done():
                answer.set_exception(KafkaTimeoutError(f"not acknowledged within {self._delivery_timeout_s} s"))

        acked.add_done_callback(settle)
        timer = loop.call_later(self._delivery_timeout_s, expire)
        answer.add_done_callback(lambda _: timer.cancel())
        return answer

    def _renew(self, stale: AIOKafkaProducer, error: BaseException) -> None:
        if stale is not self._producer or self._renewing is not None:
            return  # replaced already, or being replaced
        log.warning("Kafka producer %s is out of step with the broker (%r); replacing it", self._client_id, error)
        self._renewing = asyncio.create_task(self._replace(stale))

    async def _replace(self, stale: AIOKafkaProducer) -> None:
        try:
            while True:
                fresh = self._new_producer()
                try:
                    await fresh.start()
                    break
                except asyncio.CancelledError:  # stop() while starting: let go of it too
                    with contextlib.suppress(Exception):
                        await fresh.stop()
                    raise
                except KafkaError as exc:  # the brokers are away again: keep trying
                    log.warning("Kafka producer %s could not start (%s); retrying", self._client_id, exc)
                    with contextlib.suppress(Exception):
                        await fresh.stop()
                    await asyncio.sleep(1)
            self._producer = fresh
        finally:
            self._renewing = None
        with contextlib.suppress(Exception):  # its records failed or landed; don't wait long for the rest
            await asyncio.wait_for(stale.stop(), 5)

    async def ready(self) -> bool:
        if self._renewing is not None:
            return False
        try:
            await self._producer.client.fetch_all_metadata()
        except KafkaError:
            return False
        return True


async def ensure_topics(bootstrap: str, names: list[str], partitions: int, replication_factor: int) -> None:
    """Create the topics that are missing, with ``partitions`` each; existing ones are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, replication_factor) for name in names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process made them first
                await admin.create_topics(missing)
    finally:
        await admin.close()


class BroadcastConsumer:
    """Reads every partition of a topic from its end, outside any consumer group: each gateway
    gets every record of a broadcast stream (live rooms), none before it started."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, handle: Callable[[list[bytes]], Awaitable[None]]) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        self._topic, self._partitions, self._handle = topic, partitions, handle
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self._topic, p) for p in range(self._partitions)])
        await self._consumer.seek_to_end()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=20, max_records=5_000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not end the stream for this gateway
                log.exception("broadcast stream %s: reading failed; retrying", self._topic)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                try:
                    await self._handle([record.value for record in records if record.value is not None])
                except Exception:
                    log.exception("broadcast stream %s: a handler failed; its records are skipped", self._topic)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._consumer.stop()
