"""Export the ECM twin as an FMU written in C (FMI 2.0 or 3.0; co-simulation and model exchange).

The FMU carries :class:`~twin.models.ecm.EcmTwin`'s physics as C source: the twin's own
resampled uniform R/C/OCV tables go into a generated header, and the model code in
``c_template/`` repeats ``EcmTwin._advance`` operation by operation, so a co-simulation
step gives what ``EcmTwin.step`` gives with the same step size (to the last bits of
``exp``). The binary for this machine is compiled at export; ``sources/`` lets partners
rebuild it for theirs. No Python is needed where the FMU runs.

What the FMU leaves out: **ageing**. State of health, resistance factor and coulombic
efficiency are tunable parameters instead, so a master can age the cell between steps.
Sign convention: positive current discharges.

Model exchange integrates the same equations continuously (states SoC, the RC voltages
and the temperature; Bernardi heat from the instantaneous values). Which direction's
tables apply follows the co-simulation rule: charge tables while charging and while
resting after a charge, with the last direction remembered at each completed
integrator step and event.

Example:
    >>> from pathlib import Path
    >>> from twin.params import load_parameter_set
    >>> export_c_fmu(load_parameter_set("ecm_example"), Path("cell.fmu"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from xml.etree.ElementTree import Element, SubElement, indent, tostring

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import FmuError
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import EcmParameters

__all__ = ["export_c_fmu"]

_GENERATION_TOOL = "batterytwin (twin.fmu.export_c)"
_MODEL_SOURCES = ("ecm_model.c", "ecm_instance.c")
_MODEL_HEADERS = ("ecm_model.h", "ecm_instance.h")
_ADAPTERS = {2: "fmi2_functions.c", 3: "fmi3_functions.c"}
_CONFIG_HEADER = "ecm_config.h"
_TABLES_HEADER = "ecm_tables.h"
# -ffp-contract=off: no fused multiply-adds, so the C keeps numpy's rounding.
_COMPILE_FLAGS = ("-shared", "-fPIC", "-O2", "-ffp-contract=off")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Unit definitions in SI base units: name -> base-unit exponents, plus factor/offset.
_UNITS: dict[str, dict[str, float]] = {
    "s": {"s": 1},
    "A": {"A": 1},
    "V": {"kg": 1, "m": 2, "s": -3, "A": -1},
    "degC": {"K": 1, "offset": 273.15},
    "1": {},
    "Ah": {"s": 1, "A": 1, "factor": 3600.0},
    "1/s": {"s": -1},
    "V/s": {"kg": 1, "m": 2, "s": -4, "A": -1},
    "K/s": {"K": 1, "s": -1},
}


@dataclass(frozen=True)
class _Variable:
    """One scalar Real variable of the FMU (FMI 2.0 ``Real``, FMI 3.0 ``Float64``)."""

    name: str
    vr: int
    causality: str
    variability: str
    initial: str | None
    start: float | None
    unit: str
    description: str
    derivative_of: str | None = None


@dataclass(frozen=True)
class _StartValues:
    """Scalar start values of the FMU's parameters and inputs."""

    soc: float
    temperature_c: float
    soh: float
    resistance_factor: float
    coulombic_efficiency: float


