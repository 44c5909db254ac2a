"""The one module that imports FMPy: reading, extracting, validating and instantiating FMUs.

Everything else in ``twin.fmu`` talks to FMUs through these functions, so FMPy stays an
optional dependency (``pip install batterytwin[fmu]``) imported only when an FMU is used,
and every FMPy failure is turned into a :class:`~twin.errors.FmuError` that names the file
and says what to do.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree

from twin.errors import FmuError

__all__ = [
    "FmuLog",
    "cvode_solver",
    "extract",
    "header_dir",
    "instantiate",
    "load_fmpy",
    "platform_tuple",
    "read_model_description",
    "simulate",
    "supported_platforms",
    "validate",
]


def load_fmpy() -> Any:
    """Import FMPy, or explain how to get it."""
    try:
        import fmpy
    except ImportError as exc:  # pragma: no cover - fmpy is a dev dependency
        raise FmuError(
            "FMU support needs FMPy: pip install 'batterytwin[fmu]' (or pip install fmpy)"
        ) from exc
    return fmpy


def platform_tuple(fmi_version: str) -> str:
    """This machine's binary folder name in an FMU of ``fmi_version`` ("2.0" or "3.0")."""
    fmpy = load_fmpy()
    return str(fmpy.platform_tuple if fmi_version.startswith("3") else fmpy.platform)


def _fmi_version(source: Path | IO[bytes], name: str) -> str:
    """The ``fmiVersion`` of the archive's modelDescription.xml, checked before FMPy reads it
    (FMPy's own errors for an FMI 1.0 file or a broken XML are about schema details)."""
    try:
        with zipfile.ZipFile(source) as zf:
            if "modelDescription.xml" not in zf.namelist():
                raise FmuError(
                    f"{name} is not an FMU: the archive has no modelDescription.xml at its "
                    "top level"
                )
            xml = zf.read("modelDescription.xml")
    except (zipfile.BadZipFile, OSError) as exc:
        raise FmuError(f"{name} is not an FMU: not a valid zip archive ({exc})") from exc
    finally:
        if not isinstance(source, Path):
            source.seek(0)
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise FmuError(f"{name}: modelDescription.xml is not well-formed XML: {exc}") from exc
    version = root.get("fmiVersion")
    if root.tag != "fmiModelDescription" or version is None:
        raise FmuError(
            f"{name}: modelDescription.xml is not an FMI model description "
            "(no fmiModelDescription element with an fmiVersion)"
        )
    return version


def read_model_description(source: Path | IO[bytes], *, name: str | None = None) -> Any:
    """FMPy's ``ModelDescription`` of an FMU file (or open binary stream).

    Raises:
        FmuError: Not a zip, no ``modelDescription.xml``, an XML FMPy cannot parse, or an FMI
            version other than 2.0 and 3.0.
    """
    label = name or (str(source) if isinstance(source, Path) else "the upload")
    if isinstance(source, Path) and not source.is_file():
        raise FmuError(f"{label}: no such file")
    version = _fmi_version(source, label)
    if not (version.startswith("2.") or version.startswith("3.")):
        raise FmuError(
            f"{label}: FMI version {version} is not supported; batterytwin reads FMI 2.0 and 3.0"
        )
    fmpy = load_fmpy()
    try:
        return fmpy.read_model_description(source, validate=True)
    except Exception as exc:
        raise FmuError(f"{label}: modelDescription.xml is invalid: {exc}") from exc
    finally:
        if not isinstance(source, Path):
            source.seek(0)


def supported_platforms(source: Path | IO[bytes]) -> tuple[str, ...]:
    """Binary folders of the FMU as it names them (``linux64``, ``win64`` in FMI 2.0;
    ``x86_64-linux``, ``aarch64-darwin`` in FMI 3.0), plus ``"c-code"`` when it ships C
    sources. Only folders holding a shared library count."""
    try:
        with zipfile.ZipFile(source) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise FmuError(f"{source}: cannot list its platforms: {exc}") from exc
    finally:
        if not isinstance(source, Path):
            source.seek(0)
    found: set[str] = set()
    sources = False
    for name in names:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "binaries" and parts[2].endswith(_LIBRARIES):
            found.add(parts[1])
        sources = sources or (parts[0] == "sources" and name.endswith(".c"))
    return (*sorted(found), *(("c-code",) if sources else ()))


