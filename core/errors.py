"""Error codes of the core layer: stable strings that clients and operators can rely on."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    UNKNOWN_OP = "unknown_op"
    FRAME_TOO_LARGE = "frame_too_large"
    UNAUTHENTICATED = "unauthenticated"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_INVALID = "token_invalid"
    TOKEN_REVOKED = "token_revoked"  # imflow revoke: tokens issued until then no longer count
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    REJECTED = "rejected"  # a worker could not process the message and set it aside: do not resend
    INTERNAL = "internal"


class ImflowError(Exception):
    """An error a client or operator may see, with a stable code (a plugin's codes contain a dot)."""

    def __init__(self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms  # for limits: when trying again can succeed

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "message": self.message}
