"""Revoking a user's tokens: ``imflow revoke USER``.

A revocation records a time for the user in Redis (core/storage/revocations.py). Every token of
that user issued at or before it is refused from then on, wherever a token is checked: the
WebSocket ``auth`` frame (first or later) and the HTTP API. Tokens issued after it work.
Issue times are in milliseconds (core/tokens.py), so "at or before" errs towards refusing
only a token issued in the very millisecond of the revocation.

The same call tells every gateway, over a pub/sub channel they all listen on, to end the
sessions those tokens opened (``token_revoked``, close 4401). Pub/sub may lose a message to
a gateway that is reconnecting to Redis; a gateway therefore checks the users it holds
again whenever its subscription comes back (gateway/hub.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from redis.exceptions import RedisError

from . import tokens
from .errors import ErrorCode, ImflowError
from .ids import now_ms
from .models import USER_ID_PATTERN
from .storage import revocations

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True)
class Revocation:
    """The tokens of ``user`` issued at or before ``before_ms`` (Unix ms) are revoked; the
    sessions they opened end with error ``code`` (``token_revoked``, or ``user_deactivated``
    when the account was deactivated)."""

    user: str
    before_ms: int
    code: str = ErrorCode.TOKEN_REVOKED

    def covers(self, issued_ms: int) -> bool:
        return issued_ms <= self.before_ms

    def encode(self) -> bytes:
        return orjson.dumps({"revoke": {"user": self.user, "before_ms": self.before_ms, "code": str(self.code)}})

    @classmethod
    def decode(cls, data: bytes) -> Revocation:
        """The revocation a gateways-channel message carries; raises ValueError for anything else."""
        try:
            order = orjson.loads(data)["revoke"]
            user, before_ms = order["user"], order["before_ms"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a revocation: {data[:200]!r}") from exc
        code = order.get("code", ErrorCode.TOKEN_REVOKED)  # a gateway may hear an older publisher
        if not isinstance(user, str) or not isinstance(before_ms, int) or not isinstance(code, str):
            raise ValueError(f"not a revocation: {data[:200]!r}")
        return cls(user, before_ms, code)


async def revoke(redis: Redis, user: str, at_ms: int | None = None, code: str = ErrorCode.TOKEN_REVOKED) -> Revocation:
    """Revoke ``user``'s tokens issued at or before ``at_ms`` (default: now, Unix ms), and tell
    every gateway to end the sessions they opened, with error ``code``.

    The recorded time only ever rises (an earlier revocation given later changes nothing).
    Returns the revocation published. Raises ValueError for an invalid user id and Redis
    errors as they come.
    """
    if not USER_ID_PATTERN.fullmatch(user):
        raise ValueError(f"invalid user id {user!r}: use 1-64 letters, digits, '_', '.' or '-'")
    revocation = Revocation(user, at_ms if at_ms is not None else now_ms(), code)
    await revocations.raise_time(redis, user, revocation.before_ms)
    # after the record: a gateway that checks a new token once told finds it in Redis
    await revocations.announce(redis, revocation.encode())
    return revocation


async def revoked_before(redis: Redis, users: list[str]) -> dict[str, int]:
    """Each given user's revocation time (Unix ms); users never revoked are left out."""
    return await revocations.times(redis, users)


async def check(redis: Redis, claims: tokens.TokenClaims) -> None:
    """Raise ImflowError(token_revoked) if a revocation covers this token, or (unavailable)
    if Redis cannot say: a token that cannot be checked is not accepted."""
    try:
        revoked = await revocations.time_of(redis, claims.user)
    except (RedisError, OSError) as exc:
        raise ImflowError(ErrorCode.UNAVAILABLE, "cannot check the token now; try again shortly") from exc
    if revoked is not None and Revocation(claims.user, int(revoked)).covers(claims.issued_ms):
        raise ImflowError(ErrorCode.TOKEN_REVOKED, "this token was revoked; sign in again for a new one")


async def verify(redis: Redis, secret: str, token: object) -> tokens.TokenClaims:
    """The claims of a valid, unrevoked token.

    Raises ImflowError: token_invalid, token_expired, token_revoked, or unavailable when
    Redis does not answer.
    """
    claims = tokens.verify_claims(secret, token)
    await check(redis, claims)
    return claims