def export_c_fmu(
    params: EcmParameters,
    out: Path,
    *,
    fmi_version: Literal[2, 3] = 2,
    n_rc: int | None = None,
    init: CellInit | None = None,
    options: EcmOptions | None = None,
    model_name: str = "BatterytwinEcmCell",
    compile: bool = True,
    cc: str | None = None,
) -> Path:
    """Write an FMU of one ECM cell, with C sources and (by default) a binary for this machine.

    Inputs ``current`` (A, positive = discharge) and ``ambient_temperature`` (degC);
    outputs ``voltage`` (V), ``soc`` (1) and ``temperature`` (degC); parameters
    ``soc_initial``, ``temperature_initial`` (fixed), ``soh``, ``resistance_factor`` and
    ``coulombic_efficiency`` (tunable); the constant ``capacity_nominal`` (Ah). FMI 2.0
    and 3.0 FMUs both offer co-simulation and model exchange from one binary.

    Args:
        params: The cell's ECM parameter set.
        out: Path of the ``.fmu`` file to write; parent folders are created.
        fmi_version: 2 (FMI 2.0) or 3 (FMI 3.0).
        n_rc: RC pairs to keep (at most the set's); ``None`` takes ``options.n_rc``,
            else all of them.
        init: Initial state; its (scalar) values become the parameters' start values.
            ``ageing_rate_factor`` is ignored (no ageing in the FMU).
        options: ECM options: ``thermal``, ``coulombic_efficiency`` (start value) and
            ``reversal_threshold_c_rate`` are used; ageing options are ignored.
        model_name: FMI model name and model identifier (a C identifier).
        compile: Build ``binaries/`` with the C compiler; ``False`` writes a
            source-only FMU.
        cc: C compiler command; default ``$CC``, else ``cc``, ``gcc`` or ``clang`` on PATH.

    Returns:
        ``out``.

    Raises:
        FmuError: Bad arguments, no C compiler, or the compiler failed (the message
            has its output).
        TwinInputError: ``params``, ``init`` or ``options`` rejected by the twin.
    """
    if fmi_version not in (2, 3):
        raise FmuError(f"fmi_version must be 2 or 3, got {fmi_version!r}")
    if not _IDENTIFIER.fullmatch(model_name):
        raise FmuError(
            f"model_name must be a C identifier (letters, digits, '_'; not starting with a "
            f"digit), got {model_name!r}"
        )
    compiler = _find_compiler(cc) if compile else None
    twin, start = _twin_for_export(params, n_rc=n_rc, init=init, options=options)
    variables = _variables(
        n_rc=twin.n_rc,
        thermal=twin.options.thermal,
        start=start,
        capacity_ah=params.nominal_capacity_ah,
    )
    tables = _tables_header(twin)
    config_body = _config_body(twin, variables=variables, start=start)
    token = _instantiation_token(config_body, tables, fmi_version, model_name)
    with tempfile.TemporaryDirectory(prefix="batterytwin-fmu-") as tmp:
        root = Path(tmp)
        sources = root / "sources"
        sources.mkdir()
        source_files = _write_sources(
            sources,
            fmi_version=fmi_version,
            config=_config_header(config_body, token=token, params=params),
            tables=tables,
        )
        if fmi_version == 3:
            (sources / "buildDescription.xml").write_text(
                _build_description(model_name, source_files)
            )
        description = _model_description(
            fmi_version=fmi_version,
            model_name=model_name,
            token=token,
            params=params,
            variables=variables,
            source_files=source_files,
        )
        (root / "modelDescription.xml").write_text(description)
        if compiler is not None:
            binary = _binary_path(root, fmi_version=fmi_version, model_name=model_name)
            _compile(compiler, sources=[sources / f for f in source_files], library=binary)
        out.parent.mkdir(parents=True, exist_ok=True)
        _zip_tree(root, out)
    return out


# ------------------------------------------------------------------ arguments


def _one_value(value: ArrayLike, name: str) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise FmuError(
            f"init.{name} must be one value for a single-cell FMU, got {arr.size} values"
        )
    return float(arr.reshape(-1)[0])


def _twin_for_export(
    params: EcmParameters,
    *,
    n_rc: int | None,
    init: CellInit | None,
    options: EcmOptions | None,
) -> tuple[EcmTwin, _StartValues]:
    """The one-cell twin whose tables the FMU carries; it also validates the arguments."""
    options = options or EcmOptions()
    if n_rc is not None and options.n_rc is not None and n_rc != options.n_rc:
        raise FmuError(
            f"n_rc={n_rc} contradicts options.n_rc={options.n_rc}; give only one of them"
        )
    init = init or CellInit()
    start = _StartValues(
        soc=_one_value(init.soc, "soc"),
        temperature_c=_one_value(init.temperature_c, "temperature_c"),
        soh=_one_value(init.soh, "soh"),
        resistance_factor=_one_value(init.resistance_factor, "resistance_factor"),
        coulombic_efficiency=float(options.coulombic_efficiency),
    )
    for field_name, value in vars(start).items():
        if not np.isfinite(value):
            raise FmuError(f"the start value {field_name} must be finite, got {value}")
    options = replace(options, n_rc=n_rc if n_rc is not None else options.n_rc, ageing="none")
    twin = EcmTwin(
        params,
        init=CellInit(
            soc=start.soc,
            temperature_c=start.temperature_c,
            soh=start.soh,
            resistance_factor=start.resistance_factor,
        ),
        options=options,
    )
    return twin, start


