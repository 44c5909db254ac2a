"""The virtual BMS's CAN port: puts one snapshot per reporting cycle on a bus.

The emitter numbers the cycles (``BMS_Status.CycleCounter``, +1 per cycle, wrapping at
65536) and sends each cycle's frames in the order of :func:`~virtual_bms.can.frames.encode`.
It blocks until every frame is queued; call it from a thread (``asyncio.to_thread``) in
async code.

A real interface's transmit queue can fill up (SocketCAN raises ``ENOBUFS`` at once rather
than waiting: ``can0`` has a queue of 10 frames unless ``txqueuelen`` is raised); a frame
that does not fit is retried until ``send_timeout_s`` has passed.

Example::

    with can.Bus(interface="virtual", channel="bms") as bus:
        emitter = CanEmitter(bus, n_cells=16)
        emitter.send(snapshot)  # each reporting cycle
"""

from __future__ import annotations

import time

import can
from cantools.database.can import Database

from virtual_bms.can.frames import (
    CYCLE_COUNTER_MODULO,
    MAX_CELLS,
    BmsSnapshot,
    encode,
    load_dbc,
)

__all__ = ["CanEmitter"]

_RETRY_PAUSE_S = 0.001  # between tries of a frame the interface refused (queue full)


class CanEmitter:
    """Sends snapshots of ``n_cells`` cells on ``bus``; the bus stays the caller's to close.

    Args:
        bus: An open python-can bus.
        n_cells: Cells in every snapshot (1..4096).
        db: The frame database (default: the packaged DBC).
        first_cycle: Counter of the first cycle sent.
        send_timeout_s: Longest wait for room in the transmit queue, per frame.
    """

    def __init__(
        self,
        bus: can.BusABC,
        n_cells: int,
        *,
        db: Database | None = None,
        first_cycle: int = 0,
        send_timeout_s: float = 1.0,
    ) -> None:
        if not 1 <= n_cells <= MAX_CELLS:
            raise ValueError(f"n_cells must be in 1..{MAX_CELLS}, got {n_cells}")
        self.bus = bus
        self.n_cells = n_cells
        self.next_cycle = first_cycle % CYCLE_COUNTER_MODULO
        self.frames_sent = 0
        self._db = db or load_dbc()
        self._timeout_s = send_timeout_s

    def send(self, snapshot: BmsSnapshot) -> BmsSnapshot:
        """Put one cycle on the bus.

        Args:
            snapshot: What the BMS reports; its ``cycle_counter`` is replaced by the
                emitter's.

        Returns:
            The snapshot as sent (with its cycle counter).

        Raises:
            ValueError: If the snapshot does not have ``n_cells`` cells.
            can.CanOperationError: If the interface refused a frame for ``send_timeout_s``.
        """
        if snapshot.n_cells != self.n_cells:
            raise ValueError(
                f"the snapshot has {snapshot.n_cells} cells, the emitter sends {self.n_cells}"
            )
        sent = snapshot.with_counter(self.next_cycle)
        for message in encode(sent, self._db):
            self._send(message)
        self.next_cycle = (sent.cycle_counter + 1) % CYCLE_COUNTER_MODULO
        return sent

    def _send(self, message: can.Message) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                self.bus.send(message, timeout=self._timeout_s)
            except can.CanOperationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_RETRY_PAUSE_S)
            else:
                self.frames_sent += 1
                return
