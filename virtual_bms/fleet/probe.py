"""When does a published message become queryable? Poll the cloud for a sample of BMSs.

Every ``interval_s`` the probe asks the cloud which ``(device, seq)`` of its sampled
devices were stored above per-device marks (:meth:`CloudClient.stored_since`). A message is
*visible* at the time that answer arrived: an upper bound on the moment its row became
queryable, late by at most one polling interval plus a round trip (the resolution the
report states). Marks advance only over contiguous seqs, so a message that is stored
after a later one (two ingest workers committing out of order) is still seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import numpy as np

from virtual_bms.fleet.cloud_client import CloudClient, CloudError

__all__ = ["StoredProbe"]

_log = logging.getLogger(__name__)


class StoredProbe:
    """Polls the stored messages of ``names`` (device ``indices`` in the fleet).

    Args:
        client: A logged-in cloud client.
        names: The sampled devices' names.
        indices: Their indices in the fleet (for joining with the publish records).
        first_seq: The first seq each sampled device publishes in this run.
        interval_s: Polling period.
    """

    def __init__(
        self,
        client: CloudClient,
        *,
        names: Sequence[str],
        indices: Sequence[int],
        first_seq: Sequence[int],
        interval_s: float = 0.25,
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self._index = dict(zip(names, indices, strict=True))
        self.indices = list(indices)
        self._name_of = dict(zip(indices, names, strict=True))
        self._mark = {name: int(s) - 1 for name, s in zip(names, first_seq, strict=True)}
        self._above: dict[str, set[int]] = {name: set() for name in names}
        self._device: list[int] = []
        self._seq: list[int] = []
        self._visible: list[float] = []
        self.polls = 0
        self.errors = 0
        self.truncated = 0
        self.poll_ms: list[float] = []

    async def poll_once(self) -> int:
        """One round trip; returns how many messages became visible."""
        sent = time.perf_counter()
        batch = await self.client.stored_since(self._mark)
        arrived = time.time()
        self.poll_ms.append((time.perf_counter() - sent) * 1000.0)
        self.polls += 1
        self.truncated += batch.truncated
        new = 0
        for name, seq in zip(batch.device, batch.seq, strict=True):
            above = self._above.get(name)
            if above is None or seq <= self._mark[name] or seq in above:
                continue
            above.add(seq)
            self._device.append(self._index[name])
            self._seq.append(seq)
            self._visible.append(arrived)
            new += 1
        for name, above in self._above.items():
            mark = self._mark[name]
            while mark + 1 in above:
                mark += 1
                above.discard(mark)
            self._mark[name] = mark
        return new

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set (then once more, to catch the tail)."""
        while True:
            done = stop.is_set()
            try:
                await self.poll_once()
            except (CloudError, OSError) as exc:  # the cloud may be down during a drill
                self.errors += 1
                _log.debug("probe poll failed: %s", exc)
            if done:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)

    @property
    def seen_count(self) -> int:
        """Messages seen so far."""
        return len(self._seq)

    def mark_of(self, index: int) -> int:
        """Highest seq of fleet device ``index`` seen stored with all before it."""
        return self._mark[self._name_of[index]]

    def stored_over_time(self, *, start_s: float, scale: float) -> list[tuple[float, int]]:
        """``(t_s since start_s, messages stored so far)``, from the sampled devices scaled
        by ``scale`` (fleet size / sample size): an estimate of the fleet's stored rate."""
        if not self._visible:
            return []
        times = np.sort(np.asarray(self._visible)) - start_s
        stamps, counts = np.unique(times, return_counts=True)
        cumulative = np.cumsum(counts) * scale
        return [(float(t), int(c)) for t, c in zip(stamps, cumulative, strict=True)]

    def visible(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(device index, seq, visible time)`` of every message seen."""
        return (
            np.asarray(self._device, dtype=np.int64),
            np.asarray(self._seq, dtype=np.int64),
            np.asarray(self._visible, dtype=np.float64),
        )
