"""Object keys of attachments: who uploaded an object, and for which conversation, read from its key.

A key is ``att/<conversation>/<id>@<uploader>`` (``id``: 32 random hex digits), its image's
thumbnail ``att/<conversation>/<id>.thumb@<uploader>``. The key is what a client holds and
sends; it never names a file (the local store hashes it) and the hex id first means no segment
is ever ``.`` or ``..``, whatever the user id.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

PREFIX = "att/"
_CONVERSATION = r"p:[A-Za-z0-9_.\-]{1,64}:[A-Za-z0-9_.\-]{1,64}|g:[A-Za-z0-9_.\-]{1,64}"
_USER = r"[A-Za-z0-9_.\-]{1,64}"
KEY = re.compile(rf"^att/(?P<conversation>{_CONVERSATION})/(?P<id>[0-9a-f]{{32}})(?P<thumb>\.thumb)?@(?P<uploader>{_USER})$")


@dataclass(frozen=True)
class ObjectKey:
    """A parsed object key: ``thumbnail`` is True for an image's thumbnail."""

    conversation: str
    id: str
    uploader: str
    thumbnail: bool = False

    def __str__(self) -> str:
        return f"{PREFIX}{self.conversation}/{self.id}{'.thumb' if self.thumbnail else ''}@{self.uploader}"

    def thumbnail_key(self) -> ObjectKey:
        """The key of this object's thumbnail."""
        return ObjectKey(self.conversation, self.id, self.uploader, thumbnail=True)

    def original_key(self) -> ObjectKey:
        """The key of the object a thumbnail belongs to (itself for an original)."""
        return ObjectKey(self.conversation, self.id, self.uploader)


def new_key(conversation: str, uploader: str) -> ObjectKey:
    """A fresh key for an upload of ``uploader`` to ``conversation`` (128 random bits)."""
    return ObjectKey(conversation, secrets.token_hex(16), uploader)


def parse(key: object) -> ObjectKey | None:
    """The parsed ``key``, or None if it is not a string of the key format."""
    if not isinstance(key, str):
        return None
    match = KEY.fullmatch(key)
    if match is None:
        return None
    return ObjectKey(match["conversation"], match["id"], match["uploader"], thumbnail=bool(match["thumb"]))
