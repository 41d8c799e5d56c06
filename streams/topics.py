"""Topic names. Every topic is prefixed with the app id so several deployments share a cluster."""

from __future__ import annotations

INGEST = "ingest"
ACKS = "acks"


def topic_name(app_id: str, topic: str) -> str:
    return f"{app_id}.{topic}"