def _find_compiler(cc: str | None) -> list[str]:
    """The compiler command: ``cc``, else ``$CC``, else the first of cc/gcc/clang on PATH."""
    choice, origin = (cc, "cc=") if cc is not None else (os.environ.get("CC"), "$CC=")
    hint = (
        "Install gcc or clang, pass cc='/path/to/cc' or set the CC environment variable "
        "(e.g. CC=gcc), or pass compile=False for a source-only FMU."
    )
    if choice:
        argv = shlex.split(choice)
        found = shutil.which(argv[0]) if argv else None
        if found is None:
            raise FmuError(
                f"export_c_fmu needs a C compiler to build the FMU binary, but "
                f"{origin}{choice!r} is not an executable. {hint}"
            )
        return [found, *argv[1:]]
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found is not None:
            return [found]
    raise FmuError(
        f"export_c_fmu needs a C compiler to build the FMU binary, and none of cc, gcc, "
        f"clang is on PATH. {hint}"
    )


# ------------------------------------------------------------------ variables


# (name, value reference, causality, variability, initial, unit, description); the
# start values come from the export's CellInit/EcmOptions (see _variables).
_CELL_VARIABLES: tuple[tuple[str, int, str, str, str | None, str, str], ...] = (
    ("time", 0, "independent", "continuous", None, "s", "Simulation time"),
    ("current", 1, "input", "continuous", None, "A", "Current, positive = discharge"),
    ("ambient_temperature", 2, "input", "continuous", None, "degC", "Ambient temperature"),
    ("voltage", 3, "output", "continuous", "calculated", "V", "Terminal voltage"),
    ("soc", 4, "output", "continuous", "calculated", "1", "State of charge (present capacity)"),
    ("temperature", 5, "output", "continuous", "calculated", "degC", "Cell temperature"),
    ("soc_initial", 6, "parameter", "fixed", "exact", "1", "Initial state of charge, 0..1"),
    ("temperature_initial", 7, "parameter", "fixed", "exact", "degC", "Initial temperature"),
    ("soh", 8, "parameter", "tunable", "exact", "1", "Usable / nominal capacity (no ageing)"),
    ("resistance_factor", 9, "parameter", "tunable", "exact", "1", "Multiplies R0 and R1..Rn"),
    ("coulombic_efficiency", 10, "parameter", "tunable", "exact", "1", "Charge stored, (0, 1]"),
    ("capacity_nominal", 11, "local", "constant", "exact", "Ah", "Nominal capacity of the set"),
)
_VR_RC_VOLTAGE0, _VR_DER_SOC, _VR_DER_TEMPERATURE, _VR_DER_RC_VOLTAGE0 = 20, 30, 31, 40


def _variables(
    *, n_rc: int, thermal: bool, start: _StartValues, capacity_ah: float
) -> list[_Variable]:
    """Every variable, in the order of modelDescription.xml (FMI 2.0 indices follow it)."""
    starts = {
        "current": 0.0,
        "ambient_temperature": start.temperature_c,
        "soc_initial": start.soc,
        "temperature_initial": start.temperature_c,
        "soh": start.soh,
        "resistance_factor": start.resistance_factor,
        "coulombic_efficiency": start.coulombic_efficiency,
        "capacity_nominal": capacity_ah,
    }
    out = [
        _Variable(name, vr, causality, variability, initial, starts.get(name), unit, text)
        for name, vr, causality, variability, initial, unit, text in _CELL_VARIABLES
    ]
    if not thermal:
        out[5] = replace(out[5], description="Cell temperature (= ambient: no thermal model)")
    out.append(_derivative("soc", _VR_DER_SOC, "1/s"))
    for k in range(n_rc):
        name = f"rc_voltage_{k + 1}"
        text = f"Voltage across RC pair {k + 1}"
        out.append(
            _Variable(name, _VR_RC_VOLTAGE0 + k, "local", "continuous", "exact", 0.0, "V", text)
        )
        out.append(_derivative(name, _VR_DER_RC_VOLTAGE0 + k, "V/s"))
    if thermal:
        out.append(_derivative("temperature", _VR_DER_TEMPERATURE, "K/s"))
    return out


