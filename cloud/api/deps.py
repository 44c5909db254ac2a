"""Request dependencies: the database session and the authenticated user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from cloud.db import session_scope
from cloud.models import User
from cloud.security import read_token
from cloud.settings import CloudSettings

_bearer = HTTPBearer(auto_error=False)


async def get_settings(request: Request) -> CloudSettings:  # async: no thread hop
    settings: CloudSettings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    yield from session_scope(request.app.state.sessions)


SettingsDep = Annotated[CloudSettings, Depends(get_settings)]
# "function": the transaction commits when the endpoint returns, before the response is
# sent. With the default ("request") FastAPI commits after sending, so a client could be
# told 201 about a row that a failing commit then drops, or read before it is there.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_current_user(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    unauthorised = HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="a valid access token is required (Authorization: Bearer <access>)",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if credentials is None:
        raise unauthorised
    try:
        claims = read_token(credentials.credentials, kind="access", settings=settings)
    except jwt.InvalidTokenError:
        raise unauthorised from None
    user = session.get(User, int(claims["sub"]))
    if user is None or not user.is_active:
        raise unauthorised
    request.state.user_ref = (user.id, user.username)  # for the activity log
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
