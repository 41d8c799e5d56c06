"""What every benchmark shares: imflow workers and gateways as their own processes on the real
Kafka and Redis, the common command-line options, and percentiles."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

from imflow.client import Client
from imflow.core import tokens
from imflow.core.models import direct_conversation
from imflow.core.storage import lake, redis_client
from imflow.core.storage.lake import LakeConfig
from imflow.testing import ImflowProcess, free_port

SECRET = "bench-secret-" + uuid.uuid4().hex
ADMIN_SECRET = "bench-admin-" + uuid.uuid4().hex


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def arguments(doc: str, json_default: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes; add your own before ``parse_args``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--redis", required=True, help="a database of its own, or a redis+cluster:// URL: it is flushed first")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path(json_default))
    return parser


class Stack:
    """N Faust workers and M gateways on a flushed Redis database and a fresh Faust app id."""

    def __init__(
        self, kafka: str, redis_url: str, workers: int = 1, gateways: int = 1, env: dict[str, str] | None = None
    ) -> None:
        redis_client.flush_sync(redis_url)  # every primary's on a cluster
        folder = Path(tempfile.mkdtemp(prefix="imflow-bench-"))
        app_id = f"bench{uuid.uuid4().hex[:8]}"
        env = {
            "IMFLOW_KAFKA_URL": kafka,
            "IMFLOW_REDIS_URL": redis_url,
            "IMFLOW_APP_ID": app_id,
            **self._own_lake(app_id),
            "IMFLOW_DATA_DIR": str(folder / "data"),
            "IMFLOW_SECRET_KEY": SECRET,
            "IMFLOW_ADMIN_SECRET": ADMIN_SECRET,
            # the load names thousands of fresh users: they are registered on first sign-in;
            # a benchmark that wants production's accounts passes IMFLOW_ACCOUNTS=registered
            # and registers its users through the admin API (``register``)
            "IMFLOW_ACCOUNTS": "open",
            "IMFLOW_LOG_LEVEL": "warning",
            # load generators send far beyond a person's pace: lift the send limits
            "IMFLOW_THROTTLE_USER_RATE": "1000000", "IMFLOW_THROTTLE_USER_BURST": "1000000",
            "IMFLOW_THROTTLE_CONNECTION_RATE": "1000000", "IMFLOW_THROTTLE_CONNECTION_BURST": "1000000",
            "IMFLOW_THROTTLE_POST_RATE": "1000000", "IMFLOW_THROTTLE_POST_BURST": "1000000",
            **(env or {}),
        }
        self.env = env
        self.http: list[str] = []
        self.processes: list[ImflowProcess] = []
        self.urls: list[str] = []
        try:
            for i in range(workers):
                worker = ImflowProcess(["worker"], {**env, "IMFLOW_LOG_LEVEL": "info"}, folder / f"worker{i}.log", folder)
                self.processes.append(worker)
                worker.wait_output("Worker ready", timeout=120)
            for i in range(gateways):
                port = free_port()
                gateway = ImflowProcess(["gateway", "--port", str(port)], env, folder / f"gateway{i}.log", folder)
                self.processes.append(gateway)
                gateway.wait_http(f"http://127.0.0.1:{port}/readyz")
                self.urls.append(f"ws://127.0.0.1:{port}/ws")
                self.http.append(f"http://127.0.0.1:{port}")
        except BaseException:
            for process in self.processes:
                process.terminate()
            if self.lake is not None:
                lake.drop_catalog_schema(self.lake)
            raise
        time.sleep(2)  # let a multi-worker group settle its partitions

    def _own_lake(self, app_id: str) -> dict[str, str]:
        """With a shared catalog in the environment (``scripts/bench`` exports ``scripts/services
        env``), a catalog schema and data prefix of this run's own, dropped by ``stop``: a
        benchmark never writes into the development lake. Without one, the embedded lake under
        the run's data folder."""
        self.lake = None
        catalog = os.environ.get("IMFLOW_ARCHIVE_CATALOG")
        data = os.environ.get("IMFLOW_ARCHIVE_DATA_PATH")
        if not catalog or not catalog.startswith("postgres:") or not data:
            return {}  # the embedded lake (a SQLite catalog is a file of the run's own anyway)
        prefix = f"{data.rstrip('/')}/{app_id}/"
        self.lake = LakeConfig.from_url(catalog, schema=app_id, data_path=prefix)
        return {"IMFLOW_ARCHIVE_SCHEMA": app_id, "IMFLOW_ARCHIVE_DATA_PATH": prefix}

    @property
    def url(self) -> str:
        return self.urls[0]

    async def connect(self, user: str, gateway: int = 0) -> Client:
        return await Client.connect(self.urls[gateway % len(self.urls)], tokens.issue(SECRET, user, 3600))

    async def register(self, users: list[str], **profile: object) -> None:
        """Create the users' accounts through the admin API (an existing one is left as it is)."""
        headers = {"Authorization": f"Bearer {ADMIN_SECRET}"}
        async with httpx.AsyncClient(base_url=self.http[0], headers=headers, timeout=30) as admin:
            for user in users:
                response = await admin.post("/admin/users", json={"user": user, **profile})
                if response.status_code not in (201, 409):
                    raise RuntimeError(f"could not register {user}: {response.status_code} {response.text}")

    def stop(self) -> None:
        for process in reversed(self.processes):  # gateways first, then workers
            process.stop_gracefully()
        if self.lake is not None:
            lake.drop_catalog_schema(self.lake)


async def unread_problems(stack: Stack, sent: dict[tuple[str, str], int]) -> int:
    """How many receivers' unread counts differ from the truth when nobody has read anything:
    ``sent`` is (sender, receiver) -> messages stored; each receiver's first ``sync`` must count
    exactly those per one-to-one conversation, and their sum as the total."""
    expected: dict[str, dict[str, int]] = defaultdict(dict)
    for (sender, receiver), count in sent.items():
        expected[receiver][direct_conversation(sender, receiver)] = count
    problems = 0
    for receiver, counts in expected.items():
        client = await stack.connect(receiver)
        try:
            state = await client.sync(limit=1)
        finally:
            await client.close()
        got = {c["conversation"]: c["unread"] for c in state["conversations"]}
        if got != counts or state["total_unread"] != sum(counts.values()):
            problems += 1
    return problems