_LIBRARIES = (".so", ".dll", ".dylib")


def extract(path: Path, *, into: Path | None = None) -> Path:
    """Unzip the FMU once; returns the folder (a temporary one unless ``into`` is given)."""
    fmpy = load_fmpy()
    try:
        return Path(fmpy.extract(str(path), unzipdir=None if into is None else str(into)))
    except Exception as exc:
        raise FmuError(f"{path}: cannot extract: {exc}") from exc


class FmuLog:
    """Messages an FMU logged through its logger callback, newest last (kept short)."""

    def __init__(self, keep: int = 20) -> None:
        self.messages: list[str] = []
        self._keep = keep

    def __call__(self, *args: Any) -> None:
        # FMI 2.0: (env, instance, status, category, message); FMI 3.0: (env, status,
        # category, message). The message is always last, the status third from last.
        message = args[-1]
        text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
        self.messages.append(text)
        del self.messages[: -self._keep]

    def last(self) -> str:
        """The latest message, or a note that the FMU said nothing."""
        return self.messages[-1] if self.messages else "the FMU logged no reason"


def instantiate(*, unzipdir: Path, model_description: Any, interface: str, log: FmuLog) -> Any:
    """An FMPy FMU object (``FMU2Slave``, ``FMU3Slave``, ``FMU2Model`` or ``FMU3Model``),
    instantiated and ready for ``setupExperiment``/``enterInitializationMode``.

    Raises:
        FmuError: The binary cannot be loaded (e.g. built for another platform).
    """
    fmpy = load_fmpy()
    md = model_description
    try:
        return fmpy.instantiate_fmu(
            str(unzipdir), md, fmi_type=interface, logger=log, debug_logging=False
        )
    except Exception as exc:
        raise FmuError(
            f"{md.modelName}: cannot load or instantiate its {interface} binary: {exc}"
        ) from exc


def validate(path: Path) -> list[str]:
    """FMPy's validation problems of an FMU (empty when it is valid)."""
    load_fmpy()
    from fmpy.validation import validate_fmu

    return [str(p) for p in validate_fmu(str(path))]


def header_dir() -> Path:
    """FMPy's copy of the FMI 2.0 and 3.0 C headers (``fmi2Functions.h`` ...)."""
    fmpy = load_fmpy()
    return Path(str(fmpy.__file__)).parent / "c-code"


def simulate(path: Path, **kwargs: Any) -> Any:
    """``fmpy.simulate_fmu`` with FMPy's exceptions turned into :class:`FmuError`."""
    fmpy = load_fmpy()
    try:
        return fmpy.simulate_fmu(str(path), **kwargs)
    except FmuError:
        raise
    except Exception as exc:
        raise FmuError(f"{path}: simulation failed: {exc}") from exc


class _HeldInputs:
    """FMPy's solvers call ``input.apply(t)``; a twin sets its inputs once per step."""

    def apply(self, *args: Any, **kwargs: Any) -> None:
        return None


def cvode_solver(
    *, fmu: Any, model_description: Any, start_time_s: float, relative_tolerance: float
) -> Any:
    """FMPy's CVode integrator over a model-exchange FMU's continuous states."""
    load_fmpy()
    from fmpy.sundials import CVodeSolver

    md = model_description
    three = str(md.fmiVersion).startswith("3")
    return CVodeSolver(
        nx=md.numberOfContinuousStates,
        nz=md.numberOfEventIndicators,
        get_x=fmu.getContinuousStates,
        set_x=fmu.setContinuousStates,
        get_dx=fmu.getContinuousStateDerivatives if three else fmu.getDerivatives,
        get_z=fmu.getEventIndicators,
        get_nominals=fmu.getNominalsOfContinuousStates,
        set_time=fmu.setTime,
        input=_HeldInputs(),
        startTime=start_time_s,
        relativeTolerance=relative_tolerance,
        maxNumSteps=100_000,
    )
