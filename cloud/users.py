"""Create users (the CLI and tests share this)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.models import Role, User
from cloud.security import hash_password


def add_user(
    session: Session,
    *,
    username: str,
    password: str,
    role: Role | str,
    manufacturer_id: int | None = None,
) -> User:
    """Add a user with a hashed password.

    Raises:
        ValueError: Unknown role, a taken name, a short password, or a manufacturer user
            without a manufacturer.
    """
    try:
        role = Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {role!r}; choose one of {allowed}") from None
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    if role == Role.manufacturer and manufacturer_id is None:
        raise ValueError(
            "a manufacturer user needs --manufacturer-id (the manufacturer it writes for)"
        )
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise ValueError(f"user {username!r} exists already")
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        manufacturer_id=manufacturer_id,
    )
    session.add(user)
    session.flush()
    return user
