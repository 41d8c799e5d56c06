"""Fixtures for the real services started by scripts/services, and for subprocesses of imflow.

Under CI (CI=true) or with IMFLOW_REQUIRE_SERVICES=1 a service that does not answer fails the
test; elsewhere it skips it with a hint.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest
import redis as redis_sync
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("IMFLOW_TEST_REDIS_URL", "redis://127.0.0.1:16379/15")
KAFKA_URL = os.environ.get("IMFLOW_TEST_KAFKA_URL", "kafka://127.0.0.1:19092")
REQUIRE_SERVICES = os.environ.get("CI") == "true" or os.environ.get("IMFLOW_REQUIRE_SERVICES") == "1"


def _missing(what: str, url: str, why: object) -> None:
    message = f"{what} at {url} does not answer ({why}); start it with `scripts/services up`"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


def _redis_version() -> str:
    with redis_sync.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
        return client.info("server")["redis_version"]


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


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real redis-server (a database of its own for tests)."""
    try:
        _redis_version()
    except Exception as exc:
        _missing("redis-server", REDIS_URL, exc)
    return REDIS_URL


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
    """A client of the real redis-server on an emptied test database."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(params=["fakeredis", pytest.param("redis-server", marks=pytest.mark.redis)])
async def any_redis(request: pytest.FixtureRequest):
    """The same core test on fakeredis (the embedded default) and on the real redis-server."""
    if request.param == "fakeredis":
        from imflow.core.storage.redis_client import connect

        client = connect(None)
    else:
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
        await client.flushdb()
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
        with redis_sync.Redis.from_url(url) as client:
            client.flushdb()
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
