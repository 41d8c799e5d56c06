"""The built-in topics."""

from __future__ import annotations

from imflow.core import dead_letter
from imflow.core.agents import topic_name

INGEST = "ingest"  # client sends, keyed by conversation

DEAD_LETTER = dead_letter.TOPIC  # records no agent could process (core/dead_letter.py)

ALL = (INGEST, DEAD_LETTER)


def all_topic_names(app_id: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every topic a deployment needs: the built-in ones and those of plugin agents."""
    return [topic_name(app_id, topic) for topic in dict.fromkeys([*ALL, *extra])]