def _derivative(state: str, vr: int, unit: str) -> _Variable:
    return _Variable(
        f"der({state})",
        vr,
        "local",
        "continuous",
        "calculated",
        None,
        unit,
        f"Derivative of {state}",
        derivative_of=state,
    )


def _states(variables: Sequence[_Variable]) -> list[_Variable]:
    """Derivative variables in the order of the C state vector: SoC, v_1..v_n, temperature."""
    ders = [v for v in variables if v.derivative_of is not None]
    order = {"soc": 0, "temperature": 2}
    return sorted(ders, key=lambda v: (order.get(v.derivative_of or "", 1), v.vr))


# ------------------------------------------------------------------ C headers


def _c_double(x: float) -> str:
    """A C literal that reads back as exactly ``x`` (shortest round-trip repr)."""
    text = repr(float(x))
    if not np.isfinite(x):
        raise FmuError(f"cannot write the non-finite value {text} into the FMU's C tables")
    return f"({text})" if text.startswith("-") else text


def _c_array(name: str, table: np.ndarray, *, per_line: int = 6) -> str:
    rows = []
    for row in np.atleast_2d(table):
        values = [_c_double(x) for x in row]
        lines = [", ".join(values[i : i + per_line]) for i in range(0, len(values), per_line)]
        rows.append("    {\n        " + ",\n        ".join(lines) + "\n    }")
    shape = "][".join(str(n) for n in np.atleast_2d(table).shape)
    return f"static const double {name}[{shape}] = {{\n" + ",\n".join(rows) + "\n};\n"


def _tables_header(twin: EcmTwin) -> str:
    """EcmTwin's own resampled tables, so the C look-ups repeat its arithmetic exactly."""
    return (
        "/* Generated by twin.fmu.export_c from EcmTwin._build_tables: do not edit. */\n"
        "#ifndef BT_ECM_TABLES_H\n#define BT_ECM_TABLES_H\n\n"
        "/* Bilinear coefficients c0, c1 (SoC), c2 (temperature), c3 (both), each a block of\n"
        " * rows R0, R1..Rn, tau1..taun; columns: (direction, temperature, SoC) flattened. */\n"
        + _c_array("BT_TABLE", twin._table)
        + "\n/* OCV, its step to the next SoC grid point, dOCV/dT and its step. */\n"
        + _c_array("BT_OCV_TABLE", twin._ocv_table)
        + "\n#endif /* BT_ECM_TABLES_H */\n"
    )


