"""Fixtures for the real services started by scripts/services, and for subprocesses of imflow.

Under CI (CI=true) or with IMFLOW_REQUIRE_SERVICES=1 a service that does not answer fails the
test; elsewhere it skips it with a hint.

IMFLOW_TEST_REDIS_URL may name a Redis Cluster (``redis+cluster://host:port``): the real-stack
tests then run on it, and IMFLOW_TEST_REDIS_SINGLE_URL names the single redis-server that the
tests of both kinds of client (``redis_single_url``) use too.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.crc import key_slot

from imflow.core.storage import redis_client

REDIS_URL = os.environ.get("IMFLOW_TEST_REDIS_URL", "redis://127.0.0.1:16379/15")
# the single redis-server besides a cluster; by default the test Redis itself when it is one
REDIS_SINGLE_URL = os.environ.get("IMFLOW_TEST_REDIS_SINGLE_URL") or (
    None if redis_client.is_cluster_url(REDIS_URL) else REDIS_URL
)
KAFKA_URL = os.environ.get("IMFLOW_TEST_KAFKA_URL", "kafka://127.0.0.1:19092")
REQUIRE_SERVICES = os.environ.get("CI") == "true" or os.environ.get("IMFLOW_REQUIRE_SERVICES") == "1"


def _missing(what: str, url: str, why: object) -> None:
    message = f"{what} at {url} does not answer ({why}); start it with `scripts/services up`"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


def _redis_version(url: str = REDIS_URL) -> str:
    with redis_client.connect_sync(url) as client:
        info = client.info("server")
    if "redis_version" not in info:  # a cluster's: one answer per node
        info = next(iter(info.values()))
    return info["redis_version"] + (" (cluster)" if redis_client.is_cluster_url(url) else "")


def _kafka_answers() -> None:
    host, port = KAFKA_URL.split("://", 1)[1].split(",")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2):
        pass


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    try:
        lines.append(f"redis-server {_redis_version()} at {REDIS_URL}")
    except Exception as exc:
        lines.append(f"redis-server at {REDIS_URL}: not answering ({exc})")
    try:
        _kafka_answers()
        lines.append(f"kafka broker at {KAFKA_URL}: answering")
    except OSError as exc:
        lines.append(f"kafka broker at {KAFKA_URL}: not answering ({exc})")
    lines.append(f"services required: {REQUIRE_SERVICES}")
    return lines


@pytest.fixture(scope="module", autouse=True)
def no_process_left_behind():
    """Every imflow process that a module's tests and fixtures started has stopped by the end of
    the module: a leftover worker would consume from the shared services during the next tests."""
    from imflow.testing import still_running

    before = set(still_running())
    yield
    left = [proc for proc in still_running() if proc not in before]
    for proc in left:
        proc.kill()
        proc.wait()
    assert not left, f"processes left running (now killed): {[' '.join(map(str, proc.args[2:])) for proc in left]}"


class SlotGuard:
    """Every Lua script call made in this process (fakeredis, a single redis-server or a
    cluster) is checked: its keys must hash to one Redis Cluster slot. ``violations`` lists
    those that did not (scripts, slots, keys); the test fails with them at its end (a check
    that raised inside an operation might be swallowed by its error handling)."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def check(self, args: tuple) -> None:
        if not args or str(args[0]).upper() not in ("EVALSHA", "EVAL"):
            return
        keys = args[3 : 3 + int(args[2])]  # EVALSHA sha numkeys key… arg…
        slots = {key_slot(key.encode() if isinstance(key, str) else key) for key in keys}
        if len(slots) > 1:
            self.violations.append(f"{args[0]} {str(args[1])[:12]}: keys {keys} in slots {sorted(slots)}")
            raise AssertionError(self.violations[-1])


