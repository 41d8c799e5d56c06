"""Message types: the built-in ``text`` body, and the one check every body passes before it is queued.

Every type, built-in or a plugin's, declares its body once (a MessageBody schema); the gateway
calls ``validate_body`` for every send, so no body outside its declaration reaches a topic.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import Field, ValidationError

from . import wire
from .errors import ErrorCode, ImflowError
from .plugin_types import MessageBody, MessageType

MAX_TEXT = 4000  # characters (code points) of a text message


class TextBody(MessageBody):
    """``{"text": "…"}``: 1–4000 characters, nothing else."""

    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


TEXT = MessageType("text", schema=TextBody)


def validate_body(message_type: MessageType, body: dict[str, Any]) -> dict[str, Any]:
    """The body to store for a message of ``message_type``: the schema's dump of ``body``, then
    whatever the type's ``validate`` makes of it.

    Raises ImflowError(bad_frame) naming the first problem; a plugin's validate that returns
    something outside the frame limits (core/wire.py) is refused the same way.
    """
    try:
        if message_type.schema is not None:
            # JSON mode both ways: a strict schema takes what JSON can say (enum values, arrays
            # for tuples, ISO dates) and gives back only what JSON can carry
            body = message_type.schema.model_validate_json(orjson.dumps(body)).model_dump(mode="json")
        if message_type.validate is not None:
            body = message_type.validate(dict(body))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ImflowError(ErrorCode.BAD_FRAME, f"invalid {message_type.name} body: {problems}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise ImflowError(ErrorCode.BAD_FRAME, f"invalid {message_type.name} body: {exc}") from exc
    if not isinstance(body, dict):
        raise ImflowError(ErrorCode.BAD_FRAME, f"invalid {message_type.name} body: not an object")
    wire.check({"body": body})
    return body