def _config_body(twin: EcmTwin, *, variables: Sequence[_Variable], start: _StartValues) -> str:
    p = twin.params
    defines: list[tuple[str, str]] = [
        ("BT_N_RC", str(twin.n_rc)),
        ("BT_THERMAL", "1" if twin.options.thermal else "0"),
        ("BT_NSOC", str(twin._ns)),
        ("BT_NT", str(twin._nt)),
        ("BT_SOC0", _c_double(twin._s0)),
        ("BT_INV_DSOC", _c_double(twin._inv_ds)),
        ("BT_SOC_X_MAX", _c_double(twin._ns - 1.000001)),
        ("BT_T0", _c_double(twin._t0)),
        ("BT_INV_DT", _c_double(twin._inv_dt)),
        ("BT_T_X_MAX", _c_double(twin._nt - 1.000001)),
        ("BT_CAPACITY_NOMINAL_AH", _c_double(p.nominal_capacity_ah)),
        ("BT_REFERENCE_TEMPERATURE_C", _c_double(p.reference_temperature_c)),
        ("BT_HEAT_CAPACITY_J_PER_K", _c_double(p.thermal.heat_capacity_j_per_k)),
        ("BT_HEAT_TRANSFER_W_PER_K", _c_double(p.thermal.heat_transfer_w_per_k)),
        ("BT_REVERSAL_THRESHOLD_C_RATE", _c_double(twin.options.reversal_threshold_c_rate)),
        ("BT_DEFAULT_SOC_INITIAL", _c_double(start.soc)),
        ("BT_DEFAULT_TEMPERATURE_INITIAL_C", _c_double(start.temperature_c)),
        ("BT_DEFAULT_SOH", _c_double(start.soh)),
        ("BT_DEFAULT_RESISTANCE_FACTOR", _c_double(start.resistance_factor)),
        ("BT_DEFAULT_COULOMBIC_EFFICIENCY", _c_double(start.coulombic_efficiency)),
        ("BT_DEFAULT_CURRENT_A", _c_double(0.0)),
        ("BT_DEFAULT_AMBIENT_C", _c_double(start.temperature_c)),
    ]
    vrs = {f"BT_VR_{name.upper()}": vr for name, vr, *_ in _CELL_VARIABLES}
    vrs.update(
        BT_VR_DER_SOC=_VR_DER_SOC,
        BT_VR_DER_TEMPERATURE=_VR_DER_TEMPERATURE,
        BT_VR_RC_VOLTAGE0=_VR_RC_VOLTAGE0,
        BT_VR_DER_RC_VOLTAGE0=_VR_DER_RC_VOLTAGE0,
    )
    lines = [f"#define {name} {value}" for name, value in defines]
    lines += [f"#define {name} {vr}" for name, vr in sorted(vrs.items(), key=lambda kv: kv[1])]
    names = " \\\n".join(
        f'    X({v.vr}, "{v.name}")' for v in sorted(variables, key=lambda v: v.vr)
    )
    lines.append(f"#define BT_VARIABLES(X) \\\n{names}")
    return "\n".join(lines) + "\n"


def _config_header(body: str, *, token: str, params: EcmParameters) -> str:
    name = params.name.replace("*/", "* /")
    return (
        f"/* Generated by twin.fmu.export_c from parameter set {name!r}: do not edit. */\n"
        "#ifndef BT_ECM_CONFIG_H\n#define BT_ECM_CONFIG_H\n\n"
        f'#define BT_INSTANTIATION_TOKEN "{token}"\n' + body + "\n#endif /* BT_ECM_CONFIG_H */\n"
    )


def _instantiation_token(config: str, tables: str, fmi_version: int, model_name: str) -> str:
    """A GUID derived from the content: the same export gives the same token."""
    digest = hashlib.sha256(f"{fmi_version}\n{model_name}\n{config}\n{tables}".encode())
    return "{" + str(uuid.UUID(bytes=digest.digest()[:16], version=5)) + "}"


def _write_sources(sources: Path, *, fmi_version: int, config: str, tables: str) -> list[str]:
    """Model C files, generated headers and FMI headers; returns the files to compile."""
    template = resources.files("twin.fmu").joinpath("c_template")
    compiled = [*_MODEL_SOURCES, _ADAPTERS[fmi_version]]
    for name in (*compiled, *_MODEL_HEADERS):
        (sources / name).write_text(template.joinpath(name).read_text())
    (sources / _CONFIG_HEADER).write_text(config)
    (sources / _TABLES_HEADER).write_text(tables)
    for header in _fmi_headers(fmi_version):
        shutil.copyfile(header, sources / header.name)
    return compiled


def _fmpy() -> Any:
    """FMPy, imported only when an FMU is written (it is an optional dependency)."""
    try:
        import fmpy
    except ImportError as exc:
        raise FmuError(
            "export_c_fmu needs fmpy for the FMI headers and platform names: "
            "pip install 'batterytwin[fmu]'"
        ) from exc
    return fmpy


def _fmi_headers(fmi_version: int) -> list[Path]:
    """The standard FMI headers that FMPy ships (so partners can rebuild the binary)."""
    fmpy = _fmpy()
    found = sorted((Path(fmpy.__file__).parent / "c-code").glob(f"fmi{fmi_version}*.h"))
    if not found:
        raise FmuError(
            f"the FMI {fmi_version} headers (fmi{fmi_version}*.h) are missing from FMPy's "
            f"c-code folder; reinstall fmpy (pip install 'fmpy>=0.3.20')"
        )
    return found


# ------------------------------------------------------------------ XML


