"""Passwords (argon2) and JWT access/refresh tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from cloud.settings import CloudSettings

_HASHER = PasswordHasher()
TokenKind = Literal["access", "refresh"]


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except VerificationError:
        return False


def make_token(*, user_id: int, kind: TokenKind, settings: CloudSettings) -> str:
    minutes = settings.access_token_minutes if kind == "access" else settings.refresh_token_minutes
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user_id),
        "type": kind,
        "iat": now,
        "exp": now + dt.timedelta(minutes=minutes),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def read_token(token: str, *, kind: TokenKind, settings: CloudSettings) -> dict[str, Any]:
    """Decoded claims of a valid, unexpired token of ``kind``.

    Raises:
        jwt.InvalidTokenError: Bad signature, expired, or the wrong kind of token.
    """
    claims: dict[str, Any] = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"])
    if claims.get("type") != kind:
        raise jwt.InvalidTokenError(f"expected a {kind} token")
    return claims
