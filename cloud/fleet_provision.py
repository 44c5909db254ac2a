"""Fleet load tests' database side: provision many devices at once, report what was stored.

``batterytwin fleet`` runs thousands of virtual BMSs against a cloud. These functions give
it (through ``cloud.api.fleet`` and ``batterytwin cloud device add-many``) its devices and
its measure of loss, duplicates and latency:

* :func:`provision_devices` creates ``count`` devices named ``{prefix}{i:05d}``, each with
  its own battery (serial ``SN-{name}``), one module, ``cells`` cells at positions
  ``0..cells-1`` and a fresh MQTT password, in a few bulk statements (Core executemany
  with RETURNING, not ORM objects one by one). A name that exists already gets a new
  password (and the pillar asked for); nothing else of it changes.
* :func:`stored_messages` returns the ``(device, seq)`` pairs stored above per-device
  marks, with the time each was stored, in one statement over ``ingested_messages``'s
  primary key.
* :func:`fleet_summary` counts what the devices of a prefix stored (one aggregate over
  ``ingested_messages``, one over ``measurements``, optionally with duplicate detection).

Each function runs in the caller's session and transaction; the caller commits.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from cloud.models import Battery, Cell, Device, IngestedMessage, Measurement, Module
from cloud.mqtt.contract import MAX_CELLS
from cloud.mqtt.credentials import new_device_password

__all__ = [
    "FLEET_PREFIX_PATTERN",
    "MAX_FLEET_CELLS_TOTAL",
    "MAX_FLEET_DEVICES",
    "MAX_FLEET_START",
    "MAX_STORED_ROWS",
    "DeviceSummary",
    "FleetDevice",
    "FleetSummary",
    "StoredMessages",
    "fleet_device_names",
    "fleet_summary",
    "provision_devices",
    "stored_messages",
]

MAX_FLEET_DEVICES = 20_000  # devices in one provisioning call or one stored_messages query
MAX_FLEET_START = 99_999_999  # so a name stays {prefix} + at most 8 digits
MAX_FLEET_CELLS_TOTAL = 2_000_000  # count * cells of one call: about a minute on PostgreSQL
MAX_STORED_ROWS = 50_000  # rows one stored_messages answer holds at most
FLEET_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$"
"""A device-name prefix that is a valid start of a topic level: letters, digits, - and _."""

_PREFIX = re.compile(FLEET_PREFIX_PATTERN)
_CHUNK = 5_000  # names per IN (...) lookup: well under SQLite's 32,766 variables
_T = TypeVar("_T")

_BATTERIES = cast(Table, Battery.__table__)
_MODULES = cast(Table, Module.__table__)
_CELLS = cast(Table, Cell.__table__)
_DEVICES = cast(Table, Device.__table__)
_INGESTED = cast(Table, IngestedMessage.__table__)
_MEASUREMENTS = cast(Table, Measurement.__table__)


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """One provisioned device and its MQTT password (shown only this once)."""

    name: str
    password: str
    device_id: int


@dataclass(slots=True)
class StoredMessages:
    """``(device, seq)`` pairs stored above the caller's marks, as parallel lists."""

    device: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    received_at_s: list[float] = field(default_factory=list)  # epoch s, the ingest's clock
    truncated: bool = False  # more rows are stored above the marks: ask again


@dataclass(slots=True)
class DeviceSummary:
    """What one device stored: message count, lowest and highest seq, count per kind."""

    count: int = 0
    min_seq: int | None = None
    max_seq: int | None = None
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class FleetSummary:
    """Per-device stored messages of a prefix and the measurement rows of its cells."""

    devices: dict[str, DeviceSummary]
    measurement_rows: int
    duplicate_measurement_rows: int | None  # None: not checked


def fleet_device_names(*, prefix: str, start: int, count: int) -> list[str]:
    """The device names of a fleet: ``{prefix}{i:05d}`` for i in ``start..start+count-1``."""
    return [f"{prefix}{i:05d}" for i in range(start, start + count)]


