"""The webhook's sender: a bounded queue of events and one background task per process that
POSTs them in batches, signed, retried with backoff.

Whoever produces an event (the ingest agent, a gateway) only ``offer``s it: a put on an
in-memory queue that never waits. A full queue drops the event and counts it; the inbox still
holds every message, so a dropped notification costs a push, never a message. The task takes
what waits, up to ``batch_size`` events or ``batch_wait_ms`` after the first, and POSTs them as
one JSON body; a transport error, a timeout, a 408, 429 or 5xx is retried with exponential
backoff and jitter (tenacity) up to ``attempts`` times, then the batch is counted as failed. A
batch is sent at a time, so the receiver gets events in the order they were offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from imflow.plugin_api import now_ms

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Imflow-Signature"
TIMESTAMP_HEADER = "X-Imflow-Timestamp"
RETRIED_STATUS = frozenset({408, 429})  # and every 5xx: the receiver may take it later

SENT = Counter("imflow_webhook_events_sent", "Webhook events the receiver accepted (2xx)", ["event"])
FAILED = Counter("imflow_webhook_events_failed", "Webhook events given up on after the last attempt or a 4xx", ["event"])
DROPPED = Counter("imflow_webhook_events_dropped", "Webhook events dropped: the queue was full, or left at shutdown", ["event"])


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Imflow-Signature`` header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class RetryableStatus(Exception):
    """The receiver answered with a status worth trying again (408, 429, 5xx)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the receiver answered {status}")
        self.status = status


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableStatus | httpx.TransportError)


@dataclass(frozen=True)
class Delivery:
    """How batches go out: where, signed with what, how big, how often retried."""

    url: str
    secret: bytes | None
    batch_size: int = 100
    batch_wait_s: float = 0.2
    timeout_s: float = 5.0
    attempts: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    drain_s: float = 2.0  # at shutdown, how long what is queued may take to go


class Sender:
    """A bounded queue of events (dicts with ``id``, ``type``, ``at_ms``, ``data``) and the task
    that delivers them. ``offer`` never waits; ``start`` and ``stop`` run in the process's loop."""

    def __init__(self, delivery: Delivery, queue_size: int) -> None:
        self.delivery = delivery
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.node = ""  # the process's, named in every body

    def offer(self, event: dict[str, Any]) -> bool:
        """Queue ``event`` for delivery; False (and counted as dropped) if the queue is full."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            DROPPED.labels(event["type"]).inc()
            return False
        return True

    def start(self, node: str) -> None:
        """Start the delivery task (in the running loop) for process ``node``; events offered
        before wait for it. A second call does nothing."""
        if self._task is None:
            self.node = node
            self._client = httpx.AsyncClient(timeout=self.delivery.timeout_s)
            self._task = asyncio.create_task(self._run(), name="imflow-webhook-sender")

    async def stop(self, drain_s: float | None = None) -> None:
        """Deliver what waits for up to ``drain_s`` seconds (default: the delivery's ``drain_s``,
        ``IMFLOW_WEBHOOK_SHUTDOWN_DRAIN_SECONDS``), then stop; what is left is counted as dropped."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), self.delivery.drain_s if drain_s is None else drain_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self.queue.empty():
            DROPPED.labels(self.queue.get_nowait()["type"]).inc()
            self.queue.task_done()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:  # stopped mid-batch: those events are lost, and counted
                for event in batch:
                    DROPPED.labels(event["type"]).inc()
                raise
            except Exception as exc:  # one failed batch never stops the sender
                for event in batch:
                    FAILED.labels(event["type"]).inc()
                log.warning("webhook: %d event(s) not delivered to %s (%s)", len(batch), self.delivery.url, exc)
            else:
                for event in batch:
                    SENT.labels(event["type"]).inc()
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _next_batch(self) -> list[dict[str, Any]]:
        """The first event that comes, and what follows it within ``batch_wait_s``, up to ``batch_size``."""
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.delivery.batch_wait_s
        try:
            while len(batch) < self.delivery.batch_size:
                while not self.queue.empty() and len(batch) < self.delivery.batch_size:
                    batch.append(self.queue.get_nowait())
                left = deadline - asyncio.get_running_loop().time()
                if len(batch) >= self.delivery.batch_size or left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
        except asyncio.CancelledError:  # stopped while gathering: taken from the queue, so counted here
            for event in batch:
                DROPPED.labels(event["type"]).inc()
                self.queue.task_done()
            raise
        return batch

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        delivery = self.delivery
        retrying = AsyncRetrying(
            stop=stop_after_attempt(delivery.attempts),
            # initial, twice that, four times… up to the max, each plus up to ``initial`` of jitter
            wait=wait_exponential_jitter(multiplier=delivery.backoff_initial_s, max=delivery.backoff_max_s,
                                         jitter=delivery.backoff_initial_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._post(batch)

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        """One attempt: a fresh timestamp, signed with the body. Raises RetryableStatus, an
        httpx error, or httpx.HTTPStatusError for a status not worth retrying."""
        assert self._client is not None
        sent_at_ms = now_ms()
        body = orjson.dumps({"node": self.node, "sent_at_ms": sent_at_ms, "events": batch})
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(sent_at_ms)}
        if self.delivery.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.delivery.secret, body)
        response = await self._client.post(self.delivery.url, content=body, headers=headers)
        if response.status_code in RETRIED_STATUS or response.status_code >= 500:
            raise RetryableStatus(response.status_code)
        response.raise_for_status()  # any other 4xx: the same batch would be refused again
