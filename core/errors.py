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
    CONFLICT = "conflict"  # exists already: an account, a contact, a pending request, a block
    BLOCKED = "blocked"  # one of the two users blocks the other
    CONTACTS_ONLY = "contacts_only"  # the recipient takes one-to-one messages from contacts only
    USER_DEACTIVATED = "user_deactivated"  # the account is deactivated (admin API)
    UNKNOWN_USER = "unknown_user"  # a valid token whose user has no account (accounts=registered)
    NOT_A_MEMBER = "not_a_member"  # a mention names a user who is not in the group
    RECEIPTS_UNAVAILABLE = "receipts_unavailable"  # per-message receipts: not in read fan-out groups
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
