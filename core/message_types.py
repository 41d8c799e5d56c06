"""Message types: the built-in ``text`` body, and the one check every body passes before it is queued.

Every type, built-in or a plugin's, declares its body once (a MessageBody schema); the gateway
calls ``validate_body`` for every send, so no body outside its declaration reaches a topic.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import Field, SerializerFunctionWrapHandler, ValidationError, field_validator, model_serializer

from . import wire
from .errors import ErrorCode, ImflowError
from .models import UserId  # noqa: TC001 - pydantic reads TextBody's annotations at run time
from .plugin_types import MessageBody, MessageType

MAX_TEXT = 4000  # characters (code points) of a text message


MAX_MENTIONS = 50  # users one message mentions by name


class TextBody(MessageBody):
    """``{"text": "…", "mentions"?: [user, …], "mention_all"?: true}``: 1–4000 characters; up
    to 50 distinct members it mentions; ``mention_all`` mentions every member (docs/protocol.md,
    "Mentions"). The two are left out of the stored body when empty or false, so a body without
    mentions is stored exactly as before they existed. Who may be mentioned is the send's check
    (core/mentions.py), not the body's."""

    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    mentions: Annotated[list[UserId], Field(default_factory=list, max_length=MAX_MENTIONS)]
    mention_all: bool = False

    @field_validator("mentions")
    @classmethod
    def _no_repeats(cls, users: list[str]) -> list[str]:
        if len(set(users)) != len(users):
            raise ValueError("a user is mentioned twice")
        return users

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body = handler(self)
        if not body.get("mentions"):
            body.pop("mentions", None)
        if not body.get("mention_all"):
            body.pop("mention_all", None)
        return body


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
