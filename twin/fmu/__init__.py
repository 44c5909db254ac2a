"""FMUs as twins: import any FMI 2.0/3.0 FMU, export the ECM twin as one.

- :class:`~twin.fmu.twin.FmuTwin` and :class:`~twin.fmu.twin.FmuMapping`: an FMU of a
  cell behind the same ``CellTwin`` interface as the ECM (``twin.fmu.twin``).
- :func:`~twin.fmu.describe.describe_fmu`: version, interfaces, platforms, variables.
- :func:`~twin.fmu.run.run_fmu`: any FMU from a CSV of inputs to its outputs.
- Export: ``twin.fmu.export_python`` (PythonFMU) and ``twin.fmu.export_c`` (C source).

Nothing here imports FMPy at import time; ``twin.fmu.fmpy_adapter`` does, when used.
"""
