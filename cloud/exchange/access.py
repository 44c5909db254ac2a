"""Who may do what in the models exchange: read (browse, download) or write (also upload
and delete). Devices have no access; admins always write."""

from __future__ import annotations

from cloud.models import ModelsAccess, Role, User


def read_refusal(user: User) -> str | None:
    """Why ``user`` may not browse the exchange, or None if it may."""
    if user.role == Role.device:
        return "device accounts have no access to the models exchange"
    return None


def write_refusal(user: User) -> str | None:
    """Why ``user`` may not upload or delete FMUs, or None if it may."""
    refusal = read_refusal(user)
    if refusal or user.role == Role.admin or user.models_access == ModelsAccess.write:
        return refusal
    return (
        f"user {user.username!r} has read-only access to the models exchange; an admin "
        f"grants write access with 'batterytwin cloud user models-access {user.username} write'"
    )
