"""The BMS on a CAN bus: DBC frames, the virtual BMS's emitter and the Pillar 2 gateway.

Entry points: :class:`CanEmitter` (a virtual BMS puts its snapshots on a bus),
:func:`run_gateway` (a Raspberry Pi forwards a BMS's frames to the cloud) and
:class:`CanSource` (BMS code reads a physical pack). Frame layout: :mod:`.frames` and
``docs/can_gateway.md``.
"""

from virtual_bms.can.emitter import CanEmitter
from virtual_bms.can.frames import (
    BmsSnapshot,
    IncompleteSnapshot,
    SnapshotAssembler,
    encode,
    load_dbc,
)
from virtual_bms.can.gateway import (
    CanGateway,
    CanSource,
    GatewayConfig,
    GatewayError,
    run_gateway,
    serve_gateway,
)

__all__ = [
    "BmsSnapshot",
    "CanEmitter",
    "CanGateway",
    "CanSource",
    "GatewayConfig",
    "GatewayError",
    "IncompleteSnapshot",
    "SnapshotAssembler",
    "encode",
    "load_dbc",
    "run_gateway",
    "serve_gateway",
]
