"""A plugin from its own package (examples/imflow-shout), found through the ``imflow`` entry
point: it adds a message type, an operation and an agent without a line changed in imflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imflow.client import Client
from imflow.testing import eventually, start_listening

EXAMPLE = Path(__file__).parent.parent / "examples" / "imflow-shout"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed (for real, by pip) into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
        check=True,
        capture_output=True,
    )
    assert (target / "imflow_shout").is_dir()
    return target


def test_imflow_plugins_lists_it(installed: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imflow", "plugins"], env={"PYTHONPATH": str(installed), "PATH": ""}, capture_output=True, text=True, check=True
    )
    assert "shout 0.1.0 (package imflow-shout)" in result.stdout
    assert "imflow_client_operations" in result.stdout and "imflow_stream_agents" in result.stdout


async def test_its_type_operation_and_agent_work_in_a_running_imflow(installed: Path, tmp_path: Path) -> None:
    import os

    from imflow.core import tokens

    secret = "s" * 40
    env = {"PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")]), "IMFLOW_SECRET_KEY": secret, "IMFLOW_KAFKA_URL": "", "IMFLOW_REDIS_URL": "",
           "IMFLOW_ACCOUNTS": "open"}  # the tokens below name users nobody registered
    serve, port, ready = start_listening(["serve", "--data-dir", str(tmp_path / "data")], env, tmp_path / "serve.log", tmp_path)
    try:
        assert ready.status_code == 200, serve.output()
        url = f"ws://127.0.0.1:{port}/ws"
        async with await Client.connect(url, tokens.issue(secret, "alice", 60)) as alice, await Client.connect(url, tokens.issue(secret, "bob", 60)) as bob:
            await alice.send({"to": "bob", "type": "shout", "body": {"text": "hello"}})
            await alice.send({"to": "bob", "type": "shout", "body": {"text": "again"}}, cmid="same")
            await alice.send({"to": "bob", "type": "shout", "body": {"text": "again"}}, cmid="same")  # a resend
            assert (await bob.next_message())["message"]["body"] == {"text": "HELLO"}

            async def counted() -> bool:
                reply = await bob.request({"op": "shout.stats", "user": "alice"})
                return reply["shouts"] == 2

            await eventually(counted, timeout=20, interval=0.2)
    finally:
        serve.stop_gracefully()
