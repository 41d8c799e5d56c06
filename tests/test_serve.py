"""The processes as operators run them: health, readiness, graceful SIGTERM."""

from pathlib import Path

import pytest
from imflow.testing import free_port, start_listening


def test_serve_embedded_needs_no_servers(tmp_path: Path) -> None:
    env = {"IMFLOW_KAFKA_URL": "", "IMFLOW_REDIS_URL": "", "IMFLOW_DATA_DIR": str(tmp_path / "data")}
    serve, port, alive = start_listening(["serve"], env, tmp_path / "serve.log", tmp_path, ready_path="/healthz")
    try:
        assert alive.json() == {"status": "alive"}
        home = serve.wait_http(f"http://127.0.0.1:{port}/")
        assert home.status_code == 200 and "imflow is running" in home.text and "/ws" in home.text
        ready = serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"redis": True, "transport": True, "gateway_channel": True, "archive_catalog": True, "archive_storage": True}
    finally:
        serve.stop_gracefully()
    assert "Application shutdown complete" in serve.output()
    assert (tmp_path / "data").is_dir()


@pytest.mark.kafka
@pytest.mark.redis
def test_gateway_on_real_servers_is_ready(tmp_path: Path, kafka_url: str, redis_url: str, app_id: str) -> None:
    env = {"IMFLOW_APP_ID": app_id}
    gateway, _, ready = start_listening(["gateway", "--kafka", kafka_url, "--redis", redis_url], env, tmp_path / "gw.log", tmp_path)
    try:
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"redis": True, "kafka": True, "gateway_channel": True, "archive_catalog": True, "archive_storage": True}
    finally:
        gateway.stop_gracefully()


@pytest.mark.kafka
def test_gateway_reports_unready_when_redis_does_not_answer(tmp_path: Path, kafka_url: str, app_id: str) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    gateway, port, ready = start_listening(
        ["gateway", "--kafka", kafka_url, "--redis", dead_redis], {"IMFLOW_APP_ID": app_id}, tmp_path / "gw.log", tmp_path,
        ready_status=None,  # its first answer, whatever it says
    )
    try:
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] is False
        assert ready.json()["checks"]["gateway_channel"] is False
        assert gateway.wait_http(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        gateway.stop_gracefully()


@pytest.mark.kafka
@pytest.mark.redis
async def test_serve_with_real_kafka_and_redis_runs_faust_in_process(tmp_path: Path, kafka_url: str, redis_url: str, app_id: str) -> None:
    """``imflow serve --kafka --redis``: one process, the real servers, the Faust agents inside."""
    from imflow.client import Client
    from imflow.core import tokens

    secret = "k" * 40
    # the tokens below name users nobody registered: registered on first sign-in
    env = {"IMFLOW_APP_ID": app_id, "IMFLOW_SECRET_KEY": secret, "IMFLOW_DATA_DIR": str(tmp_path / "data"), "IMFLOW_ACCOUNTS": "open"}
    serve, port, ready = start_listening(["serve", "--kafka", kafka_url, "--redis", redis_url], env, tmp_path / "serve.log", tmp_path)
    try:
        assert ready.json()["checks"] == {"redis": True, "kafka": True, "gateway_channel": True, "archive_catalog": True, "archive_storage": True}
        url = f"ws://127.0.0.1:{port}/ws"
        a, b = f"alice-{app_id}", f"bob-{app_id}"  # users of this test only: the database is shared
        async with await Client.connect(url, tokens.issue(secret, a, 60)) as alice, await Client.connect(url, tokens.issue(secret, b, 60)) as bob:
            sent = await alice.send_text(b, "through Kafka", timeout=10, attempts=6)  # the group may still be joining
            assert (await bob.next_message(timeout=30))["message"]["mid"] == sent["mid"]
    finally:
        serve.stop_gracefully()
