"""The one JSON decoder for what clients send: strict UTF-8, JSON, and the structural limits.

Gateways decode every frame and HTTP body with it, and workers decode every record with it,
so a worker never meets a record that a gateway would refuse (one parser, one set of limits).

The rules (docs/protocol.md, "Frames"):

- the bytes are UTF-8 as RFC 3629 defines it: no invalid sequences, no overlong forms, no
  surrogates (CESU-8), and no unpaired surrogate written as a ``\\u`` escape. Nothing is ever
  replaced with U+FFFD: what a client sent is stored as it sent it, or refused;
- JSON as RFC 8259 defines it, nested at most ``MAX_DEPTH`` levels (the frame object is level 1);
- every number is an integer within 0…2^53−1, the range a JSON number keeps exactly in every
  language (floats, negative numbers and larger integers are refused wherever they stand).
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import ErrorCode, ImflowError
from .models import MAX_SAFE_INT

MAX_DEPTH = 16  # a frame is level 1, a message body level 2: room for any sane structure


def decode(data: bytes | str) -> Any:
    """The JSON value of ``data`` once every rule above holds.

    Raises ImflowError(bad_json) for bytes that are not UTF-8 JSON, ImflowError(bad_frame) for
    JSON that breaks a limit (depth, numbers).
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")  # a str holding lone surrogates cannot be encoded
        except UnicodeEncodeError as exc:
            raise ImflowError(ErrorCode.BAD_JSON, "not valid UTF-8: unpaired surrogate") from exc
    try:
        value = orjson.loads(data)  # strict UTF-8 (RFC 3629), unpaired \\u escapes refused
    except orjson.JSONDecodeError as exc:  # also integers beyond 64 bits, and nesting past 1024
        raise ImflowError(ErrorCode.BAD_JSON, f"not valid UTF-8 JSON: {exc}") from exc
    check(value)
    return value


def check(value: Any) -> None:
    """Raise ImflowError(bad_frame) unless ``value`` keeps the depth and number limits.

    Walks iteratively, so no nesting can exhaust Python's recursion limit. The path named in
    an error (``frame.body.items[2]``) is spelled only when there is an error: every frame and
    record is checked, and nearly all pass.
    """
    # (item, depth, parent entry or None, key or index in the parent)
    pending: list[tuple[Any, int, tuple | None, Any]] = [(value, 1, None, None)]
    while pending:
        entry = pending.pop()
        item, depth = entry[0], entry[1]
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            problem = _scalar_problem(item)
            if problem:
                raise ImflowError(ErrorCode.BAD_FRAME, f"{_path(entry)}: {problem}")
            continue
        if depth > MAX_DEPTH:
            raise ImflowError(ErrorCode.BAD_FRAME, f"{_path(entry)}: nested deeper than {MAX_DEPTH} levels")
        pending.extend((child, depth + 1, entry, key) for key, child in children)


def _path(entry: tuple) -> str:
    """Where an entry of ``check``'s walk stands: ``frame``, ``frame.body``, ``frame.to[0]``."""
    parts = []
    while entry[2] is not None:
        _, _, parent, key = entry
        parts.append(f"[{key}]" if isinstance(parent[0], list) else f".{key}")
        entry = parent
    return "frame" + "".join(reversed(parts))


def _scalar_problem(item: Any) -> str:
    """What is wrong with a scalar ("" if nothing): only integers within 0…2^53−1 are numbers."""
    if isinstance(item, bool) or item is None or isinstance(item, str):
        return ""
    if isinstance(item, int):
        return "" if 0 <= item <= MAX_SAFE_INT else f"numbers are integers within 0…{MAX_SAFE_INT}"
    return f"numbers are integers within 0…{MAX_SAFE_INT}, not {item!r}"
