"""``/api/dashboard/``: read-only views shaped for the dashboard's pages."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from cloud.api.deps import CurrentUser

router = APIRouter(prefix="/api/dashboard", tags=["Dashboard"])


class Me(BaseModel):
    username: str
    role: str
    models_access: str


@router.get("/me/", response_model=Me)
def me(user: CurrentUser) -> Me:
    """The signed-in user, so pages show what the role allows."""
    return Me(username=user.username, role=str(user.role), models_access=str(user.models_access))
