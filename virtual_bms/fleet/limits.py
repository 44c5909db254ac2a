"""The open-file limit a fleet needs: one descriptor per MQTT connection (and the broker's)."""

from __future__ import annotations

import resource

__all__ = ["raise_open_files"]


def raise_open_files(wanted: int | None = None) -> tuple[int, int]:
    """Raise this process's soft open-file limit (children started later inherit it).

    Args:
        wanted: Descriptors needed; None: as many as the hard limit allows. The soft limit
            is never lowered, and never raised above the hard limit (only root may).

    Returns:
        The soft and hard limits afterwards; a hard limit below ``wanted`` is the caller's
        to report (``ulimit -Hn``, systemd's ``LimitNOFILE``; docs/fleet.md).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else max(soft, wanted)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard
