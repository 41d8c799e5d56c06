"""Client tokens: HMAC-SHA256 JWTs with an expiry. One fixed algorithm; ``none`` never passes.

A token's issue time decides whether a revocation (core/revocation.py) covers it, so the
tokens imflow issues carry it to the millisecond: ``iat`` is a NumericDate with a fraction
(RFC 7519 allows one), e.g. ``1764506400.123``. Tokens from other issuers with a whole-second
``iat`` count as issued at the start of that second, and tokens without ``iat`` as issued at
time 0: both err towards refusing.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from .errors import ErrorCode, ImflowError
from .ids import now_ms
from .models import USER_ID_PATTERN

ALGORITHM = "HS256"
# an issuer's clock may run a little ahead of a gateway's; more than this is a bad token
ISSUED_AHEAD_MS = 60_000


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: its user, when it was issued and when it expires (Unix ms)."""

    user: str
    issued_ms: int
    expires_ms: int


def issue(secret: str, user: str, ttl_seconds: int, now_s: int | None = None) -> str:
    """A signed token for ``user`` valid ``ttl_seconds`` from now (or from ``now_s``, Unix s).

    ``exp`` is whole seconds, so the lifetime is ``ttl_seconds`` less the fraction of the
    current second. Raises ValueError for a user id outside the pattern.
    """
    if not USER_ID_PATTERN.fullmatch(user):
        raise ValueError(f"invalid user id {user!r}: use 1-64 letters, digits, '_', '.' or '-'")
    issued_ms = now_s * 1000 if now_s is not None else now_ms()
    issued = issued_ms / 1000 if issued_ms % 1000 else issued_ms // 1000
    return jwt.encode({"sub": user, "iat": issued, "exp": issued_ms // 1000 + ttl_seconds}, secret, algorithm=ALGORITHM)


def verify_claims(secret: str, token: object) -> TokenClaims:
    """The claims of a valid token; raises ImflowError(token_expired | token_invalid).

    Revocation is not checked here (it needs Redis): see core/revocation.py ``verify``.
    """
    if not isinstance(token, str) or len(token) > 4096:
        raise ImflowError(ErrorCode.TOKEN_INVALID, "token must be a string")
    try:
        # iat is checked below, with room for clock skew (PyJWT allows none)
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"], "verify_iat": False})
    except jwt.ExpiredSignatureError as exc:
        raise ImflowError(ErrorCode.TOKEN_EXPIRED, "token expired; get a new one") from exc
    except jwt.PyJWTError as exc:
        raise ImflowError(ErrorCode.TOKEN_INVALID, f"token rejected: {exc}") from exc
    user = claims["sub"]
    if not isinstance(user, str) or not USER_ID_PATTERN.fullmatch(user):
        raise ImflowError(ErrorCode.TOKEN_INVALID, "token names no valid user")
    issued = claims.get("iat", 0)
    if isinstance(issued, bool) or not isinstance(issued, int | float) or not 0 <= issued < 1e11:
        raise ImflowError(ErrorCode.TOKEN_INVALID, "token rejected: iat must be a time in seconds")
    issued_ms = round(issued * 1000)
    if issued_ms > now_ms() + ISSUED_AHEAD_MS:
        raise ImflowError(ErrorCode.TOKEN_INVALID, "token rejected: issued in the future")
    return TokenClaims(user, issued_ms, int(claims["exp"] * 1000))


def verify(secret: str, token: object) -> str:
    """The user a token names; raises ImflowError(token_expired | token_invalid)."""
    return verify_claims(secret, token).user
