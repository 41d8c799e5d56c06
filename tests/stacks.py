"""Running imflow stacks for end-to-end tests: the embedded default, and gateways plus a Faust
worker on the real Kafka and Redis. Both are driven through the real WebSocket protocol."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from imflow.client import Client, ClientError
from imflow.core import tokens
from imflow.testing import ImflowProcess, start_listening

REQUIRE_SERVICES = os.environ.get("CI") == "true" or os.environ.get("IMFLOW_REQUIRE_SERVICES") == "1"
SECRET = "test-secret-" + uuid.uuid4().hex
# small enough that history pages cross from Redis into the archive in ordinary tests, and
# that groups of the tests switch between write and read fan-out
READ_FAN_OUT_THRESHOLD = 6
STACK_ENV = {
    "IMFLOW_SECRET_KEY": SECRET,
    "IMFLOW_CONVERSATION_LOG_LIMIT": "50",
    "IMFLOW_READ_FAN_OUT_THRESHOLD": str(READ_FAN_OUT_THRESHOLD),
    "IMFLOW_GROUP_UNREAD_FLUSH_SECONDS": "1",
    # the tests send in bursts far beyond a person's pace; tests/test_throttling.py sets its own limits
    "IMFLOW_THROTTLE_USER_RATE": "100000",
    "IMFLOW_THROTTLE_USER_BURST": "100000",
    "IMFLOW_THROTTLE_CONNECTION_RATE": "100000",
    "IMFLOW_THROTTLE_CONNECTION_BURST": "100000",
    "IMFLOW_THROTTLE_POST_RATE": "100000",
    "IMFLOW_THROTTLE_POST_BURST": "100000",
    "IMFLOW_ARCHIVE_FLUSH_SECONDS": "0.2",
    "IMFLOW_LOG_LEVEL": "info",
    # the tests issue tokens for fresh users without registering them first; tests/test_accounts.py
    # and the model test run with accounts=registered
    "IMFLOW_ACCOUNTS": "open",
}


def archive_env(stack_id: str) -> dict[str, str]:
    """The archive settings of a real stack: a PostgreSQL catalog schema of its own and data under
    ``s3://<bucket>/<stack_id>/`` when IMFLOW_TEST_ARCHIVE_CATALOG is set (scripts/test sets it and
    IMFLOW_TEST_ARCHIVE_DATA_PATH, IMFLOW_TEST_S3_*); without it, nothing (the SQLite default
    under each process's IMFLOW_DATA_DIR). Under IMFLOW_REQUIRE_SERVICES=1 (or CI) a missing
    catalog setting or object store setting fails instead."""
    catalog = os.environ.get("IMFLOW_TEST_ARCHIVE_CATALOG")
    data = os.environ.get("IMFLOW_TEST_ARCHIVE_DATA_PATH")
    if not catalog:
        if REQUIRE_SERVICES:
            pytest.fail("IMFLOW_TEST_ARCHIVE_CATALOG is not set: run the tests with scripts/test (PostgreSQL + S3 archive)")
        return {}
    if not data or not os.environ.get("IMFLOW_TEST_S3_ENDPOINT"):
        pytest.fail("IMFLOW_TEST_ARCHIVE_CATALOG is set but IMFLOW_TEST_ARCHIVE_DATA_PATH or IMFLOW_TEST_S3_ENDPOINT is not")
    bucket = data.removeprefix("s3://").split("/", 1)[0]
    env = {
        "IMFLOW_ARCHIVE_CATALOG": catalog,
        "IMFLOW_ARCHIVE_SCHEMA": f"stack_{stack_id}".lower(),
        "IMFLOW_ARCHIVE_DATA_PATH": f"s3://{bucket}/{stack_id}/",
    }
    for name in ("ENDPOINT", "KEY_ID", "SECRET", "REGION", "USE_SSL"):
        if value := os.environ.get(f"IMFLOW_TEST_S3_{name}"):
            env[f"IMFLOW_S3_{name}"] = value
    return env


def archive_lake_config(folder: Path, name: str):
    """A LakeConfig for a test of the archive itself: the stacks' PostgreSQL + S3 archive (a schema
    and prefix of its own, ``name`` unique) when IMFLOW_TEST_ARCHIVE_CATALOG is set, else the
    embedded layout in ``folder``."""
    from imflow.core.storage.lake import LakeConfig

    env = archive_env(name)
    if not env:
        return LakeConfig.from_url(folder)
    s3 = {name.removeprefix("IMFLOW_").lower(): value for name, value in env.items() if name.startswith("IMFLOW_S3_")}
    if "s3_use_ssl" in s3:
        s3["s3_use_ssl"] = s3["s3_use_ssl"].lower() in ("1", "true", "yes")
    return LakeConfig(
        catalog=env["IMFLOW_ARCHIVE_CATALOG"], schema=env["IMFLOW_ARCHIVE_SCHEMA"], data_path=env["IMFLOW_ARCHIVE_DATA_PATH"],
        **s3,
    )


def drop_archive(config) -> None:
    """Drop a test lake's PostgreSQL catalog schema (its S3 files stay: a prefix of their own).
    Nothing to do for a folder lake (pytest removes its tmp_path)."""
    from imflow.core.storage import lake

    lake.drop_catalog_schema(config)


@dataclass
class Stack:
    kind: str
    folder: Path
    env: dict[str, str]
    gateways: list[ImflowProcess] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    worker: ImflowProcess | None = None  # the newest worker
    workers: list[ImflowProcess] = field(default_factory=list)  # every running worker
    workers_started: int = 0

    def url(self, gateway: int = 0) -> str:
        return f"ws://127.0.0.1:{self.ports[gateway % len(self.ports)]}/ws"

    def http(self, gateway: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[gateway % len(self.ports)]}"

    @staticmethod
    def token(user: str, ttl: int = 3600) -> str:
        return tokens.issue(SECRET, user, ttl)

    def lake_config(self, env: dict[str, str] | None = None):
        """The LakeConfig the stack's processes (or one with ``env``) use for the archive."""
        from imflow.core.settings import Settings
        from imflow.core.storage.lake import LakeConfig

        given = {name.removeprefix("IMFLOW_").lower(): value for name, value in (env or self.env).items()}
        return LakeConfig.from_settings(Settings(**{name: value for name, value in given.items() if name in Settings.model_fields}))

    def start_gateway(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start a gateway (``command``: serve or gateway) with the stack's env, or ``env`` over it."""
        index = len(self.gateways)
        # a free port, and another one if something takes it before the gateway binds it
        log = self.folder / f"{command[0]}{index}.log"
        process, port, ready = start_listening(command, {**self.env, **(env or {})}, log, self.folder)
        self.gateways.append(process)
        self.ports.append(port)
        assert ready.status_code == 200, process.output()

    def start_worker(self, env: dict[str, str] | None = None) -> None:
        """Start one more worker with the stack's env, or ``env`` over it."""
        self.workers_started += 1
        log = self.folder / f"worker{self.workers_started}.log"
        # info level: the worker says "Worker ready" once it has its partitions
        self.worker = ImflowProcess(["worker"], {**self.env, **(env or {}), "IMFLOW_LOG_LEVEL": "info"}, log, self.folder)
        self.workers.append(self.worker)
        self.worker.wait_output("Worker ready", timeout=90)

    def restart_worker(self) -> None:
        assert self.worker is not None, "the embedded stack has no separate worker"
        self.worker.stop_gracefully()
        self.workers.remove(self.worker)
        self.start_worker()

    @property
    def processes(self) -> list[ImflowProcess]:
        return [*self.gateways, *self.workers]

    def assert_alive(self) -> None:
        for process in self.processes:
            assert process.proc.poll() is None, f"a process died:\n{process.output()}"

    def kill(self) -> None:
        """Stop whatever started, without judging how (a failed start-up)."""
        for process in self.processes:
            process.terminate()

    def stop(self) -> None:
        """Stop every process gracefully, then delete the stack's Kafka topics; fails (after
        stopping them all) if one did not stop."""
        failures = []
        for process in self.processes:
            try:
                process.stop_gracefully()
            except AssertionError as failure:  # the others are stopped all the same
                failures.append(failure)
        self.delete_topics()
        if self.kind == "real" and "IMFLOW_ARCHIVE_SCHEMA" in self.env:  # its PostgreSQL catalog schema
            try:
                drop_archive(self.lake_config())
            except Exception as exc:  # noqa: BLE001 - cleanup only
                print(f"could not drop the archive schema {self.env['IMFLOW_ARCHIVE_SCHEMA']}: {exc!r}")
        if failures:
            raise failures[0]

    def delete_topics(self) -> None:
        """Delete the topics of this stack's app id (ingest, rooms, dead letters, Faust's own):
        a developer's Kafka runs the suite many times, and every partition costs the broker
        open files (it stops at its limit). Best effort: a broker a test took down is left."""
        app_id, kafka_url = self.env.get("IMFLOW_APP_ID", ""), self.env.get("IMFLOW_KAFKA_URL", "")
        if self.kind != "real" or not app_id or not kafka_url:
            return

        async def delete() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url.split("://", 1)[-1], request_timeout_ms=10_000)
            await admin.start()
            try:
                mine = [topic for topic in await admin.list_topics() if topic.startswith(app_id)]
                if mine:
                    await admin.delete_topics(mine)
            finally:
                await admin.close()

        def run() -> None:
            try:
                asyncio.run(delete())
            except Exception as exc:  # noqa: BLE001 - cleanup only
                print(f"could not delete the topics of {app_id}: {exc!r}")

        worker = threading.Thread(target=run)  # its own event loop, whoever calls stop()
        worker.start()
        worker.join(30)


