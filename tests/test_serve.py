"""The processes as operators run them: health, readiness, graceful SIGTERM."""

from pathlib import Path

import pytest
from imflow.testing import ImflowProcess, free_port


def test_serve_embedded_needs_no_servers(tmp_path: Path) -> None:
    port = free_port()
    env = {"IMFLOW_KAFKA_URL": "", "IMFLOW_REDIS_URL": "", "IMFLOW_DATA_DIR": str(tmp_path / "data")}
    serve = ImflowProcess(["serve", "--port", str(port)], env, tmp_path / "serve.log", tmp_path)
    try:
        assert serve.wait_http(f"http://127.0.0.1:{port}/healthz").json() == {"status": "alive"}
        ready = serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"redis": True, "transport": True, "gateway_channel": True}
    finally:
        serve.stop_gracefully()
    assert "Application shutdown complete" in serve.output()
    assert (tmp_path / "data").is_dir()


@pytest.mark.kafka
@pytest.mark.redis
def test_gateway_on_real_servers_is_ready(tmp_path: Path, kafka_url: str, redis_url: str, app_id: str) -> None:
    port = free_port()
    env = {"IMFLOW_APP_ID": app_id}
    gateway = ImflowProcess(
        ["gateway", "--port", str(port), "--kafka", kafka_url, "--redis", redis_url], env, tmp_path / "gw.log", tmp_path
    )
    try:
        ready = gateway.wait_http(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"redis": True, "kafka": True, "gateway_channel": True}
    finally:
        gateway.stop_gracefully()


@pytest.mark.kafka
def test_gateway_reports_unready_when_redis_does_not_answer(tmp_path: Path, kafka_url: str, app_id: str) -> None:
    port = free_port()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    gateway = ImflowProcess(
        ["gateway", "--port", str(port), "--kafka", kafka_url, "--redis", dead_redis],
        {"IMFLOW_APP_ID": app_id},
        tmp_path / "gw.log",
        tmp_path,
    )
    try:
        ready = gateway.wait_http(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] is False
        assert ready.json()["checks"]["gateway_channel"] is False
        assert gateway.wait_http(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        gateway.stop_gracefully()