def _xml(root: Element) -> str:
    indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="unicode") + "\n"


def _fmt(x: float) -> str:
    return repr(float(x))


def _unit_definitions(parent: Element, variables: Iterable[_Variable]) -> None:
    used = {v.unit for v in variables}
    units = SubElement(parent, "UnitDefinitions")
    for name, base in _UNITS.items():
        if name in used:
            attrs = {
                k: (_fmt(x) if k in ("factor", "offset") else str(int(x))) for k, x in base.items()
            }
            SubElement(SubElement(units, "Unit", name=name), "BaseUnit", attrs)


def _variable_attributes(v: _Variable) -> dict[str, str]:
    attrs = {
        "name": v.name,
        "valueReference": str(v.vr),
        "causality": v.causality,
        "variability": v.variability,
    }
    if v.initial is not None:
        attrs["initial"] = v.initial
    attrs["description"] = v.description
    return attrs


def _model_description(
    *,
    fmi_version: int,
    model_name: str,
    token: str,
    params: EcmParameters,
    variables: list[_Variable],
    source_files: Sequence[str],
) -> str:
    thermal = any(v.derivative_of == "temperature" for v in variables)
    description = (
        f"Equivalent-circuit cell twin (batterytwin EcmTwin, parameter set {params.name}, "
        f"{sum(v.name.startswith('rc_voltage') for v in variables)} RC pair(s), "
        f"{'lumped thermal model' if thermal else 'no thermal model'}). "
        "No ageing: soh and resistance_factor are parameters. "
        "Positive current discharges."
    )
    root = Element(
        "fmiModelDescription",
        {
            "fmiVersion": "2.0" if fmi_version == 2 else "3.0",
            "modelName": model_name,
            "description": description,
            "generationTool": _GENERATION_TOOL,
            ("guid" if fmi_version == 2 else "instantiationToken"): token,
            "variableNamingConvention": "flat",
        },
    )
    if fmi_version == 2:
        root.set("numberOfEventIndicators", "0")
        _fmi2_interfaces(root, model_name, source_files)
    else:
        _fmi3_interfaces(root, model_name)
    _unit_definitions(root, variables)
    categories = SubElement(root, "LogCategories")
    SubElement(categories, "Category", name="logStatusError", description="Errors")
    SubElement(categories, "Category", name="logStatusWarning", description="Warnings")
    SubElement(root, "DefaultExperiment", startTime="0.0", stopTime="3600.0", stepSize="1.0")
    if fmi_version == 2:
        _fmi2_variables(root, variables)
    else:
        _fmi3_variables(root, variables)
    return _xml(root)


def _fmi2_interfaces(root: Element, model_name: str, source_files: Sequence[str]) -> None:
    common = {
        "modelIdentifier": model_name,
        "canGetAndSetFMUstate": "true",
        "canSerializeFMUstate": "true",
    }
    me = SubElement(root, "ModelExchange", common)
    cs = SubElement(
        root, "CoSimulation", {**common, "canHandleVariableCommunicationStepSize": "true"}
    )
    for interface in (me, cs):
        files = SubElement(interface, "SourceFiles")
        for name in source_files:
            SubElement(files, "File", name=name)


def _fmi3_interfaces(root: Element, model_name: str) -> None:
    common = {
        "modelIdentifier": model_name,
        "canGetAndSetFMUState": "true",
        "canSerializeFMUState": "true",
    }
    SubElement(root, "ModelExchange", {**common, "needsCompletedIntegratorStep": "true"})
    SubElement(root, "CoSimulation", {**common, "canHandleVariableCommunicationStepSize": "true"})


def _output_dependencies(variables: Sequence[_Variable]) -> dict[str, list[str]]:
    """What each output depends on (inputs and states), by variable name.

    State outputs depend on nothing else (no direct feedthrough); the voltage depends on
    the current and every state; without the thermal model the temperature is the
    ambient input.
    """
    states = [v.derivative_of for v in _states(variables) if v.derivative_of]
    thermal = "temperature" in states
    return {
        "voltage": ["current", *([] if thermal else ["ambient_temperature"]), *states],
        "soc": [],
        "temperature": [] if thermal else ["ambient_temperature"],
    }


