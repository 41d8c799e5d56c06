"""Client tokens: HMAC-SHA256 JWTs with an expiry. One fixed algorithm; ``none`` never passes."""

from __future__ import annotations

import jwt

from .errors import ErrorCode, ImflowError
from .ids import now_ms
from .models import USER_ID_PATTERN

ALGORITHM = "HS256"


def issue(secret: str, user: str, ttl_seconds: int, now_s: int | None = None) -> str:
    if not USER_ID_PATTERN.fullmatch(user):
        raise ValueError(f"invalid user id {user!r}: use 1-64 letters, digits, '_', '.' or '-'")
    issued = now_s if now_s is not None else now_ms() // 1000
    return jwt.encode({"sub": user, "iat": issued, "exp": issued + ttl_seconds}, secret, algorithm=ALGORITHM)


def verify(secret: str, token: object) -> str:
    """The user a token names; raises ImflowError(token_expired | token_invalid)."""
    if not isinstance(token, str) or len(token) > 4096:
        raise ImflowError(ErrorCode.TOKEN_INVALID, "token must be a string")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise ImflowError(ErrorCode.TOKEN_EXPIRED, "token expired; get a new one") from exc
    except jwt.PyJWTError as exc:
        raise ImflowError(ErrorCode.TOKEN_INVALID, f"token rejected: {exc}") from exc
    user = claims["sub"]
    if not isinstance(user, str) or not USER_ID_PATTERN.fullmatch(user):
        raise ImflowError(ErrorCode.TOKEN_INVALID, "token names no valid user")
    return user
