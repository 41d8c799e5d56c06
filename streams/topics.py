"""Topic names. Every topic is prefixed with the app id so several deployments share a cluster."""

from __future__ import annotations

INGEST = "ingest"  # client sends, keyed by conversation

ALL = (INGEST,)


def topic_name(app_id: str, topic: str) -> str:
    return f"{app_id}.{topic}"


def all_topic_names(app_id: str) -> list[str]:
    return [topic_name(app_id, topic) for topic in ALL]
