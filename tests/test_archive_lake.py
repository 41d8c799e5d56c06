"""One archive for many hosts: workers and gateways that share no folder serve the whole history
from the lake (the PostgreSQL catalog and S3 under scripts/test), and /readyz says when the
archive is out of reach.

Real stack only (Kafka, Redis). Without IMFLOW_TEST_ARCHIVE_CATALOG (outside scripts/test and
IMFLOW_REQUIRE_SERVICES) the processes share one SQLite catalog and data folder instead.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from stacks import Stack, archive_env, real_stack

from imflow.client import Client
from imflow.core.storage.redis_client import flush_sync
from imflow.testing import eventually, start_listening

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

LOG_LIMIT = 5  # Redis keeps the newest 5 messages of a conversation: the rest come from the archive


def shared_archive(folder: Path, stack_id: str) -> dict[str, str]:
    """The one archive every process of the stack uses: the services' (PostgreSQL + S3), else a
    SQLite catalog and data folder outside every process's own data dir."""
    return archive_env(stack_id) or {
        "IMFLOW_ARCHIVE_CATALOG": f"sqlite:{folder / 'shared' / 'catalog.sqlite'}",
        "IMFLOW_ARCHIVE_DATA_PATH": f"{folder / 'shared' / 'data'}/",
    }


@pytest.fixture
def many_hosts(tmp_path: Path, kafka_url: str, redis_url: str):
    """Two workers and two gateways, each with an empty data dir of its own, one archive."""
    flush_sync(redis_url)
    stack_id = f"t{uuid.uuid4().hex[:10]}"
    env = {"IMFLOW_CONVERSATION_LOG_LIMIT": str(LOG_LIMIT), "IMFLOW_APP_ID": stack_id, **shared_archive(tmp_path, stack_id)}
    own = {"IMFLOW_DATA_DIR": str(tmp_path / "worker0")}
    stack = real_stack(tmp_path, kafka_url, redis_url, gateways=0, extra_env={**env, **own})
    try:
        stack.start_worker({"IMFLOW_DATA_DIR": str(tmp_path / "worker1")})
        for host in range(2):
            stack.start_gateway(["gateway"], {"IMFLOW_DATA_DIR": str(tmp_path / f"gateway{host}")})
    except BaseException:
        stack.kill()
        raise
    yield stack
    stack.stop()


async def full_history(client: Client, conversation: str) -> list[int]:
    """Every seq of the conversation, newest first, page by page from the newest."""
    seqs: list[int] = []
    before = None
    while True:
        page = await client.history(conversation, before_seq=before, limit=7)
        seqs += [message["seq"] for message in page["messages"]]
        before = page["next_before_seq"]
        if before is None:
            return seqs


async def test_two_workers_and_two_gateways_with_folders_of_their_own_serve_the_whole_history(many_hosts: Stack) -> None:
    stack, suffix = many_hosts, uuid.uuid4().hex[:6]
    alice, bob, carol = (f"{name}-{suffix}" for name in ("alice", "bob", "carol"))
    sent: dict[str, int] = {}
    async with await Client.connect(stack.url(0), stack.token(alice)) as on_first, \
            await Client.connect(stack.url(1), stack.token(carol)) as on_second:
        for client, peer, count in ((on_first, bob, 23), (on_second, bob, 17), (on_first, carol, 11)):
            for i in range(count):
                reply = await client.send({"to": peer, "body": {"text": f"m{i}"}})
                sent[reply["conversation"]] = reply["seq"]
        group = await on_first.request({"op": "create_group", "name": "hosts", "members": [bob, carol]})
        for i in range(19):
            reply = await on_second.send({"conversation": group["conversation"], "body": {"text": f"g{i}"}})
        sent[group["conversation"]] = reply["seq"]

    async with await Client.connect(stack.url(1), stack.token(bob)) as bob_second, \
            await Client.connect(stack.url(0), stack.token(carol)) as carol_first:
        readers = {conversation: [bob_second, carol_first] for conversation in sent}
        readers[f"p:{min(alice, bob)}:{max(alice, bob)}"] = [bob_second]
        readers[f"p:{min(alice, carol)}:{max(alice, carol)}"] = [carol_first]

        async def whole() -> bool:  # the workers wrote it all (each holds some of the partitions)
            for conversation, last in sent.items():
                for reader in readers[conversation]:
                    if await full_history(reader, conversation) != list(range(last, 0, -1)):
                        return False
            return True

        await eventually(whole, timeout=60)
    # both workers wrote: each took some partitions, and no process kept the archive to itself
    for process in stack.workers:
        assert "Worker ready" in process.output()
    for host in ("worker0", "worker1", "gateway0", "gateway1"):
        assert not (stack.folder / host / "archive" / "catalog.sqlite").exists(), f"{host} made an archive of its own"


def readiness(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


async def test_readyz_is_503_while_the_archive_is_out_of_reach(tmp_path: Path, kafka_url: str, redis_url: str) -> None:
    flush_sync(redis_url)
    stack_id = f"t{uuid.uuid4().hex[:10]}"
    env = {"IMFLOW_APP_ID": stack_id, **shared_archive(tmp_path, stack_id)}
    stack = real_stack(tmp_path, kafka_url, redis_url, gateways=1, extra_env=env)
    try:
        ready = readiness(stack.http(0))
        assert ready.status_code == 200 and ready.json()["checks"]["archive_catalog"] is True, ready.text
        assert ready.json()["checks"]["archive_storage"] is True, ready.text
        if env["IMFLOW_ARCHIVE_CATALOG"].startswith("postgres:"):
            broken, failing = {"IMFLOW_S3_ENDPOINT": "127.0.0.1:1"}, "archive_storage"  # nothing listens there
        else:
            (tmp_path / "a-file").write_text("not a folder")  # a catalog that cannot be made or opened
            broken, failing = {"IMFLOW_ARCHIVE_CATALOG": f"sqlite:{tmp_path / 'a-file' / 'catalog.sqlite'}"}, "archive_catalog"
        process, _, answer = start_listening(
            ["gateway"], {**stack.env, **broken}, tmp_path / "unready-gateway.log", tmp_path, ready_status=None
        )
        stack.gateways.append(process)
        assert answer.status_code == 503, answer.text
        checks = answer.json()["checks"]
        assert checks[failing] is False and checks["redis"] is True, checks
        # the healthy gateway of the same stack stays ready
        assert readiness(stack.http(0)).status_code == 200
    finally:
        stack.stop()