def _initial_unknowns(variables: Sequence[_Variable]) -> list[_Variable]:
    return [
        v
        for v in variables
        if v.initial == "calculated" and v.causality in ("output", "local", "calculatedParameter")
    ]


def _fmi2_variables(root: Element, variables: list[_Variable]) -> None:
    index = {v.name: i + 1 for i, v in enumerate(variables)}
    mv = SubElement(root, "ModelVariables")
    for v in variables:
        sv = SubElement(mv, "ScalarVariable", _variable_attributes(v))
        real = SubElement(sv, "Real", unit=v.unit)
        if v.start is not None:
            real.set("start", _fmt(v.start))
        if v.derivative_of is not None:
            real.set("derivative", str(index[v.derivative_of]))
    structure = SubElement(root, "ModelStructure")
    outputs = SubElement(structure, "Outputs")
    for name, deps in _output_dependencies(variables).items():
        SubElement(
            outputs,
            "Unknown",
            index=str(index[name]),
            dependencies=" ".join(str(i) for i in sorted(index[d] for d in deps)),
        )
    ders = SubElement(structure, "Derivatives")
    for v in _states(variables):
        SubElement(ders, "Unknown", index=str(index[v.name]))
    initial = SubElement(structure, "InitialUnknowns")
    for v in sorted(_initial_unknowns(variables), key=lambda v: index[v.name]):
        SubElement(initial, "Unknown", index=str(index[v.name]))


def _fmi3_variables(root: Element, variables: list[_Variable]) -> None:
    vr = {v.name: v.vr for v in variables}
    mv = SubElement(root, "ModelVariables")
    for v in variables:
        attrs = _variable_attributes(v)
        attrs["unit"] = v.unit
        if v.start is not None:
            attrs["start"] = _fmt(v.start)
        if v.derivative_of is not None:
            attrs["derivative"] = str(vr[v.derivative_of])
        SubElement(mv, "Float64", attrs)
    structure = SubElement(root, "ModelStructure")
    for name, deps in _output_dependencies(variables).items():
        SubElement(
            structure,
            "Output",
            valueReference=str(vr[name]),
            dependencies=" ".join(str(i) for i in sorted(vr[d] for d in deps)),
        )
    for v in _states(variables):
        SubElement(structure, "ContinuousStateDerivative", valueReference=str(v.vr))
    for v in sorted(_initial_unknowns(variables), key=lambda v: v.vr):
        SubElement(structure, "InitialUnknown", valueReference=str(v.vr))


def _build_description(model_name: str, source_files: Sequence[str]) -> str:
    root = Element("fmiBuildDescription", fmiVersion="3.0")
    config = SubElement(root, "BuildConfiguration", modelIdentifier=model_name)
    files = SubElement(config, "SourceFileSet", language="C99")
    for name in source_files:
        SubElement(files, "SourceFile", name=name)
    SubElement(config, "Library", name="m", external="true", description="C maths library")
    return _xml(root)


# ------------------------------------------------------------------ binary and zip


def _binary_path(root: Path, *, fmi_version: int, model_name: str) -> Path:
    fmpy = _fmpy()
    platform = str(fmpy.platform if fmi_version == 2 else fmpy.platform_tuple)
    folder = root / "binaries" / platform
    folder.mkdir(parents=True)
    return folder / f"{model_name}{fmpy.sharedLibraryExtension}"


def _compile(compiler: list[str], *, sources: Sequence[Path], library: Path) -> None:
    cmd = [
        *compiler,
        *_COMPILE_FLAGS,
        "-I",
        str(sources[0].parent),
        "-o",
        str(library),
        *(str(s) for s in sources),
        "-lm",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FmuError(
            f"could not run the C compiler {compiler[0]!r} ({exc}); set CC or pass cc= to "
            "another compiler, or compile=False for a source-only FMU"
        ) from exc
    if done.returncode != 0:
        raise FmuError(
            f"compiling the FMU binary failed (exit code {done.returncode}): "
            f"{shlex.join(cmd)}\n{done.stderr.strip()}"
        )


def _zip_tree(root: Path, out: Path) -> None:
    """Zip ``root``'s files with '/' paths, in a stable order."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(root).as_posix())
