"""``/api/token/`` and ``/api/token/refresh/`` (simplejwt's paths and payloads)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque

import jwt
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from cloud.api.deps import SessionDep, SettingsDep
from cloud.models import User
from cloud.security import make_token, read_token, verify_password

log = logging.getLogger("batterytwin.cloud.auth")
router = APIRouter(prefix="/api/token", tags=["Authentication"])


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1024)


class TokenPair(BaseModel):
    access: str
    refresh: str


class RefreshRequest(BaseModel):
    refresh: str


class AccessToken(BaseModel):
    access: str


class RateLimiter:
    """At most ``per_minute`` token requests per (user name, client address)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def allow(self, key: tuple[str, str]) -> bool:
        now = time.monotonic()
        hits = self._hits[key]
        while hits and now - hits[0] > 60.0:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return False
        hits.append(now)
        return True


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/", response_model=TokenPair)
def obtain(
    body: TokenRequest, request: Request, session: SessionDep, settings: SettingsDep
) -> TokenPair:
    limiter: RateLimiter = request.app.state.token_limiter
    if not limiter.allow((body.username, _client(request))):
        log.warning("token rate limit hit for user %r from %s", body.username, _client(request))
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, detail="too many token requests; wait a minute"
        )
    user = session.scalar(select(User).where(User.username == body.username))
    if user is None or not user.is_active or not verify_password(body.password, user.password_hash):
        log.warning("failed login for user %r from %s", body.username, _client(request))
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail="no active account with these credentials"
        )
    return TokenPair(
        access=make_token(user_id=user.id, kind="access", settings=settings),
        refresh=make_token(user_id=user.id, kind="refresh", settings=settings),
    )


@router.post("/refresh/", response_model=AccessToken)
def refresh(body: RefreshRequest, session: SessionDep, settings: SettingsDep) -> AccessToken:
    try:
        claims = read_token(body.refresh, kind="refresh", settings=settings)
    except jwt.InvalidTokenError:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail="refresh token invalid or expired"
        ) from None
    user = session.get(User, int(claims["sub"]))
    if user is None or not user.is_active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="refresh token invalid or expired")
    return AccessToken(access=make_token(user_id=user.id, kind="access", settings=settings))
