"""BMS snapshots as CAN frames and back: the DBC codec and the snapshot assembler.

One reporting cycle of the BMS (a :class:`BmsSnapshot`) goes on the bus as ``2 n + 2``
classic CAN frames described by ``batterytwin_bms.dbc`` (11-bit IDs, 8 bytes, Intel byte
order):

=======  ===================  ======================================================
ID       message              signals (bit start|length, resolution, range)
=======  ===================  ======================================================
0x401    BMS_Pack             PackCurrent 0|24 signed, 1 mA, +-8388 A;
                              CycleCounterLow 24|4; BmsTime 28|36, 10 ms
0x410    BMS_CellMeasurement  CellIndex 0|12; CycleCounterLow 12|4;
                              CellVoltage 16|16, 1 mV, 0..65.535 V;
                              CellTemperature 32|16 signed, 0.1 degC, -40..125 degC
0x411    BMS_CellState        CellIndex 0|12; CycleCounterLow 12|4;
                              CellSoc 16|10, CellSoh 26|10, CellSos 36|10, 0.1 %;
                              CellEquivalentCycles 46|18, 0.1, 0..26214.3
0x400    BMS_Status           CycleCounter 0|16; CellCount 16|13 (1..4096);
                              Mode 29|3 (0 resting, 1 charging, 2 discharging,
                              3 fault); fault bits 32..37
=======  ===================  ======================================================

A cycle is sent in that order: ``BMS_Pack`` opens it, one ``BMS_CellMeasurement`` and one
``BMS_CellState`` per cell follow (``CellIndex`` says which cell: the frames are
multiplexed by cell index, one layout for every cell, so the same four IDs carry 1 to
4096 cells), and ``BMS_Status`` closes it. Every data frame carries the cycle counter mod
16, so frames of two cycles can interleave without being mixed up. At 500 kbit/s a bus
carries about 4000 such frames a second: 16 cells take ~9 ms, 100 cells ~50 ms, 4096
cells ~2 s per cycle.

Completeness policy (:class:`SnapshotAssembler`): a snapshot is complete when, at its
``BMS_Status``, the assembler holds its ``BMS_Pack`` and both cell frames of every cell
``0..CellCount-1`` (and ``CellCount`` is the expected cell count, if one is set). A
snapshot that misses anything is returned as an :class:`IncompleteSnapshot` that says what
is missing, never as a :class:`BmsSnapshot`, so a receiver never publishes a partial pack
as if it were whole. Data frames whose ``BMS_Status`` never comes are reported the same
way once a status frame of a later cycle arrives.

Units and conventions: soc, soh and sos are fractions in a :class:`BmsSnapshot` and
percent on the bus; positive current discharges. Values beyond a signal's range are sent
saturated at the range, as a BMS's fixed-point conversion does; non-finite values are
refused.

Example::

    db = load_dbc()
    messages = encode(snapshot, db)
    assembler = SnapshotAssembler(db)
    for message in messages:
        for result in assembler.feed(message):
            ...  # a BmsSnapshot, or an IncompleteSnapshot to report
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import can
import numpy as np
from cantools.database.can import Database
from cantools.database.can import Message as DbcMessage
from cantools.database.errors import DecodeError
from numpy.typing import ArrayLike

from twin.models.base import FloatArray
from virtual_bms.sources import SensorFrame

__all__ = [
    "CYCLE_COUNTER_MODULO",
    "DBC_RESOURCE",
    "FAULTS",
    "MAX_CELLS",
    "MODES",
    "Assembled",
    "BmsSnapshot",
    "IncompleteSnapshot",
    "SnapshotAssembler",
    "encode",
    "load_dbc",
]

DBC_RESOURCE = "batterytwin_bms.dbc"
"""The DBC file shipped in this package."""

MAX_CELLS = 4096  # cells in one snapshot (CellIndex is 12 bits; also the MQTT contract's limit)
CYCLE_COUNTER_MODULO = 65_536  # BMS_Status.CycleCounter is 16 bits
_LOW_MODULO = 16  # CycleCounterLow, the counter's low 4 bits, on every data frame

MODES: tuple[str, ...] = ("resting", "charging", "discharging", "fault")
"""BMS modes, as :class:`virtual_bms.modes.Mode` names them (the DBC's ``Mode`` values)."""

FAULTS: Mapping[str, str] = {
    "over_voltage": "FaultOverVoltage",
    "under_voltage": "FaultUnderVoltage",
    "over_temperature": "FaultOverTemperature",
    "under_temperature": "FaultUnderTemperature",
    "over_current_discharge": "FaultOverCurrentDischarge",
    "over_current_charge": "FaultOverCurrentCharge",
}
"""Fault kinds (:attr:`virtual_bms.modes.Violation.kind`) -> their bit in ``BMS_Status``."""

_STATUS, _PACK, _MEASUREMENT, _STATE = (
    "BMS_Status",
    "BMS_Pack",
    "BMS_CellMeasurement",
    "BMS_CellState",
)
_PER_CELL = ("voltage_v", "temperature_c", "soc", "soh", "sos", "equivalent_cycles")
_SIGNALS: Mapping[str, tuple[str, ...]] = {
    _STATUS: ("CycleCounter", "CellCount", "Mode", *FAULTS.values()),
    _PACK: ("PackCurrent", "CycleCounterLow", "BmsTime"),
    _MEASUREMENT: ("CellIndex", "CycleCounterLow", "CellVoltage", "CellTemperature"),
    _STATE: (
        "CellIndex",
        "CycleCounterLow",
        "CellSoc",
        "CellSoh",
        "CellSos",
        "CellEquivalentCycles",
    ),
}


def load_dbc(path: str | Path | None = None) -> Database:
    """The BMS frame database: the packaged DBC, or a copy of it with other frame IDs.

    A site whose BMS already uses the default IDs for something else copies the DBC and
    changes the IDs; message and signal names must stay as they are.

    Args:
        path: A DBC file; ``None`` for the packaged ``batterytwin_bms.dbc``.

    Raises:
        ValueError: If the file lacks a message or signal the codec needs.
    """
    if path is None:
        return _packaged_dbc()
    db = Database()
    db.add_dbc_file(str(path))
    _check(db, str(path))
    return db


@functools.cache
def _packaged_dbc() -> Database:
    # parsed once: parsing costs milliseconds, and the database is never modified
    text = resources.files(__package__).joinpath(DBC_RESOURCE).read_text(encoding="ascii")
    db = Database()
    db.add_dbc_string(text)
    _check(db, DBC_RESOURCE)
    return db


def _check(db: Database, where: str) -> None:
    for name, signals in _SIGNALS.items():
        try:
            message = db.get_message_by_name(name)
        except KeyError:
            raise ValueError(
                f"{where} has no message {name}; a BMS DBC needs {', '.join(_SIGNALS)} "
                f"(copy {DBC_RESOURCE} and change only the frame IDs)"
            ) from None
        missing = [s for s in signals if s not in {sig.name for sig in message.signals}]
        if missing:
            raise ValueError(f"{where}: message {name} lacks signal(s) {', '.join(missing)}")


def _as_cells(name: str, values: ArrayLike) -> FloatArray:
    array: FloatArray = np.array(values, dtype=np.float64, ndmin=1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per cell, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite (a BMS sends no NaN), got {array}")
    array.flags.writeable = False
    return array


@dataclass(frozen=True, slots=True, eq=False)
class BmsSnapshot:
    """One reporting cycle of the BMS: what goes on the bus, and what the gateway rebuilds.

    Attributes:
        time_s: BMS clock when the snapshot was taken (seconds since the BMS started).
        voltage_v: Cell voltages, shape (n_cells,).
        temperature_c: Cell temperatures, shape (n_cells,).
        current_a: Pack current (positive discharges).
        soc: State of charge per cell, fraction.
        soh: State of health per cell, fraction.
        sos: State of safety per cell, fraction.
        equivalent_cycles: Equivalent full cycles per cell.
        mode: One of :data:`MODES`.
        cycle_counter: Reporting cycle number, 0..65535 (wraps).
        faults: Active fault kinds, keys of :data:`FAULTS`.
    """

    time_s: float
    voltage_v: FloatArray
    temperature_c: FloatArray
    current_a: float
    soc: FloatArray
    soh: FloatArray
    sos: FloatArray
    equivalent_cycles: FloatArray
    mode: str = "resting"
    cycle_counter: int = 0
    faults: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = None
        for name in _PER_CELL:
            array = _as_cells(name, getattr(self, name))
            object.__setattr__(self, name, array)
            if n is None:
                n = array.size
            elif array.size != n:
                raise ValueError(f"{name} has {array.size} values for {n} cells (voltage_v)")
        if not 1 <= (n or 0) <= MAX_CELLS:
            raise ValueError(f"a snapshot holds 1 to {MAX_CELLS} cells, got {n}")
        for name in ("time_s", "current_a"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.cycle_counter < CYCLE_COUNTER_MODULO:
            raise ValueError(
                f"cycle_counter must be in 0..{CYCLE_COUNTER_MODULO - 1}, got {self.cycle_counter}"
            )
        unknown = sorted(set(self.faults).difference(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")

    @property
    def n_cells(self) -> int:
        return int(self.voltage_v.size)

    @classmethod
    def from_sensor_frame(
        cls,
        frame: SensorFrame,
        *,
        soc: ArrayLike,
        soh: ArrayLike,
        sos: ArrayLike,
        equivalent_cycles: ArrayLike,
        mode: str = "resting",
        faults: Sequence[str] = (),
        cycle_counter: int = 0,
    ) -> BmsSnapshot:
        """A BMS's reading plus its estimates; the pack current is the strings' sum."""
        return cls(
            time_s=frame.time_s,
            voltage_v=frame.voltage_v,
            temperature_c=frame.temperature_c,
            current_a=float(np.sum(frame.current_a)),
            soc=_as_cells("soc", soc),
            soh=_as_cells("soh", soh),
            sos=_as_cells("sos", sos),
            equivalent_cycles=_as_cells("equivalent_cycles", equivalent_cycles),
            mode=mode,
            faults=tuple(faults),
            cycle_counter=cycle_counter,
        )

    def to_sensor_frame(self) -> SensorFrame:
        """What a BMS reading this pack sees: one string carrying the pack current."""
        return SensorFrame(
            time_s=self.time_s,
            voltage_v=self.voltage_v,
            current_a=np.array([self.current_a]),
            temperature_c=self.temperature_c,
        )

    def with_counter(self, cycle_counter: int) -> BmsSnapshot:
        return replace(self, cycle_counter=cycle_counter % CYCLE_COUNTER_MODULO)


@dataclass(frozen=True, slots=True)
class IncompleteSnapshot:
    """A cycle the assembler could not complete, and why; it is reported, never published.

    Attributes:
        cycle_counter: From its ``BMS_Status``; ``None`` when the status frame was lost.
        cycle_low: The cycle counter mod 16 (known from any frame of the cycle).
        n_cells: Cells the cycle should have held (``CellCount`` or the expected count);
            ``None`` if neither is known.
        missing_cells: Cells lacking a measurement or a state frame.
        missing_pack: ``BMS_Pack`` was not received.
        missing_status: ``BMS_Status`` was not received (a later cycle's came first).
        reason: One line for a log or an event.
    """

    cycle_counter: int | None
    cycle_low: int
    n_cells: int | None
    missing_cells: tuple[int, ...]
    missing_pack: bool
    missing_status: bool
    reason: str


def encode(snapshot: BmsSnapshot, db: Database | None = None) -> list[can.Message]:
    """The frames of one cycle, in sending order (pack, then per cell, then status).

    Args:
        snapshot: The cycle; its ``cycle_counter`` is sent.
        db: The frame database (default: the packaged DBC).
    """
    codec = _codec(db or load_dbc())
    low = snapshot.cycle_counter % _LOW_MODULO
    frames = [
        codec.frame(
            _PACK,
            {"PackCurrent": snapshot.current_a, "CycleCounterLow": low, "BmsTime": snapshot.time_s},
        )
    ]
    # percent on the bus; plain floats, as cantools is much faster with them than numpy's
    soc, soh, sos = ((100.0 * x).tolist() for x in (snapshot.soc, snapshot.soh, snapshot.sos))
    voltage, temperature = snapshot.voltage_v.tolist(), snapshot.temperature_c.tolist()
    cycles = snapshot.equivalent_cycles.tolist()
    for i in range(snapshot.n_cells):
        frames.append(
            codec.frame(
                _MEASUREMENT,
                {
                    "CellIndex": i,
                    "CycleCounterLow": low,
                    "CellVoltage": voltage[i],
                    "CellTemperature": temperature[i],
                },
            )
        )
        frames.append(
            codec.frame(
                _STATE,
                {
                    "CellIndex": i,
                    "CycleCounterLow": low,
                    "CellSoc": soc[i],
                    "CellSoh": soh[i],
                    "CellSos": sos[i],
                    "CellEquivalentCycles": cycles[i],
                },
            )
        )
    status: dict[str, float] = {
        "CycleCounter": snapshot.cycle_counter,
        "CellCount": snapshot.n_cells,
        "Mode": MODES.index(snapshot.mode),
    }
    status |= {bit: float(kind in snapshot.faults) for kind, bit in FAULTS.items()}
    frames.append(codec.frame(_STATUS, status))
    return frames


class _Codec:
    """The four messages of a database, with each signal's range and decimals."""

    def __init__(self, db: Database) -> None:
        self.messages = {name: db.get_message_by_name(name) for name in _SIGNALS}
        self.kind_of = {m.frame_id: name for name, m in self.messages.items()}
        self.range: dict[tuple[str, str], tuple[float, float]] = {}
        self.decimals: dict[tuple[str, str], int] = {}
        for name, message in self.messages.items():
            for signal in message.signals:
                lo = signal.minimum if signal.minimum is not None else -math.inf
                hi = signal.maximum if signal.maximum is not None else math.inf
                self.range[name, signal.name] = (float(lo), float(hi))
                scale = float(signal.scale)
                self.decimals[name, signal.name] = max(0, -math.floor(math.log10(scale) + 1e-9))

    def frame(self, name: str, values: Mapping[str, float]) -> can.Message:
        message = self.messages[name]
        saturated = {}
        for signal, value in values.items():
            lo, hi = self.range[name, signal]
            saturated[signal] = min(max(value, lo), hi)
        data = message.encode(saturated, scaling=True, strict=True)
        return can.Message(
            arbitration_id=message.frame_id, is_extended_id=False, data=data, dlc=len(data)
        )

    def decode(self, message: can.Message) -> tuple[str, dict[str, float]] | None:
        """``(message name, signals rounded to their resolution)``; ``None`` if not ours."""
        if message.is_extended_id or message.is_error_frame or message.is_remote_frame:
            return None
        name = self.kind_of.get(message.arbitration_id)
        if name is None:
            return None
        definition: DbcMessage = self.messages[name]
        decoded = definition.decode(bytes(message.data), decode_choices=False, scaling=True)
        assert isinstance(decoded, dict)
        values = {}
        for signal, value in decoded.items():
            assert isinstance(value, int | float)
            values[signal] = round(float(value), self.decimals[name, signal])
        return name, values


@dataclass
class _Partial:
    """The data frames of one cycle received so far."""

    pack: tuple[float, float] | None = None  # (time_s, current_a)
    measured: dict[int, tuple[float, float]] = field(default_factory=dict)  # V, degC
    states: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)


@functools.lru_cache(maxsize=8)
def _codec(db: Database) -> _Codec:
    return _Codec(db)  # a database is never modified once loaded, so its codec is kept


Assembled = BmsSnapshot | IncompleteSnapshot
"""What :meth:`SnapshotAssembler.feed` returns: a whole snapshot, or a report of a cut one."""


class SnapshotAssembler:
    """Rebuilds snapshots from a stream of frames; see the module docstring for the policy.

    Pure: it never touches a bus. Frames of other IDs are ignored (counted in
    :attr:`ignored`), frames of ours that do not decode are counted in
    :attr:`undecodable`.

    Args:
        db: The frame database (default: the packaged DBC).
        n_cells: Cells the BMS should report; ``None`` trusts ``CellCount``.
    """

    def __init__(self, db: Database | None = None, *, n_cells: int | None = None) -> None:
        if n_cells is not None and not 1 <= n_cells <= MAX_CELLS:
            raise ValueError(f"n_cells must be in 1..{MAX_CELLS}, got {n_cells}")
        self.n_cells = n_cells
        self.frames = 0
        self.ignored = 0
        self.undecodable = 0
        self._codec = _codec(db or load_dbc())
        self._pending: dict[int, _Partial] = {}  # by cycle counter mod 16

    def feed(self, message: can.Message) -> list[Assembled]:
        """Take one frame; returns what it completed (only a status frame completes any)."""
        try:
            decoded = self._codec.decode(message)
        except DecodeError:
            self.undecodable += 1
            return []
        if decoded is None:
            self.ignored += 1
            return []
        self.frames += 1
        name, values = decoded
        if name == _STATUS:
            return self._close(values)
        low = int(values["CycleCounterLow"])
        partial = self._pending.setdefault(low, _Partial())
        if name == _PACK:
            partial.pack = (values["BmsTime"], values["PackCurrent"])
        elif name == _MEASUREMENT:
            partial.measured[int(values["CellIndex"])] = (
                values["CellVoltage"],
                values["CellTemperature"],
            )
        else:
            partial.states[int(values["CellIndex"])] = (
                round(values["CellSoc"] / 100.0, 4),
                round(values["CellSoh"] / 100.0, 4),
                round(values["CellSos"] / 100.0, 4),
                values["CellEquivalentCycles"],
            )
        return []

    def _close(self, status: Mapping[str, float]) -> list[Assembled]:
        counter = int(status["CycleCounter"])
        low = counter % _LOW_MODULO
        results: list[Assembled] = []
        # cycles behind this one never got their status frame: report them first, in order
        behind = sorted(
            (k for k in self._pending if 1 <= (low - k) % _LOW_MODULO <= _LOW_MODULO // 2),
            key=lambda k: -((low - k) % _LOW_MODULO),
        )
        for k in behind:
            results.append(self._incomplete(self._pending.pop(k), k, None, self.n_cells))
        partial = self._pending.pop(low, _Partial())
        n = int(status["CellCount"])
        mode = int(status["Mode"])
        if self.n_cells is not None and n != self.n_cells:
            results.append(
                self._incomplete(
                    partial,
                    low,
                    counter,
                    n,
                    why=f"BMS_Status says {n} cells, the gateway expects {self.n_cells}",
                )
            )
        elif not 1 <= n <= MAX_CELLS:
            results.append(
                self._incomplete(
                    partial, low, counter, None, why=f"CellCount {n} is not in 1..{MAX_CELLS}"
                )
            )
        elif mode >= len(MODES):
            results.append(
                self._incomplete(partial, low, counter, n, why=f"unknown BMS mode value {mode}")
            )
        elif partial.pack is None or _missing(partial, n):
            results.append(self._incomplete(partial, low, counter, n))
        else:
            results.append(_snapshot(partial, status, n, MODES[mode]))
        return results

    @staticmethod
    def _incomplete(
        partial: _Partial, low: int, counter: int | None, n: int | None, why: str = ""
    ) -> IncompleteSnapshot:
        if n is None:
            both = set(partial.measured) & set(partial.states)
            missing = tuple(sorted((set(partial.measured) | set(partial.states)) - both))
        else:
            missing = _missing(partial, n)
        parts = [why] if why else []
        if counter is None:
            parts.append("no BMS_Status frame (a later cycle's arrived first)")
        if partial.pack is None:
            parts.append("no BMS_Pack frame")
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            parts.append(f"{len(missing)} cell(s) without both cell frames: {shown}")
        label = f"cycle {counter}" if counter is not None else f"cycle ...{low} (mod 16)"
        return IncompleteSnapshot(
            cycle_counter=counter,
            cycle_low=low,
            n_cells=n,
            missing_cells=missing,
            missing_pack=partial.pack is None,
            missing_status=counter is None,
            reason=f"{label} incomplete: {'; '.join(parts)}",
        )


def _missing(partial: _Partial, n: int) -> tuple[int, ...]:
    return tuple(i for i in range(n) if i not in partial.measured or i not in partial.states)


def _snapshot(partial: _Partial, status: Mapping[str, float], n: int, mode: str) -> BmsSnapshot:
    assert partial.pack is not None
    measured = np.array([partial.measured[i] for i in range(n)])
    states = np.array([partial.states[i] for i in range(n)])
    return BmsSnapshot(
        time_s=partial.pack[0],
        voltage_v=measured[:, 0],
        temperature_c=measured[:, 1],
        current_a=partial.pack[1],
        soc=states[:, 0],
        soh=states[:, 1],
        sos=states[:, 2],
        equivalent_cycles=states[:, 3],
        mode=mode,
        cycle_counter=int(status["CycleCounter"]),
        faults=tuple(kind for kind, bit in FAULTS.items() if status[bit]),
    )