@pytest.fixture(autouse=True)
def slot_guard(monkeypatch: pytest.MonkeyPatch):
    """Checks the keys of every script call made in this process (``SlotGuard``): on a cluster
    Redis refuses such a call (CROSSSLOT), on a single server and fakeredis only this notices."""
    guard = SlotGuard()
    for cls in (aioredis.Redis, Pipeline):  # fakeredis's clients and pipelines are these too
        unchecked = cls.execute_command

        def checked(self, *args, _unchecked=unchecked, **kwargs):
            guard.check(args)
            return _unchecked(self, *args, **kwargs)

        monkeypatch.setattr(cls, "execute_command", checked)
    yield guard
    assert not guard.violations, f"script calls with keys in several slots: {guard.violations}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real redis-server (a database of its own for tests)."""
    try:
        _redis_version()
    except Exception as exc:
        _missing("redis-server", REDIS_URL, exc)
    return REDIS_URL


@pytest.fixture(scope="session")
def cluster_url(redis_url: str) -> str:
    """The test Redis when it is a Redis Cluster (as under scripts/test), for the cluster's own
    tests; a single server there is a missing service."""
    if not redis_client.is_cluster_url(redis_url):
        _missing("a Redis Cluster (IMFLOW_TEST_REDIS_URL=redis+cluster://host:port)", redis_url, "not a cluster URL")
    return redis_url


@pytest.fixture(scope="session")
def redis_single_url() -> str:
    """URL of a single (not cluster) redis-server database of its own, for the tests that run
    on both kinds of client: IMFLOW_TEST_REDIS_SINGLE_URL, or the test Redis if it is single."""
    if REDIS_SINGLE_URL is None:
        _missing("a single redis-server (IMFLOW_TEST_REDIS_SINGLE_URL)", "(unset)", "the test Redis is a cluster")
    try:
        _redis_version(REDIS_SINGLE_URL)
    except Exception as exc:
        _missing("redis-server", REDIS_SINGLE_URL, exc)
    return REDIS_SINGLE_URL


@pytest.fixture(scope="session")
def kafka_url() -> str:
    """URL of the real Kafka broker."""
    try:
        _kafka_answers()
    except OSError as exc:
        _missing("Kafka", KAFKA_URL, exc)
    return KAFKA_URL


@pytest.fixture
async def real_redis(redis_url: str):
    """A client of the real redis-server (or cluster) on an emptied test database."""
    client = redis_client.connect(redis_url)
    await redis_client.flush(client)
    yield client
    await client.aclose()


@pytest.fixture(params=["fakeredis", pytest.param("redis-server", marks=pytest.mark.redis)])
async def any_redis(request: pytest.FixtureRequest):
    """The same core test on fakeredis (the embedded default) and on the real redis-server (or
    cluster)."""
    if request.param == "fakeredis":
        client = redis_client.connect(None)
    else:
        client = redis_client.connect(request.getfixturevalue("redis_url"))
        await redis_client.flush(client)
    yield client
    await client.aclose()


@pytest.fixture
def app_id() -> str:
    """A fresh Faust app id, so each test has its own topics and consumer group."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", params=["embedded", pytest.param("real", marks=[pytest.mark.kafka, pytest.mark.redis])])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A running imflow: ``imflow serve`` alone, or 2 gateways and a Faust worker on Kafka and Redis.

    Shared by the tests of a module; each test uses users of its own. A module's
    ``STACK_EXTRA_ENV`` dict adds settings of its own.
    """
    from stacks import embedded_stack, real_stack

    folder = tmp_path_factory.mktemp(f"stack-{request.param}")
    extra = getattr(request.module, "STACK_EXTRA_ENV", {})
    if request.param == "embedded":
        running = embedded_stack(folder, extra)
    else:
        url = request.getfixturevalue("redis_url")
        redis_client.flush_sync(url)
        running = real_stack(folder, request.getfixturevalue("kafka_url"), url, extra_env=extra)
    yield running
    running.stop()


@pytest.fixture
def users() -> "Users":
    """Fresh user names for one test: users.alice, users.bob, ..."""
    return Users(uuid.uuid4().hex[:6])


class Users:
    def __init__(self, suffix: str) -> None:
        self._suffix = suffix

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return f"{name}-{self._suffix}"
