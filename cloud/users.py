"""Create users (the CLI and tests share this)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.models import ModelsAccess, Role, User
from cloud.security import hash_password


def add_user(
    session: Session,
    *,
    username: str,
    password: str,
    role: Role | str,
    manufacturer_id: int | None = None,
    models_access: ModelsAccess | str = ModelsAccess.read,
) -> User:
    """Add a user with a hashed password.

    Raises:
        ValueError: Unknown role or models access, a taken name, a short password, or a
            manufacturer user without a manufacturer.
    """
    access = _models_access(models_access)
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
        models_access=access,
    )
    session.add(user)
    session.flush()
    return user


def set_models_access(session: Session, *, username: str, access: ModelsAccess | str) -> User:
    """Give ``username`` read or write access to the FMU models exchange.

    Raises:
        ValueError: No such user, or an access other than read and write.
    """
    models_access = _models_access(access)
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise ValueError(f"no user named {username!r} ('batterytwin cloud user add' creates one)")
    user.models_access = models_access
    session.flush()
    return user


def _models_access(value: ModelsAccess | str) -> ModelsAccess:
    try:
        return ModelsAccess(value)
    except ValueError:
        raise ValueError(
            f"unknown models access {value!r}; choose read (browse, download) or write "
            "(also upload and delete FMUs)"
        ) from None