def _check_provisioning(*, prefix: str, count: int, start: int, pillar: int, cells: int) -> None:
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"prefix {prefix!r} must match {FLEET_PREFIX_PATTERN} (letters, digits, - and _, "
            "starting with a letter or digit): it starts each device's topic level"
        )
    if not 1 <= count <= MAX_FLEET_DEVICES:
        raise ValueError(f"count must be 1..{MAX_FLEET_DEVICES}, got {count}")
    if not 0 <= start <= MAX_FLEET_START:
        raise ValueError(f"start must be 0..{MAX_FLEET_START}, got {start}")
    if pillar not in (1, 2):
        raise ValueError(f"pillar must be 1 or 2, got {pillar}")
    if not 1 <= cells <= MAX_CELLS:
        raise ValueError(f"cells must be 1..{MAX_CELLS}, got {cells}")
    if count * cells > MAX_FLEET_CELLS_TOTAL:
        raise ValueError(
            f"count * cells must be at most {MAX_FLEET_CELLS_TOTAL:,}, got {count * cells:,}: "
            "provision in several calls (start=...)"
        )


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _lookup(conn: Connection, table: Table, key: str, values: Sequence[str]) -> dict[str, int]:
    """``key`` value -> id of the rows of ``table`` whose ``key`` is one of ``values``."""
    column = table.c[key]
    found: dict[str, int] = {}
    for chunk in _chunks(values):
        rows = conn.execute(select(column, table.c.id).where(column.in_(chunk)))
        found.update((value, row_id) for value, row_id in rows)  # a Result looks like a Mapping
    return found


