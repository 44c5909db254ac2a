"""Tests for cloud.estimators.eis_files: instrument exports written here from their formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud.estimators.ecm_fit import ecm_impedance
from cloud.estimators.eis_files import (
    Spectrum,
    SpectrumError,
    parse_csv,
    parse_zplot_z,
    read_spectrum,
)

# A small cell: 5 mOhm series, two arcs (1 ms and 0.1 s), 10 nH; 100 kHz .. 0.1 Hz.
FREQ_HZ = np.logspace(5, -1, 13)
Z_OHM = ecm_impedance(FREQ_HZ, r0_ohm=5e-3, pairs=[(4e-3, 0.25), (8e-3, 12.5)], inductance_h=1e-8)


def _check(spectrum: Spectrum, *, rtol: float = 1e-6) -> None:
    np.testing.assert_allclose(spectrum.frequency_hz, FREQ_HZ, rtol=rtol)
    np.testing.assert_allclose(spectrum.z_re_ohm, Z_OHM.real, rtol=rtol)
    np.testing.assert_allclose(spectrum.z_im_ohm, Z_OHM.imag, rtol=rtol, atol=1e-12)


def _rows(fmt: str, *, scale: float = 1.0, im_sign: float = 1.0) -> list[str]:
    return [
        fmt.format(f, z.real * scale, im_sign * z.imag * scale)
        for f, z in zip(FREQ_HZ, Z_OHM, strict=True)
    ]


def test_csv_semicolon_decimal_comma_milliohm_minus_im(tmp_path: Path) -> None:
    lines = ["Frequency (Hz);Z' (mOhm);-Z'' (mOhm)"]
    lines += [r.replace(".", ",") for r in _rows("{:.9e};{:.9e};{:.9e}", scale=1e3, im_sign=-1)]
    path = tmp_path / "cell.csv"
    path.write_text("\n".join(lines) + "\n")
    spectrum = read_spectrum(path)
    _check(spectrum)
    assert spectrum.source == str(path)
    assert any("mOhm" in n for n in spectrum.notes)


@pytest.mark.parametrize(
    ("header", "im_sign"),
    [
        ("f/Hz,Re(Z)/Ohm,Im(Z)/Ohm", 1.0),
        ("frequency_hz,z_re_ohm,z_im_ohm", 1.0),  # batterytwin twin impedance --json keys
        ("Freq [Hz],Zreal [ohm],Zimag [ohm]", 1.0),
        ("freq,Zre,-Im(Z)", -1.0),
    ],
)
def test_csv_header_spellings(header: str, im_sign: float) -> None:
    text = "\n".join([header, *_rows("{:.12g},{:.12g},{:.12g}", im_sign=im_sign)])
    spectrum = parse_csv(text, source="s.csv")
    _check(spectrum)
    assert spectrum.notes == ()


def test_csv_ambiguous_imaginary_column_is_read_from_the_data() -> None:
    """``Z''`` is written as Im or -Im by different instruments: a mostly positive column
    of a (capacitive) cell is -Im, and the spectrum says so."""
    as_minus_im = "\n".join(["freq\tZ'\tZ''", *_rows("{:.12g}\t{:.12g}\t{:.12g}", im_sign=-1)])
    spectrum = parse_csv(as_minus_im, source="tab.txt")
    _check(spectrum)
    assert any("-Im(Z)" in n for n in spectrum.notes)
    as_im = "\n".join(["freq\tZ'\tZ''", *_rows("{:.12g}\t{:.12g}\t{:.12g}")])
    assert parse_csv(as_im).notes == ()


def test_csv_without_header_and_khz_column() -> None:
    _check(parse_csv("\n".join(_rows("{:.12g},{:.12g},{:.12g}"))))
    khz = "\n".join(["freq (kHz),Z',Im(Z)", *_rows("{:.12g},{:.12g},{:.12g}")])
    np.testing.assert_allclose(parse_csv(khz).frequency_hz, FREQ_HZ * 1e3)


def test_biologic_mpt(tmp_path: Path) -> None:
    names = (
        "mode\tox/red\terror\tcontrol changes\tNs changes\tcounter inc.\tfreq/Hz\t"
        "Re(Z)/Ohm\t-Im(Z)/Ohm\t|Z|/Ohm\tPhase(Z)/deg\ttime/s\t<Ewe>/V\t<I>/mA\tCs/µF\t"
        "cycle number"
    )
    header = [
        "EC-Lab ASCII FILE",
        "Nb header lines : 8",
        "",
        "Potentio Electrochemical Impedance Spectroscopy",
        "",
        "Run on channel : 3 (SN 1234)",
        "Ewe ctrl range : min = -10,00 V, max = 10,00 V",
        names,
    ]
    rows = [
        f"1\t1\t0\t0\t0\t0\t{f:.9e}\t{z.real:.9e}\t{-z.imag:.9e}\t{abs(z):.6e}\t"
        f"{np.degrees(np.angle(z)):.4f}\t{i * 2.0:.3f}\t3,701\t0,0\t1,0\t1".replace(".", ",")
        for i, (f, z) in enumerate(zip(FREQ_HZ, Z_OHM, strict=True))
    ]
    path = tmp_path / "cell_C03.mpt"
    path.write_bytes("\n".join(header + rows).encode("latin-1"))
    _check(read_spectrum(path))


def test_gamry_dta(tmp_path: Path) -> None:
    header = [
        "EXPLAIN",
        "TAG\tEISPOT",
        "TITLE\tLABEL\tPotentiostatic EIS\tTest &Identifier",
        "DATE\tLABEL\t3/14/2024\tDate",
        "FREQINIT\tQUANT\t1.00000E+005\tInitial Freq. (Hz)",
        "NOTES\tNOTES\t1\t&Notes...",
        "\tsecond-life cell 7",
        "ZCURVE\tTABLE",
        "\tPt\tTime\tFreq\tZreal\tZimag\tZsig\tZmod\tZphz\tIdc\tVdc\tIERange",
        "\t#\ts\tHz\tohm\tohm\tV\tohm\t°\tA\tV\t#",
    ]
    rows = [
        f"\t{i}\t{i + 1}\t{f:.9E}\t{z.real:.9E}\t{z.imag:.9E}\t1\t{abs(z):.6E}\t"
        f"{np.degrees(np.angle(z)):.4f}\t1E-6\t3.7\t9"
        for i, (f, z) in enumerate(zip(FREQ_HZ, Z_OHM, strict=True))
    ]
    path = tmp_path / "EIS_cell7.DTA"
    path.write_bytes("\n".join([*header, *rows, "EXPERIMENTABORTED\tTOGGLE\tT"]).encode("latin-1"))
    _check(read_spectrum(path))


@pytest.mark.parametrize("with_names", [False, True])
def test_zplot_z(tmp_path: Path, with_names: bool) -> None:
    lines = [
        "ZPlot2 ASCII",
        "Filename: cell.z",
        "Begin Comments",
        "second-life cell, 50 % SoC",
        "End Comments",
    ]
    if with_names:
        lines.append("Freq(Hz), Ampl, Bias, Time(Sec), Z'(a), Z''(b), GD, Err, Range")
    lines += [
        f"{f:.9E}, 1.0E-02, 0, {i * 1.5:.2f}, {z.real:.9E}, {z.imag:.9E}, 0, 0, 3"
        for i, (f, z) in enumerate(zip(FREQ_HZ, Z_OHM, strict=True))
    ]
    path = tmp_path / "cell.z"
    path.write_text("\n".join(lines))
    _check(read_spectrum(path))


def test_json_wire_records_skip_failed_points(tmp_path: Path) -> None:
    records = [
        {"frequency": f, "Z_re": z.real, "Z_im": z.imag, "status": "success"}
        for f, z in zip(FREQ_HZ, Z_OHM, strict=True)
    ]
    records.append({"frequency": 0.05, "Z_re": 0.0, "Z_im": 0.0, "status": "fail"})
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(records))
    spectrum = read_spectrum(path)
    _check(spectrum)
    assert spectrum.notes == ("1 points with status 'fail' skipped",)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "freq,Zre,phase\n1,2,3\n2,3,4\n3,4,5\n", "no imaginary-part column"),
        ("a.csv", "hz,Zre,Zim\n1,2,3\n", "no frequency column"),
        ("a.csv", "freq,Zre,Zim\n1,2,-3\n2,x,-1\n3,1,-1\n", "cannot read 'x' as a number (line 3"),
        ("a.csv", "freq,Zre,Zim\n1,2,-3\n-2,1,-1\n3,1,-1\n", "frequency_hz must be finite and > 0"),
        ("a.mpt", "EC-Lab ASCII FILE\nfreq/Hz\tRe(Z)/Ohm\n", "no 'Nb header lines : N' line"),
        ("a.mpt", "EC-Lab\nNb header lines : 4\n\nfreq/Hz\tRe(Z)/Ohm\n", "no '-Im(Z)/Ohm' column"),
        ("a.DTA", "EXPLAIN\nTAG\tEISPOT\n", "no 'ZCURVE TABLE' line"),
        ("a.DTA", "ZCURVE\tTABLE\n\tPt\tFreq\tZreal\n\t#\tHz\tohm\n", "no 'Zimag' column"),
        ("a.z", "ZPlot2 ASCII\n1, 2, 3\n", "no 'End Comments' line"),
        ("a.json", '[{"f": 1}]', "points need the keys frequency/Z_re/Z_im"),
        ("a.xlsx", "", "unknown suffix '.xlsx'"),
    ],
)
def test_errors_name_the_file_and_what_is_missing(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpectrumError) as err:
        read_spectrum(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_zplot_short_rows_are_reported() -> None:
    with pytest.raises(SpectrumError, match=r"line 3 has 3 fields, expected at least 5"):
        parse_zplot_z("End Comments\n1, 2, 3, 4, 5, 6\n1, 2, 3\n1, 2, 3, 4, 5, 6\n")
