"""Read measured impedance spectra: CSV, BioLogic .mpt, Gamry .DTA, ZPlot .z and JSON records.

Every reader returns a :class:`Spectrum` with ``Z_im < 0`` where the cell is capacitive
(the twin's convention, :mod:`twin.eis`), whatever the file used: BioLogic writes
``-Im(Z)``, Gamry and ZPlot write ``Im(Z)``, CSV files say so (or not) in their header.

The parsers are pure (text in, spectrum out); only :func:`read_spectrum` touches the disk.
They are written here rather than taken from ``impedance.preprocessing``: its readers find
columns by position (Gamry, ZPlot) or read header-less CSV only, fail with bare
``assert``/``IndexError``, and do not read decimal commas or milliohm columns, while a
researcher's file needs a sentence naming the file and the missing column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "FORMATS",
    "Spectrum",
    "SpectrumError",
    "parse_biologic_mpt",
    "parse_csv",
    "parse_gamry_dta",
    "parse_json",
    "parse_zplot_z",
    "read_spectrum",
]

FloatArray = NDArray[np.float64]

FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".txt": "csv",
    ".mpt": "biologic",
    ".dta": "gamry",
    ".z": "zplot",
    ".json": "json",
}
"""File suffix (lower case) to format name; ``read_spectrum(fmt=...)`` overrides it."""


class SpectrumError(ValueError):
    """A spectrum cannot be read or used: the message names the source and what to do."""


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One impedance spectrum, in the order it was measured.

    Attributes:
        frequency_hz: Excitation frequencies, finite and > 0.
        z_re_ohm: Real part of Z.
        z_im_ohm: Imaginary part of Z, negative where capacitive.
        source: Where it came from (a file name or a sweep id), quoted in errors.
        notes: What the reader decided on the way (sign or unit guesses).
    """

    frequency_hz: FloatArray
    z_re_ohm: FloatArray
    z_im_ohm: FloatArray
    source: str = "spectrum"
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("frequency_hz", "z_re_ohm", "z_im_ohm"):
            a = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            object.__setattr__(self, name, a)
            arrays[name] = a
        n = {a.size for a in arrays.values()}
        if len(n) != 1:
            sizes = ", ".join(f"{k} {v.size}" for k, v in arrays.items())
            raise SpectrumError(f"{self.source}: columns differ in length ({sizes})")
        if self.frequency_hz.size < 3:
            raise SpectrumError(
                f"{self.source}: {self.frequency_hz.size} data points; a spectrum needs at least 3"
            )
        for name, a in arrays.items():
            bad = ~np.isfinite(a) if name != "frequency_hz" else ~(np.isfinite(a) & (a > 0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                rule = "finite and > 0" if name == "frequency_hz" else "finite"
                raise SpectrumError(
                    f"{self.source}: {name} must be {rule}, got {a[i]!r} at data point {i + 1}"
                )

    @property
    def z_ohm(self) -> NDArray[np.complex128]:
        """The impedance as complex numbers."""
        return self.z_re_ohm + 1j * self.z_im_ohm

    @property
    def n_points(self) -> int:
        """Number of frequencies."""
        return int(self.frequency_hz.size)

    @classmethod
    def from_complex(
        cls, frequency_hz: ArrayLike, z_ohm: ArrayLike, *, source: str = "spectrum"
    ) -> Spectrum:
        """Build from frequencies and complex impedances."""
        z = np.asarray(z_ohm, dtype=np.complex128)
        return cls(np.asarray(frequency_hz, dtype=np.float64), z.real, z.imag, source=source)


# --- small parsing helpers ------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?$")


def _is_number(token: str) -> bool:
    return bool(_NUMBER.match(token.strip()))


def _float(token: str, *, decimal_comma: bool, source: str, where: str) -> float:
    text = token.strip()
    if decimal_comma:
        text = text.replace(",", ".")
    try:
        return float(text)
    except ValueError:
        raise SpectrumError(
            f"{source}: cannot read {token.strip()!r} as a number ({where})"
        ) from None


def _column(names: list[str], wanted: tuple[str, ...], *, source: str, what: str) -> int:
    """Index of the first column whose normalised name is in ``wanted``."""
    norm = [_normalise(n) for n in names]
    for w in wanted:
        if w in norm:
            return norm.index(w)
    shown = ", ".join(repr(n.strip()) for n in names if n.strip()) or "nothing"
    raise SpectrumError(
        f"{source}: no {what} column (looked for {', '.join(repr(w) for w in wanted)}; "
        f"the column-name line has {shown})"
    )


def _normalise(name: str) -> str:
    return name.strip().strip('"').strip().lower().replace(" ", "")


def _table(
    rows: list[list[str]],
    columns: tuple[int, int, int],
    *,
    decimal_comma: bool,
    source: str,
    first_line: int,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Read three columns of ``rows`` (already split) as floats."""
    out = np.empty((3, len(rows)))
    for r, row in enumerate(rows):
        for c, col in enumerate(columns):
            if col >= len(row):
                raise SpectrumError(
                    f"{source}: line {first_line + r} has {len(row)} fields, "
                    f"expected at least {col + 1}"
                )
            out[c, r] = _float(
                row[col],
                decimal_comma=decimal_comma,
                source=source,
                where=f"line {first_line + r}, field {col + 1}",
            )
    return out[0], out[1], out[2]


# --- plain CSV ------------------------------------------------------------------------------

_FREQ_NAMES = ("f", "freq", "frequency")
_RE_NAMES = ("z'", "zre", "z_re", "re(z)", "zreal", "z_real", "real", "re")
_IM_NAMES = ("z''", "zim", "z_im", "im(z)", "zimag", "z_imag", "imag", "im")
_IM_EXPLICIT = ("z_im", "im(z)", "zimag", "z_imag", "imag", "im")  # Im(Z); Z'' and Zim vary
_UNIT_RE = re.compile(
    r"^(?P<base>.*?)\s*(?:\((?P<a>[^()]*)\)|\[(?P<b>[^\]]*)\]|[/_](?P<c>[^/_()]+))$"
)
_OHM_UNITS = {"ohm": 1.0, "ohms": 1.0, "mohm": 1e-3, "mohms": 1e-3, "uohm": 1e-6, "µohm": 1e-6}
_HZ_UNITS = {"Hz": 1.0, "hz": 1.0, "kHz": 1e3, "khz": 1e3, "mHz": 1e-3, "MHz": 1e6}


def _unit_key(unit: str) -> str:
    return unit.strip().replace("Ω", "ohm").replace("μ", "µ").lower().replace(" ", "")


def _header_field(name: str) -> tuple[str, str]:
    """``"Z' (mOhm)"`` -> ``("z'", "mOhm")``: base name (lower case) and unit (as written).

    The unit is what follows in ``()`` or ``[]`` or after ``/`` or ``_``, if it is a
    known unit (so ``Re(Z)`` keeps its brackets).
    """
    n = name.strip().strip('"').strip()
    m = _UNIT_RE.match(n)
    if m:
        unit = (m["a"] or m["b"] or m["c"] or "").strip()
        if _unit_key(unit) in _OHM_UNITS or unit.replace(" ", "") in _HZ_UNITS:
            return m["base"].strip().lower().replace(" ", ""), unit.replace(" ", "")
    return n.lower().replace(" ", ""), ""


def parse_csv(text: str, *, source: str = "csv") -> Spectrum:
    """Read a delimited text table of frequency, Z' and Z''.

    The delimiter is comma, semicolon or tab (with ``;`` or tab a decimal comma is
    read). Header names are matched loosely: ``f``/``freq``/``frequency`` (unit ``Hz``
    by default, ``kHz`` or ``mHz`` if written), ``Z'``/``Zre``/``Re(Z)``/``Zreal`` and
    ``Z''``/``Zim``/``Im(Z)``/``Zimag``; a leading ``-`` on the imaginary column
    (``-Im(Z)``, ``-Z''``) marks it as ``-Im``. Units are written in ``()``, ``[]`` or
    after ``/`` or ``_`` (``Z' (mOhm)``, ``Re(Z)/Ohm``, ``z_re_ohm``); impedance is read
    in ``ohm`` unless the header says ``mOhm``. Without a header the first three
    columns are frequency, Z', Z''. When nothing says whether the imaginary column is
    ``Im`` or ``-Im`` (``Z''`` and ``Zim`` are written both ways), the data decide: a
    cell is capacitive over most of a spectrum, so a column that is mostly positive is
    read as ``-Im`` (the spectrum's ``notes`` say so).

    Raises:
        SpectrumError: Naming ``source`` and the missing column or bad value.
    """
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    lines = [(i, ln) for i, ln in lines if not ln.lstrip().startswith("#")]
    if not lines:
        raise SpectrumError(f"{source}: the file is empty")
    first = lines[0][1]
    delimiter = max(("\t", ";", ","), key=first.count)
    if first.count(delimiter) == 0:
        delimiter = " "
    decimal_comma = delimiter != ","

    def split(line: str) -> list[str]:
        return line.split() if delimiter == " " else line.split(delimiter)

    header = split(first)
    notes: list[str] = []
    if all(_is_number(t) for t in header if t.strip()):
        cols, re_scale, im_sign, f_scale, sign_known = (0, 1, 2), 1.0, 1.0, 1.0, False
        body = lines
    else:
        body = lines[1:]
        fields = [_header_field(n) for n in header]
        shown = ", ".join(repr(n.strip()) for n in header)
        f_col = next((i for i, (b, _) in enumerate(fields) if b in _FREQ_NAMES), None)
        re_col = next((i for i, (b, _) in enumerate(fields) if b in _RE_NAMES), None)
        im_col = next(
            (i for i, (b, _) in enumerate(fields) if b.removeprefix("-") in _IM_NAMES), None
        )
        for what, col, names in (
            ("frequency", f_col, _FREQ_NAMES),
            ("real-part", re_col, _RE_NAMES),
            ("imaginary-part", im_col, _IM_NAMES),
        ):
            if col is None:
                raise SpectrumError(
                    f"{source}: no {what} column (a header such as "
                    f"{', '.join(repr(n) for n in names[:4])}; the header has {shown})"
                )
        assert f_col is not None and re_col is not None and im_col is not None
        cols = (f_col, re_col, im_col)
        f_unit = fields[f_col][1]
        if f_unit and f_unit not in _HZ_UNITS:
            raise SpectrumError(f"{source}: unknown frequency unit {f_unit!r}; use Hz, kHz or mHz")
        f_scale = _HZ_UNITS.get(f_unit, 1.0)
        re_scale = _OHM_UNITS.get(_unit_key(fields[re_col][1]) or "ohm", 1.0)
        im_scale = _OHM_UNITS.get(_unit_key(fields[im_col][1]) or "ohm", 1.0)
        im_base = fields[im_col][0]
        sign_known = im_base.startswith("-") or im_base in _IM_EXPLICIT
        im_sign = (-1.0 if im_base.startswith("-") else 1.0) * im_scale / re_scale
        for scale, col in ((f_scale, f_col), (re_scale, re_col), (im_scale, im_col)):
            if scale != 1.0:
                notes.append(f"column {header[col].strip()!r} read in {fields[col][1]}")
    if not body:
        raise SpectrumError(f"{source}: a header but no data rows")
    f, zr, zi = _table(
        [split(ln) for _, ln in body],
        cols,
        decimal_comma=decimal_comma,
        source=source,
        first_line=body[0][0],
    )
    zr = zr * re_scale
    zi = zi * re_scale * im_sign
    if not sign_known and np.count_nonzero(zi > 0) > zi.size / 2:
        zi = -zi
        notes.append(
            "imaginary column is mostly positive: read as -Im(Z) (capacitive cell); "
            "name the column Im(Z) or -Im(Z) to say which"
        )
    return Spectrum(f * f_scale, zr, zi, source=source, notes=tuple(notes))


# --- BioLogic EC-Lab .mpt -------------------------------------------------------------------


def parse_biologic_mpt(text: str, *, source: str = "mpt") -> Spectrum:
    """Read an EC-Lab text export (``.mpt``): ``Nb header lines``, then a tab table.

    The last header line holds the column names; ``freq/Hz``, ``Re(Z)/Ohm`` and
    ``-Im(Z)/Ohm`` are read (EC-Lab writes ``-Im``, so the sign is flipped). Decimal
    commas (EC-Lab follows the Windows locale) are read.

    Raises:
        SpectrumError: Naming ``source`` and the missing line or column.
    """
    lines = text.splitlines()
    m = next(
        (re.search(r"Nb header lines\s*:\s*(\d+)", ln) for ln in lines[:5] if "Nb header" in ln),
        None,
    )
    if m is None:
        raise SpectrumError(
            f"{source}: no 'Nb header lines : N' line near the top; is it an EC-Lab "
            "text export (.mpt)?"
        )
    n_header = int(m[1])
    if not 1 <= n_header <= len(lines):
        raise SpectrumError(
            f"{source}: 'Nb header lines' is {n_header} but the file has {len(lines)} lines"
        )
    names = lines[n_header - 1].split("\t")
    cols = (
        _column(names, ("freq/hz",), source=source, what="'freq/Hz'"),
        _column(names, ("re(z)/ohm",), source=source, what="'Re(Z)/Ohm'"),
        _column(names, ("-im(z)/ohm",), source=source, what="'-Im(Z)/Ohm'"),
    )
    body = [(n_header + 1 + i, ln) for i, ln in enumerate(lines[n_header:]) if ln.strip()]
    if not body:
        raise SpectrumError(f"{source}: the header announces {n_header} lines but no data follow")
    f, zr, minus_zi = _table(
        [ln.split("\t") for _, ln in body],
        cols,
        decimal_comma=True,
        source=source,
        first_line=body[0][0],
    )
    return Spectrum(f, zr, -minus_zi, source=source)


# --- Gamry .DTA -----------------------------------------------------------------------------


def parse_gamry_dta(text: str, *, source: str = "DTA") -> Spectrum:
    """Read a Gamry Framework ``.DTA`` file: the table after the ``ZCURVE TABLE`` line.

    The line after ``ZCURVE TABLE`` names the columns (``Freq``, ``Zreal``, ``Zimag``
    are read; Gamry's ``Zimag`` is ``Im(Z)``), the next one gives units, then data rows
    follow until a blank or non-numeric line (``EXPERIMENTABORTED``, another table).

    Raises:
        SpectrumError: Naming ``source`` and the missing table or column.
    """
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if ln.split()[:2] == ["ZCURVE", "TABLE"]),
        None,
    )
    if start is None:
        raise SpectrumError(
            f"{source}: no 'ZCURVE TABLE' line; is it a Gamry EIS (potentiostatic or "
            "galvanostatic impedance) .DTA file?"
        )
    if start + 2 >= len(lines):
        raise SpectrumError(f"{source}: the ZCURVE table has no column names or units")
    names = lines[start + 1].split("\t")
    cols = (
        _column(names, ("freq",), source=source, what="'Freq'"),
        _column(names, ("zreal",), source=source, what="'Zreal'"),
        _column(names, ("zimag",), source=source, what="'Zimag'"),
    )
    rows: list[list[str]] = []
    for ln in lines[start + 3 :]:
        fields = ln.split("\t")
        if not ln.strip() or not all(c < len(fields) and _is_number(fields[c]) for c in cols):
            break
        rows.append(fields)
    if not rows:
        raise SpectrumError(f"{source}: the ZCURVE table has no data rows")
    f, zr, zi = _table(rows, cols, decimal_comma=True, source=source, first_line=start + 4)
    return Spectrum(f, zr, zi, source=source)


# --- ZPlot .z -------------------------------------------------------------------------------

_ZPLOT_POSITIONS = (0, 4, 5)  # Freq(Hz), Ampl, Bias, Time(Sec), Z'(a), Z''(b), GD, Err, Range


def parse_zplot_z(text: str, *, source: str = "z") -> Spectrum:
    """Read a Scribner ZPlot ``.z`` file: data after the ``End Comments`` line.

    Rows are comma- or tab-separated: ``Freq(Hz), Ampl, Bias, Time(Sec), Z'(a),
    Z''(b), ...``; ZPlot's ``Z''`` is ``Im(Z)``. A column-name line after ``End
    Comments`` is used to find the columns if present.

    Raises:
        SpectrumError: Naming ``source`` and what is missing.
    """
    lines = text.splitlines()
    end = next((i for i, ln in enumerate(lines) if ln.strip().lower() == "end comments"), None)
    if end is None:
        raise SpectrumError(f"{source}: no 'End Comments' line; is it a ZPlot .z file?")

    def split(line: str) -> list[str]:
        return re.split(r"\s*[,\t]\s*", line.strip())

    body = [(end + 2 + i, ln) for i, ln in enumerate(lines[end + 1 :]) if ln.strip()]
    cols = _ZPLOT_POSITIONS
    if body and not _is_number(split(body[0][1])[0]):
        names = split(body[0][1])
        cols = (
            _column(names, ("freq(hz)", "freq"), source=source, what="'Freq(Hz)'"),
            _column(names, ("z'(a)", "z'"), source=source, what="Z'(a)"),
            _column(names, ("z''(b)", "z''"), source=source, what="Z''(b)"),
        )
        body = body[1:]
    if not body:
        raise SpectrumError(f"{source}: no data rows after 'End Comments'")
    f, zr, zi = _table(
        [split(ln) for _, ln in body],
        cols,
        decimal_comma=False,
        source=source,
        first_line=body[0][0],
    )
    return Spectrum(f, zr, zi, source=source)


# --- JSON records (the cloud's EIS payload, ``batterytwin twin impedance --json``) ---------

_JSON_KEYS = (("frequency", "Z_re", "Z_im"), ("frequency_hz", "z_re_ohm", "z_im_ohm"))


def parse_json(text: str, *, source: str = "json") -> Spectrum:
    """Read a JSON list of points: wire records (``frequency``, ``Z_re``, ``Z_im``, as
    ``batterytwin twin impedance --emulate --json`` prints and the cloud stores) or
    ``frequency_hz``, ``z_re_ohm``, ``z_im_ohm`` (``twin impedance --json``). Points with
    ``status`` ``"fail"`` are skipped; ``Z_im`` is ``Im(Z)``.

    Raises:
        SpectrumError: Naming ``source`` and the missing key.
    """
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpectrumError(f"{source}: not JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise SpectrumError(f"{source}: expected a JSON list of objects, one per frequency")
    points = [d for d in data if d.get("status") != "fail"]
    if not points:
        raise SpectrumError(f"{source}: no points (or all have status 'fail')")
    keys = next((k for k in _JSON_KEYS if all(n in points[0] for n in k)), None)
    if keys is None:
        alternatives = " or ".join("/".join(k) for k in _JSON_KEYS)
        raise SpectrumError(
            f"{source}: points need the keys {alternatives}; the first has {sorted(points[0])}"
        )
    try:
        columns = np.array([[float(d[k]) for k in keys] for d in points]).T
    except (KeyError, TypeError, ValueError) as exc:
        raise SpectrumError(f"{source}: a point lacks or mistypes {exc}") from None
    skipped = len(data) - len(points)
    notes = (f"{skipped} points with status 'fail' skipped",) if skipped else ()
    return Spectrum(columns[0], columns[1], columns[2], source=source, notes=notes)


_PARSERS = {
    "csv": parse_csv,
    "biologic": parse_biologic_mpt,
    "gamry": parse_gamry_dta,
    "zplot": parse_zplot_z,
    "json": parse_json,
}


def read_spectrum(path: str | Path, *, fmt: str | None = None) -> Spectrum:
    """Read an impedance export from disk.

    Args:
        path: The file.
        fmt: ``"csv"``, ``"biologic"``, ``"gamry"``, ``"zplot"`` or ``"json"``; ``None``
            picks by suffix (:data:`FORMATS`).

    Raises:
        SpectrumError: On an unknown format or unreadable content (naming the file).
        OSError: If the file cannot be opened.
    """
    p = Path(path)
    name = fmt or FORMATS.get(p.suffix.lower())
    if name not in _PARSERS:
        known = ", ".join(f"{s} ({f})" for s, f in FORMATS.items())
        what = f"format {fmt!r}" if fmt else f"suffix {p.suffix or '(none)'!r}"
        raise SpectrumError(f"{p}: unknown {what}; known: {known}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # Gamry and EC-Lab write the Windows code page
    return _PARSERS[name](text, source=str(p))