def _insert_ids(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` (batched by SQLAlchemy's insertmanyvalues); their ids, in order."""
    if not rows:
        return []
    statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    return list(conn.execute(statement, rows).scalars())


def provision_devices(
    session: Session, *, prefix: str, count: int, start: int = 0, pillar: int = 1, cells: int = 16
) -> list[FleetDevice]:
    """Create (or re-key) the devices ``{prefix}{i:05d}`` for i in ``start..start+count-1``.

    A new name gets a battery (serial ``SN-{name}``, reused if one exists, e.g. after its
    device was deleted), a module and ``cells`` cells at positions ``0..cells-1``
    (a reused battery keeps what it has), and a device with that battery. A name that is a
    device already gets only a new password and ``pillar``.

    The password hashes are Mosquitto's own ``$7$`` (PBKDF2-SHA512, its default 101
    iterations, not lowered): about 0.09 ms each, 0.9 s of the about 4 s that 10,000
    16-cell devices take on PostgreSQL, so they need no process pool.

    Returns:
        One entry per name, in name order, with the new password (not stored; only its
        hash is).

    Raises:
        ValueError: naming the field, for a prefix that cannot start a topic level or a
            count, start, pillar or cells out of range.
    """
    _check_provisioning(prefix=prefix, count=count, start=start, pillar=pillar, cells=cells)
    names = fleet_device_names(prefix=prefix, start=start, count=count)
    conn = session.connection()
    credentials = {name: new_device_password() for name in names}
    device_ids = _lookup(conn, _DEVICES, "name", names)
    if device_ids:
        conn.execute(
            update(_DEVICES)
            .where(_DEVICES.c.id == bindparam("b_id"))
            .values(mqtt_password_hash=bindparam("b_hash"), pillar=bindparam("b_pillar")),
            [
                {"b_id": device_id, "b_hash": credentials[name][1], "b_pillar": pillar}
                for name, device_id in device_ids.items()
            ],
        )
    new = [name for name in names if name not in device_ids]
    battery_ids = _lookup(conn, _BATTERIES, "serial_number", [f"SN-{name}" for name in new])
    bare = [name for name in new if f"SN-{name}" not in battery_ids]
    serials = [f"SN-{name}" for name in bare]
    made = _insert_ids(
        conn,
        _BATTERIES,
        [{"serial_number": f"SN-{name}", "battery_name": name} for name in bare],
    )
    battery_ids.update(zip(serials, made, strict=True))
    module_ids = _insert_ids(
        conn,
        _MODULES,
        [
            {"module_name": f"{name}-m0", "position": 0, "battery_id": battery_ids[f"SN-{name}"]}
            for name in bare
        ],
    )
    _insert_cells(conn, names=bare, module_ids=module_ids, cells=cells)
    created = _insert_ids(
        conn,
        _DEVICES,
        [
            {
                "name": name,
                "battery_id": battery_ids[f"SN-{name}"],
                "pillar": pillar,
                "mqtt_password_hash": credentials[name][1],
            }
            for name in new
        ],
    )
    device_ids.update(zip(new, created, strict=True))
    return [FleetDevice(name, credentials[name][0], device_ids[name]) for name in names]


def _insert_cells(
    conn: Connection, *, names: Sequence[str], module_ids: Sequence[int], cells: int
) -> None:
    """``cells`` cells at positions ``0..cells-1`` in each module, ``_CHUNK`` modules at a time.

    On PostgreSQL one ``INSERT ... SELECT FROM unnest(arrays)`` per chunk: psycopg's
    executemany sends one statement per row (160,000 for 10,000 16-cell devices, 5 s).
    """
    positions = range(cells)
    for first in range(0, len(names), _CHUNK):
        chunk = list(
            zip(names[first : first + _CHUNK], module_ids[first : first + _CHUNK], strict=True)
        )
        cell_names = [f"{name}-c{p}" for name, _ in chunk for p in positions]
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    f"INSERT INTO {_CELLS.name} (cell_name, position, module_id) "
                    "SELECT * FROM unnest(CAST(:names AS text[]), CAST(:positions AS integer[]),"
                    " CAST(:modules AS integer[]))"
                ),
                {
                    "names": cell_names,
                    "positions": list(positions) * len(chunk),
                    "modules": [module_id for _, module_id in chunk for _ in positions],
                },
            )
            continue
        conn.execute(
            insert(_CELLS),
            [
                {"cell_name": cell_name, "position": i % cells, "module_id": chunk[i // cells][1]}
                for i, cell_name in enumerate(cell_names)
            ],
        )


def _epoch_s(value: dt.datetime) -> float:
    """Epoch seconds; SQLite gives the stored UTC time back without its offset."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


_STORED_PG = text(
    "SELECT d.name, m.seq, m.received_at "
    "FROM unnest(CAST(:names AS text[]), CAST(:marks AS bigint[])) AS t(name, mark) "
    "JOIN devices AS d ON d.name = t.name "
    "CROSS JOIN LATERAL ("
    " SELECT i.seq, i.received_at FROM ingested_messages AS i"
    " WHERE i.device_id = d.id AND i.seq > t.mark ORDER BY i.seq LIMIT :per_device"
    ") AS m"
)
# SQLite has no LATERAL: number each device's rows and keep the first per_device; the marks
# come as one JSON object (name -> mark), as 20,000 pairs would exceed its 32,766 variables.
_STORED_SQLITE = text(
    "SELECT name, seq, received_at FROM ("
    " SELECT d.name AS name, i.seq AS seq, i.received_at AS received_at,"
    " row_number() OVER (PARTITION BY i.device_id ORDER BY i.seq) AS n"
    " FROM json_each(:marks) AS t"
    " JOIN devices AS d ON d.name = t.key"
    " JOIN ingested_messages AS i ON i.device_id = d.id AND i.seq > t.value"
    ") WHERE n <= :per_device"
)
_STORED_COLUMNS: dict[str, TypeEngine[Any]] = {
    "name": String(),
    "seq": BigInteger(),
    "received_at": DateTime(timezone=True),
}


def stored_messages(
    session: Session, *, marks: Mapping[str, int], limit: int = MAX_STORED_ROWS
) -> StoredMessages:
    """The ``(device, seq)`` pairs stored with ``seq > marks[device]``, in one statement.

    A mark is the highest seq the caller knows to be stored with none missing below it
    (-1: none). Each device gets at most ``max(1, limit // len(marks))`` rows, lowest seq
    first, so that a device with a long backlog does not crowd out the others, and the
    answer at most ``limit`` rows; ``truncated`` says rows were left out (ask again with
    the marks moved up). Unknown device names give no rows.
    """
    if not 1 <= limit <= MAX_STORED_ROWS:
        raise ValueError(f"limit must be 1..{MAX_STORED_ROWS}, got {limit}")
    if len(marks) > MAX_FLEET_DEVICES:
        raise ValueError(f"devices: at most {MAX_FLEET_DEVICES} per query, got {len(marks)}")
    result = StoredMessages()
    if not marks:
        return result
    per_device = max(1, limit // len(marks))
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        parameters: dict[str, Any] = {"names": list(marks), "marks": list(marks.values())}
        statement = _STORED_PG
    else:
        parameters = {"marks": json.dumps(dict(marks))}
        statement = _STORED_SQLITE
    rows = conn.execute(
        statement.columns(**_STORED_COLUMNS), {**parameters, "per_device": per_device + 1}
    )
    taken: dict[str, int] = {}
    for name, seq, received_at in rows:
        taken[name] = taken.get(name, 0) + 1
        if taken[name] > per_device or len(result.seq) == limit:
            result.truncated = True
            continue
        result.device.append(name)
        result.seq.append(int(seq))
        result.received_at_s.append(_epoch_s(received_at))
    return result


def fleet_summary(session: Session, *, prefix: str, check_duplicates: bool = False) -> FleetSummary:
    """What the devices whose names start with ``prefix`` stored.

    Per device: stored messages (``ingested_messages``) by kind and their lowest and
    highest seq; devices that stored nothing are listed with count 0. In all: the
    ``measurements`` rows of their batteries' cells and, with ``check_duplicates``, how
    many of those rows repeat another's ``(cell_id, measured_at)`` (rows beyond the first
    of each pair; the exactly-once ingest should make it 0). The duplicate check groups
    every row of those cells (along the ``(cell_id, measured_at)`` index): it costs
    more than the count alone, hence optional.
    """
    conn = session.connection()
    of_prefix = _DEVICES.c.name.startswith(prefix, autoescape=True)
    per_kind = conn.execute(
        select(
            _DEVICES.c.name,
            _INGESTED.c.kind,
            func.count(_INGESTED.c.seq),
            func.min(_INGESTED.c.seq),
            func.max(_INGESTED.c.seq),
        )
        .select_from(_DEVICES.outerjoin(_INGESTED, _INGESTED.c.device_id == _DEVICES.c.id))
        .where(of_prefix)
        .group_by(_DEVICES.c.name, _INGESTED.c.kind)
    )
    devices: dict[str, DeviceSummary] = {}
    for name, kind, count, low, high in per_kind:
        summary = devices.setdefault(name, DeviceSummary())
        if kind is None:  # the outer join's row of a device without messages
            continue
        summary.count += count
        summary.by_kind[kind] = count
        summary.min_seq = low if summary.min_seq is None else min(summary.min_seq, low)
        summary.max_seq = high if summary.max_seq is None else max(summary.max_seq, high)
    cell_ids = (
        select(_CELLS.c.id)
        .join(_MODULES, _CELLS.c.module_id == _MODULES.c.id)
        .join(_DEVICES, _DEVICES.c.battery_id == _MODULES.c.battery_id)
        .where(of_prefix)
    )
    of_cells = _MEASUREMENTS.c.cell_id.in_(cell_ids)
    if not check_duplicates:
        rows = conn.scalar(select(func.count()).select_from(_MEASUREMENTS).where(of_cells))
        return FleetSummary(devices, int(rows or 0), None)
    groups = (
        select(func.count().label("n"))
        .select_from(_MEASUREMENTS)
        .where(of_cells)
        .group_by(_MEASUREMENTS.c.cell_id, _MEASUREMENTS.c.measured_at)
        .subquery()
    )
    total, extra = conn.execute(
        select(func.coalesce(func.sum(groups.c.n), 0), func.coalesce(func.sum(groups.c.n - 1), 0))
    ).one()
    return FleetSummary(devices, int(total), int(extra))
