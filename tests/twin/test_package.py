"""The twin package's facade stays light and complete."""

from __future__ import annotations

import subprocess
import sys


def test_import_twin_does_not_load_heavy_backends() -> None:
    code = (
        "import sys, twin; twin.load_parameter_set('ecm_example');"
        "heavy = [m for m in ('pybamm', 'plotly', 'casadi') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_facade_exports_the_entry_points() -> None:
    import twin

    for name in twin.__all__:
        assert hasattr(twin, name), name
    cells = twin.EcmTwin(twin.load_parameter_set("ecm_example"), n_cells=3)
    assert isinstance(cells, twin.CellTwin)