def embedded_stack(folder: Path, extra_env: dict[str, str] | None = None) -> Stack:
    env = {**STACK_ENV, "IMFLOW_KAFKA_URL": "", "IMFLOW_REDIS_URL": "", "IMFLOW_DATA_DIR": str(folder / "data"), **(extra_env or {})}
    stack = Stack("embedded", folder, env)
    try:
        stack.start_gateway(["serve"])
    except BaseException:
        stack.kill()
        raise
    return stack


def real_stack(folder: Path, kafka_url: str, redis_url: str, gateways: int = 2, extra_env: dict[str, str] | None = None) -> Stack:
    app_id = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **STACK_ENV,
        "IMFLOW_KAFKA_URL": kafka_url,
        "IMFLOW_REDIS_URL": redis_url,
        "IMFLOW_APP_ID": app_id,
        "IMFLOW_DATA_DIR": str(folder / "data"),
        **archive_env(app_id),  # PostgreSQL + S3 under scripts/test
        **(extra_env or {}),
    }
    stack = Stack("real", folder, env)
    try:
        stack.start_worker()
        for _ in range(gateways):
            stack.start_gateway(["gateway"])
    except BaseException:
        stack.kill()
        raise
    return stack


async def connect(stack: Stack, user: str, gateway: int = 0) -> Client:
    """A signed-in client of ``user`` on the stack's gateway number ``gateway``."""
    return await Client.connect(stack.url(gateway), stack.token(user))


async def refused(call, code: str) -> None:
    """Await a client request that the server must refuse with an error frame of ``code``."""
    with pytest.raises(ClientError) as error:
        await call
    assert error.value.code == code, error.value.frame
